//! Every metric the replay service records: names, descriptions
//! ([`describe`]) and the per-table handles the tables hold so that hot paths
//! do not look metrics up by name. Recording only; installing an exporter is
//! the binary's job.
//!
//! The `_seconds_total` metrics are counters, as Prometheus expects of a
//! `_total` name. The `metrics` crate's counters count whole numbers and
//! waits are mostly fractions of a second, so [`SecondsCounter`] adds every
//! wait exactly (in nanoseconds) and the counter shows the whole seconds
//! waited so far: `rate()` over a window of minutes is accurate to a second
//! per window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Items currently stored, per table.
pub const ITEMS: &str = "fleet_replay_items";
/// Encoded bytes of the stored items, per table.
pub const BYTES: &str = "fleet_replay_bytes";
/// The table's byte budget (`max_bytes`; 0: none), per table.
pub const MAX_BYTES: &str = "fleet_replay_max_bytes";
/// Items inserted since start, per table.
pub const INSERTS_TOTAL: &str = "fleet_replay_inserts_total";
/// Items sampled since start (one per item in a batch), per table.
pub const SAMPLES_TOTAL: &str = "fleet_replay_samples_total";
/// Seconds inserts spent waiting for room in a full table, per table.
pub const INSERT_BLOCKED_SECONDS_TOTAL: &str = "fleet_replay_insert_blocked_seconds_total";
/// Seconds sample requests spent waiting for enough items, per table.
pub const SAMPLE_WAIT_SECONDS_TOTAL: &str = "fleet_replay_sample_wait_seconds_total";
/// Priority updates applied (their key was in the table), per table.
pub const PRIORITY_UPDATES_TOTAL: &str = "fleet_replay_priority_updates_total";
/// Priority updates for keys no longer in the table, per table.
pub const MISSING_PRIORITY_UPDATES_TOTAL: &str = "fleet_replay_missing_priority_updates_total";
/// Items removed to make room for an insert into a full table (tables that
/// are not queues), per table.
pub const EVICTIONS_TOTAL: &str = "fleet_replay_evictions_total";

/// Bytes of the items stored and of the batches drawn, labelled `class`
/// (`insert`, `sample`): what [`crate::share`] shares the server by.
pub const SHARED_BYTES_TOTAL: &str = "fleet_replay_shared_bytes_total";
/// Seconds sample or insert streams were held back for the other class to
/// have its share of the server, labelled `class`.
pub const HELD_SECONDS_TOTAL: &str = "fleet_replay_held_seconds_total";

/// Seconds from a sample request reaching a table until its batch is drawn
/// (waiting included), per table.
pub const SAMPLE_LATENCY: &str = "fleet_replay_sample_latency_seconds";
/// Buckets of [`SAMPLE_LATENCY`]: 50 µs to 10 s.
pub const SAMPLE_LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Chunks of step data held by the whole service (shared ones once).
pub const CHUNKS: &str = "fleet_replay_chunks";
/// Stored bytes of those chunks.
pub const CHUNK_BYTES: &str = "fleet_replay_chunk_bytes";
/// Steps the items of a table reference (each stored step once), per table.
pub const STEPS: &str = "fleet_replay_steps";
/// Replay checkpoints written since start.
pub const CHECKPOINTS_TOTAL: &str = "fleet_replay_checkpoints_total";
/// Seconds the last checkpoint took to write.
pub const CHECKPOINT_DURATION_SECONDS: &str = "fleet_replay_checkpoint_duration_seconds";
/// Unix time at which the last checkpoint was complete.
pub const CHECKPOINT_TIMESTAMP_SECONDS: &str = "fleet_replay_checkpoint_timestamp_seconds";

/// Bytes written to the write-ahead log.
pub const WAL_BYTES_TOTAL: &str = "fleet_replay_wal_bytes_total";
/// Group commits of the write-ahead log (one write and sync each).
pub const WAL_SYNCS_TOTAL: &str = "fleet_replay_wal_syncs_total";
/// Seconds one group commit took (write and sync).
pub const WAL_SYNC_SECONDS: &str = "fleet_replay_wal_sync_seconds";
/// Buckets of [`WAL_SYNC_SECONDS`]: 50 µs to 1 s.
pub const WAL_SYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Records one group commit of `bytes` that took `took`.
pub(crate) fn wal_synced(bytes: u64, took: std::time::Duration) {
    counter!(WAL_BYTES_TOTAL).increment(bytes);
    counter!(WAL_SYNCS_TOTAL).increment(1);
    histogram!(WAL_SYNC_SECONDS).record(took.as_secs_f64());
}

/// Records a completed checkpoint that took `took`.
pub(crate) fn checkpoint_written(took: std::time::Duration) {
    counter!(CHECKPOINTS_TOTAL).increment(1);
    gauge!(CHECKPOINT_DURATION_SECONDS).set(took.as_secs_f64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!(CHECKPOINT_TIMESTAMP_SECONDS).set(now.as_secs_f64());
}

/// Registers descriptions and units with the installed recorder. Call once
/// after installing it; harmless without one.
pub fn describe() {
    describe_gauge!(ITEMS, Unit::Count, "Items currently stored in the replay table.");
    describe_gauge!(
        BYTES,
        Unit::Bytes,
        "Bytes the replay table's items keep alive: each chunk of steps they reference once, plus their stored states."
    );
    describe_gauge!(
        MAX_BYTES,
        Unit::Bytes,
        "Byte budget of the replay table (max_bytes); 0 means no budget."
    );
    describe_histogram!(
        SAMPLE_LATENCY,
        Unit::Seconds,
        "Seconds from a sample request reaching the table until its batch is drawn, waiting included."
    );
    describe_gauge!(
        CHUNKS,
        Unit::Count,
        "Chunks of step data held by the replay service; steps shared by several items or tables count once."
    );
    describe_gauge!(
        CHUNK_BYTES,
        Unit::Bytes,
        "Stored (encoded, possibly compressed) bytes of the replay service's chunks."
    );
    describe_gauge!(
        STEPS,
        Unit::Count,
        "Steps held by the replay table's items, each stored step counted once."
    );
    describe_counter!(CHECKPOINTS_TOTAL, Unit::Count, "Replay checkpoints written.");
    describe_counter!(WAL_BYTES_TOTAL, Unit::Bytes, "Bytes written to the replay write-ahead log.");
    describe_counter!(
        WAL_SYNCS_TOTAL,
        Unit::Count,
        "Group commits of the replay write-ahead log: one write and fdatasync each, shared by every change appended meanwhile."
    );
    describe_histogram!(
        WAL_SYNC_SECONDS,
        Unit::Seconds,
        "Seconds one group commit of the replay write-ahead log took (write and fdatasync)."
    );
    describe_gauge!(
        CHECKPOINT_DURATION_SECONDS,
        Unit::Seconds,
        "Seconds the last replay checkpoint took to write."
    );
    describe_gauge!(
        CHECKPOINT_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time at which the last replay checkpoint was complete."
    );
    describe_counter!(INSERTS_TOTAL, Unit::Count, "Items inserted into the replay table.");
    describe_counter!(
        SAMPLES_TOTAL,
        Unit::Count,
        "Items sampled from the replay table (each item of each batch)."
    );
    describe_counter!(
        INSERT_BLOCKED_SECONDS_TOTAL,
        Unit::Seconds,
        "Seconds inserts waited for room in a full table (whole seconds)."
    );
    describe_counter!(
        SAMPLE_WAIT_SECONDS_TOTAL,
        Unit::Seconds,
        "Seconds sample requests waited for enough items (whole seconds)."
    );
    describe_counter!(
        SHARED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of the items the replay service stored (class insert) and of the batches it drew (class sample)."
    );
    describe_counter!(
        HELD_SECONDS_TOTAL,
        Unit::Seconds,
        "Seconds insert or sample streams (class) waited for the other class to have its share of the server (whole seconds)."
    );
    describe_counter!(
        MISSING_PRIORITY_UPDATES_TOTAL,
        Unit::Count,
        "Priority updates ignored because their item had already left the table."
    );
    describe_counter!(
        PRIORITY_UPDATES_TOTAL,
        Unit::Count,
        "Priority updates applied to items in the replay table."
    );
    describe_counter!(
        EVICTIONS_TOTAL,
        Unit::Count,
        "Items evicted (oldest first) to make room for an insert into a full table."
    );
}

/// Handles for one table's metrics, labelled with the table name.
#[derive(Debug)]
pub(crate) struct TableMetrics {
    pub(crate) items: Gauge,
    pub(crate) bytes: Gauge,
    pub(crate) steps: Gauge,
    pub(crate) max_bytes: Gauge,
    pub(crate) inserts: Counter,
    pub(crate) samples: Counter,
    pub(crate) insert_blocked_seconds: SecondsCounter,
    pub(crate) sample_wait_seconds: SecondsCounter,
    pub(crate) missing_priority_updates: Counter,
    pub(crate) priority_updates: Counter,
    pub(crate) evictions: Counter,
    pub(crate) sample_latency: Histogram,
}

impl TableMetrics {
    pub(crate) fn new(table: &str) -> Self {
        Self {
            items: gauge!(ITEMS, "table" => table.to_owned()),
            bytes: gauge!(BYTES, "table" => table.to_owned()),
            steps: gauge!(STEPS, "table" => table.to_owned()),
            max_bytes: gauge!(MAX_BYTES, "table" => table.to_owned()),
            inserts: counter!(INSERTS_TOTAL, "table" => table.to_owned()),
            samples: counter!(SAMPLES_TOTAL, "table" => table.to_owned()),
            insert_blocked_seconds: SecondsCounter::new(counter!(INSERT_BLOCKED_SECONDS_TOTAL, "table" => table.to_owned())),
            sample_wait_seconds: SecondsCounter::new(counter!(SAMPLE_WAIT_SECONDS_TOTAL, "table" => table.to_owned())),
            missing_priority_updates: counter!(MISSING_PRIORITY_UPDATES_TOTAL, "table" => table.to_owned()),
            priority_updates: counter!(PRIORITY_UPDATES_TOTAL, "table" => table.to_owned()),
            evictions: counter!(EVICTIONS_TOTAL, "table" => table.to_owned()),
            sample_latency: histogram!(SAMPLE_LATENCY, "table" => table.to_owned()),
        }
    }
}

/// A counter of seconds that adds durations exactly and shows whole seconds:
/// the counter moves by the whole seconds each addition completes, so
/// concurrent additions never lose or double-count a second.
#[derive(Debug)]
pub(crate) struct SecondsCounter {
    counter: Counter,
    nanos: AtomicU64,
}

impl SecondsCounter {
    pub(crate) fn new(counter: Counter) -> Self {
        Self {
            counter,
            nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn add(&self, waited: Duration) {
        const NANOS_PER_SECOND: u64 = 1_000_000_000;
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        let before = self.nanos.fetch_add(nanos, Ordering::Relaxed);
        let after = before.saturating_add(nanos);
        let whole = after / NANOS_PER_SECOND - before / NANOS_PER_SECOND;
        if whole > 0 {
            self.counter.increment(whole);
        }
    }

    /// Everything added so far.
    #[cfg(test)]
    pub(crate) fn total(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fractions add up to whole seconds on the counter, none lost.
    #[test]
    fn seconds_counter_adds_fractions_exactly() {
        let shown = std::sync::Arc::new(AtomicU64::new(0));
        let seconds = SecondsCounter::new(Counter::from_arc(std::sync::Arc::clone(&shown)));
        for _ in 0..25 {
            seconds.add(Duration::from_millis(100));
        }
        assert_eq!(seconds.total(), Duration::from_millis(2500));
        assert_eq!(shown.load(Ordering::Relaxed), 2);
        seconds.add(Duration::from_millis(600));
        assert_eq!(shown.load(Ordering::Relaxed), 3);
    }
}
