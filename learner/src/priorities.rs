//! New priorities for replayed sequences, sent to the prioritised table in
//! the background: the update loop hands each batch's `(key, priority)`
//! pairs to a bounded channel and never waits on the network; this task
//! gathers them into `UpdatePriorities` requests of up to `priority_batch`
//! items.

use std::time::Duration;

use fleet_proto::auth::AttachToken;
use fleet_proto::connect::{connect_or_stop, sleep_or_cancel};
use fleet_proto::pb::{self, replay_client::ReplayClient};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::runtime::LearnerSettings;

/// How long one `UpdatePriorities` call may take before it is given up (and
/// its updates dropped): the server answers in milliseconds, so only a
/// server that stopped answering gets near this. A dead connection is also
/// found by the keepalives (`fleet_proto::connect`); this covers a server
/// that still answers pings but not the call.
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Batches of updates the channel holds before the update loop drops new
/// ones (priorities are advice: a lost update leaves the old priority).
pub const QUEUED_UPDATES: usize = 64;

/// The sending half the update loop uses.
#[derive(Debug, Clone)]
pub struct PrioritySender {
    tx: mpsc::Sender<Vec<pb::PriorityUpdate>>,
}

impl PrioritySender {
    /// Queues one batch's updates without waiting; counts them as dropped
    /// when the sender task is this far behind.
    pub fn send(&self, keys: &[u64], priorities: &[f64]) {
        let updates: Vec<pb::PriorityUpdate> = keys
            .iter()
            .zip(priorities)
            .map(|(&key, &priority)| pb::PriorityUpdate { key, priority })
            .collect();
        if updates.is_empty() {
            return;
        }
        let n = updates.len() as u64;
        if self.tx.try_send(updates).is_err() {
            metrics::counter!(m::PRIORITY_UPDATES_DROPPED).increment(n);
        }
    }
}

/// The channel between the update loop and [`send_priorities`].
pub fn channel() -> (PrioritySender, mpsc::Receiver<Vec<pb::PriorityUpdate>>) {
    let (tx, rx) = mpsc::channel(QUEUED_UPDATES);
    (PrioritySender { tx }, rx)
}

/// Sends what arrives on `rx` to `learner.replay_table` until the update loop
/// hangs up (then flushes what is left) or `shutdown` fires.
pub async fn send_priorities(settings: LearnerSettings, mut rx: mpsc::Receiver<Vec<pb::PriorityUpdate>>, shutdown: CancellationToken) {
    let limit = settings.learner.priority_batch;
    let mut pending: Vec<pb::PriorityUpdate> = Vec::new();
    'connect: loop {
        let Some(channel) = connect_or_stop(&settings.replay_address, &settings.tls, settings.backoff, &shutdown).await else {
            return;
        };
        let mut client = ReplayClient::with_interceptor(channel, AttachToken::new(settings.auth.clone()))
            .max_encoding_message_size(settings.max_message_bytes);
        loop {
            let mut closed = false;
            if pending.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = rx.recv() => match next {
                        Some(updates) => pending.extend(updates),
                        None => return,
                    },
                }
            }
            // Whatever else is already queued goes in the same request.
            while pending.len() < limit {
                match rx.try_recv() {
                    Ok(updates) => pending.extend(updates),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let take = pending.len().min(limit);
            let updates: Vec<pb::PriorityUpdate> = pending.drain(..take).collect();
            let mut request = tonic::Request::new(pb::UpdatePrioritiesRequest {
                table: settings.learner.replay_table.clone(),
                updates,
            });
            request.set_timeout(UPDATE_TIMEOUT);
            let sent = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = client.update_priorities(request) => r,
            };
            match sent {
                Ok(response) => {
                    metrics::counter!(m::PRIORITY_UPDATES).increment(take as u64);
                    let missing = response.into_inner().missing;
                    if missing > 0 {
                        tracing::debug!(missing, "priority updates for items no longer in the table");
                    }
                }
                Err(status) if status.code() == tonic::Code::InvalidArgument || status.code() == tonic::Code::NotFound => {
                    // The table refuses these updates; retrying cannot help.
                    tracing::error!(%status, "priority update refused");
                    metrics::counter!(m::PRIORITY_UPDATES_DROPPED).increment(take as u64);
                }
                Err(status) => {
                    tracing::warn!(%status, "UpdatePriorities failed; reconnecting");
                    metrics::counter!(m::PRIORITY_UPDATES_DROPPED).increment(take as u64);
                    // A refused token stays refused until someone fixes it.
                    let pause = if status.code() == tonic::Code::Unauthenticated {
                        settings.backoff.max
                    } else {
                        settings.backoff.initial
                    };
                    sleep_or_cancel(pause, &shutdown).await;
                    continue 'connect;
                }
            }
            if closed && pending.is_empty() {
                return;
            }
        }
    }
}
