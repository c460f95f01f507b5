//! The replay service's configuration: which tables exist and how each one
//! samples, plus the service-wide bounds (default sample timeout, largest gRPC
//! message). Parsing (serde) and checking ([`ReplayConfig::validate`]) live
//! here; turning a checked config into running tables does not.

use serde::{Deserialize, Serialize};

use fleet_proto::DEFAULT_MAX_MESSAGE_BYTES;

use crate::rate_limiter::RateLimiter;

/// Largest gRPC message a config may allow. A bound exists so that a typo
/// cannot turn the limit off (`usize::MAX`) and let one peer exhaust memory.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 1 << 30;

/// Smallest gRPC message a config may allow; below this not even a short
/// CartPole sequence fits.
pub const MIN_MESSAGE_BYTES: usize = 1024;

/// Configuration of the whole replay service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// The tables to serve; clients address them by name.
    pub tables: Vec<TableConfig>,
    /// How long one sampled batch may wait for data when the request does not
    /// say (`timeout_ms = 0`), so a learner never hangs forever on an empty
    /// table.
    pub sample_timeout_ms: u64,
    /// Bound on one gRPC message in either direction; inserts of larger
    /// sequences and batches larger than this fail instead of allocating.
    pub max_message_bytes: usize,
    /// Where checkpoints of every table go, and where the service restores
    /// the newest complete one from at start; empty turns checkpoints off.
    pub checkpoint_dir: String,
    /// Seconds between periodic checkpoints (0: only on request and at
    /// shutdown).
    pub checkpoint_interval_secs: f64,
    /// Complete checkpoints kept; older ones are deleted.
    pub keep_checkpoints: usize,
    /// What a crash of the process or the machine may lose.
    pub durability: Durability,
}

/// What replay keeps through a crash (SIGKILL, power loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Only what the newest checkpoint holds: changes since then (at most
    /// `checkpoint_interval_secs` of them) are lost.
    #[default]
    Checkpoint,
    /// Checkpoints plus a write-ahead log under `checkpoint_dir`: an insert
    /// is acknowledged only once it is on disk, and every acknowledged insert
    /// (and every sample, removal and priority update logged before it) is
    /// there after a restart. See [`crate::wal`].
    Wal,
}

impl ReplayConfig {
    /// The config with every table's preset applied (see
    /// [`TableConfig::effective`]): the settings the tables run with.
    pub fn effective(&self) -> Self {
        Self {
            tables: self.tables.iter().map(TableConfig::effective).collect(),
            ..self.clone()
        }
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            tables: vec![TableConfig::default()],
            sample_timeout_ms: 10_000,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            checkpoint_dir: String::new(),
            checkpoint_interval_secs: 300.0,
            keep_checkpoints: 2,
            durability: Durability::Checkpoint,
        }
    }
}

/// Configuration of one table.
///
/// # Full tables: block or evict
///
/// A table blocks inserts while it is full only if it is a *queue*: its
/// sampler is `fifo` and `max_times_sampled >= 1`, so that every item leaves
/// by being sampled and a waiting insert is sure to get room (backpressure on
/// the actors, as Reverb's `Queue` limiter). Every other table (a `lifo`,
/// `uniform` or `prioritized` sampler, or a `fifo` one whose items are never
/// sampled out) admits every insert and, when full, first evicts its oldest
/// item (the FIFO remover) — items there may never be sampled out, so waiting
/// for room could wait forever.
///
/// # Sampling a batch
///
/// A batch waits (up to the request's timeout) until the table holds
/// `min_size_to_sample` items and can serve all of its draws: a `fifo` table
/// waits for as many items as the batch asks for; other tables draw with
/// replacement, so a batch of `n` needs only enough draws left (any item
/// when `max_times_sampled = 0`, otherwise `n` draws before items are
/// sampled out) and may hold the same item more than once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableConfig {
    /// Name that insert and sample requests use.
    pub name: String,
    /// A shorthand that sets `sampler`, `remover` and `max_times_sampled`:
    /// `queue` (fifo/fifo, every item sampled once: IMPALA) or `prioritized`
    /// (prioritised with exponent `priority_exponent`, fifo remover, items
    /// never sampled out: R2D2). Giving one of those keys a different value
    /// beside a preset is an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Most items the table holds; memory is bounded by this times the
    /// largest sequence. A full queue makes inserts wait (backpressure);
    /// other tables evict their oldest item (see above).
    pub max_size: usize,
    /// Byte budget: most bytes of stored sequences (their encoded size) the
    /// table holds; 0 means no budget. Whichever of `max_size` and
    /// `max_bytes` is reached first makes the table full, with the same
    /// consequence (a queue waits, other tables evict). A sequence larger
    /// than the whole budget is refused.
    pub max_bytes: u64,
    /// Which item a sample returns.
    #[serde(deserialize_with = "sampler")]
    pub sampler: SamplerKind,
    /// Which item leaves when a full table that does not block takes an
    /// insert (any sampler kind; `fifo`, the oldest, by default).
    #[serde(deserialize_with = "remover")]
    pub remover: SamplerKind,
    /// An item sampled this many times is removed; 0 means never. 1 makes the
    /// table a queue in which every sequence is learnt from exactly once
    /// (IMPALA).
    pub max_times_sampled: u32,
    /// α of prioritised sampling, `P(i) = p_i^α / Σ_k p_k^α`: 0 treats every
    /// positive priority alike, 1 samples in proportion to the priorities.
    /// Used only by `prioritized` tables; 0.9 is R2D2's value.
    pub priority_exponent: f64,
    /// Samples wait until the table holds at least this many items, so that
    /// the first batches are not drawn from a handful of sequences.
    pub min_size_to_sample: usize,
    /// Rate limiting (Reverb's `SampleToInsertRatio`): each item is sampled
    /// this many times on average; samples wait when they would run ahead of
    /// inserts, inserts wait when they would run ahead of samples, beyond
    /// `error_buffer`. 0 turns the ratio off (only `min_size_to_sample`
    /// holds samples back). See [`crate::rate_limiter`].
    pub samples_per_insert: f64,
    /// How many samples the cursor may drift either side of the ratio
    /// before one side waits; at least `max(1, samples_per_insert)`, or the
    /// limiter could block both sides.
    pub error_buffer: f64,
    /// How the steps of new items are stored: `none`, `zstd` or `lz4`.
    /// Sampling decompresses, so this trades CPU for memory (see
    /// docs/BENCHMARKS.md for both on vector and image steps). An item
    /// inserted into several tables is stored as its first table says.
    pub compression: Codec,
    /// zstd's level (1 fastest .. 22 smallest); ignored by the other codecs.
    pub compression_level: i32,
}

/// Named table shapes; see [`TableConfig::preset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Queue,
    Prioritized,
}

/// How a chunk's steps are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    #[default]
    None,
    Zstd,
    Lz4,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
        }
    }

    /// The number a checkpoint records.
    pub fn code(self) -> u32 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
            Codec::Lz4 => 2,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        [Codec::None, Codec::Zstd, Codec::Lz4].into_iter().find(|c| c.code() == code)
    }
}

/// A codec and its level: how one table compresses new chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub codec: Codec,
    pub level: i32,
}

impl Compression {
    pub const NONE: Compression = Compression {
        codec: Codec::None,
        level: 0,
    };
}

impl TableConfig {
    /// A queue of `max_size` items, each sampled once in insertion order;
    /// full, it makes inserts wait (IMPALA's queue).
    pub fn queue(name: &str, max_size: usize) -> Self {
        Self {
            name: name.to_owned(),
            max_size,
            preset: Some(Preset::Queue),
            ..Self::default()
        }
        .effective()
    }

    /// A prioritised table of `max_size` items, sampled with exponent
    /// `alpha` and evicting the oldest when full (R2D2's replay).
    pub fn prioritized(name: &str, max_size: usize, alpha: f64) -> Self {
        Self {
            name: name.to_owned(),
            max_size,
            priority_exponent: alpha,
            preset: Some(Preset::Prioritized),
            ..Self::default()
        }
        .effective()
    }

    /// The settings with the preset (if any) applied.
    pub fn effective(&self) -> Self {
        let (sampler, max_times_sampled) = match self.preset {
            None => return self.clone(),
            Some(Preset::Queue) => (SamplerKind::Fifo, 1),
            Some(Preset::Prioritized) => (SamplerKind::Prioritized, 0),
        };
        Self {
            sampler,
            remover: SamplerKind::Fifo,
            max_times_sampled,
            ..self.clone()
        }
    }

    /// A key set beside the preset to a value other than the preset's and
    /// the default's: `(key, value, preset's value)`.
    fn preset_conflict(&self) -> Option<(&'static str, String, String)> {
        let (preset, default) = (self.effective(), Self::default());
        let keys = [
            (
                "sampler",
                [self.sampler, preset.sampler, default.sampler].map(|s| s.as_str().to_owned()),
            ),
            (
                "remover",
                [self.remover, preset.remover, default.remover].map(|s| s.as_str().to_owned()),
            ),
            (
                "max_times_sampled",
                [self.max_times_sampled, preset.max_times_sampled, default.max_times_sampled].map(|n| n.to_string()),
            ),
        ];
        keys.into_iter()
            .find(|(_, [mine, preset, default])| mine != preset && mine != default)
            .map(|(key, [mine, preset, _])| (key, mine, preset))
    }

    /// How this table stores the steps of new items.
    pub fn compression(&self) -> Compression {
        Compression {
            codec: self.compression,
            level: self.compression_level,
        }
    }

    /// Whether inserts wait while the table is full (a queue) instead of
    /// evicting the oldest item; see the type's docs.
    pub fn blocks_inserts_when_full(&self) -> bool {
        self.sampler == SamplerKind::Fifo && self.max_times_sampled >= 1
    }

    /// The rate limiter these settings describe.
    pub fn rate_limiter(&self) -> RateLimiter {
        if self.samples_per_insert > 0.0 {
            RateLimiter::sample_to_insert_ratio(self.samples_per_insert, self.min_size_to_sample, self.error_buffer)
        } else {
            RateLimiter::min_size(self.min_size_to_sample)
        }
    }
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            name: "queue".to_owned(),
            preset: None,
            // Small on purpose: every queued sequence is policy lag, and a
            // full queue makes actors wait instead of running ahead.
            max_size: 32,
            max_bytes: 0,
            sampler: SamplerKind::Fifo,
            remover: SamplerKind::Fifo,
            max_times_sampled: 1,
            priority_exponent: 0.9,
            min_size_to_sample: 1,
            samples_per_insert: 0.0,
            error_buffer: 0.0,
            compression: Codec::None,
            compression_level: 3,
        }
    }
}

/// The sampling rule of a table. Config files spell it in snake_case;
/// earlier spellings are refused with the new one named (see
/// [`SamplerKind::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Oldest item first. With `max_times_sampled >= 1` the table is a queue:
    /// inserts wait while it is full rather than evicting.
    #[default]
    Fifo,
    /// Newest item first.
    Lifo,
    /// Every item equally likely, drawn with replacement.
    Uniform,
    /// Item `i` with probability `p_i^α / Σ_k p_k^α` (prioritised experience
    /// replay), drawn with replacement; uniform while every priority is 0.
    Prioritized,
    /// The highest priority first (ties: the oldest).
    MaxHeap,
    /// The lowest priority first (ties: the oldest).
    MinHeap,
}

impl SamplerKind {
    /// The name used in config files and in `Info` replies.
    pub fn as_str(self) -> &'static str {
        match self {
            SamplerKind::Fifo => "fifo",
            SamplerKind::Lifo => "lifo",
            SamplerKind::Uniform => "uniform",
            SamplerKind::Prioritized => "prioritized",
            SamplerKind::MaxHeap => "max_heap",
            SamplerKind::MinHeap => "min_heap",
        }
    }

    pub const ALL: [SamplerKind; 6] = [
        SamplerKind::Fifo,
        SamplerKind::Lifo,
        SamplerKind::Uniform,
        SamplerKind::Prioritized,
        SamplerKind::MaxHeap,
        SamplerKind::MinHeap,
    ];

    /// Spellings that config files once used, with what replaced them.
    const RENAMED: [(&'static str, SamplerKind); 2] = [("max-heap", SamplerKind::MaxHeap), ("min-heap", SamplerKind::MinHeap)];

    /// The kind a config value names; `key` (`sampler`, `remover`) goes into
    /// the error, which names the new spelling of an old one.
    pub fn parse(key: &str, value: &str) -> Result<Self, String> {
        if let Some(kind) = Self::ALL.into_iter().find(|k| k.as_str() == value) {
            return Ok(kind);
        }
        if let Some((_, kind)) = Self::RENAMED.iter().find(|(old, _)| *old == value) {
            return Err(format!("{key} `{value}` is now spelled `{}`", kind.as_str()));
        }
        let known: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
        Err(format!("{key} `{value}` is not one of {}", known.join(", ")))
    }
}

fn sampler<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SamplerKind, D::Error> {
    let value = String::deserialize(deserializer)?;
    SamplerKind::parse("sampler", &value).map_err(serde::de::Error::custom)
}

fn remover<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SamplerKind, D::Error> {
    let value = String::deserialize(deserializer)?;
    SamplerKind::parse("remover", &value).map_err(serde::de::Error::custom)
}

impl ReplayConfig {
    /// Checks what serde cannot: at least one table, unique non-empty names,
    /// positive sizes and timeouts, a minimum sample size the table can
    /// reach, a priority exponent in `[0, 1]`, a bounded message size.
    pub fn validate(&self) -> Result<(), String> {
        if self.tables.is_empty() {
            return Err("replay.tables is empty; at least one table is needed".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, given) in self.tables.iter().enumerate() {
            if let (Some(preset), Some((key, value, expected))) = (given.preset, given.preset_conflict()) {
                return Err(format!(
                    "replay.tables[{i}] ({:?}): {key} = {value} contradicts preset {preset:?}, which sets {key} = {expected}; drop one of them",
                    given.name
                ));
            }
            let table = &given.effective();
            if table.name.trim().is_empty() {
                return Err(format!("replay.tables[{i}].name is empty"));
            }
            if !seen.insert(given.name.as_str()) {
                return Err(format!("replay.tables[{i}].name {:?} is used by an earlier table", table.name));
            }
            if table.max_size == 0 {
                return Err(format!("replay.tables[{i}] ({:?}): max_size must be at least 1", table.name));
            }
            if !(1..=table.max_size).contains(&table.min_size_to_sample) {
                return Err(format!(
                    "replay.tables[{i}] ({:?}): min_size_to_sample is {}; it must be between 1 and max_size {}",
                    table.name, table.min_size_to_sample, table.max_size
                ));
            }
            if !(table.samples_per_insert.is_finite() && table.samples_per_insert >= 0.0) {
                return Err(format!(
                    "replay.tables[{i}] ({:?}): samples_per_insert is {}; it must be a finite number >= 0 (0: no ratio)",
                    table.name, table.samples_per_insert
                ));
            }
            let least_buffer = table.samples_per_insert.max(1.0);
            if table.samples_per_insert > 0.0 && !(table.error_buffer >= least_buffer && table.error_buffer.is_finite()) {
                return Err(format!(
                    "replay.tables[{i}] ({:?}): error_buffer is {}; with samples_per_insert {} it must be at least {least_buffer}, or inserts and samples could both wait forever",
                    table.name, table.error_buffer, table.samples_per_insert
                ));
            }
            if table.compression == Codec::Zstd && !zstd::compression_level_range().contains(&table.compression_level) {
                return Err(format!(
                    "replay.tables[{i}] ({:?}): compression_level is {}; zstd takes {:?}",
                    table.name,
                    table.compression_level,
                    zstd::compression_level_range()
                ));
            }
            // Above 1 a large priority to the power α could overflow the sums.
            if !(0.0..=1.0).contains(&table.priority_exponent) {
                return Err(format!(
                    "replay.tables[{i}] ({:?}): priority_exponent is {}; it must be between 0 and 1",
                    table.name, table.priority_exponent
                ));
            }
        }
        if !(self.checkpoint_interval_secs.is_finite() && self.checkpoint_interval_secs >= 0.0) {
            return Err(format!(
                "replay.checkpoint_interval_secs is {}; it must be a finite number >= 0 (0: no timer)",
                self.checkpoint_interval_secs
            ));
        }
        if self.keep_checkpoints == 0 {
            return Err("replay.keep_checkpoints must be at least 1".to_owned());
        }
        if self.durability == Durability::Wal && self.checkpoint_dir.is_empty() {
            return Err("replay.durability = \"wal\" needs replay.checkpoint_dir: the log lives beside the checkpoints".to_owned());
        }
        if self.sample_timeout_ms == 0 {
            return Err("replay.sample_timeout_ms must be at least 1".to_owned());
        }
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES_LIMIT).contains(&self.max_message_bytes) {
            return Err(format!(
                "replay.max_message_bytes is {}; it must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES_LIMIT}",
                self.max_message_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_one_fifo_queue_sampled_once() {
        let config = ReplayConfig::default();
        assert_eq!(config.tables.len(), 1);
        let table = &config.tables[0];
        assert_eq!(table.name, "queue");
        assert_eq!(table.max_size, 32);
        assert_eq!(table.sampler, SamplerKind::Fifo);
        assert_eq!(table.max_times_sampled, 1);
        assert!(table.blocks_inserts_when_full());
        assert_eq!((table.priority_exponent, table.min_size_to_sample), (0.9, 1));
        assert_eq!(config.sample_timeout_ms, 10_000);
        assert_eq!(config.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn toml_fills_defaults_and_rejects_unknown_keys() {
        let config: ReplayConfig = toml::from_str(
            r#"
            sample_timeout_ms = 500
            [[tables]]
            name = "fresh"
            sampler = "fifo"
            max_size = 8
            "#,
        )
        .unwrap();
        assert_eq!(config.sample_timeout_ms, 500);
        assert_eq!(config.tables[0].name, "fresh");
        assert_eq!(config.tables[0].max_size, 8);
        assert_eq!(config.tables[0].max_times_sampled, 1);

        assert!(toml::from_str::<ReplayConfig>("sample_timout_ms = 5").is_err());
        assert!(toml::from_str::<ReplayConfig>("[[tables]]\nsampler = \"random\"").is_err());
        assert!(toml::from_str::<ReplayConfig>("[[tables]]\nsampler = \"Prioritized\"").is_err());
        assert!(toml::from_str::<ReplayConfig>("[[tables]]\nmax_sise = 3").is_err());
    }

    #[test]
    fn old_sampler_spellings_are_refused_naming_the_new_one() {
        for (key, old, new) in [("sampler", "max-heap", "max_heap"), ("remover", "min-heap", "min_heap")] {
            let message = toml::from_str::<ReplayConfig>(&format!("[[tables]]\n{key} = \"{old}\""))
                .unwrap_err()
                .to_string();
            assert!(message.contains(&format!("{key} `{old}` is now spelled `{new}`")), "{message}");
        }
        let message = toml::from_str::<ReplayConfig>("[[tables]]\nsampler = \"random\"")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("sampler `random` is not one of fifo, lifo, uniform, prioritized, max_heap, min_heap"),
            "{message}"
        );
        for kind in SamplerKind::ALL {
            let config: ReplayConfig = toml::from_str(&format!("[[tables]]\nremover = \"{}\"", kind.as_str())).unwrap();
            assert_eq!(config.tables[0].remover, kind);
            let written = toml::to_string(&config).unwrap();
            assert!(written.contains(&format!("remover = \"{}\"", kind.as_str())), "{written}");
        }
    }

    #[test]
    fn samplers_and_their_fields_parse() {
        let config: ReplayConfig = toml::from_str(
            r#"
            [[tables]]
            name = "priority"
            sampler = "prioritized"
            max_size = 1000
            max_times_sampled = 0
            priority_exponent = 0.6
            min_size_to_sample = 100
            [[tables]]
            name = "stack"
            sampler = "lifo"
            [[tables]]
            name = "uniform"
            sampler = "uniform"
            [[tables]]
            name = "heap"
            sampler = "max_heap"
            remover = "min_heap"
            samples_per_insert = 8.0
            error_buffer = 16.0
            "#,
        )
        .unwrap();
        assert_eq!(config.validate(), Ok(()));
        let [priority, stack, uniform, heap] = &config.tables[..] else {
            panic!("four tables expected")
        };
        assert_eq!((heap.sampler, heap.remover), (SamplerKind::MaxHeap, SamplerKind::MinHeap));
        assert_eq!(heap.rate_limiter(), RateLimiter::sample_to_insert_ratio(8.0, 1, 16.0));
        assert_eq!(priority.remover, SamplerKind::Fifo);
        assert_eq!(priority.sampler, SamplerKind::Prioritized);
        assert_eq!((priority.priority_exponent, priority.min_size_to_sample), (0.6, 100));
        assert_eq!((stack.sampler, uniform.sampler), (SamplerKind::Lifo, SamplerKind::Uniform));
        assert_eq!(SamplerKind::Prioritized.as_str(), "prioritized");
    }

    #[test]
    fn only_fifo_tables_that_sample_items_out_block_when_full() {
        let table = |sampler, max_times_sampled| TableConfig {
            sampler,
            max_times_sampled,
            ..TableConfig::default()
        };
        assert!(table(SamplerKind::Fifo, 1).blocks_inserts_when_full());
        assert!(table(SamplerKind::Fifo, 4).blocks_inserts_when_full());
        assert!(!table(SamplerKind::Fifo, 0).blocks_inserts_when_full());
        for sampler in [SamplerKind::Lifo, SamplerKind::Uniform, SamplerKind::Prioritized] {
            assert!(!table(sampler, 1).blocks_inserts_when_full(), "{sampler:?}");
            assert!(!table(sampler, 0).blocks_inserts_when_full(), "{sampler:?}");
        }
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let bad = |edit: fn(&mut ReplayConfig)| {
            let mut config = ReplayConfig::default();
            edit(&mut config);
            config.validate().unwrap_err()
        };
        assert!(bad(|c| c.tables.clear()).contains("empty"));
        assert!(bad(|c| c.tables[0].name = " ".into()).contains("name is empty"));
        assert!(bad(|c| c.tables.push(TableConfig::default())).contains("earlier table"));
        assert!(bad(|c| c.tables[0].max_size = 0).contains("max_size"));
        assert!(bad(|c| c.tables[0].min_size_to_sample = 0).contains("min_size_to_sample"));
        assert!(bad(|c| c.tables[0].min_size_to_sample = 33).contains("min_size_to_sample is 33"));
        assert!(bad(|c| c.tables[0].priority_exponent = -0.1).contains("priority_exponent"));
        assert!(bad(|c| c.tables[0].priority_exponent = 1.5).contains("priority_exponent"));
        assert!(bad(|c| c.tables[0].priority_exponent = f64::NAN).contains("priority_exponent"));
        assert!(bad(|c| c.sample_timeout_ms = 0).contains("sample_timeout_ms"));
        assert!(bad(|c| c.tables[0].samples_per_insert = -1.0).contains("samples_per_insert"));
        assert!(bad(|c| c.tables[0].samples_per_insert = f64::INFINITY).contains("samples_per_insert"));
        assert!(
            bad(|c| {
                c.tables[0].samples_per_insert = 4.0;
                c.tables[0].error_buffer = 3.0;
            })
            .contains("error_buffer is 3; with samples_per_insert 4 it must be at least 4")
        );
        let mut ratio = ReplayConfig::default();
        ratio.tables[0].samples_per_insert = 4.0;
        ratio.tables[0].error_buffer = 4.0;
        assert_eq!(ratio.validate(), Ok(()));
        assert_eq!(ratio.tables[0].rate_limiter(), RateLimiter::sample_to_insert_ratio(4.0, 1, 4.0));
        assert_eq!(ReplayConfig::default().tables[0].rate_limiter(), RateLimiter::min_size(1));
        assert!(bad(|c| c.max_message_bytes = usize::MAX).contains("max_message_bytes"));
        assert!(bad(|c| c.durability = Durability::Wal).contains("needs replay.checkpoint_dir"));
    }

    #[test]
    fn presets_set_the_sampling_rules_and_refuse_contradictions() {
        let config: ReplayConfig = toml::from_str(
            r#"
            [[tables]]
            name = "fresh"
            preset = "queue"
            max_size = 16
            [[tables]]
            name = "replay"
            preset = "prioritized"
            priority_exponent = 0.6
            max_size = 1000
            "#,
        )
        .unwrap();
        assert_eq!(config.validate(), Ok(()));
        let (queue, replay) = (config.tables[0].effective(), config.tables[1].effective());
        assert_eq!(queue, TableConfig::queue("fresh", 16));
        assert!(queue.blocks_inserts_when_full());
        assert_eq!(replay, TableConfig::prioritized("replay", 1000, 0.6));
        assert_eq!(
            (replay.sampler, replay.remover, replay.max_times_sampled),
            (SamplerKind::Prioritized, SamplerKind::Fifo, 0)
        );

        let contradicting: ReplayConfig = toml::from_str("[[tables]]\npreset = \"queue\"\nsampler = \"uniform\"").unwrap();
        let message = contradicting.validate().unwrap_err();
        assert!(
            message.contains("sampler = uniform contradicts preset Queue, which sets sampler = fifo"),
            "{message}"
        );
        let contradicting: ReplayConfig = toml::from_str("[[tables]]\npreset = \"prioritized\"\nmax_times_sampled = 3").unwrap();
        assert!(contradicting.validate().unwrap_err().contains("max_times_sampled = 3"));
    }

    #[test]
    fn zstd_levels_outside_its_range_are_refused() {
        let mut config = ReplayConfig::default();
        config.tables[0].compression = Codec::Zstd;
        config.tables[0].compression_level = 99;
        assert!(config.validate().unwrap_err().contains("compression_level is 99"));
        config.tables[0].compression_level = 1;
        assert_eq!(config.validate(), Ok(()));
    }
}
