//! `fleet bench replay`: a load generator for the replay service. It starts
//! `fleet replay` as its own process with one prioritised table, then runs K
//! inserting and M sampling clients against it over loopback gRPC for a fixed
//! time per workload, and prints a table: inserts/s, sampled items/s, MB/s,
//! p50/p99 latency of an insert (sent until acknowledged) and of a sampled
//! batch (requested until received), and the server's peak resident memory.
//!
//! By default clients are pipelined, the way fleet's own roles can drive the
//! service: an inserter keeps many items unacknowledged on its insert stream
//! (as an actor does up to `actor.max_in_flight`), and a sampler reads one
//! open-ended `Sample` stream for the whole run with several batches prepared
//! ahead. `bench/reverb_replay.py` drives Reverb through its matching fast
//! paths. With [`Pacing::ClosedLoop`] every client keeps one request in
//! flight instead, as a Python client of Reverb's `Client.sample` does.
//!
//! In the R2D2 workload each inserter is one writer whose windows of 80 steps
//! start every 40 steps; it sends the first whole and then only the 40 new
//! steps of each, as actors do (Reverb's trajectory writer does the same).

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use fleet_proto::auth::{AttachToken, AuthChannel};
use fleet_proto::pb::replay_client::ReplayClient;
use fleet_proto::pb::{self, Tensor};
use fleet_replay::{Durability, TableConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{AuthConfig, Config, TlsConfig};
use crate::process::Process;

const TABLE: &str = "bench";
/// Large enough for a batch of R2D2-shaped sequences.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// One item shape to measure.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub name: &'static str,
    /// Steps per sequence, and the u8 observation shape of one step.
    steps: usize,
    frame: &'static [usize],
    /// Steps between the starts of consecutive items of one writer;
    /// `steps` means the items do not overlap.
    period: usize,
    /// Table capacity: bounds the server's memory at a few hundred MB.
    max_size: usize,
}

pub const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "1KiB",
        steps: 8,
        frame: &[1, 8, 16],
        period: 8,
        max_size: 100_000,
    },
    Workload {
        name: "100KiB",
        steps: 8,
        frame: &[1, 80, 160],
        period: 8,
        max_size: 4_000,
    },
    Workload {
        name: "r2d2-80x84x84",
        steps: 80,
        frame: &[1, 84, 84],
        period: 40,
        max_size: 500,
    },
];

/// How many requests each client keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// One at a time: an insert waits for its ack before the next is sent,
    /// and every batch is its own `Sample` call of one batch.
    ClosedLoop,
    /// Up to `inserts_in_flight` items unacknowledged per insert stream, and
    /// one `Sample` stream per sampler for the whole run, the server keeping
    /// `batches_in_flight` batches ready ahead of it.
    Pipelined { inserts_in_flight: usize, batches_in_flight: u32 },
}

/// The load: clients, batch size and duration per workload.
#[derive(Debug, Clone)]
pub struct Load {
    pub inserters: usize,
    pub samplers: usize,
    pub batch_size: u32,
    pub seconds: f64,
    pub pacing: Pacing,
    /// Items inserted before the clock starts, so that samplers have a full
    /// table to draw from even with no inserters.
    pub prefill: usize,
    /// The bearer token setup of the config `fleet bench` was started with:
    /// the replay it starts requires what its clients send.
    pub auth: AuthConfig,
    /// The TLS setup of that config: the replay serves with it, its
    /// clients connect with it.
    pub tls: TlsConfig,
    /// `replay.durability` of that config; with the write-ahead log, the
    /// replay keeps its checkpoints and log in a temporary directory.
    pub durability: Durability,
}

/// A sequence of `workload`'s shape from `actor`, valid for the replay service.
fn sequence(workload: &Workload, actor: u64) -> pb::Sequence {
    let t = workload.steps;
    let frame: usize = workload.frame.iter().product();
    let mut shape = vec![t];
    shape.extend_from_slice(workload.frame);
    // Random bytes: incompressible, so no system gains from compressing them.
    let mut rng = StdRng::seed_from_u64(actor);
    let observations: Vec<u8> = (0..t * frame).map(|_| rng.random()).collect();
    pb::Sequence {
        observations: Some(Tensor::from_u8(&shape, observations)),
        actions: Some(Tensor::from_i64(&[t], &vec![1; t])),
        behaviour_logits: Some(Tensor::from_f32(&[t, 2], &vec![0.0; t * 2])),
        rewards: vec![1.0; t],
        is_first: (0..t).map(|i| i == 0).collect(),
        terminated: vec![false; t],
        truncated: vec![false; t],
        behaviour_versions: vec![1; t],
        actor_id: actor,
        ..Default::default()
    }
}

/// What one workload measured.
#[derive(Debug)]
pub struct Report {
    pub workload: &'static str,
    /// Observation bytes per item (what MB/s counts).
    pub item_bytes: usize,
    pub inserts_per_sec: f64,
    pub samples_per_sec: f64,
    pub insert_mb_per_sec: f64,
    pub sample_mb_per_sec: f64,
    pub insert_p50_ms: f64,
    pub insert_p99_ms: f64,
    pub sample_p50_ms: f64,
    pub sample_p99_ms: f64,
    pub server_peak_rss_mib: f64,
    /// The table's bytes per stored step at the end (Info).
    pub stored_bytes_per_step: f64,
}

/// Runs every workload in `names` (all when empty) and prints the table.
pub async fn replay(load: Load, names: &[String]) -> Result<()> {
    println!(
        "| workload | item bytes | inserts/s | samples/s | insert MB/s | sample MB/s | insert p50 / p99 ms | sample batch p50 / p99 ms | server peak RSS MiB | stored B/step |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for workload in WORKLOADS.iter().filter(|w| names.is_empty() || names.iter().any(|n| n == w.name)) {
        let r = run_workload(workload, &load)
            .await
            .with_context(|| format!("workload {}", workload.name))?;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} |",
            r.workload,
            r.item_bytes,
            r.inserts_per_sec,
            r.samples_per_sec,
            r.insert_mb_per_sec,
            r.sample_mb_per_sec,
            milliseconds(r.insert_p50_ms, r.insert_p99_ms),
            milliseconds(r.sample_p50_ms, r.sample_p99_ms),
            r.server_peak_rss_mib,
            r.stored_bytes_per_step
        );
    }
    let pacing = match load.pacing {
        Pacing::ClosedLoop => "closed-loop clients (one request in flight each)".to_owned(),
        Pacing::Pipelined {
            inserts_in_flight,
            batches_in_flight,
        } => format!("pipelined clients ({inserts_in_flight} inserts, {batches_in_flight} batches in flight each)"),
    };
    println!(
        "\n{} inserting and {} sampling {pacing}, batches of {}, {} s per workload after {} prefilled items; prioritised table (α 0.8, fifo remover); durability {:?}.",
        load.inserters, load.samplers, load.batch_size, load.seconds, load.prefill, load.durability
    );
    Ok(())
}

/// A p50 / p99 pair, or a dash where nothing was timed.
fn milliseconds(p50: f64, p99: f64) -> String {
    if p50.is_nan() {
        "–".to_owned()
    } else {
        format!("{p50:.2} / {p99:.2}")
    }
}

async fn run_workload(workload: &Workload, load: &Load) -> Result<Report> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let config_path = dir.path().join("bench.toml");
    bench_config(workload, load, dir.path())?.write_to(&config_path)?;
    let mut server = Process::spawn_child(
        "replay",
        &config_path,
        "warn",
        &[
            "replay".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ],
    )
    .await?;
    let pid = server.child.id().ok_or_else(|| anyhow!("the replay process has no pid"))?;
    let address = server.grpc.clone();
    let result = drive(workload, load, &address).await;
    let stored = stored_bytes_per_step(&address, load).await;
    let peak_rss = super::peak_rss_bytes(pid).map(|bytes| bytes as f64 / f64::from(1 << 20));
    server.stop(Duration::from_secs(10)).await;
    let (inserts, samples, elapsed) = result?;
    // The observation payload; each item also carries ~24 B per step of
    // actions, logits, rewards and flags, which the figures leave out.
    let item_bytes = workload.steps * workload.frame.iter().product::<usize>();
    let secs = elapsed.as_secs_f64();
    Ok(Report {
        workload: workload.name,
        item_bytes,
        inserts_per_sec: inserts.count as f64 / secs,
        samples_per_sec: samples.count as f64 / secs,
        insert_mb_per_sec: (inserts.count * item_bytes) as f64 / secs / 1e6,
        sample_mb_per_sec: (samples.count * item_bytes) as f64 / secs / 1e6,
        insert_p50_ms: percentile(&inserts.latencies, 0.50),
        insert_p99_ms: percentile(&inserts.latencies, 0.99),
        sample_p50_ms: percentile(&samples.latencies, 0.50),
        sample_p99_ms: percentile(&samples.latencies, 0.99),
        server_peak_rss_mib: peak_rss?,
        stored_bytes_per_step: stored?,
    })
}

/// The bench table's bytes over its stored steps, from `Info`.
async fn stored_bytes_per_step(address: &str, load: &Load) -> Result<f64> {
    let info = client(address, load).await?.info(pb::InfoRequest {}).await?.into_inner();
    let table = info.tables.first().ok_or_else(|| anyhow!("Info lists no table"))?;
    Ok(table.bytes as f64 / table.steps.max(1) as f64)
}

fn bench_config(workload: &Workload, load: &Load, dir: &Path) -> Result<Config> {
    let mut config = Config::load(&Default::default())?;
    // The child reads the token and the TLS files from the same files (or
    // the inherited environment) as this process did.
    config.auth = load.auth.clone();
    config.tls = load.tls.clone();
    config.replay.max_message_bytes = MAX_MESSAGE_BYTES;
    config.replay.tables = vec![TableConfig::prioritized(TABLE, workload.max_size, 0.8)];
    config.replay.durability = load.durability;
    if load.durability == Durability::Wal {
        config.replay.checkpoint_dir = dir.join("checkpoints").display().to_string();
    }
    // Roles read the tables by name from the config; keep it consistent.
    config.actor.table = TABLE.into();
    config.learner.table = TABLE.into();
    config.validate()?;
    Ok(config)
}

/// Completed operations of one kind and their latencies.
#[derive(Debug, Default)]
struct Tally {
    /// Items (inserts) or sampled items.
    count: usize,
    latencies: Vec<Duration>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.count += other.count;
        self.latencies.extend(other.latencies);
    }
}

async fn client(address: &str, load: &Load) -> Result<ReplayClient<AuthChannel>> {
    let channel = fleet_proto::connect::endpoint(address, &load.tls.loaded)?
        .connect()
        .await
        .map_err(|error| anyhow!("connecting to {address}: {}", fleet_proto::connect::chain(&error)))?;
    Ok(ReplayClient::with_interceptor(channel, AttachToken::new(load.auth.token.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

async fn drive(workload: &Workload, load: &Load, address: &str) -> Result<(Tally, Tally, Duration)> {
    let (inserts_in_flight, batches_in_flight) = match load.pacing {
        Pacing::ClosedLoop => (1, None),
        Pacing::Pipelined {
            inserts_in_flight,
            batches_in_flight,
        } => (inserts_in_flight.max(1), Some(batches_in_flight)),
    };
    if load.prefill > 0 {
        let items = load.prefill.min(workload.max_size);
        let writer = InsertWriter::new(sequence(workload, 0), None);
        insert_stream(client(address, load).await?, writer, inserts_in_flight, |sent| sent < items)
            .await
            .context("prefilling the table")?;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(load.seconds);
    let mut inserters = Vec::new();
    for actor in 0..load.inserters {
        let replay = client(address, load).await?;
        let item = sequence(workload, actor as u64 + 1);
        let overlap = workload.steps - workload.period;
        let writer = InsertWriter::new(item, (overlap > 0).then_some(overlap));
        inserters.push(tokio::spawn(insert_stream(replay, writer, inserts_in_flight, move |_| {
            Instant::now() < deadline
        })));
    }
    let mut samplers = Vec::new();
    for _ in 0..load.samplers {
        let replay = client(address, load).await?;
        let batch_size = load.batch_size;
        samplers.push(match batches_in_flight {
            None => tokio::spawn(sample_one_batch_at_a_time(replay, batch_size, deadline)),
            Some(in_flight) => tokio::spawn(sample_stream(replay, batch_size, in_flight, deadline)),
        });
    }
    let (mut inserts, mut samples) = (Tally::default(), Tally::default());
    for task in inserters {
        inserts.merge(task.await??);
    }
    for task in samplers {
        samples.merge(task.await??);
    }
    Ok((inserts, samples, started.elapsed()))
}

/// The requests of one writer: its first item whole, then, when its items
/// overlap, only the steps after the overlap, as an actor sends them.
struct InsertWriter {
    item: pb::Sequence,
    /// The steps that continue the previous item, and how many it shares.
    continuation: Option<(pb::Sequence, usize)>,
    started: bool,
}

impl InsertWriter {
    fn new(item: pb::Sequence, overlap: Option<usize>) -> Self {
        let continuation = overlap.map(|overlap| (item.slice_steps(overlap..item.rewards.len()), overlap));
        Self {
            item,
            continuation,
            started: false,
        }
    }

    fn next_request(&mut self) -> pb::InsertRequest {
        let (sequence, overlap) = match &self.continuation {
            Some((steps, overlap)) if self.started => (steps.clone(), *overlap as u32),
            _ => (self.item.clone(), 0),
        };
        self.started = true;
        pb::InsertRequest {
            table: TABLE.into(),
            sequence: Some(sequence),
            overlap,
            ..Default::default()
        }
    }
}

/// One insert stream that keeps up to `in_flight` items unacknowledged while
/// `keep_sending(items sent so far)` holds, then waits for the last acks.
/// Each latency runs from an item's send until its ack.
async fn insert_stream(
    mut replay: ReplayClient<AuthChannel>,
    mut writer: InsertWriter,
    in_flight: usize,
    keep_sending: impl Fn(usize) -> bool,
) -> Result<Tally> {
    let (requests, stream) = mpsc::channel(in_flight);
    let mut acks = replay.insert(ReceiverStream::new(stream)).await?.into_inner();
    let mut sent_at = VecDeque::with_capacity(in_flight);
    let mut sent = 0;
    let mut tally = Tally::default();
    loop {
        let sending = keep_sending(sent);
        if sending && sent_at.len() < in_flight {
            requests
                .send(writer.next_request())
                .await
                .map_err(|_| anyhow!("insert stream closed"))?;
            sent_at.push_back(Instant::now());
            sent += 1;
            continue;
        }
        let Some(sent) = sent_at.pop_front() else { break };
        acks.message().await?.ok_or_else(|| anyhow!("insert stream ended"))?;
        tally.latencies.push(sent.elapsed());
        tally.count += 1;
    }
    Ok(tally)
}

/// A `Sample` call per batch until `deadline`, as the learner asks.
async fn sample_one_batch_at_a_time(mut replay: ReplayClient<AuthChannel>, batch_size: u32, deadline: Instant) -> Result<Tally> {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let sent = Instant::now();
        let mut batches = replay.sample(sample_request(batch_size, 1, 1)).await?.into_inner();
        // With the stream's end: dropping the stream on its batch would
        // make h2 reset it, and close the connection after 1024.
        let batch = fleet_proto::connect::sole_message(&mut batches)
            .await?
            .ok_or_else(|| anyhow!("sample stream ended without a batch"))?;
        tally.latencies.push(sent.elapsed());
        tally.count += batch.items.len();
    }
    Ok(tally)
}

/// One open-ended `Sample` stream read until `deadline`, the server keeping
/// `in_flight` batches ready. Batches are not timed: one that arrives
/// quickly was prepared while the client read the ones before it.
async fn sample_stream(mut replay: ReplayClient<AuthChannel>, batch_size: u32, in_flight: u32, deadline: Instant) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut batches = replay.sample(sample_request(batch_size, 0, in_flight)).await?.into_inner();
    let closing = tokio::time::sleep_until(deadline.into());
    tokio::pin!(closing);
    loop {
        // Hanging up drops the batches prepared ahead; one reset per
        // stream is far from h2's limit.
        let batch = tokio::select! {
            () = &mut closing => return Ok(tally),
            batch = batches.message() => batch?.ok_or_else(|| anyhow!("sample stream ended"))?,
        };
        tally.count += batch.items.len();
    }
}

fn sample_request(batch_size: u32, num_batches: u64, in_flight: u32) -> pb::SampleRequest {
    pb::SampleRequest {
        table: TABLE.into(),
        batch_size,
        num_batches,
        timeout_ms: 10_000,
        beta: 0.6,
        in_flight,
    }
}

fn percentile(latencies: &[Duration], q: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_sequences_pass_replay_validation_at_their_size() {
        for workload in &WORKLOADS {
            let item = sequence(workload, 3);
            fleet_replay::validate_sequence(&item).unwrap();
            let frame: usize = workload.frame.iter().product();
            let bytes = prost::Message::encoded_len(&item);
            assert!(
                bytes >= workload.steps * frame && bytes < workload.steps * frame + 2048,
                "{}: {bytes}",
                workload.name
            );
        }
    }

    #[test]
    fn a_writer_sends_its_first_item_whole_and_then_only_the_new_steps() {
        let r2d2 = &WORKLOADS[2];
        let mut writer = InsertWriter::new(sequence(r2d2, 1), Some(r2d2.steps - r2d2.period));
        let steps = |request: &pb::InsertRequest| request.sequence.as_ref().unwrap().rewards.len();
        let first = writer.next_request();
        assert_eq!((first.overlap, steps(&first)), (0, 80));
        for _ in 0..2 {
            let next = writer.next_request();
            assert_eq!((next.overlap, steps(&next)), (40, 40));
        }
        let mut whole = InsertWriter::new(sequence(&WORKLOADS[0], 1), None);
        for _ in 0..2 {
            let next = whole.next_request();
            assert_eq!((next.overlap, steps(&next)), (0, 8));
        }
    }

    #[test]
    fn percentiles_pick_ranks() {
        let ms = |v: u64| Duration::from_millis(v);
        let latencies: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(percentile(&latencies, 0.5), 51.0);
        assert_eq!(percentile(&latencies, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
