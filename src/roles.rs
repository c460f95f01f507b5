//! Running one role per process — `fleet replay`, `fleet learner`,
//! `fleet actor` — with the shared process plumbing: signal handling,
//! the `/metrics` endpoint, binding listeners, and the one ready line on
//! stdout that tells a launcher which ports were bound.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_agent::EnvSpec;
use fleet_proto::connect::Backoff;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::telemetry;

/// The line a role prints once its listeners are bound.
pub const READY_PREFIX: &str = "fleet-ready";

/// Process wiring common to every role.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub metrics_listen: SocketAddr,
    /// End the process when stdin closes (set by `fleet run`, so children
    /// never outlive their launcher).
    pub exit_with_stdin: bool,
}

/// Cancels `shutdown` on SIGINT/SIGTERM, and on stdin EOF if asked.
fn watch_for_shutdown(shutdown: &CancellationToken, exit_with_stdin: bool) -> Result<()> {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            _ = terminate.recv() => tracing::info!("terminated; shutting down"),
            _ = token.cancelled() => {}
        }
        token.cancel();
    });
    if exit_with_stdin {
        let token = shutdown.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            tracing::info!("launcher went away; shutting down");
            token.cancel();
        });
    }
    Ok(())
}

async fn bind(address: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the {what} listener on {address}"))
}

/// Binds metrics, prints the ready line, and returns the shutdown token.
async fn start(role: &str, wiring: &Wiring, grpc: Option<&TcpListener>) -> Result<CancellationToken> {
    let shutdown = CancellationToken::new();
    watch_for_shutdown(&shutdown, wiring.exit_with_stdin)?;
    let handle = telemetry::install_recorder()?;
    let metrics_listener = bind(wiring.metrics_listen, "metrics").await?;
    let metrics_addr = metrics_listener.local_addr()?;
    tokio::spawn(telemetry::serve_metrics(metrics_listener, handle, shutdown.clone()));
    let grpc_addr = match grpc {
        Some(listener) => listener.local_addr()?.to_string(),
        None => "-".to_string(),
    };
    println!("{READY_PREFIX} role={role} grpc={grpc_addr} metrics={metrics_addr}");
    tracing::info!(role, grpc = %grpc_addr, metrics = %format!("http://{metrics_addr}/metrics"), "ready");
    Ok(shutdown)
}

pub async fn replay(config: Config, listen: SocketAddr, restore: Option<std::path::PathBuf>, wiring: Wiring) -> Result<()> {
    let listener = bind(listen, "replay gRPC").await?;
    let shutdown = start("replay", &wiring, Some(&listener)).await?;
    let restore = restore.map_or(fleet_replay::Restore::Auto, fleet_replay::Restore::From);
    fleet_replay::serve(config.replay, restore, listener, async move { shutdown.cancelled().await }).await?;
    Ok(())
}

pub async fn learner(config: Config, listen: SocketAddr, replay_address: String, wiring: Wiring) -> Result<()> {
    let spec = env_spec(&config)?;
    let listener = bind(listen, "learner gRPC").await?;
    let shutdown = start("learner", &wiring, Some(&listener)).await?;
    let settings = fleet_learner::LearnerSettings {
        seed: config.seed,
        spec,
        network: config.network,
        learner: fleet_learner::LearnerConfig {
            burn_in: config.actor.burn_in,
            ..config.learner
        },
        replay_address,
        max_message_bytes: config.replay.max_message_bytes,
        sample_timeout: Duration::from_millis(config.replay.sample_timeout_ms),
        backoff: Backoff::default(),
    };
    fleet_learner::run(settings, listener, shutdown).await?;
    Ok(())
}

pub async fn actor(config: Config, actor_id: u64, replay_address: String, learner_address: String, wiring: Wiring) -> Result<()> {
    let shutdown = start("actor", &wiring, None).await?;
    let settings = fleet_actor::ActorSettings {
        actor_id,
        seed: config.seed,
        env: config.env,
        network: config.network,
        actor: config.actor,
        replay_address,
        learner_address,
        max_message_bytes: config.replay.max_message_bytes,
        backoff: Backoff::default(),
    };
    fleet_actor::run(settings, shutdown).await?;
    Ok(())
}

/// The network's view of the configured environment.
pub fn env_spec(config: &Config) -> Result<EnvSpec> {
    Ok(config.env.make(0)?.spec())
}
