//! `fleet health`: asks a server's `grpc.health.v1` service whether it is
//! serving, or checks the fleet process of this container from its
//! environment, for container and orchestrator health checks, over TLS when
//! the config's `[tls]` turns it on (the health service shares its server's
//! port and so its TLS). It only asks; the servers' health services are set
//! up by the roles themselves.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_proto::tls::Tls;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::scrape;

pub async fn check(address: &str, service: &str, tls: &Tls) -> Result<ExitCode> {
    let channel = fleet_proto::connect::endpoint(address, tls)
        .with_context(|| format!("invalid address `{address}`"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|error| anyhow::anyhow!("connecting to {address}: {}", fleet_proto::connect::chain(&error)))?;
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
pub async fn check_local(metrics_listen: SocketAddr, service: &str, tls: &Tls) -> Result<ExitCode> {
    if let Ok(listen) = std::env::var("FLEET_LISTEN") {
        let port = listen
            .parse::<SocketAddr>()
            .with_context(|| format!("FLEET_LISTEN `{listen}` is not an address"))?
            .port();
        return check(&format!("127.0.0.1:{port}"), service, tls).await;
    }
    let address = format!("127.0.0.1:{}", metrics_listen.port());
    let response = tokio::time::timeout(Duration::from_secs(3), scrape::get(&address))
        .await
        .with_context(|| format!("no answer from http://{address}/metrics within 3 s"))??;
    println!("http://{address}/metrics: {}", response.status);
    Ok(if response.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
