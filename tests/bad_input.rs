//! Bad input never crashes a role, never changes what it holds, and always
//! gets a clear answer: one table per gRPC service (every method of Replay
//! and Parameters, each row a malformed request, the status code it must
//! get and words its message must hold, then a check that nothing else
//! changed), and one table of bad starts of the `fleet` binary (a busy
//! port, a checkpoint folder it cannot write, a config it cannot use), each
//! of which must exit non-zero before announcing anything, naming the cause.
//!
//! The env bridge's answers as the actor decodes them are tested beside that
//! code (`actor/src/env/bridge.rs`), without Python.

use std::time::Duration;

use fleet_proto::pb::{self, parameters_client::ParametersClient, replay_client::ReplayClient};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{FLEET, sequence, start};

/// What a row must get back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused with this code, the message holding these words.
    Refused(Code, &'static str),
    /// Answered, the answer (as [`Call::run`] describes it) holding these words.
    Answered(&'static str),
}

/// One request to one method, typed or as raw bytes on the wire.
enum Call {
    Insert(Vec<pb::InsertRequest>),
    Sample(pb::SampleRequest),
    UpdatePriorities(pb::UpdatePrioritiesRequest),
    Checkpoint,
    WatchWeights(pb::WatchWeightsRequest),
    /// These bytes as the one request message of `path`.
    Raw(&'static str, Vec<u8>),
}

impl Call {
    /// Makes the call and reads its answer to the end (a sample or watch
    /// stream: its first message); describes an answer in words, or returns
    /// the status that refused it.
    async fn run(self, channel: Channel) -> Result<String, tonic::Status> {
        let mut replay = ReplayClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        match self {
            Call::Insert(requests) => {
                let mut acks = replay.insert(tokio_stream::iter(requests)).await?.into_inner();
                let mut keys = Vec::new();
                while let Some(ack) = acks.next().await {
                    keys.push(ack?.key);
                }
                Ok(format!("keys: {keys:?}"))
            }
            Call::Sample(request) => {
                let mut batches = replay.sample(request).await?.into_inner();
                match batches.next().await {
                    Some(batch) => Ok(format!("items: {}", batch?.items.len())),
                    None => Ok("no batch".into()),
                }
            }
            Call::UpdatePriorities(request) => {
                let missing = replay.update_priorities(request).await?.into_inner().missing;
                Ok(format!("missing: {missing}"))
            }
            Call::Checkpoint => Ok(replay.checkpoint(pb::CheckpointRequest {}).await?.into_inner().path),
            Call::WatchWeights(request) => {
                let mut chunks = ParametersClient::new(channel).watch_weights(request).await?.into_inner();
                match tokio::time::timeout(Duration::from_millis(500), chunks.next()).await {
                    Ok(Some(chunk)) => Ok(format!("version {}", chunk?.version)),
                    Ok(None) => Ok("ended".into()),
                    Err(_) => Ok("waiting".into()),
                }
            }
            Call::Raw(path, bytes) => raw_call(channel, path, bytes).await,
        }
    }
}

/// Sends `bytes` as they are as the one request message of method `path`
/// (any kind of method) and reads the response stream to its end.
async fn raw_call(channel: Channel, path: &'static str, bytes: Vec<u8>) -> Result<String, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let mut responses = grpc
        .streaming(tonic::Request::new(tokio_stream::iter([bytes])), path, crate::support::Raw)
        .await?
        .into_inner();
    let mut count = 0;
    // A watch never ends by itself: its first message is answer enough.
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(500), responses.next()).await {
        match next {
            Some(message) => {
                message?;
                count += 1;
            }
            None => break,
        }
    }
    Ok(format!("{count} messages"))
}

/// Checks one row's answer against what it expects.
fn check(name: &str, outcome: Result<String, tonic::Status>, expect: Expect) {
    match (expect, outcome) {
        (Expect::Refused(code, words), Err(status)) => {
            assert_eq!(status.code(), code, "{name}: {status:?}");
            assert!(
                status.message().contains(words),
                "{name}: `{}` should say `{words}`",
                status.message()
            );
        }
        (Expect::Answered(words), Ok(answer)) => assert!(answer.contains(words), "{name}: `{answer}` should say `{words}`"),
        (expect, outcome) => panic!("{name}: expected {expect:?}, got {outcome:?}"),
    }
}

/// An insert of `sequence` as `edit` changes it, into table "queue".
fn insert(edit: impl FnOnce(&mut pb::Sequence)) -> Call {
    let mut sequence = sequence(21, 50.0);
    edit(&mut sequence);
    Call::Insert(vec![pb::InsertRequest {
        table: "queue".into(),
        sequence: Some(sequence),
        ..Default::default()
    }])
}

/// An insert request as `edit` changes it (around a valid sequence).
fn insert_request(edit: impl FnOnce(&mut pb::InsertRequest)) -> Call {
    let mut request = pb::InsertRequest {
        table: "queue".into(),
        sequence: Some(sequence(21, 51.0)),
        ..Default::default()
    };
    edit(&mut request);
    Call::Insert(vec![request])
}

fn sample(edit: impl FnOnce(&mut pb::SampleRequest)) -> Call {
    let mut request = pb::SampleRequest {
        table: "queue".into(),
        batch_size: 1,
        num_batches: 1,
        timeout_ms: 300,
        beta: 0.0,
        in_flight: 1,
    };
    edit(&mut request);
    Call::Sample(request)
}

fn priorities(table: &str, updates: &[(u64, f64)]) -> Call {
    Call::UpdatePriorities(pb::UpdatePrioritiesRequest {
        table: table.into(),
        updates: updates
            .iter()
            .map(|&(key, priority)| pb::PriorityUpdate { key, priority })
            .collect(),
    })
}

/// Sets element `index` of an f32 tensor.
fn set_f32(tensor: &mut Option<pb::Tensor>, index: usize, value: f32) {
    let tensor = tensor.as_mut().unwrap();
    let mut values = tensor.to_f32().unwrap();
    values[index] = value;
    *tensor = pb::Tensor::from_f32(&tensor.dims(), &values);
}

/// Bytes that are no protobuf message: a varint key that never ends.
fn garbage() -> Vec<u8> {
    vec![0xff; 64]
}

/// A valid (empty) message padded with an unknown field of `bytes` bytes:
/// larger than the server reads, whatever the method.
fn oversize(bytes: usize) -> Vec<u8> {
    let mut message = Vec::with_capacity(bytes + 16);
    prost::encoding::encode_key(15, prost::encoding::WireType::LengthDelimited, &mut message);
    prost::encoding::encode_varint(bytes as u64, &mut message);
    message.resize(message.len() + bytes, 0);
    message
}

/// About 5 MB: over the default 4 MiB `replay.max_message_bytes`.
const OVER_LIMIT: usize = 5 << 20;

/// What must stay as it was after every refused request: each table's
/// counters and the chunks the service holds.
async fn replay_state(client: &mut ReplayClient<Channel>) -> pb::InfoResponse {
    client.info(pb::InfoRequest {}).await.unwrap().into_inner()
}

#[tokio::test]
async fn every_replay_method_refuses_bad_input_and_changes_nothing() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let channel = tonic::transport::Endpoint::from_shared(replay.grpc_uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ReplayClient::new(channel.clone());
    let good = vec![sequence(21, 1.0), sequence(21, 2.0)];
    let Ok(answer) = Call::Insert(
        good.iter()
            .map(|s| pb::InsertRequest {
                table: "queue".into(),
                sequence: Some(s.clone()),
                ..Default::default()
            })
            .collect(),
    )
    .run(channel.clone())
    .await
    else {
        panic!("the good items are stored");
    };
    assert_eq!(answer, "keys: [1, 2]");
    let before = replay_state(&mut client).await;

    use Code::{DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, NotFound, OutOfRange};
    use Expect::{Answered, Refused};
    let rows: Vec<(&str, Call, Expect)> = vec![
        // Insert: dtypes, shapes, byte counts, lengths, values.
        (
            "i64 observations",
            insert(|s| s.observations = Some(pb::Tensor::from_i64(&[21, 4], &[0; 84]))),
            Refused(InvalidArgument, "observations are i64 of shape [21, 4]"),
        ),
        (
            "unknown dtype",
            insert(|s| s.observations.as_mut().unwrap().dtype = 42),
            Refused(InvalidArgument, "unknown dtype (42)"),
        ),
        (
            "unspecified dtype",
            insert(|s| s.actions.as_mut().unwrap().dtype = 0),
            Refused(InvalidArgument, "actions: tensor has an unknown dtype (0)"),
        ),
        (
            "f32 actions of shape [T]",
            insert(|s| s.actions = Some(pb::Tensor::from_f32(&[21], &[0.0; 21]))),
            Refused(InvalidArgument, "actions are f32 of shape [21]"),
        ),
        (
            "observations of rank 3",
            insert(|s| s.observations = Some(pb::Tensor::from_f32(&[21, 2, 2], &[0.0; 84]))),
            Refused(InvalidArgument, "expected f32 [steps, size]"),
        ),
        (
            "logits for 3 actions",
            insert(|s| s.behaviour_logits = Some(pb::Tensor::from_f32(&[21, 3], &[0.0; 63]))),
            Refused(InvalidArgument, "does not match table \"queue\""),
        ),
        (
            "logits one step short",
            insert(|s| s.behaviour_logits = Some(pb::Tensor::from_f32(&[20, 2], &[0.0; 40]))),
            Refused(InvalidArgument, "behaviour_logits has shape [20, 2]; expected [21, 2]"),
        ),
        (
            "observations of another size",
            insert(|s| s.observations = Some(pb::Tensor::from_f32(&[21, 5], &[0.0; 105]))),
            Refused(InvalidArgument, "does not match table \"queue\""),
        ),
        (
            "observation bytes short of the shape",
            insert(|s| {
                let t = s.observations.as_mut().unwrap();
                t.data = t.data.slice(..335);
            }),
            Refused(InvalidArgument, "needs 336 bytes, got 335"),
        ),
        (
            "observation bytes beyond the shape",
            insert(|s| {
                let t = s.observations.as_mut().unwrap();
                t.data = [&t.data[..], &[0; 4]].concat().into();
            }),
            Refused(InvalidArgument, "needs 336 bytes, got 340"),
        ),
        (
            "a shape claiming 2^62 steps",
            insert(|s| {
                for t in [&mut s.observations, &mut s.actions, &mut s.behaviour_logits] {
                    t.as_mut().unwrap().shape[0] = 1 << 62;
                }
            }),
            Refused(InvalidArgument, "overflows"),
        ),
        (
            "a shape claiming 2^40 steps",
            insert(|s| {
                for t in [&mut s.observations, &mut s.actions, &mut s.behaviour_logits] {
                    t.as_mut().unwrap().shape[0] = 1 << 40;
                }
            }),
            Refused(InvalidArgument, "bytes, got"),
        ),
        (
            "rewards one short",
            insert(|s| {
                s.rewards.pop();
            }),
            Refused(InvalidArgument, "rewards has 20 entries but observations have 21 steps"),
        ),
        (
            "is_first one long",
            insert(|s| s.is_first.push(false)),
            Refused(InvalidArgument, "is_first has 22 entries"),
        ),
        (
            "no terminated flags",
            insert(|s| s.terminated.clear()),
            Refused(InvalidArgument, "terminated has 0 entries"),
        ),
        (
            "truncated one short",
            insert(|s| {
                s.truncated.pop();
            }),
            Refused(InvalidArgument, "truncated has 20 entries"),
        ),
        (
            "behaviour_versions one short",
            insert(|s| {
                s.behaviour_versions.pop();
            }),
            Refused(InvalidArgument, "behaviour_versions has 20 entries"),
        ),
        (
            "one step",
            insert(|s| *s = sequence(1, 50.0)),
            Refused(InvalidArgument, "1 steps; at least 2"),
        ),
        (
            "no observations",
            insert(|s| s.observations = None),
            Refused(InvalidArgument, "observations is missing"),
        ),
        (
            "no logits",
            insert(|s| s.behaviour_logits = None),
            Refused(InvalidArgument, "behaviour_logits is missing"),
        ),
        (
            "NaN reward",
            insert(|s| s.rewards[7] = f32::NAN),
            Refused(InvalidArgument, "rewards[7] is NaN"),
        ),
        (
            "infinite reward",
            insert(|s| s.rewards[0] = f32::INFINITY),
            Refused(InvalidArgument, "rewards[0] is inf"),
        ),
        (
            "NaN observation",
            insert(|s| set_f32(&mut s.observations, 9, f32::NAN)),
            Refused(InvalidArgument, "observations[2][1] is NaN"),
        ),
        (
            "-inf logit",
            insert(|s| set_f32(&mut s.behaviour_logits, 5, f32::NEG_INFINITY)),
            Refused(InvalidArgument, "behaviour_logits[2][1] is -inf"),
        ),
        (
            "NaN stored state",
            insert(|s| s.initial_state = Some(pb::Tensor::from_f32(&[2, 2], &[0.0, f32::NAN, 0.0, 0.0]))),
            Refused(InvalidArgument, "initial_state[1] is NaN"),
        ),
        (
            "stored state of the wrong shape",
            insert(|s| s.initial_state = Some(pb::Tensor::from_f32(&[3, 2], &[0.0; 6]))),
            Refused(InvalidArgument, "expected f32 [2, hidden]"),
        ),
        (
            "NaN continuous action",
            insert(|s| {
                s.actions = Some(pb::Tensor::from_f32(&[21, 1], &[f32::NAN; 21]));
                s.behaviour_logits = Some(pb::Tensor::from_f32(&[21, 2], &[0.0; 42]));
            }),
            Refused(InvalidArgument, "actions[0] is NaN"),
        ),
        (
            "continuous actions of 2^64 - 1 dimensions",
            insert(|s| {
                s.actions = Some(pb::Tensor {
                    dtype: pb::Dtype::F32 as i32,
                    shape: vec![21, u64::MAX],
                    data: Default::default(),
                });
            }),
            Refused(InvalidArgument, "actions are f32 of shape [21, 18446744073709551615]"),
        ),
        (
            "action out of range",
            insert(|s| s.actions = Some(pb::Tensor::from_i64(&[21], &[2; 21]))),
            Refused(InvalidArgument, "actions[0] is 2; expected an action in 0..2"),
        ),
        (
            "negative action",
            insert(|s| s.actions = Some(pb::Tensor::from_i64(&[21], &[-1; 21]))),
            Refused(InvalidArgument, "actions[0] is -1"),
        ),
        (
            "NaN priority",
            insert(|s| s.priority = f64::NAN),
            Refused(InvalidArgument, "priority is NaN"),
        ),
        (
            "negative priority",
            insert(|s| s.priority = -1.0),
            Refused(InvalidArgument, "priority is -1"),
        ),
        // Insert: the request around the sequence.
        (
            "no sequence",
            insert_request(|r| r.sequence = None),
            Refused(InvalidArgument, "sequence is missing"),
        ),
        (
            "unknown table",
            insert_request(|r| r.table = "nope".into()),
            Refused(NotFound, "no table named \"nope\""),
        ),
        (
            "empty table name",
            insert_request(|r| r.table = String::new()),
            Refused(NotFound, "no table named \"\""),
        ),
        (
            "unknown also-table",
            insert_request(|r| r.also_tables = vec!["other".into()]),
            Refused(NotFound, "no table named \"other\""),
        ),
        (
            "a table named twice",
            insert_request(|r| r.also_tables = vec!["queue".into()]),
            Refused(InvalidArgument, "table \"queue\" is named twice"),
        ),
        (
            "overlap for an unknown writer",
            insert_request(|r| {
                r.writer = 7;
                r.overlap = 5;
            }),
            Refused(InvalidArgument, "stored no item for writer 7"),
        ),
        (
            "oversize request",
            insert_request(|r| r.table = "q".repeat(OVER_LIMIT)),
            Refused(OutOfRange, "too large"),
        ),
        (
            "not a message",
            Call::Raw("/fleet.v1.Replay/Insert", garbage()),
            Refused(Internal, "decode"),
        ),
        // Sample.
        (
            "batch of 0",
            sample(|r| r.batch_size = 0),
            Refused(InvalidArgument, "batch_size 0 must be between 1 and table \"queue\"'s max_size 32"),
        ),
        (
            "absurd batch",
            sample(|r| r.batch_size = u32::MAX),
            Refused(InvalidArgument, "batch_size 4294967295 must be between 1"),
        ),
        (
            "batch over max_size",
            sample(|r| r.batch_size = 33),
            Refused(InvalidArgument, "batch_size 33"),
        ),
        ("NaN beta", sample(|r| r.beta = f64::NAN), Refused(InvalidArgument, "beta is NaN")),
        ("negative beta", sample(|r| r.beta = -1.0), Refused(InvalidArgument, "beta is -1")),
        (
            "infinite beta",
            sample(|r| r.beta = f64::INFINITY),
            Refused(InvalidArgument, "beta is inf"),
        ),
        (
            "in_flight over 16",
            sample(|r| r.in_flight = 1000),
            Refused(InvalidArgument, "in_flight is 1000"),
        ),
        (
            "unknown table",
            sample(|r| r.table = "nope".into()),
            Refused(NotFound, "no table named \"nope\""),
        ),
        (
            "more items than the table holds",
            sample(|r| r.batch_size = 3),
            Refused(DeadlineExceeded, "could not serve a batch of 3 items"),
        ),
        (
            "oversize request",
            sample(|r| r.table = "q".repeat(OVER_LIMIT)),
            Refused(OutOfRange, "too large"),
        ),
        (
            "not a message",
            Call::Raw("/fleet.v1.Replay/Sample", garbage()),
            Refused(Internal, "decode"),
        ),
        // batch_size (field 2, a varint) sent as length-delimited bytes.
        (
            "a field of the wrong wire type",
            Call::Raw("/fleet.v1.Replay/Sample", vec![0x12, 0x01, 0x00]),
            Refused(Internal, "invalid wire type"),
        ),
        // UpdatePriorities.
        (
            "NaN priority",
            priorities("queue", &[(1, f64::NAN)]),
            Refused(InvalidArgument, "priority NaN is not a finite number >= 0"),
        ),
        (
            "infinite priority",
            priorities("queue", &[(2, 1.0), (1, f64::INFINITY)]),
            Refused(InvalidArgument, "key 1: priority inf"),
        ),
        (
            "negative priority",
            priorities("queue", &[(2, -0.5)]),
            Refused(InvalidArgument, "priority -0.5"),
        ),
        (
            "unknown keys",
            priorities("queue", &[(999_999, 1.0), (0, 2.0), (u64::MAX, 3.0)]),
            Answered("missing: 3"),
        ),
        (
            "unknown table",
            priorities("nope", &[(1, 1.0)]),
            Refused(NotFound, "no table named \"nope\""),
        ),
        (
            "oversize request",
            Call::Raw("/fleet.v1.Replay/UpdatePriorities", oversize(OVER_LIMIT)),
            Refused(OutOfRange, "too large"),
        ),
        (
            "not a message",
            Call::Raw("/fleet.v1.Replay/UpdatePriorities", garbage()),
            Refused(Internal, "decode"),
        ),
        // Info and Checkpoint take no fields: only bytes can be wrong.
        (
            "unknown fields",
            Call::Raw("/fleet.v1.Replay/Info", oversize(16)),
            Answered("1 messages"),
        ),
        (
            "oversize request",
            Call::Raw("/fleet.v1.Replay/Info", oversize(OVER_LIMIT)),
            Refused(OutOfRange, "too large"),
        ),
        (
            "not a message",
            Call::Raw("/fleet.v1.Replay/Info", garbage()),
            Refused(Internal, "decode"),
        ),
        (
            "no checkpoint_dir",
            Call::Checkpoint,
            Refused(FailedPrecondition, "replay.checkpoint_dir"),
        ),
        (
            "not a message",
            Call::Raw("/fleet.v1.Replay/Checkpoint", garbage()),
            Refused(Internal, "decode"),
        ),
        (
            "oversize request",
            Call::Raw("/fleet.v1.Replay/Checkpoint", oversize(OVER_LIMIT)),
            Refused(OutOfRange, "too large"),
        ),
    ];
    for (name, call, expect) in rows {
        let outcome = call.run(channel.clone()).await;
        check(name, outcome, expect);
        assert_eq!(replay_state(&mut client).await, before, "{name}: nothing changed");
    }

    // The good items are intact, in order, with their priorities.
    let batch = client
        .sample(pb::SampleRequest {
            table: "queue".into(),
            batch_size: 2,
            num_batches: 1,
            timeout_ms: 2000,
            beta: 0.0,
            in_flight: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let sampled: Vec<pb::Sequence> = batch.items.iter().map(|i| i.sequence.clone().unwrap()).collect();
    assert_eq!(sampled, good);
    let priorities: Vec<f64> = batch.items.iter().map(|i| i.priority).collect();
    assert_eq!(priorities[0], priorities[1], "no refused update touched a priority: {priorities:?}");
}

#[tokio::test]
async fn every_parameters_method_refuses_bad_input_and_keeps_the_weights() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let learner = start(&["learner", "--listen", "127.0.0.1:0", "--replay", &replay.grpc]).await;
    let channel = tonic::transport::Endpoint::from_shared(learner.grpc_uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let weights = || {
        let channel = channel.clone();
        async move {
            let mut client = ParametersClient::new(channel);
            let mut chunks = client.get_weights(pb::GetWeightsRequest {}).await.unwrap().into_inner();
            let mut assembler = fleet_proto::WeightsAssembler::new(1 << 30);
            let mut blob = None;
            while let Some(chunk) = chunks.next().await {
                blob = assembler.push(chunk.unwrap()).unwrap().or(blob);
            }
            blob.expect("a whole version")
        }
    };
    let before = weights().await;
    assert_eq!(before.0, 1, "nothing trains without items: version 1 throughout");

    use Code::{Internal, OutOfRange};
    use Expect::{Answered, Refused};
    let watch = |after_version| {
        Call::WatchWeights(pb::WatchWeightsRequest {
            after_version,
            single_version: false,
        })
    };
    let rows: Vec<(&str, Call, Expect)> = vec![
        (
            "a version not yet published",
            watch(2),
            Refused(OutOfRange, "after_version 2 is newer than the newest published weights version 1"),
        ),
        (
            "the largest version",
            watch(u64::MAX),
            Refused(OutOfRange, "after_version 18446744073709551615 is newer"),
        ),
        ("the current version", watch(1), Answered("waiting")),
        ("from the start", watch(0), Answered("version 1")),
        (
            "not a message",
            Call::Raw("/fleet.v1.Parameters/WatchWeights", garbage()),
            Refused(Internal, "decode"),
        ),
        (
            "oversize request",
            Call::Raw("/fleet.v1.Parameters/WatchWeights", oversize(OVER_LIMIT)),
            Refused(OutOfRange, "too large"),
        ),
        // GetWeights has no fields (no version to ask for): only bytes can be wrong.
        (
            "unknown fields",
            Call::Raw("/fleet.v1.Parameters/GetWeights", oversize(16)),
            Answered("1 messages"),
        ),
        (
            "not a message",
            Call::Raw("/fleet.v1.Parameters/GetWeights", garbage()),
            Refused(Internal, "decode"),
        ),
        (
            "oversize request",
            Call::Raw("/fleet.v1.Parameters/GetWeights", oversize(OVER_LIMIT)),
            Refused(OutOfRange, "too large"),
        ),
    ];
    for (name, call, expect) in rows {
        let outcome = call.run(channel.clone()).await;
        check(name, outcome, expect);
        assert_eq!(weights().await, before, "{name}: the weights are unchanged");
    }
}

/// A start of `fleet` that must fail: its arguments, environment, and the
/// words its error must hold.
struct BadStart {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    says: Vec<String>,
}

#[tokio::test]
async fn bad_starts_exit_non_zero_before_announcing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    // Root may write anywhere: a folder that cannot be made (its parent is
    // a file) is unwritable for every user.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let unwritable = file.join("checkpoints").display().to_string();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let wrong_type = write("wrong-type.toml", "[learner]\nbatch_size = \"many\"\n");
    let unknown_key = write("unknown-key.toml", "[replay]\nbogus = 1\n");
    let not_toml = write("not-toml.toml", "[replay\n");
    let folder = dir.path().display().to_string();
    let s = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let replay = |extra: &[&str]| {
        let mut args = s(&["replay", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
        args.extend(s(extra));
        args
    };
    let learner = |extra: &[&str]| {
        let mut args = s(&[
            "learner",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--replay",
            "127.0.0.1:9",
        ]);
        args.extend(s(extra));
        args
    };
    let set = |key: &str, value: &str| s(&["--set", &format!("{key}={value}")]);
    let rows = vec![
        BadStart {
            name: "replay on a busy port",
            args: s(&["replay", "--listen", &busy, "--metrics-listen", "127.0.0.1:0"]),
            env: vec![],
            says: s(&["replay gRPC listener", &busy, "in use"]),
        },
        BadStart {
            name: "replay metrics on a busy port",
            args: s(&["replay", "--listen", "127.0.0.1:0", "--metrics-listen", &busy]),
            env: vec![],
            says: s(&["metrics listener", &busy, "in use"]),
        },
        BadStart {
            name: "learner on a busy port",
            args: s(&["learner", "--listen", &busy, "--metrics-listen", "127.0.0.1:0"]),
            env: vec![],
            says: s(&["learner gRPC listener", &busy, "in use"]),
        },
        BadStart {
            name: "learner metrics on a busy port",
            args: s(&["learner", "--listen", "127.0.0.1:0", "--metrics-listen", &busy]),
            env: vec![],
            says: s(&["metrics listener", &busy, "in use"]),
        },
        BadStart {
            name: "actor metrics on a busy port",
            args: s(&[
                "actor",
                "--metrics-listen",
                &busy,
                "--replay",
                "127.0.0.1:9",
                "--learner",
                "127.0.0.1:9",
            ]),
            env: vec![],
            says: s(&["metrics listener", &busy, "in use"]),
        },
        BadStart {
            name: "unwritable replay.checkpoint_dir",
            args: [set("replay.checkpoint_dir", &unwritable), replay(&[])].concat(),
            env: vec![],
            says: s(&[&unwritable]),
        },
        BadStart {
            name: "a file as replay.checkpoint_dir",
            args: [set("replay.checkpoint_dir", &file.display().to_string()), replay(&[])].concat(),
            env: vec![],
            says: s(&[&file.display().to_string()]),
        },
        BadStart {
            name: "unwritable learner.checkpoint_dir",
            args: [set("learner.checkpoint_dir", &unwritable), learner(&[])].concat(),
            env: vec![],
            says: s(&["learner.checkpoint_dir", &unwritable]),
        },
        BadStart {
            name: "fleet run with an unwritable replay.checkpoint_dir",
            args: [set("replay.checkpoint_dir", &unwritable), s(&["run"])].concat(),
            env: vec![],
            says: s(&[&unwritable, "replay exited before reporting ready"]),
        },
        BadStart {
            name: "fleet run with an unwritable learner.checkpoint_dir",
            args: [set("learner.checkpoint_dir", &unwritable), s(&["run"])].concat(),
            env: vec![],
            says: s(&["learner.checkpoint_dir", &unwritable, "is not a directory this learner can write"]),
        },
        BadStart {
            name: "a folder as --config",
            args: [s(&["--config", &folder]), replay(&[])].concat(),
            env: vec![],
            says: s(&["reading config file", &folder]),
        },
        BadStart {
            name: "a missing --config",
            args: [s(&["--config", "/nonexistent/fleet.toml"]), replay(&[])].concat(),
            env: vec![],
            says: s(&["reading config file /nonexistent/fleet.toml"]),
        },
        BadStart {
            name: "a --config that is not TOML",
            args: [s(&["--config", &not_toml]), replay(&[])].concat(),
            env: vec![],
            says: s(&["parsing config file", &not_toml]),
        },
        BadStart {
            name: "a key of the wrong type in a file",
            args: [s(&["--config", &wrong_type]), replay(&[])].concat(),
            env: vec![],
            says: s(&["learner.batch_size", "invalid type"]),
        },
        BadStart {
            name: "a key of the wrong type in a flag",
            args: [set("replay.max_message_bytes", "lots"), replay(&[])].concat(),
            env: vec![],
            says: s(&["replay.max_message_bytes", "invalid type"]),
        },
        BadStart {
            name: "a key of the wrong type in the environment",
            args: replay(&[]),
            env: vec![("FLEET_LEARNER__LEARNING_RATE", "fast".into())],
            says: s(&["learner.learning_rate", "invalid type"]),
        },
        BadStart {
            name: "an unknown key in a file",
            args: [s(&["--config", &unknown_key]), replay(&[])].concat(),
            env: vec![],
            says: s(&["unknown config key `replay.bogus`", &unknown_key]),
        },
        BadStart {
            name: "an unknown key in a flag",
            args: [set("learner.bogus", "1"), learner(&[])].concat(),
            env: vec![],
            says: s(&["unknown config key `learner.bogus`"]),
        },
        BadStart {
            name: "an unknown key in the environment",
            args: replay(&[]),
            env: vec![("FLEET_REPLAY__BOGUS", "1".into())],
            says: s(&["FLEET_REPLAY__BOGUS", "unknown config key `replay.bogus`"]),
        },
        BadStart {
            name: "an unknown section",
            args: [set("nosuch.key", "1"), s(&["run"])].concat(),
            env: vec![],
            says: s(&["unknown config key `nosuch`"]),
        },
    ];
    for row in rows {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(FLEET)
                .args(&row.args)
                .envs(row.env.iter().map(|(k, v)| (*k, v.as_str())))
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: fleet did not exit within 60 s", row.name))
        .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert_eq!(output.status.code(), Some(2), "{}: {stderr}", row.name);
        for words in &row.says {
            assert!(
                stderr.contains(words.as_str()),
                "{}: stderr should say `{words}`:\n{stderr}",
                row.name
            );
        }
        // `fleet run` prints its children's endpoints only once all are up.
        assert!(
            !stdout.contains(fleet::process::READY_PREFIX) && !stdout.contains("metrics http://"),
            "{}: announced before failing:\n{stdout}",
            row.name
        );
    }
}

/// How the fake env bridge below misbehaves.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// A spec whose observations no message could carry.
    HugeSpec,
    /// A NaN reward on the first step.
    NanReward,
    /// An infinite observation in the answer to reset.
    InfiniteObservation,
    /// One observation too few on the first step.
    ShortObservations,
    /// One reward too few on the first step.
    ShortRewards,
}

/// An env bridge in Rust: CartPole-shaped spaces ([2] f32, 2 actions), all
/// zeros, except for its one fault.
struct FakeBridge(Fault);

#[tonic::async_trait]
impl pb::env_server::Env for FakeBridge {
    type RunStream = futures::stream::BoxStream<'static, Result<pb::EnvResponse, tonic::Status>>;

    async fn run(
        &self,
        request: tonic::Request<tonic::Streaming<pb::EnvRequest>>,
    ) -> Result<tonic::Response<Self::RunStream>, tonic::Status> {
        use pb::env_request::Kind;
        use pb::env_response::Kind as Answer;
        let fault = self.0;
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut num_envs = 0usize;
            while let Some(Ok(request)) = requests.next().await {
                let answer = match request.kind {
                    Some(Kind::Open(open)) => {
                        num_envs = open.num_envs as usize;
                        let shape = match fault {
                            Fault::HugeSpec => vec![1 << 33],
                            _ => vec![2],
                        };
                        Answer::Spec(pb::EnvSpecMessage {
                            observation_dtype: pb::Dtype::F32 as i32,
                            observation_shape: shape,
                            num_actions: 2,
                            num_envs: open.num_envs,
                            backend: "fake".into(),
                            ..Default::default()
                        })
                    }
                    Some(kind) => {
                        let reset = matches!(kind, Kind::Reset(_));
                        let mut values = vec![0.0f32; num_envs * 2];
                        let mut rewards = vec![0.0f32; num_envs];
                        match fault {
                            Fault::InfiniteObservation if reset => values[1] = f32::INFINITY,
                            Fault::NanReward if !reset => rewards[0] = f32::NAN,
                            Fault::ShortObservations if !reset => {
                                values.pop();
                            }
                            Fault::ShortRewards if !reset => {
                                rewards.pop();
                            }
                            _ => {}
                        }
                        Answer::Timestep(pb::EnvTimestep {
                            observations: Some(pb::Tensor::from_f32(&[values.len()], &values)),
                            rewards,
                            is_first: vec![reset; num_envs],
                            terminated: vec![false; num_envs],
                            truncated: vec![false; num_envs],
                        })
                    }
                    None => break,
                };
                if tx.send(Ok(pb::EnvResponse { kind: Some(answer) })).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// What the actor decodes from the env bridge is checked there: `fleet run`
/// against a bridge that sends a malformed answer stops, non-zero, with the
/// fault and the environment named, whatever the fault.
#[tokio::test]
async fn malformed_env_bridge_answers_stop_fleet_run_naming_the_fault() {
    let rows = [
        (Fault::HugeSpec, "larger than the 4294967295 values one message can carry"),
        (Fault::NanReward, "the bridge sent reward NaN for environment 0"),
        (
            Fault::InfiniteObservation,
            "the bridge sent observation value inf (environment 0, element 1)",
        ),
        (Fault::ShortObservations, "the bridge sent observations of shape [3], expected 2 ×"),
        (Fault::ShortRewards, "the bridge sent 1 rewards for 2 environments"),
    ];
    for (fault, says) in rows {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::env_server::EnvServer::new(FakeBridge(fault)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let output = tokio::time::timeout(
            Duration::from_secs(90),
            tokio::process::Command::new(FLEET)
                .args(["--set", "env.name=gym:Fake-v0", "--set", &format!("env.remote={address}")])
                .args(["--set", "actor.num_envs=2", "run", "--actors", "1", "--max-env-steps", "100000"])
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{fault:?}: fleet run did not stop within 90 s"))
        .unwrap();
        server.abort();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{fault:?}: {stderr}");
        assert!(
            stderr.contains("gym:Fake-v0") && stderr.contains(says),
            "{fault:?}: stderr should say `{says}`:\n{stderr}"
        );
    }
}
