//! Environments the actor runs natively, behind one small trait, the
//! registry that builds them by Gymnasium name, and the bridge to
//! environments served by another process.
//!
//! An [`Environment`] writes its observations into a buffer the caller
//! owns, so stepping allocates nothing: vector environments write `f32`,
//! image environments write `u8` intensities and report their frame shape.
//! The values then travel unconverted to the network's input. [`EnvConfig`] (the
//! `[env]` config section) names one and the wrappers around it:
//! [`normalize`] scales observations by their running moments (per native
//! environment, or over a whole bridged vector), [`frame_stack`] stacks the
//! last k of them. Episode bookkeeping across many
//! environments (first/last flags, auto-reset, returns) lives in [`vector`],
//! over a [`BatchEnv`] that steps them all at once: natively, or through
//! [`bridge`] when `env.name` is `gym:…` or `envpool:…` or `env.remote`
//! is set. Policies, sequences and the learner's network are not this
//! module's business.

pub mod acrobot;
pub mod bridge;
pub mod cartpole;
pub mod catch;
pub mod frame_stack;
pub mod masked;
pub mod memory_chain;
pub mod mountain_car;
pub mod mountain_car_continuous;
pub mod normalize;
pub mod pendulum;
#[cfg(test)]
mod recorded;
pub mod vector;

pub use acrobot::Acrobot;
pub use bridge::BridgedEnvs;
pub use cartpole::CartPole;
pub use catch::Catch;
pub use frame_stack::{FrameStack, StackBatch, check_frame_stack};
pub use masked::MaskedCartPole;
pub use memory_chain::MemoryChain;
pub use mountain_car::MountainCar;
pub use mountain_car_continuous::MountainCarContinuous;
pub use normalize::{NormalizeBatch, NormalizeObservation};
pub use pendulum::Pendulum;
pub use vector::{BatchEnv, FinishedEpisode, NativeEnvs, StepReport, Timestep, VecEnv};

use std::collections::BTreeMap;

use fleet_agent::{EnvSpec, FrameShape};
use fleet_trajectory::{Action, ActionBounds, ActionSpec, ObservationSpec, ObservationsMut};
use serde::{Deserialize, Serialize};

/// Prefixes of environment names served by the env bridge: `gym:` (any
/// Gymnasium id; envpool serves it where installed and known) and
/// `envpool:` (an envpool task).
pub const BRIDGE_PREFIXES: &[&str] = &["gym:", "envpool:"];

/// The server `env.bridge_command` starts by default (`pip install ./envbridge`).
pub const DEFAULT_BRIDGE_COMMAND: &str = "fleet-envbridge";

/// Names accepted by [`make`]. Besides these, `memory-chain-N` picks the
/// horizon of [`MemoryChain`]; [`check_name`] knows every accepted name.
pub const ENVIRONMENTS: &[&str] = &[
    cartpole::NAME,
    masked::NAME,
    memory_chain::NAME,
    catch::NAME,
    pendulum::NAME,
    mountain_car_continuous::NAME,
    acrobot::NAME,
    mountain_car::NAME,
];

/// What one step of an environment produced besides the next observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Reward for the action just taken.
    pub reward: f32,
    /// The episode reached a terminal state: no future rewards, do not bootstrap.
    pub terminated: bool,
    /// The episode was cut short (time limit): the next state still has value.
    pub truncated: bool,
}

impl StepOutcome {
    /// Whether the observation this step produced is the episode's last one
    /// (the action taken there is no decision, see `fleet_trajectory::is_decision`).
    pub fn is_last(&self) -> bool {
        !fleet_trajectory::is_decision(self.terminated, self.truncated)
    }
}

/// A single-agent environment with one observation tensor (`f32` values,
/// or `u8` frames when [`frame`](Self::frame) says so) and discrete or
/// continuous actions.
pub trait Environment: Send {
    /// Length of the observation slices passed to [`reset`](Self::reset) and [`step`](Self::step).
    fn observation_size(&self) -> usize;

    /// What actions it takes: indices in `0..num_actions`, or vectors of
    /// `dims` values.
    fn action_spec(&self) -> ActionSpec;

    /// For continuous actions, the box they live in, in this environment's
    /// units; the actor maps the policy's normalised actions into it.
    /// `None` for discrete actions.
    fn action_bounds(&self) -> Option<ActionBounds> {
        None
    }

    /// For image observations, their shape (`observation_size` is its
    /// size, the values whole intensities 0..=255); `None` for vectors.
    fn frame(&self) -> Option<FrameShape> {
        None
    }

    /// The simulated state itself, whatever the observation shows of it,
    /// for drawing it (CartPole's `[x, x_dot, theta, theta_dot]`); `None`
    /// where there is none to draw. Wrappers pass their inner one's on.
    fn physical_state(&self) -> Option<&[f64]> {
        None
    }

    /// What the network needs to know of this environment.
    fn spec(&self) -> EnvSpec {
        let observation = match self.frame() {
            Some(frame) => ObservationSpec::Frames(frame),
            None => ObservationSpec::Vector {
                size: self.observation_size(),
            },
        };
        EnvSpec {
            observation,
            action: self.action_spec(),
        }
    }

    /// Starts a new episode and writes its first observation.
    ///
    /// # Panics
    /// If `observation` is not `observation_size()` values of the spec's
    /// element type.
    fn reset(&mut self, observation: ObservationsMut<'_>);

    /// Applies `action` (a continuous one in this environment's units,
    /// within its bounds) and writes the next observation.
    ///
    /// # Panics
    /// If the action is not one of the spec's (out of range, of the other
    /// kind or of another width) or the observation slice has the wrong
    /// length; both are programming errors, checked in release builds too.
    /// [`VecEnv::validate_actions`] checks actions without panicking.
    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome;
}

/// Errors from building environments or feeding them actions.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(
        "unknown environment `{0}` (known: {known}; {family}-N sets the horizon, N in 1..={max})",
        known = ENVIRONMENTS.join(", "),
        family = memory_chain::NAME,
        max = memory_chain::MAX_HORIZON
    )]
    Unknown(String),
    #[error(
        "environment `{name}`: horizon `{value}` is not an integer in 1..={max}",
        max = memory_chain::MAX_HORIZON
    )]
    BadHorizon { name: String, value: String },
    #[error("frame stack of {0}: it must be in 1..={max}", max = frame_stack::MAX_FRAME_STACK)]
    BadFrameStack(usize),
    #[error("environment `{0}` observes image frames, which stay 0..=255 intensities: only vector observations can be normalised")]
    NormalizedFrames(String),
    #[error(
        "env.frame_stack = {0} with env.preprocess = \"atari\" on `{1}`: the Atari preprocessing stacks env.atari.frame_stack frames; set that one"
    )]
    TwoFrameStacks(usize, String),
    #[error("env.{0} applies to bridged environments only (`gym:…`, `envpool:…` or env.remote), not to the native `{1}`")]
    BridgedOnly(&'static str, String),
    #[error("{0}")]
    BadAtari(String),
    #[error("env bridge: {0}")]
    Bridge(String),
    #[error("environment `{name}` has {found}, but {expected} was expected (env.spec, or the learner's network)")]
    SpecMismatch { name: String, expected: EnvSpec, found: EnvSpec },
    #[error("stopped")]
    Stopped,
    #[error("expected one action per environment ({expected}), got {got}")]
    ActionCount { expected: usize, got: usize },
    #[error("action {action} for environment {env_index} is not one of {expected}: {why}")]
    BadAction {
        env_index: usize,
        action: String,
        expected: ActionSpec,
        why: &'static str,
    },
}

/// Builds the environment registered under `name`, its randomness seeded by `seed`.
pub fn make(name: &str, seed: u64) -> Result<Box<dyn Environment>, EnvError> {
    match name {
        cartpole::NAME => Ok(Box::new(CartPole::new(seed))),
        masked::NAME => Ok(Box::new(MaskedCartPole::new(seed))),
        catch::NAME => Ok(Box::new(Catch::new(seed))),
        pendulum::NAME => Ok(Box::new(Pendulum::new(seed))),
        mountain_car_continuous::NAME => Ok(Box::new(MountainCarContinuous::new(seed))),
        acrobot::NAME => Ok(Box::new(Acrobot::new(seed))),
        mountain_car::NAME => Ok(Box::new(MountainCar::new(seed))),
        _ => match memory_chain::horizon_from_name(name) {
            Some(horizon) => Ok(Box::new(MemoryChain::new(horizon?, seed))),
            None => Err(EnvError::Unknown(name.to_owned())),
        },
    }
}

/// The `[env]` config section: an environment from the registry and the
/// wrappers around it, or one the env bridge serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvConfig {
    /// Registry name (see [`make`]), or a bridged id: `gym:ALE/Pong-v5`,
    /// `envpool:Pong-v5`, or any id with `remote` set.
    pub name: String,
    /// Last observations stacked into one along the channel axis (1: none),
    /// by the actor, for native and bridged environments alike; with the
    /// Atari preprocessing, `atari.frame_stack` instead.
    pub frame_stack: usize,
    /// Observations scaled by their running mean and deviation, clipped to
    /// ±10 (vector observations only): per environment and before any
    /// stacking for native ones, over the whole vector for bridged ones
    /// (see [`normalize`]).
    pub normalize_observations: bool,
    /// `host:port` of an env bridge server that is already running (a
    /// sidecar); empty, the actor starts its own from `bridge_command`.
    pub remote: String,
    /// The env bridge server's program and leading arguments; the actor
    /// adds `--listen`, `--exit-with-stdin` and `--max-message-bytes`.
    pub bridge_command: Vec<String>,
    /// Streams each actor's vector is split across, stepped together: each
    /// with a local server process of its own, or on the one `remote`
    /// (1..=num_envs).
    pub bridge_streams: usize,
    /// Constructor keyword arguments of a bridged environment
    /// (`gymnasium.make_vec` or `envpool.make`), e.g. `{ max_episode_steps = 200 }`.
    #[serde(deserialize_with = "option_values")]
    pub options: BTreeMap<String, String>,
    /// The spec a bridged environment must have. `fleet run` fills it in
    /// from the bridge for its processes; a learner started alone with it
    /// set needs no bridge of its own. An empty table means unset.
    #[serde(deserialize_with = "optional_spec", skip_serializing_if = "Option::is_none")]
    pub spec: Option<EnvSpec>,
    /// Preprocessing the bridge applies: none, or the standard Atari setup
    /// of `atari`.
    pub preprocess: Preprocess,
    /// The Atari preprocessing settings, used with `preprocess = "atari"`.
    pub atari: AtariConfig,
}

/// What the bridge does to a bridged environment's frames before sending them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preprocess {
    /// The environment as made.
    #[default]
    None,
    /// [`AtariConfig`], for ALE ids.
    Atari,
}

/// The Atari setup every published IMPALA, R2D2 and Sample Factory number
/// uses (Machado et al. 2018); the defaults are that setup.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AtariConfig {
    /// Emulator frames per agent step; the observation max-pools the last two.
    pub frame_skip: u32,
    /// Observations are resized to screen_size × screen_size.
    pub screen_size: u32,
    /// One grey channel per frame (otherwise RGB).
    pub grayscale: bool,
    /// Last observations stacked along the channel axis (by the actor: the
    /// bridge sends each environment's newest frame).
    pub frame_stack: u32,
    /// Episodes start with 1..=noop_max no-op emulator frames, drawn uniformly.
    pub noop_max: u32,
    /// Sticky actions: every emulator frame repeats the previous action with
    /// this probability (ALE v5's default 0.25).
    pub repeat_action_probability: f32,
    /// A lost life ends the episode for learning; the game goes on.
    pub episodic_life: bool,
    /// Emulator frames after which an episode is cut (truncated); 0: no limit.
    pub max_episode_frames: u32,
}

impl Default for AtariConfig {
    fn default() -> Self {
        Self {
            frame_skip: 4,
            screen_size: 84,
            grayscale: true,
            frame_stack: 4,
            noop_max: 30,
            repeat_action_probability: 0.25,
            episodic_life: false,
            max_episode_frames: 108_000,
        }
    }
}

impl AtariConfig {
    /// The settings as the bridge protocol carries them.
    pub fn message(&self) -> fleet_proto::pb::AtariPreprocessing {
        fleet_proto::pb::AtariPreprocessing {
            frame_skip: self.frame_skip,
            screen_size: self.screen_size,
            grayscale: self.grayscale,
            frame_stack: self.frame_stack,
            noop_max: self.noop_max,
            repeat_action_probability: self.repeat_action_probability,
            episodic_life: self.episodic_life,
            max_episode_frames: self.max_episode_frames,
        }
    }

    fn check(&self) -> Result<(), EnvError> {
        let bad = |key: &str, value: String, rule: &str| Err(EnvError::BadAtari(format!("env.atari.{key} = {value}: {rule}")));
        for (key, value) in [
            ("frame_skip", self.frame_skip),
            ("screen_size", self.screen_size),
            ("frame_stack", self.frame_stack),
        ] {
            if value == 0 {
                return bad(key, value.to_string(), "it must be at least 1");
            }
        }
        if let Err(error) = check_frame_stack(self.frame_stack as usize) {
            return bad("frame_stack", self.frame_stack.to_string(), &error.to_string());
        }
        if !(0.0..=1.0).contains(&self.repeat_action_probability) {
            return bad(
                "repeat_action_probability",
                self.repeat_action_probability.to_string(),
                "it is a probability, in 0..=1",
            );
        }
        Ok(())
    }
}

/// Reads `env.options` values of any TOML scalar type as the strings the
/// bridge protocol carries (the server reads them back as JSON).
fn option_values<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Bool(bool),
        Int(i64),
        Float(f64),
        Text(String),
    }
    let values = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(values
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Scalar::Bool(b) => b.to_string(),
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Text(t) => t,
            };
            (key, text)
        })
        .collect())
}

/// Reads `env.spec`, where the empty table the default config holds means unset.
fn optional_spec<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<EnvSpec>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum MaybeSpec {
        Spec(EnvSpec),
        Unset {},
    }
    Ok(match Option::<MaybeSpec>::deserialize(deserializer)? {
        Some(MaybeSpec::Spec(spec)) => Some(spec),
        Some(MaybeSpec::Unset {}) | None => None,
    })
}

impl Default for EnvConfig {
    fn default() -> Self {
        Self::named(cartpole::NAME)
    }
}

impl EnvConfig {
    /// The environment `name` without wrappers.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            frame_stack: 1,
            normalize_observations: false,
            remote: String::new(),
            bridge_command: vec![DEFAULT_BRIDGE_COMMAND.to_owned()],
            bridge_streams: 1,
            options: BTreeMap::new(),
            spec: None,
            preprocess: Preprocess::None,
            atari: AtariConfig::default(),
        }
    }

    /// Whether the env bridge serves this environment.
    pub fn is_bridged(&self) -> bool {
        !self.remote.is_empty() || BRIDGE_PREFIXES.iter().any(|prefix| self.name.starts_with(prefix))
    }

    /// Checks what can be checked without building anything: the name, the
    /// wrappers, and for bridged environments that one frame stack at most
    /// is asked for (the Atari preprocessing has its own). Whether observations
    /// can be normalised is known with the spec: [`check_spec`](Self::check_spec).
    pub fn check(&self) -> Result<(), EnvError> {
        check_frame_stack(self.frame_stack)?;
        if !self.is_bridged() {
            if self.preprocess != Preprocess::None {
                return Err(EnvError::BridgedOnly("preprocess", self.name.clone()));
            }
            return check_name(&self.name);
        }
        if self.preprocess == Preprocess::Atari {
            self.atari.check()?;
        }
        if self.bridge_streams == 0 {
            return Err(EnvError::Bridge(
                "env.bridge_streams = 0: a vector needs at least one stream".into(),
            ));
        }
        if self.frame_stack > 1 && self.preprocess == Preprocess::Atari {
            return Err(EnvError::TwoFrameStacks(self.frame_stack, self.name.clone()));
        }
        let id = BRIDGE_PREFIXES
            .iter()
            .find_map(|prefix| self.name.strip_prefix(prefix))
            .unwrap_or(&self.name);
        if id.is_empty() {
            return Err(EnvError::Bridge(format!(
                "env.name `{}` names no environment after its prefix",
                self.name
            )));
        }
        Ok(())
    }

    /// Checks the wrappers against the environment's spec: only vector
    /// observations can be normalised.
    pub fn check_spec(&self, spec: &EnvSpec) -> Result<(), EnvError> {
        if self.normalize_observations {
            normalize::check_vector(&self.name, spec)?;
        }
        Ok(())
    }

    /// The spec of the configured environment: built natively, taken from
    /// `spec`, or asked of the bridge.
    pub async fn resolve_spec(&self, max_message_bytes: usize) -> Result<EnvSpec, EnvError> {
        self.check()?;
        if !self.is_bridged() {
            return Ok(self.make(0)?.spec());
        }
        let spec = match self.spec {
            Some(spec) => spec,
            None => {
                let (served, frames) = self.served_by_bridge();
                frame_stack::stacked_spec(bridge::probe_spec(&served, max_message_bytes).await?, frames)
            }
        };
        self.check_spec(&spec)?;
        Ok(spec)
    }

    /// `num_envs` of the configured environments, reset and ready to step:
    /// native, or opened on the env bridge (blocking on `runtime`, so call it
    /// from outside it; `shutdown` stops a wait for a remote server), its
    /// observations normalised over the whole vector with
    /// `normalize_observations`, then stacked on the actor (`frame_stack`,
    /// or the Atari preprocessing's).
    pub fn make_vec(
        &self,
        num_envs: usize,
        seed: u64,
        max_message_bytes: usize,
        runtime: tokio::runtime::Handle,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<VecEnv, EnvError> {
        self.check()?;
        let envs: Box<dyn BatchEnv> = if self.is_bridged() {
            let (served, frames) = self.served_by_bridge();
            let mut envs: Box<dyn BatchEnv> = Box::new(BridgedEnvs::open(&served, num_envs, seed, max_message_bytes, runtime, shutdown)?);
            // Normalised before stacking, as native environments are.
            if self.normalize_observations {
                envs = Box::new(NormalizeBatch::new(envs, &self.name)?);
            }
            if frames > 1 {
                envs = Box::new(StackBatch::new(envs, frames));
            }
            if let Some(expected) = self.spec
                && expected != envs.spec()
            {
                return Err(EnvError::SpecMismatch {
                    name: self.name.clone(),
                    expected,
                    found: envs.spec(),
                });
            }
            envs
        } else {
            // Native environments normalise one by one, before any frame
            // stacking (`make`), as they always have: runs recorded that
            // way stay comparable.
            Box::new(NativeEnvs::new(self, num_envs, seed)?)
        };
        VecEnv::start(envs)
    }

    /// What the bridge is asked to serve, and how many of its observations
    /// the actor stacks into one. The Atari preprocessing's frame stack is
    /// built on the actor ([`StackBatch`]), so that each step carries every
    /// environment's newest frame alone: a quarter of the bytes for a stack
    /// of 4.
    fn served_by_bridge(&self) -> (EnvConfig, usize) {
        let mut served = self.clone();
        served.spec = None;
        let frames = match self.preprocess {
            Preprocess::Atari => std::mem::replace(&mut served.atari.frame_stack, 1) as usize,
            Preprocess::None => std::mem::replace(&mut served.frame_stack, 1),
        };
        (served, frames)
    }

    /// Builds the configured native environment, its randomness seeded by `seed`.
    pub fn make(&self, seed: u64) -> Result<Box<dyn Environment>, EnvError> {
        check_frame_stack(self.frame_stack)?;
        let mut env = make(&self.name, seed)?;
        if self.normalize_observations {
            if env.frame().is_some() {
                return Err(EnvError::NormalizedFrames(self.name.clone()));
            }
            env = Box::new(NormalizeObservation::new(env));
        }
        if self.frame_stack > 1 {
            env = Box::new(FrameStack::new(env, self.frame_stack));
        }
        Ok(env)
    }
}

/// Whether [`make`] accepts `name`, with the error it would give if not,
/// without building anything. Unlike a lookup in [`ENVIRONMENTS`], this
/// accepts every `memory-chain-N`.
pub fn check_name(name: &str) -> Result<(), EnvError> {
    if ENVIRONMENTS.contains(&name) {
        return Ok(());
    }
    match memory_chain::horizon_from_name(name) {
        Some(horizon) => horizon.map(drop),
        None => Err(EnvError::Unknown(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_stacks_what_the_bridge_serves_one_frame_at_a_time() {
        let atari = EnvConfig {
            preprocess: Preprocess::Atari,
            spec: Some(EnvSpec::vector(1, 1)),
            ..EnvConfig::named("gym:ALE/Pong-v5")
        };
        let (served, frames) = atari.served_by_bridge();
        assert_eq!((served.atari.frame_stack, frames, served.spec), (1, 4, None));
        assert_eq!(served.atari.frame_skip, 4, "the rest of the preprocessing is the bridge's");
        let stacked = EnvConfig {
            frame_stack: 3,
            ..EnvConfig::named("gym:CartPole-v1")
        };
        let (served, frames) = stacked.served_by_bridge();
        assert_eq!((served.frame_stack, frames), (1, 3));
        assert_eq!(served.atari, AtariConfig::default());
    }

    #[test]
    fn env_make_knows_every_listed_name() {
        for name in ENVIRONMENTS {
            let env = make(name, 0).expect("listed environments can be built");
            assert!(env.observation_size() > 0 && env.action_spec().policy_width() > 0);
            assert_eq!(env.spec().observation_size(), env.observation_size());
        }
    }

    #[test]
    fn image_environments_report_their_frames_and_stacks_multiply_channels() {
        let spec = make("catch", 0).unwrap().spec();
        assert_eq!(spec.frame(), Some(catch::FRAME));
        assert_eq!(make("CartPole-v1", 0).unwrap().spec().frame(), None);
        let stacked_catch = EnvConfig {
            frame_stack: 4,
            ..EnvConfig::named("catch")
        };
        let stacked = stacked_catch.make(0).unwrap().spec();
        assert_eq!(
            stacked.frame(),
            Some(FrameShape {
                channels: 4,
                ..catch::FRAME
            })
        );
        assert_eq!(stacked.observation_size(), 4 * catch::FRAME.size());
        let stacked_cartpole = EnvConfig {
            frame_stack: 2,
            ..EnvConfig::named("CartPole-v1")
        };
        assert_eq!(stacked_cartpole.make(0).unwrap().observation_size(), 8);
        let unstacked = EnvConfig {
            frame_stack: 0,
            ..EnvConfig::named("catch")
        };
        assert!(matches!(unstacked.make(0), Err(EnvError::BadFrameStack(0))));
    }

    #[test]
    fn only_vector_observations_are_normalised() {
        let normalized = |name: &str| EnvConfig {
            normalize_observations: true,
            frame_stack: 2,
            ..EnvConfig::named(name)
        };
        let env = normalized("cartpole-masked").make(0).unwrap();
        assert_eq!((env.observation_size(), env.frame()), (4, None));
        let error = normalized("catch").make(0).err().expect("frames are not normalised");
        assert!(matches!(&error, EnvError::NormalizedFrames(name) if name == "catch"), "{error}");
        assert!(error.to_string().contains("catch"));
    }

    #[test]
    fn the_physical_state_passes_through_every_wrapper() {
        let wrapped = EnvConfig {
            normalize_observations: true,
            frame_stack: 3,
            ..EnvConfig::named(masked::NAME)
        };
        let mut env = wrapped.make(5).unwrap();
        let mut plain = CartPole::new(5);
        let (mut observation, mut raw) = (vec![0.0f32; env.observation_size()], [0.0f32; 4]);
        env.reset(ObservationsMut::F32(&mut observation));
        plain.reset(ObservationsMut::F32(&mut raw));
        assert_eq!(env.physical_state(), Some(&plain.state()[..]));
        env.step(Action::Discrete(1), ObservationsMut::F32(&mut observation));
        plain.step(Action::Discrete(1), ObservationsMut::F32(&mut raw));
        assert_eq!(env.physical_state(), Some(&plain.state()[..]));
        assert_eq!(make(catch::NAME, 0).unwrap().physical_state(), None);
        let vec_env = VecEnv::from_config(&wrapped, 2, 5).unwrap();
        assert_eq!(vec_env.physical_state(1).map(<[f64]>::len), Some(4));
        assert_eq!(vec_env.physical_state(2), None);
    }

    #[test]
    fn env_make_rejects_unknown_names() {
        let error = make("CartPole-v0", 0).err().expect("unknown name must fail");
        assert!(matches!(&error, EnvError::Unknown(name) if name == "CartPole-v0"));
        let message = error.to_string();
        for name in ENVIRONMENTS {
            assert!(message.contains(name), "{message} does not list {name}");
        }
    }

    #[test]
    fn env_check_name_agrees_with_make() {
        for name in ENVIRONMENTS
            .iter()
            .copied()
            .chain(["memory-chain-50", "memory-chain-0", "memory-chain-x", "Pong", "cartpole"])
        {
            assert_eq!(check_name(name).is_ok(), make(name, 0).is_ok(), "{name}");
        }
        assert!(check_name("memory-chain-50").is_ok());
        assert!(matches!(check_name("memory-chain-0"), Err(EnvError::BadHorizon { .. })));
        assert!(matches!(check_name("Pong"), Err(EnvError::Unknown(_))));
    }
}
