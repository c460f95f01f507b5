//! Environments stepped in another process through the `fleet.v1.Env`
//! service (the env bridge): any Gymnasium or envpool id, served by the
//! Python server in `envbridge/`.
//!
//! [`BridgedEnvs`] is a [`BatchEnv`] whose one step is one round trip: all
//! actions out as one tensor, all observations back as one. It either owns
//! a local server ([`LocalServer`], started from `env.bridge_command` on a
//! free loopback port and killed with the actor) or talks to one already
//! running at `env.remote`.
//!
//! When the server is lost mid-run (killed, crashed, connection gone), every
//! episode in flight is cut: its current observation is delivered again as
//! the episode's last, marked `truncated`, so no episode is ever stitched
//! to what a new server produces. The next step restarts the server (a
//! local one), with backoff, and starts new episodes everywhere. Errors that
//! a restart cannot fix (an id that cannot be made, a space fleet cannot
//! represent, a spec that changed) stop the actor with a message naming
//! the environment.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use fleet_agent::EnvSpec;
use fleet_proto::connect::{Backoff, connect_or_stop, endpoint, sleep_or_cancel};
use fleet_proto::pb::{self, env_client::EnvClient};
use fleet_proto::tls::Tls;
use fleet_trajectory::{ActionBounds, ActionSpec, Actions, FrameShape, ObservationSpec, Observations};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::vector::{BatchEnv, Timestep, env_seed};
use super::{EnvConfig, EnvError, Preprocess};
use crate::metrics as m;

/// How long a local server may take to print its `listening on` line
/// (importing Gymnasium and ale-py takes seconds on a cold cache).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Times a vector is opened before start-up gives up on a server that
/// keeps going away while opening.
const START_ATTEMPTS: u32 = 5;

/// The line a local server prints once it listens, followed by its address.
const LISTENING: &str = "listening on ";

/// A bridge server this actor started and owns: killed when dropped, and
/// it exits by itself when this process dies (its stdin closes).
#[derive(Debug)]
pub struct LocalServer {
    child: tokio::process::Child,
    address: String,
}

impl LocalServer {
    /// Starts `command` (program and leading arguments) listening on a free
    /// loopback port and waits for it to say where.
    pub async fn start(command: &[String], max_message_bytes: usize) -> Result<Self, EnvError> {
        let shown = command.join(" ");
        let (program, args) = command
            .split_first()
            .ok_or_else(|| EnvError::Bridge("env.bridge_command is empty: it names the env bridge server to run".into()))?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--exit-with-stdin", "--max-message-bytes"])
            .arg(max_message_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                EnvError::Bridge(format!(
                    "could not start the env bridge `{shown}`: {error} (install it with `pip install ./envbridge`, \
                     or point env.bridge_command at it)"
                ))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| EnvError::Bridge(format!("env bridge `{shown}`: no stdout")))?;
        let mut lines = BufReader::new(stdout).lines();
        let wait_for_address = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(address) = line.strip_prefix(LISTENING) {
                    return Ok(Some(address.trim().to_owned()));
                }
            }
            Ok::<_, std::io::Error>(None)
        };
        let address = match tokio::time::timeout(SERVER_START_TIMEOUT, wait_for_address).await {
            Ok(Ok(Some(address))) => address,
            Ok(Ok(None)) => {
                let status = child.wait().await.map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(EnvError::Bridge(format!(
                    "env bridge `{shown}` exited ({status}) before listening; its error is above"
                )));
            }
            Ok(Err(error)) => return Err(EnvError::Bridge(format!("env bridge `{shown}`: reading its stdout: {error}"))),
            Err(_) => {
                return Err(EnvError::Bridge(format!(
                    "env bridge `{shown}` did not start listening within {}s",
                    SERVER_START_TIMEOUT.as_secs()
                )));
            }
        };
        // Keep draining stdout so that the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, address })
    }

    /// `host:port` the server listens on.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The server's process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Why a call to the bridge failed.
#[derive(Debug)]
enum Failure {
    /// Retrying cannot help: the actor stops with this error.
    Fatal(EnvError),
    /// The server or the connection went away; a new one may work.
    Lost(String),
}

impl From<EnvError> for Failure {
    fn from(error: EnvError) -> Self {
        Self::Fatal(error)
    }
}

/// One `Env.Run` stream: a vector of environments on the server.
struct Session {
    requests: mpsc::Sender<pb::EnvRequest>,
    responses: tonic::Streaming<pb::EnvResponse>,
}

impl Session {
    async fn open_on(
        channel: tonic::transport::Channel,
        open: pb::EnvOpen,
        max_message_bytes: usize,
    ) -> Result<(Self, pb::EnvSpecMessage), Failure> {
        let mut client = EnvClient::new(channel)
            .max_encoding_message_size(max_message_bytes)
            .max_decoding_message_size(max_message_bytes);
        let (requests, request_rx) = mpsc::channel(1);
        let env_id = open.env_id.clone();
        let first = pb::EnvRequest {
            kind: Some(pb::env_request::Kind::Open(open)),
        };
        requests
            .send(first)
            .await
            .map_err(|_| Failure::Lost("env bridge request channel closed".into()))?;
        let responses = client
            .run(tokio_stream::wrappers::ReceiverStream::new(request_rx))
            .await
            .map_err(|status| failure(&env_id, "open", &status))?
            .into_inner();
        let mut session = Self { requests, responses };
        match session.next(&env_id, "open").await? {
            pb::env_response::Kind::Spec(spec) => Ok((session, spec)),
            pb::env_response::Kind::Timestep(_) => Err(Failure::Fatal(EnvError::Bridge(format!(
                "env \"{env_id}\": the bridge answered open with a timestep, not a spec"
            )))),
        }
    }

    async fn call(&mut self, env_id: &str, kind: pb::env_request::Kind) -> Result<pb::EnvTimestep, Failure> {
        let what = match kind {
            pb::env_request::Kind::Open(_) => "open",
            pb::env_request::Kind::Reset(_) => "reset",
            pb::env_request::Kind::Step(_) => "step",
        };
        if self.requests.send(pb::EnvRequest { kind: Some(kind) }).await.is_err() {
            return Err(Failure::Lost(format!("env \"{env_id}\": the bridge stream closed")));
        }
        match self.next(env_id, what).await? {
            pb::env_response::Kind::Timestep(timestep) => Ok(timestep),
            pb::env_response::Kind::Spec(_) => Err(Failure::Fatal(EnvError::Bridge(format!(
                "env \"{env_id}\": the bridge answered {what} with a spec, not a timestep"
            )))),
        }
    }

    async fn next(&mut self, env_id: &str, what: &str) -> Result<pb::env_response::Kind, Failure> {
        match self.responses.message().await {
            Ok(Some(pb::EnvResponse { kind: Some(kind) })) => Ok(kind),
            Ok(Some(pb::EnvResponse { kind: None })) => Err(Failure::Fatal(EnvError::Bridge(format!(
                "env \"{env_id}\": the bridge answered {what} with an empty message"
            )))),
            Ok(None) => Err(Failure::Lost(format!(
                "env \"{env_id}\": the bridge ended the stream during {what}"
            ))),
            Err(status) => Err(failure(env_id, what, &status)),
        }
    }
}

/// INVALID_ARGUMENT is the server refusing what was asked (a bad id, an
/// unsupported space, a malformed action): fatal. Anything else means the
/// server or its environment went away.
fn failure(env_id: &str, what: &str, status: &tonic::Status) -> Failure {
    if status.code() == tonic::Code::InvalidArgument {
        Failure::Fatal(EnvError::Bridge(status.message().to_owned()))
    } else {
        Failure::Lost(format!("env \"{env_id}\": {what} failed: {}: {}", status.code(), status.message()))
    }
}

/// The spec fleet's network sees for what the bridge serves. Float
/// observations of any shape are flattened to one vector; u8 ones must be
/// `[C, H, W]` images; actions must be discrete.
pub fn spec_from_message(env_id: &str, message: &pb::EnvSpecMessage) -> Result<BridgedSpec, EnvError> {
    let shape: Vec<usize> = message.observation_shape.iter().map(|&d| d as usize).collect();
    let refuse = |what: String| EnvError::Bridge(format!("env \"{env_id}\": {what}"));
    // One observation must fit in one message (and its size in a usize):
    // no timestep of a larger one could ever arrive, and the actor sizes its
    // buffers from this shape.
    let size = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_OBSERVATION_VALUES)
        .ok_or_else(|| {
            refuse(format!(
                "observations of shape {shape:?} are larger than the {MAX_OBSERVATION_VALUES} values one message can carry"
            ))
        })?;
    let observation = match pb::Dtype::try_from(message.observation_dtype) {
        Ok(pb::Dtype::F32) => ObservationSpec::Vector { size },
        Ok(pb::Dtype::U8) => match shape[..] {
            [channels, height, width] => ObservationSpec::Frames(FrameShape { channels, height, width }),
            _ => {
                return Err(refuse(format!(
                    "u8 observations of shape {shape:?}: fleet takes u8 images as [C, H, W]"
                )));
            }
        },
        _ => {
            return Err(refuse(format!(
                "observations of dtype {} are not supported (f32 vectors or u8 images)",
                message.observation_dtype
            )));
        }
    };
    if observation.size() == 0 {
        return Err(refuse(format!("observations of shape {shape:?} hold no values")));
    }
    let (action, bounds) = match message.num_actions {
        0 => {
            let dims = message
                .action_shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?));
            let dims = match dims {
                Some(dims) if (1..=MAX_CONTINUOUS_DIMS).contains(&dims) => dims,
                _ => {
                    return Err(refuse(format!(
                        "continuous actions of shape {:?}: fleet takes 1..={MAX_CONTINUOUS_DIMS} values per action",
                        message.action_shape
                    )));
                }
            };
            let bounds = ActionBounds {
                low: message.action_low.clone(),
                high: message.action_high.clone(),
            };
            if bounds.low.len() != dims || bounds.high.len() != dims {
                return Err(refuse(format!(
                    "continuous actions of shape {:?} with {} lower and {} upper bounds",
                    message.action_shape,
                    bounds.low.len(),
                    bounds.high.len()
                )));
            }
            bounds
                .check()
                .map_err(|why| refuse(format!("continuous actions of shape {:?}: {why}", message.action_shape)))?;
            (ActionSpec::Continuous { dims }, Some(bounds))
        }
        num_actions if num_actions as usize > MAX_DISCRETE_ACTIONS => {
            return Err(refuse(format!(
                "{num_actions} discrete actions: fleet takes at most {MAX_DISCRETE_ACTIONS} (the policy head and every step's logits grow with it)"
            )));
        }
        num_actions => (
            ActionSpec::Discrete {
                num_actions: num_actions as usize,
            },
            None,
        ),
    };
    Ok(BridgedSpec {
        spec: EnvSpec { observation, action },
        bounds,
        action_shape: message.action_shape.iter().map(|&d| d as usize).collect(),
    })
}

/// What the bridge said of its environments: their spec, and for
/// continuous actions their bounds and the shape each action travels in.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgedSpec {
    pub spec: EnvSpec,
    pub bounds: Option<ActionBounds>,
    /// Gymnasium's shape of one continuous action (its values are the
    /// spec's `dims`, row-major); empty for discrete actions.
    pub action_shape: Vec<usize>,
}

/// The most values a continuous action may have: far above any robot's
/// joints (Humanoid has 17), far below a policy head of gigabytes.
const MAX_CONTINUOUS_DIMS: usize = 1 << 12;

/// The most discrete actions a bridged environment may declare: far above
/// any real action set (Atari's full set is 18), far below what would make
/// the actor build a network of gigabytes on a peer's word.
const MAX_DISCRETE_ACTIONS: usize = 1 << 16;

/// The most values one observation may hold: a gRPC message is at most
/// 4 GiB, so no larger observation could ever arrive in a timestep.
const MAX_OBSERVATION_VALUES: usize = u32::MAX as usize;

/// Where the bridge runs and what it is asked to build.
#[derive(Debug, Clone)]
struct Target {
    env_id: String,
    /// A server that is already running (`env.remote`), or `None` to start one.
    remote: Option<String>,
    command: Vec<String>,
    options: BTreeMap<String, String>,
    atari: Option<pb::AtariPreprocessing>,
    /// Streams the vector is split across (each a sub-vector of its own).
    streams: usize,
    max_message_bytes: usize,
}

/// The environments of stream `k` of `streams` in a vector of `num_envs`:
/// contiguous, sizes differing by at most one.
fn stream_range(num_envs: usize, streams: usize, k: usize) -> std::ops::Range<usize> {
    let start = |k: usize| k * num_envs / streams;
    start(k)..start(k + 1)
}

impl Target {
    fn new(config: &EnvConfig, max_message_bytes: usize) -> Self {
        Self {
            env_id: config.name.clone(),
            remote: Some(config.remote.clone()).filter(|address| !address.is_empty()),
            command: config.bridge_command.clone(),
            options: config.options.clone(),
            atari: (config.preprocess == Preprocess::Atari).then(|| config.atari.message()),
            streams: config.bridge_streams.max(1),
            max_message_bytes,
        }
    }

    fn open_message(&self, num_envs: usize, seed: u64) -> pb::EnvOpen {
        pb::EnvOpen {
            env_id: self.env_id.clone(),
            num_envs: num_envs as u32,
            seed,
            options: self.options.clone().into_iter().collect(),
            atari: self.atari,
        }
    }

    /// Starts (or reaches) a server and opens `num_envs` environments on it,
    /// split across `streams` streams (environment i seeded with seed + i
    /// whatever its stream). A remote server is waited for, with backoff,
    /// until `shutdown`.
    async fn open(
        &self,
        num_envs: usize,
        streams: usize,
        seed: u64,
        backoff: Backoff,
        shutdown: &CancellationToken,
    ) -> Result<Option<Opened>, Failure> {
        // A remote server serves every stream; locally each stream gets a
        // server process of its own, so that streams step in parallel even
        // where stepping holds Python's GIL.
        let (servers, channels) = match &self.remote {
            Some(address) => {
                // The env bridge speaks plain text (TLS is for fleet's own
                // services): a remote one belongs on a private network.
                let Some(channel) = connect_or_stop(address, &Tls::default(), backoff, shutdown).await else {
                    return Ok(None);
                };
                (Vec::new(), vec![channel; streams])
            }
            None => {
                let starting = (0..streams).map(|_| LocalServer::start(&self.command, self.max_message_bytes));
                let servers = futures::future::join_all(starting)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()?;
                let mut channels = Vec::with_capacity(streams);
                for server in &servers {
                    let address = server.address();
                    tracing::info!(env = %self.env_id, address, pid = server.id(), "env bridge started");
                    let channel = endpoint(address, &Tls::default())
                        .map_err(|error| Failure::Fatal(EnvError::Bridge(format!("env bridge address `{address}`: {error}"))))?
                        .connect()
                        .await
                        .map_err(|error| Failure::Lost(format!("connecting to the env bridge at {address}: {error}")))?;
                    channels.push(channel);
                }
                (servers, channels)
            }
        };
        let opening = channels.into_iter().enumerate().map(|(k, channel)| {
            let range = stream_range(num_envs, streams, k);
            let open = self.open_message(range.len(), seed + range.start as u64);
            Session::open_on(channel, open, self.max_message_bytes)
        });
        let mut sessions = Vec::with_capacity(streams);
        let mut spec = None;
        for (k, opened) in futures::future::join_all(opening).await.into_iter().enumerate() {
            let (session, message) = opened?;
            let expected = stream_range(num_envs, streams, k).len();
            if message.num_envs as usize != expected {
                return Err(Failure::Fatal(EnvError::Bridge(format!(
                    "env \"{}\": asked for {expected} environments, the bridge opened {}",
                    self.env_id, message.num_envs
                ))));
            }
            let this = spec_from_message(&self.env_id, &message)?;
            if k == 0 {
                tracing::info!(env = %self.env_id, backend = %message.backend, spec = %this.spec, num_envs, streams, "env bridge opened");
            }
            if spec.as_ref().is_some_and(|first| *first != this) {
                return Err(Failure::Fatal(EnvError::Bridge(format!(
                    "env \"{}\": the bridge's streams disagree on the spec",
                    self.env_id
                ))));
            }
            spec = Some(this);
            sessions.push(session);
        }
        let spec = spec.ok_or_else(|| Failure::Fatal(EnvError::Bridge("no streams to open".into())))?;
        Ok(Some(Opened { servers, sessions, spec }))
    }
}

/// A vector opened on the bridge: the servers this actor owns (none for a
/// remote one) and one session per stream.
struct Opened {
    servers: Vec<LocalServer>,
    sessions: Vec<Session>,
    spec: BridgedSpec,
}

/// The seed of the `opening`-th vector opened for an actor seeded with
/// `seed` (each reopen gets new episodes). The bridge seeds environment i
/// with the vector's seed + i: a hashed base keeps the vectors of actors with
/// consecutive seeds apart, and below 2^31 it suits environments seeded
/// through a legacy 32-bit RandomState (MinAtar) or int32 (envpool).
fn vector_seed(seed: u64, opening: u64, num_envs: usize) -> u64 {
    env_seed(seed, opening as usize) % ((1 << 31) - num_envs as u64)
}

/// Asks the bridge what `config`'s environment looks like, opening one
/// environment (and starting a local server for the time it takes).
pub async fn probe_spec(config: &EnvConfig, max_message_bytes: usize) -> Result<EnvSpec, EnvError> {
    let target = Target::new(config, max_message_bytes);
    let never = CancellationToken::new();
    let unreachable = |reason: String| EnvError::Bridge(format!("env \"{}\": {reason}", config.name));
    match target.open(1, 1, 0, Backoff::default(), &never).await {
        Ok(Some(opened)) => Ok(opened.spec.spec),
        Ok(None) => Err(unreachable("stopped before the bridge answered".into())),
        Err(Failure::Fatal(error)) => Err(error),
        Err(Failure::Lost(reason)) => Err(unreachable(reason)),
    }
}

/// A vector of environments served by the env bridge.
pub struct BridgedEnvs {
    target: Target,
    runtime: Handle,
    num_envs: usize,
    /// The actor's seed, from which every opening of the vector draws its own.
    seed: u64,
    spec: BridgedSpec,
    /// Kept alive with the sessions: dropping them kills the servers.
    servers: Vec<LocalServer>,
    /// One per stream; empty after the server was lost, until the next step
    /// reopens it.
    sessions: Vec<Session>,
    streams: usize,
    /// Times the vector has been reopened, to vary the seeds of new episodes.
    restarts: u64,
    backoff: Backoff,
    shutdown: CancellationToken,
}

impl BridgedEnvs {
    /// Opens `num_envs` environments as `config` names them, seeded from
    /// `seed` (through [`env_seed`]). Blocks on `runtime`, so call it from outside the runtime
    /// (the actor's compute thread). What the bridge refuses (an id, a
    /// space) is returned at once; a server lost while opening is started
    /// again up to [`START_ATTEMPTS`] times.
    pub fn open(
        config: &EnvConfig,
        num_envs: usize,
        seed: u64,
        max_message_bytes: usize,
        runtime: Handle,
        shutdown: CancellationToken,
    ) -> Result<Self, EnvError> {
        let target = Target::new(config, max_message_bytes);
        let backoff = Backoff::default();
        let first_seed = vector_seed(seed, 0, num_envs);
        let streams = target.streams.min(num_envs.max(1));
        // A server lost while opening (killed, or too slow under load) is
        // started again a few times; what it refuses is final at once.
        let mut attempt = 0;
        let Opened { servers, sessions, spec } = loop {
            match runtime.block_on(target.open(num_envs, streams, first_seed, backoff, &shutdown)) {
                Ok(Some(opened)) => break opened,
                Ok(None) => return Err(EnvError::Stopped),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Lost(reason)) if attempt + 1 >= START_ATTEMPTS => return Err(EnvError::Bridge(reason)),
                Err(Failure::Lost(reason)) => {
                    let delay = backoff.delay(attempt);
                    tracing::warn!(env = %target.env_id, %reason, retry_in = ?delay, "env bridge failed while opening");
                    runtime.block_on(sleep_or_cancel(delay, &shutdown));
                    attempt += 1;
                }
            }
        };
        Ok(Self {
            target,
            runtime,
            num_envs,
            seed,
            spec,
            servers,
            sessions,
            streams,
            restarts: 0,
            backoff,
            shutdown,
        })
    }

    /// Sends each stream its part of a reset (`actions` `None`) or a step,
    /// all in flight together, and writes the answers into `timestep`.
    fn call(&mut self, actions: Option<&Actions>, timestep: &mut Timestep) -> Result<(), Failure> {
        if self.sessions.is_empty() {
            return Err(Failure::Lost("no bridge session".into()));
        }
        let (num_envs, streams) = (self.num_envs, self.streams);
        let env_id = &self.target.env_id;
        let action_shape = &self.spec.action_shape;
        let calls = self.sessions.iter_mut().enumerate().map(|(k, session)| {
            let range = stream_range(num_envs, streams, k);
            let kind = match actions {
                None => pb::env_request::Kind::Reset(pb::EnvReset {}),
                Some(actions) => pb::env_request::Kind::Step(pb::EnvStep {
                    actions: Some(wire_actions(actions, range, action_shape)),
                }),
            };
            session.call(env_id, kind)
        });
        // Every stream must answer before any is written: a vector half
        // stepped would mix two steps in one timestep.
        let answers = self
            .runtime
            .block_on(futures::future::join_all(calls))
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        for (k, answer) in answers.into_iter().enumerate() {
            write_timestep(env_id, &self.spec.spec, answer, timestep, stream_range(num_envs, streams, k))?;
        }
        Ok(())
    }

    /// Cuts every episode in flight: its current observation becomes its
    /// last, `truncated`, with reward 0. Observations already last stay so.
    fn cut_episodes(timestep: &mut Timestep) {
        for env_index in 0..timestep.num_envs() {
            timestep.rewards[env_index] = 0.0;
            if !timestep.is_last(env_index) {
                timestep.is_first[env_index] = false;
                timestep.truncated[env_index] = true;
            }
        }
    }

    /// Reopens the vector (restarting a local server) with backoff until it
    /// answers a reset, which becomes the current step.
    fn reopen(&mut self, timestep: &mut Timestep) -> Result<(), EnvError> {
        self.sessions.clear();
        self.servers.clear();
        let mut attempt = 0;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(EnvError::Stopped);
            }
            self.restarts += 1;
            metrics::counter!(m::ENV_BRIDGE_RESTARTS).increment(1);
            // New seeds, or a restarted vector would replay the episodes it started with.
            let seed = vector_seed(self.seed, self.restarts, self.num_envs);
            let opened = self
                .runtime
                .block_on(self.target.open(self.num_envs, self.streams, seed, self.backoff, &self.shutdown));
            let failure = match opened {
                Ok(None) => return Err(EnvError::Stopped),
                Ok(Some(opened)) if opened.spec == self.spec => {
                    self.servers = opened.servers;
                    self.sessions = opened.sessions;
                    match self.call(None, timestep) {
                        Ok(()) => {
                            tracing::warn!(env = %self.target.env_id, attempt, "env bridge reopened; new episodes started");
                            return Ok(());
                        }
                        Err(failure) => failure,
                    }
                }
                Ok(Some(opened)) => {
                    return Err(EnvError::SpecMismatch {
                        name: self.target.env_id.clone(),
                        expected: self.spec.spec,
                        found: opened.spec.spec,
                    });
                }
                Err(failure) => failure,
            };
            match failure {
                Failure::Fatal(error) => return Err(error),
                Failure::Lost(reason) => {
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(env = %self.target.env_id, %reason, retry_in = ?delay, "env bridge reopen failed");
                    self.sessions.clear();
                    self.servers.clear();
                    let shutdown = self.shutdown.clone();
                    self.runtime.block_on(sleep_or_cancel(delay, &shutdown));
                    attempt += 1;
                }
            }
        }
    }
}

impl BatchEnv for BridgedEnvs {
    fn spec(&self) -> EnvSpec {
        self.spec.spec
    }

    fn num_envs(&self) -> usize {
        self.num_envs
    }

    fn action_bounds(&self) -> Option<ActionBounds> {
        self.spec.bounds.clone()
    }

    fn reset(&mut self, timestep: &mut Timestep) -> Result<(), EnvError> {
        match self.call(None, timestep) {
            Ok(()) => Ok(()),
            Err(Failure::Fatal(error)) => Err(error),
            Err(Failure::Lost(reason)) => Err(EnvError::Bridge(reason)),
        }
    }

    fn step(&mut self, actions: &Actions, timestep: &mut Timestep) -> Result<usize, EnvError> {
        if self.sessions.is_empty() {
            self.reopen(timestep)?;
            return Ok(0);
        }
        let acted = (0..self.num_envs).filter(|&env_index| !timestep.is_last(env_index)).count();
        match self.call(Some(actions), timestep) {
            Ok(()) => Ok(acted),
            Err(Failure::Fatal(error)) => Err(error),
            Err(Failure::Lost(reason)) => {
                tracing::warn!(env = %self.target.env_id, %reason, "env bridge lost; episodes in flight end truncated");
                self.sessions.clear();
                self.servers.clear();
                Self::cut_episodes(timestep);
                Ok(0)
            }
        }
    }
}

/// The action tensor of environments `envs`: `[n]` i64 indices, or `[n,
/// action_shape…]` f32 values.
fn wire_actions(actions: &Actions, envs: std::ops::Range<usize>, action_shape: &[usize]) -> pb::Tensor {
    match actions {
        Actions::Discrete(indices) => {
            let indices: Vec<i64> = indices[envs.clone()].iter().map(|&a| a as i64).collect();
            pb::Tensor::from_i64(&[envs.len()], &indices)
        }
        Actions::Continuous { dims, values } => {
            let shape: Vec<usize> = std::iter::once(envs.len()).chain(action_shape.iter().copied()).collect();
            pb::Tensor::from_f32(&shape, &values[envs.start * dims..envs.end * dims])
        }
    }
}

/// Copies a timestep from the bridge into environments `envs` of
/// `timestep`, checking that it holds one entry per environment of the
/// spec's shape.
fn write_timestep(
    env_id: &str,
    spec: &EnvSpec,
    message: pb::EnvTimestep,
    timestep: &mut Timestep,
    envs: std::ops::Range<usize>,
) -> Result<(), EnvError> {
    let n = envs.len();
    let bad = |what: String| EnvError::Bridge(format!("env \"{env_id}\": the bridge sent {what}"));
    for (name, len) in [
        ("rewards", message.rewards.len()),
        ("is_first flags", message.is_first.len()),
        ("terminated flags", message.terminated.len()),
        ("truncated flags", message.truncated.len()),
    ] {
        if len != n {
            return Err(bad(format!("{len} {name} for {n} environments")));
        }
    }
    let tensor = message.observations.ok_or_else(|| bad("a timestep without observations".into()))?;
    tensor.check_bytes().map_err(|error| bad(format!("bad observations: {error}")))?;
    let expected = n * spec.observation_size();
    let found = tensor.num_elements().map_err(|error| bad(format!("bad observations: {error}")))?;
    if found != expected {
        return Err(bad(format!(
            "observations of shape {:?}, expected {n} × {}",
            tensor.shape, spec.observation
        )));
    }
    // Rewards and float observations are computed with: a NaN or an
    // infinity from the environment is refused here, naming the
    // environment, rather than poisoning sequences (which replay would
    // refuse one by one) or the policy's input.
    if let Some((i, reward)) = message.rewards.iter().enumerate().find(|(_, r)| !r.is_finite()) {
        return Err(bad(format!("reward {reward} for environment {}", envs.start + i)));
    }
    let size = spec.observation_size();
    let values = envs.start * size..envs.end * size;
    match &mut timestep.observations {
        Observations::F32(all) => {
            tensor
                .check(pb::Dtype::F32)
                .map_err(|error| bad(format!("bad observations: {error}")))?;
            let decoded = || tensor.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            // Checked before anything is written: a refused timestep leaves
            // the last good one in place.
            if let Some((i, value)) = decoded().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(bad(format!(
                    "observation value {value} (environment {}, element {})",
                    envs.start + i / size.max(1),
                    i % size.max(1)
                )));
            }
            for (slot, value) in all[values].iter_mut().zip(decoded()) {
                *slot = value;
            }
        }
        Observations::U8(all) => {
            let bytes = tensor.as_u8().map_err(|error| bad(format!("bad observations: {error}")))?;
            all[values].copy_from_slice(bytes);
        }
    }
    timestep.rewards[envs.clone()].copy_from_slice(&message.rewards);
    timestep.is_first[envs.clone()].copy_from_slice(&message.is_first);
    timestep.terminated[envs.clone()].copy_from_slice(&message.terminated);
    timestep.truncated[envs].copy_from_slice(&message.truncated);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What a lost bridge does to the current step, for other modules' tests.
    pub(crate) fn cut(timestep: &mut Timestep) {
        BridgedEnvs::cut_episodes(timestep);
    }

    fn spec_message(dtype: pb::Dtype, shape: &[u64], num_actions: u32) -> pb::EnvSpecMessage {
        pb::EnvSpecMessage {
            observation_dtype: dtype as i32,
            observation_shape: shape.to_vec(),
            num_actions,
            num_envs: 1,
            backend: "gymnasium".into(),
            ..Default::default()
        }
    }

    #[test]
    fn bridge_specs_flatten_float_observations_and_keep_images() {
        let spec = |env_id: &str, message: pb::EnvSpecMessage| spec_from_message(env_id, &message).unwrap().spec;
        let vector = spec("gym:CartPole-v1", spec_message(pb::Dtype::F32, &[4], 2));
        assert_eq!(vector, EnvSpec::vector(4, 2));
        let grid = spec("gym:Grid", spec_message(pb::Dtype::F32, &[3, 5], 4));
        assert_eq!(grid, EnvSpec::vector(15, 4));
        let atari = spec("gym:ALE/Pong-v5", spec_message(pb::Dtype::U8, &[4, 84, 84], 6));
        assert_eq!(
            atari,
            EnvSpec::frames(
                FrameShape {
                    channels: 4,
                    height: 84,
                    width: 84
                },
                6
            )
        );
    }

    /// A Box of floats is a continuous action of its size, with its
    /// bounds; a shape of more axes travels as it is and is flattened for
    /// the policy.
    #[test]
    fn bridge_specs_take_continuous_actions_with_their_bounds() {
        let continuous = |shape: &[u64], low: Vec<f32>, high: Vec<f32>| pb::EnvSpecMessage {
            action_shape: shape.to_vec(),
            action_low: low,
            action_high: high,
            ..spec_message(pb::Dtype::F32, &[3], 0)
        };
        let pendulum = spec_from_message("gym:Pendulum-v1", &continuous(&[1], vec![-2.0], vec![2.0])).unwrap();
        assert_eq!(pendulum.spec.action, ActionSpec::Continuous { dims: 1 });
        assert_eq!(pendulum.bounds, Some(ActionBounds::uniform(1, -2.0, 2.0)));
        let grid = spec_from_message("gym:Arm", &continuous(&[2, 3], vec![-1.0; 6], vec![1.0; 6])).unwrap();
        assert_eq!(
            (grid.spec.action, &grid.action_shape[..]),
            (ActionSpec::Continuous { dims: 6 }, &[2, 3][..])
        );
        let wire = wire_actions(
            &Actions::Continuous {
                dims: 6,
                values: (0..18).map(|v| v as f32).collect(),
            },
            1..3,
            &grid.action_shape,
        );
        assert_eq!((wire.dims(), wire.to_f32().unwrap()[0]), (vec![2, 2, 3], 6.0));
        for (message, expected) in [
            (
                continuous(&[1], vec![-2.0], vec![f32::INFINITY]),
                "dimension 0 has bounds [-2, inf]",
            ),
            (continuous(&[2], vec![-1.0], vec![1.0]), "1 lower and 1 upper bounds"),
            (continuous(&[0], vec![], vec![]), "1..=4096 values"),
            (continuous(&[1 << 40], vec![], vec![]), "1..=4096 values"),
        ] {
            let error = spec_from_message("gym:Pendulum-v1", &message).unwrap_err().to_string();
            assert!(error.contains("gym:Pendulum-v1") && error.contains(expected), "{error}");
        }
    }

    #[test]
    fn bridge_specs_refuse_what_the_network_cannot_take_naming_the_env() {
        let flat_bytes = spec_message(pb::Dtype::U8, &[128], 9);
        let error = spec_from_message("gym:ALE/Pong-ram-v5", &flat_bytes).unwrap_err().to_string();
        assert!(error.contains("gym:ALE/Pong-ram-v5") && error.contains("[128]"), "{error}");
        let integers = spec_message(pb::Dtype::I64, &[2], 2);
        assert!(spec_from_message("gym:X", &integers).is_err());
    }

    #[test]
    fn bridge_timesteps_are_checked_against_the_spec() {
        let spec = EnvSpec::vector(2, 2);
        let mut timestep = Timestep::new(&spec, 2);
        let message = |values: &[f32], rewards: Vec<f32>| pb::EnvTimestep {
            observations: Some(pb::Tensor::from_f32(&[values.len() / 2, 2], values)),
            rewards,
            is_first: vec![false, true],
            terminated: vec![true, false],
            truncated: vec![false, false],
        };
        write_timestep("e", &spec, message(&[1.0, 2.0, 3.0, 4.0], vec![0.5, 0.0]), &mut timestep, 0..2).unwrap();
        assert_eq!(timestep.observations, Observations::F32(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(
            (timestep.rewards[0], timestep.is_first[1], timestep.terminated[0]),
            (0.5, true, true)
        );
        assert!(timestep.is_last(0) && !timestep.is_last(1));
        let short = write_timestep("e", &spec, message(&[1.0, 2.0], vec![0.5, 0.0]), &mut timestep, 0..2).unwrap_err();
        assert!(short.to_string().contains("expected 2 ×"), "{short}");
        let rewards = write_timestep("e", &spec, message(&[1.0, 2.0, 3.0, 4.0], vec![0.5]), &mut timestep, 0..2).unwrap_err();
        assert!(rewards.to_string().contains("1 rewards for 2 environments"), "{rewards}");
        // A refused timestep leaves the last good one in place.
        assert_eq!(timestep.observations, Observations::F32(vec![1.0, 2.0, 3.0, 4.0]));
    }

    /// Every way a bridge's answer can be malformed is refused with a
    /// message naming the environment and the fault, and leaves the last
    /// good timestep in place.
    #[test]
    fn malformed_bridge_answers_are_refused_naming_the_fault() {
        let spec = EnvSpec::vector(2, 2);
        let good = || pb::EnvTimestep {
            observations: Some(pb::Tensor::from_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0])),
            rewards: vec![0.5, 0.0],
            is_first: vec![false, true],
            terminated: vec![false, false],
            truncated: vec![false, false],
        };
        type Edit = fn(&mut pb::EnvTimestep);
        let rows: &[(&str, Edit, &str)] = &[
            ("no observations", |m| m.observations = None, "without observations"),
            (
                "u8 observations for f32",
                |m| m.observations = Some(pb::Tensor::from_u8(&[2, 2], vec![0; 4])),
                "expected F32",
            ),
            ("unknown dtype", |m| m.observations.as_mut().unwrap().dtype = 9, "unknown dtype"),
            (
                "bytes short of the shape",
                |m| {
                    let t = m.observations.as_mut().unwrap();
                    t.data = t.data.slice(..15);
                },
                "needs 16 bytes, got 15",
            ),
            (
                "shape overflows",
                |m| m.observations.as_mut().unwrap().shape = vec![u64::MAX, 4],
                "overflows",
            ),
            (
                "wrong shape",
                |m| m.observations = Some(pb::Tensor::from_f32(&[2, 3], &[0.0; 6])),
                "expected 2 ×",
            ),
            ("NaN reward", |m| m.rewards[1] = f32::NAN, "reward NaN for environment 1"),
            (
                "infinite reward",
                |m| m.rewards[0] = f32::NEG_INFINITY,
                "reward -inf for environment 0",
            ),
            (
                "NaN observation",
                |m| m.observations = Some(pb::Tensor::from_f32(&[2, 2], &[1.0, 2.0, 3.0, f32::NAN])),
                "observation value NaN (environment 1, element 1)",
            ),
            (
                "infinite observation",
                |m| m.observations = Some(pb::Tensor::from_f32(&[2, 2], &[f32::INFINITY, 2.0, 3.0, 4.0])),
                "observation value inf (environment 0, element 0)",
            ),
            ("too few rewards", |m| m.rewards.truncate(1), "1 rewards for 2 environments"),
            ("too many is_first", |m| m.is_first.push(true), "3 is_first flags"),
            ("no terminated", |m| m.terminated.clear(), "0 terminated flags"),
            ("too few truncated", |m| m.truncated.truncate(1), "1 truncated flags"),
        ];
        let mut timestep = Timestep::new(&spec, 2);
        write_timestep("gym:X", &spec, good(), &mut timestep, 0..2).unwrap();
        let before = (timestep.observations.clone(), timestep.rewards.clone(), timestep.is_first.clone());
        for (name, edit, expected) in rows {
            let mut message = good();
            edit(&mut message);
            let error = write_timestep("gym:X", &spec, message, &mut timestep, 0..2)
                .expect_err(name)
                .to_string();
            assert!(error.contains("env \"gym:X\"") && error.contains(expected), "{name}: {error}");
            let after = (timestep.observations.clone(), timestep.rewards.clone(), timestep.is_first.clone());
            assert_eq!(after, before, "{name}: the last good timestep stays");
        }
    }

    /// Spec answers with shapes no message could carry are refused, not
    /// multiplied into an overflow or a giant buffer.
    #[test]
    fn bridge_specs_with_absurd_shapes_are_refused() {
        for shape in [&[u64::MAX, 2][..], &[1 << 32, 1 << 32], &[1 << 33]] {
            let error = spec_from_message("gym:X", &spec_message(pb::Dtype::F32, shape, 2))
                .unwrap_err()
                .to_string();
            assert!(error.contains("gym:X") && error.contains("larger than"), "{shape:?}: {error}");
        }
        let frames = spec_message(pb::Dtype::U8, &[1 << 22, 1 << 22, 1 << 22], 2);
        assert!(spec_from_message("gym:X", &frames).unwrap_err().to_string().contains("larger than"));
        let many = spec_message(pb::Dtype::F32, &[4], u32::MAX);
        let error = spec_from_message("gym:X", &many).unwrap_err().to_string();
        assert!(error.contains("gym:X") && error.contains("discrete actions"), "{error}");
        assert!(spec_from_message("gym:X", &spec_message(pb::Dtype::F32, &[4], 1 << 16)).is_ok());
        let empty = spec_message(pb::Dtype::F32, &[0, 4], 2);
        assert!(
            spec_from_message("gym:X", &empty)
                .unwrap_err()
                .to_string()
                .contains("hold no values")
        );
    }

    #[test]
    fn streams_split_a_vector_into_contiguous_near_equal_parts() {
        let parts: Vec<_> = (0..3).map(|k| stream_range(16, 3, k)).collect();
        assert_eq!(parts, [0..5, 5..10, 10..16]);
        assert_eq!(stream_range(16, 1, 0), 0..16);
        let parts: Vec<_> = (0..4).map(|k| stream_range(4, 4, k).len()).collect();
        assert_eq!(parts, [1, 1, 1, 1]);
    }

    #[test]
    fn a_stream_writes_only_its_own_environments() {
        let spec = EnvSpec::vector(1, 2);
        let mut timestep = Timestep::new(&spec, 4);
        let message = pb::EnvTimestep {
            observations: Some(pb::Tensor::from_f32(&[2, 1], &[7.0, 8.0])),
            rewards: vec![1.0, 2.0],
            is_first: vec![false, false],
            terminated: vec![false, true],
            truncated: vec![false, false],
        };
        write_timestep("e", &spec, message, &mut timestep, 2..4).unwrap();
        assert_eq!(timestep.observations, Observations::F32(vec![0.0, 0.0, 7.0, 8.0]));
        assert_eq!(timestep.rewards, [0.0, 0.0, 1.0, 2.0]);
        assert_eq!(timestep.is_first, [true, true, false, false]);
        assert_eq!(timestep.terminated, [false, false, false, true]);
    }

    #[test]
    fn a_lost_bridge_cuts_episodes_in_flight_and_leaves_ended_ones_ended() {
        let spec = EnvSpec::vector(1, 2);
        let mut timestep = Timestep::new(&spec, 3);
        // env 0 is mid-episode, env 1 just terminated, env 2 just started.
        timestep.is_first = vec![false, false, true];
        timestep.terminated = vec![false, true, false];
        timestep.rewards = vec![1.0, 1.0, 0.0];
        BridgedEnvs::cut_episodes(&mut timestep);
        assert_eq!(timestep.truncated, vec![true, false, true]);
        assert_eq!(timestep.terminated, vec![false, true, false]);
        assert_eq!(timestep.is_first, vec![false, false, false]);
        assert_eq!(timestep.rewards, vec![0.0; 3]);
        assert!((0..3).all(|env_index| timestep.is_last(env_index)));
    }
}
