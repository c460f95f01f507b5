//! One replay table: items (validated sequences) under increasing `u64` keys,
//! a [`Sampler`] that picks which item a sample returns, a [`Remover`] that
//! picks which item leaves when a full table must make room, the
//! `max_times_sampled` rule, and the rate limiting that makes callers wait.
//!
//! The only limiter so far is Reverb's `Queue`: an insert waits while the
//! table is full, a sample of `n` waits until `n` items are present. Waiting
//! is on [`tokio::sync::Notify`] (never polling), bounded by a timeout and by
//! the service's shutdown token. No gRPC here: callers get [`SampledItem`]s
//! and [`TableStats`] and turn them into messages themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fleet_proto::pb;
use metrics::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{SamplerKind, TableConfig};
use crate::error::Error;
use crate::metrics::TableMetrics;
use crate::validate::{Signature, validate_sequence};

/// Priority of an item inserted with priority 0 ("let the table choose").
pub const DEFAULT_PRIORITY: f64 = 1.0;

/// One sampler decision: the key, and the probability that this draw picked it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub key: u64,
    pub probability: f64,
}

/// Chooses which item a sample returns. The table tells it about every key
/// that enters, changes priority or leaves, so it can keep its own index
/// (a queue of keys, later a sum tree).
pub trait Sampler: Send + fmt::Debug {
    /// Name reported by `Info`.
    fn name(&self) -> &'static str;
    fn insert(&mut self, key: u64, priority: f64);
    fn update(&mut self, key: u64, priority: f64);
    fn remove(&mut self, key: u64);
    /// One draw, or `None` when the sampler holds no keys.
    fn sample(&mut self) -> Option<Choice>;
    /// Whether samples are biased and need importance weights
    /// `(N·P(i))^-β / max_j w_j`; unbiased samplers report weight 1.
    fn is_prioritised(&self) -> bool {
        false
    }
}

/// Oldest item first.
///
/// The reported probability is `1 / size` at the time of the draw, the
/// probability a uniform draw would have had. The choice itself is
/// deterministic, but with this value `(N·P)^-β = 1`, which agrees with the
/// unit importance weight a FIFO item gets, so a learner that recomputes
/// weights from probabilities treats FIFO items as unbiased.
///
/// With `max_times_sampled` other than 1 the oldest item is returned again
/// until it has been sampled out.
#[derive(Debug, Default)]
pub struct FifoSampler {
    keys: BTreeSet<u64>,
}

impl Sampler for FifoSampler {
    fn name(&self) -> &'static str {
        "fifo"
    }
    fn insert(&mut self, key: u64, _priority: f64) {
        self.keys.insert(key);
    }
    fn update(&mut self, _key: u64, _priority: f64) {}
    fn remove(&mut self, key: u64) {
        self.keys.remove(&key);
    }
    fn sample(&mut self) -> Option<Choice> {
        let key = *self.keys.first()?;
        Some(Choice {
            key,
            probability: 1.0 / self.keys.len() as f64,
        })
    }
}

/// Chooses which item leaves when an insert is allowed into a full table.
/// Under the `Queue` limiter inserts wait instead, so this only acts for
/// limiters that let inserts into a full table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remover {
    /// The oldest item (smallest key) leaves first.
    Fifo,
}

impl Remover {
    pub fn name(self) -> &'static str {
        match self {
            Remover::Fifo => "fifo",
        }
    }

    fn victim(self, items: &BTreeMap<u64, Item>) -> Option<u64> {
        match self {
            Remover::Fifo => items.keys().next().copied(),
        }
    }
}

/// One stored sequence and its bookkeeping.
#[derive(Debug)]
struct Item {
    /// Shared so that items sampled more than once are not copied under the lock.
    sequence: Arc<pb::Sequence>,
    priority: f64,
    times_sampled: u32,
}

/// One item of a sampled batch.
#[derive(Debug, Clone)]
pub struct SampledItem {
    pub key: u64,
    pub priority: f64,
    /// Probability that the draw picked this item (see the sampler's docs).
    pub probability: f64,
    /// Times sampled, this sample included.
    pub times_sampled: u32,
    /// Items in the table when this item was drawn.
    pub table_size: u64,
    /// Importance weight normalised by the batch maximum; 1 for unbiased samplers.
    pub weight: f64,
    pub sequence: Arc<pb::Sequence>,
}

/// A snapshot of a table for `Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStats {
    pub name: String,
    pub sampler: &'static str,
    pub remover: &'static str,
    pub size: u64,
    pub max_size: u64,
    pub inserts: u64,
    pub samples: u64,
    pub max_times_sampled: u32,
}

#[derive(Debug)]
struct State {
    items: BTreeMap<u64, Item>,
    sampler: Box<dyn Sampler>,
    remover: Remover,
    /// Fixed by the first item ever inserted; it outlives that item.
    signature: Option<Signature>,
    /// Keys start at 1, so a priority update with an unset key (0) is simply missing.
    next_key: u64,
    inserts: u64,
    samples: u64,
}

/// A replay table. Shared between request handlers behind an `Arc`.
#[derive(Debug)]
pub struct Table {
    config: TableConfig,
    state: Mutex<State>,
    /// Woken whenever items leave, so that waiting inserts look again.
    room: Notify,
    /// Woken whenever items arrive, so that waiting samples look again.
    arrivals: Notify,
    /// Cancelled when the service shuts down: every wait ends with `Shutdown`.
    shutdown: CancellationToken,
    metrics: TableMetrics,
}

impl Table {
    pub fn new(config: TableConfig, shutdown: CancellationToken) -> Self {
        let sampler: Box<dyn Sampler> = match config.sampler {
            SamplerKind::Fifo => Box::new(FifoSampler::default()),
        };
        let metrics = TableMetrics::new(&config.name);
        metrics.items.set(0.0);
        Self {
            state: Mutex::new(State {
                items: BTreeMap::new(),
                sampler,
                remover: Remover::Fifo,
                signature: None,
                next_key: 1,
                inserts: 0,
                samples: 0,
            }),
            config,
            room: Notify::new(),
            arrivals: Notify::new(),
            shutdown,
            metrics,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Validates `sequence` and stores it, waiting while the table is full
    /// (up to `timeout` when given). Returns the new item's key. A rejected
    /// sequence (invalid, or not matching the table's signature) changes
    /// nothing. Dropping the future before it completes stores nothing.
    pub async fn insert(&self, sequence: pb::Sequence, timeout: Option<Duration>) -> Result<u64, Error> {
        let signature = validate_sequence(&sequence)?;
        let priority = if sequence.priority > 0.0 {
            sequence.priority
        } else {
            DEFAULT_PRIORITY
        };
        let mut sequence = Some(sequence);
        let max_size = self.config.max_size;
        let key = self
            .wait_for(
                &self.room,
                timeout,
                &self.metrics.insert_blocked_seconds,
                |waited| Error::InsertTimeout {
                    table: self.config.name.clone(),
                    waited,
                },
                |state| {
                    match &state.signature {
                        Some(expected) if *expected != signature => {
                            return Err(Error::SignatureMismatch {
                                table: self.config.name.clone(),
                                expected: Box::new(expected.clone()),
                                found: Box::new(signature.clone()),
                            });
                        }
                        _ => {}
                    }
                    // The Queue limiter: inserts wait while the table is full.
                    if state.items.len() >= max_size {
                        return Ok(None);
                    }
                    let Some(sequence) = sequence.take() else {
                        unreachable!("the sequence is taken only by the attempt that stores it")
                    };
                    // Only reached by limiters that admit inserts into a full table.
                    while state.items.len() >= max_size {
                        let Some(victim) = state.remover.victim(&state.items) else {
                            break;
                        };
                        state.items.remove(&victim);
                        state.sampler.remove(victim);
                    }
                    if state.signature.is_none() {
                        state.signature = Some(signature.clone());
                    }
                    let key = state.next_key;
                    state.next_key += 1;
                    state.items.insert(
                        key,
                        Item {
                            sequence: Arc::new(sequence),
                            priority,
                            times_sampled: 0,
                        },
                    );
                    state.sampler.insert(key, priority);
                    state.inserts += 1;
                    self.metrics.items.set(state.items.len() as f64);
                    Ok(Some(key))
                },
            )
            .await?;
        self.metrics.inserts.increment(1);
        self.arrivals.notify_waiters();
        Ok(key)
    }

    /// Samples a batch of `n` items, waiting up to `timeout` until `n` are
    /// present. Each draw counts towards the item's `max_times_sampled`; an
    /// item that reaches it leaves the table. `beta` is the
    /// importance-sampling exponent (ignored by unbiased samplers).
    pub async fn sample(&self, n: usize, beta: f64, timeout: Duration) -> Result<Vec<SampledItem>, Error> {
        self.check_sample_request(n, beta)?;
        let max_times_sampled = self.config.max_times_sampled;
        let (batch, removed) = self
            .wait_for(
                &self.arrivals,
                Some(timeout),
                &self.metrics.sample_wait_seconds,
                |waited| Error::SampleTimeout {
                    table: self.config.name.clone(),
                    wanted: n,
                    waited,
                },
                |state| {
                    // The Queue limiter: a batch waits until it can be served whole.
                    if state.items.len() < n {
                        return Ok(None);
                    }
                    Ok(Some(draw(state, n, beta, max_times_sampled)))
                },
            )
            .await?;
        self.metrics.samples.increment(n as u64);
        if removed > 0 {
            self.room.notify_waiters();
        }
        Ok(batch)
    }

    /// Rejects batch sizes that can never be served (0, or above `max_size`)
    /// and importance-sampling exponents that are negative or not finite.
    pub fn check_sample_request(&self, n: usize, beta: f64) -> Result<(), Error> {
        if n == 0 || n > self.config.max_size {
            return Err(Error::InvalidSampleRequest(format!(
                "batch_size {n} must be between 1 and table {:?}'s max_size {}",
                self.config.name, self.config.max_size
            )));
        }
        if !(beta.is_finite() && beta >= 0.0) {
            return Err(Error::InvalidSampleRequest(format!(
                "beta is {beta}; expected a finite number >= 0"
            )));
        }
        Ok(())
    }

    /// Sets new priorities. All are checked first: one negative or
    /// non-finite priority rejects the whole update and changes nothing.
    /// Keys no longer in the table are skipped and counted; the count is
    /// returned.
    pub fn update_priorities(&self, updates: &[(u64, f64)]) -> Result<u64, Error> {
        if let Some(&(key, priority)) = updates.iter().find(|(_, p)| !(p.is_finite() && *p >= 0.0)) {
            return Err(Error::InvalidPriority { key, priority });
        }
        let mut missing = 0;
        let mut state = self.lock();
        let state = &mut *state;
        for &(key, priority) in updates {
            match state.items.get_mut(&key) {
                Some(item) => {
                    item.priority = priority;
                    state.sampler.update(key, priority);
                }
                None => missing += 1,
            }
        }
        if missing > 0 {
            self.metrics.missing_priority_updates.increment(missing);
        }
        Ok(missing)
    }

    pub fn stats(&self) -> TableStats {
        let state = self.lock();
        TableStats {
            name: self.config.name.clone(),
            sampler: state.sampler.name(),
            remover: state.remover.name(),
            size: state.items.len() as u64,
            max_size: self.config.max_size as u64,
            inserts: state.inserts,
            samples: state.samples,
            max_times_sampled: self.config.max_times_sampled,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that can panic runs under this lock except on a bug; a
        // poisoned lock means the table's invariants may be broken.
        self.state.lock().expect("replay table lock poisoned")
    }

    /// Runs `attempt` under the lock until it yields a value or an error,
    /// sleeping on `notify` in between. Ends with `Shutdown` when the
    /// service stops and with `on_timeout` after `timeout`. The time spent
    /// waiting (not the first attempt) is added to `waited_metric`, even when
    /// the caller drops the future.
    async fn wait_for<T>(
        &self,
        notify: &Notify,
        timeout: Option<Duration>,
        waited_metric: &Gauge,
        on_timeout: impl FnOnce(Duration) -> Error,
        mut attempt: impl FnMut(&mut State) -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut timer = WaitTimer {
            started: None,
            metric: waited_metric,
        };
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Error::Shutdown);
            }
            // Register for the wake-up before looking, so a change that
            // lands between the look and the wait is not lost.
            let mut notified = pin!(notify.notified());
            notified.as_mut().enable();
            if let Some(value) = attempt(&mut self.lock())? {
                return Ok(value);
            }
            timer.start();
            let expired = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = notified => {}
                () = self.shutdown.cancelled() => return Err(Error::Shutdown),
                () = expired => return Err(on_timeout(timeout.unwrap_or_default())),
            }
        }
    }
}

/// Draws `n` items under the lock (the caller has checked that `n` are
/// present). Returns the batch and how many items left the table.
fn draw(state: &mut State, n: usize, beta: f64, max_times_sampled: u32) -> (Vec<SampledItem>, usize) {
    let mut batch = Vec::with_capacity(n);
    let mut removed = 0;
    for _ in 0..n {
        let table_size = state.items.len() as u64;
        // Each draw removes at most one item, so with `n` present at the
        // start every draw finds one.
        let Some(choice) = state.sampler.sample() else {
            break;
        };
        let Some(item) = state.items.get_mut(&choice.key) else {
            unreachable!("sampler returned key {} that is not in the table", choice.key)
        };
        item.times_sampled += 1;
        batch.push(SampledItem {
            key: choice.key,
            priority: item.priority,
            probability: choice.probability,
            times_sampled: item.times_sampled,
            table_size,
            weight: 1.0,
            sequence: Arc::clone(&item.sequence),
        });
        if max_times_sampled > 0 && item.times_sampled >= max_times_sampled {
            state.items.remove(&choice.key);
            state.sampler.remove(choice.key);
            removed += 1;
        }
    }
    state.samples += batch.len() as u64;
    if state.sampler.is_prioritised() {
        set_importance_weights(&mut batch, beta);
    }
    (batch, removed)
}

/// `w_i = (N_i·P(i))^-β / max_j w_j` (PER), with `N_i` the table size at draw `i`.
fn set_importance_weights(batch: &mut [SampledItem], beta: f64) {
    for item in batch.iter_mut() {
        item.weight = (item.table_size as f64 * item.probability).powf(-beta);
    }
    let max = batch.iter().map(|i| i.weight).fold(0.0, f64::max);
    if max > 0.0 && max.is_finite() {
        for item in batch.iter_mut() {
            item.weight /= max;
        }
    }
}

/// Adds the time since the first failed attempt to a metric when dropped,
/// so waits that end by cancellation are counted too.
struct WaitTimer<'a> {
    started: Option<Instant>,
    metric: &'a Gauge,
}

impl WaitTimer<'_> {
    fn start(&mut self) {
        self.started.get_or_insert_with(Instant::now);
    }
}

impl Drop for WaitTimer<'_> {
    fn drop(&mut self) {
        if let Some(started) = self.started {
            self.metric.increment(started.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testing::cartpole_sequence;

    const LONG: Duration = Duration::from_secs(3600);

    fn table(max_size: usize, max_times_sampled: u32) -> Arc<Table> {
        let config = TableConfig {
            name: "t".into(),
            max_size,
            sampler: SamplerKind::Fifo,
            max_times_sampled,
        };
        Arc::new(Table::new(config, CancellationToken::new()))
    }

    async fn fill(table: &Table, seeds: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut keys = vec![];
        for seed in seeds {
            keys.push(table.insert(cartpole_sequence(3, seed), None).await.unwrap());
        }
        keys
    }

    #[tokio::test]
    async fn fifo_order_and_sample_fields() {
        let table = table(10, 1);
        let keys = fill(&table, [10, 11, 12, 13]).await;
        assert_eq!(keys, vec![1, 2, 3, 4]);
        let batch = table.sample(3, 0.4, LONG).await.unwrap();
        assert_eq!(batch.iter().map(|i| i.key).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(batch.iter().map(|i| i.sequence.actor_id).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(batch.iter().map(|i| i.table_size).collect::<Vec<_>>(), vec![4, 3, 2]);
        assert_eq!(batch[0].probability, 0.25);
        assert!(
            batch
                .iter()
                .all(|i| i.times_sampled == 1 && i.weight == 1.0 && i.priority == DEFAULT_PRIORITY)
        );
        assert_eq!(*batch[1].sequence, cartpole_sequence(3, 11));
        assert_eq!(table.len(), 1);
        let next = table.sample(1, 0.0, LONG).await.unwrap();
        assert_eq!(next[0].key, 4);
        let stats = table.stats();
        assert_eq!((stats.size, stats.inserts, stats.samples), (0, 4, 4));
        assert_eq!((stats.sampler, stats.remover), ("fifo", "fifo"));
    }

    #[tokio::test]
    async fn inserted_priority_is_kept() {
        let table = table(10, 1);
        let mut sequence = cartpole_sequence(3, 0);
        sequence.priority = 2.5;
        table.insert(sequence, None).await.unwrap();
        assert_eq!(table.sample(1, 0.0, LONG).await.unwrap()[0].priority, 2.5);
    }

    #[tokio::test(start_paused = true)]
    async fn full_table_blocks_insert_until_a_sample_frees_room() {
        let table = table(2, 1);
        fill(&table, [0, 1]).await;
        let blocked = tokio::spawn({
            let table = Arc::clone(&table);
            async move { table.insert(cartpole_sequence(3, 2), None).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!blocked.is_finished(), "insert into a full queue must wait");
        assert_eq!(table.len(), 2);

        let batch = table.sample(1, 0.0, LONG).await.unwrap();
        assert_eq!(batch[0].key, 1);
        let key = tokio::time::timeout(Duration::from_secs(1), blocked)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(key, 3);
        assert_eq!(table.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn insert_timeout_stores_nothing() {
        let table = table(1, 1);
        fill(&table, [0]).await;
        let err = table
            .insert(cartpole_sequence(3, 1), Some(Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InsertTimeout { .. }), "{err}");
        assert_eq!(table.stats().inserts, 1);
        assert_eq!(table.sample(1, 0.0, LONG).await.unwrap()[0].sequence.actor_id, 0);
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn max_times_sampled_removes_items() {
        let table = table(10, 2);
        fill(&table, [0, 1]).await;
        // FIFO draws the oldest item until it is sampled out.
        let batch = table.sample(2, 0.0, LONG).await.unwrap();
        assert_eq!(
            batch.iter().map(|i| (i.key, i.times_sampled)).collect::<Vec<_>>(),
            vec![(1, 1), (1, 2)]
        );
        assert_eq!(table.len(), 1);
        let batch = table.sample(1, 0.0, LONG).await.unwrap();
        assert_eq!((batch[0].key, batch[0].times_sampled), (2, 1));
        assert_eq!(table.len(), 1);
        let batch = table.sample(1, 0.0, LONG).await.unwrap();
        assert_eq!((batch[0].key, batch[0].times_sampled), (2, 2));
        assert!(table.is_empty());
        assert_eq!(table.stats().samples, 4);
    }

    #[tokio::test]
    async fn unlimited_sampling_keeps_items() {
        let table = table(10, 0);
        fill(&table, [0, 1]).await;
        for round in 1..=5 {
            let batch = table.sample(2, 0.0, LONG).await.unwrap();
            assert_eq!(batch[0].key, 1);
            assert_eq!(batch[1].times_sampled, 2 * round);
        }
        assert_eq!(table.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn sample_times_out_and_takes_nothing() {
        let table = table(10, 1);
        fill(&table, [0, 1]).await;
        let started = Instant::now();
        let err = table.sample(3, 0.0, Duration::from_millis(250)).await.unwrap_err();
        assert!(matches!(err, Error::SampleTimeout { wanted: 3, .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(table.len(), 2);
        assert_eq!(table.stats().samples, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn sample_waits_for_a_whole_batch() {
        let table = table(10, 1);
        fill(&table, [0]).await;
        let waiting = tokio::spawn({
            let table = Arc::clone(&table);
            async move { table.sample(2, 0.0, LONG).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        fill(&table, [1]).await;
        let batch = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(batch.len(), 2);
    }

    #[tokio::test]
    async fn bad_batch_sizes_and_beta_are_rejected() {
        let table = table(4, 1);
        for n in [0, 5] {
            let err = table.sample(n, 0.0, LONG).await.unwrap_err();
            assert!(matches!(err, Error::InvalidSampleRequest(_)), "{err}");
        }
        let err = table.sample(1, f64::NAN, LONG).await.unwrap_err();
        assert!(matches!(err, Error::InvalidSampleRequest(_)), "{err}");
    }

    #[tokio::test]
    async fn shutdown_wakes_waiters() {
        let shutdown = CancellationToken::new();
        let full = Arc::new(Table::new(
            TableConfig {
                max_size: 1,
                ..TableConfig::default()
            },
            shutdown.clone(),
        ));
        let empty = Arc::new(Table::new(TableConfig::default(), shutdown.clone()));
        full.insert(cartpole_sequence(3, 0), None).await.unwrap();
        let insert = tokio::spawn({
            let full = Arc::clone(&full);
            async move { full.insert(cartpole_sequence(3, 1), None).await }
        });
        let sample = tokio::spawn({
            let empty = Arc::clone(&empty);
            async move { empty.sample(1, 0.0, LONG).await }
        });
        tokio::task::yield_now().await;
        assert!(!insert.is_finished() && !sample.is_finished());
        shutdown.cancel();
        let insert = tokio::time::timeout(Duration::from_secs(5), insert).await.unwrap().unwrap();
        let sample = tokio::time::timeout(Duration::from_secs(5), sample).await.unwrap().unwrap();
        assert!(matches!(insert, Err(Error::Shutdown)), "{insert:?}");
        assert!(matches!(sample, Err(Error::Shutdown)), "{sample:?}");
        assert_eq!(full.len(), 1);
    }

    #[tokio::test]
    async fn signature_is_fixed_by_the_first_item() {
        let table = table(10, 1);
        fill(&table, [0]).await;
        let mut other = cartpole_sequence(3, 1);
        other.behaviour_logits = Some(pb::Tensor::from_f32(&[3, 3], &[0.0; 9]));
        let err = table.insert(other, None).await.unwrap_err();
        assert!(matches!(err, Error::SignatureMismatch { .. }), "{err}");
        assert!(
            err.to_string().contains("2 actions") && err.to_string().contains("3 actions"),
            "{err}"
        );

        let mut other = cartpole_sequence(3, 1);
        other.initial_state = Some(pb::Tensor::from_f32(&[2], &[0.0; 2]));
        assert!(matches!(table.insert(other, None).await, Err(Error::SignatureMismatch { .. })));

        let mut other = cartpole_sequence(3, 1);
        other.observations = Some(pb::Tensor::from_u8(&[3, 4], vec![0; 12]));
        assert!(matches!(table.insert(other, None).await, Err(Error::SignatureMismatch { .. })));

        // The signature survives the table emptying; a longer sequence of the
        // same kind is fine.
        table.sample(1, 0.0, LONG).await.unwrap();
        let mut other = cartpole_sequence(3, 1);
        other.observations = Some(pb::Tensor::from_f32(&[3, 5], &[0.0; 15]));
        assert!(matches!(table.insert(other, None).await, Err(Error::SignatureMismatch { .. })));
        table.insert(cartpole_sequence(7, 2), None).await.unwrap();
        let stats = table.stats();
        assert_eq!((stats.size, stats.inserts), (1, 2));
    }

    #[tokio::test]
    async fn invalid_sequence_changes_nothing() {
        let table = table(10, 1);
        let mut bad = cartpole_sequence(3, 0);
        bad.rewards[1] = f32::NAN;
        assert!(matches!(table.insert(bad, None).await, Err(Error::InvalidSequence(_))));
        // It did not fix the signature either.
        let mut wider = cartpole_sequence(3, 0);
        wider.observations = Some(pb::Tensor::from_f32(&[3, 8], &[0.0; 24]));
        table.insert(wider, None).await.unwrap();
        assert_eq!(table.stats().inserts, 1);
    }

    #[tokio::test]
    async fn priority_updates() {
        let table = table(10, 1);
        fill(&table, [0, 1]).await;
        assert_eq!(table.update_priorities(&[(1, 3.0), (99, 1.0), (0, 1.0)]).unwrap(), 2);
        let err = table.update_priorities(&[(2, 5.0), (1, -1.0)]).unwrap_err();
        assert!(matches!(err, Error::InvalidPriority { key: 1, .. }), "{err}");
        assert!(table.update_priorities(&[(2, f64::NAN)]).is_err());
        let batch = table.sample(2, 0.0, LONG).await.unwrap();
        // Stored, reported, and FIFO order unchanged; the rejected update changed nothing.
        assert_eq!((batch[0].key, batch[0].priority), (1, 3.0));
        assert_eq!((batch[1].key, batch[1].priority), (2, DEFAULT_PRIORITY));
    }

    #[test]
    fn fifo_remover_picks_the_oldest() {
        let mut items = BTreeMap::new();
        for key in [7, 3, 9] {
            items.insert(
                key,
                Item {
                    sequence: Arc::new(pb::Sequence::default()),
                    priority: 1.0,
                    times_sampled: 0,
                },
            );
        }
        assert_eq!(Remover::Fifo.victim(&items), Some(3));
        assert_eq!(Remover::Fifo.victim(&BTreeMap::new()), None);
    }

    #[test]
    fn importance_weights_are_normalised_by_the_batch_maximum() {
        let item = |probability: f64| SampledItem {
            key: 0,
            priority: 1.0,
            probability,
            times_sampled: 1,
            table_size: 4,
            weight: 0.0,
            sequence: Arc::new(pb::Sequence::default()),
        };
        let mut batch = vec![item(0.5), item(0.125)];
        set_importance_weights(&mut batch, 1.0);
        // (4·0.5)^-1 = 0.5, (4·0.125)^-1 = 2 → normalised 0.25, 1.
        assert_eq!(batch.iter().map(|i| i.weight).collect::<Vec<_>>(), vec![0.25, 1.0]);
    }

    /// Many producers and consumers through a small queue: every item comes
    /// out exactly once, and nobody sleeps through a wake-up (a missed one
    /// near the end leaves a producer or consumer waiting with nothing left
    /// to wake it, and the test times out).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_producers_and_consumers_lose_nothing() {
        const PRODUCERS: u64 = 4;
        const PER_PRODUCER: u64 = 250;
        let table = table(3, 1);
        let mut producers = vec![];
        for p in 0..PRODUCERS {
            let table = Arc::clone(&table);
            producers.push(tokio::spawn(async move {
                for i in 0..PER_PRODUCER {
                    table.insert(cartpole_sequence(2, p * 1000 + i), None).await.unwrap();
                }
            }));
        }
        // Two consumers share the PRODUCERS * PER_PRODUCER items exactly.
        let mut consumers = vec![];
        for (batch_size, batches) in [(1usize, 300u64), (2, 350)] {
            let table = Arc::clone(&table);
            consumers.push(tokio::spawn(async move {
                let mut seen = vec![];
                for _ in 0..batches {
                    let batch = table.sample(batch_size, 0.0, Duration::from_secs(20)).await.unwrap();
                    seen.extend(batch.iter().map(|i| i.sequence.actor_id));
                }
                seen
            }));
        }
        let all = async {
            for p in producers {
                p.await.unwrap();
            }
            let mut seen = vec![];
            for c in consumers {
                seen.extend(c.await.unwrap());
            }
            seen
        };
        let mut seen = tokio::time::timeout(Duration::from_secs(10), all).await.expect("queue stalled");
        seen.sort_unstable();
        let expected: Vec<u64> = (0..PRODUCERS).flat_map(|p| (0..PER_PRODUCER).map(move |i| p * 1000 + i)).collect();
        assert_eq!(seen, expected);
        assert!(table.is_empty());
        assert_eq!(table.stats().samples, PRODUCERS * PER_PRODUCER);
    }
}
