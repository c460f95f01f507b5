//! The bearer token on real `fleet` processes: a replay and a learner
//! started with one refuse calls without it or with another one
//! (UNAUTHENTICATED, the token never echoed) and answer calls with it,
//! while their health service stays open; a bad token file stops a role
//! before it starts; and `fleet run` with a token in a file gets it to
//! every child, so the whole system trains.

use std::time::Duration;

use fleet_proto::pb::{self, parameters_client::ParametersClient, replay_client::ReplayClient};
use futures::StreamExt;
use tokio::process::Command;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::support::{FLEET, Process, fleet_output, run_checking_lines, start};

const TOKEN: &str = "fleet-test-token-8c1f0e";

/// A request carrying `authorization: <value>`, or none.
fn request<T>(message: T, authorization: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::try_from(value).unwrap());
    }
    request
}

/// Writes the test token to a file in `dir`, with the newline an `echo`
/// leaves; returns its path.
fn token_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path.display().to_string()
}

async fn channel(role: &Process) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(role.grpc_uri())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn assert_unauthenticated(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{what}: {status:?}");
    assert!(!status.message().contains(TOKEN), "{what}: the token is echoed: {status:?}");
}

#[tokio::test]
async fn a_replay_with_a_token_answers_only_calls_that_carry_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(&dir);
    let replay = start(&["replay", "--listen", "127.0.0.1:0", "--set", &format!("auth.token_file={file}")]).await;
    let mut client = ReplayClient::new(channel(&replay).await);

    let none = client.info(request(pb::InfoRequest {}, None)).await.unwrap_err();
    assert_unauthenticated(&none, "no token");
    let wrong = client
        .info(request(pb::InfoRequest {}, Some("Bearer fleet-test-token-8c1f0f")))
        .await
        .unwrap_err();
    assert_unauthenticated(&wrong, "a wrong token");
    let prefix = client
        .info(request(pb::InfoRequest {}, Some("Bearer fleet-test-token")))
        .await
        .unwrap_err();
    assert_unauthenticated(&prefix, "a prefix of the token");
    let bare = client.info(request(pb::InfoRequest {}, Some(TOKEN))).await.unwrap_err();
    assert_unauthenticated(&bare, "the token without its scheme");

    let bearer = format!("Bearer {TOKEN}");
    let info = client
        .info(request(pb::InfoRequest {}, Some(&bearer)))
        .await
        .expect("the right token is accepted")
        .into_inner();
    assert!(info.tables.iter().any(|t| t.name == "queue"), "{info:?}");
    // A streaming call is checked once, at its start: refused without the
    // token, and sampled to its end with it.
    let sample = pb::SampleRequest {
        table: "queue".into(),
        batch_size: 1,
        num_batches: 1,
        timeout_ms: 100,
        beta: 0.0,
        in_flight: 1,
    };
    let refused = client.sample(request(sample.clone(), None)).await.unwrap_err();
    assert_unauthenticated(&refused, "Sample without a token");
    let mut batches = client.sample(request(sample, Some(&bearer))).await.unwrap().into_inner();
    let empty = batches.next().await.unwrap().unwrap_err();
    assert_eq!(
        empty.code(),
        tonic::Code::DeadlineExceeded,
        "past the check, an empty queue times out: {empty:?}"
    );

    // Health stays open, for container health checks without the secret.
    let status = HealthClient::new(channel(&replay).await)
        .check(HealthCheckRequest {
            service: "fleet.v1.Replay".into(),
        })
        .await
        .expect("health needs no token")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let healthy = Command::new(FLEET)
        .args(["health", "--address", &replay.grpc])
        .output()
        .await
        .unwrap();
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));

    // The effective config names the file, never the token in it.
    let config = Command::new(FLEET)
        .args(["config", "--set", &format!("auth.token_file={file}")])
        .output()
        .await
        .unwrap();
    assert!(config.status.success(), "{}", String::from_utf8_lossy(&config.stderr));
    let printed = String::from_utf8_lossy(&config.stdout);
    assert!(printed.contains(&file) && !printed.contains(TOKEN), "{printed}");
}

/// The learner's `Parameters` service checks the token too; here it comes
/// from `FLEET_AUTH_TOKEN` rather than a file.
#[tokio::test]
async fn a_learner_with_a_token_serves_weights_only_to_callers_that_carry_it() {
    let replay = start(&["replay", "--listen", "127.0.0.1:0"]).await;
    let mut command = Command::new(FLEET);
    command
        .args(["learner", "--listen", "127.0.0.1:0", "--replay", &replay.grpc])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .env("FLEET_AUTH_TOKEN", TOKEN);
    let learner = Process::spawn("learner", command).await.unwrap();
    let mut client = ParametersClient::new(channel(&learner).await);
    let watch = || pb::WatchWeightsRequest {
        after_version: 0,
        single_version: false,
    };
    let none = client.watch_weights(request(watch(), None)).await.unwrap_err();
    assert_unauthenticated(&none, "no token");
    let wrong = client
        .watch_weights(request(watch(), Some("Bearer not-the-token")))
        .await
        .unwrap_err();
    assert_unauthenticated(&wrong, "a wrong token");
    let bearer = format!("Bearer {TOKEN}");
    let mut chunks = client.watch_weights(request(watch(), Some(&bearer))).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), chunks.next())
        .await
        .expect("weights within 10 s")
        .unwrap()
        .expect("the right token gets weights");
    assert!(first.total_bytes > 0, "{first:?}");
    let status = HealthClient::new(channel(&learner).await)
        .check(HealthCheckRequest {
            service: "fleet.v1.Parameters".into(),
        })
        .await
        .expect("health needs no token")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

/// A token file that is missing or empty stops the role with an error
/// naming the file, before it binds or announces anything; so does `fleet
/// run`, before it starts any child.
#[tokio::test]
async fn a_missing_or_empty_token_file_stops_a_role_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-token").display().to_string();
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.display().to_string();
    for (args, file) in [
        (vec!["replay", "--listen", "127.0.0.1:0"], &missing),
        (vec!["replay", "--listen", "127.0.0.1:0"], &empty),
        (vec!["run", "--max-env-steps", "1000"], &missing),
    ] {
        let token = ["--metrics-listen", "127.0.0.1:0", "--set"].map(String::from);
        let out = fleet_output(
            args.iter()
                .map(|a| a.to_string())
                .chain(token)
                .chain([format!("auth.token_file={file}")]),
        )
        .await;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{args:?} {file}: {stderr}");
        assert!(stderr.contains("auth.token_file") && stderr.contains(file.as_str()), "{stderr}");
        assert!(stdout.is_empty(), "nothing started or announced: {stdout}");
    }
}

/// `fleet run` with the token in a file: the launcher's children read it
/// through the effective config, so actors insert into replay, the learner
/// samples from it and actors fetch its weights, and CartPole learns (a
/// random policy returns ≈ 20). A child without the token is refused: the
/// server's warning fails the test at once (the run itself would stall,
/// its actors waiting for weights they cannot fetch).
#[tokio::test]
async fn fleet_run_with_a_token_trains() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(&dir);
    let args = ["--seed", "1", "--target-return", "100", "--max-env-steps", "400000", "--set"].map(String::from);
    let args = [args.to_vec(), vec![format!("auth.token_file={file}")]].concat();
    let (solved, output) = run_checking_lines(&args, |line, output| {
        assert!(!line.contains("refused a gRPC call"), "a child was refused:\n{output}{line}");
        assert!(!line.contains(TOKEN), "the token is logged:\n{output}{line}");
    })
    .await;
    assert!(solved, "{output}");
}
