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

/// Episodes the success criterion averages over, across all actors.
const RETURN_EPISODES: usize = 100;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    TargetReached { mean_return: f64, env_steps: u64 },
    BudgetExhausted { mean_return: Option<f64>, env_steps: u64 },
    Interrupted,
}

/// Runs the system until it ends; returns how. The children are this same
/// executable, so only the `fleet` binary can call this.
pub async fn run(mut config: Config) -> Result<Outcome> {
    let actors = config.run.actors;
    // Each actor averages its share of the last 100 episodes.
    config.actor.return_window = RETURN_EPISODES.div_ceil(actors);
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
        let outcome = match snapshot.mean_return {
            Some(mean_return) if mean_return >= config.run.target_return => Some(Outcome::TargetReached {
                mean_return,
                env_steps: snapshot.env_steps,
            }),
            _ if snapshot.env_steps >= config.run.max_env_steps => Some(Outcome::BudgetExhausted {
                mean_return: snapshot.mean_return,
                env_steps: snapshot.env_steps,
            }),
            _ => None,
        };
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

fn print_progress(snapshot: &Snapshot, previous: &Snapshot, elapsed: Duration, since_previous: Duration) {
    let rate = snapshot.env_steps.saturating_sub(previous.env_steps) as f64 / since_previous.as_secs_f64().max(1e-9);
    let lag = snapshot.lag_mean_since(previous);
    println!(
        "[{:>6.0}s] env steps {:>9}  {:>8.0} steps/s  mean return (last {} episodes) {}  learner updates {:>7}  policy lag {}",
        elapsed.as_secs_f64(),
        snapshot.env_steps,
        rate,
        RETURN_EPISODES,
        snapshot.mean_return.map_or("   n/a".to_string(), |r| format!("{r:>6.1}")),
        snapshot.updates,
        lag.map_or("n/a".to_string(), |l| format!("{l:.2}")),
    );
}

/// What the progress line needs, summed over the children's metrics.
#[derive(Debug, Default, Clone)]
struct Snapshot {
    env_steps: u64,
    updates: u64,
    /// Mean return over the fleet's last `RETURN_EPISODES` episodes, once
    /// that many have finished.
    mean_return: Option<f64>,
    lag_sum: f64,
    lag_count: f64,
}

impl Snapshot {
    /// `window`: episodes each actor averages over (its share of the last 100).
    async fn scrape(processes: &[Process], window: usize) -> Self {
        let mut s = Snapshot::default();
        let (mut weighted, mut weight) = (0.0, 0.0);
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
            if episodes > 0.0 {
                let w = episodes.min(window as f64);
                weighted += w * samples.sum(actor_metrics::EPISODE_RETURN_RECENT);
                weight += w;
            }
        }
        if weight >= RETURN_EPISODES as f64 {
            s.mean_return = Some(weighted / weight);
        }
        s
    }

    fn lag_mean_since(&self, previous: &Snapshot) -> Option<f64> {
        let count = self.lag_count - previous.lag_count;
        (count > 0.0).then(|| (self.lag_sum - previous.lag_sum) / count)
    }
}
