//! The replay service over real gRPC: items that continue their writer's
//! previous item, items in several tables, and many insert streams and
//! samplers at once.

// Test helpers outside `#[test]` functions (servers, clients, fixtures) may
// unwrap too: clippy.toml's test allowances do not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use fleet_proto::pb::{self, replay_client::ReplayClient};
use fleet_replay::{ReplayConfig, Restore, SamplerKind, TableConfig, serve};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

/// A running service; dropping `stop` shuts it down.
struct Server {
    addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(tables: Vec<TableConfig>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ReplayConfig {
        tables,
        ..ReplayConfig::default()
    };
    tokio::spawn(serve(config, Restore::Auto, listener, async move {
        let _ = stopped.await;
    }));
    Server { addr, _stop: stop }
}

async fn client(server: &Server) -> ReplayClient<Channel> {
    let endpoint = format!("http://{}", server.addr);
    for _ in 0..100 {
        if let Ok(client) = ReplayClient::connect(endpoint.clone()).await {
            return client.max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("replay at {endpoint} did not come up");
}

fn table(name: &str, sampler: SamplerKind, max_size: usize, max_times_sampled: u32) -> TableConfig {
    TableConfig {
        name: name.into(),
        sampler,
        max_size,
        max_times_sampled,
        ..TableConfig::default()
    }
}

/// Steps `range` of one writer's endless stream of `side`×`side` u8 frames,
/// each step's contents fixed by its index, so any window can be rebuilt.
fn steps(writer: u64, range: std::ops::Range<usize>, side: usize) -> pb::Sequence {
    let t = range.len();
    let frame = side * side;
    let observations: Vec<u8> = range
        .clone()
        .flat_map(|i| (0..frame).map(move |j| (i * 31 + j * 7 + writer as usize) as u8))
        .collect();
    pb::Sequence {
        observations: Some(pb::Tensor::from_u8(&[t, 1, side, side], observations)),
        actions: Some(pb::Tensor::from_i64(
            &[t],
            &range.clone().map(|i| (i % 3) as i64).collect::<Vec<_>>(),
        )),
        rewards: range.clone().map(|i| i as f32).collect(),
        is_first: range.clone().map(|i| i % 50 == 0).collect(),
        terminated: vec![false; t],
        truncated: vec![false; t],
        behaviour_logits: Some(pb::Tensor::from_f32(&[t, 3], &vec![0.25; t * 3])),
        behaviour_versions: range.map(|i| i as u64).collect(),
        initial_state: None,
        actor_id: writer,
        priority: 0.0,
        run_id: 0,
    }
}

fn request(table: &str, writer: u64, overlap: usize, sequence: pb::Sequence) -> pb::InsertRequest {
    pb::InsertRequest {
        table: table.into(),
        sequence: Some(sequence),
        writer,
        overlap: overlap as u32,
        also_tables: Vec::new(),
    }
}

/// R2D2's windows: `length` steps every `period` steps, as the requests an
/// actor sends (the first whole, later ones without the shared steps) or,
/// with `share` off, every window whole.
fn windows(table: &str, writer: u64, count: usize, length: usize, period: usize, side: usize, share: bool) -> Vec<pb::InsertRequest> {
    (0..count)
        .map(|k| {
            let start = k * period;
            if k == 0 || !share {
                request(table, writer, 0, steps(writer, start..start + length, side))
            } else {
                let overlap = length - period;
                request(table, writer, overlap, steps(writer, start + overlap..start + length, side))
            }
        })
        .collect()
}

async fn insert_all(
    client: &mut ReplayClient<Channel>,
    requests: Vec<pb::InsertRequest>,
) -> Result<Vec<pb::InsertResponse>, tonic::Status> {
    let count = requests.len();
    let mut acks = client.insert(tokio_stream::iter(requests)).await?.into_inner();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        match acks.message().await? {
            Some(ack) => out.push(ack),
            None => break,
        }
    }
    Ok(out)
}

async fn info(client: &mut ReplayClient<Channel>) -> pb::InfoResponse {
    client.info(pb::InfoRequest {}).await.unwrap().into_inner()
}

async fn sample(client: &mut ReplayClient<Channel>, table: &str, batch_size: u32) -> Vec<pb::SampledItem> {
    let request = pb::SampleRequest {
        table: table.into(),
        batch_size,
        num_batches: 1,
        timeout_ms: 10_000,
        beta: 0.0,
        in_flight: 1,
    };
    let mut stream = client.sample(request).await.unwrap().into_inner();
    fleet_proto::connect::sole_message(&mut stream).await.unwrap().unwrap().items
}

/// Overlapping windows (80 steps every 40, plus the bootstrap step) cost
/// about one copy of each step, where whole windows cost two; and every
/// sampled window is exactly the steps it covers.
#[tokio::test]
async fn overlapping_windows_store_each_step_once() {
    const COUNT: usize = 12;
    const LENGTH: usize = 81;
    const PERIOD: usize = 40;
    const SIDE: usize = 16;
    let server = start(vec![
        table("shared", SamplerKind::Fifo, 100, 1),
        table("whole", SamplerKind::Fifo, 100, 0),
    ])
    .await;
    let mut client = client(&server).await;
    insert_all(&mut client, windows("shared", 1, COUNT, LENGTH, PERIOD, SIDE, true))
        .await
        .unwrap();
    insert_all(&mut client, windows("whole", 1, COUNT, LENGTH, PERIOD, SIDE, false))
        .await
        .unwrap();

    let info = info(&mut client).await;
    let (shared, whole) = (&info.tables[0], &info.tables[1]);
    assert_eq!((shared.size, whole.size), (COUNT as u64, COUNT as u64));
    let distinct_steps = ((COUNT - 1) * PERIOD + LENGTH) as u64;
    assert_eq!(shared.steps, distinct_steps, "each step is stored once");
    assert_eq!(whole.steps, (COUNT * LENGTH) as u64);
    let per_step = |t: &pb::TableInfo| t.bytes as f64 / distinct_steps as f64;
    let frame = (SIDE * SIDE) as f64;
    println!(
        "bytes per distinct step: shared {:.1}, whole windows {:.1} (frame {frame} B)",
        per_step(shared),
        per_step(whole)
    );
    assert!(
        per_step(shared) < 1.1 * (frame + 40.0),
        "shared windows cost {} B per step",
        per_step(shared)
    );
    assert!(per_step(whole) > 1.8 * frame, "whole windows cost {} B per step", per_step(whole));
    assert_eq!(info.chunk_bytes, shared.bytes + whole.bytes, "the tables share no chunks");

    let sampled = sample(&mut client, "shared", COUNT as u32).await;
    for (k, item) in sampled.iter().enumerate() {
        let start = k * PERIOD;
        assert_same(
            item.sequence.as_ref().unwrap(),
            &steps(1, start..start + LENGTH, SIDE),
            &format!("window {k}"),
        );
    }
}

/// An item named for several tables is stored once: its bytes count in each
/// table but once in the service, and each table gives it back whole.
#[tokio::test]
async fn an_item_in_several_tables_is_stored_once() {
    let server = start(vec![
        table("queue", SamplerKind::Fifo, 10, 1),
        table("replay", SamplerKind::Uniform, 10, 0),
    ])
    .await;
    let mut client = client(&server).await;
    let mut requests = windows("queue", 5, 3, 9, 4, 8, true);
    for r in &mut requests {
        r.also_tables = vec!["replay".into()];
    }
    let acks = insert_all(&mut client, requests).await.unwrap();
    assert_eq!(
        acks.iter().map(|a| (a.key, a.also_keys.clone())).collect::<Vec<_>>(),
        vec![(1, vec![1]), (2, vec![2]), (3, vec![3])]
    );
    let info = info(&mut client).await;
    assert_eq!(info.tables[0].bytes, info.tables[1].bytes);
    assert_eq!(info.chunk_bytes, info.tables[0].bytes, "one copy for both tables");
    assert_eq!(info.chunks, 3);

    let from_queue = sample(&mut client, "queue", 3).await;
    let from_replay = sample(&mut client, "replay", 1).await;
    let expected: Vec<pb::Sequence> = (0..3).map(|k| steps(5, 4 * k..4 * k + 9, 8)).collect();
    assert_eq!(from_queue.iter().map(|i| i.sequence.clone().unwrap()).collect::<Vec<_>>(), expected);
    assert_eq!(from_replay[0].sequence.as_ref(), Some(&expected[from_replay[0].key as usize - 1]));
    // Sampled out of the queue, the items still live in the other table.
    assert_eq!(info_after(&mut client).await, (0, 3, 3));
}

/// Equality without printing megabytes of frames when it fails.
fn assert_same(found: &pb::Sequence, expected: &pb::Sequence, what: &str) {
    if found != expected {
        let differs = |a: &Option<pb::Tensor>, b: &Option<pb::Tensor>| a != b;
        panic!(
            "{what} differs: observations {} actions {} logits {} rewards {} flags {} versions {} actor {} state {} priority {}",
            differs(&found.observations, &expected.observations),
            differs(&found.actions, &expected.actions),
            differs(&found.behaviour_logits, &expected.behaviour_logits),
            found.rewards != expected.rewards,
            (&found.is_first, &found.terminated, &found.truncated) != (&expected.is_first, &expected.terminated, &expected.truncated),
            found.behaviour_versions != expected.behaviour_versions,
            found.actor_id != expected.actor_id,
            found.initial_state != expected.initial_state,
            found.priority != expected.priority,
        );
    }
}

async fn info_after(client: &mut ReplayClient<Channel>) -> (u64, u64, u64) {
    let info = info(client).await;
    (info.tables[0].size, info.tables[1].size, info.chunks)
}

/// Inserts that cannot be stored as asked are refused with a message, and
/// nothing of them lands in any table.
#[tokio::test]
async fn bad_inserts_are_refused_and_store_nothing() {
    let server = start(vec![
        table("a", SamplerKind::Uniform, 10, 0),
        table("b", SamplerKind::Uniform, 10, 0),
    ])
    .await;
    let mut client = client(&server).await;

    let base = client.clone();
    let refused = |requests: Vec<pb::InsertRequest>| {
        let mut client = base.clone();
        async move { insert_all(&mut client, requests).await.unwrap_err() }
    };
    let status = refused(vec![request("a", 3, 2, steps(3, 0..4, 4))]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("no item for writer 3"), "{status:?}");

    let mut twice = request("a", 0, 0, steps(0, 0..4, 4));
    twice.also_tables = vec!["b".into(), "a".into()];
    let status = refused(vec![twice]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("\"a\" is named twice"), "{status:?}");

    let mut unknown = request("a", 0, 0, steps(0, 0..4, 4));
    unknown.also_tables = vec!["nope".into()];
    let status = refused(vec![unknown]).await;
    assert_eq!(status.code(), Code::NotFound);

    // Overlap longer than the previous item, on one stream.
    let status = refused(vec![request("a", 1, 0, steps(1, 0..4, 4)), request("a", 1, 9, steps(1, 4..6, 4))]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("overlap is 9 steps"), "{status:?}");

    // "b" holds 8×8 frames; an item for "a" and "b" with 4×4 ones fits "a" but not "b".
    insert_all(&mut client, vec![request("b", 2, 0, steps(2, 0..4, 8))]).await.unwrap();
    let mut mismatched = request("a", 0, 0, steps(0, 0..4, 4));
    mismatched.also_tables = vec!["b".into()];
    let status = refused(vec![mismatched]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("does not match table \"b\""), "{status:?}");

    let info = info(&mut client).await;
    assert_eq!(
        info.tables.iter().map(|t| t.size).collect::<Vec<_>>(),
        vec![1, 1],
        "only the two good items"
    );
    assert_eq!(info.chunks, 2);
}

/// Many actors' insert streams (each with several writers continuing their
/// items) and several samplers on one queue at once: no deadlock, and every
/// acknowledged item is sampled exactly once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_streams_and_samplers_lose_no_acknowledged_item() {
    const STREAMS: u64 = 8;
    const WRITERS: u64 = 3;
    const PER_WRITER: usize = 40;
    const SAMPLERS: usize = 4;
    const LENGTH: usize = 9;
    const PERIOD: usize = 4;
    let server = start(vec![TableConfig {
        max_size: 16,
        ..table("queue", SamplerKind::Fifo, 16, 1)
    }])
    .await;
    let total = (STREAMS * WRITERS) as usize * PER_WRITER;

    let mut inserters = Vec::new();
    for stream in 0..STREAMS {
        let mut client = client(&server).await;
        inserters.push(tokio::spawn(async move {
            // The writers' windows interleaved, as an actor with several environments sends them.
            let per_writer: Vec<Vec<pb::InsertRequest>> = (0..WRITERS)
                .map(|w| windows("queue", stream * WRITERS + w, PER_WRITER, LENGTH, PERIOD, 4, true))
                .collect();
            let requests: Vec<pb::InsertRequest> = (0..PER_WRITER).flat_map(|k| per_writer.iter().map(move |w| w[k].clone())).collect();
            let acks = insert_all(&mut client, requests).await.unwrap();
            assert_eq!(acks.len(), WRITERS as usize * PER_WRITER);
            acks.len()
        }));
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut samplers = Vec::new();
    for _ in 0..SAMPLERS {
        let mut client = client(&server).await;
        let (seen, taken) = (seen.clone(), taken.clone());
        samplers.push(tokio::spawn(async move {
            while taken.fetch_add(2, std::sync::atomic::Ordering::SeqCst) + 2 <= total {
                for item in sample(&mut client, "queue", 2).await {
                    let sequence = item.sequence.unwrap();
                    // Which window this is follows from its first step's index.
                    let first = sequence.behaviour_versions[0] as usize;
                    assert_same(
                        &sequence,
                        &steps(sequence.actor_id, first..first + LENGTH, 4),
                        &format!("item {}", item.key),
                    );
                    assert!(seen.lock().unwrap().insert(item.key), "key {} sampled twice", item.key);
                }
            }
        }));
    }
    let everything = async {
        for inserter in inserters {
            inserter.await.unwrap();
        }
        for sampler in samplers {
            sampler.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), everything)
        .await
        .expect("inserts and samples deadlocked");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), total);
    assert_eq!(seen.iter().copied().max(), Some(total as u64));
    let mut client = client(&server).await;
    let info = info(&mut client).await;
    assert_eq!(
        (info.tables[0].size, info.tables[0].inserts, info.tables[0].samples),
        (0, total as u64, total as u64)
    );
}

/// A sample stream may prepare several batches ahead, up to a bound.
#[tokio::test]
async fn sample_streams_keep_the_asked_batches_in_flight() {
    let server = start(vec![table("replay", SamplerKind::Uniform, 10, 0)]).await;
    let mut client = client(&server).await;
    insert_all(&mut client, windows("replay", 0, 2, 5, 4, 4, true)).await.unwrap();
    let request = |in_flight| pb::SampleRequest {
        table: "replay".into(),
        batch_size: 2,
        num_batches: 6,
        timeout_ms: 1000,
        beta: 0.0,
        in_flight,
    };
    let mut stream = client.sample(request(4)).await.unwrap().into_inner();
    let mut batches = 0;
    while let Some(batch) = stream.message().await.unwrap() {
        assert_eq!(batch.items.len(), 2);
        batches += 1;
    }
    assert_eq!(batches, 6);
    let status = client.sample(request(17)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("in_flight is 17"), "{status:?}");
}

/// Samplers that ask for one batch at a time as fast as they can, all on
/// one connection made as fleet's clients make theirs, for several seconds
/// (many thousand `Sample` calls): every call is answered and the
/// connection lives. A client that dropped each stream on its batch, before
/// the stream's end, made h2 reset streams the server had finished; past
/// 1024 such resets h2 closed the connection (GOAWAY ENHANCE_YOUR_CALM,
/// `too_many_internal_resets`) and every call on it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fast_one_batch_samplers_keep_their_connection() {
    const SAMPLERS: usize = 8;
    const BATCH: u32 = 16;
    const RUN: Duration = Duration::from_secs(8);
    let server = start(vec![table("replay", SamplerKind::Uniform, 64, 0)]).await;
    let mut client = client(&server).await;
    insert_all(&mut client, windows("replay", 0, 64, 8, 8, 4, false)).await.unwrap();

    let channel = fleet_proto::connect::endpoint(&server.addr.to_string(), &fleet_proto::tls::Tls::default())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + RUN;
    let mut samplers = Vec::new();
    for _ in 0..SAMPLERS {
        // Clones of one channel share its connection.
        let mut client = ReplayClient::new(channel.clone());
        samplers.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while tokio::time::Instant::now() < deadline {
                let request = pb::SampleRequest {
                    table: "replay".into(),
                    batch_size: BATCH,
                    num_batches: 1,
                    timeout_ms: 10_000,
                    beta: 0.6,
                    in_flight: 1,
                };
                let batch = match client.sample(request).await {
                    Ok(response) => fleet_proto::connect::sole_message(&mut response.into_inner()).await,
                    Err(status) => Err(status),
                };
                match batch {
                    Ok(Some(batch)) => assert_eq!(batch.items.len(), BATCH as usize),
                    Ok(None) => panic!("call {calls}: the stream ended without a batch"),
                    Err(status) => panic!("call {calls} failed: {status:?}"),
                }
                calls += 1;
            }
            calls
        }));
    }
    let mut calls = 0;
    for sampler in samplers {
        calls += sampler.await.unwrap();
    }
    // Enough streams on the one connection to have tripped h2's limit.
    assert!(calls > 2 * 1024, "only {calls} calls in {RUN:?}");
}
