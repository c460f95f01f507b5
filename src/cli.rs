//! What the `fleet` binary does around a role's library `run`: logging to
//! stderr, binding the listeners, the shutdown future (SIGINT, SIGTERM, and
//! stdin closing when started by a launcher), and the ready line on stdout.
//! Roles never call this; a test that runs a role in process does its own.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::process::Ready;

/// `tracing` to stderr, filtered by `RUST_LOG`, or by `default_filter`
/// where it is unset (`-q` and `-v` choose it).
pub fn init_logging(default_filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Binds `address`; `what` names the listener in the error.
pub async fn bind(address: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the {what} listener on {address}"))
}

/// A future that completes on SIGINT or SIGTERM, and on stdin EOF when
/// `exit_with_stdin` (set by `fleet run`, so children never outlive their
/// launcher). The handlers are installed before this returns, so a signal
/// that arrives before the future is first polled still counts.
pub fn shutdown_signal(exit_with_stdin: bool) -> Result<impl Future<Output = ()> + Send + 'static> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("interrupted; shutting down"),
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
    Ok(shutdown.cancelled_owned())
}

/// Prints the ready line (the one line on stdout a launcher waits for) and
/// logs the same.
pub fn announce_ready(role: &str, grpc: Option<&TcpListener>, metrics: &TcpListener) -> Result<()> {
    ready_announcer(role, grpc, metrics)?();
    Ok(())
}

/// [`announce_ready`] prepared while the listeners are at hand, to be
/// called once the role is ready (replay: once its tables are restored).
pub fn ready_announcer(role: &str, grpc: Option<&TcpListener>, metrics: &TcpListener) -> Result<impl FnOnce() + Send + 'static> {
    let grpc = match grpc {
        Some(listener) => listener.local_addr().context("the gRPC listener's address")?.to_string(),
        None => "-".to_string(),
    };
    let metrics = metrics.local_addr().context("the metrics listener's address")?;
    let ready = Ready {
        role: role.to_string(),
        grpc,
        metrics: metrics.to_string(),
    };
    Ok(move || {
        println!("{ready}");
        tracing::info!(role = %ready.role, grpc = %ready.grpc, metrics = %format!("http://{metrics}/metrics"), "ready");
    })
}
