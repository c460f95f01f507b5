//! `fleet replay` as a library function: the replay tables served over gRPC
//! on a listener the caller bound, with `/metrics` on another, until the
//! caller's shutdown future fires, behind the bearer token when `[auth]`
//! configures one and over TLS when `[tls]` does. The tables, sampling and
//! the service itself live in the `fleet-replay` crate; this only wires the
//! config to it.

use std::future::Future;
use std::path::PathBuf;

use anyhow::Result;
use fleet_proto::auth::RequireToken;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::role;

/// Serves replay on `grpc` and its metrics on `metrics` until `shutdown`
/// fires, then stops gracefully (checkpointing if configured) and returns.
/// `restore`: start from the newest complete checkpoint under this directory
/// (an error if there is none); `None` starts from `replay.checkpoint_dir`'s
/// newest, if any.
pub async fn run(
    config: Config,
    restore: Option<PathBuf>,
    grpc: TcpListener,
    metrics: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    run_announcing(config, restore, grpc, metrics, shutdown, || {}).await
}

/// [`run`], calling `ready` once the tables are restored (or made) and
/// before the first request is served; a start that fails before then
/// returns its error without calling it.
pub async fn run_announcing(
    config: Config,
    restore: Option<PathBuf>,
    grpc: TcpListener,
    metrics: TcpListener,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce() + Send,
) -> Result<()> {
    let restore = restore.map_or(fleet_replay::Restore::Auto, fleet_replay::Restore::From);
    let auth = RequireToken::new(config.auth.token.clone());
    let tls = config.tls.loaded.clone();
    role::serve(metrics, shutdown, |token| {
        fleet_replay::serve_announcing(config.replay, restore, grpc, auth, tls, token.cancelled_owned(), ready)
    })
    .await
}
