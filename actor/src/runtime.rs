//! The actor process: a compute thread that steps the environments and runs
//! the policy, an insert task that streams finished sequences to replay with
//! bounded in-flight items, and a weights task that follows the learner's
//! `WatchWeights` stream. tokio does the I/O; candle runs on the compute
//! thread, fed and drained through bounded channels.
//!
//! Each start of the process draws a run id that marks every sequence it
//! sends, so replay never joins steps from two lives of one actor. On
//! shutdown the compute thread stops at the next step and the insert task
//! sends every finished sequence (queued or unacknowledged) for at most
//! [`SHUTDOWN_FLUSH`]; steps not yet in a finished sequence are dropped
//! (an item has a fixed length). This is not where environments or the
//! policy live (`env`, `policy`), nor how sequences are cut (`sequence`).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use candle_core::{Device, Tensor};
use fleet_agent::{ActorCritic, NetworkConfig, Weights, observations_tensor};
use fleet_proto::auth::AttachToken;
use fleet_proto::connect::{Backoff, connect_or_stop, sleep_or_cancel};
use fleet_proto::pb::{self, parameters_client::ParametersClient, replay_client::ReplayClient};
use fleet_proto::{WeightsAssembler, WeightsError};
use fleet_trajectory::{Actions, Observations};
use futures::StreamExt;
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::ActorConfig;
use crate::env::{EnvConfig, EnvError, VecEnv};
use crate::metrics as m;
use crate::returns::RecentReturns;
use crate::rewards::RewardNormalizer;
use crate::sequence::{Finished, SequenceWriter, StepRecord};

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    /// Environment errors say what they are about themselves.
    #[error(transparent)]
    Env(#[from] crate::env::EnvError),
    #[error("network: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("weights from the learner do not fit this actor's network: {0}")]
    Weights(#[from] fleet_agent::WeightsError),
    #[error("compute thread failed: {0}")]
    Thread(String),
    #[error("{0} (env.name = `{1}`)")]
    NetworkSpec(String, String),
}

/// Everything one actor process needs.
#[derive(Debug, Clone)]
pub struct ActorSettings {
    pub actor_id: u64,
    pub seed: u64,
    pub env: EnvConfig,
    pub network: NetworkConfig,
    pub actor: ActorConfig,
    /// The learner's discount: the return `actor.normalize_rewards` follows.
    pub discount: f64,
    pub replay_address: String,
    pub learner_address: String,
    pub max_message_bytes: usize,
    pub backoff: Backoff,
    /// The shared bearer token sent to replay and the learner (not to an
    /// env bridge). `None`: auth off.
    pub auth: Option<fleet_proto::auth::BearerToken>,
    /// TLS to replay and the learner (not to an env bridge); off by default.
    pub tls: fleet_proto::tls::Tls,
}

/// How long a stopping actor may spend handing its finished sequences to
/// replay, counted from the shutdown signal: under the 10 s a container
/// runtime waits between SIGTERM and SIGKILL by default.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// A fresh random run id, never 0 (0 on the wire means "not said").
pub fn new_run_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// What became of the sequences of one run, for the line logged at exit.
#[derive(Debug, Default)]
struct Tally {
    /// Finished by the writers and handed to the insert task.
    written: AtomicU64,
    acknowledged: AtomicU64,
    rejected: AtomicU64,
    /// Steps acted but in no finished sequence when the compute loop ended.
    unsent_steps: AtomicU64,
}

/// Runs one actor until `shutdown` fires or a fatal error occurs. After
/// `shutdown` the finished sequences are still sent, for at most
/// [`SHUTDOWN_FLUSH`].
pub async fn run(settings: ActorSettings, shutdown: CancellationToken) -> Result<(), ActorError> {
    let run_id = new_run_id();
    tracing::info!(actor_id = settings.actor_id, run_id, "actor starting");
    m::describe();
    // Exported from the start (at 0), so that dashboards and alerts see the
    // series before the first reopen, and native-env actors show none.
    metrics::counter!(m::ENV_BRIDGE_RESTARTS).increment(0);
    let (weights_tx, weights_rx) = watch::channel::<Option<Arc<Weights>>>(None);
    // The compute thread builds the network, so it tells the weights task
    // how large a blob the network can take.
    let (limit_tx, limit_rx) = oneshot::channel::<u64>();
    let newest_version = Arc::new(AtomicU64::new(0));
    let (sequence_tx, sequence_rx) = mpsc::channel::<Finished>(settings.actor.max_in_flight);
    let tally = Arc::new(Tally::default());
    // Ends the insert stream for good: once the flush after `shutdown` has
    // had its time, or at once when the compute thread fails.
    let abandon = CancellationToken::new();
    let flush_deadline = tokio::spawn({
        let (shutdown, abandon) = (shutdown.clone(), abandon.clone());
        async move {
            shutdown.cancelled().await;
            tokio::select! {
                () = tokio::time::sleep(SHUTDOWN_FLUSH) => abandon.cancel(),
                () = abandon.cancelled() => {}
            }
        }
    });

    let weights_task = tokio::spawn(follow_weights(
        settings.clone(),
        limit_rx,
        weights_tx,
        newest_version.clone(),
        shutdown.clone(),
    ));
    let insert_task = tokio::spawn(stream_sequences(settings.clone(), sequence_rx, abandon.clone(), tally.clone()));

    let compute_settings = settings.clone();
    let compute_shutdown = shutdown.clone();
    let compute_tally = tally.clone();
    let compute = tokio::task::spawn_blocking(move || {
        let channels = Channels {
            limit_tx,
            weights_rx,
            sequence_tx,
        };
        act(compute_settings, run_id, channels, newest_version, &compute_tally, compute_shutdown)
    });
    let result = match compute.await {
        Ok(result) => result,
        Err(join) => Err(ActorError::Thread(join.to_string())),
    };
    // The compute loop ends on shutdown or error; stop following weights.
    // The insert task sends what the compute thread finished (its channel
    // is closed now) and ends, or is abandoned at the flush deadline.
    if result.is_err() {
        abandon.cancel();
    }
    shutdown.cancel();
    let _ = weights_task.await;
    let _ = insert_task.await;
    abandon.cancel();
    let _ = flush_deadline.await;
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let (written, acknowledged, rejected) = (load(&tally.written), load(&tally.acknowledged), load(&tally.rejected));
    tracing::info!(
        run_id,
        written,
        acknowledged,
        rejected,
        dropped = written.saturating_sub(acknowledged + rejected),
        unsent_steps = load(&tally.unsent_steps),
        "actor stopped"
    );
    result
}

/// The compute thread's ends of the channels to the I/O tasks.
struct Channels {
    /// Takes the largest weights blob the network can load, once built.
    limit_tx: oneshot::Sender<u64>,
    weights_rx: watch::Receiver<Option<Arc<Weights>>>,
    sequence_tx: mpsc::Sender<Finished>,
}

/// Builds the configured vector of environments: native, or served by the
/// env bridge. Blocks on the runtime, so it runs on the compute thread.
fn make_envs(settings: &ActorSettings, seed: u64, shutdown: &CancellationToken) -> Result<VecEnv, ActorError> {
    let (env, network) = (&settings.env, &settings.network);
    make_vec_env(env, network, settings.actor.num_envs, seed, settings.max_message_bytes, shutdown)
}

/// `num_envs` environments as `env` describes them, checked to fit
/// `network`: what an actor steps, for anyone who plays a policy. Blocks
/// on the current runtime, so call it from outside it.
pub fn make_vec_env(
    env: &EnvConfig,
    network: &NetworkConfig,
    num_envs: usize,
    seed: u64,
    max_message_bytes: usize,
    shutdown: &CancellationToken,
) -> Result<VecEnv, ActorError> {
    let envs = env.make_vec(
        num_envs,
        seed,
        max_message_bytes,
        tokio::runtime::Handle::current(),
        shutdown.clone(),
    )?;
    network
        .check_spec(&envs.spec())
        .map_err(|message| ActorError::NetworkSpec(message, env.name.clone()))?;
    Ok(envs)
}

/// The compute loop: act in every environment, write sequences, hand them on.
fn act(
    settings: ActorSettings,
    run_id: u64,
    channels: Channels,
    newest_version: Arc<AtomicU64>,
    tally: &Tally,
    shutdown: CancellationToken,
) -> Result<(), ActorError> {
    let Channels {
        limit_tx,
        mut weights_rx,
        sequence_tx,
    } = channels;
    let config = &settings.actor;
    let seed = settings.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(settings.actor_id);
    let mut envs = match make_envs(&settings, seed, &shutdown) {
        Err(ActorError::Env(EnvError::Stopped)) => return Ok(()),
        made => made?,
    };
    let spec = envs.spec();
    tracing::info!(env = %settings.env.name, %spec, "environments ready");
    let network = ActorCritic::new(spec, &settings.network, seed, &Device::Cpu)?;
    // A failed send means the weights task has stopped: shutting down.
    let _ = limit_tx.send(max_weights_bytes(&network));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xA5A5_A5A5);
    let mut writers: Vec<SequenceWriter> = (0..config.num_envs)
        .map(|env| {
            SequenceWriter::new(
                config.sequence_length(),
                config.sequence_period(),
                spec,
                network.state_spec(),
                settings.actor_id,
                env as u64,
            )
            .with_run_id(run_id)
        })
        .collect();

    // Act only with the learner's weights, so every behaviour version is real.
    tracing::info!(learner = %settings.learner_address, "waiting for the first weights");
    let first = tokio::runtime::Handle::current().block_on(async {
        tokio::select! {
            _ = shutdown.cancelled() => None,
            weights = weights_rx.wait_for(Option::is_some) => weights.ok().and_then(|w| w.clone()),
        }
    });
    let Some(first) = first else { return Ok(()) };
    first.load_into(&network)?;
    let mut version = first.version;
    metrics::gauge!(m::WEIGHTS_VERSION).set(version as f64);
    tracing::info!(version, num_envs = config.num_envs, "acting");

    let env_steps = metrics::counter!(m::ENV_STEPS);
    let episodes = metrics::counter!(m::EPISODES);
    let episode_return = metrics::histogram!(m::EPISODE_RETURN);
    let return_recent = metrics::gauge!(m::EPISODE_RETURN_RECENT);
    let return_spread = [
        metrics::gauge!(m::EPISODE_RETURN_RECENT_MIN),
        metrics::gauge!(m::EPISODE_RETURN_RECENT_MEDIAN),
        metrics::gauge!(m::EPISODE_RETURN_RECENT_MAX),
    ];
    let return_step_weighted = metrics::gauge!(m::EPISODE_RETURN_STEP_WEIGHTED);
    let return_window_steps = metrics::gauge!(m::RETURN_WINDOW_STEPS);
    let policy_lag = metrics::histogram!(m::POLICY_LAG);
    // Sequences held between this thread and replay's acknowledgement: up
    // to `max_in_flight` in the channel, `max_in_flight` unacknowledged in
    // the insert task, and one this thread waits to hand over. The insert
    // task takes them down.
    let pending_sequences = metrics::gauge!(m::SEQUENCES_PENDING);
    let mut recent_returns = RecentReturns::new(config.return_window, config.return_window_steps);
    let n = config.num_envs;
    let distribution = network.distribution();
    // As the policy chose them (recorded), and squashed for the environments.
    let mut actions = Actions::empty(spec.action);
    let mut env_actions = Actions::empty(spec.action);
    let o = spec.observation_size();
    let mut observations_before = Observations::zeros(&spec.observation, n * o);
    let mut flags_before = Vec::with_capacity(n);
    let mut reward_normalizer = config.normalize_rewards.then(|| RewardNormalizer::new(n, settings.discount));
    // With a recurrent core: the state per environment (reset by `step`
    // where an episode starts) and, per step, what each acted from.
    let mut state = network.initial_state(n)?;
    let state_width = network.state_spec().map_or(0, |s| s.width());
    let mut states_before: Vec<f32> = Vec::with_capacity(n * state_width);

    while !shutdown.is_cancelled() {
        if weights_rx.has_changed().unwrap_or(false)
            && let Some(w) = weights_rx.borrow_and_update().clone()
            && w.version != version
        {
            w.load_into(&network)?;
            version = w.version;
            metrics::gauge!(m::WEIGHTS_VERSION).set(version as f64);
        }
        let observations = observations_tensor(envs.observations(), n, o, &Device::Cpu)?;
        let is_first: Vec<f32> = envs.is_first().iter().map(|&f| f32::from(u8::from(f))).collect();
        let is_first = Tensor::from_vec(is_first, n, &Device::Cpu)?;
        // The state each environment acts from, recorded with its step.
        states_before.clear();
        if network.is_recurrent() {
            states_before.extend(state.to_flat()?.flatten_all()?.to_vec1::<f32>()?);
        }
        let (output, next_state) = network.step(&observations, &is_first, &state)?;
        // Detached, or every step's state would keep the whole history of
        // the episode's computation graph alive.
        state = next_state.detach();
        let logits = output.logits.flatten_all()?.to_vec1::<f32>()?;
        let num_actions = spec.policy_width();
        distribution.sample(&logits, &mut rng, &mut actions);

        // Record x_t and its flags before stepping; the reward arrives with the step.
        observations_before.as_mut().copy_from(envs.observations());
        flags_before.clear();
        flags_before.extend((0..n).map(|i| (envs.is_first()[i], envs.terminated()[i], envs.truncated()[i])));
        let report = match envs.step(distribution.env_actions(&actions, &mut env_actions)) {
            Err(EnvError::Stopped) => return Ok(()),
            report => report?,
        };
        env_steps.increment(report.real_steps as u64);
        let rewards = match &mut reward_normalizer {
            Some(normalizer) => normalizer.scale(envs.rewards(), envs.is_first()),
            None => envs.rewards(),
        };
        for (i, &(is_first, terminated, truncated)) in flags_before.iter().enumerate() {
            let record = StepRecord {
                observation: observations_before.slice(i * o..(i + 1) * o),
                action: actions.get(i),
                reward: rewards[i],
                is_first,
                terminated,
                truncated,
                behaviour_logits: &logits[i * num_actions..(i + 1) * num_actions],
                behaviour_version: version,
                state: &states_before[i * state_width..(i + 1) * state_width],
            };
            if let Some(finished) = writers[i].push(&record) {
                let oldest = finished.sequence.behaviour_versions.iter().copied().min().unwrap_or(version);
                policy_lag.record(newest_version.load(Ordering::Relaxed).saturating_sub(oldest) as f64);
                tally.written.fetch_add(1, Ordering::Relaxed);
                pending_sequences.increment(1.0);
                // Blocks while replay holds back (backpressure); fails once
                // the insert task has ended (abandoned at shutdown).
                if sequence_tx.blocking_send(finished).is_err() {
                    return Ok(()); // the insert task has stopped: shutting down
                }
            }
        }
        for episode in &report.finished {
            episodes.increment(1);
            episode_return.record(episode.episode_return);
            recent_returns.push(episode.episode_return, u64::from(episode.length));
        }
        if !report.finished.is_empty() {
            return_recent.set(recent_returns.episode_mean().unwrap_or(0.0));
            if let Some(spread) = recent_returns.episode_spread() {
                for (gauge, value) in return_spread.iter().zip([spread.min, spread.median, spread.max]) {
                    gauge.set(value);
                }
            }
            let (_, steps) = recent_returns.step_weighted();
            return_step_weighted.set(recent_returns.step_weighted_mean().unwrap_or(0.0));
            return_window_steps.set(steps as f64);
        }
    }
    let unsent: usize = writers.iter().map(SequenceWriter::unsent_steps).sum();
    tally.unsent_steps.store(unsent as u64, Ordering::Relaxed);
    Ok(())
}

/// Follows the learner's weights: reconnects with backoff, assembles chunks
/// and publishes each complete newer version to the compute thread.
///
/// Each `WatchWeights` call asks for one version only (`single_version`)
/// and is read to its end, then made again after it: the learner then sends
/// whatever is newest when the actor is ready for it. A stream left open would carry every version the
/// learner publishes, and once the actor fell behind, the versions queued
/// in the connection's buffers would reach it tens of updates late (the
/// policy lag of one actor then climbed to 60–80 versions while the other's
/// stayed at 10). Nor is a call dropped after its version: with the next
/// version already on the way, the dropped stream's late frames make h2
/// reset it again, and a learner publishing hundreds of versions a second
/// brought the connection to h2's limit of such resets (GOAWAY
/// `too_many_internal_resets`) within a minute.
///
/// Versions never go backwards: a learner that comes back from a
/// checkpoint older than the weights the actor holds (it published more
/// before it died) serves versions the actor has passed, and the actor
/// keeps acting with its own until the learner publishes a newer one.
///
/// `limit` brings the largest blob the actor's network can load (see
/// [`max_weights_bytes`]); no weights are asked for before it comes, and a
/// learner that declares a larger blob is refused before anything is
/// allocated for it.
async fn follow_weights(
    settings: ActorSettings,
    limit: oneshot::Receiver<u64>,
    weights_tx: watch::Sender<Option<Arc<Weights>>>,
    newest_version: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let limit = tokio::select! {
        _ = shutdown.cancelled() => return,
        limit = limit => match limit {
            Ok(limit) => limit,
            // The compute thread failed before building the network.
            Err(_) => return,
        },
    };
    tracing::debug!(limit, "largest weights blob this actor takes");
    loop {
        let Some(channel) = connect_or_stop(&settings.learner_address, &settings.tls, settings.backoff, &shutdown).await else {
            return;
        };
        metrics::counter!(m::RECONNECTS, "peer" => "learner").increment(1);
        let mut client = ParametersClient::with_interceptor(channel, AttachToken::new(settings.auth.clone()))
            .max_decoding_message_size(settings.max_message_bytes);
        // Each new connection starts from the learner's current version:
        // asking for anything newer than what it has published is refused.
        let mut after_version = 0;
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = client.watch_weights(pb::WatchWeightsRequest { after_version, single_version: true }) => r,
            };
            let mut stream = match stream {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    tracing::warn!(%status, "WatchWeights failed; reconnecting");
                    sleep_or_cancel(settings.backoff.max, &shutdown).await;
                    break;
                }
            };
            match sole_version(&mut stream, limit, &shutdown).await {
                Ok(Some((version, bytes))) => {
                    let held = newest_version.load(Ordering::Relaxed);
                    if version > held {
                        newest_version.store(version, Ordering::Relaxed);
                        weights_tx.send_replace(Some(Arc::new(Weights { version, bytes })));
                    } else {
                        tracing::debug!(version, held, "the learner is behind the weights held; keeping them");
                    }
                    after_version = version;
                }
                Ok(None) => return,
                Err(reason) => {
                    tracing::warn!(%reason, "weights stream failed; reconnecting");
                    sleep_or_cancel(settings.backoff.initial, &shutdown).await;
                    break;
                }
            }
        }
    }
}

/// Room for a safetensors header beside the parameters: per tensor its
/// name (counted apart), dtype, shape and offsets as JSON, and once the
/// version metadata and the padding.
const HEADER_BYTES_PER_TENSOR: u64 = 256;
const HEADER_BYTES: u64 = 4096;

/// The largest weights blob `network` can load: its parameters' bytes plus
/// room for the header. A learner with the same network config publishes
/// less than this; anything larger could not load anyway.
pub fn max_weights_bytes(network: &ActorCritic) -> u64 {
    let tensors: u64 = network
        .params()
        .iter()
        .map(|(name, var)| (var.elem_count() * var.dtype().size_in_bytes()) as u64 + name.len() as u64 + HEADER_BYTES_PER_TENSOR)
        .sum();
    tensors + HEADER_BYTES
}

/// Reads the one version of at most `limit` bytes a single-version watch
/// carries, then the stream's end; `None` on shutdown. From a learner that
/// keeps streaming (one older than `single_version`) the wait for the end
/// lasts until its next version's first chunk, which is let go: the actor
/// then follows one version per publication instead of as fast as it reads.
async fn sole_version(
    stream: &mut (impl futures::Stream<Item = Result<pb::WeightsChunk, tonic::Status>> + Unpin),
    limit: u64,
    shutdown: &CancellationToken,
) -> Result<Option<(u64, bytes::Bytes)>, String> {
    let Some(version) = next_version(stream, limit, shutdown).await? else {
        return Ok(None);
    };
    // The version is whole whatever follows; a failed end shows on the next call.
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(None),
        _ = stream.next() => {}
    }
    Ok(Some(version))
}

/// Reads chunks until one whole version of at most `limit` bytes is
/// assembled; `None` on shutdown.
async fn next_version(
    stream: &mut (impl futures::Stream<Item = Result<pb::WeightsChunk, tonic::Status>> + Unpin),
    limit: u64,
    shutdown: &CancellationToken,
) -> Result<Option<(u64, bytes::Bytes)>, String> {
    let mut assembler = WeightsAssembler::new(limit);
    loop {
        let chunk = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            chunk = stream.next() => chunk,
        };
        match chunk {
            Some(Ok(chunk)) => match assembler.push(chunk) {
                Ok(Some(version)) => return Ok(Some(version)),
                Ok(None) => {}
                Err(error @ WeightsError::TooLarge { .. }) => {
                    return Err(format!(
                        "bad weights stream: {error} (this actor's network holds at most that much; does the learner run the same network config?)"
                    ));
                }
                Err(error) => return Err(format!("bad weights stream: {error}")),
            },
            Some(Err(status)) => return Err(status.to_string()),
            None => return Err("the learner closed the weights stream".into()),
        }
    }
}

/// Streams sequences to replay. At most `max_in_flight` are unacknowledged;
/// those are resent after a reconnect, so a replay restart loses nothing.
/// While replay is away (reconnecting, with jittered backoff) the task takes
/// no new sequences: the channel fills and the compute thread blocks, so an
/// actor holds at most `2 × max_in_flight + 1` finished sequences however
/// long replay stays down (`SEQUENCES_PENDING`).
/// Within one connection a sequence that continues its writer's previous one
/// leaves out the steps they share (replay has them already).
///
/// A sequence replay can never take is dropped and counted
/// (`SEQUENCES_REJECTED`), never resent: one replay refuses as invalid, as
/// larger than its `max_message_bytes` or as over a table's byte budget
/// (INVALID_ARGUMENT, OUT_OF_RANGE, RESOURCE_EXHAUSTED; acks come in order,
/// so it is the oldest unacknowledged one). Any other end of the stream
/// (UNAVAILABLE, a lost connection) resends everything unacknowledged.
///
/// Once the compute thread has stopped (`sequence_rx` closed) the task sends
/// what is left and ends when every sequence is acknowledged or refused;
/// `abandon` ends it at once, dropping whatever is unacknowledged.
async fn stream_sequences(
    settings: ActorSettings,
    mut sequence_rx: mpsc::Receiver<Finished>,
    abandon: CancellationToken,
    tally: Arc<Tally>,
) {
    let max_in_flight = settings.actor.max_in_flight;
    let mut pending: VecDeque<Finished> = VecDeque::with_capacity(max_in_flight);
    let sent = metrics::counter!(m::SEQUENCES_SENT);
    let acked = metrics::counter!(m::SEQUENCES_ACKED);
    let rejected = metrics::counter!(m::SEQUENCES_REJECTED);
    let pending_sequences = metrics::gauge!(m::SEQUENCES_PENDING);
    // No more sequences will come: flushing.
    let mut closed = false;
    loop {
        if closed && pending.is_empty() {
            return;
        }
        let Some(channel) = connect_or_stop(&settings.replay_address, &settings.tls, settings.backoff, &abandon).await else {
            return;
        };
        metrics::counter!(m::RECONNECTS, "peer" => "replay").increment(1);
        // No limit on what this client encodes: a sequence too large for
        // replay reaches it and is refused with OUT_OF_RANGE after the acks of
        // the items before it, and dropped below. Refused here instead, it
        // would break the stream with an anonymous INTERNAL error and be
        // resent forever.
        let mut client = ReplayClient::with_interceptor(channel, AttachToken::new(settings.auth.clone()))
            .max_decoding_message_size(settings.max_message_bytes);
        let (request_tx, request_rx) = mpsc::channel::<pb::InsertRequest>(max_in_flight);
        // Writers that have sent a sequence on this connection.
        let mut started: HashSet<u64> = HashSet::new();
        let mut request = |finished: &Finished| {
            let continued = !started.insert(finished.writer);
            let mut request = finished.request(&settings.actor.table, continued);
            request.also_tables.clone_from(&settings.actor.also_tables);
            request
        };
        // Resend what the previous connection did not get acknowledged.
        for finished in &pending {
            if request_tx.send(request(finished)).await.is_err() {
                break;
            }
            sent.increment(1);
        }
        let responses = tokio::select! {
            _ = abandon.cancelled() => return,
            r = client.insert(tokio_stream::wrappers::ReceiverStream::new(request_rx)) => r,
        };
        let mut responses = match responses {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::warn!(%status, "Insert stream failed; reconnecting");
                // A refused token stays refused until someone fixes it: ask
                // again now and then, not ten times a second.
                let pause = if status.code() == tonic::Code::Unauthenticated {
                    settings.backoff.max
                } else {
                    settings.backoff.jittered(0, &mut rand::rng())
                };
                sleep_or_cancel(pause, &abandon).await;
                continue;
            }
        };
        loop {
            if closed && pending.is_empty() {
                tracing::debug!("every finished sequence is acknowledged");
                return;
            }
            tokio::select! {
                _ = abandon.cancelled() => return,
                sequence = sequence_rx.recv(), if !closed && pending.len() < max_in_flight => {
                    let Some(finished) = sequence else {
                        closed = true;
                        continue;
                    };
                    let req = request(&finished);
                    pending.push_back(finished);
                    if request_tx.send(req).await.is_err() {
                        break;
                    }
                    sent.increment(1);
                }
                response = responses.next() => match response {
                    Some(Ok(_ack)) => {
                        pending.pop_front();
                        acked.increment(1);
                        pending_sequences.decrement(1.0);
                        tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(status))
                        if matches!(
                            status.code(),
                            tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
                        ) =>
                    {
                        // Acks come in order, so the refused item is the oldest pending one.
                        tracing::error!(%status, "replay refused a sequence; dropping it");
                        pending.pop_front();
                        rejected.increment(1);
                        pending_sequences.decrement(1.0);
                        tally.rejected.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Some(Err(status)) => {
                        tracing::warn!(%status, "Insert stream ended; reconnecting");
                        break;
                    }
                    None => {
                        tracing::info!("replay closed the insert stream; reconnecting");
                        break;
                    }
                },
            }
        }
        // Jittered, as every reconnect: actors that lost replay together
        // do not all come back at the same instant.
        let pause = settings.backoff.jittered(0, &mut rand::rng());
        sleep_or_cancel(pause, &abandon).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_agent::EnvSpec;

    /// The bound holds what a learner with the same network publishes, and
    /// is not much more than the parameters themselves.
    #[test]
    fn the_weights_bound_fits_the_network_and_little_more() {
        let spec = EnvSpec::vector(4, 2);
        for network in [
            NetworkConfig::default(),
            NetworkConfig {
                hidden: vec![256, 256],
                ..NetworkConfig::default()
            },
        ] {
            let network = ActorCritic::new(spec, &network, 1, &Device::Cpu).unwrap();
            let blob = Weights::from_network(&network, u64::MAX).unwrap().bytes.len() as u64;
            let params: u64 = network.params().iter().map(|(_, v)| v.elem_count() as u64 * 4).sum();
            let limit = max_weights_bytes(&network);
            assert!(blob <= limit, "a {blob}-byte blob over the {limit}-byte bound");
            assert!(limit <= params + 64 * 1024, "{limit} bytes for {params} bytes of parameters");
        }
    }

    /// A learner that declares a blob larger than the network is refused at
    /// its first chunk, with the sizes in the reason; before, any size up to
    /// 4 GiB was reserved and then waited for.
    #[tokio::test]
    async fn a_declared_blob_larger_than_the_network_is_refused() {
        let network = ActorCritic::new(EnvSpec::vector(4, 2), &NetworkConfig::default(), 1, &Device::Cpu).unwrap();
        let limit = max_weights_bytes(&network);
        let weights = Weights::from_network(&network, 3).unwrap();
        let mut chunks = fleet_proto::chunk_weights(3, &weights.bytes);
        chunks[0].total_bytes = 3 << 30;
        chunks[0].last = false;
        // Then the stream stays open, as a learner that sends nothing more.
        let mut stream = futures::stream::iter(chunks.into_iter().take(1).map(Ok)).chain(futures::stream::pending());
        let shutdown = CancellationToken::new();
        let reason = tokio::time::timeout(std::time::Duration::from_secs(5), next_version(&mut stream, limit, &shutdown))
            .await
            .expect("refused at once, not waiting for the rest")
            .unwrap_err();
        assert!(reason.contains(&format!("declares {} bytes", 3u64 << 30)), "{reason}");
        assert!(reason.contains(&format!("{limit} bytes")), "{reason}");

        // The real blob is taken whole.
        let mut stream = futures::stream::iter(fleet_proto::chunk_weights(3, &weights.bytes).into_iter().map(Ok));
        let taken = next_version(&mut stream, limit, &shutdown).await.unwrap();
        assert_eq!(taken, Some((3, weights.bytes)));
    }
}
