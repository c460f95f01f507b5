//! `fleet health`: asks a server's `grpc.health.v1` service whether it is
//! serving, for container and orchestrator health checks.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_proto::connect::endpoint_uri;
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
