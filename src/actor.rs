//! `fleet actor` as a library function: acts in environments with the
//! learner's newest weights and streams sequences to replay, with `/metrics`
//! on a listener the caller bound, until the caller's shutdown future fires.
//! An actor serves no gRPC; it sends the bearer token, when one is
//! configured, to replay and the learner, and connects to them over TLS
//! when `[tls]` is set. Environments, inference and the
//! sequence writer live in the `fleet-actor` crate; this only builds its
//! settings.

use std::future::Future;

use anyhow::Result;
use fleet_proto::connect::Backoff;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::role;

/// The actor's peers, by address (host:port). Both are retried until they
/// answer, so either may start after the actor.
#[derive(Debug, Clone)]
pub struct Peers {
    pub replay: String,
    pub learner: String,
}

/// Acts as actor `actor_id`, inserting into replay and following the
/// learner's weights, with metrics on `metrics`, until `shutdown` fires.
pub async fn run(config: Config, actor_id: u64, peers: Peers, metrics: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    let settings = fleet_actor::ActorSettings {
        actor_id,
        seed: config.seed,
        env: config.env,
        network: config.network,
        actor: config.actor,
        discount: config.learner.discount,
        replay_address: peers.replay,
        learner_address: peers.learner,
        max_message_bytes: config.replay.max_message_bytes,
        backoff: Backoff::default(),
        auth: config.auth.token,
        tls: config.tls.loaded,
    };
    role::serve(metrics, shutdown, |token| fleet_actor::run(settings, token)).await
}
