//! The batch pipeline: one sampling task per replay table the batches draw
//! from (the fresh-sequence queue and, with `replay_fraction > 0`, the
//! prioritised table), and a task that joins their parts into one
//! [`HostBatch`] and hands it to the update loop through a bounded channel.
//! Decoding and stacking happen here, off the training thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fleet_proto::auth::AttachToken;
use fleet_proto::connect::{connect_or_stop, sleep_or_cancel};
use fleet_proto::pb::{self, replay_client::ReplayClient};
use fleet_trajectory::Signature;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::HostBatch;
use crate::metrics as m;
use crate::runtime::LearnerSettings;

/// A batch ready for the update loop. Items `..replay_from` are fresh
/// sequences from the queue; items `replay_from..` were replayed from the
/// prioritised table and get new priorities after the update.
#[derive(Debug)]
pub struct Prefetched {
    pub batch: HostBatch,
    pub replay_from: usize,
}

impl Prefetched {
    /// Keys of the replayed items.
    pub fn replayed_keys(&self) -> &[u64] {
        &self.batch.keys[self.replay_from..]
    }

    /// The batch without its fresh sequences older than `max_lag` versions
    /// (`ages` as [`HostBatch::sequence_ages`] gives them; `max_lag` 0: no
    /// bound), and how many were dropped. Replayed sequences all stay.
    /// `None` when nothing is left.
    pub fn without_stale(self, ages: &[u64], max_lag: u64) -> (Option<Prefetched>, usize) {
        let b = self.batch.batch_size;
        if max_lag == 0 || ages[..self.replay_from].iter().all(|&age| age <= max_lag) {
            return (Some(self), 0);
        }
        let keep: Vec<usize> = (0..b).filter(|&j| j >= self.replay_from || ages[j] <= max_lag).collect();
        let dropped = b - keep.len();
        if keep.is_empty() {
            return (None, dropped);
        }
        let replay_from = self.replay_from - dropped;
        let batch = self.batch.select(&keep);
        (Some(Prefetched { batch, replay_from }), dropped)
    }
}

/// One table's share of every batch.
#[derive(Debug, Clone)]
struct Part {
    table: String,
    count: usize,
    /// Whether the part comes from the prioritised table (β, priorities).
    replayed: bool,
}

/// Keeps `prefetch_batches` batches ready until `shutdown` fires or the
/// update loop hangs up. `frames` is the learner's consumed-frame count,
/// which sets β. Fails, ending the batches, when replay refuses a batch for
/// good (one too large for a message).
pub async fn prefetch(
    settings: LearnerSettings,
    frames: Arc<AtomicU64>,
    batch_tx: mpsc::Sender<Prefetched>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let config = &settings.learner;
    let replayed = config.replayed_per_batch();
    let parts = [
        Part {
            table: config.table.clone(),
            count: config.batch_size - replayed,
            replayed: false,
        },
        Part {
            table: config.replay_table.clone(),
            count: replayed,
            replayed: true,
        },
    ];
    // The samplers also stop when the update loop hangs up.
    let stop = shutdown.child_token();
    let mut receivers = Vec::new();
    let mut samplers = Vec::new();
    for part in parts.into_iter().filter(|p| p.count > 0) {
        let (tx, rx) = mpsc::channel(settings.learner.prefetch_batches);
        samplers.push(tokio::spawn(sample_part(
            settings.clone(),
            part.clone(),
            frames.clone(),
            tx,
            stop.clone(),
        )));
        receivers.push((part, rx));
    }
    join_parts(&settings, receivers, batch_tx, &stop).await;
    stop.cancel();
    let mut result = Ok(());
    for sampler in samplers {
        if let Ok(Err(reason)) = sampler.await {
            result = Err(reason);
        }
    }
    result
}

/// Takes one part from each table in turn, fresh first, and stacks them.
async fn join_parts(
    settings: &LearnerSettings,
    mut receivers: Vec<(Part, mpsc::Receiver<Vec<pb::SampledItem>>)>,
    batch_tx: mpsc::Sender<Prefetched>,
    shutdown: &CancellationToken,
) {
    let importance = metrics::histogram!(m::IMPORTANCE_WEIGHTS);
    let signature = Signature {
        env: settings.spec,
        state: settings.network.state_spec(),
    };
    loop {
        let mut items = Vec::with_capacity(settings.learner.batch_size);
        let mut replay_from = None;
        for (part, rx) in &mut receivers {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = rx.recv() => next,
            };
            let Some(part_items) = next else { return };
            if part.replayed {
                replay_from = Some(items.len());
                for item in &part_items {
                    importance.record(item.weight);
                }
            }
            metrics::counter!(m::SAMPLED_SEQUENCES, "source" => if part.replayed { "replay" } else { "online" })
                .increment(part_items.len() as u64);
            items.extend(part_items);
        }
        match HostBatch::from_items(&items, signature) {
            Ok(mut batch) => {
                let replay_from = replay_from.unwrap_or(batch.batch_size);
                // Replayed steps were counted when they came from the queue.
                batch.first_draws[replay_from..].fill(false);
                if batch_tx.send(Prefetched { batch, replay_from }).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::error!(%error, "refusing sampled batch");
                metrics::counter!(m::BAD_BATCHES).increment(1);
            }
        }
    }
}

/// Samples `part.count` items at a time from `part.table`. Each `Sample`
/// call asks for one batch: an open-ended stream would let replay hand over
/// batches as fast as the transport buffers them, and every buffered batch
/// is policy lag. Reconnects with backoff after failures, except when
/// replay answers RESOURCE_EXHAUSTED: a batch of this many sequences does
/// not fit in one message, and asking again would be refused again.
async fn sample_part(
    settings: LearnerSettings,
    part: Part,
    frames: Arc<AtomicU64>,
    tx: mpsc::Sender<Vec<pb::SampledItem>>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let refused = |status: &tonic::Status| {
        format!(
            "table `{}` cannot send {} sequences in one message ({}); lower learner.batch_size or raise replay.max_message_bytes",
            part.table,
            part.count,
            status.message()
        )
    };
    let config = &settings.learner;
    'connect: loop {
        let Some(channel) = connect_or_stop(&settings.replay_address, &settings.tls, settings.backoff, &shutdown).await else {
            return Ok(());
        };
        let mut client = ReplayClient::with_interceptor(channel, AttachToken::new(settings.auth.clone()))
            .max_decoding_message_size(settings.max_message_bytes)
            .max_encoding_message_size(settings.max_message_bytes);
        loop {
            let beta = if part.replayed {
                config.beta_at(frames.load(Ordering::Relaxed))
            } else {
                0.0
            };
            if part.replayed {
                metrics::gauge!(m::BETA).set(beta);
            }
            let request = pb::SampleRequest {
                table: part.table.clone(),
                batch_size: part.count as u32,
                num_batches: 1,
                timeout_ms: settings.sample_timeout.as_millis() as u32,
                beta,
                in_flight: 1,
            };
            let response = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = client.sample(request) => r,
            };
            let mut stream = match response {
                Ok(r) => r.into_inner(),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => return Err(refused(&status)),
                Err(status) => {
                    tracing::warn!(%status, table = %part.table, "Sample failed; reconnecting");
                    sleep_or_cancel(settings.backoff.max, &shutdown).await;
                    continue 'connect;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok(response)) => {
                        if tx.send(response.items).await.is_err() {
                            return Ok(());
                        }
                    }
                    Some(Err(status)) if status.code() == tonic::Code::ResourceExhausted => return Err(refused(&status)),
                    Some(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                        tracing::debug!(table = %part.table, "no batch within the sample timeout; asking again");
                        break;
                    }
                    Some(Err(status)) => {
                        tracing::warn!(%status, table = %part.table, "Sample stream failed; reconnecting");
                        sleep_or_cancel(settings.backoff.initial, &shutdown).await;
                        continue 'connect;
                    }
                    None => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fleet_agent::EnvSpec;

    use super::*;

    #[test]
    fn only_fresh_sequences_past_the_bound_are_dropped() {
        let batch = HostBatch::synthetic(EnvSpec::vector(2, 2), 3, 5, 0);
        let prefetched = |replay_from| Prefetched {
            batch: batch.clone(),
            replay_from,
        };
        // Sequences 0..3 fresh, 3..5 replayed; ages 0, 9, 10, 50, 50.
        let ages = [0, 9, 10, 50, 50];
        let (kept, dropped) = prefetched(3).without_stale(&ages, 9);
        let kept = kept.unwrap();
        assert_eq!((dropped, kept.replay_from, kept.batch.keys.clone()), (1, 2, vec![0, 1, 3, 4]));
        assert_eq!(kept.replayed_keys(), &[3, 4]);
        let (kept, dropped) = prefetched(3).without_stale(&ages, 0);
        assert_eq!((dropped, kept.unwrap().batch.batch_size), (0, 5), "0 is no bound");
        let (kept, dropped) = prefetched(5).without_stale(&[20; 5], 10);
        assert!(kept.is_none());
        assert_eq!(dropped, 5);
    }
}
