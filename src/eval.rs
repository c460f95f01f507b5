//! `fleet eval`: plays a trained policy from a run folder for a number of
//! whole episodes and reports their returns, optionally recording some of
//! them as an animated GIF. Everything runs in this process: the run's
//! `config.toml` builds the environments (as an actor builds them, the env
//! bridge included) and the network, `policy.safetensors` (or another
//! weights file) fills the network, and no replay, learner or actor
//! processes start. Drawing pictures is [`crate::render`]'s; this module
//! decides what to draw and writes the GIF.
//!
//! Episodes are fixed to environments before any starts (episode `k` is
//! played by environment `k mod n`), so the report is not tilted towards
//! the episodes that end soonest, and the same seed plays the same
//! episodes whether or not they are recorded.

use std::fmt;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{Device, Tensor};
use fleet_actor::env::{EnvConfig, Preprocess, VecEnv, acrobot, cartpole, catch, masked, mountain_car, mountain_car_continuous, pendulum};
use fleet_agent::{Actions, ActorCritic, EnvSpec, FrameShape, Weights, observations_tensor};
use rand::SeedableRng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::render::{self, Channels, Indexed};
use crate::runs::RunFolder;

/// Environments stepped side by side at most: enough to keep a bridged
/// vector busy, few enough that an evaluation of a few episodes does not
/// start many more environments than it plays.
pub const MAX_PARALLEL_ENVS: usize = 16;

/// How long the last frame of each recorded episode stays up, in
/// hundredths of a second, so the end of an episode can be seen.
const END_OF_EPISODE_DELAY: u16 = 100;

/// What `fleet eval` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The run folder: unless `policy` is given, its `policy.safetensors`
    /// is played.
    pub run: PathBuf,
    /// The run's `config.toml` with the command line's layers over it
    /// (`--set`, `FLEET_…` variables, `--seed`), as `fleet run --resume`
    /// loads it.
    pub config: Config,
    /// Another weights file to play, e.g. a learner checkpoint's
    /// `model.safetensors` (or the checkpoint's folder).
    pub policy: Option<PathBuf>,
    pub episodes: usize,
    /// The most probable action at every step instead of a sampled one.
    pub greedy: bool,
    /// Write the first `record_episodes` episodes to this GIF.
    pub record: Option<PathBuf>,
    pub record_episodes: usize,
    /// Write the report as JSON to this file.
    pub json: Option<PathBuf>,
}

/// One finished episode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Episode {
    pub episode_return: f64,
    /// Actions taken (its observations number one more).
    pub length: u32,
}

/// Mean, standard deviation (of the episodes played, not an estimate of
/// a larger population's: divided by n), lowest and highest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        Some(Self {
            mean,
            std: variance.sqrt(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// The GIF that was written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recording {
    pub path: PathBuf,
    pub episodes: usize,
    pub frames: usize,
    pub width: usize,
    pub height: usize,
}

/// What an evaluation found; `--json` writes it as it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub run: PathBuf,
    pub policy: PathBuf,
    /// The weights version the file records, if it does.
    pub policy_version: Option<u64>,
    pub env: String,
    pub seed: u64,
    pub greedy: bool,
    pub episodes: usize,
    #[serde(rename = "return")]
    pub returns_stats: Stats,
    #[serde(rename = "length")]
    pub length_stats: Stats,
    /// Per episode, in episode order.
    pub returns: Vec<f64>,
    pub lengths: Vec<u32>,
    pub recording: Option<Recording>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = self.policy_version.map_or(String::new(), |v| format!(", weights version {v}"));
        writeln!(f, "policy    {}{version}", self.policy.display())?;
        let actions = if self.greedy { "greedy" } else { "sampled" };
        writeln!(
            f,
            "played    {} episode{} of {} ({actions} actions, seed {})",
            self.episodes,
            plural(self.episodes),
            self.env,
            self.seed
        )?;
        let (r, l) = (&self.returns_stats, &self.length_stats);
        writeln!(f, "return    {:.1} ± {:.1}  (min {:.1}, max {:.1})", r.mean, r.std, r.min, r.max)?;
        writeln!(f, "length    {:.1} ± {:.1}  (min {}, max {})", l.mean, l.std, l.min, l.max)?;
        if let Some(recording) = &self.recording {
            writeln!(
                f,
                "recorded  {} episode{}, {} frames of {}×{} in {}",
                recording.episodes,
                plural(recording.episodes),
                recording.frames,
                recording.width,
                recording.height,
                recording.path.display()
            )?;
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Runs `fleet eval`. Blocks on the current runtime to build bridged
/// environments, so call it from a blocking thread.
pub fn eval(options: &Options) -> Result<Report> {
    if options.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    if options.record.is_some() && !(1..=options.episodes).contains(&options.record_episodes) {
        bail!(
            "--record-episodes {} must be between 1 and --episodes ({})",
            options.record_episodes,
            options.episodes
        );
    }
    let folder = RunFolder::open(&options.run)?;
    let config_path = folder.config_path();
    let config = &options.config;
    let seed = config.seed;
    let policy_path = policy_file(&folder, options.policy.as_deref());
    let weights = read_weights(&policy_path)?;

    let num_envs = options.episodes.min(MAX_PARALLEL_ENVS);
    let shutdown = CancellationToken::new();
    let mut envs = fleet_actor::runtime::make_vec_env(
        &config.env,
        &config.network,
        num_envs,
        seed,
        config.replay.max_message_bytes,
        &shutdown,
    )
    .map_err(|error| anyhow!("env `{}`: {error}", config.env.name))?;
    let spec = envs.spec();
    let look = match &options.record {
        Some(_) => Some(Look::of(&config.env, spec)?),
        None => None,
    };
    let network = ActorCritic::new(spec, &config.network, seed, &Device::Cpu).context("building the network")?;
    weights.load_into(&network).with_context(|| {
        format!(
            "{} does not fit the network that {} describes (env `{}`: {spec})",
            policy_path.display(),
            config_path.display(),
            config.env.name
        )
    })?;

    let record = if look.is_some() { options.record_episodes } else { 0 };
    let mut snapshots: Vec<Vec<Snapshot>> = vec![Vec::new(); record];
    let mut policy = if options.greedy {
        Policy::Greedy
    } else {
        Policy::Sampled(Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xA5A5_A5A5)))
    };
    let episodes = play(
        &mut envs,
        &network,
        options.episodes,
        &mut policy,
        record,
        |episode, envs, env_index| {
            if let Some(look) = &look {
                snapshots[episode].push(look.snapshot(envs, env_index)?);
            }
            Ok(())
        },
    )?;
    drop(envs);

    let recording = match (&options.record, &look) {
        (Some(path), Some(look)) => Some(write_gif(path, look, &snapshots, frame_delay(&config.env))?),
        _ => None,
    };
    let returns: Vec<f64> = episodes.iter().map(|e| e.episode_return).collect();
    let lengths: Vec<u32> = episodes.iter().map(|e| e.length).collect();
    let lengths_f64: Vec<f64> = lengths.iter().map(|&l| f64::from(l)).collect();
    let report = Report {
        run: options.run.clone(),
        policy: policy_path,
        policy_version: weights.version_recorded,
        env: config.env.name.clone(),
        seed,
        greedy: options.greedy,
        episodes: episodes.len(),
        returns_stats: Stats::of(&returns).ok_or_else(|| anyhow!("no episode was played"))?,
        length_stats: Stats::of(&lengths_f64).ok_or_else(|| anyhow!("no episode was played"))?,
        returns,
        lengths,
        recording,
    };
    if let Some(path) = &options.json {
        let mut json = serde_json::to_vec_pretty(&report).context("serialising the report")?;
        json.push(b'\n');
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// The weights file to play: `--policy` (a checkpoint's folder meaning its
/// model file), else the run's final policy.
fn policy_file(folder: &RunFolder, policy: Option<&Path>) -> PathBuf {
    match policy {
        Some(path) if path.is_dir() => path.join(fleet_learner::checkpoint::MODEL_FILE),
        Some(path) => path.to_path_buf(),
        None => folder.policy_path(),
    }
}

/// Weights read from a file, with the version the file records.
struct LoadedWeights {
    weights: Weights,
    version_recorded: Option<u64>,
}

impl LoadedWeights {
    fn load_into(&self, network: &ActorCritic) -> Result<(), fleet_agent::WeightsError> {
        self.weights.load_into(network)
    }
}

fn read_weights(path: &Path) -> Result<LoadedWeights> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} is missing (a run writes its policy when it ends; --policy FILE plays another weights file)",
            path.display()
        ),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let version_recorded = Weights::version_in(&bytes).with_context(|| format!("{} is not a weights file", path.display()))?;
    Ok(LoadedWeights {
        weights: Weights {
            version: version_recorded.unwrap_or(0),
            bytes: bytes.into(),
        },
        version_recorded,
    })
}

/// How actions are chosen from the policy's distribution: its mode, or samples.
pub enum Policy {
    Greedy,
    /// Boxed: the generator's state is large beside nothing.
    Sampled(Box<rand_chacha::ChaCha8Rng>),
}

/// Plays `episodes` whole episodes on `envs` with `network` and returns
/// them in episode order. Episode `k` is the `(k div n)`-th of environment
/// `k mod n` (`n` environments); an environment whose episodes are done
/// steps on unheeded until the others finish. For episodes `k < record`,
/// `observe(k, envs, env_index)` sees each of its observations, the first
/// to the last, as it becomes the current one of `env_index`.
pub fn play(
    envs: &mut VecEnv,
    network: &ActorCritic,
    episodes: usize,
    policy: &mut Policy,
    record: usize,
    mut observe: impl FnMut(usize, &VecEnv, usize) -> Result<()>,
) -> Result<Vec<Episode>> {
    let n = envs.num_envs();
    let spec = envs.spec();
    let width = spec.observation_size();
    let distribution = network.distribution();
    let device = network.device().clone();
    // The episode each environment's current observation belongs to.
    let mut current: Vec<Option<usize>> = (0..n).map(|i| (i < episodes).then_some(i)).collect();
    let mut played: Vec<Option<Episode>> = vec![None; episodes];
    let mut remaining = episodes;
    for (env_index, episode) in current.iter().enumerate() {
        if let Some(k) = *episode
            && k < record
        {
            observe(k, envs, env_index)?;
        }
    }
    let mut state = network.initial_state(n)?;
    let mut actions = Actions::empty(spec.action);
    let mut env_actions = Actions::empty(spec.action);
    while remaining > 0 {
        let observations = observations_tensor(envs.observations(), n, width, &device)?;
        let is_first: Vec<f32> = envs.is_first().iter().map(|&f| f32::from(u8::from(f))).collect();
        let is_first = Tensor::from_vec(is_first, n, &device)?;
        let (output, next_state) = network.step(&observations, &is_first, &state)?;
        state = next_state.detach();
        let logits = output.logits.flatten_all()?.to_vec1::<f32>()?;
        match policy {
            Policy::Greedy => distribution.greedy(&logits, &mut actions),
            Policy::Sampled(rng) => distribution.sample(&logits, rng.as_mut(), &mut actions),
        }
        let report = envs.step(distribution.env_actions(&actions, &mut env_actions))?;
        for (env_index, episode) in current.iter_mut().enumerate() {
            if envs.is_first()[env_index] {
                *episode = episode.map(|k| k + n).filter(|&k| k < episodes);
            }
            if let Some(k) = *episode
                && k < record
            {
                observe(k, envs, env_index)?;
            }
        }
        for finished in &report.finished {
            if let Some(k) = current[finished.env_index]
                && played[k].is_none()
            {
                played[k] = Some(Episode {
                    episode_return: finished.episode_return,
                    length: finished.length,
                });
                remaining -= 1;
            }
        }
    }
    Ok(played.into_iter().flatten().collect())
}

/// What a recorded episode looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Look {
    /// CartPole drawn from its physical state.
    CartPole,
    /// Pendulum-v1 drawn from its physical state.
    Pendulum,
    /// Acrobot-v1 drawn from its physical state.
    Acrobot,
    /// MountainCar-v0 or MountainCarContinuous-v0 drawn from its physical
    /// state, the flag at `goal`.
    MountainCar { goal: f64 },
    /// The newest frame of each observation: `frame` (with the channels of
    /// one frame) read as `channels`, starting at `offset` in the observation.
    Frames {
        frame: FrameShape,
        channels: Channels,
        offset: usize,
    },
}

impl Look {
    /// How episodes of `env` (whose spec is `spec`) are pictured; an error
    /// naming it when they cannot be.
    fn of(env: &EnvConfig, spec: EnvSpec) -> Result<Self> {
        if !env.is_bridged() {
            let drawn = match env.name.as_str() {
                cartpole::NAME | masked::NAME => Some(Self::CartPole),
                pendulum::NAME => Some(Self::Pendulum),
                acrobot::NAME => Some(Self::Acrobot),
                mountain_car::NAME => Some(Self::MountainCar {
                    goal: mountain_car::GOAL_POSITION,
                }),
                mountain_car_continuous::NAME => Some(Self::MountainCar {
                    goal: mountain_car_continuous::GOAL_POSITION,
                }),
                _ => None,
            };
            if let Some(look) = drawn {
                return Ok(look);
            }
        }
        let Some(stacked) = spec.frame() else {
            bail!(
                "env `{}` has no frames to record: it observes vectors, and of those only {} are drawn",
                env.name,
                DRAWN.join(", ")
            );
        };
        // Channels per frame: the Atari preprocessing stacks grey or RGB
        // frames; env.frame_stack multiplies the inner frame's (a native
        // image's channels are known); any other bridged image is read as
        // RGB frames when its channels come in threes.
        let per_frame = if env.preprocess == Preprocess::Atari {
            if env.atari.grayscale { 1 } else { 3 }
        } else if !env.is_bridged() || env.frame_stack > 1 {
            stacked.channels / env.frame_stack.max(1)
        } else if stacked.channels % 3 == 0 {
            3
        } else {
            1
        };
        let channels = if per_frame == 3 { Channels::Rgb } else { Channels::Grey };
        let count = channels.count().min(stacked.channels);
        let plane = stacked.height * stacked.width;
        if stacked.width > usize::from(u16::MAX) || stacked.height > usize::from(u16::MAX) {
            bail!(
                "env `{}` has frames of {}×{}, too large for a GIF",
                env.name,
                stacked.width,
                stacked.height
            );
        }
        Ok(Self::Frames {
            frame: FrameShape {
                channels: count,
                ..stacked
            },
            channels,
            offset: (stacked.channels - count) * plane,
        })
    }

    /// What to keep of the current observation of `env_index`.
    fn snapshot(&self, envs: &VecEnv, env_index: usize) -> Result<Snapshot> {
        let state = envs.physical_state(env_index);
        match (self, state) {
            (Self::CartPole, Some(&[x, _, theta, _])) => Ok(Snapshot::CartPole { x, theta }),
            (Self::Pendulum, Some(&[theta, _])) => Ok(Snapshot::Pendulum { theta }),
            (Self::Acrobot, Some(&[theta1, theta2, _, _])) => Ok(Snapshot::Acrobot { theta1, theta2 }),
            (Self::MountainCar { .. }, Some(&[position, _])) => Ok(Snapshot::MountainCar { position }),
            (Self::CartPole | Self::Pendulum | Self::Acrobot | Self::MountainCar { .. }, _) => {
                bail!("the environment shows no {self:?} state to draw (it has {state:?})")
            }
            (Self::Frames { frame, offset, .. }, _) => {
                let pixels = envs.observation(env_index).u8();
                Ok(Snapshot::Frame(pixels[*offset..*offset + frame.size()].to_vec()))
            }
        }
    }

    /// The picture of `snapshot`, at the size the GIF has.
    fn picture(&self, snapshot: &Snapshot) -> Indexed {
        match (self, snapshot) {
            (Self::Frames { frame, channels, .. }, Snapshot::Frame(pixels)) => {
                render::frame(pixels, *frame, *channels).upscaled(render::upscale_factor(*frame))
            }
            (Self::CartPole, Snapshot::CartPole { x, theta }) => render::cartpole(*x, *theta),
            (Self::Pendulum, Snapshot::Pendulum { theta }) => render::pendulum(*theta),
            (Self::Acrobot, Snapshot::Acrobot { theta1, theta2 }) => render::acrobot(*theta1, *theta2),
            (Self::MountainCar { goal }, Snapshot::MountainCar { position }) => render::mountain_car(*position, *goal),
            (look, _) => unreachable!("a {look:?} look takes the snapshots it made, of its own kind"),
        }
    }
}

/// What is kept of one observation of a recorded episode: little, so that
/// episodes played side by side can be held until they are written in order.
#[derive(Debug, Clone, PartialEq)]
enum Snapshot {
    CartPole {
        x: f64,
        theta: f64,
    },
    Pendulum {
        theta: f64,
    },
    Acrobot {
        theta1: f64,
        theta2: f64,
    },
    MountainCar {
        position: f64,
    },
    /// The newest frame, channels first.
    Frame(Vec<u8>),
}

/// The native environments drawn from their physical state.
const DRAWN: [&str; 6] = [
    cartpole::NAME,
    masked::NAME,
    pendulum::NAME,
    acrobot::NAME,
    mountain_car::NAME,
    mountain_car_continuous::NAME,
];

/// Hundredths of a second between frames: the classic-control tasks at
/// Gymnasium's rates (CartPole 50 fps, Pendulum and MountainCar 30,
/// Acrobot 15), Atari at the agent's rate (60 emulator frames a second,
/// `frame_skip` per step), Catch slowly enough to follow the ball, anything
/// else at 20.
fn frame_delay(env: &EnvConfig) -> u16 {
    let native = if env.is_bridged() { "" } else { env.name.as_str() };
    if [cartpole::NAME, masked::NAME].contains(&native) {
        2
    } else if [pendulum::NAME, mountain_car::NAME, mountain_car_continuous::NAME].contains(&native) {
        3
    } else if native == acrobot::NAME {
        7
    } else if native == catch::NAME {
        25
    } else if env.preprocess == Preprocess::Atari {
        ((100 * env.atari.frame_skip + 30) / 60).clamp(2, 100) as u16
    } else {
        5
    }
}

/// Writes the snapshots of each episode, in order, as one looping GIF.
fn write_gif(path: &Path, look: &Look, episodes: &[Vec<Snapshot>], delay: u16) -> Result<Recording> {
    let context = || format!("writing {}", path.display());
    let Some(first) = episodes.iter().find_map(|e| e.first()) else {
        bail!("no frames to write to {}", path.display());
    };
    let first = look.picture(first);
    let (width, height) = (first.width, first.height);
    let (Ok(w), Ok(h)) = (u16::try_from(width), u16::try_from(height)) else {
        bail!("frames of {width}×{height} are too large for a GIF");
    };
    // The first picture's palette is the global one, which the frames
    // that share it (all of them, but for colour frames) refer to: some
    // decoders read a GIF without one wrongly.
    let palette = first.palette;
    let file = File::create(path).with_context(context)?;
    let mut encoder = gif::Encoder::new(BufWriter::new(file), w, h, &palette).with_context(context)?;
    encoder.set_repeat(gif::Repeat::Infinite).with_context(context)?;
    let mut frames = 0;
    for episode in episodes {
        for (i, snapshot) in episode.iter().enumerate() {
            let picture = look.picture(snapshot);
            let mut frame = if picture.palette == palette {
                gif::Frame::from_indexed_pixels(w, h, picture.pixels, None)
            } else {
                gif::Frame::from_palette_pixels(w, h, picture.pixels, picture.palette, None)
            };
            frame.delay = if i + 1 == episode.len() { END_OF_EPISODE_DELAY } else { delay };
            encoder.write_frame(&frame).with_context(context)?;
            frames += 1;
        }
    }
    let mut writer = encoder.into_inner().with_context(context)?;
    std::io::Write::flush(&mut writer).with_context(context)?;
    Ok(Recording {
        path: path.to_path_buf(),
        episodes: episodes.len(),
        frames,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_agent::NetworkConfig;

    #[test]
    fn stats_are_of_the_episodes_played() {
        let stats = Stats::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!((stats.mean, stats.std, stats.min, stats.max), (5.0, 2.0, 2.0, 9.0));
        assert_eq!(Stats::of(&[3.0]).unwrap().std, 0.0);
        assert!(Stats::of(&[]).is_none());
    }

    fn cartpoles(n: usize, seed: u64) -> VecEnv {
        VecEnv::new(cartpole::NAME, n, seed).unwrap()
    }

    /// Every episode is played to its end and counted once, in order, and a
    /// recorded one is seen at each of its observations, first to last.
    #[test]
    fn every_episode_is_played_whole_and_recorded_ones_are_seen_at_every_step() {
        let network = ActorCritic::new(EnvSpec::vector(4, 2), &NetworkConfig::default(), 3, &Device::Cpu).unwrap();
        let mut envs = cartpoles(3, 5);
        let mut policy = Policy::Sampled(Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(1)));
        let mut seen: Vec<Vec<(usize, [f64; 4], bool)>> = vec![Vec::new(); 4];
        let episodes = play(&mut envs, &network, 7, &mut policy, 4, |k, envs, i| {
            let state: [f64; 4] = envs.physical_state(i).unwrap().try_into().unwrap();
            seen[k].push((i, state, envs.is_first()[i]));
            Ok(())
        })
        .unwrap();
        assert_eq!(episodes.len(), 7);
        for episode in &episodes {
            // CartPole pays 1 per action.
            assert_eq!(episode.episode_return, f64::from(episode.length));
            assert!((1..=500).contains(&episode.length), "{episode:?}");
        }
        for (k, observations) in seen.iter().enumerate() {
            assert_eq!(observations.len(), episodes[k].length as usize + 1, "episode {k}");
            assert!(observations.iter().all(|&(i, _, _)| i == k % 3), "episode {k} on one environment");
            assert!(
                observations[0].2 && observations[1..].iter().all(|o| !o.2),
                "episode {k} starts once"
            );
            let [x, _, theta, _] = observations.last().unwrap().1;
            let ended = x.abs() > cartpole::X_THRESHOLD || theta.abs() > cartpole::THETA_THRESHOLD_RADIANS;
            assert!(ended || episodes[k].length == 500, "episode {k} seen to its end");
        }

        // The same seeds play the same episodes, whatever is recorded.
        let mut policy = Policy::Sampled(Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(1)));
        let again = play(&mut cartpoles(3, 5), &network, 7, &mut policy, 0, |_, _, _| unreachable!()).unwrap();
        assert_eq!(again, episodes);
    }

    #[test]
    fn greedy_play_is_deterministic_and_follows_the_weights() {
        let spec = EnvSpec::vector(4, 2);
        let network = ActorCritic::new(spec, &NetworkConfig::default(), 3, &Device::Cpu).unwrap();
        let greedy = |network: &ActorCritic| play(&mut cartpoles(2, 9), network, 4, &mut Policy::Greedy, 0, |_, _, _| Ok(())).unwrap();
        assert_eq!(greedy(&network), greedy(&network));
        // A network that always pushes right: episodes of the few steps
        // it takes the pole to fall (about ten).
        let params = network.params();
        for (name, var) in params {
            let zeros = var.zeros_like().unwrap();
            let value = if name == "policy.bias" {
                Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap()
            } else {
                zeros
            };
            var.set(&value).unwrap();
        }
        for episode in greedy(&network) {
            assert!(episode.length < 20, "{episode:?}");
        }
    }

    #[test]
    fn a_look_is_found_for_drawn_and_image_envs_and_refused_for_vectors() {
        let look = |env: &EnvConfig, spec| Look::of(env, spec);
        let cartpole_spec = EnvSpec::vector(4, 2);
        assert_eq!(look(&EnvConfig::named(cartpole::NAME), cartpole_spec).unwrap(), Look::CartPole);
        let masked = EnvConfig {
            normalize_observations: true,
            frame_stack: 3,
            ..EnvConfig::named(masked::NAME)
        };
        assert_eq!(look(&masked, EnvSpec::vector(6, 2)).unwrap(), Look::CartPole);
        let native = |name: &str| {
            let env = EnvConfig::named(name);
            let spec = env.make(0).unwrap().spec();
            look(&env, spec).unwrap()
        };
        assert_eq!(native(pendulum::NAME), Look::Pendulum);
        assert_eq!(native(acrobot::NAME), Look::Acrobot);
        assert_eq!(native(mountain_car::NAME), Look::MountainCar { goal: 0.5 });
        assert_eq!(native(mountain_car_continuous::NAME), Look::MountainCar { goal: 0.45 });

        let error = look(&EnvConfig::named("memory-chain-4"), EnvSpec::vector(3, 2)).unwrap_err();
        assert!(error.to_string().contains("env `memory-chain-4` has no frames"), "{error}");
        assert!(error.to_string().contains(acrobot::NAME), "the drawn envs are named: {error}");
        let error = look(&EnvConfig::named("gym:CartPole-v1"), cartpole_spec).unwrap_err();
        assert!(error.to_string().contains("gym:CartPole-v1"), "{error}");

        // A stack of four catch frames: the newest is the last channel.
        let stacked = EnvConfig {
            frame_stack: 4,
            ..EnvConfig::named(catch::NAME)
        };
        let frames = |channels| EnvSpec::frames(FrameShape { channels, ..catch::FRAME }, 3);
        let plane = catch::FRAME.size();
        assert_eq!(
            look(&stacked, frames(4)).unwrap(),
            Look::Frames {
                frame: catch::FRAME,
                channels: Channels::Grey,
                offset: 3 * plane
            }
        );
        // Atari: grey or RGB frames, as the preprocessing makes them.
        let mut atari = EnvConfig {
            preprocess: Preprocess::Atari,
            ..EnvConfig::named("gym:ALE/Pong-v5")
        };
        let Look::Frames { channels, offset, .. } = look(&atari, frames(4)).unwrap() else {
            panic!()
        };
        assert_eq!((channels, offset), (Channels::Grey, 3 * plane));
        atari.atari.grayscale = false;
        let Look::Frames { channels, offset, frame } = look(&atari, frames(12)).unwrap() else {
            panic!()
        };
        assert_eq!((channels, offset, frame.channels), (Channels::Rgb, 9 * plane, 3));
        // Other images: RGB when the channels come in threes.
        let plain = EnvConfig::named("gym:Some-v0");
        let Look::Frames { channels, .. } = look(&plain, frames(3)).unwrap() else {
            panic!()
        };
        assert_eq!(channels, Channels::Rgb);
        let Look::Frames { channels, offset, .. } = look(&plain, frames(2)).unwrap() else {
            panic!()
        };
        assert_eq!((channels, offset), (Channels::Grey, plane));
    }

    #[test]
    fn catch_episodes_make_a_gif_of_their_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catch.gif");
        let env = EnvConfig::named(catch::NAME);
        let mut envs = VecEnv::from_config(&env, 2, 4).unwrap();
        let look = Look::of(&env, envs.spec()).unwrap();
        let network = ActorCritic::new(
            envs.spec(),
            &NetworkConfig {
                torso: fleet_agent::Torso::ShallowCnn,
                ..NetworkConfig::default()
            },
            1,
            &Device::Cpu,
        )
        .unwrap();
        let mut snapshots = vec![Vec::new(); 2];
        let mut policy = Policy::Greedy;
        play(&mut envs, &network, 2, &mut policy, 2, |k, envs, i| {
            snapshots[k].push(look.snapshot(envs, i)?);
            Ok(())
        })
        .unwrap();
        let recording = write_gif(&path, &look, &snapshots, frame_delay(&env)).unwrap();
        // Catch: 9 actions, 10 observations per episode; 8× enlarged frames.
        assert_eq!((recording.frames, recording.width, recording.height), (20, 160, 320));

        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::RGBA);
        let mut decoder = options.read_info(File::open(&path).unwrap()).unwrap();
        assert_eq!((decoder.width(), decoder.height()), (160, 320));
        let mut decoded = Vec::new();
        // Grey frames share one global palette of 256 greys.
        assert_eq!(decoder.global_palette().map(<[u8]>::len), Some(256 * 3));
        while let Some(frame) = decoder.read_next_frame().unwrap() {
            assert!(frame.palette.is_none());
            decoded.push(frame.buffer.to_vec());
        }
        assert_eq!(decoded.len(), 20);
        // The ball falls: every frame of an episode differs from the one
        // before, and each shows lit and dark pixels.
        for pair in decoded[..10].windows(2) {
            assert_ne!(pair[0], pair[1]);
        }
        for frame in &decoded {
            assert!(frame.chunks_exact(4).any(|p| p[..3] == [255, 255, 255]));
            assert!(frame.chunks_exact(4).any(|p| p[..3] == [0, 0, 0]));
        }
    }

    /// Each drawn classic-control task, pushed one way for ten steps, makes a
    /// GIF of eleven frames of Gymnasium's size, at its rate, with its
    /// colours, whose pictures change as the state does.
    #[test]
    fn classic_control_states_make_gifs_that_move() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (pendulum::NAME, (500, 500), render::ROD_RGB, 3),
            (acrobot::NAME, (500, 500), render::LINK_RGB, 7),
            (mountain_car::NAME, (600, 400), render::JOINT_RGB, 3),
            (mountain_car_continuous::NAME, (600, 400), render::JOINT_RGB, 3),
        ];
        for (name, size, colour, delay) in cases {
            let env = EnvConfig::named(name);
            let mut envs = VecEnv::from_config(&env, 1, 7).unwrap();
            let look = Look::of(&env, envs.spec()).unwrap();
            let push = match envs.spec().action {
                fleet_agent::ActionSpec::Discrete { num_actions } => Actions::Discrete(vec![num_actions - 1]),
                fleet_agent::ActionSpec::Continuous { dims } => Actions::Continuous {
                    dims,
                    values: vec![1.0; dims],
                },
            };
            let mut snapshots = vec![look.snapshot(&envs, 0).unwrap()];
            for _ in 0..10 {
                envs.step(&push).unwrap();
                snapshots.push(look.snapshot(&envs, 0).unwrap());
            }
            let path = dir.path().join(format!("{name}.gif"));
            let recording = write_gif(&path, &look, &[snapshots], frame_delay(&env)).unwrap();
            assert_eq!(
                (recording.frames, recording.width, recording.height),
                (11, size.0, size.1),
                "{name}"
            );

            let mut options = gif::DecodeOptions::new();
            options.set_color_output(gif::ColorOutput::RGBA);
            let mut decoder = options.read_info(File::open(&path).unwrap()).unwrap();
            assert_eq!((usize::from(decoder.width()), usize::from(decoder.height())), size, "{name}");
            assert!(decoder.global_palette().is_some(), "{name}");
            let mut frames = Vec::new();
            while let Some(frame) = decoder.read_next_frame().unwrap() {
                assert!(frame.palette.is_none(), "{name}: one palette");
                let expected = if frames.len() == 10 { END_OF_EPISODE_DELAY } else { delay };
                assert_eq!(frame.delay, expected, "{name}");
                frames.push(frame.buffer.to_vec());
            }
            assert_eq!(frames.len(), 11, "{name}");
            for (i, frame) in frames.iter().enumerate() {
                let pixels = |rgb: [u8; 3]| frame.chunks_exact(4).filter(|p| p[..3] == rgb).count();
                assert!(
                    pixels([0, 0, 0]) > 50 && pixels(colour) > 100,
                    "{name} frame {i}: a picture, not a blank"
                );
            }
            assert_ne!(frames[0], frames[10], "{name}: the picture follows the state");
        }
    }

    /// Colour frames each keep their own palette where it is not the first's.
    #[test]
    fn colour_frames_are_written_with_their_own_palettes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("colour.gif");
        let frame = FrameShape {
            channels: 3,
            height: 2,
            width: 2,
        };
        let look = Look::Frames {
            frame,
            channels: Channels::Rgb,
            offset: 0,
        };
        // Channels first: four reds, four greens, four blues.
        let red = [vec![200; 4], vec![0; 4], vec![0; 4]].concat();
        let mixed = [vec![0, 0, 90, 90], vec![250, 250, 0, 0], vec![0; 4]].concat();
        let episodes = vec![vec![Snapshot::Frame(red), Snapshot::Frame(mixed)]];
        let recording = write_gif(&path, &look, &episodes, 5).unwrap();
        assert_eq!((recording.frames, recording.width, recording.height), (2, 320, 320));
        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::RGBA);
        let mut decoder = options.read_info(File::open(&path).unwrap()).unwrap();
        let first = decoder.read_next_frame().unwrap().unwrap();
        assert_eq!((first.delay, &first.buffer[..4]), (5, &[200, 0, 0, 255][..]));
        let second = decoder.read_next_frame().unwrap().unwrap();
        assert_eq!(second.delay, END_OF_EPISODE_DELAY);
        // The top-left pixel, enlarged 160 times, is green; the bottom-right red.
        assert_eq!(&second.buffer[..4], &[0, 250, 0, 255]);
        assert_eq!(&second.buffer[second.buffer.len() - 4..], &[90, 0, 0, 255]);
        assert!(decoder.read_next_frame().unwrap().is_none());
    }
}
