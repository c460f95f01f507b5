//! Roles killed and stopped with real signals: `fleet replay`, `fleet
//! learner` and `fleet actor` as separate processes, one of them SIGKILLed
//! or SIGTERMed mid-run, and what the others and the restarted one must
//! still do. What each test shows is listed in docs/RELIABILITY.md.

use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_actor::metrics as actor_metrics;
use fleet_learner::metrics as learner_metrics;
use fleet_proto::pb::{self, replay_client::ReplayClient};
use fleet_replay::metrics as replay_metrics;
use futures::StreamExt;
use nix::sys::signal::Signal;
use tokio::io::AsyncBufReadExt;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::support::{FLEET, Process, metric, scrape, sequence, series, start};

/// Steps per sequence with the default config (unroll 20, no burn-in).
const SEQUENCE_LENGTH: usize = 21;

/// A role's log lines (stderr), kept for the test to read.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// The lines so far that contain `text`.
    fn lines(&self, text: &str) -> Vec<String> {
        self.0.lock().unwrap().iter().filter(|l| l.contains(text)).cloned().collect()
    }

    /// Waits (30 s at most) for the `n`th line (from 1) that contains `text`.
    async fn nth(&self, text: &str, n: usize) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.lines(text).into_iter().nth(n - 1) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line {n} with `{text}` within 30 s:\n{}",
                self.0.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of `key=` in a log line, as a number.
fn field(line: &str, key: &str) -> u64 {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in `{line}`"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in `{line}`: {e}"))
}

/// Starts `fleet <args…>` like `support::start`, logging at `RUST_LOG=filter`
/// into the returned [`Log`].
async fn start_logged(args: &[&str], filter: &str) -> (Process, Log) {
    let mut command = tokio::process::Command::new(FLEET);
    command
        .args(args)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", filter)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped());
    let mut process = Process::spawn(args[0], command).await.expect("fleet role ready");
    let log = Log::default();
    let mut lines = tokio::io::BufReader::new(process.child.stderr.take().unwrap()).lines();
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.0.lock().unwrap().push(line);
        }
    });
    (process, log)
}

/// An actor whose start and stop lines are logged.
async fn start_actor(id: &str, replay: &str, learner: &str, extra: &[&str]) -> (Process, Log) {
    let mut args = vec!["actor", "--actor-id", id, "--replay", replay, "--learner", learner];
    args.extend(["--set", "actor.num_envs=4"]);
    args.extend(extra);
    start_logged(&args, "warn,fleet_actor::runtime=info").await
}

fn signal(process: &Process, signal: Signal) {
    let pid = nix::unistd::Pid::from_raw(process.child.id().expect("still running") as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
}

/// Waits (60 s at most) for `process` to exit after a signal.
async fn exit_status(process: &mut Process, within: Duration) -> std::process::ExitStatus {
    tokio::time::timeout(within, process.child.wait())
        .await
        .unwrap_or_else(|_| panic!("{} did not exit within {within:?}", process.name))
        .unwrap()
}

/// Polls a metric until it exceeds `above` (60 s at most); returns its value.
async fn wait_above(metrics: &str, name: &str, above: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(metrics).await.unwrap_or_default();
        if let Some(value) = metric(&text, name).filter(|v| *v > above) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} did not pass {above} within 60 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn value(metrics: &str, name: &str) -> f64 {
    metric(&scrape(metrics).await.unwrap(), name).unwrap_or(0.0)
}

/// A free loopback address, for a role that must come back on the same one.
fn free_address() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

async fn replay_client(process: &Process) -> ReplayClient<Channel> {
    ReplayClient::connect(process.grpc_uri()).await.unwrap()
}

/// Up to `batch_size` items from `table`, or the status replay answered
/// (DEADLINE_EXCEEDED after `timeout_ms` when the table has too few).
async fn sample(client: &mut ReplayClient<Channel>, batch_size: u32, timeout_ms: u32) -> Result<Vec<pb::SampledItem>, tonic::Status> {
    let request = pb::SampleRequest {
        table: "queue".into(),
        batch_size,
        num_batches: 1,
        timeout_ms,
        beta: 0.0,
        in_flight: 1,
    };
    let mut stream = client.sample(request).await?.into_inner();
    match stream.next().await {
        Some(Ok(batch)) => Ok(batch.items),
        Some(Err(status)) => Err(status),
        None => Err(tonic::Status::unknown("the sample stream ended without a batch")),
    }
}

/// Asserts that a sampled item is a whole CartPole sequence of the default
/// length from one of `runs` (actor id, run id).
fn assert_whole(item: &pb::SampledItem, runs: &[(u64, u64)]) {
    let sequence = item.sequence.as_ref().expect("a sampled item holds its sequence");
    let dims = sequence.observations.as_ref().map(|o| o.dims());
    assert_eq!(dims, Some(vec![SEQUENCE_LENGTH, 4]), "item {}", item.key);
    for (field, len) in [
        ("rewards", sequence.rewards.len()),
        ("is_first", sequence.is_first.len()),
        ("terminated", sequence.terminated.len()),
        ("truncated", sequence.truncated.len()),
        ("behaviour_versions", sequence.behaviour_versions.len()),
    ] {
        assert_eq!(len, SEQUENCE_LENGTH, "item {}: {field}", item.key);
    }
    let actions = sequence.actions.as_ref().unwrap().to_i64().unwrap();
    assert_eq!(actions.len(), SEQUENCE_LENGTH, "item {}", item.key);
    let logits = sequence.behaviour_logits.as_ref().unwrap().to_f32().unwrap();
    assert_eq!(logits.len(), SEQUENCE_LENGTH * 2, "item {}", item.key);
    assert!(
        runs.contains(&(sequence.actor_id, sequence.run_id)),
        "item {} from actor {} run {}, not one of {runs:?}",
        item.key,
        sequence.actor_id,
        sequence.run_id
    );
}

async fn assert_serving(replay: &Process) {
    let channel = tonic::transport::Endpoint::from_shared(replay.grpc_uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "fleet.v1.Replay".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

/// One of two actors is SIGKILLed while it streams: replay stays healthy,
/// the other actor's inserts go on, every stored item is whole, and the
/// killed actor, started again, streams under a new run id.
#[tokio::test]
async fn a_killed_actor_leaves_replay_whole_and_comes_back_with_a_new_run_id() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let learner = start(&["learner", "--listen", "127.0.0.1:0", "--replay", &replay.grpc]).await;
    let (mut doomed, doomed_log) = start_actor("1", &replay.grpc, &learner.grpc, &[]).await;
    let (other, other_log) = start_actor("2", &replay.grpc, &learner.grpc, &[]).await;
    let first_run = field(&doomed_log.nth("actor starting", 1).await, "run_id");
    let other_run = field(&other_log.nth("actor starting", 1).await, "run_id");
    assert_ne!(first_run, 0);

    // Both stream; the doomed one has just had an insert acknowledged.
    wait_above(&other.metrics, actor_metrics::SEQUENCES_ACKED, 0.0).await;
    let acked = wait_above(&doomed.metrics, actor_metrics::SEQUENCES_ACKED, 4.0).await;
    wait_above(&doomed.metrics, actor_metrics::SEQUENCES_ACKED, acked).await;
    signal(&doomed, Signal::SIGKILL);
    let status = exit_status(&mut doomed, Duration::from_secs(20)).await;
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status:?}");

    assert_serving(&replay).await;
    let inserts = value(&replay.metrics, replay_metrics::INSERTS_TOTAL).await;
    let other_acked = value(&other.metrics, actor_metrics::SEQUENCES_ACKED).await;
    wait_above(&other.metrics, actor_metrics::SEQUENCES_ACKED, other_acked + 10.0).await;
    wait_above(&replay.metrics, replay_metrics::INSERTS_TOTAL, inserts + 10.0).await;

    let (restarted, restarted_log) = start_actor("1", &replay.grpc, &learner.grpc, &[]).await;
    let second_run = field(&restarted_log.nth("actor starting", 1).await, "run_id");
    assert_ne!(second_run, first_run, "a new start draws a new run id");
    assert_ne!(second_run, 0);
    wait_above(&restarted.metrics, actor_metrics::SEQUENCES_ACKED, 0.0).await;

    // Whatever replay holds or hands out is whole, and the restarted actor's
    // items carry its new run id.
    let runs = [(1, first_run), (1, second_run), (2, other_run)];
    let mut client = replay_client(&replay).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut checked, mut from_second_run) = (0, 0);
    while from_second_run == 0 || checked < 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{checked} items checked, {from_second_run} of run {second_run}, within 30 s"
        );
        let items = match sample(&mut client, 4, 1000).await {
            Ok(items) => items,
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => continue,
            Err(status) => panic!("{status:?}"),
        };
        for item in &items {
            assert_whole(item, &runs);
            from_second_run += usize::from(item.sequence.as_ref().unwrap().run_id == second_run);
        }
        checked += items.len();
    }
    assert_serving(&replay).await;
}

/// The learner is SIGKILLed mid-training. The actor keeps acting and
/// streaming on the weights it has; the learner, started again on its
/// address, resumes from exactly what its newest checkpoint on disk holds;
/// the actor never acts with an older version than it had, and follows the
/// new learner's weights without being restarted.
#[tokio::test]
async fn a_killed_learner_resumes_from_its_newest_checkpoint_and_actors_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    // A table that never holds inserts back while no learner samples it: a
    // full one drops its oldest sequence (a full queue would block the actor
    // once it fills, however large, and the actor is fast).
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        "[[replay.tables]]\nname = \"queue\"\nsampler = \"uniform\"\nmax_size = 50000\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let checkpoints = dir.path().join("learner");
    let checkpoint_dir = format!("learner.checkpoint_dir={}", checkpoints.display());
    let replay = start(&["replay", "--listen", "127.0.0.1:0", "--config", &config]).await;
    let address = free_address();
    let learner_args = [
        "learner",
        "--listen",
        &address,
        "--replay",
        &replay.grpc,
        "--set",
        &checkpoint_dir,
        "--set",
        "learner.checkpoint_interval_secs=3",
    ];
    let mut learner = start(&learner_args).await;
    let (mut actor, actor_log) = start_actor("1", &replay.grpc, &address, &[]).await;

    // Every version the actor acts with, as often as it can be read.
    let versions = Arc::new(Mutex::new(Vec::<f64>::new()));
    let watcher = tokio::spawn({
        let (versions, metrics) = (versions.clone(), actor.metrics.clone());
        async move {
            loop {
                if let Some(v) = scrape(&metrics).await.ok().and_then(|t| metric(&t, actor_metrics::WEIGHTS_VERSION)) {
                    versions.lock().unwrap().push(v);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let newest = || {
        fleet_learner::checkpoint::latest(&checkpoints, &candle_core::Device::Cpu)
            .unwrap()
            .map(|c| c.meta)
    };

    // Just after a periodic checkpoint, once the actor has newer weights
    // than it holds: the learner dies with versions no checkpoint has.
    let written = wait_above(&learner.metrics, learner_metrics::CHECKPOINTS, 1.0).await;
    wait_above(&learner.metrics, learner_metrics::CHECKPOINTS, written).await;
    let checkpointed = newest().expect("a periodic checkpoint").version;
    wait_above(&actor.metrics, actor_metrics::WEIGHTS_VERSION, checkpointed as f64 + 2.0).await;
    signal(&learner, Signal::SIGKILL);
    let status = exit_status(&mut learner, Duration::from_secs(20)).await;
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status:?}");
    let saved = newest().expect("the newest checkpoint");

    // Without a learner the actor acts and streams on its last weights.
    let steps = value(&actor.metrics, actor_metrics::ENV_STEPS).await;
    let inserts = value(&replay.metrics, replay_metrics::INSERTS_TOTAL).await;
    wait_above(&actor.metrics, actor_metrics::ENV_STEPS, steps + 1000.0).await;
    wait_above(&replay.metrics, replay_metrics::INSERTS_TOTAL, inserts + 20.0).await;
    let held = value(&actor.metrics, actor_metrics::WEIGHTS_VERSION).await;
    assert!(
        held > saved.version as f64,
        "the actor holds version {held}, which the newest checkpoint {saved:?} does not"
    );

    // Back on its address, first where it cannot train (an empty replay):
    // it serves exactly the newest checkpoint's state, older than the
    // actor's weights, and the actor, once connected, keeps its own.
    let empty = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let reconnects = series(actor_metrics::RECONNECTS, &[("peer", "learner")]);
    let connected = value(&actor.metrics, &reconnects).await;
    let mut args: Vec<&str> = learner_args.to_vec();
    args[4] = &empty.grpc;
    let (mut idle, idle_log) = start_logged(&args, "warn,fleet_learner::runtime=info").await;
    assert_resumed(&idle_log, &saved).await;
    assert_eq!(value(&idle.metrics, learner_metrics::WEIGHTS_VERSION).await, saved.version as f64);
    wait_above(&actor.metrics, &reconnects, connected).await;
    let steps = value(&actor.metrics, actor_metrics::ENV_STEPS).await;
    wait_above(&actor.metrics, actor_metrics::ENV_STEPS, steps + 1000.0).await;
    assert_eq!(value(&actor.metrics, actor_metrics::WEIGHTS_VERSION).await, held);
    idle.stop(Duration::from_secs(20)).await;

    // Then with its replay: it trains on, and the actor follows it once it
    // passes the version the actor held.
    let (mut resumed, resumed_log) = start_logged(&learner_args, "warn,fleet_learner::runtime=info").await;
    assert_resumed(&resumed_log, &saved).await;
    wait_above(&actor.metrics, actor_metrics::WEIGHTS_VERSION, held).await;
    watcher.abort();
    let seen = versions.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "the actor's weights version went back: {seen:?}"
    );
    assert!(actor.child.try_wait().unwrap().is_none(), "the actor kept running");
    assert_eq!(actor_log.lines("actor starting").len(), 1, "the actor was not restarted");
    resumed.stop(Duration::from_secs(20)).await;
}

/// Asserts that a learner's log says it resumed from exactly `saved`.
async fn assert_resumed(log: &Log, saved: &fleet_learner::checkpoint::CheckpointMeta) {
    let line = log.nth("resumed from checkpoint", 1).await;
    let restored = (
        field(&line, "version"),
        field(&line, "updates"),
        field(&line, "frames"),
        field(&line, "optimizer_steps"),
    );
    assert_eq!(
        restored,
        (saved.version, saved.updates, saved.frames, saved.optimizer_steps),
        "restored version, updates, frames and optimiser steps: {line}"
    );
}

/// SIGTERM on an actor that replay holds back (its queue is full, nothing
/// samples it): while the test then drains the queue, the actor hands over
/// every sequence it finished and exits 0. Stopped again with nothing
/// draining, it exits 0 within its flush bound and says what it dropped.
/// Replay stores every acknowledged sequence, and only those unless the
/// actor reconnected (a resent sequence whose ack was lost is stored twice).
#[tokio::test]
async fn a_terminated_actor_sends_its_finished_sequences_and_exits_0() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    // A learner on another, empty replay: it serves weights and takes nothing.
    let idle = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let learner = start(&["learner", "--listen", "127.0.0.1:0", "--replay", &idle.grpc]).await;
    let mut client = replay_client(&replay).await;
    let queue_size = |info: pb::InfoResponse| (info.tables[0].size, info.tables[0].inserts);

    let (mut actor, log) = start_actor("1", &replay.grpc, &learner.grpc, &[]).await;
    let run = field(&log.nth("actor starting", 1).await, "run_id");
    // The queue's 32 items, then the actor's 8 unacknowledged ones.
    wait_above(&actor.metrics, actor_metrics::SEQUENCES_SENT, 39.0).await;
    signal(&actor, Signal::SIGTERM);
    let mut drained = Vec::new();
    let status = loop {
        if let Some(status) = actor.child.try_wait().unwrap() {
            break status;
        }
        match sample(&mut client, 4, 200).await {
            Ok(items) => drained.extend(items),
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {}
            Err(status) => panic!("{status:?}"),
        }
        assert!(drained.len() < 10_000, "the actor did not stop");
    };
    assert!(status.success(), "actor exit status {status}");
    let stopped = log.nth("actor stopped", 1).await;
    let (written, acknowledged) = (field(&stopped, "written"), field(&stopped, "acknowledged"));
    assert_eq!((field(&stopped, "dropped"), field(&stopped, "rejected")), (0, 0), "{stopped}");
    // At least what it had sent when it was stopped; under load nothing more.
    assert!(written >= 40, "{stopped}");
    assert_eq!(acknowledged, written, "{stopped}");
    // One at a time: what is left need not fill a batch of 4.
    while let Ok(items) = sample(&mut client, 1, 200).await {
        drained.extend(items);
    }
    let (size, inserts) = queue_size(client.info(pb::InfoRequest {}).await.unwrap().into_inner());
    assert_eq!(size, 0, "the test drained the queue");
    assert_eq!(drained.len() as u64, inserts);
    let reconnects = log.lines("reconnecting");
    if reconnects.is_empty() {
        assert_eq!(inserts, written, "replay stored every sequence the actor wrote, once: {stopped}");
    } else {
        assert!(inserts >= written, "{inserts} stored; {stopped}; {reconnects:?}");
    }
    for item in &drained {
        assert_whole(item, &[(1, run)]);
    }

    // Nothing drains now: the actor gives up at its bound and says so.
    let (mut stuck, log) = start_actor("2", &replay.grpc, &learner.grpc, &[]).await;
    wait_above(&stuck.metrics, actor_metrics::SEQUENCES_SENT, 39.0).await;
    signal(&stuck, Signal::SIGTERM);
    let bound = fleet_actor::runtime::SHUTDOWN_FLUSH + Duration::from_secs(10);
    let status = exit_status(&mut stuck, bound).await;
    assert!(status.success(), "actor exit status {status}");
    let stopped = log.nth("actor stopped", 1).await;
    let (written, acknowledged, dropped) = (
        field(&stopped, "written"),
        field(&stopped, "acknowledged"),
        field(&stopped, "dropped"),
    );
    assert!(dropped > 0, "{stopped}");
    assert_eq!(written, acknowledged + dropped, "{stopped}");
    let (size, inserts_after) = queue_size(client.info(pb::InfoRequest {}).await.unwrap().into_inner());
    let stored = inserts_after - inserts;
    assert_eq!(size, 32, "the queue holds what it took: {stopped}");
    let reconnects = log.lines("reconnecting");
    if reconnects.is_empty() {
        assert_eq!(stored, acknowledged, "replay stored exactly what it acknowledged: {stopped}");
    } else {
        // A connection lost on a loaded machine: items stored whose acks
        // were lost with it are resent, and stored again (at least once).
        assert!(stored >= acknowledged, "{stored} stored; {stopped}; {reconnects:?}");
    }
}

/// SIGTERM on a training learner: it exits 0 within a bound, and its
/// newest checkpoint on disk is the final one it reported, at least as new
/// as the weights the actor got from it.
#[tokio::test]
async fn a_terminated_learner_writes_its_final_checkpoint_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint_dir = format!("learner.checkpoint_dir={}", dir.path().display());
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let (mut learner, log) = start_logged(
        &[
            "learner",
            "--listen",
            "127.0.0.1:0",
            "--replay",
            &replay.grpc,
            "--set",
            &checkpoint_dir,
            "--set",
            "learner.checkpoint_interval_secs=3600",
        ],
        "warn,fleet_learner::runtime=info",
    )
    .await;
    let (actor, _actor_log) = start_actor("1", &replay.grpc, &learner.grpc, &[]).await;
    wait_above(&learner.metrics, learner_metrics::UPDATES, 10.0).await;
    wait_above(&actor.metrics, actor_metrics::WEIGHTS_VERSION, 3.0).await;

    signal(&learner, Signal::SIGTERM);
    let status = exit_status(&mut learner, Duration::from_secs(20)).await;
    assert!(status.success(), "learner exit status {status}");
    let acted = value(&actor.metrics, actor_metrics::WEIGHTS_VERSION).await;
    let lines = log.lines("checkpoint written");
    assert_eq!(lines.len(), 1, "only the final checkpoint: {lines:?}");
    let saved = fleet_learner::checkpoint::latest(dir.path(), &candle_core::Device::Cpu)
        .unwrap()
        .expect("a final checkpoint")
        .meta;
    assert_eq!(
        (saved.version, saved.updates, saved.frames, saved.optimizer_steps),
        (
            field(&lines[0], "version"),
            field(&lines[0], "updates"),
            field(&lines[0], "frames"),
            field(&lines[0], "optimizer_steps")
        ),
        "{}",
        lines[0]
    );
    assert!(saved.updates >= 10, "{saved:?}");
    assert!(saved.version as f64 >= acted, "{saved:?}; the actor had version {acted}");
}

/// SIGTERM on replay with a checkpoint directory: it exits 0 within a
/// bound, having written a final checkpoint that holds what it reported,
/// and a replay started on that directory serves the same items.
#[tokio::test]
async fn a_terminated_replay_writes_its_final_checkpoint_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint_dir = format!("replay.checkpoint_dir={}", dir.path().display());
    let args = [
        "replay",
        "--listen",
        "127.0.0.1:0",
        "--set",
        &checkpoint_dir,
        "--set",
        "replay.checkpoint_interval_secs=0",
    ];
    let mut replay = start(&args).await;
    let mut client = replay_client(&replay).await;
    let items: Vec<pb::Sequence> = (1..=12).map(|i| sequence(SEQUENCE_LENGTH, i as f32)).collect();
    let requests = items.iter().map(|s| pb::InsertRequest {
        table: "queue".into(),
        sequence: Some(s.clone()),
        ..Default::default()
    });
    let mut acks = client
        .insert(tokio_stream::iter(requests.collect::<Vec<_>>()))
        .await
        .unwrap()
        .into_inner();
    for _ in &items {
        acks.next().await.unwrap().unwrap();
    }
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.tables[0].size, info.tables[0].inserts), (12, 12));
    assert_eq!(fleet_replay::checkpoint::newest(dir.path()).unwrap(), None);

    signal(&replay, Signal::SIGTERM);
    let status = exit_status(&mut replay, Duration::from_secs(20)).await;
    assert!(status.success(), "replay exit status {status}");
    assert!(
        fleet_replay::checkpoint::newest(dir.path()).unwrap().is_some(),
        "a final checkpoint"
    );

    let replay = start(&args).await;
    let mut client = replay_client(&replay).await;
    let back = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!((back.tables[0].size, back.tables[0].inserts), (12, 12), "what it last reported");
    let sampled = sample(&mut client, 12, 2000).await.unwrap();
    let sequences: Vec<pb::Sequence> = sampled.into_iter().map(|i| i.sequence.unwrap()).collect();
    assert_eq!(sequences, items);
}

/// An insert stream starts with no writer state: `overlap` that refers to
/// an item another stream stored (as a restarted actor's would, naming the
/// same writer) is refused, and so is a continuation from another run.
#[tokio::test]
async fn an_overlap_into_another_streams_item_is_refused() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let mut client = replay_client(&replay).await;
    let whole = |run_id| {
        let mut s = sequence(SEQUENCE_LENGTH, 1.0);
        s.run_id = run_id;
        s
    };
    let rest = |run_id| {
        let mut s = whole(run_id).slice_steps(1..SEQUENCE_LENGTH);
        s.run_id = run_id;
        s
    };
    let request = |sequence, overlap| pb::InsertRequest {
        table: "queue".into(),
        sequence: Some(sequence),
        writer: 3,
        overlap,
        also_tables: Vec::new(),
    };
    let insert = |requests: Vec<pb::InsertRequest>| {
        let mut client = client.clone();
        async move {
            let n = requests.len();
            let mut acks = client.insert(tokio_stream::iter(requests)).await.unwrap().into_inner();
            let mut keys = Vec::new();
            while keys.len() < n {
                match acks.next().await {
                    Some(Ok(ack)) => keys.push(ack.key),
                    Some(Err(status)) => return (keys, Some(status)),
                    None => break,
                }
            }
            (keys, None)
        }
    };

    // One stream: an item, then one that continues it.
    let (keys, end) = insert(vec![request(whole(5), 0), request(rest(5), 1)]).await;
    assert_eq!((keys.len(), end.map(|s| s.code())), (2, None));
    // A new stream naming the same writer cannot continue that item.
    let (keys, end) = insert(vec![request(rest(5), 1)]).await;
    let status = end.expect("refused");
    assert_eq!((keys.len(), status.code()), (0, tonic::Code::InvalidArgument), "{status:?}");
    assert!(status.message().contains("stored no item for writer 3"), "{status:?}");
    // Nor can steps of another run continue one on the same stream.
    let (keys, end) = insert(vec![request(whole(5), 0), request(rest(6), 1)]).await;
    let status = end.expect("refused");
    assert_eq!((keys.len(), status.code()), (1, tonic::Code::InvalidArgument), "{status:?}");
    assert!(status.message().contains("actor run 6"), "{status:?}");

    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.tables[0].size, 3, "only the items that were acknowledged");
    let sampled = sample(&mut client, 3, 2000).await.unwrap();
    assert!(sampled.iter().all(|i| i.sequence.as_ref().unwrap().run_id == 5));
    assert!(
        sampled
            .iter()
            .all(|i| i.sequence.as_ref().unwrap().rewards.len() == SEQUENCE_LENGTH)
    );
}

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(process: &Process, field: &str) -> u64 {
    let pid = process.child.id().expect("still running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * 1024
}

/// The `queue` table's insert count, as replay's `Info` reports it.
async fn queue_inserts(replay: &Process) -> u64 {
    let info = replay_client(replay).await.info(pb::InfoRequest {}).await.unwrap().into_inner();
    info.tables.iter().find(|t| t.name == "queue").expect("a queue table").inserts
}

/// What one actor looked like while replay was down.
#[derive(Debug, Default)]
struct Held {
    /// Most finished sequences it held (`SEQUENCES_PENDING`).
    most_pending: f64,
    /// Its VmRSS when replay was killed, and the most after.
    rss_at_kill: u64,
    most_rss: u64,
    /// Env steps once it had stopped acting, and at the end of the outage.
    steps_blocked: f64,
    steps_at_restart: f64,
}

/// Replay, logging every insert ahead of acknowledging it (`replay.durability
/// = "wal"`), is SIGKILLed under a training learner and two actors, stays
/// down for a few seconds and is started again on the same address. While
/// it is down each actor holds a bounded number of finished sequences and
/// then stops acting; after the restart replay holds every insert that was
/// acknowledged, the actors reconnect and resend what was not, and the
/// learner, never restarted, trains on.
#[tokio::test]
async fn a_killed_replay_keeps_every_acknowledged_insert_and_actors_and_learner_resume() {
    const MAX_IN_FLIGHT: f64 = 8.0;
    // At most `max_in_flight` unacknowledged, `max_in_flight` queued for the
    // insert task and one the compute thread waits to hand over.
    const PENDING_BOUND: f64 = 2.0 * MAX_IN_FLIGHT + 1.0;
    // Room for allocator noise and the reconnect attempts' buffers; an actor
    // that kept acting would buffer about 4 KB per sequence, 4 sequences
    // every 20 steps, tens of MiB over the outage.
    const RSS_MARGIN: u64 = 16 << 20;
    const DOWN: Duration = Duration::from_secs(4);

    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let checkpoint_dir = format!("replay.checkpoint_dir={}", dir.path().display());
    let replay_args = [
        "replay",
        "--listen",
        &address,
        "--set",
        &checkpoint_dir,
        "--set",
        "replay.durability=wal",
    ];
    let mut replay = start(&replay_args).await;
    let mut learner = start(&["learner", "--listen", "127.0.0.1:0", "--replay", &address]).await;
    let in_flight = format!("actor.max_in_flight={MAX_IN_FLIGHT}");
    let mut actors = Vec::new();
    for id in ["1", "2"] {
        actors.push(start_actor(id, &address, &learner.grpc, &["--set", &in_flight]).await);
    }
    let reconnects = series(actor_metrics::RECONNECTS, &[("peer", "replay")]);
    for (actor, _) in &actors {
        wait_above(&actor.metrics, actor_metrics::SEQUENCES_ACKED, 10.0).await;
    }
    wait_above(&learner.metrics, learner_metrics::UPDATES, 5.0).await;

    // Kill it once everything its Info counts is acknowledged (so on disk):
    // the count is then a floor for what must come back.
    let counted = queue_inserts(&replay).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut acked = 0.0;
        for (actor, _) in &actors {
            acked += value(&actor.metrics, actor_metrics::SEQUENCES_ACKED).await;
        }
        if acked >= counted as f64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{acked} acknowledged of the {counted} inserts replay counted, within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_at_kill: Vec<u64> = actors.iter().map(|(a, _)| status_bytes(a, "VmRSS")).collect();
    signal(&replay, Signal::SIGKILL);
    let status = exit_status(&mut replay, Duration::from_secs(20)).await;
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status:?}");
    let killed_at = tokio::time::Instant::now();
    let updates_at_kill = value(&learner.metrics, learner_metrics::UPDATES).await;

    // Down: read every actor's pending sequences, steps and memory until
    // each has stopped acting and the outage has lasted DOWN.
    let mut held: Vec<Held> = rss_at_kill
        .iter()
        .map(|&rss| Held {
            rss_at_kill: rss,
            most_rss: rss,
            steps_blocked: f64::NAN,
            ..Held::default()
        })
        .collect();
    let mut last_steps = vec![(f64::NAN, killed_at); actors.len()];
    loop {
        for (i, (actor, _)) in actors.iter().enumerate() {
            let text = scrape(&actor.metrics).await.unwrap();
            let pending = metric(&text, actor_metrics::SEQUENCES_PENDING).unwrap_or(0.0);
            let steps = metric(&text, actor_metrics::ENV_STEPS).unwrap_or(0.0);
            let h = &mut held[i];
            h.most_pending = h.most_pending.max(pending);
            h.most_rss = h.most_rss.max(status_bytes(actor, "VmRSS"));
            assert!(
                pending <= PENDING_BOUND,
                "actor {}: {pending} sequences pending while replay is down, over {PENDING_BOUND}",
                i + 1
            );
            // Acting has stopped once the steps stand still for a second
            // with the actor's buffers full.
            let now = tokio::time::Instant::now();
            if steps != last_steps[i].0 {
                last_steps[i] = (steps, now);
            } else if h.steps_blocked.is_nan() && pending > MAX_IN_FLIGHT && now - last_steps[i].1 >= Duration::from_secs(1) {
                h.steps_blocked = steps;
            }
        }
        let elapsed = killed_at.elapsed();
        if elapsed >= DOWN && held.iter().all(|h| !h.steps_blocked.is_nan()) {
            break;
        }
        assert!(
            elapsed < Duration::from_secs(20),
            "the actors did not stop acting within 20 s of losing replay: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, (actor, _)) in actors.iter().enumerate() {
        held[i].steps_at_restart = value(&actor.metrics, actor_metrics::ENV_STEPS).await;
        held[i].most_rss = held[i].most_rss.max(status_bytes(actor, "VmRSS"));
    }
    // Nothing can be acknowledged now: these are the acknowledged counts at
    // the kill.
    let mut acked_at_kill = Vec::new();
    let mut connected = Vec::new();
    for (actor, _) in &actors {
        acked_at_kill.push(value(&actor.metrics, actor_metrics::SEQUENCES_ACKED).await);
        connected.push(value(&actor.metrics, &reconnects).await);
    }
    let updates_down = value(&learner.metrics, learner_metrics::UPDATES).await;
    let down_for = killed_at.elapsed();
    for (i, h) in held.iter().enumerate() {
        assert_eq!(
            h.steps_at_restart,
            h.steps_blocked,
            "actor {} acted on with replay down: {h:?}",
            i + 1
        );
        assert!(
            h.most_rss <= h.rss_at_kill + RSS_MARGIN,
            "actor {}: VmRSS grew from {} to {} bytes with replay down",
            i + 1,
            h.rss_at_kill,
            h.most_rss
        );
    }
    assert!(learner.child.try_wait().unwrap().is_none(), "the learner waits for replay");

    // Back on the same address, from its checkpoint directory and log.
    let replay = start(&replay_args).await;
    let restored = queue_inserts(&replay).await;
    let acknowledged: f64 = acked_at_kill.iter().sum();
    assert!(
        restored >= counted && restored as f64 >= acknowledged,
        "replay restored {restored} inserts; it had counted {counted} and acknowledged {acknowledged} before the kill"
    );

    // The actors reconnect, resend and stream on; the learner trains on.
    for (i, (actor, _)) in actors.iter().enumerate() {
        wait_above(&actor.metrics, &reconnects, connected[i]).await;
        wait_above(
            &actor.metrics,
            actor_metrics::SEQUENCES_ACKED,
            acked_at_kill[i] + 2.0 * MAX_IN_FLIGHT,
        )
        .await;
        wait_above(&actor.metrics, actor_metrics::ENV_STEPS, held[i].steps_at_restart).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while queue_inserts(&replay).await <= restored + 2 * PENDING_BOUND as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay's inserts did not grow after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = wait_above(&learner.metrics, learner_metrics::UPDATES, updates_down + 5.0).await;
    assert!(learner.child.try_wait().unwrap().is_none(), "the learner was never restarted");
    for (actor, log) in &mut actors {
        assert!(actor.child.try_wait().unwrap().is_none(), "the actor kept running");
        assert_eq!(log.lines("actor starting").len(), 1, "the actor was not restarted");
    }
    eprintln!(
        "down {down_for:?}; held {held:?}; Info counted {counted} before the kill, {acknowledged} acknowledged, \
         {restored} restored; learner updates {updates_at_kill} at the kill, {updates_down} at the restart, {resumed} after"
    );
    learner.stop(Duration::from_secs(20)).await;
}
