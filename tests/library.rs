//! The roles as library functions, inside this test process: `fleet::replay::run`
//! on port 0 listeners the test bound itself, spoken to over real gRPC and
//! HTTP, then stopped through its shutdown future.

use std::time::Duration;

use fleet::config::{Config, ConfigSources};
use fleet::scrape;
use fleet_proto::pb::{self, replay_client::ReplayClient};
use tokio::net::{TcpListener, TcpStream};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_run_serves_on_its_listeners_and_returns_once_shutdown_fires() {
    let config = Config::load(&ConfigSources::default()).unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_address, metrics_address) = (grpc.local_addr().unwrap(), metrics.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let running = tokio::spawn(fleet::replay::run(config, None, grpc, metrics, shutdown));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut replay = ReplayClient::new(channel.clone());
    let info = replay.info(pb::InfoRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = info.tables.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"queue"), "the default tables are served: {names:?}");
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: "fleet.v1.Replay".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let text = scrape::scrape(&metrics_address.to_string()).await.unwrap();
    assert!(
        scrape::metric(&text, "process_resident_memory_bytes").is_some(),
        "/metrics is served:\n{text}"
    );
    assert!(!running.is_finished(), "run returned before its shutdown fired");

    // The client stays connected: a graceful stop must not wait for it to leave.
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("run returned within 10 s of shutdown")
        .unwrap();
    result.unwrap();
    assert!(
        TcpStream::connect(grpc_address).await.is_err(),
        "the gRPC listener is closed once run returns"
    );
    drop((replay, health));
}
