//! The gRPC surface of real `fleet replay` and `fleet learner` processes:
//! validation of inserted sequences, FIFO sampling, health, weights chunking.

use fleet_proto::WeightsAssembler;
use fleet_proto::pb::{self, parameters_client::ParametersClient, replay_client::ReplayClient};
use futures::StreamExt;
use prost::Message;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::support::{metric, scrape, series, start};

fn sequence(steps: usize, seed: f32) -> pb::Sequence {
    let obs: Vec<f32> = (0..steps * 4).map(|i| seed + i as f32 * 0.01).collect();
    pb::Sequence {
        observations: Some(pb::Tensor::from_f32(&[steps, 4], &obs)),
        actions: Some(pb::Tensor::from_i64(&[steps], &vec![1; steps])),
        rewards: vec![1.0; steps],
        is_first: (0..steps).map(|t| t == 0).collect(),
        terminated: vec![false; steps],
        truncated: vec![false; steps],
        behaviour_logits: Some(pb::Tensor::from_f32(&[steps, 2], &vec![0.0; steps * 2])),
        behaviour_versions: vec![1; steps],
        initial_state: None,
        actor_id: seed as u64,
        priority: 0.0,
    }
}

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
        .watch_weights(pb::WatchWeightsRequest { after_version: 0 })
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
