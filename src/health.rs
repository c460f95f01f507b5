//! `fleet health`: asks a server's `grpc.health.v1` service whether it is
//! serving, or checks the fleet process of this container from its
//! environment, for container and orchestrator health checks.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fleet_proto::connect::endpoint_uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

pub async fn check(address: &str, service: &str) -> Result<ExitCode> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint_uri(address))
        .with_context(|| format!("invalid address `{address}`"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("connecting to {address}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .with_context(|| format!("health check of `{service}` at {address}"))?;
    let status = ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
    println!(
        "{address} {}: {}",
        if service.is_empty() { "(server)" } else { service },
        status.as_str_name()
    );
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The fleet process in this container: its gRPC health when it serves gRPC
/// (`FLEET_LISTEN` set: replay, learner), else its `/metrics` endpoint
/// (`metrics_listen`, from `FLEET_METRICS_LISTEN`: actors serve no gRPC).
/// Either is reached on loopback at the configured port.
pub async fn check_local(metrics_listen: SocketAddr, service: &str) -> Result<ExitCode> {
    if let Ok(listen) = std::env::var("FLEET_LISTEN") {
        let port = listen
            .parse::<SocketAddr>()
            .with_context(|| format!("FLEET_LISTEN `{listen}` is not an address"))?
            .port();
        return check(&format!("127.0.0.1:{port}"), service).await;
    }
    let address = format!("127.0.0.1:{}", metrics_listen.port());
    let status = tokio::time::timeout(Duration::from_secs(3), metrics_status(&address))
        .await
        .with_context(|| format!("no answer from http://{address}/metrics within 3 s"))??;
    println!("http://{address}/metrics: {status}");
    Ok(if status.contains(" 200 ") {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The status line of one `GET /metrics`.
async fn metrics_status(address: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut head = vec![0; 64];
    let n = stream.read(&mut head).await?;
    let text = String::from_utf8_lossy(&head[..n]);
    match text.lines().next() {
        Some(line) if line.starts_with("HTTP/") => Ok(line.to_string()),
        _ => bail!("{address} answered no HTTP status line"),
    }
}
