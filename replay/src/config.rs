//! The replay service's configuration: which tables exist and how each one
//! samples, plus the service-wide bounds (default sample timeout, largest gRPC
//! message). Parsing (serde) and checking ([`ReplayConfig::validate`]) live
//! here; turning a checked config into running tables does not.

use serde::{Deserialize, Serialize};

use fleet_proto::DEFAULT_MAX_MESSAGE_BYTES;

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
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            tables: vec![TableConfig::default()],
            sample_timeout_ms: 10_000,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Configuration of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableConfig {
    /// Name that insert and sample requests use.
    pub name: String,
    /// Most items the table holds; memory is bounded by this times the
    /// largest sequence. A full FIFO table makes inserts wait (backpressure).
    pub max_size: usize,
    /// Which item a sample returns.
    pub sampler: SamplerKind,
    /// An item sampled this many times is removed; 0 means never. 1 makes the
    /// table a queue in which every sequence is learnt from exactly once
    /// (IMPALA).
    pub max_times_sampled: u32,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            name: "queue".to_owned(),
            // Small on purpose: every queued sequence is policy lag, and a
            // full queue makes actors wait instead of running ahead.
            max_size: 32,
            sampler: SamplerKind::Fifo,
            max_times_sampled: 1,
        }
    }
}

/// The sampling rule of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Oldest item first. Inserts wait while the table is full (a queue,
    /// like Reverb's `Queue` rate limiter) rather than evicting.
    #[default]
    Fifo,
}

impl SamplerKind {
    /// The name used in config files and in `Info` replies.
    pub fn as_str(self) -> &'static str {
        match self {
            SamplerKind::Fifo => "fifo",
        }
    }
}

impl ReplayConfig {
    /// Checks what serde cannot: at least one table, unique non-empty names,
    /// positive sizes and timeouts, a bounded message size.
    pub fn validate(&self) -> Result<(), String> {
        if self.tables.is_empty() {
            return Err("replay.tables is empty; at least one table is needed".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            if table.name.trim().is_empty() {
                return Err(format!("replay.tables[{i}].name is empty"));
            }
            if !seen.insert(table.name.as_str()) {
                return Err(format!("replay.tables[{i}].name {:?} is used by an earlier table", table.name));
            }
            if table.max_size == 0 {
                return Err(format!("replay.tables[{i}] ({:?}): max_size must be at least 1", table.name));
            }
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
        assert!(toml::from_str::<ReplayConfig>("[[tables]]\nsampler = \"lifo\"").is_err());
        assert!(toml::from_str::<ReplayConfig>("[[tables]]\nmax_sise = 3").is_err());
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
        assert!(bad(|c| c.sample_timeout_ms = 0).contains("sample_timeout_ms"));
        assert!(bad(|c| c.max_message_bytes = usize::MAX).contains("max_message_bytes"));
    }
}
