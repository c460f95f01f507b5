//! The gRPC surface of real `fleet replay` and `fleet learner` processes:
//! validation of inserted sequences, FIFO sampling, health, weights chunking.

use fleet_proto::WeightsAssembler;
use fleet_proto::pb::{self, parameters_client::ParametersClient, replay_client::ReplayClient};
use futures::StreamExt;
use prost::Message;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::support::{metric, scrape, sequence, series, start};

/// Inserts `sequences` on one stream; returns the keys or the first error.
async fn insert(client: &mut ReplayClient<tonic::transport::Channel>, sequences: Vec<pb::Sequence>) -> Result<Vec<u64>, tonic::Status> {
    let n = sequences.len();
    let requests = sequences.into_iter().map(|s| pb::InsertRequest {
        table: "queue".into(),
        sequence: Some(s),
        ..Default::default()
    });
    let mut acks = client.insert(tokio_stream::iter(requests)).await?.into_inner();
    let mut keys = Vec::new();
    while keys.len() < n {
        match acks.next().await {
            Some(Ok(ack)) => keys.push(ack.key),
            Some(Err(status)) => return Err(status),
            None => break,
        }
    }
    Ok(keys)
}

#[tokio::test]
async fn malformed_sequences_are_refused_and_the_queue_is_untouched() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let mut client = ReplayClient::connect(replay.grpc_uri()).await.unwrap();
    let good = vec![sequence(21, 1.0), sequence(21, 2.0)];
    assert_eq!(insert(&mut client, good.clone()).await.unwrap().len(), 2);

    let mut mismatched = sequence(21, 3.0);
    mismatched.rewards.pop();
    let mut short_bytes = sequence(21, 4.0);
    short_bytes.observations.as_mut().unwrap().data.truncate(10);
    let mut nan_reward = sequence(21, 5.0);
    nan_reward.rewards[7] = f32::NAN;
    for (bad, expected) in [(mismatched, "rewards"), (short_bytes, "bytes"), (nan_reward, "NaN")] {
        let status = insert(&mut client, vec![bad]).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(expected),
            "message `{}` should mention `{expected}`",
            status.message()
        );
    }
    let unknown = client
        .insert(tokio_stream::iter([pb::InsertRequest {
            table: "nope".into(),
            sequence: Some(sequence(21, 6.0)),
            ..Default::default()
        }]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.tables[0].size, 2);
    let metrics = scrape(&replay.metrics).await.unwrap();
    assert_eq!(
        metric(&metrics, &series(fleet_replay::metrics::ITEMS, &[("table", "queue")])),
        Some(2.0),
        "{metrics}"
    );

    let request = pb::SampleRequest {
        table: "queue".into(),
        batch_size: 2,
        num_batches: 1,
        timeout_ms: 2000,
        beta: 0.0,
        in_flight: 1,
    };
    let batch = client.sample(request).await.unwrap().into_inner().next().await.unwrap().unwrap();
    let sampled: Vec<pb::Sequence> = batch.items.into_iter().map(|i| i.sequence.unwrap()).collect();
    assert_eq!(sampled, good, "the good items come back intact and in order");
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.tables[0].size, 0, "a queue hands each sequence out once");
}

#[tokio::test]
async fn every_server_reports_health_and_the_learner_chunks_large_weights() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    // About 8.4 MB of weights: several chunks.
    let learner = start(&[
        "learner",
        "--listen",
        "127.0.0.1:0",
        "--replay",
        &replay.grpc,
        "--set",
        "network.hidden=[1024,1024]",
    ])
    .await;
    for (role, service) in [(&replay, "fleet.v1.Replay"), (&learner, "fleet.v1.Parameters")] {
        let channel = tonic::transport::Endpoint::from_shared(role.grpc_uri())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        let status = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }

    // The same check from the command line, as a container health check runs it.
    let healthy = tokio::process::Command::new(crate::support::FLEET)
        .args(["health", "--address", &replay.grpc])
        .output()
        .await
        .unwrap();
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("SERVING"));
    let closed = tokio::process::Command::new(crate::support::FLEET)
        .args(["health", "--address", "127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert!(!closed.status.success());

    let mut parameters = ParametersClient::connect(learner.grpc_uri()).await.unwrap();
    let mut stream = parameters
        .watch_weights(pb::WatchWeightsRequest {
            after_version: 0,
            single_version: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut assembler = WeightsAssembler::new(1 << 30);
    let mut chunks = 0;
    let (version, bytes) = loop {
        let chunk = stream.next().await.unwrap().unwrap();
        assert!(chunk.encoded_len() < 1024 * 1024, "chunk of {} bytes", chunk.encoded_len());
        chunks += 1;
        if let Some(done) = assembler.push(chunk).unwrap() {
            break done;
        }
    };
    assert_eq!(version, 1, "the initial network is version 1");
    assert!(chunks >= 8, "{} bytes came in {chunks} chunks", bytes.len());
    assert_eq!(fleet_agent::Weights::version_in(&bytes).unwrap(), Some(1));

    let mut get = parameters.get_weights(pb::GetWeightsRequest {}).await.unwrap().into_inner();
    let mut assembler = WeightsAssembler::new(1 << 30);
    let mut same = None;
    while let Some(chunk) = get.next().await {
        same = assembler.push(chunk.unwrap()).unwrap().or(same);
    }
    assert_eq!(same, Some((1, bytes)));
}

/// Sends `requests` (encoded `InsertRequest`s, or any bytes) on one insert
/// stream, byte for byte as given, and reads the answer to its end: the keys
/// acknowledged, then how the stream ended.
async fn insert_raw(uri: &str, requests: Vec<Vec<u8>>) -> (Vec<u64>, Result<(), tonic::Status>) {
    let channel = tonic::transport::Endpoint::from_shared(uri.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/fleet.v1.Replay/Insert");
    let response = grpc
        .streaming(tonic::Request::new(tokio_stream::iter(requests)), path, crate::support::Raw)
        .await;
    let mut acks = match response {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut keys = Vec::new();
    loop {
        match acks.next().await {
            Some(Ok(bytes)) => keys.push(pb::InsertResponse::decode(&bytes[..]).unwrap().key),
            Some(Err(status)) => return (keys, Err(status)),
            None => return (keys, Ok(())),
        }
    }
}

fn insert_bytes(sequence: pb::Sequence) -> Vec<u8> {
    pb::InsertRequest {
        table: "queue".into(),
        sequence: Some(sequence),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A request the server cannot read (over `replay.max_message_bytes`, or not
/// a message at all) ends the insert stream with the status that says so,
/// after the acks of the items stored before it: never a clean end that
/// would leave the client believing the rest was stored.
#[tokio::test]
async fn an_unreadable_insert_request_ends_the_stream_with_its_status() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let uri = replay.grpc_uri();
    // About 10.5 MB, over the default 4 MiB.
    let oversize = insert_bytes(sequence(262_500, 9.0));
    assert!(oversize.len() > 10_000_000, "{} bytes", oversize.len());

    let (keys, end) = insert_raw(&uri, vec![oversize.clone()]).await;
    assert_eq!(keys, Vec::<u64>::new());
    let status = end.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    let good = |seed| insert_bytes(sequence(21, seed));
    let (keys, end) = insert_raw(&uri, vec![good(1.0), good(2.0), oversize, good(3.0)]).await;
    assert_eq!(keys, vec![1, 2], "the items before the oversize one are stored and acknowledged");
    let status = end.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    let (keys, end) = insert_raw(&uri, vec![good(4.0), vec![0xff; 64], good(5.0)]).await;
    assert_eq!(keys, vec![3]);
    let status = end.unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);
    assert!(status.message().contains("decode"), "{status:?}");

    let mut client = ReplayClient::connect(uri).await.unwrap();
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (info.tables[0].size, info.tables[0].inserts),
        (3, 3),
        "nothing after a bad request is stored"
    );
}

/// A batch larger than the server may send is refused before any item
/// leaves the queue: asked for 20 items of about 240 KB each (more than the
/// default 4 MiB in one message), replay answers RESOURCE_EXHAUSTED naming
/// the sizes and keeps all 21 items; smaller batches then get them in order.
#[tokio::test]
async fn an_oversize_sample_batch_leaves_the_queue_untouched() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let mut client = ReplayClient::connect(replay.grpc_uri())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let items: Vec<pb::Sequence> = (0..21).map(|i| sequence(6000, i as f32)).collect();
    assert!(items[0].encoded_len() > 200_000);
    for chunk in items.chunks(7) {
        insert(&mut client, chunk.to_vec()).await.unwrap();
    }
    let request = |batch_size| pb::SampleRequest {
        table: "queue".into(),
        batch_size,
        num_batches: 1,
        timeout_ms: 2000,
        beta: 0.0,
        in_flight: 1,
    };
    let status = client
        .sample(request(20))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_message_bytes"), "{status:?}");
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (info.tables[0].size, info.tables[0].samples),
        (21, 0),
        "nothing taken, nothing counted"
    );

    let mut sampled = Vec::new();
    while sampled.len() < 21 {
        let batch = client.sample(request(7)).await.unwrap().into_inner().next().await.unwrap().unwrap();
        sampled.extend(batch.items.into_iter().map(|i| i.sequence.unwrap()));
    }
    assert_eq!(sampled, items, "every item is delivered, oldest first");
}

/// A learner whose batches can never fit in one of replay's messages stops
/// with the reason and the settings to change, instead of asking forever.
#[tokio::test]
async fn a_learner_whose_batch_cannot_fit_in_a_message_stops_saying_why() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let mut client = ReplayClient::connect(replay.grpc_uri())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let items: Vec<pb::Sequence> = (0..21).map(|i| sequence(6000, i as f32)).collect();
    for chunk in items.chunks(7) {
        insert(&mut client, chunk.to_vec()).await.unwrap();
    }
    let learner = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(crate::support::FLEET)
            .args(["--set", "learner.batch_size=20", "learner", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0", "--replay", &replay.grpc])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the learner stopped within 60 s")
    .unwrap();
    let stderr = String::from_utf8_lossy(&learner.stderr);
    assert_eq!(learner.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot send 20 sequences in one message") && stderr.contains("learner.batch_size"),
        "{stderr}"
    );
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.tables[0].size, 21, "the refused batches took nothing");
}

/// The replay role's `/metrics` is valid Prometheus exposition: every
/// `fleet_replay_*` metric has help text, `_total` names are counters and
/// only counters, and `promtool check metrics` accepts the whole scrape
/// (when promtool is installed; `FLEET_REQUIRE_PROMETHEUS=1` demands it).
#[tokio::test]
async fn replay_metrics_pass_promtool() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let mut client = ReplayClient::connect(replay.grpc_uri()).await.unwrap();
    insert(&mut client, vec![sequence(21, 1.0), sequence(21, 2.0)]).await.unwrap();
    let request = pb::SampleRequest {
        table: "queue".into(),
        batch_size: 1,
        num_batches: 1,
        timeout_ms: 2000,
        beta: 0.0,
        in_flight: 1,
    };
    client.sample(request).await.unwrap().into_inner().next().await.unwrap().unwrap();
    let body = scrape(&replay.metrics).await.unwrap();

    for name in [
        fleet_replay::metrics::ITEMS,
        fleet_replay::metrics::INSERTS_TOTAL,
        fleet_replay::metrics::INSERT_BLOCKED_SECONDS_TOTAL,
        fleet_replay::metrics::SAMPLE_WAIT_SECONDS_TOTAL,
    ] {
        assert!(body.contains(&format!("# TYPE {name} ")), "{name} missing from\n{body}");
    }
    crate::support::check_metrics_text("replay", &body).await;
}

/// An actor whose sequences are all larger than replay's
/// `max_message_bytes` drops each one, counted as rejected, instead of
/// resending the same sequence forever; replay stores none of them.
#[tokio::test]
async fn an_actor_drops_sequences_replay_cannot_read() {
    use fleet_actor::metrics as actor_metrics;
    let replay = start(&["replay", "--listen", "127.0.0.1:0", "--set", "replay.max_message_bytes=1024"]).await;
    let learner = start(&["learner", "--listen", "127.0.0.1:0", "--replay", &replay.grpc]).await;
    // About 40 bytes a step: 101 steps is about 4 KB a sequence.
    let actor = start(&[
        "actor",
        "--replay",
        &replay.grpc,
        "--learner",
        &learner.grpc,
        "--set",
        "actor.unroll_length=100",
        "--set",
        "actor.num_envs=2",
    ])
    .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let (sent, rejected) = loop {
        let text = scrape(&actor.metrics).await.unwrap();
        let sent = metric(&text, actor_metrics::SEQUENCES_SENT).unwrap_or(0.0);
        let rejected = metric(&text, actor_metrics::SEQUENCES_REJECTED).unwrap_or(0.0);
        if rejected >= 6.0 {
            break (sent, rejected);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the actor rejected {rejected} of {sent} sequences sent:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // Resending the same refused sequence would leave `rejected` at 0; the
    // ones behind it in the window are resent, which `sent` counts again.
    assert!(sent >= rejected, "sent {sent}, rejected {rejected}");
    let mut client = ReplayClient::connect(replay.grpc_uri()).await.unwrap();
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.tables[0].inserts, 0);
}

/// `fleet replay` keeping its checkpoints in `dir`, written only on request
/// (and at a graceful stop), with `durability` (`replay.durability`).
async fn replay_with_checkpoints_and(dir: &std::path::Path, durability: &str) -> crate::support::Process {
    let dir = format!("replay.checkpoint_dir={}", dir.display());
    let durability = format!("replay.durability={durability}");
    start(&[
        "replay",
        "--listen",
        "127.0.0.1:0",
        "--set",
        &dir,
        "--set",
        "replay.checkpoint_interval_secs=0",
        "--set",
        &durability,
    ])
    .await
}

/// [`replay_with_checkpoints_and`] the default durability (checkpoints only).
async fn replay_with_checkpoints(dir: &std::path::Path) -> crate::support::Process {
    replay_with_checkpoints_and(dir, "checkpoint").await
}

/// SIGKILLs `process` and waits until it is gone.
async fn kill_hard(process: &mut crate::support::Process) {
    use std::os::unix::process::ExitStatusExt;

    let pid = nix::unistd::Pid::from_raw(process.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = process.child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(nix::sys::signal::Signal::SIGKILL as i32), "{status:?}");
}

/// Keys are never issued twice, even by a replay killed after acknowledging
/// items its newest checkpoint does not hold: the restarted process hands
/// out keys above every earlier one, so a stale priority update for a lost
/// item finds nothing instead of re-prioritising a new one.
#[tokio::test]
async fn keys_are_not_reissued_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut replay = replay_with_checkpoints(dir.path()).await;
    let mut client = ReplayClient::connect(replay.grpc_uri()).await.unwrap();
    let mut before = insert(&mut client, (1..=10).map(|i| sequence(21, i as f32)).collect())
        .await
        .unwrap();
    client.checkpoint(pb::CheckpointRequest {}).await.unwrap();
    before.extend(
        insert(&mut client, (11..=15).map(|i| sequence(21, i as f32)).collect())
            .await
            .unwrap(),
    );
    assert_eq!(before.len(), 15);

    kill_hard(&mut replay).await;

    let replay = replay_with_checkpoints(dir.path()).await;
    let mut client = ReplayClient::connect(replay.grpc_uri()).await.unwrap();
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.tables[0].size, 10, "the checkpoint's ten items are back");
    let after = insert(&mut client, (16..=20).map(|i| sequence(21, i as f32)).collect())
        .await
        .unwrap();
    let highest = before.iter().max().unwrap();
    assert!(
        after.iter().all(|key| key > highest),
        "keys {after:?} after the crash, {before:?} before"
    );

    // The twelfth item was acknowledged, then lost with the process.
    let stale = pb::UpdatePrioritiesRequest {
        table: "queue".into(),
        updates: vec![pb::PriorityUpdate {
            key: before[11],
            priority: 50.0,
        }],
    };
    assert_eq!(client.update_priorities(stale).await.unwrap().into_inner().missing, 1);
    let request = pb::SampleRequest {
        table: "queue".into(),
        batch_size: 15,
        num_batches: 1,
        timeout_ms: 2000,
        beta: 0.0,
        in_flight: 1,
    };
    let batch = client.sample(request).await.unwrap().into_inner().next().await.unwrap().unwrap();
    let keys: Vec<u64> = batch.items.iter().map(|i| i.key).collect();
    let expected: Vec<u64> = before[..10].iter().chain(&after).copied().collect();
    assert_eq!(keys, expected, "restored items first, then the new ones");
    assert!(batch.items.iter().all(|i| i.priority != 50.0));
}

/// With `replay.durability = "wal"`, nothing acknowledged is lost to a
/// SIGKILL: items acknowledged after the newest checkpoint come back, and
/// items a sample took out of the queue before the crash stay out.
#[tokio::test]
async fn every_acknowledged_insert_survives_a_crash_with_the_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut replay = replay_with_checkpoints_and(dir.path(), "wal").await;
    let mut client = ReplayClient::connect(replay.grpc_uri()).await.unwrap();
    let mut acked = insert(&mut client, (1..=10).map(|i| sequence(21, i as f32)).collect())
        .await
        .unwrap();
    client.checkpoint(pb::CheckpointRequest {}).await.unwrap();
    // Twenty more on one stream, all in flight at once (they share syncs;
    // the queue holds 32).
    acked.extend(
        insert(&mut client, (11..=30).map(|i| sequence(21, i as f32)).collect())
            .await
            .unwrap(),
    );
    assert_eq!(acked.len(), 30);
    let request = |batch_size| pb::SampleRequest {
        table: "queue".into(),
        batch_size,
        num_batches: 1,
        timeout_ms: 2000,
        beta: 0.0,
        in_flight: 1,
    };
    let taken = client.sample(request(4)).await.unwrap().into_inner().next().await.unwrap().unwrap();
    assert_eq!(taken.items.iter().map(|i| i.key).collect::<Vec<_>>(), acked[..4]);
    // A sample does not wait for a sync of its own, but the log is in order:
    // once a later insert is acknowledged, the sample is on disk too.
    acked.extend(insert(&mut client, vec![sequence(21, 31.0)]).await.unwrap());

    kill_hard(&mut replay).await;

    let replay = replay_with_checkpoints_and(dir.path(), "wal").await;
    let mut client = ReplayClient::connect(replay.grpc_uri()).await.unwrap();
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.tables[0].size, 27, "every acknowledged item but the four sampled out");
    assert_eq!(info.tables[0].inserts, 31);
    assert_eq!(info.tables[0].samples, 4);
    let rest = client
        .sample(request(27))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.items.iter().map(|i| i.key).collect::<Vec<_>>(), acked[4..]);
    for (item, seed) in rest.items.iter().zip(5..) {
        assert_eq!(item.sequence.as_ref().unwrap(), &sequence(21, seed as f32), "item {}", item.key);
    }
}

/// A replay whose checkpoint cannot be restored stops with the reason and
/// never prints its ready line: a launcher waiting for it must not take a
/// failing start for a ready one.
#[tokio::test]
async fn a_failed_restore_is_never_announced_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut replay = replay_with_checkpoints(dir.path()).await;
    let mut client = ReplayClient::connect(replay.grpc_uri()).await.unwrap();
    insert(&mut client, vec![sequence(21, 1.0)]).await.unwrap();
    let path = client.checkpoint(pb::CheckpointRequest {}).await.unwrap().into_inner().path;
    replay.child.kill().await.unwrap();
    let file = std::path::Path::new(&path).join("table-0.pb");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();

    let output = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(crate::support::FLEET)
            .args(["replay", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--set", &format!("replay.checkpoint_dir={}", dir.path().display())])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("replay stopped within 60 s")
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{} is corrupt", file.display())), "{stderr}");
    assert!(!stdout.contains(fleet::process::READY_PREFIX), "announced ready: {stdout}");
}

/// A checkpoint left half written by a crash is deleted when replay starts,
/// before it reports ready, whether or not it ever writes another.
#[tokio::test]
async fn a_half_written_checkpoint_is_deleted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let leftover = dir.path().join(".tmp-replay-00000000000000000003-4242");
    std::fs::create_dir(&leftover).unwrap();
    std::fs::write(leftover.join("chunks.pb"), vec![0u8; 4096]).unwrap();
    let replay = replay_with_checkpoints(dir.path()).await;
    assert!(!leftover.exists(), "{} is still there", leftover.display());
    let mut client = ReplayClient::connect(replay.grpc_uri()).await.unwrap();
    assert_eq!(insert(&mut client, vec![sequence(21, 1.0)]).await.unwrap().len(), 1);
}

/// The start-up log shows the tables as they run: a table given only a
/// preset shows the preset's sampler, not the default one.
#[tokio::test]
async fn the_start_up_log_shows_the_tables_with_their_presets_applied() {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        "[[replay.tables]]\nname = \"queue\"\npreset = \"prioritized\"\nmax_size = 64\n",
    )
    .unwrap();
    let mut command = tokio::process::Command::new(crate::support::FLEET);
    command
        .arg("--config")
        .arg(&config)
        .args(["replay", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped());
    let mut replay = crate::support::Process::spawn("replay", command).await.unwrap();
    let mut lines = tokio::io::BufReader::new(replay.child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("replay service starting") {
                return line;
            }
        }
        panic!("replay's log ended without its start-up line");
    })
    .await
    .expect("the start-up line within 30 s");
    assert!(line.contains("sampler: Prioritized"), "{line}");
    assert!(!line.contains("sampler: Fifo"), "{line}");
}

/// A learner that serves one chunk declaring a 3 GiB blob, then nothing.
struct OversizeLearner;

#[tonic::async_trait]
impl pb::parameters_server::Parameters for OversizeLearner {
    type GetWeightsStream = futures::stream::BoxStream<'static, Result<pb::WeightsChunk, tonic::Status>>;
    type WatchWeightsStream = futures::stream::BoxStream<'static, Result<pb::WeightsChunk, tonic::Status>>;

    async fn get_weights(
        &self,
        _: tonic::Request<pb::GetWeightsRequest>,
    ) -> Result<tonic::Response<Self::GetWeightsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("only WatchWeights"))
    }

    async fn watch_weights(
        &self,
        _: tonic::Request<pb::WatchWeightsRequest>,
    ) -> Result<tonic::Response<Self::WatchWeightsStream>, tonic::Status> {
        let chunk = pb::WeightsChunk {
            version: 1,
            total_bytes: 3 << 30,
            offset: 0,
            data: vec![0; 1024].into(),
            last: false,
        };
        Ok(tonic::Response::new(Box::pin(
            futures::stream::iter([Ok(chunk)]).chain(futures::stream::pending()),
        )))
    }
}

/// The weights size a learner declares is bounded by what the actor's own
/// network holds: a 3 GiB claim is refused at its first chunk, saying so,
/// instead of being reserved and waited for.
#[tokio::test]
async fn an_actor_refuses_weights_larger_than_its_network() {
    use tokio::io::AsyncBufReadExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let learner = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::parameters_server::ParametersServer::new(OversizeLearner))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let mut command = tokio::process::Command::new(crate::support::FLEET);
    command
        .args([
            "actor",
            "--replay",
            &replay.grpc,
            "--learner",
            &learner,
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--set", "actor.num_envs=1"])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped());
    let mut actor = crate::support::Process::spawn("actor", command).await.unwrap();
    let mut lines = tokio::io::BufReader::new(actor.child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("weights stream failed") {
                return line;
            }
        }
        panic!("the actor's log ended without refusing the weights");
    })
    .await
    .expect("the actor refuses the weights within 30 s");
    assert!(line.contains(&format!("declares {} bytes", 3u64 << 30)), "{line}");
    assert!(line.contains("refused without allocating"), "{line}");
}
