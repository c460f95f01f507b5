//! Peers that stop answering without closing their connections: a `fleet
//! replay` or `fleet learner` process stopped with SIGSTOP keeps its sockets
//! open, so only the HTTP/2 keepalives (`fleet_proto::connect`) and call
//! deadlines can tell its clients it is gone. Each test stops one role of a
//! running cluster, checks that the others say so within the keepalive
//! bound and go on as far as they can, then resumes it and checks that
//! training carries on.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_actor::metrics as actor_metrics;
use fleet_learner::metrics as learner_metrics;
use fleet_proto::connect::DEAD_PEER_DETECTION;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{FLEET, Process, metric, scrape};

/// What a detection may take beyond the keepalive bound: the reader's
/// scheduling and the log line's way through a pipe, on a loaded machine.
const DETECTION_SLACK: Duration = Duration::from_secs(20);

/// How long a resumed cluster gets to show progress again.
const RECOVERY: Duration = Duration::from_secs(90);

/// A role started like `support::start`, with its warnings and errors
/// collected: what it logs about lost connections is what is checked.
struct Logged {
    process: Process,
    log: Arc<Mutex<String>>,
}

impl Logged {
    async fn start(args: &[&str]) -> Self {
        let mut command = Command::new(FLEET);
        command
            .args(args)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped());
        let name = args.first().copied().unwrap_or("fleet");
        let mut process = Process::spawn(name, command).await.expect("fleet role ready");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = process.child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { process, log }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.process.child.id().unwrap() as i32)
    }

    /// How many bytes of log there are now: later searches start there.
    fn mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits until a line after `mark` is one of `warnings` (each the words
    /// such a line holds); returns it, or fails with the log after `within`.
    async fn wait_for_line(&self, mark: usize, warnings: &[&[&str]], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            {
                let log = self.log.lock().unwrap();
                let found = log[mark..]
                    .lines()
                    .find(|line| warnings.iter().any(|words| words.iter().all(|w| line.contains(w))));
                if let Some(line) = found {
                    return line.to_string();
                }
                assert!(
                    Instant::now() < deadline,
                    "{} logged none of {warnings:?} within {within:?}:\n{}",
                    self.process.name,
                    &log[mark..]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = scrape(&self.process.metrics).await.unwrap();
        metric(&text, name).unwrap_or(0.0)
    }

    /// Polls `name` until it reaches `at_least` within `within`; returns it.
    async fn wait_for_metric(&self, name: &str, at_least: f64, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let value = self.metric(name).await;
            if value >= at_least {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {name} at {value}, not {at_least}, after {within:?}:\n{}",
                self.process.name,
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Stops (SIGSTOP) or resumes (SIGCONT) a process.
fn signal(pid: Pid, signal: Signal) {
    kill(pid, signal).unwrap();
}

/// Resumes a stopped process when dropped, so that a failing test does not
/// leave a stopped child behind (a stopped process still dies of SIGKILL,
/// but resuming first lets it go the ordinary way).
struct Resume(Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// The warnings a role logs when a call to a peer fails and it reconnects
/// (`actor/src/runtime.rs`, `learner/src/prefetch.rs`). Without keepalives
/// none would come: the calls would wait on the stopped peer for ever.
const INSERT_LOST: &[&[&str]] = &[&["Insert stream", "reconnecting"]];
const SAMPLE_LOST: &[&[&str]] = &[&["Sample", "reconnecting"]];
const WEIGHTS_LOST: &[&[&str]] = &[&["weights stream failed", "reconnecting"], &["WatchWeights failed", "reconnecting"]];

#[tokio::test]
async fn a_stopped_replay_is_detected_and_training_resumes_when_it_continues() {
    let replay = Logged::start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let learner = Logged::start(&["learner", "--listen", "127.0.0.1:0", "--replay", &replay.process.grpc]).await;
    let actor = Logged::start(&["actor", "--replay", &replay.process.grpc, "--learner", &learner.process.grpc]).await;
    learner.wait_for_metric(learner_metrics::UPDATES, 5.0, RECOVERY).await;
    actor.wait_for_metric(actor_metrics::WEIGHTS_VERSION, 2.0, RECOVERY).await;

    let (actor_mark, learner_mark) = (actor.mark(), learner.mark());
    let stopped = Instant::now();
    signal(replay.pid(), Signal::SIGSTOP);
    let _resume = Resume(replay.pid());
    let bound = DEAD_PEER_DETECTION + DETECTION_SLACK;

    // `fleet health` has a deadline of its own: a stopped server is
    // reported unhealthy, not waited on.
    let health = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(FLEET).args(["health", "--address", &replay.process.grpc]).output(),
    )
    .await
    .expect("fleet health gives up on a stopped server")
    .unwrap();
    assert!(!health.status.success(), "a stopped replay reported healthy");

    let (insert_lost, sample_lost) = tokio::join!(
        actor.wait_for_line(actor_mark, INSERT_LOST, bound),
        learner.wait_for_line(learner_mark, SAMPLE_LOST, bound),
    );
    let detected = stopped.elapsed();
    eprintln!("stopped replay detected within {detected:?}:\n  actor: {insert_lost}\n  learner: {sample_lost}");

    let updates = learner.metric(learner_metrics::UPDATES).await;
    let acked = actor.metric(actor_metrics::SEQUENCES_ACKED).await;
    signal(replay.pid(), Signal::SIGCONT);
    let resumed = Instant::now();
    actor.wait_for_metric(actor_metrics::SEQUENCES_ACKED, acked + 50.0, RECOVERY).await;
    learner.wait_for_metric(learner_metrics::UPDATES, updates + 20.0, RECOVERY).await;
    let version = learner.metric(learner_metrics::WEIGHTS_VERSION).await;
    actor.wait_for_metric(actor_metrics::WEIGHTS_VERSION, version, RECOVERY).await;
    eprintln!("training resumed within {:?} of SIGCONT", resumed.elapsed());
}

#[tokio::test]
async fn a_stopped_learner_is_detected_and_the_actor_acts_on_its_last_weights() {
    // A table that evicts instead of waiting when full: with the learner
    // stopped nothing samples, and a queue would hold the actor back.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("replay.toml");
    std::fs::write(
        &config,
        "[[replay.tables]]\nname = \"queue\"\nmax_size = 256\nsampler = \"uniform\"\nremover = \"fifo\"\nmax_times_sampled = 0\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let replay = Logged::start(&["replay", "--listen", "127.0.0.1:0", "--config", config]).await;
    let learner = Logged::start(&["learner", "--listen", "127.0.0.1:0", "--replay", &replay.process.grpc]).await;
    let actor = Logged::start(&["actor", "--replay", &replay.process.grpc, "--learner", &learner.process.grpc]).await;
    actor.wait_for_metric(actor_metrics::WEIGHTS_VERSION, 2.0, RECOVERY).await;

    let mark = actor.mark();
    let stopped = Instant::now();
    signal(learner.pid(), Signal::SIGSTOP);
    let _resume = Resume(learner.pid());
    let lost = actor.wait_for_line(mark, WEIGHTS_LOST, DEAD_PEER_DETECTION + DETECTION_SLACK).await;
    eprintln!("stopped learner detected within {:?}: {lost}", stopped.elapsed());

    // Meanwhile the actor acts on, with the weights it had, and replay
    // acknowledges what it sends.
    let version = actor.metric(actor_metrics::WEIGHTS_VERSION).await;
    let steps = actor.metric(actor_metrics::ENV_STEPS).await;
    let acked = actor.metric(actor_metrics::SEQUENCES_ACKED).await;
    actor.wait_for_metric(actor_metrics::ENV_STEPS, steps + 2000.0, RECOVERY).await;
    actor.wait_for_metric(actor_metrics::SEQUENCES_ACKED, acked + 50.0, RECOVERY).await;
    assert_eq!(
        actor.metric(actor_metrics::WEIGHTS_VERSION).await,
        version,
        "no new weights while the learner is stopped"
    );

    signal(learner.pid(), Signal::SIGCONT);
    let resumed = Instant::now();
    actor.wait_for_metric(actor_metrics::WEIGHTS_VERSION, version + 5.0, RECOVERY).await;
    eprintln!("new weights within {:?} of SIGCONT", resumed.elapsed());
}
