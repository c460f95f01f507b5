//! Continuous actions at replay's door over real gRPC: a table of Gaussian
//! policies' sequences takes well-formed ones, refuses an action of another
//! width and a non-finite action or policy parameter with INVALID_ARGUMENT
//! naming it, keeps what came before on the same stream, and goes on taking
//! items on new streams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fleet_proto::pb::{self, replay_client::ReplayClient};
use fleet_replay::{ReplayConfig, Restore, TableConfig, serve};
use futures::StreamExt;
use tokio::net::TcpListener;
use tonic::Code;

const STEPS: usize = 6;
const DIMS: usize = 2;

/// A sequence of `STEPS` steps of 3 f32 observations with `dims`-wide
/// actions and a Gaussian's `2·dims` parameters per step.
fn sequence(dims: usize, seed: f32) -> pb::Sequence {
    let values = |n: usize| -> Vec<f32> { (0..n).map(|i| seed + i as f32 * 0.01).collect() };
    pb::Sequence {
        observations: Some(pb::Tensor::from_f32(&[STEPS, 3], &values(STEPS * 3))),
        actions: Some(pb::Tensor::from_f32(&[STEPS, dims], &values(STEPS * dims))),
        rewards: vec![-1.0; STEPS],
        is_first: (0..STEPS).map(|t| t == 0).collect(),
        terminated: vec![false; STEPS],
        truncated: vec![false; STEPS],
        behaviour_logits: Some(pb::Tensor::from_f32(&[STEPS, 2 * dims], &values(STEPS * 2 * dims))),
        behaviour_versions: vec![1; STEPS],
        ..Default::default()
    }
}

fn request(sequence: pb::Sequence) -> pb::InsertRequest {
    pb::InsertRequest {
        table: "queue".into(),
        sequence: Some(sequence),
        ..Default::default()
    }
}

/// Sets element `index` (row-major) of an f32 tensor.
fn set(tensor: &mut Option<pb::Tensor>, index: usize, value: f32) {
    let tensor = tensor.as_mut().unwrap();
    let mut values = tensor.to_f32().unwrap();
    values[index] = value;
    *tensor = pb::Tensor::from_f32(&tensor.dims(), &values);
}

#[tokio::test]
async fn continuous_actions_of_another_width_or_not_finite_are_refused_and_replay_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ReplayConfig {
        tables: vec![TableConfig {
            name: "queue".into(),
            ..TableConfig::default()
        }],
        ..ReplayConfig::default()
    };
    tokio::spawn(serve(config, Restore::Auto, listener, async move {
        let _ = stopped.await;
    }));
    let mut client = loop {
        match ReplayClient::connect(endpoint.clone()).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut insert = async |requests: Vec<pb::InsertRequest>| -> (Vec<u64>, Option<tonic::Status>) {
        let mut acks = client.insert(tokio_stream::iter(requests)).await.unwrap().into_inner();
        let mut keys = Vec::new();
        while let Some(ack) = acks.next().await {
            match ack {
                Ok(ack) => keys.push(ack.key),
                Err(status) => return (keys, Some(status)),
            }
        }
        (keys, None)
    };

    // The first item gives the table its signature: actions of DIMS values.
    let (keys, refused) = insert(vec![request(sequence(DIMS, 0.0))]).await;
    assert_eq!((keys.len(), refused.map(|s| s.to_string())), (1, None));

    let mut nan_action = sequence(DIMS, 1.0);
    set(&mut nan_action.actions, 3, f32::NAN);
    let mut infinite_log_std = sequence(DIMS, 2.0);
    set(&mut infinite_log_std.behaviour_logits, 2 * DIMS + DIMS, f32::INFINITY);
    let cases = [
        (sequence(DIMS + 1, 3.0), "does not match table \"queue\""),
        (nan_action, "actions[1][1] is NaN"),
        (infinite_log_std, "behaviour_logits[1][2] is inf"),
    ];
    for (bad, expected) in cases {
        // A good item ahead of the bad one on its stream is kept and acked.
        let (keys, refused) = insert(vec![request(sequence(DIMS, 4.0)), request(bad)]).await;
        let status = refused.expect("the bad item is refused");
        assert_eq!((keys.len(), status.code()), (1, Code::InvalidArgument), "{status:?}");
        assert!(status.message().contains(expected), "{:?} lacks {expected:?}", status.message());
    }

    // New streams go on; the table holds every good item and only those.
    let (keys, refused) = insert(vec![request(sequence(DIMS, 5.0)), request(sequence(DIMS, 6.0))]).await;
    assert_eq!((keys.len(), refused.map(|s| s.to_string())), (2, None));
    let info = client.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.tables[0].size, 1 + 3 + 2);
    let mut batches = client
        .sample(pb::SampleRequest {
            table: "queue".into(),
            batch_size: 6,
            num_batches: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let batch = batches.next().await.unwrap().unwrap();
    for item in batch.items {
        let actions = item.sequence.unwrap().actions.unwrap();
        assert_eq!(actions.dims(), vec![STEPS, DIMS]);
        assert!(actions.to_f32().unwrap().iter().all(|v| v.is_finite()));
    }
}
