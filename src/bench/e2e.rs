//! `fleet bench e2e`: the whole system as `fleet run` starts it — replay,
//! learner and N actor processes talking gRPC — on the configured
//! environment (CartPole by default), for a fixed wall time per actor count
//! and network core. Each configuration is one real `fleet run` of this
//! same executable in a temporary run folder, with the target return and
//! step budget set out of reach so that nothing ends it early; its rates
//! come from the run's own `progress.csv` (the launcher's scrapes of every
//! process's `/metrics`), and each process's peak resident memory from
//! `/proc/<pid>/status` just before the run is stopped. Optionally it also
//! times one run of the config as given to its target return.
//! `bench/e2e_vs_peers.sh` sets the numbers beside PufferLib and Sample
//! Factory on CartPole. It is not a learning test: returns are not judged.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::{Child, Command};

use fleet_agent::Core;

use crate::config::Config;
use crate::runs::{ProgressRow, read_progress};

/// Seconds between the progress rows the rates are read from.
const PROGRESS_INTERVAL_SECS: f64 = 1.0;
/// How long the children may take to start and the first progress row to appear.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `fleet run` may take to stop its children after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Out of reach of any environment, so that only the bench ends a run.
const UNREACHABLE_RETURN: &str = "1e18";
const UNREACHABLE_STEPS: i64 = i64::MAX;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds measured per configuration, after the warm-up.
    pub seconds: f64,
    /// Seconds after the first progress row (all processes up) that are not measured.
    pub warmup: f64,
    /// Actor processes, one configuration each.
    pub actors: Vec<usize>,
    /// `network.core` values, one configuration each per actor count.
    pub cores: Vec<String>,
    pub json: bool,
    /// Also run the config as given until it reaches `run.target_return`,
    /// for at most this many seconds, and report when it got there.
    pub time_to_target: Option<f64>,
}

/// One configuration's rates over its measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub env: String,
    /// `network.core`: `none` (feed-forward) or `lstm`.
    pub core: String,
    pub actors: usize,
    pub num_envs_per_actor: usize,
    /// Length of the window between the progress rows the rates span.
    pub seconds: f64,
    pub env_steps_per_second: f64,
    pub learner_updates_per_second: f64,
    /// Mean policy lag (learner version minus behaviour version) of the
    /// window's learning steps, each progress period weighted by its updates.
    pub policy_lag: Option<f64>,
    pub peak_rss_bytes: PeakRss,
}

/// Peak resident set size (`VmHWM`) of each process of a run, in bytes;
/// `None` where it could not be read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeakRss {
    /// `fleet run` itself (scraping and recording).
    pub launcher: Option<u64>,
    pub replay: Option<u64>,
    pub learner: Option<u64>,
    /// By actor id.
    pub actors: Vec<Option<u64>>,
}

/// When one run of the config as given first reached its target return.
#[derive(Debug, Clone, Serialize)]
pub struct TimeToTarget {
    pub env: String,
    pub core: String,
    pub actors: usize,
    pub target_return: f64,
    /// Wall seconds from `fleet run`'s start (process start-up included) to
    /// the first progress row at or above the target; `None` if not reached.
    pub wall_seconds: Option<f64>,
    pub env_steps: Option<u64>,
    /// How long the run went on, reaching the target or not.
    pub run_seconds: f64,
}

/// Runs every configuration and prints its row as it finishes (a table, or
/// one JSON line each), then the time to target if asked.
pub async fn e2e(config: &Config, options: &Options) -> Result<(Vec<Measurement>, Option<TimeToTarget>)> {
    if options.actors.is_empty() || options.actors.contains(&0) {
        bail!("--actors needs one or more actor counts, each at least 1");
    }
    for core in &options.cores {
        serde_json::from_value::<Core>(serde_json::Value::String(core.clone()))
            .with_context(|| format!("--cores: `{core}` is not a network.core (none or lstm)"))?;
    }
    let exe = std::env::current_exe().context("locating the fleet binary")?;
    let dir = tempfile::tempdir().context("creating a temporary run directory")?;
    let config_path = dir.path().join("bench.toml");
    config.write_to(&config_path)?;
    let fleet = Fleet {
        exe,
        config: config_path,
        run_dir: dir.path().to_path_buf(),
    };
    if !options.json {
        println!(
            "fleet {}: {} with {} envs per actor; {:.0} s measured per row after {:.0} s of warm-up; peak RSS is VmHWM",
            env!("CARGO_PKG_VERSION"),
            config.env.name,
            config.actor.num_envs,
            options.seconds,
            options.warmup
        );
        println!();
        println!(
            "| core | actors | env steps/s | learner updates/s | policy lag | launcher MiB | replay MiB | learner MiB | actor MiB (each) |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    }
    let mut measurements = Vec::new();
    for core in &options.cores {
        for &actors in &options.actors {
            let measurement = fleet.measure(config, core, actors, options).await?;
            if options.json {
                println!("{}", serde_json::to_string(&measurement)?);
            } else {
                println!("{}", table_row(&measurement));
            }
            measurements.push(measurement);
        }
    }
    let timed = match options.time_to_target {
        Some(limit) => {
            let timed = fleet.time_to_target(config, limit).await?;
            if options.json {
                println!("{}", serde_json::to_string(&timed)?);
            } else {
                println!();
                println!("{}", time_to_target_line(&timed));
            }
            Some(timed)
        }
        None => None,
    };
    Ok((measurements, timed))
}

/// How to start `fleet run`: this executable, the bench's effective config
/// as its file, and a run folder per configuration under `run_dir`.
struct Fleet {
    exe: PathBuf,
    config: PathBuf,
    run_dir: PathBuf,
}

impl Fleet {
    async fn measure(&self, config: &Config, core: &str, actors: usize, options: &Options) -> Result<Measurement> {
        let name = format!("{core}-{actors}");
        let sets = [
            format!("run.actors={actors}"),
            format!("network.core={core}"),
            format!("run.target_return={UNREACHABLE_RETURN}"),
            format!("run.max_env_steps={UNREACHABLE_STEPS}"),
            "run.hold_env_steps=0".into(),
        ];
        let mut run = self.start(&name, &sets)?;
        let folder = self.run_dir.join(&name);
        let first_row = wait_for_first_row(&mut run, &folder)
            .await
            .with_context(|| format!("starting {name}"))?;
        let end = first_row + Duration::from_secs_f64(options.warmup + options.seconds);
        if let Some(status) = run_until(&mut run, end).await? {
            bail!("fleet run ({name}) exited early ({status}); its errors are above");
        }
        let peak_rss = peak_rss(run.id());
        stop(&mut run).await;
        let rows = read_progress(&folder.join(crate::runs::PROGRESS_FILE))?;
        let rates = window_rates(&rows, options.warmup)
            .with_context(|| format!("{name}: fewer than two progress rows after the warm-up; measure for longer"))?;
        Ok(Measurement {
            env: config.env.name.clone(),
            core: core.to_string(),
            actors,
            num_envs_per_actor: config.actor.num_envs,
            seconds: rates.seconds,
            env_steps_per_second: rates.env_steps_per_second,
            learner_updates_per_second: rates.updates_per_second,
            policy_lag: rates.policy_lag,
            peak_rss_bytes: peak_rss,
        })
    }

    async fn time_to_target(&self, config: &Config, limit: f64) -> Result<TimeToTarget> {
        let name = "time-to-target";
        let mut run = self.start(name, &[])?;
        let started = Instant::now();
        match run_until(&mut run, started + Duration::from_secs_f64(limit)).await? {
            None => stop(&mut run).await,
            // 0: the target reached; 1: the budget spent or the return collapsed.
            Some(status) if matches!(status.code(), Some(0 | 1)) => {}
            Some(status) => bail!("fleet run ({name}) failed ({status}); its errors are above"),
        }
        let run_seconds = started.elapsed().as_secs_f64();
        let folder = self.run_dir.join(name);
        let rows = read_progress(&folder.join(crate::runs::PROGRESS_FILE))?;
        let reached = first_at_target(&rows, config.run.target_return);
        Ok(TimeToTarget {
            env: config.env.name.clone(),
            core: core_name(config.network.core),
            actors: config.run.actors,
            target_return: config.run.target_return,
            wall_seconds: reached.map(|row| row.wall_seconds),
            env_steps: reached.map(|row| row.env_steps),
            run_seconds,
        })
    }

    /// `fleet --config BENCH -q run` into the run folder `name`, with `sets`.
    fn start(&self, name: &str, sets: &[String]) -> Result<Child> {
        let mut command = Command::new(&self.exe);
        command
            .arg("--config")
            .arg(&self.config)
            .args(["-q", "run", "--name", name, "--run-dir"])
            .arg(&self.run_dir)
            .args(["--set", &format!("run.progress_interval_secs={PROGRESS_INTERVAL_SECS}")]);
        for set in sets {
            command.args(["--set", set]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        command.spawn().with_context(|| format!("starting fleet run ({name})"))
    }
}

/// Waits until the run's first progress row is written (every child is up
/// and scraped once) and returns when that was seen.
async fn wait_for_first_row(run: &mut Child, folder: &Path) -> Result<Instant> {
    let progress = folder.join(crate::runs::PROGRESS_FILE);
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = run.try_wait()? {
            bail!("fleet run exited before its first progress row ({status}); its errors are above");
        }
        // The file may be caught half-written; the next look reads it whole.
        if read_progress(&progress).is_ok_and(|rows| !rows.is_empty()) {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no progress row within {} s", START_TIMEOUT.as_secs())
}

/// Lets the run go on until `end`; its exit status if it ended first.
async fn run_until(run: &mut Child, end: Instant) -> Result<Option<std::process::ExitStatus>> {
    match tokio::time::timeout_at(end.into(), run.wait()).await {
        Ok(status) => Ok(Some(status.context("waiting for fleet run")?)),
        Err(_) => Ok(None),
    }
}

/// SIGTERM, which `fleet run` answers by recording a last progress row and
/// stopping its children in order; SIGKILL if it has not exited in time.
async fn stop(run: &mut Child) {
    if let Some(pid) = run.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, run.wait()).await.is_err() {
        tracing::warn!("fleet run did not stop in time; killing it");
        let _ = run.kill().await;
    }
}

/// The peak RSS of `fleet run` (pid `launcher`) and of each of its children,
/// told apart by the role in their command lines.
fn peak_rss(launcher: Option<u32>) -> PeakRss {
    let mut peak = PeakRss::default();
    let Some(launcher) = launcher else {
        return peak;
    };
    peak.launcher = super::peak_rss_bytes(launcher).ok();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return peak;
    };
    for pid in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if parent_pid(&stat) != Some(launcher) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let rss = super::peak_rss_bytes(pid).ok();
        match role(&args) {
            Some(Role::Replay) => peak.replay = rss,
            Some(Role::Learner) => peak.learner = rss,
            Some(Role::Actor(id)) => {
                if peak.actors.len() <= id {
                    peak.actors.resize(id + 1, None);
                }
                peak.actors[id] = rss;
            }
            None => {}
        }
    }
    peak
}

/// The parent pid in a `/proc/<pid>/stat` line: the second field after the
/// command name, which is in parentheses and may itself hold spaces.
fn parent_pid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Which of `fleet run`'s children a command line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Replay,
    Learner,
    Actor(usize),
}

fn role(args: &[String]) -> Option<Role> {
    let mut args = args.iter().skip(1);
    let role = args.find(|arg| matches!(arg.as_str(), "replay" | "learner" | "actor"))?;
    match role.as_str() {
        "replay" => Some(Role::Replay),
        "learner" => Some(Role::Learner),
        _ => {
            let id = args.skip_while(|arg| *arg != "--actor-id").nth(1)?;
            Some(Role::Actor(id.parse().ok()?))
        }
    }
}

/// Rates between the first progress row at least `warmup` seconds after the
/// first row and the last row.
#[derive(Debug, Clone, PartialEq)]
struct Rates {
    seconds: f64,
    env_steps_per_second: f64,
    updates_per_second: f64,
    policy_lag: Option<f64>,
}

fn window_rates(rows: &[ProgressRow], warmup: f64) -> Option<Rates> {
    let first = rows.first()?;
    let start = rows.iter().position(|row| row.wall_seconds >= first.wall_seconds + warmup)?;
    let window = &rows[start..];
    let (from, to) = (window.first()?, window.last()?);
    let seconds = to.wall_seconds - from.wall_seconds;
    if seconds <= 0.0 {
        return None;
    }
    let (mut lag_sum, mut lag_updates) = (0.0, 0.0);
    for pair in window.windows(2) {
        let updates = pair[1].learner_updates.saturating_sub(pair[0].learner_updates) as f64;
        if let Some(lag) = pair[1].policy_lag {
            lag_sum += lag * updates;
            lag_updates += updates;
        }
    }
    Some(Rates {
        seconds,
        env_steps_per_second: (to.env_steps - from.env_steps) as f64 / seconds,
        updates_per_second: to.learner_updates.saturating_sub(from.learner_updates) as f64 / seconds,
        policy_lag: (lag_updates > 0.0).then(|| lag_sum / lag_updates),
    })
}

/// A core as the config names it.
fn core_name(core: Core) -> String {
    match serde_json::to_value(core) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{core:?}"),
    }
}

/// The first progress row whose step-weighted return reached `target`.
fn first_at_target(rows: &[ProgressRow], target: f64) -> Option<&ProgressRow> {
    rows.iter().find(|row| row.return_step_weighted.is_some_and(|r| r >= target))
}

fn table_row(m: &Measurement) -> String {
    let mib = |bytes: Option<u64>| bytes.map_or("–".to_string(), |b| format!("{:.0}", b as f64 / (1024.0 * 1024.0)));
    let actors: Vec<String> = m.peak_rss_bytes.actors.iter().map(|&b| mib(b)).collect();
    format!(
        "| {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} |",
        m.core,
        m.actors,
        m.env_steps_per_second,
        m.learner_updates_per_second,
        m.policy_lag.map_or("–".to_string(), |lag| format!("{lag:.2}")),
        mib(m.peak_rss_bytes.launcher),
        mib(m.peak_rss_bytes.replay),
        mib(m.peak_rss_bytes.learner),
        if actors.is_empty() { "–".to_string() } else { actors.join(", ") },
    )
}

fn time_to_target_line(t: &TimeToTarget) -> String {
    match (t.wall_seconds, t.env_steps) {
        (Some(seconds), Some(steps)) => format!(
            "time to return {} (step-weighted), core {}, {} actors: {seconds:.0} s wall, {steps} env steps",
            t.target_return, t.core, t.actors
        ),
        _ => format!(
            "time to return {} (step-weighted), core {}, {} actors: not reached in {:.0} s",
            t.target_return, t.core, t.actors, t.run_seconds
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(wall_seconds: f64, env_steps: u64, learner_updates: u64, policy_lag: Option<f64>) -> ProgressRow {
        ProgressRow {
            wall_seconds,
            env_steps,
            learner_updates,
            policy_lag,
            ..ProgressRow::default()
        }
    }

    #[test]
    fn rates_span_the_rows_after_the_warm_up() {
        let rows = [
            row(1.0, 100, 0, None),
            row(2.0, 1_000, 5, Some(9.0)),
            row(3.0, 3_000, 15, Some(1.0)),
            row(5.0, 7_000, 45, Some(2.0)),
        ];
        let rates = window_rates(&rows, 1.0).unwrap();
        assert_eq!(rates.seconds, 3.0);
        assert_eq!(rates.env_steps_per_second, 2_000.0);
        assert_eq!(rates.updates_per_second, 40.0 / 3.0);
        // The lag of the period before the window is left out; the rest
        // weigh 10 and 30 updates.
        assert_eq!(rates.policy_lag, Some((1.0 * 10.0 + 2.0 * 30.0) / 40.0));
        assert_eq!(window_rates(&rows, 10.0), None, "no row after the warm-up");
        assert_eq!(window_rates(&rows[..1], 0.0), None, "one row spans no time");
    }

    #[test]
    fn reads_the_parent_of_a_process() {
        assert_eq!(parent_pid("4242 (fleet (x) y) S 17 4242 4242 0 -1"), Some(17));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn tells_the_roles_apart_by_command_line() {
        let args = |line: &str| line.split(' ').map(String::from).collect::<Vec<_>>();
        let config = "/usr/bin/fleet --config /tmp/.tmpA/effective.toml";
        assert_eq!(role(&args(&format!("{config} replay --listen 127.0.0.1:0"))), Some(Role::Replay));
        assert_eq!(role(&args(&format!("{config} learner --replay 127.0.0.1:5"))), Some(Role::Learner));
        assert_eq!(
            role(&args(&format!("{config} actor --actor-id 3 --metrics-listen 127.0.0.1:0"))),
            Some(Role::Actor(3))
        );
        assert_eq!(role(&args("/usr/bin/fleet --config c.toml run")), None);
    }

    #[test]
    fn the_time_to_target_is_the_first_row_at_it() {
        let mut rows = vec![row(1.0, 10, 0, None), row(2.0, 20, 0, None), row(3.0, 30, 0, None)];
        rows[1].return_step_weighted = Some(400.0);
        rows[2].return_step_weighted = Some(480.0);
        assert_eq!(first_at_target(&rows, 475.0).map(|r| r.wall_seconds), Some(3.0));
        assert_eq!(first_at_target(&rows, 500.0), None);
    }
}
