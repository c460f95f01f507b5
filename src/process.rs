//! `fleet` role processes seen from the outside: the one ready line a role
//! prints once its listeners are bound, and [`Process`], a spawned `fleet`
//! child whose ready line has been read, killed when dropped. The launcher
//! (`fleet run`), `fleet bench replay` and the integration tests all start
//! their children through here. It does not decide what a child runs — the
//! caller builds the command — nor serve anything itself.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The first word of the ready line.
pub const READY_PREFIX: &str = "fleet-ready";

/// How long a child may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a role announces once bound:
/// `fleet-ready role=ROLE grpc=HOST:PORT metrics=HOST:PORT`
/// (`grpc=-` for a role without a gRPC server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub role: String,
    /// The gRPC address, `-` when the role serves none (actors).
    pub grpc: String,
    /// Where `/metrics` is served.
    pub metrics: String,
}

impl Ready {
    /// The fields of a ready line; `None` for any other line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        if words.next() != Some(READY_PREFIX) {
            return None;
        }
        let (mut role, mut grpc, mut metrics) = (None, None, None);
        for word in words {
            match word.split_once('=') {
                Some(("role", v)) => role = Some(v.to_string()),
                Some(("grpc", v)) => grpc = Some(v.to_string()),
                Some(("metrics", v)) => metrics = Some(v.to_string()),
                _ => {}
            }
        }
        Some(Self {
            role: role?,
            grpc: grpc?,
            metrics: metrics?,
        })
    }
}

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{READY_PREFIX} role={} grpc={} metrics={}", self.role, self.grpc, self.metrics)
    }
}

/// One running `fleet` child and the addresses it reported.
#[derive(Debug)]
pub struct Process {
    /// For messages about this child (`replay`, `actor-3`).
    pub name: String,
    /// Spawned with `kill_on_drop`, so dropping the `Process` kills the child;
    /// public so that callers can signal it or wait for it.
    pub child: Child,
    /// Its gRPC address (`-` for an actor).
    pub grpc: String,
    /// Its `/metrics` address.
    pub metrics: String,
}

/// Settings every fleet process runs with, put in each child's environment
/// unless the caller's environment sets them (the images set them too).
/// Each is read once, before a process could set it for itself:
/// - mimalloc reads its own before `main`. Committing arena memory as it
///   fills, not eagerly (mimalloc's default where the OS overcommits), halves
///   every role's resident memory (a CartPole actor's from 32 MB to 16 MB) at
///   the same training speed; the CNN learner's updates alone are about 5%
///   slower (docs/BENCHMARKS.md).
/// - candle splits element-wise ops over a pool of threads whose caller
///   spins, without yielding, until every helper is done. Processes that
///   share the cores (actors, their env servers and the learner on one
///   machine) keep descheduling a helper, and the spinning took 60% of a
///   MinAtar learner's time; one thread runs those ops inline. Matrix
///   products and convolutions still use every core (rayon).
pub const CHILD_ENV: &[(&str, &str)] = &[("MIMALLOC_ARENA_EAGER_COMMIT", "0"), ("CANDLE_NUM_THREADS", "1")];

/// The command [`Process::spawn_child`] runs.
fn child_command(exe: &Path, config_path: &Path, log_filter: &str, args: &[String]) -> Command {
    let mut command = Command::new(exe);
    command
        .arg("--config")
        .arg(config_path)
        .args(args)
        .arg("--exit-with-stdin")
        .stderr(Stdio::inherit())
        .process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", log_filter);
    }
    for &(key, value) in CHILD_ENV {
        if std::env::var_os(key).is_none() {
            command.env(key, value);
        }
    }
    command
}

/// The variable rayon and candle size their thread pools from.
pub const RAYON_THREADS: &str = "RAYON_NUM_THREADS";

/// The `RAYON_NUM_THREADS` a process sets for itself, and so for its
/// children, as it starts, given the value it found there: `cores` where the
/// variable is unset or holds no count of at least 1, None where it holds one.
///
/// candle sizes every matrix product's threads from this variable and, where
/// it holds no count, counts physical cores by parsing /proc/cpuinfo again on
/// every product: 5-7% of a CartPole run's CPU. Set, it is read from the
/// environment instead; `cores` is the count rayon starts with anyway.
pub fn rayon_threads_to_set(found: Option<&OsStr>, cores: usize) -> Option<String> {
    let holds_a_count = found
        .and_then(OsStr::to_str)
        .and_then(|text| text.parse::<usize>().ok())
        .is_some_and(|threads| threads > 0);
    (!holds_a_count).then(|| cores.to_string())
}

impl Process {
    /// Spawns `command` (a `fleet` role) with piped stdin and stdout and
    /// waits for its ready line. Stdin stays open as long as the `Process`
    /// lives, so a child started with `--exit-with-stdin` ends with it.
    pub async fn spawn(name: &str, mut command: Command) -> Result<Self> {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("{name}: no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with(READY_PREFIX) {
                    return Ok::<_, std::io::Error>(Some(line));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|_| anyhow!("{name} did not report ready within {} s", READY_TIMEOUT.as_secs()))?
        .with_context(|| format!("reading {name}'s stdout"))?
        .ok_or_else(|| anyhow!("{name} exited before reporting ready"))?;
        // Keep draining stdout so a chatty child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ready = Ready::parse(&ready).ok_or_else(|| anyhow!("{name}: malformed ready line `{ready}`"))?;
        Ok(Self {
            name: name.to_string(),
            grpc: ready.grpc,
            metrics: ready.metrics,
            child,
        })
    }

    /// [`Process::spawn`] of `fleet --config CONFIG ARGS… --exit-with-stdin`
    /// run by this same binary — so only from the `fleet` binary itself — in
    /// its own process group: a terminal's Ctrl-C then reaches only the
    /// parent, which stops its children in order. It logs with `RUST_LOG`
    /// from the caller's environment, or else with `log_filter`.
    pub async fn spawn_child(name: &str, config_path: &Path, log_filter: &str, args: &[String]) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the fleet binary")?;
        Self::spawn(name, child_command(&exe, config_path, log_filter, args)).await
    }

    /// The gRPC address as a URI for a tonic client.
    pub fn grpc_uri(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            tracing::warn!(process = %self.name, "did not stop in time; killing");
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Children start with the shared settings (this test's own
    /// environment sets none of them).
    #[test]
    fn children_start_with_lazy_allocator_arenas_and_inline_elementwise_ops() {
        let command = child_command(Path::new("/bin/fleet"), Path::new("c.toml"), "info", &["actor".into()]);
        let envs: Vec<(String, Option<String>)> = command
            .as_std()
            .get_envs()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned())))
            .collect();
        for &(key, value) in CHILD_ENV {
            assert!(std::env::var_os(key).is_none(), "run the test without {key} set");
            assert!(
                envs.contains(&(key.to_owned(), Some(value.to_owned()))),
                "{key}={value} missing from {envs:?}"
            );
        }
    }

    #[test]
    fn the_matrix_thread_count_is_set_unless_the_caller_gave_one() {
        let set = |found: Option<&str>| rayon_threads_to_set(found.map(OsStr::new), 6);
        assert_eq!(set(None), Some("6".into()));
        // rayon reads 0 as "choose yourself", and candle then parses /proc/cpuinfo.
        assert_eq!(set(Some("0")), Some("6".into()));
        assert_eq!(set(Some("many")), Some("6".into()));
        assert_eq!(set(Some("3")), None);
        assert_eq!(set(Some("12")), None);
    }

    #[test]
    fn a_ready_line_reads_back_what_was_written() {
        let ready = Ready {
            role: "replay".into(),
            grpc: "127.0.0.1:50051".into(),
            metrics: "127.0.0.1:9090".into(),
        };
        let line = ready.to_string();
        assert_eq!(line, "fleet-ready role=replay grpc=127.0.0.1:50051 metrics=127.0.0.1:9090");
        assert_eq!(Ready::parse(&line), Some(ready));
    }

    #[test]
    fn other_lines_are_not_ready_lines() {
        assert_eq!(Ready::parse("fleet-ready role=actor grpc=-"), None, "no metrics field");
        assert_eq!(Ready::parse("starting role=replay grpc=a metrics=b"), None);
        assert_eq!(Ready::parse(""), None);
    }
}
