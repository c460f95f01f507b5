//! `fleet learner` as a library function: learns from the replay service at
//! an address and serves its weights over gRPC on a listener the caller
//! bound, with `/metrics` on another, until the caller's shutdown future
//! fires; with a bearer token configured it sends it to replay and requires
//! it of its own callers, and with TLS configured both its ends use it.
//! Batching, V-trace and the `Parameters` service live in the
//! `fleet-learner` crate; this only builds its settings from the config.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_proto::connect::Backoff;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::role;

/// Learns from replay at `replay_address` (host:port), serves weights on
/// `grpc` and metrics on `metrics` until `shutdown` fires, then stops
/// gracefully (writing a final checkpoint if configured) and returns.
pub async fn run(
    config: Config,
    replay_address: String,
    grpc: TcpListener,
    metrics: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    run_announcing(config, replay_address, grpc, metrics, shutdown, || {}).await
}

/// [`run`], calling `ready` once `learner.checkpoint_dir` (when set) has
/// proved writable; a directory it cannot write is an error naming it,
/// returned before `ready` is called and before anything is served.
pub async fn run_announcing(
    config: Config,
    replay_address: String,
    grpc: TcpListener,
    metrics: TcpListener,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<()> {
    let dir = &config.learner.checkpoint_dir;
    if !dir.is_empty() {
        fleet_learner::checkpoint::check_writable(std::path::Path::new(dir))
            .with_context(|| format!("learner.checkpoint_dir {dir} is not a directory this learner can write"))?;
    }
    ready();
    let spec = config.resolved_env_spec().await?;
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
        auth: config.auth.token,
        tls: config.tls.loaded,
    };
    role::serve(metrics, shutdown, |token| fleet_learner::run(settings, grpc, token)).await
}
