//! `fleet bench replay`: a load generator for the replay service. It starts
//! `fleet replay` as its own process with one prioritised table, then runs K
//! inserting and M sampling clients against it over loopback gRPC for a fixed
//! time per workload, and prints a table: inserts/s, sampled items/s, MB/s,
//! p50/p99 latency of an insert (sent until acknowledged) and of a sampled
//! batch (requested until received), and the server's peak resident memory.
//!
//! Clients are closed-loop (one request in flight each), as a Python client
//! of Reverb is, so `bench/reverb_replay.py` measures the same thing. In the
//! R2D2 workload each inserter is one writer whose windows of 80 steps start
//! every 40 steps; it sends the first whole and then only the 40 new steps of
//! each, as actors do (Reverb's trajectory writer does the same).

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

/// The load: clients, batch size and duration per workload.
#[derive(Debug, Clone)]
pub struct Load {
    pub inserters: usize,
    pub samplers: usize,
    pub batch_size: u32,
    pub seconds: f64,
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
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {:.0} |",
            r.workload,
            r.item_bytes,
            r.inserts_per_sec,
            r.samples_per_sec,
            r.insert_mb_per_sec,
            r.sample_mb_per_sec,
            r.insert_p50_ms,
            r.insert_p99_ms,
            r.sample_p50_ms,
            r.sample_p99_ms,
            r.server_peak_rss_mib,
            r.stored_bytes_per_step
        );
    }
    println!(
        "\n{} inserting and {} sampling clients, batches of {}, {} s per workload; prioritised table (α 0.8, fifo remover); durability {:?}.",
        load.inserters, load.samplers, load.batch_size, load.seconds, load.durability
    );
    Ok(())
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
    let peak_rss = peak_rss_mib(pid);
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
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(load.seconds);
    let mut inserters = Vec::new();
    for actor in 0..load.inserters {
        let mut replay = client(address, load).await?;
        let item = sequence(workload, actor as u64 + 1);
        // The steps after the overlap, which continue the writer's previous item.
        let overlap = workload.steps - workload.period;
        let continuation = (overlap > 0).then(|| item.slice_steps(overlap..workload.steps));
        inserters.push(tokio::spawn(async move {
            let (requests, stream) = mpsc::channel(1);
            let mut acks = replay.insert(ReceiverStream::new(stream)).await?.into_inner();
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let request = match &continuation {
                    Some(steps) if tally.count > 0 => pb::InsertRequest {
                        table: TABLE.into(),
                        sequence: Some(steps.clone()),
                        overlap: overlap as u32,
                        ..Default::default()
                    },
                    _ => pb::InsertRequest {
                        table: TABLE.into(),
                        sequence: Some(item.clone()),
                        ..Default::default()
                    },
                };
                requests.send(request).await.map_err(|_| anyhow!("insert stream closed"))?;
                acks.message().await?.ok_or_else(|| anyhow!("insert stream ended"))?;
                tally.latencies.push(sent.elapsed());
                tally.count += 1;
            }
            Ok::<_, anyhow::Error>(tally)
        }));
    }
    let mut samplers = Vec::new();
    for _ in 0..load.samplers {
        let mut replay = client(address, load).await?;
        let batch_size = load.batch_size;
        samplers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let request = pb::SampleRequest {
                    table: TABLE.into(),
                    batch_size,
                    num_batches: 1,
                    timeout_ms: 10_000,
                    beta: 0.6,
                    in_flight: 1,
                };
                let mut batches = replay.sample(request).await?.into_inner();
                // With the stream's end: dropping the stream on its batch
                // would make h2 reset it, and close the connection after 1024.
                let batch = fleet_proto::connect::sole_message(&mut batches)
                    .await?
                    .ok_or_else(|| anyhow!("sample stream ended without a batch"))?;
                tally.latencies.push(sent.elapsed());
                tally.count += batch.items.len();
            }
            Ok::<_, anyhow::Error>(tally)
        }));
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

fn percentile(latencies: &[Duration], q: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

/// `VmHWM` (peak resident set) of a process, from `/proc`.
fn peak_rss_mib(pid: u32) -> Result<f64> {
    let path = Path::new("/proc").join(pid.to_string()).join("status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in {}", path.display()))?;
    Ok(kib / 1024.0)
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
    fn percentiles_pick_ranks() {
        let ms = |v: u64| Duration::from_millis(v);
        let latencies: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(percentile(&latencies, 0.5), 51.0);
        assert_eq!(percentile(&latencies, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
