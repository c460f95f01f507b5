//! `fleet run`: the whole system on one machine. Starts replay, the learner
//! and N actors as child processes of this same binary on free loopback
//! ports, reads each child's ready line to learn its ports, prints progress
//! from the children's own Prometheus endpoints, and stops everything when
//! the target return is reached, the step budget runs out, a child dies, or
//! the user interrupts. Everything it prints and the learner's checkpoints
//! and final weights also go to the run's folder (see [`crate::runs`]); a
//! resumed run goes on from the newest checkpoint and the counters the
//! folder recorded. `fleet record` ([`record`]) keeps the same records of
//! a fleet started elsewhere, from the `/metrics` addresses it is given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use fleet_actor::metrics as actor_metrics;
use fleet_actor::returns::Spread;
use fleet_learner::metrics as learner_metrics;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::process::Process;
use crate::progress::{Live, ProgressView, Verbosity};
use crate::runs::{ProgressRow, ProgressWriter, RunFolder, Summary};
use crate::scrape::{Samples, scrape, series};
use crate::tensorboard::EventWriter;

/// Episodes in the per-episode mean, across all actors.
const RETURN_EPISODES: usize = 100;
/// Env steps whose episodes make up the step-weighted mean the target is
/// judged on, across all actors.
const RETURN_STEPS: u64 = 50_000;

/// How a run ended. Returns are step-weighted means (see `RETURN_STEPS`).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The target was reached and, with `run.hold_env_steps`, held:
    /// `lowest` is the lowest return seen while holding.
    TargetReached {
        step_return: f64,
        env_steps: u64,
        lowest: Option<f64>,
        /// The env step at which the target was first reached.
        reached_at: u64,
    },
    /// After reaching the target, the return fell below `run.hold_min_return`.
    Collapsed {
        reached_at: u64,
        step_return: f64,
        env_steps: u64,
    },
    BudgetExhausted {
        step_return: Option<f64>,
        env_steps: u64,
    },
    Interrupted,
}

/// Runs the system until it ends, recording it in `folder`; returns how.
/// With `resume`, the folder holds a run that stopped: the learner goes on
/// from its newest checkpoint and the progress counters from the folder's
/// last row. `verbosity` sets what is shown while it runs (see
/// [`crate::progress`]). The children are this same executable, so only the
/// `fleet` binary can call this.
pub async fn run(mut config: Config, folder: RunFolder, resume: bool, verbosity: Verbosity) -> Result<Outcome> {
    let bridged = if config.env.is_bridged() {
        // Ask the bridge once, here, so the learner needs none, every actor
        // checks its environments against the same spec, and the run folder
        // records it (`fleet eval` and `fleet export` then need no bridge
        // to know the network's shapes).
        let spec = fleet_actor::env::bridge::probe_spec(&config.env, config.replay.max_message_bytes)
            .await
            .map_err(|error| anyhow::anyhow!("env `{}`: {error}", config.env.name))?;
        if let Err(error) = config.env.check_spec(&spec) {
            bail!("invalid config: env.normalize_observations: {error}");
        }
        config.check_network_fits(&spec)?;
        if let Some(expected) = config.env.spec
            && expected != spec
        {
            bail!("env `{}` has {spec}, but env.spec says {expected}", config.env.name);
        }
        config.env.spec = Some(spec);
        Some(format!("env      {} via the env bridge: {spec}", config.env.name))
    } else {
        None
    };
    folder.write_config(&config)?;
    if config.learner.checkpoint_dir.is_empty() {
        config.learner.checkpoint_dir = folder.checkpoint_dir().to_string_lossy().into_owned();
    }
    let checkpoint_dir = PathBuf::from(&config.learner.checkpoint_dir);
    // Checked here, as the learner checks it, so that the error names the
    // key rather than a file the run folder reads from it.
    fleet_learner::checkpoint::check_writable(&checkpoint_dir).with_context(|| {
        format!(
            "learner.checkpoint_dir {} is not a directory this learner can write",
            checkpoint_dir.display()
        )
    })?;
    let start = Start::read(&folder, &checkpoint_dir, resume)?;
    let view = ProgressView::new(verbosity, config.run.max_env_steps, start.offsets.env_steps);
    view.say(&format!("run      {}", folder.path.display()));
    if let Some(line) = &bridged {
        view.say(line);
    }
    if resume {
        view.say(&format!(
            "resuming from {}: env steps {}, episodes {}, learner updates {}, weights version {}, {:.0} s so far",
            start.checkpoint.as_ref().map_or("-".into(), |c| c.path.display().to_string()),
            start.offsets.env_steps,
            start.offsets.episodes,
            start.offsets.updates,
            start.checkpoint.as_ref().map_or(0, |c| c.version),
            start.offsets.wall_seconds,
        ));
    }
    let (mut recorder, summary) = open_recording(&folder, &config, &start, view, verbosity)?;
    let result = run_processes(config, &mut recorder).await;
    close_recording(&folder, recorder, summary, result, Some(&checkpoint_dir))
}

/// `fleet record`: records a fleet that runs elsewhere (replay, learner and
/// actors started on their own, as compose and Kubernetes start them) into
/// `folder`, from the `/metrics` endpoints in `metrics`: the same progress
/// rows, TensorBoard events, summary and, when `learner.checkpoint_dir`
/// names a folder this process can read (a shared volume), the final
/// policy, as `fleet run` leaves. It stops nothing: it ends at the target,
/// the step budget or a signal, as `fleet run` does, and the fleet goes on.
pub async fn record(config: Config, folder: RunFolder, metrics: Vec<String>, verbosity: Verbosity) -> Result<Outcome> {
    folder.write_config(&config)?;
    let start = Start {
        offsets: Offsets::default(),
        checkpoint: None,
        previous: None,
    };
    let view = ProgressView::new(verbosity, config.run.max_env_steps, 0);
    view.say(&format!("run      {}", folder.path.display()));
    view.say(&format!("recording {} metrics endpoints: {}", metrics.len(), metrics.join(" ")));
    let (mut recorder, summary) = open_recording(&folder, &config, &start, view, verbosity)?;
    let result = supervise(&config, &metrics, &mut [], &mut recorder).await;
    let checkpoint_dir = (!config.learner.checkpoint_dir.is_empty()).then(|| PathBuf::from(&config.learner.checkpoint_dir));
    close_recording(&folder, recorder, summary, result, checkpoint_dir.as_deref())
}

/// Checks that every address serves `/metrics`, for `fleet record` before
/// it makes a run folder: one that cannot be read at the start is a
/// mistake (a wrong address), not a process that went away.
pub async fn check_metrics(metrics: &[String]) -> Result<()> {
    for address in metrics {
        scrape(address)
            .await
            .with_context(|| format!("--metrics {address}: cannot read its /metrics"))?;
    }
    Ok(())
}

/// Writes the summary of a run that starts and opens its progress file
/// (and TensorBoard events, if asked) for the recorder.
fn open_recording(
    folder: &RunFolder,
    config: &Config,
    start: &Start,
    view: ProgressView,
    verbosity: Verbosity,
) -> Result<(Recorder, Summary)> {
    let summary = start.summary(folder, config);
    folder.write_summary(&summary)?;
    let events = if config.run.tensorboard {
        let writer = EventWriter::create(&folder.path.join(crate::tensorboard::DIR))?;
        view.say(&format!("events   {} (TensorBoard)", writer.path().display()));
        Some(writer)
    } else {
        None
    };
    let recorder = Recorder::new(folder.progress_writer()?, events, start.offsets, view, verbosity);
    Ok((recorder, summary))
}

/// Copies the newest checkpoint's weights under `checkpoint_dir` (if any)
/// to the folder's policy file and writes the summary of how it ended.
fn close_recording(
    folder: &RunFolder,
    recorder: Recorder,
    mut summary: Summary,
    result: Result<Outcome>,
    checkpoint_dir: Option<&Path>,
) -> Result<Outcome> {
    recorder.view.finish();
    if let Some(dir) = checkpoint_dir {
        match save_policy(folder, dir) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "warning: no learner checkpoint under {}; no {} written",
                dir.display(),
                crate::runs::POLICY_FILE
            ),
            Err(error) => eprintln!("warning: {error:#}"),
        }
    }
    summary.end(&result, recorder.last.as_ref(), SystemTime::now());
    folder.write_summary(&summary)?;
    result
}

/// Copies the weights of the newest learner checkpoint under `dir` to the
/// folder's policy file; false when there is no checkpoint.
fn save_policy(folder: &RunFolder, dir: &Path) -> Result<bool> {
    let Some(loaded) = fleet_learner::checkpoint::latest(dir, &candle_core::Device::Cpu)
        .with_context(|| format!("reading the newest learner checkpoint under {}", dir.display()))?
    else {
        return Ok(false);
    };
    folder.write_policy(&loaded.model)?;
    Ok(true)
}

/// The counters a run goes on from: zero for a new run; for a resumed one
/// the folder's last progress row, and the learner's updates from the
/// checkpoint it restores.
#[derive(Debug, Clone, Copy, Default)]
struct Offsets {
    wall_seconds: f64,
    env_steps: u64,
    episodes: u64,
    updates: u64,
}

/// The checkpoint the learner will restore.
#[derive(Debug, Clone)]
struct CheckpointFacts {
    path: PathBuf,
    version: u64,
}

/// What a folder says about where a run starts.
struct Start {
    offsets: Offsets,
    checkpoint: Option<CheckpointFacts>,
    previous: Option<Summary>,
}

impl Start {
    fn read(folder: &RunFolder, checkpoint_dir: &Path, resume: bool) -> Result<Self> {
        // The learner restores the newest checkpoint at start (also for a
        // new run whose learner.checkpoint_dir already holds some): its
        // updates go on from that one's.
        let loaded = fleet_learner::checkpoint::latest(checkpoint_dir, &candle_core::Device::Cpu)
            .with_context(|| format!("reading the newest learner checkpoint under {}", checkpoint_dir.display()))?;
        let mut offsets = Offsets::default();
        let checkpoint = loaded.map(|loaded| {
            offsets.updates = loaded.meta.updates;
            CheckpointFacts {
                path: loaded.path,
                version: loaded.meta.version,
            }
        });
        if !resume {
            return Ok(Self {
                offsets,
                checkpoint,
                previous: None,
            });
        }
        if checkpoint.is_none() {
            bail!(
                "cannot resume {}: no learner checkpoint under {}",
                folder.path.display(),
                checkpoint_dir.display()
            );
        }
        let previous = folder.read_summary()?;
        if let Some(last) = folder.read_progress()?.last() {
            offsets.wall_seconds = last.wall_seconds;
            offsets.env_steps = last.env_steps;
            offsets.episodes = last.episodes;
        }
        Ok(Self {
            offsets,
            checkpoint,
            previous,
        })
    }

    /// The summary of a run that has just started (again).
    fn summary(&self, folder: &RunFolder, config: &Config) -> Summary {
        let previous = self.previous.as_ref();
        Summary {
            name: folder.name.clone(),
            status: "running".into(),
            start_time: previous.map_or_else(|| crate::runs::rfc3339(SystemTime::now()), |p| p.start_time.clone()),
            end_time: None,
            wall_seconds: self.offsets.wall_seconds,
            env_steps: self.offsets.env_steps,
            episodes: self.offsets.episodes,
            learner_updates: self.offsets.updates,
            final_mean_return: previous.and_then(|p| p.final_mean_return),
            final_step_weighted_return: previous.and_then(|p| p.final_step_weighted_return),
            target_return: config.run.target_return,
            target_reached: previous.is_some_and(|p| p.target_reached),
            target_reached_at_env_step: previous.and_then(|p| p.target_reached_at_env_step),
            segments: previous.map_or(1, |p| p.segments + 1),
        }
    }
}

impl Summary {
    /// Records how the run ended, from its outcome and last progress row.
    fn end(&mut self, result: &Result<Outcome>, last: Option<&ProgressRow>, now: SystemTime) {
        self.end_time = Some(crate::runs::rfc3339(now));
        self.status = match result {
            Ok(Outcome::TargetReached { .. }) => "target_reached",
            Ok(Outcome::Collapsed { .. }) => "collapsed",
            Ok(Outcome::BudgetExhausted { .. }) => "budget_exhausted",
            Ok(Outcome::Interrupted) => "interrupted",
            Err(_) => "failed",
        }
        .into();
        let reached_at = match result {
            Ok(Outcome::TargetReached { reached_at, .. } | Outcome::Collapsed { reached_at, .. }) => Some(*reached_at),
            _ => None,
        };
        if let Some(at) = reached_at
            && self.target_reached_at_env_step.is_none()
        {
            self.target_reached = true;
            self.target_reached_at_env_step = Some(at);
        }
        if let Some(last) = last {
            self.wall_seconds = last.wall_seconds;
            self.env_steps = last.env_steps;
            self.episodes = last.episodes;
            self.learner_updates = last.learner_updates;
            self.final_mean_return = last.return_mean;
            self.final_step_weighted_return = last.return_step_weighted;
        }
    }
}

/// Starts the children, supervises them until the run ends, and stops them.
async fn run_processes(mut config: Config, recorder: &mut Recorder) -> Result<Outcome> {
    let actors = config.run.actors;
    // Each actor averages its share of the last 100 episodes and 50,000 steps.
    config.actor.return_window = RETURN_EPISODES.div_ceil(actors);
    config.actor.return_window_steps = RETURN_STEPS.div_ceil(actors as u64);
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let config_path = dir.path().join("effective.toml");
    config.write_to(&config_path)?;
    tracing::debug!(config = %config.to_toml()?, "effective config");

    let loopback = "127.0.0.1:0".to_string();
    let mut processes = Vec::new();
    let log = recorder.verbosity.child_log_filter();
    let replay = Process::spawn_child(
        "replay",
        &config_path,
        log,
        &[
            "replay".into(),
            "--listen".into(),
            loopback.clone(),
            "--metrics-listen".into(),
            loopback.clone(),
        ],
    )
    .await?;
    let replay_grpc = replay.grpc.clone();
    processes.push(replay);
    let learner = Process::spawn_child(
        "learner",
        &config_path,
        log,
        &[
            "learner".into(),
            "--listen".into(),
            loopback.clone(),
            "--metrics-listen".into(),
            loopback.clone(),
            "--replay".into(),
            replay_grpc.clone(),
        ],
    )
    .await?;
    let learner_grpc = learner.grpc.clone();
    processes.push(learner);
    for id in 0..actors {
        let args = [
            "actor".into(),
            "--actor-id".into(),
            id.to_string(),
            "--metrics-listen".into(),
            loopback.clone(),
            "--replay".into(),
            replay_grpc.clone(),
            "--learner".into(),
            learner_grpc.clone(),
        ];
        processes.push(Process::spawn_child(&format!("actor-{id}"), &config_path, log, &args).await?);
    }
    let view = &recorder.view;
    view.say(&format!(
        "replay   gRPC {}  metrics http://{}/metrics",
        processes[0].grpc, processes[0].metrics
    ));
    view.say(&format!(
        "learner  gRPC {}  metrics http://{}/metrics",
        processes[1].grpc, processes[1].metrics
    ));
    for p in &processes[2..] {
        view.say(&format!("{:<8} metrics http://{}/metrics", p.name, p.metrics));
    }

    let metrics: Vec<String> = processes.iter().map(|p| p.metrics.clone()).collect();
    let result = supervise(&config, &metrics, &mut processes, recorder).await;
    // Actors first, so nothing is left writing into a stopped replay.
    for p in processes.iter_mut().rev() {
        p.stop(Duration::from_secs(10)).await;
    }
    result
}

/// Where a run stands against its target: not yet reached, or reached at
/// some env step and held since.
#[derive(Debug, Clone, Copy)]
struct Hold {
    reached_at: u64,
    lowest: f64,
}

/// The progress loop: checks the stop conditions every second (or more
/// often, with a shorter progress interval) and prints and records a line
/// per interval, and one at the end.
/// `metrics`: every process's `/metrics` address; `children`: the
/// processes this one started, whose exit ends the run (none when only
/// recording a cluster).
async fn supervise(config: &Config, metrics: &[String], children: &mut [Process], recorder: &mut Recorder) -> Result<Outcome> {
    // Installed once, before the loop: a signal that arrives while the loop
    // is scraping is then still seen at the next select.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let interval = Duration::from_secs_f64(config.run.progress_interval_secs);
    let mut hold: Option<Hold> = None;
    let mut tick = tokio::time::interval(interval.min(Duration::from_secs(1)));
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = interrupt.recv() => Some("interrupted"),
            _ = terminate.recv() => Some("terminated"),
            _ = tick.tick() => None,
        };
        if let Some(why) = stopping {
            recorder.view.say(&format!("{why}; stopping"));
            let snapshot = recorder.scrape(metrics, config.actor.return_window).await;
            recorder.record(snapshot, Instant::now())?;
            return Ok(Outcome::Interrupted);
        }
        for p in children.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited unexpectedly ({status})", p.name);
            }
        }
        let now = Instant::now();
        let snapshot = recorder.scrape(metrics, config.actor.return_window).await;
        let holding = hold.is_some();
        let outcome = judge(&config.run, &snapshot, &mut hold);
        if let (false, Some(held)) = (holding, hold) {
            recorder.view.say(&format!(
                "target {} reached after {} env steps; holding it for {} more",
                config.run.target_return, held.reached_at, config.run.hold_env_steps
            ));
        }
        recorder.view.update(&Live {
            env_steps: snapshot.env_steps,
            step_return: snapshot.step_return,
            policy_lag: recorder.last.as_ref().and_then(|row| row.policy_lag),
            learner_updates: snapshot.updates,
        });
        if outcome.is_some() || now - recorder.previous_at >= interval {
            recorder.record(snapshot, now)?;
        }
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
    }
}

/// Turns snapshots into progress lines, rows of the progress file and,
/// if asked, TensorBoard events.
struct Recorder {
    writer: ProgressWriter,
    events: Option<EventWriter>,
    view: ProgressView,
    verbosity: Verbosity,
    offsets: Offsets,
    started: Instant,
    previous: Snapshot,
    previous_at: Instant,
    /// The last row written.
    last: Option<ProgressRow>,
}

impl Recorder {
    fn new(writer: ProgressWriter, events: Option<EventWriter>, offsets: Offsets, view: ProgressView, verbosity: Verbosity) -> Self {
        let now = Instant::now();
        Self {
            writer,
            events,
            view,
            verbosity,
            offsets,
            started: now,
            previous: Snapshot {
                env_steps: offsets.env_steps,
                episodes: offsets.episodes,
                updates: offsets.updates,
                ..Snapshot::default()
            },
            previous_at: now,
            last: None,
        }
    }

    /// The children's metrics, with the counters of earlier segments added.
    async fn scrape(&self, metrics: &[String], window: usize) -> Snapshot {
        let mut snapshot = Snapshot::scrape(metrics, window).await;
        snapshot.env_steps += self.offsets.env_steps;
        snapshot.episodes += self.offsets.episodes;
        snapshot.updates += self.offsets.updates;
        snapshot
    }

    /// Prints the progress line of `snapshot` and appends its row, if it
    /// took env steps since the last row. The env step is every curve's
    /// x-axis, and a row that repeated one (a tick before a resumed run's
    /// actors have stepped, a stop just after a row) would put two points
    /// at one step. A run without any row yet records its first anyway.
    fn record(&mut self, snapshot: Snapshot, now: Instant) -> Result<()> {
        let has_rows = self.last.is_some() || self.offsets.env_steps > 0;
        if has_rows && snapshot.env_steps <= self.previous.env_steps {
            return Ok(());
        }
        let since = (now - self.previous_at).as_secs_f64().max(1e-9);
        let row = ProgressRow {
            // Rounded as the progress file writes them, so that the summary
            // (made from this row) and the file agree exactly.
            wall_seconds: round_to(self.offsets.wall_seconds + (now - self.started).as_secs_f64(), 1e3),
            env_steps: snapshot.env_steps,
            env_steps_per_second: round_to(snapshot.env_steps.saturating_sub(self.previous.env_steps) as f64 / since, 10.0),
            episodes: snapshot.episodes,
            return_mean: snapshot.episode_return,
            return_median: snapshot.spread.map(|s| s.median),
            return_min: snapshot.spread.map(|s| s.min),
            return_max: snapshot.spread.map(|s| s.max),
            return_step_weighted: snapshot.step_return,
            learner_updates: snapshot.updates,
            loss_policy: snapshot.losses[0],
            loss_baseline: snapshot.losses[1],
            loss_entropy: snapshot.losses[2],
            loss_total: snapshot.losses[3],
            policy_lag: snapshot.lag_mean_since(&self.previous),
        };
        self.view.row(&row);
        self.writer.append(&row)?;
        if let Some(events) = &mut self.events {
            events.append(&row)?;
        }
        self.last = Some(row);
        self.previous = snapshot;
        self.previous_at = now;
        Ok(())
    }
}

/// The run's outcome once `snapshot` decides it, updating `hold`.
fn judge(run: &crate::config::RunConfig, snapshot: &Snapshot, hold: &mut Option<Hold>) -> Option<Outcome> {
    let env_steps = snapshot.env_steps;
    if hold.is_none()
        && let Some(step_return) = snapshot.step_return
        && step_return >= run.target_return
    {
        if run.hold_env_steps == 0 {
            return Some(Outcome::TargetReached {
                step_return,
                env_steps,
                lowest: None,
                reached_at: env_steps,
            });
        }
        *hold = Some(Hold {
            reached_at: env_steps,
            lowest: step_return,
        });
    }
    match hold {
        Some(held) => {
            let step_return = snapshot.step_return.unwrap_or(held.lowest);
            held.lowest = held.lowest.min(step_return);
            if step_return < run.hold_min_return {
                return Some(Outcome::Collapsed {
                    reached_at: held.reached_at,
                    step_return,
                    env_steps,
                });
            }
            (env_steps >= held.reached_at + run.hold_env_steps).then_some(Outcome::TargetReached {
                step_return,
                env_steps,
                lowest: Some(held.lowest),
                reached_at: held.reached_at,
            })
        }
        None => (env_steps >= run.max_env_steps).then_some(Outcome::BudgetExhausted {
            step_return: snapshot.step_return,
            env_steps,
        }),
    }
}

/// `value` rounded to a multiple of `1 / per_unit`.
fn round_to(value: f64, per_unit: f64) -> f64 {
    (value * per_unit).round() / per_unit
}

/// What the progress line needs, summed over the children's metrics.
#[derive(Debug, Default, Clone)]
struct Snapshot {
    env_steps: u64,
    episodes: u64,
    updates: u64,
    /// Step-weighted mean return over the episodes that fill the fleet's
    /// last `RETURN_STEPS` env steps, once they are filled.
    step_return: Option<f64>,
    /// Mean return over the fleet's last `RETURN_EPISODES` episodes, once
    /// that many have finished.
    episode_return: Option<f64>,
    /// Lowest, median and highest of those episodes' returns (see
    /// [`ProgressRow::return_median`] for the median of several actors).
    spread: Option<Spread>,
    lag_sum: f64,
    lag_count: f64,
    /// The learner's latest loss terms, in the order of [`LOSS_KINDS`].
    losses: [Option<f64>; 4],
}

/// The `kind` labels of `fleet_learner_loss`, as the progress file's loss columns.
const LOSS_KINDS: [&str; 4] = ["policy", "baseline", "entropy", "total"];

impl Snapshot {
    /// `window`: episodes each actor averages over (its share of the last 100).
    async fn scrape(metrics: &[String], window: usize) -> Self {
        let mut s = Snapshot::default();
        let (mut weighted, mut weight) = (0.0, 0.0);
        let (mut step_weighted, mut steps) = (0.0, 0.0);
        // Per actor: (its median, its episodes in the window), min and max.
        let mut medians = Vec::new();
        let (mut lowest, mut highest) = (f64::INFINITY, f64::NEG_INFINITY);
        for address in metrics {
            let Ok(text) = scrape(address).await else {
                continue;
            };
            let samples = Samples::parse(&text);
            s.env_steps += samples.sum(actor_metrics::ENV_STEPS) as u64;
            s.updates += samples.sum(learner_metrics::UPDATES) as u64;
            s.lag_sum += samples.sum(&format!("{}_sum", learner_metrics::POLICY_LAG));
            s.lag_count += samples.sum(&format!("{}_count", learner_metrics::POLICY_LAG));
            for (loss, kind) in s.losses.iter_mut().zip(LOSS_KINDS) {
                if let Some(value) = samples.value(&series(learner_metrics::LOSS, &[("kind", kind)])) {
                    *loss = Some(value);
                }
            }
            let episodes = samples.sum(actor_metrics::EPISODES);
            s.episodes += episodes as u64;
            if episodes > 0.0 {
                let w = episodes.min(window as f64);
                weighted += w * samples.sum(actor_metrics::EPISODE_RETURN_RECENT);
                weight += w;
                if let (Some(min), Some(median), Some(max)) = (
                    samples.value(actor_metrics::EPISODE_RETURN_RECENT_MIN),
                    samples.value(actor_metrics::EPISODE_RETURN_RECENT_MEDIAN),
                    samples.value(actor_metrics::EPISODE_RETURN_RECENT_MAX),
                ) {
                    medians.push((median, w));
                    lowest = lowest.min(min);
                    highest = highest.max(max);
                }
                let window_steps = samples.sum(actor_metrics::RETURN_WINDOW_STEPS);
                step_weighted += window_steps * samples.sum(actor_metrics::EPISODE_RETURN_STEP_WEIGHTED);
                steps += window_steps;
            }
        }
        if weight >= RETURN_EPISODES as f64 {
            s.episode_return = Some(weighted / weight);
            s.spread = weighted_median(&mut medians).map(|median| Spread {
                min: lowest,
                median,
                max: highest,
            });
        }
        if steps >= RETURN_STEPS as f64 {
            s.step_return = Some(step_weighted / steps);
        }
        s
    }

    fn lag_mean_since(&self, previous: &Snapshot) -> Option<f64> {
        let count = self.lag_count - previous.lag_count;
        (count > 0.0).then(|| (self.lag_sum - previous.lag_sum) / count)
    }
}

/// The value at which the weights, summed in order of value, first reach
/// half their total; `None` for no weight.
fn weighted_median(values: &mut [(f64, f64)]) -> Option<f64> {
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = values.iter().map(|(_, w)| w).sum();
    let mut below = 0.0;
    for &(value, weight) in values.iter() {
        below += weight;
        if below >= total / 2.0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weighted_median_follows_the_weights() {
        assert_eq!(weighted_median(&mut []), None);
        assert_eq!(weighted_median(&mut [(7.0, 50.0)]), Some(7.0));
        // Sorted by value: 1 (10), 5 (30), 9 (60): half of 100 is reached at 9.
        assert_eq!(weighted_median(&mut [(9.0, 60.0), (1.0, 10.0), (5.0, 30.0)]), Some(9.0));
        assert_eq!(weighted_median(&mut [(9.0, 40.0), (1.0, 10.0), (5.0, 50.0)]), Some(5.0));
    }
}
