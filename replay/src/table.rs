//! One replay table: items (validated sequences) under increasing `u64` keys,
//! a [`Sampler`] that picks which item a sample returns, a second one (the
//! remover) that picks which item leaves when a full table must make room, the
//! `max_times_sampled` rule, importance weights, and the waiting that makes
//! callers block.
//!
//! What blocks (see [`TableConfig`] for the rules): an insert into a full
//! queue (a `fifo` table whose items are sampled out) waits for room, while
//! any other full table evicts its oldest item instead; a sample waits until
//! the table holds `min_size_to_sample` items and can serve the whole batch.
//! On top of that the table's [`RateLimiter`] (samples per insert with an
//! error buffer) can make either side wait for the other. Waiting is on
//! [`tokio::sync::Notify`] (never polling), bounded by a timeout and by the
//! service's shutdown token. No gRPC here: callers get [`SampledItem`]s and
//! [`TableStats`] and turn them into messages themselves.
//!
//! Items hold their steps as shared chunks ([`crate::chunk`]); the table's
//! byte count (and budget) counts each chunk its items reference once, so
//! overlapping items cost little more than their new steps.
//!
//! # Keys
//!
//! A key is `epoch << KEY_EPOCH_SHIFT | n`: the high bits are the start of
//! the service that issued it (see [`Table::begin_epoch`]), the low bits
//! count up from 1 within that start. A restarted service takes a new epoch
//! above every key it restored, so a key it hands out now was never handed
//! out before — not even one acknowledged after the checkpoint it restored
//! from and lost in a crash — and a stale priority update for such a lost
//! key finds nothing instead of an unrelated new item. Keys still increase
//! across restarts, so restored items stay ahead of new ones in FIFO order.
//!
//! # Inserting into several tables
//!
//! [`Table::insert_into_all`] stores one item in several tables at once or
//! in none: it locks them all (always in the same order) and stores only
//! when every one can take the item, otherwise it waits for room in any of
//! them and looks again.
//!
//! # Waiting inserts go in turn
//!
//! An insert held back takes a number (one sequence for all tables) and
//! waits in every table it inserts into; an insert goes ahead only when no
//! smaller number waits in any of its tables. Room a sample makes goes to
//! the writer that has waited longest, not to whichever stream happens to
//! be running when it appears: without the turns, a writer whose next item
//! was ready took every slot of a batch's room, and a second writer's
//! items waited a minute behind it, collected by a policy hundreds of
//! versions old. The longest waiter holds the smallest number in every
//! table it waits on, so no two inserts can hold each other back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Poll;
use std::time::Duration;

use fleet_proto::pb;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{ItemHeader, StoredItem, TableHeader, TableSnapshot};
use crate::chunk::{ChunkStore, ItemSteps};
use crate::config::{Codec, SamplerKind, TableConfig};
use crate::error::Error;
use crate::metrics::{SecondsCounter, TableMetrics};
use crate::rate_limiter::{Counts, RateLimiter};
use crate::sampler::sampler_for;
pub use crate::sampler::{Choice, OrderedSampler, PrioritizedSampler, Sampler, UniformSampler};
use crate::validate::{Signature, ValidationError};
use crate::wal::{Change, KeysRecord, Placement, PrioritiesRecord, Wal};

/// Priority of an item inserted with priority 0 ("let the table choose")
/// before any priority has been seen; after that such items get the largest
/// priority seen so far (inserted or updated), so that new items are sampled
/// at least as eagerly as any other until the learner has scored them.
pub const DEFAULT_PRIORITY: f64 = 1.0;

/// Bits of a key below its epoch: 2^44 − 1 keys per start (decades of
/// inserts at any plausible rate) and 2^20 starts.
pub const KEY_EPOCH_SHIFT: u32 = 44;

/// Most epochs; [`Table::begin_epoch`] refuses the ones beyond.
pub const MAX_KEY_EPOCH: u64 = (1 << (u64::BITS - KEY_EPOCH_SHIFT)) - 1;

/// The first key of `epoch` (keys of epoch 0 are 1, 2, …).
pub fn first_key(epoch: u64) -> u64 {
    (epoch << KEY_EPOCH_SHIFT) | 1
}

/// The epoch a key was issued in.
pub fn key_epoch(key: u64) -> u64 {
    key >> KEY_EPOCH_SHIFT
}

/// Where the epoch of the key before `next_key` ends: the first key of the
/// next epoch (none after the last).
fn key_limit(next_key: u64) -> u64 {
    match key_epoch(next_key.saturating_sub(1)) {
        MAX_KEY_EPOCH => u64::MAX,
        epoch => first_key(epoch + 1),
    }
}

/// One stored item and its bookkeeping.
#[derive(Debug)]
struct Item {
    /// Shared with other tables holding the same item, and with samples, so
    /// nothing is copied under the lock.
    steps: Arc<ItemSteps>,
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
    pub steps: Arc<ItemSteps>,
}

impl SampledItem {
    /// The item's steps as one sequence (assembled from its chunks, off the
    /// table's lock).
    pub fn sequence(&self) -> Result<pb::Sequence, Error> {
        self.steps.to_sequence()
    }

    /// Encoded length of this item's `pb::SampledItem`, sequence included,
    /// known without assembling the sequence.
    pub fn message_len(&self) -> usize {
        let scalars = pb::SampledItem {
            sequence: None,
            key: self.key,
            priority: self.priority,
            probability: self.probability,
            times_sampled: self.times_sampled,
            table_size: self.table_size,
            weight: self.weight,
        };
        prost::Message::encoded_len(&scalars) + delimited_len(SAMPLED_ITEM_SEQUENCE_TAG, self.steps.message_len())
    }
}

/// Field tags of `pb::SampledItem.sequence` and `pb::SampleResponse.items`.
const SAMPLED_ITEM_SEQUENCE_TAG: u32 = 7;
const SAMPLE_RESPONSE_ITEMS_TAG: u32 = 1;

/// Encoded length of a length-delimited field `tag` of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Encoded length of the `pb::SampleResponse` that carries `batch`.
pub fn response_len(batch: &[SampledItem]) -> usize {
    batch
        .iter()
        .map(|item| delimited_len(SAMPLE_RESPONSE_ITEMS_TAG, item.message_len()))
        .sum()
}

/// A snapshot of a table for `Info`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableStats {
    pub name: String,
    pub sampler: &'static str,
    pub remover: &'static str,
    pub size: u64,
    pub max_size: u64,
    /// Bytes the items keep alive (each referenced chunk once), and the
    /// budget (0: none).
    pub bytes: u64,
    pub max_bytes: u64,
    /// Steps of the chunks the items reference, each chunk once.
    pub steps: u64,
    pub compression: Codec,
    pub inserts: u64,
    pub samples: u64,
    pub max_times_sampled: u32,
    /// Items evicted to make room for inserts.
    pub evictions: u64,
    pub rate_limiter: RateLimiter,
}

#[derive(Debug)]
struct State {
    items: BTreeMap<u64, Item>,
    sampler: Box<dyn Sampler>,
    /// Picks eviction victims; told about every key as `sampler` is.
    remover: Box<dyn Sampler>,
    /// Fixed by the first item ever inserted; it outlives that item.
    signature: Option<Signature>,
    /// Keys start at 1, so a priority update with an unset key (0) is simply missing.
    next_key: u64,
    /// The first key of the next epoch: keys from there on belong to a
    /// later start, so inserts stop short of it.
    key_limit: u64,
    /// Bytes of the chunks in `chunks` plus the items' own bytes.
    bytes: u64,
    /// Steps of the chunks in `chunks`.
    steps: u64,
    /// Every chunk the items reference, by id, with how many item segments
    /// reference it: a chunk counts towards `bytes` while that is above 0.
    chunks: HashMap<u64, ChunkUse>,
    inserts: u64,
    samples: u64,
    evictions: u64,
    /// Priority for items inserted without one: the largest seen so far,
    /// starting at [`DEFAULT_PRIORITY`].
    max_priority_seen: f64,
    /// With `max_times_sampled > 0`: draws the items present can still give
    /// before they are sampled out, `Σ (max_times_sampled − times_sampled)`.
    /// A batch drawn with replacement needs this many, not distinct items.
    draws_left: u64,
    /// The number of this table's last write-ahead-log record (see
    /// [`crate::wal`]); 0 before the first, and always without a log.
    wal_seq: u64,
    /// The turns of the inserts waiting on this table (see the module's
    /// "Waiting inserts go in turn").
    waiting_inserts: BTreeSet<u64>,
}

#[derive(Debug)]
struct ChunkUse {
    segments: u32,
    bytes: u64,
    steps: u64,
}

impl State {
    /// Bytes that storing `steps` would add: its chunks not yet referenced
    /// here, and its own bytes.
    fn added_bytes(&self, steps: &ItemSteps) -> u64 {
        new_bytes(steps, |id| self.chunks.contains_key(&id))
    }

    /// Stores `item` under `key` in the items, the sampler and the remover.
    fn add(&mut self, key: u64, item: Item, max_times_sampled: u32) {
        for segment in item.steps.segments() {
            let chunk = &segment.chunk;
            let usage = self.chunks.entry(chunk.id()).or_insert_with(|| ChunkUse {
                segments: 0,
                bytes: chunk.bytes(),
                steps: chunk.steps() as u64,
            });
            if usage.segments == 0 {
                self.bytes += usage.bytes;
                self.steps += usage.steps;
            }
            usage.segments += 1;
        }
        self.bytes += item.steps.own_bytes();
        self.draws_left += u64::from(max_times_sampled.saturating_sub(item.times_sampled));
        self.sampler.insert(key, item.priority);
        self.remover.insert(key, item.priority);
        self.items.insert(key, item);
    }

    /// Removes `key` from the items and the sampler, keeping `draws_left`
    /// and the chunk counts.
    fn remove(&mut self, key: u64, max_times_sampled: u32) -> Option<Item> {
        let item = self.items.remove(&key)?;
        self.sampler.remove(key);
        self.remover.remove(key);
        for segment in item.steps.segments() {
            let id = segment.chunk.id();
            let Some(usage) = self.chunks.get_mut(&id) else {
                unreachable!("chunk {id} of stored item {key} is not counted");
            };
            usage.segments -= 1;
            if usage.segments == 0 {
                self.bytes -= usage.bytes;
                self.steps -= usage.steps;
                self.chunks.remove(&id);
            }
        }
        self.bytes -= item.steps.own_bytes();
        if max_times_sampled > 0 {
            self.draws_left -= u64::from(max_times_sampled.saturating_sub(item.times_sampled));
        }
        Some(item)
    }
}

/// A replay table. Shared between request handlers behind an `Arc`.
#[derive(Debug)]
pub struct Table {
    config: TableConfig,
    /// From `config`; decides when inserts and samples may go ahead.
    limiter: RateLimiter,
    state: Mutex<State>,
    /// Woken whenever items leave, so that waiting inserts look again.
    room: Notify,
    /// Woken whenever items arrive, so that waiting samples look again.
    arrivals: Notify,
    /// Cancelled when the service shuts down: every wait ends with `Shutdown`.
    shutdown: CancellationToken,
    /// Where [`Table::insert`] stores new steps; shared by the service's tables.
    store: Arc<ChunkStore>,
    metrics: TableMetrics,
    /// With `replay.durability = "wal"`: where every change is logged.
    wal: OnceLock<Arc<Wal>>,
}

/// A logged change, applied again after a restart (see [`Table::redo`]).
#[derive(Debug)]
pub enum Redo {
    Insert { key: u64, priority: f64, steps: Arc<ItemSteps> },
    Evict(Vec<u64>),
    Sample(Vec<u64>),
    Priorities(Vec<(u64, f64)>),
}

impl Table {
    /// An empty table whose random samplers are seeded from the OS.
    pub fn new(config: TableConfig, shutdown: CancellationToken) -> Self {
        Self::with_seed(config, shutdown, rand::random())
    }

    /// An empty table whose random draws are fixed by `seed`, for tests and
    /// reproducible runs.
    pub fn with_seed(config: TableConfig, shutdown: CancellationToken, seed: u64) -> Self {
        Self::build(config, shutdown, seed, ChunkStore::new())
    }

    /// An empty table storing new steps in `store`, the service's shared one.
    pub fn sharing(config: TableConfig, shutdown: CancellationToken, store: Arc<ChunkStore>) -> Self {
        Self::build(config, shutdown, rand::random(), store)
    }

    fn build(config: TableConfig, shutdown: CancellationToken, seed: u64, store: Arc<ChunkStore>) -> Self {
        let config = config.effective();
        let sampler = sampler_for(config.sampler, &config, seed);
        // Its own stream of draws, so that removals do not shift the samples.
        let remover = sampler_for(config.remover, &config, seed ^ 0x9e37_79b9_7f4a_7c15);
        let metrics = TableMetrics::new(&config.name);
        metrics.items.set(0.0);
        metrics.bytes.set(0.0);
        metrics.max_bytes.set(config.max_bytes as f64);
        Self {
            state: Mutex::new(State {
                items: BTreeMap::new(),
                sampler,
                remover,
                signature: None,
                next_key: first_key(0),
                key_limit: first_key(1),
                bytes: 0,
                steps: 0,
                chunks: HashMap::new(),
                inserts: 0,
                samples: 0,
                evictions: 0,
                max_priority_seen: DEFAULT_PRIORITY,
                draws_left: 0,
                wal_seq: 0,
                waiting_inserts: BTreeSet::new(),
            }),
            limiter: config.rate_limiter(),
            config,
            room: Notify::new(),
            arrivals: Notify::new(),
            shutdown,
            store,
            metrics,
            wal: OnceLock::new(),
        }
    }

    /// Logs every later change of this table to `wal`. Called once, after
    /// the table is restored and before it serves.
    pub fn attach_wal(&self, wal: Arc<Wal>) {
        if self.wal.set(wal).is_err() {
            unreachable!("table {:?} was given a second write-ahead log", self.config.name);
        }
    }

    /// Logs `change` under the table's lock, numbered as the table's next record.
    fn log(&self, state: &mut State, change: impl FnOnce(u64) -> Change) {
        if let Some(wal) = self.wal.get() {
            state.wal_seq += 1;
            wal.log(change(state.wal_seq));
        }
    }

    /// The chunk store this table's [`Table::insert`] stores steps in.
    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
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

    /// Validates `sequence`, stores its steps as a new chunk and inserts it
    /// with its priority, as [`Table::insert_item`] does.
    pub async fn insert(&self, sequence: pb::Sequence, timeout: Option<Duration>) -> Result<u64, Error> {
        let priority = sequence.priority;
        let steps = self.store.item(sequence, self.config.compression())?;
        self.insert_item(steps, priority, timeout).await
    }

    /// Refuses an item whose signature differs from the one the table's
    /// first item fixed.
    pub fn check_signature(&self, signature: &Signature) -> Result<(), Error> {
        self.signature_matches(&self.lock(), signature)
    }

    fn signature_matches(&self, state: &State, signature: &Signature) -> Result<(), Error> {
        match &state.signature {
            Some(expected) if expected != signature => Err(Error::SignatureMismatch {
                table: self.config.name.clone(),
                expected: Box::new(*expected),
                found: Box::new(*signature),
            }),
            _ => Ok(()),
        }
    }

    /// Stores an item with `priority` (or, when that is 0, the largest
    /// priority seen so far). A full queue (at `max_size` items, or without
    /// room for the item's new chunks in `max_bytes`) makes it wait (up to
    /// `timeout` when given); any other full table evicts items (as its
    /// remover picks) until it fits. Either also waits while the rate
    /// limiter holds inserts back (they have run ahead of samples). Returns
    /// the new item's key. A refused item (bad priority, larger than the
    /// whole byte budget, or not matching the table's signature) changes
    /// nothing. Dropping the future before it completes stores nothing.
    pub async fn insert_item(&self, steps: Arc<ItemSteps>, priority: f64, timeout: Option<Duration>) -> Result<u64, Error> {
        let keys = Self::insert_into_all(&[self], steps, priority, timeout).await?;
        Ok(keys[0])
    }

    /// [`Table::insert_item`] into every table of `tables` at once: the item
    /// is stored in all of them, under the same lock hold, or in none.
    /// Whatever one table refuses (priority, byte budget, signature, a table
    /// named twice) is refused before anything is stored. While any table
    /// cannot take the item yet (a full queue, its rate limiter), nothing is
    /// stored anywhere and the insert waits for room in any of them, then
    /// looks at all again; so a timeout, shutdown, or the caller dropping
    /// the future (a client that leaves mid-wait) leaves every table as it
    /// was. Returns the keys in the order of `tables`.
    pub async fn insert_into_all(
        tables: &[&Table],
        steps: Arc<ItemSteps>,
        priority: f64,
        timeout: Option<Duration>,
    ) -> Result<Vec<u64>, Error> {
        if !(priority.is_finite() && priority >= 0.0) {
            return Err(ValidationError::Priority(priority).into());
        }
        for (i, table) in tables.iter().enumerate() {
            if tables[..i].iter().any(|other| std::ptr::eq(*other, *table)) {
                // Locking it twice would deadlock.
                return Err(Error::InvalidInsert(format!("table {:?} is named twice", table.name())));
            }
            table.check_budget(&steps)?;
        }
        // One lock order for every insert, so that two inserts into the
        // same tables cannot each hold one lock and wait for the other.
        let mut lock_order: Vec<usize> = (0..tables.len()).collect();
        lock_order.sort_by_key(|&i| std::ptr::from_ref(tables[i]) as usize);
        let deadline = timeout.map(|t| Instant::now() + t);
        // Each table's wait is counted from when it first held the item back.
        let mut timers: Vec<WaitTimer<'_>> = tables
            .iter()
            .map(|t| WaitTimer {
                started: None,
                metric: &t.metrics.insert_blocked_seconds,
            })
            .collect();
        let mut turn = Turn { tables, number: None };
        loop {
            if tables.iter().any(|t| t.shutdown.is_cancelled()) {
                return Err(Error::Shutdown);
            }
            // Register for the wake-ups before looking, so that room made
            // between the look and the wait is not missed.
            let mut room: Vec<_> = tables.iter().map(|t| Box::pin(t.room.notified())).collect();
            for notified in &mut room {
                notified.as_mut().enable();
            }
            let blocked = {
                let mut locked: Vec<(usize, MutexGuard<'_, State>)> = lock_order.iter().map(|&i| (i, tables[i].lock())).collect();
                locked.sort_by_key(|&(i, _)| i);
                let mut blocked = Vec::new();
                for (i, (table, (_, state))) in tables.iter().zip(&locked).enumerate() {
                    table.signature_matches(state, steps.signature())?;
                    if state.next_key >= state.key_limit {
                        return Err(Error::KeysExhausted {
                            table: table.config.name.clone(),
                        });
                    }
                    let waiter_ahead = state.waiting_inserts.first().is_some_and(|&first| Some(first) != turn.number);
                    if waiter_ahead || !table.can_take(state, &steps) {
                        blocked.push(i);
                    }
                }
                if !blocked.is_empty() && turn.number.is_none() {
                    let number = NEXT_TURN.fetch_add(1, Ordering::Relaxed);
                    for (_, state) in &mut locked {
                        state.waiting_inserts.insert(number);
                    }
                    turn.number = Some(number);
                }
                if blocked.is_empty() {
                    let had_turn = turn.number.take();
                    if let Some(number) = had_turn {
                        for (_, state) in &mut locked {
                            state.waiting_inserts.remove(&number);
                        }
                    }
                    let stored: Vec<(u64, u64)> = tables
                        .iter()
                        .zip(&mut locked)
                        .map(|(table, (_, state))| table.store_item(state, Arc::clone(&steps), priority))
                        .collect();
                    // Logged under every table's lock, after the evictions
                    // it caused, as one record: all tables or none.
                    if let Some(wal) = tables[0].wal.get() {
                        let placements = tables
                            .iter()
                            .zip(&mut locked)
                            .zip(&stored)
                            .map(|((table, (_, state)), &(key, _))| {
                                state.wal_seq += 1;
                                Placement {
                                    table: table.config.name.clone(),
                                    seq: state.wal_seq,
                                    key,
                                    priority: state.items.get(&key).map_or(0.0, |item| item.priority),
                                }
                            })
                            .collect();
                        wal.log_insert(placements, &steps);
                    }
                    drop(locked);
                    for (table, &(_, evicted)) in tables.iter().zip(&stored) {
                        table.metrics.inserts.increment(1);
                        if evicted > 0 {
                            table.metrics.evictions.increment(evicted);
                        }
                        table.arrivals.notify_waiters();
                        if had_turn.is_some() {
                            // The next in line may go now.
                            table.room.notify_waiters();
                        }
                    }
                    return Ok(stored.into_iter().map(|(key, _)| key).collect());
                }
                blocked
            };
            for &i in &blocked {
                timers[i].start();
            }
            let mut cancelled: Vec<_> = tables.iter().map(|t| Box::pin(t.shutdown.cancelled())).collect();
            let any_room = std::future::poll_fn(|cx| {
                if room.iter_mut().any(|n| n.as_mut().poll(cx).is_ready()) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            let any_cancelled = std::future::poll_fn(|cx| {
                if cancelled.iter_mut().any(|c| c.as_mut().poll(cx).is_ready()) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            let expired = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = any_room => {}
                () = any_cancelled => return Err(Error::Shutdown),
                () = expired => {
                    return Err(Error::InsertTimeout {
                        table: tables[blocked[0]].config.name.clone(),
                        waited: timeout.unwrap_or_default(),
                    });
                }
            }
        }
    }

    /// Refuses an item larger than the table's whole byte budget: no
    /// eviction could make room for it.
    fn check_budget(&self, steps: &ItemSteps) -> Result<(), Error> {
        let max_bytes = self.config.max_bytes;
        let bytes = new_bytes(steps, |_| false);
        if max_bytes > 0 && bytes > max_bytes {
            return Err(Error::TooLarge {
                table: self.config.name.clone(),
                bytes,
                max_bytes,
            });
        }
        Ok(())
    }

    /// Whether `state` must lose an item before `steps` fits.
    fn is_full(&self, state: &State, steps: &ItemSteps) -> bool {
        let max_bytes = self.config.max_bytes;
        state.items.len() >= self.config.max_size || (max_bytes > 0 && state.bytes + state.added_bytes(steps) > max_bytes)
    }

    /// Whether an insert may store `steps` now: a full queue waits for room
    /// (other tables evict), and the rate limiter may hold inserts back.
    fn can_take(&self, state: &State, steps: &ItemSteps) -> bool {
        !(self.config.blocks_inserts_when_full() && self.is_full(state, steps)) && self.limiter.can_insert(counts(state))
    }

    /// Stores `steps` under the next key, evicting as the remover picks
    /// until it fits; the caller has checked [`Table::can_take`], the
    /// signature and the key limit under the same lock. Returns the key and
    /// the number of items evicted.
    fn store_item(&self, state: &mut State, steps: Arc<ItemSteps>, priority: f64) -> (u64, u64) {
        let max_times_sampled = self.config.max_times_sampled;
        let mut victims = Vec::new();
        while self.is_full(state, &steps) {
            let Some(Choice { key: victim, .. }) = state.remover.sample() else {
                break;
            };
            state.remove(victim, max_times_sampled);
            victims.push(victim);
        }
        let evicted = victims.len() as u64;
        state.evictions += evicted;
        if !victims.is_empty() {
            self.log(state, |seq| {
                Change::Evict(KeysRecord {
                    table: self.config.name.clone(),
                    seq,
                    keys: victims,
                })
            });
        }
        if state.signature.is_none() {
            state.signature = Some(*steps.signature());
        }
        let priority = if priority > 0.0 {
            state.max_priority_seen = state.max_priority_seen.max(priority);
            priority
        } else {
            state.max_priority_seen
        };
        let key = state.next_key;
        state.next_key += 1;
        let item = Item {
            steps,
            priority,
            times_sampled: 0,
        };
        state.add(key, item, max_times_sampled);
        state.inserts += 1;
        self.publish_size(state);
        (key, evicted)
    }

    /// Issues this table's next keys from `epoch` on (see the module's
    /// "Keys"): the service calls it once at start, with an epoch above the
    /// epoch of every key the table holds or ever issued. Keys already
    /// issued in a later epoch are kept.
    pub fn begin_epoch(&self, epoch: u64) -> Result<(), Error> {
        if epoch > MAX_KEY_EPOCH {
            return Err(Error::KeysExhausted {
                table: self.config.name.clone(),
            });
        }
        let mut state = self.lock();
        state.next_key = state.next_key.max(first_key(epoch));
        state.key_limit = key_limit(state.next_key);
        Ok(())
    }

    /// The key the next insert gets.
    pub fn next_key(&self) -> u64 {
        self.lock().next_key
    }

    /// Samples a batch of `n` draws, waiting up to `timeout` until the table
    /// can serve it: the rate limiter allows `n` more samples (at least
    /// `min_size_to_sample` items, and the samples-per-insert cursor stays
    /// within its buffer), and for a `fifo`
    /// table `n` items, for other tables (which draw with replacement) `n`
    /// draws before items are sampled out. Each draw counts towards the
    /// item's `max_times_sampled`; an item that reaches it leaves the table
    /// at once, so later draws of the batch cannot return it. `beta` is the
    /// importance-sampling exponent (ignored by unbiased samplers).
    pub async fn sample(&self, n: usize, beta: f64, timeout: Duration) -> Result<Vec<SampledItem>, Error> {
        self.sample_within(n, beta, timeout, usize::MAX).await
    }

    /// [`Table::sample`] for a batch that must fit in one message of
    /// `max_message_bytes`: a batch whose `pb::SampleResponse` would be
    /// larger is put back under the same lock it was drawn under (no item
    /// leaves, no sample is counted) and the call fails with
    /// [`Error::BatchTooLarge`]. Whether it fits is known from the items'
    /// sizes, without assembling them.
    pub async fn sample_within(&self, n: usize, beta: f64, timeout: Duration, max_message_bytes: usize) -> Result<Vec<SampledItem>, Error> {
        self.check_sample_request(n, beta)?;
        let requested = Instant::now();
        let max_times_sampled = self.config.max_times_sampled;
        let batch = self
            .wait_for(
                &self.arrivals,
                Some(timeout),
                &self.metrics.sample_wait_seconds,
                |waited| Error::SampleTimeout {
                    table: self.config.name.clone(),
                    wanted: n,
                    min_size: self.config.min_size_to_sample,
                    waited,
                },
                |state| {
                    if !self.can_serve(state, n) {
                        return Ok(None);
                    }
                    let drawn = draw(state, n, beta, max_times_sampled);
                    let bytes = response_len(&drawn);
                    if bytes > max_message_bytes {
                        undraw(state, &drawn, max_times_sampled);
                        return Err(Error::BatchTooLarge {
                            table: self.config.name.clone(),
                            items: n,
                            bytes,
                            max_bytes: max_message_bytes,
                        });
                    }
                    self.publish_size(state);
                    // Built only when there is a log: sampling without one pays nothing.
                    self.log(state, |seq| {
                        Change::Sample(KeysRecord {
                            table: self.config.name.clone(),
                            seq,
                            keys: drawn.iter().map(|item| item.key).collect(),
                        })
                    });
                    Ok(Some(drawn))
                },
            )
            .await?;
        self.metrics.samples.increment(n as u64);
        self.metrics.sample_latency.record(requested.elapsed().as_secs_f64());
        // Every sample moves the rate limiter's cursor, so inserts waiting
        // on it (not only on room) must look again.
        self.room.notify_waiters();
        Ok(batch)
    }

    /// Whether a batch of `n` can be drawn whole now.
    fn can_serve(&self, state: &State, n: usize) -> bool {
        let size = state.items.len();
        if !self.limiter.can_sample(counts(state), n) {
            return false;
        }
        match (self.config.sampler, self.config.max_times_sampled) {
            // A queue hands out a batch of distinct items, as it always has.
            (SamplerKind::Fifo, _) => size >= n,
            (_, 0) => size >= 1,
            _ => state.draws_left >= n as u64,
        }
    }

    /// Rejects batch sizes that can never be served (0, or above `max_size`)
    /// and importance-sampling exponents that are negative or not finite.
    /// Tables that draw with replacement could serve larger batches, but
    /// `max_size` also bounds what one request can make the server allocate.
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

    /// Sets new priorities; a prioritised table samples with them from the
    /// next draw on. All are checked first: one negative or non-finite
    /// priority rejects the whole update and changes nothing. Keys no longer
    /// in the table are skipped and counted; the count is returned.
    pub fn update_priorities(&self, updates: &[(u64, f64)]) -> Result<u64, Error> {
        if let Some(&(key, priority)) = updates.iter().find(|(_, p)| !(p.is_finite() && *p >= 0.0)) {
            return Err(Error::InvalidPriority { key, priority });
        }
        let mut state = self.lock();
        let state = &mut *state;
        let applied = set_priorities(state, updates);
        let missing = (updates.len() - applied.len()) as u64;
        if !applied.is_empty() {
            self.log(state, |seq| {
                let (keys, priorities) = applied.into_iter().unzip();
                Change::Priorities(PrioritiesRecord {
                    table: self.config.name.clone(),
                    seq,
                    keys,
                    priorities,
                })
            });
        }
        if missing > 0 {
            self.metrics.missing_priority_updates.increment(missing);
        }
        self.metrics.priority_updates.increment(updates.len() as u64 - missing);
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
            bytes: state.bytes,
            max_bytes: self.config.max_bytes,
            steps: state.steps,
            compression: self.config.compression,
            inserts: state.inserts,
            samples: state.samples,
            max_times_sampled: self.config.max_times_sampled,
            evictions: state.evictions,
            rate_limiter: self.limiter,
        }
    }

    /// The table's items and counters now, taken under the lock in one
    /// pass that copies bookkeeping and shares the sequences (no step data
    /// is copied), so inserts and samples wait only that long.
    pub fn snapshot(&self) -> TableSnapshot {
        let state = self.lock();
        TableSnapshot {
            header: TableHeader {
                name: self.config.name.clone(),
                next_key: state.next_key,
                inserts: state.inserts,
                samples: state.samples,
                evictions: state.evictions,
                max_priority_seen: state.max_priority_seen,
                items: state.items.len() as u64,
                wal_seq: state.wal_seq,
            },
            items: state
                .items
                .iter()
                .map(|(&key, item)| StoredItem {
                    meta: ItemHeader {
                        key,
                        priority: item.priority,
                        times_sampled: item.times_sampled,
                    },
                    steps: Arc::clone(&item.steps),
                })
                .collect(),
        }
    }

    /// A table under `config` holding a snapshot's items and counters,
    /// storing new steps in `store`. Every item is checked as an insert would
    /// be (one signature, finite priority, within `max_size` and
    /// `max_bytes`, keys increasing and below the next key); the first
    /// problem is an error and no table is made.
    pub fn restore(
        config: TableConfig,
        shutdown: CancellationToken,
        store: Arc<ChunkStore>,
        snapshot: TableSnapshot,
    ) -> Result<Self, Error> {
        let table = Self::sharing(config, shutdown, store);
        let name = table.config.name.clone();
        let bad = |what: String| Error::Checkpoint(format!("table {name:?} in the checkpoint: {what}"));
        let header = snapshot.header;
        if snapshot.items.len() > table.config.max_size {
            return Err(bad(format!(
                "{} items, more than max_size {}",
                snapshot.items.len(),
                table.config.max_size
            )));
        }
        let max_times_sampled = table.config.max_times_sampled;
        {
            let mut state = table.lock();
            let state = &mut *state;
            let mut previous = 0;
            for StoredItem { meta, steps } in snapshot.items {
                let key = meta.key;
                let signature = steps.signature();
                if let Some(expected) = &state.signature
                    && expected != signature
                {
                    return Err(bad(format!("item {key} holds {signature}, other items {expected}")));
                }
                state.signature.get_or_insert(*signature);
                if key <= previous || key >= header.next_key {
                    return Err(bad(format!("item key {key} out of order (next key {})", header.next_key)));
                }
                previous = key;
                if !(meta.priority.is_finite() && meta.priority >= 0.0) {
                    return Err(bad(format!("item {key} has priority {}", meta.priority)));
                }
                let item = Item {
                    steps,
                    priority: meta.priority,
                    times_sampled: meta.times_sampled,
                };
                state.add(key, item, max_times_sampled);
                if table.config.max_bytes > 0 && state.bytes > table.config.max_bytes {
                    return Err(bad(format!("items exceed max_bytes {}", table.config.max_bytes)));
                }
            }
            state.next_key = header.next_key.max(1);
            state.key_limit = key_limit(state.next_key);
            state.inserts = header.inserts;
            state.samples = header.samples;
            state.evictions = header.evictions;
            if !(header.max_priority_seen.is_finite() && header.max_priority_seen >= 0.0) {
                return Err(bad(format!("largest priority seen is {}", header.max_priority_seen)));
            }
            state.max_priority_seen = header.max_priority_seen;
            state.wal_seq = header.wal_seq;
            table.publish_size(state);
            // The counters go on from where they were, in metrics as in `Info`.
            table.metrics.inserts.absolute(header.inserts);
            table.metrics.samples.absolute(header.samples);
            table.metrics.evictions.absolute(header.evictions);
        }
        Ok(table)
    }

    /// Applies a change the write-ahead log holds as this table's record
    /// `seq`, if the table lacks it: a record at or below the table's last
    /// one is skipped (`Ok(false)`), the next one is applied as it happened
    /// the first time (no waiting, no rate limit), and any later one is an
    /// error, since the records between are missing.
    pub fn redo(&self, seq: u64, change: Redo) -> Result<bool, String> {
        let name = &self.config.name;
        let mut state = self.lock();
        let state = &mut *state;
        if seq <= state.wal_seq {
            return Ok(false);
        }
        if seq != state.wal_seq + 1 {
            return Err(format!(
                "table {name:?}'s record {seq} follows its record {}; the records between are missing",
                state.wal_seq
            ));
        }
        let max_times_sampled = self.config.max_times_sampled;
        match change {
            Redo::Insert { key, priority, steps } => {
                if let Some(expected) = &state.signature
                    && expected != steps.signature()
                {
                    return Err(format!(
                        "table {name:?}: item {key} holds {}, other items {expected}",
                        steps.signature()
                    ));
                }
                if key < state.next_key || !(priority.is_finite() && priority >= 0.0) {
                    return Err(format!(
                        "table {name:?}: item {key} with priority {priority} (the next key is {})",
                        state.next_key
                    ));
                }
                state.signature.get_or_insert(*steps.signature());
                state.next_key = key + 1;
                state.max_priority_seen = state.max_priority_seen.max(priority);
                let item = Item {
                    steps,
                    priority,
                    times_sampled: 0,
                };
                state.add(key, item, max_times_sampled);
                state.inserts += 1;
            }
            Redo::Evict(keys) => {
                for key in keys {
                    if state.remove(key, max_times_sampled).is_some() {
                        state.evictions += 1;
                    }
                }
            }
            Redo::Sample(keys) => {
                state.samples += keys.len() as u64;
                for key in keys {
                    let Some(item) = state.items.get_mut(&key) else {
                        continue;
                    };
                    item.times_sampled += 1;
                    if max_times_sampled > 0 {
                        state.draws_left -= 1;
                        if item.times_sampled >= max_times_sampled {
                            state.remove(key, max_times_sampled);
                        }
                    }
                }
            }
            Redo::Priorities(updates) => {
                set_priorities(state, &updates);
            }
        }
        state.wal_seq = seq;
        Ok(true)
    }

    /// Publishes the size and counters after [`Table::redo`]s, in metrics as in `Info`.
    pub fn publish_restored(&self) {
        let state = self.lock();
        self.publish_size(&state);
        self.metrics.inserts.absolute(state.inserts);
        self.metrics.samples.absolute(state.samples);
        self.metrics.evictions.absolute(state.evictions);
    }

    /// Sets the size gauges; called under the lock after every change.
    fn publish_size(&self, state: &State) {
        self.metrics.items.set(state.items.len() as f64);
        self.metrics.bytes.set(state.bytes as f64);
        self.metrics.steps.set(state.steps as f64);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that can panic runs under this lock except on a bug; a
        // poisoned lock means the table's invariants may be broken.
        match self.state.lock() {
            Ok(state) => state,
            Err(_) => panic!("replay table lock poisoned: a panic under it may have broken the table's invariants"),
        }
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
        waited_metric: &SecondsCounter,
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

/// Bytes of `steps`' own data and of its chunks for which `known` is false,
/// each chunk once.
fn new_bytes(steps: &ItemSteps, known: impl Fn(u64) -> bool) -> u64 {
    let segments = steps.segments();
    let chunks: u64 = segments
        .iter()
        .enumerate()
        .filter(|&(i, s)| !known(s.chunk.id()) && !segments[..i].iter().any(|p| p.chunk.id() == s.chunk.id()))
        .map(|(_, s)| s.chunk.bytes())
        .sum();
    chunks + steps.own_bytes()
}

/// Sets the priorities of the keys present; returns the updates applied.
fn set_priorities(state: &mut State, updates: &[(u64, f64)]) -> Vec<(u64, f64)> {
    let mut applied = Vec::with_capacity(updates.len());
    for &(key, priority) in updates {
        if let Some(item) = state.items.get_mut(&key) {
            item.priority = priority;
            state.sampler.update(key, priority);
            state.remover.update(key, priority);
            state.max_priority_seen = state.max_priority_seen.max(priority);
            applied.push((key, priority));
        }
    }
    applied
}

/// What the rate limiter decides on.
fn counts(state: &State) -> Counts {
    Counts {
        size: state.items.len(),
        inserts: state.inserts,
        samples: state.samples,
    }
}

/// Draws `n` items under the lock (the caller has checked that the table can
/// serve them all).
fn draw(state: &mut State, n: usize, beta: f64, max_times_sampled: u32) -> Vec<SampledItem> {
    let mut batch = Vec::with_capacity(n);
    for _ in 0..n {
        let table_size = state.items.len() as u64;
        // The caller checked that `n` draws are available, so every draw
        // finds an item.
        let Some(choice) = state.sampler.sample() else {
            break;
        };
        let Some(item) = state.items.get_mut(&choice.key) else {
            unreachable!("sampler returned key {} that is not in the table", choice.key)
        };
        item.times_sampled += 1;
        if max_times_sampled > 0 {
            state.draws_left -= 1;
        }
        batch.push(SampledItem {
            key: choice.key,
            priority: item.priority,
            probability: choice.probability,
            times_sampled: item.times_sampled,
            table_size,
            weight: 1.0,
            steps: Arc::clone(&item.steps),
        });
        if max_times_sampled > 0 && item.times_sampled >= max_times_sampled {
            state.remove(choice.key, max_times_sampled);
        }
    }
    state.samples += batch.len() as u64;
    if state.sampler.is_prioritised() {
        set_importance_weights(&mut batch, beta);
    }
    batch
}

/// Undoes [`draw`] of `batch` under the same lock: every draw is taken back
/// (last first), items that it sampled out return under their keys with
/// their priorities, and the samples are not counted. The samplers then
/// index exactly the items and priorities they did before the draw.
fn undraw(state: &mut State, batch: &[SampledItem], max_times_sampled: u32) {
    for drawn in batch.iter().rev() {
        match state.items.get_mut(&drawn.key) {
            Some(item) => {
                item.times_sampled -= 1;
                if max_times_sampled > 0 {
                    state.draws_left += 1;
                }
            }
            None => {
                let item = Item {
                    steps: Arc::clone(&drawn.steps),
                    priority: drawn.priority,
                    times_sampled: drawn.times_sampled - 1,
                };
                state.add(drawn.key, item, max_times_sampled);
            }
        }
    }
    state.samples -= batch.len() as u64;
}

/// `w_i = (N_i·P(i))^-β / max_j w_j` (PER), with `N_i` the table size at draw `i`.
///
/// Computed as `(N_i·P(i) / min_j N_j·P(j))^-β`, the same value, which stays
/// in `(0, 1]` where the unnormalised weights of improbable items would
/// overflow.
fn set_importance_weights(batch: &mut [SampledItem], beta: f64) {
    let scaled = |item: &SampledItem| item.table_size as f64 * item.probability;
    let smallest = batch.iter().map(scaled).fold(f64::INFINITY, f64::min);
    if !(smallest > 0.0 && smallest.is_finite()) {
        return;
    }
    for item in batch.iter_mut() {
        item.weight = (scaled(item) / smallest).powf(-beta);
    }
}

/// Where the next insert held back takes its turn; one sequence for every
/// table, so that the longest waiter is first in all the tables it waits on.
static NEXT_TURN: AtomicU64 = AtomicU64::new(1);

/// An insert's place in line in `tables`, once it has been held back; it
/// gives the place up when dropped (a timeout, shutdown, or the caller
/// leaving), so that the inserts behind it move on.
struct Turn<'a> {
    tables: &'a [&'a Table],
    number: Option<u64>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(number) = self.number.take() {
            for table in self.tables {
                table.lock().waiting_inserts.remove(&number);
                table.room.notify_waiters();
            }
        }
    }
}

/// Adds the time since the first failed attempt to a metric when dropped,
/// so waits that end by cancellation are counted too.
struct WaitTimer<'a> {
    started: Option<Instant>,
    metric: &'a SecondsCounter,
}

impl WaitTimer<'_> {
    fn start(&mut self) {
        self.started.get_or_insert_with(Instant::now);
    }
}

impl Drop for WaitTimer<'_> {
    fn drop(&mut self) {
        if let Some(started) = self.started {
            self.metric.add(started.elapsed());
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
            ..TableConfig::default()
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
        assert_eq!(batch.iter().map(|i| i.steps.actor_id()).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(batch.iter().map(|i| i.table_size).collect::<Vec<_>>(), vec![4, 3, 2]);
        assert_eq!(batch[0].probability, 0.25);
        assert!(
            batch
                .iter()
                .all(|i| i.times_sampled == 1 && i.weight == 1.0 && i.priority == DEFAULT_PRIORITY)
        );
        assert_eq!(batch[1].sequence().unwrap(), cartpole_sequence(3, 11));
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
        assert_eq!(table.sample(1, 0.0, LONG).await.unwrap()[0].steps.actor_id(), 0);
        assert!(table.is_empty());
    }

    /// What an uncompressed item of `sequence` adds to a table's bytes: its
    /// steps alone (the actor id stays with the item).
    fn stored_bytes(mut sequence: pb::Sequence) -> u64 {
        sequence.actor_id = 0;
        prost::Message::encoded_len(&sequence) as u64
    }

    fn budgeted(sampler: SamplerKind, max_bytes: u64) -> Arc<Table> {
        let config = TableConfig {
            name: "t".into(),
            max_size: 100,
            max_bytes,
            sampler,
            max_times_sampled: 1,
            ..TableConfig::default()
        };
        Arc::new(Table::new(config, CancellationToken::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_byte_budget_blocks_a_queue_and_evicts_elsewhere() {
        // cartpole_sequence(3, seed) has the same encoded size for seeds 1..=127.
        let one = stored_bytes(cartpole_sequence(3, 1));
        let queue = budgeted(SamplerKind::Fifo, 2 * one + one / 2);
        fill(&queue, [1, 2]).await;
        assert_eq!((queue.stats().bytes, queue.stats().max_bytes), (2 * one, 2 * one + one / 2));
        let err = queue
            .insert(cartpole_sequence(3, 3), Some(Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InsertTimeout { .. }), "{err}");
        queue.sample(1, 0.0, LONG).await.unwrap();
        assert_eq!(queue.stats().bytes, one);
        fill(&queue, [3]).await;
        assert_eq!((queue.len(), queue.stats().bytes), (2, 2 * one));

        let evicting = budgeted(SamplerKind::Uniform, 2 * one + one / 2);
        fill(&evicting, [1, 2, 3, 4]).await;
        let stats = evicting.stats();
        assert_eq!((stats.size, stats.bytes, stats.evictions), (2, 2 * one, 2));
        let batch = evicting.sample(2, 0.0, LONG).await.unwrap();
        let mut actors: Vec<_> = batch.iter().map(|i| i.steps.actor_id()).collect();
        actors.sort();
        assert!(actors.iter().all(|a| *a >= 3), "the oldest items left first: {actors:?}");
    }

    #[tokio::test]
    async fn a_sequence_larger_than_the_budget_is_refused_and_changes_nothing() {
        let one = stored_bytes(cartpole_sequence(3, 0));
        let table = budgeted(SamplerKind::Uniform, one);
        fill(&table, [0]).await;
        let err = table.insert(cartpole_sequence(5, 1), None).await.unwrap_err();
        assert!(matches!(err, Error::TooLarge { max_bytes, .. } if max_bytes == one), "{err}");
        assert!(err.to_string().contains("\"t\""), "{err}");
        let stats = table.stats();
        assert_eq!((stats.size, stats.bytes, stats.inserts, stats.evictions), (1, one, 1, 0));
    }

    /// A uniform table (items never sampled out) with a samples-per-insert limiter.
    fn ratio_table(samples_per_insert: f64, min_size: usize, error_buffer: f64) -> Arc<Table> {
        let config = TableConfig {
            name: "t".into(),
            max_size: 100,
            sampler: SamplerKind::Uniform,
            max_times_sampled: 0,
            min_size_to_sample: min_size,
            samples_per_insert,
            error_buffer,
            ..TableConfig::default()
        };
        Arc::new(Table::new(config, CancellationToken::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limiter_makes_inserts_wait_for_samples_and_samples_for_inserts() {
        // spi 2, min size 2, buffer 2: the cursor stays in [2, 6].
        let table = ratio_table(2.0, 2, 2.0);
        fill(&table, [1, 2, 3]).await; // cursor 6
        let short = Some(Duration::from_millis(100));
        let err = table.insert(cartpole_sequence(3, 4), short).await.unwrap_err();
        assert!(matches!(err, Error::InsertTimeout { .. }), "cursor 8 > 6: {err}");
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::DeadlineExceeded);

        let blocked = tokio::spawn({
            let table = Arc::clone(&table);
            async move { table.insert(cartpole_sequence(3, 5), None).await }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!blocked.is_finished(), "the insert waits for samples");
        let err = table.sample(5, 0.0, Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, Error::SampleTimeout { .. }), "cursor 6 − 5 < 2: {err}");
        assert_eq!(table.sample(2, 0.0, LONG).await.unwrap().len(), 2); // cursor 4: 8 − 4 ≤ 6 admits the insert
        let key = tokio::time::timeout(Duration::from_secs(1), blocked)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(key, 4, "the timed-out insert stored nothing");

        // Cursor 6: four samples take it to 2, the fifth waits for an insert.
        assert_eq!(table.sample(4, 0.0, LONG).await.unwrap().len(), 4);
        let waiting = tokio::spawn({
            let table = Arc::clone(&table);
            async move { table.sample(1, 0.0, LONG).await }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiting.is_finished(), "the sample waits for inserts");
        fill(&table, [6]).await;
        let batch = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(batch.len(), 1);
        let stats = table.stats();
        assert_eq!((stats.inserts, stats.samples), (5, 7));
        assert_eq!(stats.rate_limiter, RateLimiter::sample_to_insert_ratio(2.0, 2, 2.0));
    }

    /// Two writers whose next item is always ready, and a learner that
    /// samples batches of 16 at 4 samples per insert: each batch makes room
    /// for 4 items at once. The writer that waited gets the next slot, so
    /// while one writer waits the other stores at most one item; without
    /// the turns, whichever writer was running took every slot, and the
    /// other waited behind many of its items.
    #[tokio::test(start_paused = true)]
    async fn waiting_writers_take_the_room_a_sample_makes_in_turn() {
        let config = TableConfig {
            name: "queue".into(),
            max_size: 16,
            sampler: SamplerKind::Uniform,
            remover: SamplerKind::Fifo,
            max_times_sampled: 4,
            min_size_to_sample: 16,
            samples_per_insert: 4.0,
            error_buffer: 64.0,
            ..TableConfig::default()
        };
        let table = Arc::new(Table::new(config, CancellationToken::new()));
        let stored: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let writers: Vec<_> = (0..2usize)
            .map(|w| {
                let (table, stored) = (Arc::clone(&table), Arc::clone(&stored));
                tokio::spawn(async move {
                    let mut most_overtaken = 0;
                    loop {
                        let others_before = stored[1 - w].load(Ordering::Relaxed);
                        let outcome = table.insert(cartpole_sequence(3, w as u64), None).await;
                        // The insert still waiting at shutdown counts too.
                        most_overtaken = most_overtaken.max(stored[1 - w].load(Ordering::Relaxed) - others_before);
                        if outcome.is_err() {
                            return most_overtaken;
                        }
                        stored[w].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            table.sample(16, 0.0, LONG).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        table.shutdown.cancel();
        let overtaken: Vec<u64> = futures::future::join_all(writers).await.into_iter().map(Result::unwrap).collect();
        let counts: Vec<u64> = stored.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        assert!(
            overtaken.iter().all(|&n| n <= 1),
            "a waiting writer saw the other store {overtaken:?} items ahead of it (stored {counts:?})"
        );
        // 200 batches of 16 at 4 samples per insert admit 800 inserts
        // beyond the first 16 + 16 the table and its error buffer take:
        // about 400 each when they alternate.
        assert!(counts.iter().all(|&n| n >= 350), "stored {counts:?}");
    }

    #[tokio::test]
    async fn a_min_heap_remover_evicts_the_lowest_priority_and_a_max_heap_samples_the_highest() {
        let config = TableConfig {
            name: "t".into(),
            max_size: 3,
            sampler: SamplerKind::MaxHeap,
            remover: SamplerKind::MinHeap,
            max_times_sampled: 0,
            ..TableConfig::default()
        };
        let table = Table::new(config, CancellationToken::new());
        for (seed, priority) in [(1, 4.0), (2, 1.0), (3, 9.0), (4, 2.0), (5, 0.5)] {
            let mut sequence = cartpole_sequence(3, seed);
            sequence.priority = priority;
            table.insert(sequence, None).await.unwrap();
        }
        // Inserting 4 (2.0) evicted 2 (1.0); inserting 5 (0.5) evicted 4 (2.0).
        let stats = table.stats();
        assert_eq!(
            (stats.size, stats.evictions, stats.sampler, stats.remover),
            (3, 2, "max_heap", "min_heap")
        );
        let batch = table.sample(2, 0.0, LONG).await.unwrap();
        assert_eq!(batch.iter().map(|i| i.key).collect::<Vec<_>>(), vec![3, 3]);
        table.update_priorities(&[(3, 0.1), (5, 7.0)]).unwrap();
        assert_eq!(table.sample(1, 0.0, LONG).await.unwrap()[0].key, 5);
        let mut sequence = cartpole_sequence(3, 6);
        sequence.priority = 3.0;
        table.insert(sequence, None).await.unwrap();
        let mut left: Vec<u64> = table.snapshot().items.iter().map(|i| i.meta.key).collect();
        left.sort();
        assert_eq!(left, vec![1, 5, 6], "3, now the lowest, was evicted");
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
            err.to_string().contains("2 discrete actions") && err.to_string().contains("3 discrete actions"),
            "{err}"
        );

        let mut other = cartpole_sequence(3, 1);
        other.initial_state = Some(pb::Tensor::from_f32(&[2, 1], &[0.0; 2]));
        assert!(matches!(table.insert(other, None).await, Err(Error::SignatureMismatch { .. })));

        let mut other = cartpole_sequence(3, 1);
        other.observations = Some(pb::Tensor::from_u8(&[3, 1, 2, 2], vec![0; 12]));
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

    /// A seeded table with `sampler`, `max_size`, `max_times_sampled` and α.
    fn sampled_table(sampler: SamplerKind, max_size: usize, max_times_sampled: u32, priority_exponent: f64) -> Arc<Table> {
        let config = TableConfig {
            name: "t".into(),
            max_size,
            sampler,
            max_times_sampled,
            priority_exponent,
            ..TableConfig::default()
        };
        Arc::new(Table::with_seed(config, CancellationToken::new(), 42))
    }

    /// What a refused batch must leave exactly as it was.
    fn items_and_counters(table: &Table) -> (Vec<(u64, f64, u32)>, TableStats) {
        let snapshot = table.snapshot();
        let items = snapshot
            .items
            .iter()
            .map(|i| (i.meta.key, i.meta.priority, i.meta.times_sampled))
            .collect();
        (items, table.stats())
    }

    /// A batch too large for one message is put back whole, whatever the
    /// sampler and `max_times_sampled`: no item leaves, no draw is counted,
    /// and the table serves the same items afterwards. The size it is judged
    /// by is the encoded size of the response that would carry it.
    #[tokio::test]
    async fn a_batch_too_large_for_a_message_takes_nothing() {
        for sampler in SamplerKind::ALL {
            for max_times_sampled in [1, 2] {
                let table = sampled_table(sampler, 8, max_times_sampled, 1.0);
                fill_with_priorities(&table, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).await;
                // Some items drawn before, so times_sampled is not all 0.
                table.sample(1, 0.5, LONG).await.unwrap();
                let before = items_and_counters(&table);
                let err = table.sample_within(4, 0.5, LONG, 600).await.unwrap_err();
                let Error::BatchTooLarge {
                    items, bytes, max_bytes, ..
                } = &err
                else {
                    panic!("{sampler:?}: {err}");
                };
                assert_eq!((*items, *max_bytes), (4, 600));
                assert!(*bytes > 600, "{err}");
                assert_eq!(tonic::Status::from(err).code(), tonic::Code::ResourceExhausted);
                assert_eq!(
                    items_and_counters(&table),
                    before,
                    "{sampler:?}, max_times_sampled {max_times_sampled}"
                );

                let batch = table.sample_within(4, 0.5, LONG, usize::MAX).await.unwrap();
                let response = pb::SampleResponse {
                    items: batch
                        .iter()
                        .map(|item| pb::SampledItem {
                            sequence: Some(item.sequence().unwrap()),
                            key: item.key,
                            priority: item.priority,
                            probability: item.probability,
                            times_sampled: item.times_sampled,
                            table_size: item.table_size,
                            weight: item.weight,
                        })
                        .collect(),
                };
                assert_eq!(response_len(&batch), prost::Message::encoded_len(&response), "{sampler:?}");
                assert_eq!(table.stats().samples, before.1.samples + 4);
            }
        }
        // The limit is inclusive: a fifo batch of exactly the limit goes out.
        let table = sampled_table(SamplerKind::Fifo, 8, 1, 1.0);
        fill_with_priorities(&table, &[1.0; 4]).await;
        let exact = {
            let probe = sampled_table(SamplerKind::Fifo, 8, 1, 1.0);
            fill_with_priorities(&probe, &[1.0; 4]).await;
            response_len(&probe.sample(3, 0.0, LONG).await.unwrap())
        };
        assert!(table.sample_within(3, 0.0, LONG, exact - 1).await.is_err());
        assert_eq!(table.len(), 4);
        let keys: Vec<u64> = table
            .sample_within(3, 0.0, LONG, exact)
            .await
            .unwrap()
            .iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(keys, vec![1, 2, 3], "the oldest items, as if nothing had been refused");
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn a_new_epoch_issues_keys_above_every_earlier_one_and_stops_short_of_the_next() {
        let table = table(10, 0);
        assert_eq!(fill(&table, [0]).await, vec![1]);
        table.begin_epoch(3).unwrap();
        assert_eq!(fill(&table, [1]).await, vec![first_key(3)]);
        assert_eq!(key_epoch(first_key(3)), 3);
        // An older epoch never takes keys back.
        table.begin_epoch(2).unwrap();
        assert_eq!(fill(&table, [2]).await, vec![first_key(3) + 1]);
        // The last key of the epoch is issued; the next would be the next epoch's.
        table.lock().next_key = first_key(4) - 1;
        assert_eq!(fill(&table, [3]).await, vec![first_key(4) - 1]);
        let err = table.insert(cartpole_sequence(3, 4), None).await.unwrap_err();
        assert!(matches!(err, Error::KeysExhausted { .. }), "{err}");
        assert_eq!(table.len(), 4, "the refused item is not stored");
        assert!(matches!(table.begin_epoch(MAX_KEY_EPOCH + 1), Err(Error::KeysExhausted { .. })));
    }

    /// Inserts into the same two tables named in opposite orders: one lock
    /// order for all, so none waits for a lock the other holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn inserts_into_several_tables_in_any_order_do_not_deadlock() {
        let (a, b) = (table(1000, 0), table(1000, 0));
        let store = ChunkStore::new();
        let mut tasks = vec![];
        for worker in 0..4u64 {
            let (a, b, store) = (Arc::clone(&a), Arc::clone(&b), Arc::clone(&store));
            tasks.push(tokio::spawn(async move {
                for i in 0..200 {
                    let steps = store
                        .item(cartpole_sequence(2, worker * 1000 + i), crate::config::Compression::NONE)
                        .unwrap();
                    let tables: [&Table; 2] = if worker % 2 == 0 { [&a, &b] } else { [&b, &a] };
                    Table::insert_into_all(&tables, steps, 0.0, None).await.unwrap();
                }
            }));
        }
        let all = async {
            for task in tasks {
                task.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("inserts deadlocked");
        assert_eq!((a.len(), b.len()), (800, 800));
        let err = Table::insert_into_all(
            &[&a, &b, &a],
            store.item(cartpole_sequence(2, 0), crate::config::Compression::NONE).unwrap(),
            0.0,
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::InvalidInsert(_)), "{err}");
        assert_eq!((a.len(), b.len()), (800, 800));
    }

    /// Inserts one sequence per priority and returns the keys.
    async fn fill_with_priorities(table: &Table, priorities: &[f64]) -> Vec<u64> {
        let mut keys = vec![];
        for (seed, &priority) in priorities.iter().enumerate() {
            let mut sequence = cartpole_sequence(3, seed as u64);
            sequence.priority = priority;
            keys.push(table.insert(sequence, None).await.unwrap());
        }
        keys
    }

    /// How often each key came up in `batches` batches of `batch_size`, as
    /// fractions of all draws.
    async fn key_frequencies(table: &Table, batches: usize, batch_size: usize) -> BTreeMap<u64, f64> {
        let mut counts = BTreeMap::new();
        for _ in 0..batches {
            for item in table.sample(batch_size, 0.0, LONG).await.unwrap() {
                *counts.entry(item.key).or_insert(0.0) += 1.0;
            }
        }
        let draws = (batches * batch_size) as f64;
        counts.values_mut().for_each(|c| *c /= draws);
        counts
    }

    #[tokio::test]
    async fn prioritized_frequencies_follow_priorities_to_the_exponent() {
        let table = sampled_table(SamplerKind::Prioritized, 50, 0, 0.5);
        // p^0.5 = 1, 2, 3, 4: P = 0.1, 0.2, 0.3, 0.4.
        let keys = fill_with_priorities(&table, &[1.0, 4.0, 9.0, 16.0]).await;
        let expected = |key: u64| (keys.iter().position(|&k| k == key).unwrap() + 1) as f64 / 10.0;

        let batch = table.sample(10, 0.0, LONG).await.unwrap();
        for item in &batch {
            assert!((item.probability - expected(item.key)).abs() < 1e-12, "{item:?}");
            assert_eq!(item.table_size, 4);
            assert_eq!(item.priority, [1.0, 4.0, 9.0, 16.0][item.key as usize - 1]);
        }

        // 20000 draws: the standard deviation of a frequency is at most 0.0035.
        let frequencies = key_frequencies(&table, 400, 50).await;
        for (&key, &frequency) in &frequencies {
            assert!(
                (frequency - expected(key)).abs() < 0.015,
                "key {key}: {frequency:.4} vs {}",
                expected(key)
            );
        }
        assert_eq!(frequencies.len(), 4);
        assert_eq!(table.len(), 4, "max_times_sampled = 0 keeps items");
    }

    #[tokio::test]
    async fn importance_weights_by_hand() {
        let table = sampled_table(SamplerKind::Prioritized, 8, 0, 1.0);
        fill_with_priorities(&table, &[1.0, 3.0]).await;
        // P = 0.25 and 0.75, N = 2: w = (2·0.25)^-0.5 = √2 and (2·0.75)^-0.5 = √(2/3);
        // divided by the largest, √2: 1 and 1/√3.
        let batch = table.sample(8, 0.5, LONG).await.unwrap();
        assert!(batch.iter().any(|i| i.key == 1) && batch.iter().any(|i| i.key == 2), "{batch:?}");
        for item in &batch {
            let (probability, weight) = if item.key == 1 { (0.25, 1.0) } else { (0.75, 1.0 / 3f64.sqrt()) };
            assert!((item.probability - probability).abs() < 1e-12, "{item:?}");
            assert!((item.weight - weight).abs() < 1e-12, "{item:?}");
        }
        // β = 0: every weight is 1.
        let batch = table.sample(8, 0.0, LONG).await.unwrap();
        assert!(batch.iter().all(|i| i.weight == 1.0), "{batch:?}");
        // A batch of only the likelier item: normalised, its weight is 1.
        table.update_priorities(&[(1, 0.0)]).unwrap();
        let batch = table.sample(4, 1.0, LONG).await.unwrap();
        assert!(
            batch.iter().all(|i| i.key == 2 && i.probability == 1.0 && i.weight == 1.0),
            "{batch:?}"
        );
    }

    #[tokio::test]
    async fn priority_updates_change_the_distribution() {
        let table = sampled_table(SamplerKind::Prioritized, 50, 0, 1.0);
        fill_with_priorities(&table, &[1.0, 1.0]).await;
        let frequencies = key_frequencies(&table, 100, 50).await;
        assert!((frequencies[&1] - 0.5).abs() < 0.03, "{frequencies:?}");

        assert_eq!(table.update_priorities(&[(1, 9.0)]).unwrap(), 0);
        let frequencies = key_frequencies(&table, 100, 50).await;
        assert!((frequencies[&1] - 0.9).abs() < 0.02, "{frequencies:?}");

        // All or nothing: the invalid second update keeps the first from applying.
        assert!(table.update_priorities(&[(2, 1000.0), (1, f64::INFINITY)]).is_err());
        let frequencies = key_frequencies(&table, 100, 50).await;
        assert!((frequencies[&1] - 0.9).abs() < 0.02, "{frequencies:?}");

        table.update_priorities(&[(1, 0.0)]).unwrap();
        let frequencies = key_frequencies(&table, 20, 50).await;
        assert_eq!(frequencies.keys().collect::<Vec<_>>(), vec![&2], "{frequencies:?}");

        // Every priority 0: uniform again.
        table.update_priorities(&[(2, 0.0)]).unwrap();
        let batch = table.sample(8, 1.0, LONG).await.unwrap();
        assert!(batch.iter().all(|i| i.probability == 0.5 && i.weight == 1.0), "{batch:?}");
        let frequencies = key_frequencies(&table, 100, 50).await;
        assert!((frequencies[&1] - 0.5).abs() < 0.03, "{frequencies:?}");
    }

    #[tokio::test]
    async fn new_items_get_the_largest_priority_seen() {
        let table = sampled_table(SamplerKind::Prioritized, 8, 0, 1.0);
        fill_with_priorities(&table, &[0.0, 0.5, 5.0, 0.0]).await;
        table.update_priorities(&[(2, 7.0)]).unwrap();
        fill_with_priorities(&table, &[0.0]).await;
        // Missing keys do not count as seen.
        table.update_priorities(&[(99, 100.0)]).unwrap();
        fill_with_priorities(&table, &[0.0]).await;
        let mut priorities = BTreeMap::new();
        for _ in 0..20 {
            for item in table.sample(8, 0.0, LONG).await.unwrap() {
                priorities.insert(item.key, item.priority);
            }
        }
        let expected = BTreeMap::from([(1, 1.0), (2, 7.0), (3, 5.0), (4, 5.0), (5, 7.0), (6, 7.0)]);
        assert_eq!(priorities, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn full_prioritized_table_evicts_the_oldest_and_never_blocks() {
        let table = sampled_table(SamplerKind::Prioritized, 3, 1, 0.9);
        for seed in 0..5u64 {
            let insert = table.insert(cartpole_sequence(3, seed), None);
            let key = tokio::time::timeout(Duration::from_millis(1), insert)
                .await
                .expect("insert blocked")
                .unwrap();
            assert_eq!(key, seed + 1);
        }
        let stats = table.stats();
        assert_eq!((stats.size, stats.inserts, stats.evictions), (3, 5, 2));
        assert_eq!((stats.sampler, stats.remover), ("prioritized", "fifo"));
        // Evicted keys are missing for priority updates.
        assert_eq!(table.update_priorities(&[(1, 2.0), (2, 2.0), (3, 2.0)]).unwrap(), 2);
        // Evicted items' draws are gone too: the three left give exactly three.
        let mut keys: Vec<u64> = table.sample(3, 0.0, LONG).await.unwrap().iter().map(|i| i.key).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![3, 4, 5]);
        let err = table.sample(1, 0.0, Duration::from_millis(10)).await.unwrap_err();
        assert!(matches!(err, Error::SampleTimeout { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_table_that_never_samples_out_evicts_instead_of_blocking() {
        let table = table(2, 0);
        for seed in 0..4 {
            let insert = table.insert(cartpole_sequence(3, seed), None);
            tokio::time::timeout(Duration::from_millis(1), insert)
                .await
                .expect("insert blocked")
                .unwrap();
        }
        assert_eq!(table.stats().evictions, 2);
        let batch = table.sample(2, 0.0, LONG).await.unwrap();
        assert_eq!(batch.iter().map(|i| i.key).collect::<Vec<_>>(), vec![3, 3]);
    }

    #[tokio::test]
    async fn uniform_sampler_hits_every_item() {
        let table = sampled_table(SamplerKind::Uniform, 20, 0, 0.9);
        let keys = fill(&table, 0..20).await;
        let frequencies = key_frequencies(&table, 200, 20).await;
        assert_eq!(frequencies.keys().copied().collect::<Vec<_>>(), keys);
        // 4000 draws, 200 expected per key.
        assert!(frequencies.values().all(|&f| (0.035..=0.065).contains(&f)), "{frequencies:?}");
        let batch = table.sample(5, 1.0, LONG).await.unwrap();
        assert!(batch.iter().all(|i| i.probability == 0.05 && i.weight == 1.0));
        assert_eq!(table.stats().sampler, "uniform");
    }

    #[tokio::test]
    async fn lifo_returns_newest_first() {
        let table = sampled_table(SamplerKind::Lifo, 10, 1, 0.9);
        fill(&table, [0, 1, 2, 3]).await;
        let batch = table.sample(2, 0.0, LONG).await.unwrap();
        assert_eq!(batch.iter().map(|i| i.key).collect::<Vec<_>>(), vec![4, 3]);
        fill(&table, [4]).await;
        let batch = table.sample(3, 0.0, LONG).await.unwrap();
        assert_eq!(batch.iter().map(|i| i.key).collect::<Vec<_>>(), vec![5, 2, 1]);
        assert!(table.is_empty());
        assert_eq!(table.stats().sampler, "lifo");
    }

    #[tokio::test(start_paused = true)]
    async fn min_size_to_sample_blocks_then_releases() {
        let config = TableConfig {
            name: "t".into(),
            max_size: 10,
            sampler: SamplerKind::Prioritized,
            max_times_sampled: 0,
            min_size_to_sample: 3,
            ..TableConfig::default()
        };
        let table = Arc::new(Table::with_seed(config, CancellationToken::new(), 1));
        fill(&table, [0, 1]).await;
        let err = table.sample(1, 0.0, Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, Error::SampleTimeout { min_size: 3, .. }), "{err}");
        assert!(err.to_string().contains("min_size_to_sample 3"), "{err}");

        let waiting = tokio::spawn({
            let table = Arc::clone(&table);
            async move { table.sample(6, 0.0, LONG).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "two items are below min_size_to_sample");
        fill(&table, [2]).await;
        let batch = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Six draws from three items: with replacement, no wait for six.
        assert_eq!(batch.len(), 6);
        assert!(batch.iter().all(|i| (1..=3).contains(&i.key) && i.table_size == 3));
    }

    #[tokio::test(start_paused = true)]
    async fn batches_draw_with_replacement_until_items_are_sampled_out() {
        let table = sampled_table(SamplerKind::Prioritized, 4, 0, 0.9);
        fill(&table, [0]).await;
        let batch = table.sample(4, 1.0, LONG).await.unwrap();
        assert_eq!(
            batch.iter().map(|i| (i.key, i.times_sampled)).collect::<Vec<_>>(),
            vec![(1, 1), (1, 2), (1, 3), (1, 4)]
        );

        // max_times_sampled = 2: one item gives two draws, no more.
        let table = sampled_table(SamplerKind::Prioritized, 4, 2, 0.9);
        fill(&table, [0]).await;
        let err = table.sample(3, 0.0, Duration::from_millis(10)).await.unwrap_err();
        assert!(matches!(err, Error::SampleTimeout { wanted: 3, .. }), "{err}");
        let batch = table.sample(2, 0.0, LONG).await.unwrap();
        assert_eq!(
            batch.iter().map(|i| (i.key, i.times_sampled)).collect::<Vec<_>>(),
            vec![(1, 1), (1, 2)]
        );
        assert!(table.is_empty());
        // Partly sampled items count only their remaining draws.
        fill(&table, [1, 2]).await;
        let first = table.sample(1, 0.0, LONG).await.unwrap();
        assert_eq!(first[0].times_sampled, 1);
        let err = table.sample(4, 0.0, Duration::from_millis(10)).await.unwrap_err();
        assert!(matches!(err, Error::SampleTimeout { .. }), "{err}");
        assert_eq!(table.sample(3, 0.0, LONG).await.unwrap().len(), 3);
        assert!(table.is_empty());
    }

    #[test]
    fn importance_weights_are_normalised_by_the_batch_maximum() {
        let store = ChunkStore::new();
        let item = |probability: f64| SampledItem {
            key: 0,
            priority: 1.0,
            probability,
            times_sampled: 1,
            table_size: 4,
            weight: 0.0,
            steps: store.item(cartpole_sequence(2, 0), crate::config::Compression::NONE).unwrap(),
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
                    seen.extend(batch.iter().map(|i| i.steps.actor_id()));
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
