//! `fleet run`: the whole system on one machine. Starts replay, the learner
//! and N actors as child processes of this same binary on free loopback
//! ports, reads each child's ready line to learn its ports, prints progress
//! from the children's own Prometheus endpoints, and stops everything when
//! the target return is reached, the step budget runs out, a child dies, or
//! the user interrupts.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fleet_actor::metrics as actor_metrics;
use fleet_learner::metrics as learner_metrics;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::process::Process;
use crate::scrape::{Samples, scrape};

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

/// Runs the system until it ends; returns how. The children are this same
/// executable, so only the `fleet` binary can call this.
pub async fn run(mut config: Config) -> Result<Outcome> {
    let actors = config.run.actors;
    // Each actor averages its share of the last 100 episodes and 50,000 steps.
    config.actor.return_window = RETURN_EPISODES.div_ceil(actors);
    config.actor.return_window_steps = RETURN_STEPS.div_ceil(actors as u64);
    if config.env.is_bridged() {
        // Ask the bridge once, here, so the learner needs none and every
        // actor checks its environments against the same spec.
        let spec = fleet_actor::env::bridge::probe_spec(&config.env, config.replay.max_message_bytes)
            .await
            .map_err(|error| anyhow::anyhow!("env `{}`: {error}", config.env.name))?;
        config.check_network_fits(&spec)?;
        if let Some(expected) = config.env.spec
            && expected != spec
        {
            bail!("env `{}` has {spec}, but env.spec says {expected}", config.env.name);
        }
        println!("env      {} via the env bridge: {spec}", config.env.name);
        config.env.spec = Some(spec);
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let config_path = dir.path().join("effective.toml");
    config.write_to(&config_path)?;
    tracing::debug!(config = %config.to_toml()?, "effective config");

    let loopback = "127.0.0.1:0".to_string();
    let mut processes = Vec::new();
    let replay = Process::spawn_child(
        "replay",
        &config_path,
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
        processes.push(Process::spawn_child(&format!("actor-{id}"), &config_path, &args).await?);
    }
    println!(
        "replay   gRPC {}  metrics http://{}/metrics",
        processes[0].grpc, processes[0].metrics
    );
    println!(
        "learner  gRPC {}  metrics http://{}/metrics",
        processes[1].grpc, processes[1].metrics
    );
    for p in &processes[2..] {
        println!("{:<8} metrics http://{}/metrics", p.name, p.metrics);
    }

    let result = supervise(&config, &mut processes).await;
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
/// often, with a shorter progress interval) and prints a line per interval.
async fn supervise(config: &Config, processes: &mut [Process]) -> Result<Outcome> {
    // Installed once, before the loop: a signal that arrives while the loop
    // is scraping is then still seen at the next select.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(config.run.progress_interval_secs);
    let mut previous = Snapshot::default();
    let mut previous_at = started;
    let mut hold: Option<Hold> = None;
    let mut tick = tokio::time::interval(interval.min(Duration::from_secs(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = interrupt.recv() => {
                println!("interrupted; stopping");
                return Ok(Outcome::Interrupted);
            }
            _ = terminate.recv() => {
                println!("terminated; stopping");
                return Ok(Outcome::Interrupted);
            }
            _ = tick.tick() => {}
        }
        for p in processes.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited unexpectedly ({status})", p.name);
            }
        }
        let now = Instant::now();
        let snapshot = Snapshot::scrape(processes, config.actor.return_window).await;
        let outcome = judge(&config.run, &snapshot, &mut hold);
        if outcome.is_some() || now - previous_at >= interval {
            print_progress(&snapshot, &previous, now - started, now - previous_at);
            previous = snapshot;
            previous_at = now;
        }
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
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
            });
        }
        println!(
            "target {} reached after {env_steps} env steps; holding it for {} more",
            run.target_return, run.hold_env_steps
        );
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
            })
        }
        None => (env_steps >= run.max_env_steps).then_some(Outcome::BudgetExhausted {
            step_return: snapshot.step_return,
            env_steps,
        }),
    }
}

fn print_progress(snapshot: &Snapshot, previous: &Snapshot, elapsed: Duration, since_previous: Duration) {
    let rate = snapshot.env_steps.saturating_sub(previous.env_steps) as f64 / since_previous.as_secs_f64().max(1e-9);
    let lag = snapshot.lag_mean_since(previous);
    let value = |r: Option<f64>| r.map_or("   n/a".to_string(), |r| format!("{r:>6.1}"));
    println!(
        "[{:>6.0}s] env steps {:>9}  {:>8.0} steps/s  return {} (step-weighted)  {} (last {} of {} episodes)  learner updates {:>7}  policy lag {}",
        elapsed.as_secs_f64(),
        snapshot.env_steps,
        rate,
        value(snapshot.step_return),
        value(snapshot.episode_return),
        RETURN_EPISODES,
        snapshot.episodes,
        snapshot.updates,
        lag.map_or("n/a".to_string(), |l| format!("{l:.2}")),
    );
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
    lag_sum: f64,
    lag_count: f64,
}

impl Snapshot {
    /// `window`: episodes each actor averages over (its share of the last 100).
    async fn scrape(processes: &[Process], window: usize) -> Self {
        let mut s = Snapshot::default();
        let (mut weighted, mut weight) = (0.0, 0.0);
        let (mut step_weighted, mut steps) = (0.0, 0.0);
        for p in processes {
            let Ok(text) = scrape(&p.metrics).await else {
                continue;
            };
            let samples = Samples::parse(&text);
            s.env_steps += samples.sum(actor_metrics::ENV_STEPS) as u64;
            s.updates += samples.sum(learner_metrics::UPDATES) as u64;
            s.lag_sum += samples.sum(&format!("{}_sum", learner_metrics::POLICY_LAG));
            s.lag_count += samples.sum(&format!("{}_count", learner_metrics::POLICY_LAG));
            let episodes = samples.sum(actor_metrics::EPISODES);
            s.episodes += episodes as u64;
            if episodes > 0.0 {
                let w = episodes.min(window as f64);
                weighted += w * samples.sum(actor_metrics::EPISODE_RETURN_RECENT);
                weight += w;
                let window_steps = samples.sum(actor_metrics::RETURN_WINDOW_STEPS);
                step_weighted += window_steps * samples.sum(actor_metrics::EPISODE_RETURN_STEP_WEIGHTED);
                steps += window_steps;
            }
        }
        if weight >= RETURN_EPISODES as f64 {
            s.episode_return = Some(weighted / weight);
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
