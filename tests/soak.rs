//! A soak of one `fleet replay` process: 64 insert streams on loopback, one
//! per connection as 64 actors would hold them, and a real `fleet learner`
//! sampling and training, for `FLEET_SOAK_SECS` seconds (60 by default; see
//! docs/RELIABILITY.md for the long run). It checks what a long run would
//! break: progress in every window (no deadlock between the streams, the
//! rate limiter and the sampler), replay's resident memory within its byte
//! budget plus a fixed overhead, no growth of its open files or tokio tasks
//! from the middle of the run to its end, the samples-per-insert cursor
//! inside the limiter's error buffer, and every acknowledged insert
//! accounted for as stored, evicted or sampled out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_learner::metrics as learner_metrics;
use fleet_proto::pb::{self, replay_client::ReplayClient};
use fleet_proto::tls::Tls;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::{metric, scrape, sequence, start};

/// Insert streams, each on its own connection.
const STREAMS: usize = 64;
/// Steps per sequence: the learner's `actor.unroll_length` (100) plus the
/// bootstrap step; about 4.7 KB stored per item.
const STEPS: usize = 101;
const TABLE: &str = "soak";
/// The table's byte budget.
const MAX_BYTES: u64 = 32 << 20;
/// Resident memory replay may hold beside its budget: the binary and its
/// runtime (22 MiB idle), 64 + 2 connections with their HTTP/2 buffers, the
/// index of the ~8,000 items the budget holds (sampler, remover, chunk
/// counts), messages being decoded or encoded, and what the allocator keeps
/// of freed memory. Measured at 62 MiB over the budget at peak
/// (docs/RELIABILITY.md); the bound leaves room for allocator variance.
const RSS_OVERHEAD: u64 = 96 << 20;
/// Samples per insert and the error buffer around it: each item is sampled
/// half a time on average, so the table fills and evicts as well as losing
/// items to sampling.
const SAMPLES_PER_INSERT: f64 = 0.5;
const ERROR_BUFFER: f64 = 256.0;
/// Each window of this length must see inserts acknowledged and batches
/// sampled.
const WINDOW: Duration = Duration::from_secs(10);
/// Open files and tasks may differ this much between the middle and the end
/// of the run: a `/metrics` scrape or a sample call can be open at either.
const FD_SLACK: u64 = 4;
const TASK_SLACK: f64 = 16.0;

fn soak_duration() -> Duration {
    let secs = std::env::var("FLEET_SOAK_SECS")
        .ok()
        .map(|v| v.parse::<u64>().expect("FLEET_SOAK_SECS is a number of seconds"))
        .unwrap_or(60);
    Duration::from_secs(secs.max(2 * WINDOW.as_secs()))
}

fn config() -> String {
    format!(
        r#"
[actor]
table = "{TABLE}"
unroll_length = {unroll}

[learner]
table = "{TABLE}"
max_policy_lag = 0

[[replay.tables]]
name = "{TABLE}"
max_size = 1000000
max_bytes = {MAX_BYTES}
sampler = "uniform"
remover = "fifo"
max_times_sampled = 1
min_size_to_sample = 64
samples_per_insert = {SAMPLES_PER_INSERT:?}
error_buffer = {ERROR_BUFFER:?}
"#,
        unroll = STEPS - 1
    )
}

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * 1024
}

fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64
}

async fn info(client: &mut ReplayClient<Channel>) -> pb::TableInfo {
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    info.tables.into_iter().find(|t| t.name == TABLE).unwrap()
}

/// One stream: sends its sequence, waits for the ack, again, until `stop`;
/// then ends the stream once its last insert is acknowledged. Every ack is
/// counted in `acked`.
async fn insert_stream(address: String, seed: usize, acked: Arc<AtomicU64>, stop: tokio_util::sync::CancellationToken) {
    let channel = fleet_proto::connect::endpoint(&address, &Tls::default())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ReplayClient::new(channel);
    let item = sequence(STEPS, seed as f32);
    let (requests, stream) = mpsc::channel(1);
    let mut acks = client.insert(ReceiverStream::new(stream)).await.unwrap().into_inner();
    while !stop.is_cancelled() {
        let request = pb::InsertRequest {
            table: TABLE.into(),
            sequence: Some(item.clone()),
            ..Default::default()
        };
        requests.send(request).await.unwrap();
        acks.message().await.unwrap().expect("an ack for every insert");
        acked.fetch_add(1, Ordering::Relaxed);
    }
    drop(requests);
    assert!(acks.message().await.unwrap().is_none(), "the stream ends cleanly");
}

/// The figures of one moment of the run.
#[derive(Debug, Clone)]
struct Reading {
    at: Duration,
    acked: u64,
    table: pb::TableInfo,
    rss: u64,
    fds: u64,
    tasks: f64,
    updates: f64,
}

#[tokio::test]
async fn sixty_four_insert_streams_and_a_learner_hold_memory_files_tasks_and_counts() {
    let duration = soak_duration();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("soak.toml");
    std::fs::write(&config_path, config()).unwrap();
    let config_path = config_path.to_str().unwrap();
    let replay = start(&["replay", "--listen", "127.0.0.1:0", "--config", config_path]).await;
    let learner = start(&[
        "learner",
        "--listen",
        "127.0.0.1:0",
        "--replay",
        &replay.grpc,
        "--config",
        config_path,
    ])
    .await;
    let pid = replay.child.id().unwrap();
    let mut client = ReplayClient::connect(replay.grpc_uri()).await.unwrap();

    let acked = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let streams: Vec<_> = (0..STREAMS)
        .map(|seed| tokio::spawn(insert_stream(replay.grpc.clone(), seed + 1, acked.clone(), stop.clone())))
        .collect();

    let started = Instant::now();
    let mut readings: Vec<Reading> = Vec::new();
    let mut peak_rss = 0;
    let mut middle: Option<Reading> = None;
    loop {
        tokio::time::sleep(WINDOW.min(duration.saturating_sub(started.elapsed()))).await;
        let table = info(&mut client).await;
        let replay_text = scrape(&replay.metrics).await.unwrap();
        let learner_text = scrape(&learner.metrics).await.unwrap();
        let reading = Reading {
            at: started.elapsed(),
            acked: acked.load(Ordering::Relaxed),
            rss: status_bytes(pid, "VmRSS"),
            fds: open_files(pid),
            tasks: metric(&replay_text, fleet::telemetry::RUNTIME_TASKS).expect("replay exports its task count"),
            updates: metric(&learner_text, learner_metrics::UPDATES).unwrap_or(0.0),
            table,
        };
        eprintln!(
            "soak {:>5.1} s: acked {} inserts {} samples {} size {} evictions {} bytes {} RSS {:.1} MiB fds {} tasks {} learner updates {}",
            reading.at.as_secs_f64(),
            reading.acked,
            reading.table.inserts,
            reading.table.samples,
            reading.table.size,
            reading.table.evictions,
            reading.table.bytes,
            reading.rss as f64 / f64::from(1 << 20),
            reading.fds,
            reading.tasks,
            reading.updates
        );
        peak_rss = peak_rss.max(reading.rss);
        let t = &reading.table;
        // The limiter's promise, checked at every reading.
        let cursor = t.inserts as f64 * t.samples_per_insert - t.samples as f64;
        assert!(
            t.min_diff <= cursor && cursor <= t.max_diff,
            "samples-per-insert cursor {cursor} outside [{}, {}]: {t:?}",
            t.min_diff,
            t.max_diff
        );
        assert!(
            t.bytes <= MAX_BYTES,
            "the table holds {} bytes over its budget {MAX_BYTES}",
            t.bytes
        );
        assert!(
            reading.rss <= MAX_BYTES + RSS_OVERHEAD,
            "replay's RSS {} exceeds its {MAX_BYTES}-byte budget plus {RSS_OVERHEAD} overhead",
            reading.rss
        );
        if let Some(previous) = readings.last() {
            assert!(
                reading.acked > previous.acked && reading.table.samples > previous.table.samples,
                "no progress between {:?} and {:?}: {previous:?} then {reading:?}",
                previous.at,
                reading.at
            );
        }
        if middle.is_none() && reading.at >= duration / 2 {
            middle = Some(reading.clone());
        }
        readings.push(reading);
        if started.elapsed() >= duration {
            break;
        }
    }
    let middle = middle.unwrap();
    let end = readings.last().unwrap().clone();
    assert!(
        end.fds <= middle.fds + FD_SLACK,
        "replay's open files grew from {} to {}",
        middle.fds,
        end.fds
    );
    assert!(
        end.tasks <= middle.tasks + TASK_SLACK,
        "replay's tokio tasks grew from {} to {}",
        middle.tasks,
        end.tasks
    );
    assert!(end.updates > middle.updates, "the learner trained on: {middle:?} then {end:?}");

    // Every stream finishes its last insert (the learner keeps sampling, so
    // the limiter lets it in) and ends; then every acknowledged insert is in
    // the table, evicted, or sampled out (each draw of a table with
    // max_times_sampled = 1 removes its item).
    stop.cancel();
    for stream in streams {
        tokio::time::timeout(Duration::from_secs(60), stream)
            .await
            .expect("every stream ends")
            .unwrap();
    }
    let acked = acked.load(Ordering::Relaxed);
    let t = info(&mut client).await;
    assert_eq!(t.inserts, acked, "replay counts every acknowledged insert, and only those: {t:?}");
    assert_eq!(
        t.size + t.evictions + t.samples,
        t.inserts,
        "inserted = stored + evicted + sampled out: {t:?}"
    );
    assert!(
        t.evictions > 0 && t.samples > 0,
        "the run exercised both eviction and sampling out: {t:?}"
    );
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "soak summary: {secs:.0} s, {STREAMS} streams; acked {acked} ({:.0}/s); sampled {} ({:.0}/s), samples/insert {:.3}; \
         size {} evictions {}; bytes {} of {MAX_BYTES}; peak RSS {:.1} MiB (VmHWM {:.1} MiB); fds {} -> {}; tasks {} -> {}; learner updates {}",
        acked as f64 / secs,
        t.samples,
        t.samples as f64 / secs,
        t.samples as f64 / t.inserts as f64,
        t.size,
        t.evictions,
        t.bytes,
        peak_rss as f64 / f64::from(1 << 20),
        status_bytes(pid, "VmHWM") as f64 / f64::from(1 << 20),
        middle.fds,
        end.fds,
        middle.tasks,
        end.tasks,
        end.updates
    );
}
