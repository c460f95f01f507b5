//! The Prometheus endpoint of a role: the `metrics` recorder rendered at
//! `/metrics` on a listener the caller binds (so port 0 works and the real
//! port is known), with the standard `process_*` metrics (CPU seconds,
//! resident memory, threads, open files) and the tokio runtime's live tasks
//! read at each scrape. Logging is set up by the binary (`cli`), not here.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Tasks alive in the role's tokio runtime: one per connection, stream and
/// background job, so a count that keeps growing is a leak.
pub const RUNTIME_TASKS: &str = "fleet_runtime_tasks";

/// The recorder installed in this process, if any: the recorder is global,
/// and a process that runs more than one role (a test) shares it.
static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// The global metrics recorder, installed on first use with histogram
/// buckets set, so histograms render as real Prometheus histograms that
/// aggregate across processes.
pub fn install_recorder() -> Result<PrometheusHandle> {
    let mut installed = RECORDER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = build_recorder()?;
    *installed = Some(handle.clone());
    Ok(handle)
}

fn build_recorder() -> Result<PrometheusHandle> {
    let buckets: [(&str, &[f64]); 10] = [
        (fleet_replay::metrics::SAMPLE_LATENCY, fleet_replay::metrics::SAMPLE_LATENCY_BUCKETS),
        (fleet_replay::metrics::WAL_SYNC_SECONDS, fleet_replay::metrics::WAL_SYNC_BUCKETS),
        (fleet_actor::metrics::EPISODE_RETURN, fleet_actor::metrics::EPISODE_RETURN_BUCKETS),
        (fleet_actor::metrics::POLICY_LAG, fleet_actor::metrics::POLICY_LAG_BUCKETS),
        (fleet_learner::metrics::POLICY_LAG, fleet_learner::metrics::POLICY_LAG_BUCKETS),
        (fleet_learner::metrics::SEQUENCE_AGE, fleet_learner::metrics::POLICY_LAG_BUCKETS),
        (fleet_learner::metrics::BATCH_WAIT, fleet_learner::metrics::BATCH_WAIT_BUCKETS),
        (fleet_learner::metrics::STATE_STALENESS, fleet_learner::metrics::STALENESS_BUCKETS),
        (fleet_learner::metrics::POLICY_STALENESS, fleet_learner::metrics::STALENESS_BUCKETS),
        (
            fleet_learner::metrics::IMPORTANCE_WEIGHTS,
            fleet_learner::metrics::IMPORTANCE_WEIGHT_BUCKETS,
        ),
    ];
    let mut builder = PrometheusBuilder::new();
    for (name, values) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), values)
            .context("histogram buckets")?;
    }
    builder.install_recorder().context("installing the metrics recorder")
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve_metrics(listener: TcpListener, handle: PrometheusHandle, shutdown: CancellationToken) -> Result<()> {
    let upkeep = handle.clone();
    let upkeep_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = upkeep_shutdown.cancelled() => return,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    let process = std::sync::Arc::new(metrics_process::Collector::default());
    process.describe();
    metrics::describe_gauge!(
        RUNTIME_TASKS,
        metrics::Unit::Count,
        "Tasks alive in the process's tokio runtime (I/O, connections, streams), read at each scrape."
    );
    let runtime = tokio::runtime::Handle::current();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            process.collect();
            metrics::gauge!(RUNTIME_TASKS).set(runtime.metrics().num_alive_tasks() as f64);
            async move { handle.render() }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving /metrics")
}
