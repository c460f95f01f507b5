//! `fleet run`: the whole system on one machine. Starts replay, the learner
//! and N actors as child processes of this same binary on free loopback
//! ports, reads each child's ready line to learn its ports, prints progress
//! from the children's own Prometheus endpoints, and stops everything when
//! the target return is reached, the step budget runs out, a child dies, or
//! the user interrupts.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::roles::READY_PREFIX;

/// Episodes the success criterion averages over, across all actors.
const RETURN_EPISODES: usize = 100;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    TargetReached { mean_return: f64, env_steps: u64 },
    BudgetExhausted { mean_return: Option<f64>, env_steps: u64 },
    Interrupted,
}

/// One child process and the addresses it reported.
pub(crate) struct Process {
    name: String,
    pub(crate) child: Child,
    pub(crate) grpc: String,
    metrics: String,
}

impl Process {
    /// Starts `fleet --config CONFIG ARGS…` and waits for its ready line.
    pub(crate) async fn spawn(name: &str, config_path: &Path, args: &[String]) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the fleet binary")?;
        let mut command = Command::new(exe);
        command
            .arg("--config")
            .arg(config_path)
            .args(args)
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a terminal's Ctrl-C reaches only the
            // launcher, which then stops the children in order.
            .process_group(0)
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let mut child = command.spawn().with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("{name}: no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with(READY_PREFIX) {
                    return Ok::<_, std::io::Error>(Some(line));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|_| anyhow!("{name} did not report ready within 60 s"))??
        .ok_or_else(|| anyhow!("{name} exited before reporting ready"))?;
        // Keep draining stdout so a chatty child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |key: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{name}: malformed ready line `{ready}`"))
        };
        Ok(Self {
            name: name.to_string(),
            grpc: field("grpc")?,
            metrics: field("metrics")?,
            child,
        })
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            tracing::warn!(process = %self.name, "did not stop in time; killing");
            let _ = self.child.kill().await;
        }
    }
}

/// Runs the system until it ends; returns how.
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
    let replay = Process::spawn(
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
    let learner = Process::spawn(
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
        processes.push(Process::spawn(&format!("actor-{id}"), &config_path, &args).await?);
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
            let samples = parse_prometheus(&text);
            let get = |name: &str| samples.iter().filter(|(n, _)| n == name).map(|(_, v)| v).sum::<f64>();
            s.env_steps += get("fleet_actor_env_steps_total") as u64;
            s.updates += get("fleet_learner_updates_total") as u64;
            s.lag_sum += get("fleet_learner_policy_lag_versions_sum");
            s.lag_count += get("fleet_learner_policy_lag_versions_count");
            let episodes = get("fleet_actor_episodes_total");
            if episodes > 0.0 {
                let w = episodes.min(window as f64);
                weighted += w * get("fleet_actor_episode_return_recent");
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

/// One HTTP/1.0 GET of `/metrics`.
async fn scrape(address: &str) -> Result<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address)).await??;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from {address}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{address}/metrics answered `{}`", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// `(name, value)` for every sample line of a Prometheus text exposition.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?.trim();
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_and_without_labels() {
        let text = "# HELP x\n# TYPE x counter\nfleet_a_total 12\nfleet_b{kind=\"policy\"} -0.5\nfleet_c_bucket{le=\"+Inf\"} 3\n\n";
        let samples = parse_prometheus(text);
        assert_eq!(
            samples,
            vec![
                ("fleet_a_total".into(), 12.0),
                ("fleet_b".into(), -0.5),
                ("fleet_c_bucket".into(), 3.0)
            ]
        );
    }
}
