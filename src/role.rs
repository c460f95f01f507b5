//! What every role's `run` does around its own service: install the metrics
//! recorder, serve `/metrics` on the listener it was given, and turn the
//! caller's shutdown future into the one cancellation token the role's tasks
//! watch. Binding, signals and the ready line are the caller's business
//! (`cli` for the `fleet` binary, the test itself in tests).

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// How long `/metrics` may take to close its connections once the role has stopped.
const METRICS_GRACE: Duration = Duration::from_secs(2);

/// Runs `role` (given the cancellation token) with `/metrics` served on
/// `metrics`, until the role ends by itself or `shutdown` fires and the role
/// has then wound down. `/metrics` keeps answering until the role has
/// stopped, so its final values can still be read while it stops.
pub(crate) async fn serve<F, E>(
    metrics: TcpListener,
    shutdown: impl Future<Output = ()>,
    role: impl FnOnce(CancellationToken) -> F,
) -> Result<()>
where
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let handle = telemetry::install_recorder()?;
    let token = CancellationToken::new();
    let mut metrics = tokio::spawn(telemetry::serve_metrics(metrics, handle, token.clone()));
    let role = role(token.clone());
    tokio::pin!(role);
    let result = tokio::select! {
        result = &mut role => result,
        () = shutdown => {
            token.cancel();
            role.await
        }
    };
    token.cancel();
    match tokio::time::timeout(METRICS_GRACE, &mut metrics).await {
        Ok(Ok(Err(error))) => tracing::warn!(error = %format!("{error:#}"), "/metrics ended with an error"),
        Ok(_) => {}
        Err(_) => metrics.abort(),
    }
    Ok(result?)
}
