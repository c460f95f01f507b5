//! The learner process: serves `Parameters`, pulls batches from replay
//! through the prefetching tasks, runs updates on a dedicated thread,
//! publishing weights after every `publish_every` updates, and sends
//! replayed sequences' new priorities back in the background.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_agent::{EnvSpec, NetworkConfig, Weights, select_device};
use fleet_proto::auth::{BearerToken, RequireToken};
use fleet_proto::connect::Backoff;
use fleet_proto::pb::parameters_server::ParametersServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::config::LearnerConfig;
use crate::learner::{Learner, UpdateError, UpdateStats};
use crate::metrics as m;
use crate::parameters::ParametersService;
use crate::prefetch::{Prefetched, prefetch};
use crate::priorities::{self, PrioritySender};
use crate::stats_log::{BatchFacts, StatsLog};

#[derive(Debug, thiserror::Error)]
pub enum LearnerError {
    #[error("invalid learner config: {0}")]
    Config(String),
    #[error(transparent)]
    Device(#[from] fleet_agent::DeviceError),
    #[error("learner: {0}")]
    Update(#[from] UpdateError),
    #[error(transparent)]
    Weights(#[from] fleet_agent::WeightsError),
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    #[error("learner.stats_file: {0}")]
    StatsFile(String),
    #[error("update thread failed: {0}")]
    Thread(String),
    /// Replay refuses the batches asked for, and asking again cannot help.
    #[error("sampling from replay: {0}")]
    Sampling(String),
}

#[derive(Debug, Clone)]
pub struct LearnerSettings {
    pub seed: u64,
    pub spec: EnvSpec,
    pub network: NetworkConfig,
    pub learner: LearnerConfig,
    pub replay_address: String,
    pub max_message_bytes: usize,
    /// How long replay may hold one `Sample` batch before answering DEADLINE_EXCEEDED.
    pub sample_timeout: Duration,
    pub backoff: Backoff,
    /// The shared bearer token: sent to replay, and required of callers of
    /// `Parameters` (not of the health service). `None`: auth off.
    pub auth: Option<BearerToken>,
    /// TLS on the connections to replay and on the `Parameters` server
    /// (health included); off by default.
    pub tls: fleet_proto::tls::Tls,
}

/// Runs the learner until `shutdown` fires.
pub async fn run(settings: LearnerSettings, listener: TcpListener, shutdown: CancellationToken) -> Result<(), LearnerError> {
    m::describe();
    settings.learner.validate().map_err(LearnerError::Config)?;
    let device = select_device(&settings.learner.device)?;
    tracing::info!(device = ?device, "learner device");
    let mut learner = Learner::new(settings.spec, &settings.network, settings.learner.clone(), settings.seed, device)?;
    let checkpoints = (!settings.learner.checkpoint_dir.is_empty()).then(|| PathBuf::from(&settings.learner.checkpoint_dir));
    if let Some(dir) = &checkpoints {
        match learner.restore_latest(dir)? {
            Some(path) => tracing::info!(
                path = %path.display(),
                version = learner.version(),
                updates = learner.updates(),
                frames = learner.frames(),
                optimizer_steps = learner.optimizer_steps(),
                "resumed from checkpoint"
            ),
            None => tracing::info!(dir = %dir.display(), "no checkpoint yet; starting fresh"),
        }
    }
    let (weights_tx, weights_rx) = watch::channel(Arc::new(learner.weights()?));
    metrics::gauge!(m::WEIGHTS_VERSION).set(learner.version() as f64);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ParametersServer<ParametersService>>().await;
    let parameters = ParametersServer::new(ParametersService::new(weights_rx))
        .max_encoding_message_size(settings.max_message_bytes)
        .max_decoding_message_size(settings.max_message_bytes);
    let parameters = InterceptedService::new(parameters, RequireToken::new(settings.auth.clone()));
    tracing::info!(
        bearer_token_required = settings.auth.is_some(),
        tls = settings.tls.is_on(),
        mutual_tls = settings.tls.is_mutual(),
        "serving Parameters"
    );
    let server_shutdown = shutdown.clone();
    let server = tokio::spawn(
        fleet_proto::connect::server(&settings.tls)?
            .add_service(health_service)
            .add_service(parameters)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move { server_shutdown.cancelled().await }),
    );

    let frames = Arc::new(AtomicU64::new(learner.frames()));
    let (batch_tx, batch_rx) = mpsc::channel(settings.learner.prefetch_batches);
    let sampler = tokio::spawn(prefetch(settings.clone(), frames.clone(), batch_tx, shutdown.clone()));
    let (priority_tx, priority_rx) = priorities::channel();
    let priority_sender = tokio::spawn(priorities::send_priorities(settings.clone(), priority_rx, shutdown.clone()));
    let train_shutdown = shutdown.clone();
    let schedule = Schedule {
        publish_every: settings.learner.publish_every,
        max_policy_lag: settings.learner.max_policy_lag,
        stats_log: StatsLogTarget {
            path: (!settings.learner.stats_file.is_empty()).then(|| PathBuf::from(&settings.learner.stats_file)),
            every: settings.learner.stats_every,
        },
        checkpoints,
        checkpoint_interval: Duration::from_secs_f64(settings.learner.checkpoint_interval_secs),
    };
    let outputs = Outputs {
        weights: weights_tx,
        priorities: priority_tx,
        frames,
    };
    let training = tokio::task::spawn_blocking(move || train(learner, batch_rx, outputs, schedule, train_shutdown));

    let result = match training.await {
        Ok(result) => result,
        Err(join) => Err(LearnerError::Thread(join.to_string())),
    };
    shutdown.cancel();
    let sampled = sampler.await;
    let _ = priority_sender.await;
    // A sampler that stopped for good ended the update loop (no batches);
    // its reason is the learner's.
    if let Ok(Err(reason)) = sampled {
        return Err(LearnerError::Sampling(reason));
    }
    match server.await {
        Ok(served) => served?,
        Err(join) => return Err(LearnerError::Thread(join.to_string())),
    }
    result
}

/// When the update loop publishes weights, writes checkpoints and
/// diagnostics, and which sequences it refuses as stale.
struct Schedule {
    publish_every: u64,
    max_policy_lag: u64,
    stats_log: StatsLogTarget,
    checkpoints: Option<PathBuf>,
    checkpoint_interval: Duration,
}

/// Where the diagnostics log goes, if anywhere.
struct StatsLogTarget {
    path: Option<PathBuf>,
    every: u64,
}

impl StatsLogTarget {
    fn open(&self, layers: &[String]) -> Result<Option<StatsLog>, LearnerError> {
        let Some(path) = &self.path else { return Ok(None) };
        StatsLog::open(path, self.every, layers.to_vec())
            .map(Some)
            .map_err(|e| LearnerError::StatsFile(format!("{}: {e}", path.display())))
    }
}

/// Where the update loop's results go besides the learner itself.
struct Outputs {
    weights: watch::Sender<Arc<Weights>>,
    priorities: PrioritySender,
    /// Env frames consumed so far, for the samplers' β schedule.
    frames: Arc<AtomicU64>,
}

/// The update loop, then a final checkpoint when it ends.
fn train(
    mut learner: Learner,
    batch_rx: mpsc::Receiver<Prefetched>,
    outputs: Outputs,
    schedule: Schedule,
    shutdown: CancellationToken,
) -> Result<(), LearnerError> {
    let result = update_loop(&mut learner, batch_rx, outputs, &schedule, shutdown);
    if let Some(dir) = &schedule.checkpoints {
        save_checkpoint(&learner, dir)?;
    }
    result
}

fn save_checkpoint(learner: &Learner, dir: &std::path::Path) -> Result<(), LearnerError> {
    let path = learner.save_checkpoint(dir)?;
    metrics::counter!(m::CHECKPOINTS).increment(1);
    metrics::gauge!(m::CHECKPOINT_TIME).set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    tracing::info!(
        path = %path.display(),
        version = learner.version(),
        updates = learner.updates(),
        frames = learner.frames(),
        optimizer_steps = learner.optimizer_steps(),
        "checkpoint written"
    );
    Ok(())
}

/// One batch in, one update, weights out.
fn update_loop(
    learner: &mut Learner,
    mut batch_rx: mpsc::Receiver<Prefetched>,
    outputs: Outputs,
    schedule: &Schedule,
    shutdown: CancellationToken,
) -> Result<(), LearnerError> {
    let mut last_checkpoint = Instant::now();
    let batch_wait = metrics::histogram!(m::BATCH_WAIT);
    let policy_lag = metrics::histogram!(m::POLICY_LAG);
    let sequence_age = metrics::histogram!(m::SEQUENCE_AGE);
    let stale_dropped = metrics::counter!(m::STALE_DROPPED);
    let frames = metrics::counter!(m::FRAMES);
    let updates = metrics::counter!(m::UPDATES);
    let layers = learner.param_names();
    let mut stats_log = schedule.stats_log.open(&layers)?;
    loop {
        let waited = Instant::now();
        let Some(prefetched) = batch_rx.blocking_recv() else {
            return flush(stats_log.as_mut());
        };
        batch_wait.record(waited.elapsed().as_secs_f64());
        if shutdown.is_cancelled() {
            return flush(stats_log.as_mut());
        }
        let version = learner.version();
        let ages = prefetched.batch.sequence_ages(version, learner.burn_in());
        let fresh = &ages[..prefetched.replay_from];
        for &age in fresh {
            sequence_age.record(age as f64);
        }
        let mut facts = BatchFacts {
            age_min: fresh.iter().copied().min().unwrap_or(0),
            age_mean: fresh.iter().sum::<u64>() as f64 / fresh.len().max(1) as f64,
            age_max: fresh.iter().copied().max().unwrap_or(0),
            age_by_actor: ages_by_actor(&prefetched.batch.actor_ids[..fresh.len()], fresh),
            ..BatchFacts::default()
        };
        let (kept, dropped) = prefetched.without_stale(&ages, schedule.max_policy_lag);
        stale_dropped.increment(dropped as u64);
        let Some(prefetched) = kept else { continue };
        let batch = &prefetched.batch;
        facts.dropped_stale = dropped;
        facts.sequences = batch.batch_size;
        facts.actors = batch.actor_ids.iter().collect::<std::collections::HashSet<_>>().len();
        let learning = (learner.burn_in() * batch.batch_size)..(batch.steps - 1) * batch.batch_size;
        for i in learning {
            let behaviour = batch.behaviour_versions[i];
            if fleet_trajectory::is_decision(batch.terminated[i], batch.truncated[i]) {
                policy_lag.record(version.saturating_sub(behaviour) as f64);
            }
        }
        let updates_before = learner.updates();
        let stats = match learner.update(batch) {
            Ok(stats) => stats,
            Err(UpdateError::Spec(message)) => {
                tracing::error!(%message, "refusing batch");
                metrics::counter!(m::BAD_BATCHES).increment(1);
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let skipped = stats.attempted_steps - stats.applied_steps;
        if skipped > 0 {
            tracing::warn!(
                grad_norm = stats.step.grad_norm,
                skipped,
                "non-finite gradient; optimiser steps skipped"
            );
            metrics::counter!(m::SKIPPED_UPDATES).increment(skipped);
        }
        if stats.applied_steps == 0 {
            continue;
        }
        updates.increment(stats.applied_steps);
        frames.increment(batch.learning_frames(learner.burn_in()));
        outputs.frames.store(learner.frames(), Ordering::Relaxed);
        outputs
            .priorities
            .send(prefetched.replayed_keys(), &stats.priorities[prefetched.replay_from..]);
        if let Some(log) = stats_log.as_mut() {
            log.record(learner.updates(), learner.version(), learner.frames(), &stats, &facts)
                .map_err(|e| LearnerError::StatsFile(e.to_string()))?;
        }
        record_metrics(&stats, &layers);
        if !stats.staleness.is_empty() {
            let n = stats.staleness.len() as f32;
            let (value, policy) = stats.staleness.iter().fold((0.0, 0.0), |(v, p), s| (v + s.0 / n, p + s.1 / n));
            tracing::debug!(value, policy, burn_in = learner.burn_in(), "recurrent state staleness");
        }
        if let Some(dir) = &schedule.checkpoints
            && last_checkpoint.elapsed() >= schedule.checkpoint_interval
        {
            save_checkpoint(learner, dir)?;
            last_checkpoint = Instant::now();
        }
        if learner.updates() / schedule.publish_every != updates_before / schedule.publish_every {
            outputs.weights.send_replace(Arc::new(learner.weights()?));
            metrics::gauge!(m::WEIGHTS_VERSION).set(learner.version() as f64);
        }
    }
}

/// Mean age per actor, in actor order.
fn ages_by_actor(actors: &[u64], ages: &[u64]) -> Vec<(u64, f64)> {
    let mut sums: std::collections::BTreeMap<u64, (u64, u64)> = std::collections::BTreeMap::new();
    for (&actor, &age) in actors.iter().zip(ages) {
        let entry = sums.entry(actor).or_default();
        *entry = (entry.0 + age, entry.1 + 1);
    }
    sums.into_iter().map(|(actor, (sum, n))| (actor, sum as f64 / n as f64)).collect()
}

fn flush(log: Option<&mut StatsLog>) -> Result<(), LearnerError> {
    match log {
        Some(log) => log.flush().map_err(|e| LearnerError::StatsFile(e.to_string())),
        None => Ok(()),
    }
}

/// The latest update's gauges and histograms.
fn record_metrics(stats: &UpdateStats, layers: &[String]) {
    for (kind, value) in [
        ("policy", stats.policy_loss),
        ("baseline", stats.baseline_loss),
        ("entropy", -stats.entropy),
        ("total", stats.total_loss),
    ] {
        metrics::gauge!(m::LOSS, "kind" => kind).set(value as f64);
    }
    let d = &stats.diagnostics;
    metrics::gauge!(m::ENTROPY).set(stats.entropy as f64);
    metrics::gauge!(m::GRAD_NORM).set(stats.step.grad_norm);
    metrics::gauge!(m::RELATIVE_STEP).set(stats.step.relative_step());
    for (layer, &norm) in layers.iter().zip(&stats.step.layer_grad_norms) {
        metrics::gauge!(m::LAYER_GRAD_NORM, "layer" => layer.clone()).set(norm);
    }
    metrics::gauge!(m::CLIPPED_RHO).set(stats.clipped_rho_fraction as f64);
    metrics::gauge!(m::CLIP_FRACTION).set(stats.clip_fraction as f64);
    metrics::gauge!(m::RHO, "stat" => "mean").set(d.rho_mean as f64);
    metrics::gauge!(m::RHO, "stat" => "max").set(d.rho_max as f64);
    metrics::gauge!(m::LOGIT_GAP, "stat" => "mean").set(d.logit_gap_mean as f64);
    metrics::gauge!(m::LOGIT_GAP, "stat" => "max").set(d.logit_gap_max as f64);
    metrics::gauge!(m::VALUE_MEAN).set(d.value_mean as f64);
    metrics::gauge!(m::MEAN_ABS_ADVANTAGE).set(stats.mean_abs_advantage as f64);
    metrics::gauge!(m::LEARNING_RATE).set(stats.learning_rate);
    for &(value, policy) in &stats.staleness {
        metrics::histogram!(m::STATE_STALENESS).record(f64::from(value));
        metrics::histogram!(m::POLICY_STALENESS).record(f64::from(policy));
    }
}
