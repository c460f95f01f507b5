//! What a replay checkpoint holds and how it decodes: every table's items
//! (in insertion order, with keys, priorities and times sampled) and
//! counters, and the chunks of steps they share. Writing, naming, checksums
//! and pruning are `fleet_checkpoint`'s.
//!
//! # Layout
//!
//! `<root>/replay-<sequence>/` holds `chunks.pb`, every chunk that some item
//! references, once (length-delimited [`ChunkRecord`]s), and one file per
//! table, `table-<i>.pb`: a length-delimited [`TableHeader`], then per item
//! a length-delimited [`ItemRecord`] that references chunks by id. The
//! manifest's metadata names the tables in file order and counts the chunks.
//! A checkpoint is read whole or not at all: a damaged file of the newest
//! checkpoint is an error naming it, never a partial load and never a fall
//! back to an older checkpoint.
//!
//! The rate limiter's cursor is restored through the insert and sample
//! counters. Not here: when to write (the service's timer and RPC) and how a
//! table takes a snapshot (`Table::snapshot`, under a short lock).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_checkpoint::Store;
use fleet_proto::pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::chunk::{Chunk, ChunkRecord, ChunkStore, ItemSteps, Segment};
use crate::error::Error;

const CHUNKS: &str = "chunks.pb";
/// Checkpoint names start with this, so that a directory shared with another
/// role holds both apart.
pub const KIND: &str = "replay";

/// A table's state at one instant: what a checkpoint stores.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSnapshot {
    pub header: TableHeader,
    pub items: Vec<StoredItem>,
}

/// One item of a snapshot; the steps are shared with the live table.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    pub meta: ItemHeader,
    pub steps: Arc<ItemSteps>,
}

/// A table's counters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TableHeader {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub next_key: u64,
    #[prost(uint64, tag = "3")]
    pub inserts: u64,
    #[prost(uint64, tag = "4")]
    pub samples: u64,
    #[prost(uint64, tag = "5")]
    pub evictions: u64,
    #[prost(double, tag = "6")]
    pub max_priority_seen: f64,
    /// Items that follow the header.
    #[prost(uint64, tag = "7")]
    pub items: u64,
    /// The table's last write-ahead-log record this state includes (0: none;
    /// see [`crate::wal`]).
    #[prost(uint64, tag = "8")]
    pub wal_seq: u64,
}

/// An item's bookkeeping in its table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemHeader {
    pub key: u64,
    pub priority: f64,
    pub times_sampled: u32,
}

/// An item as a table file stores it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ItemRecord {
    #[prost(uint64, tag = "1")]
    pub key: u64,
    #[prost(double, tag = "2")]
    pub priority: f64,
    #[prost(uint32, tag = "3")]
    pub times_sampled: u32,
    #[prost(uint64, tag = "4")]
    pub actor_id: u64,
    #[prost(message, optional, tag = "5")]
    pub initial_state: Option<pb::Tensor>,
    /// The item's steps, in order.
    #[prost(message, repeated, tag = "6")]
    pub segments: Vec<SegmentRecord>,
}

/// Steps `start .. start + len` of chunk `chunk`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SegmentRecord {
    #[prost(uint64, tag = "1")]
    pub chunk: u64,
    #[prost(uint64, tag = "2")]
    pub start: u64,
    #[prost(uint64, tag = "3")]
    pub len: u64,
}

/// What a replay checkpoint's metadata says: the tables in file order
/// (`table-<i>.pb` holds the `i`th), how many chunks `chunks.pb` holds, and
/// the first write-ahead-log segment that may hold changes after it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayMeta {
    chunks: u64,
    tables: Vec<String>,
    #[serde(default)]
    wal_segment: u64,
}

/// A checkpoint read back: its tables, every chunk they reference (by id),
/// and the first write-ahead-log segment to replay on top of it.
#[derive(Debug)]
pub struct Restored {
    pub tables: Vec<TableSnapshot>,
    pub chunks: HashMap<u64, Arc<Chunk>>,
    pub wal_segment: u64,
}

fn table_file(i: usize) -> String {
    format!("table-{i}.pb")
}

/// The store of replay checkpoints under `root`.
pub fn store(root: &Path, keep: usize) -> Store {
    Store::new(root, KIND, keep)
}

/// Writes `snapshots` as a new checkpoint under `root`, then deletes all but
/// the newest `keep` complete checkpoints there. `wal_segment` is the first
/// write-ahead-log segment whose records the snapshots may lack (0 without a
/// log). Returns the new directory.
pub fn write(root: &Path, snapshots: &[TableSnapshot], keep: usize, wal_segment: u64) -> Result<PathBuf, Error> {
    let mut writer = store(root, keep).begin()?;
    // Every chunk once, however many items and tables reference it.
    let chunks: BTreeMap<u64, &Arc<Chunk>> = snapshots
        .iter()
        .flat_map(|s| &s.items)
        .flat_map(|item| item.steps.segments())
        .map(|segment| (segment.chunk.id(), &segment.chunk))
        .collect();
    writer.write_file(CHUNKS, |out| {
        chunks
            .values()
            .try_for_each(|c| out.write_all(&c.record().encode_length_delimited_to_vec()))
    })?;
    for (i, snapshot) in snapshots.iter().enumerate() {
        writer.write_file(&table_file(i), |out| {
            out.write_all(&snapshot.header.encode_length_delimited_to_vec())?;
            snapshot
                .items
                .iter()
                .try_for_each(|item| out.write_all(&item_record(item).encode_length_delimited_to_vec()))
        })?;
    }
    let meta = ReplayMeta {
        chunks: chunks.len() as u64,
        tables: snapshots.iter().map(|s| s.header.name.clone()).collect(),
        wal_segment,
    };
    Ok(writer.commit(&meta)?)
}

fn item_record(item: &StoredItem) -> ItemRecord {
    ItemRecord {
        key: item.meta.key,
        priority: item.meta.priority,
        times_sampled: item.meta.times_sampled,
        ..steps_record(&item.steps)
    }
}

/// What an item record says of `steps` alone (its table's bookkeeping left at 0).
pub(crate) fn steps_record(steps: &ItemSteps) -> ItemRecord {
    ItemRecord {
        key: 0,
        priority: 0.0,
        times_sampled: 0,
        actor_id: steps.actor_id(),
        initial_state: steps.initial_state().cloned(),
        segments: steps
            .segments()
            .iter()
            .map(|s| SegmentRecord {
                chunk: s.chunk.id(),
                start: s.range.start as u64,
                len: s.range.len() as u64,
            })
            .collect(),
    }
}

/// The newest complete checkpoint under `root`, if any.
pub fn newest(root: &Path) -> Result<Option<PathBuf>, Error> {
    Ok(store(root, 1).latest()?)
}

/// Reads every table of the checkpoint in `dir`, each file checked against
/// the manifest (see `fleet_checkpoint::read`) and against its own header
/// (item count), and every chunk as an insert would be. The chunks go into
/// `store`.
pub fn read(dir: &Path, store: &Arc<ChunkStore>) -> Result<Restored, Error> {
    let mut checkpoint = fleet_checkpoint::read(dir)?;
    let meta: ReplayMeta = checkpoint.metadata()?;
    let data = checkpoint.take(CHUNKS)?;
    let corrupt = |what: String| Error::from(checkpoint.corrupt(CHUNKS, what));
    let mut rest = &data[..];
    let mut chunks = HashMap::with_capacity(meta.chunks.min(1 << 20) as usize);
    while !rest.is_empty() {
        let record = ChunkRecord::decode_length_delimited(&mut rest).map_err(|e| corrupt(format!("chunk record {}: {e}", chunks.len())))?;
        let id = record.id;
        let chunk = store.restore(record).map_err(|e| match e {
            Error::Checkpoint(what) => corrupt(what),
            other => corrupt(other.to_string()),
        })?;
        if chunks.insert(id, chunk).is_some() {
            return Err(corrupt(format!("chunk {id} appears twice")));
        }
    }
    if chunks.len() as u64 != meta.chunks {
        return Err(corrupt(format!("{} chunks where the manifest says {}", chunks.len(), meta.chunks)));
    }
    drop(data);
    let mut tables = Vec::with_capacity(meta.tables.len());
    for (i, name) in meta.tables.iter().enumerate() {
        let file = table_file(i);
        let data = checkpoint.take(&file)?;
        let table = read_table(&data, name, &chunks).map_err(|what| checkpoint.corrupt(&file, what))?;
        tables.push(table);
    }
    Ok(Restored {
        tables,
        chunks,
        wal_segment: meta.wal_segment,
    })
}

/// An item's steps from its record, its chunks looked up in `chunks`; the
/// error says what is wrong with it.
pub(crate) fn item_steps(record: &ItemRecord, chunks: &HashMap<u64, Arc<Chunk>>) -> Result<ItemSteps, String> {
    let segments = record
        .segments
        .iter()
        .map(|s| {
            let chunk = chunks
                .get(&s.chunk)
                .ok_or_else(|| format!("item {} references chunk {}, which is not stored", record.key, s.chunk))?;
            let start = usize::try_from(s.start).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::try_from(s.len).unwrap_or(usize::MAX));
            Ok(Segment {
                chunk: Arc::clone(chunk),
                range: start..end,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    ItemSteps::from_parts(segments, record.initial_state.clone(), record.actor_id).map_err(|e| format!("item {}: {e}", record.key))
}

/// Decodes one table file; the error says what is wrong with it.
fn read_table(data: &[u8], name: &str, chunks: &HashMap<u64, Arc<Chunk>>) -> Result<TableSnapshot, String> {
    let mut rest = data;
    let header = TableHeader::decode_length_delimited(&mut rest).map_err(|e| format!("table header: {e}"))?;
    if header.name != name {
        return Err(format!("holds table {:?} where the manifest says {name:?}", header.name));
    }
    let mut items = Vec::with_capacity(header.items.min(1 << 20) as usize);
    for i in 0..header.items {
        let record = ItemRecord::decode_length_delimited(&mut rest).map_err(|e| format!("item {i}: {e}"))?;
        let steps = item_steps(&record, chunks)?;
        items.push(StoredItem {
            meta: ItemHeader {
                key: record.key,
                priority: record.priority,
                times_sampled: record.times_sampled,
            },
            steps: Arc::new(steps),
        });
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last of {} items", rest.len(), header.items));
    }
    Ok(TableSnapshot { header, items })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Codec, Compression};
    use crate::validate::testing::cartpole_sequence;

    fn header(name: &str, items: u64) -> TableHeader {
        TableHeader {
            name: name.into(),
            next_key: items + 5,
            inserts: items + 4,
            samples: 17,
            evictions: 4,
            max_priority_seen: 3.5,
            items,
            wal_seq: 9,
        }
    }

    fn snapshot(store: &Arc<ChunkStore>, name: &str, items: u64) -> TableSnapshot {
        TableSnapshot {
            header: header(name, items),
            items: (0..items)
                .map(|i| StoredItem {
                    meta: ItemHeader {
                        key: i + 5,
                        priority: 0.5 + i as f64,
                        times_sampled: i as u32,
                    },
                    steps: store.item(cartpole_sequence(5, i), Compression::NONE).unwrap(),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_keeps_every_item_and_counter() {
        let root = tempfile::tempdir().unwrap();
        let store = ChunkStore::new();
        let tables = vec![
            snapshot(&store, "queue", 3),
            snapshot(&store, "prioritized", 0),
            snapshot(&store, "uniform", 7),
        ];
        assert_eq!(newest(root.path()).unwrap(), None);
        write(root.path(), &tables[..1], 2, 0).unwrap();
        let written = write(root.path(), &tables, 2, 7).unwrap();
        assert_eq!(newest(root.path()).unwrap(), Some(written.clone()));
        assert!(written.file_name().unwrap().to_string_lossy().starts_with(KIND));
        let restored = read(&written, &ChunkStore::new()).unwrap();
        assert_eq!(restored.tables, tables);
        assert_eq!(restored.wal_segment, 7);
    }

    #[test]
    fn shared_chunks_are_written_once_and_shared_again_when_read() {
        let root = tempfile::tempdir().unwrap();
        let store = ChunkStore::new();
        // Three overlapping items of one writer (zstd-compressed), each in two tables.
        let stream = cartpole_sequence(30, 6);
        let compression = Compression {
            codec: Codec::Zstd,
            level: 3,
        };
        let first = store.item(stream.slice_steps(0..10), compression).unwrap();
        let second = store.continued_item(&first, 5, stream.slice_steps(10..15), compression).unwrap();
        let third = store.continued_item(&second, 5, stream.slice_steps(15..20), compression).unwrap();
        let items = [first, second, third];
        let table = |name: &str| TableSnapshot {
            header: header(name, 3),
            items: items
                .iter()
                .enumerate()
                .map(|(i, steps)| StoredItem {
                    meta: ItemHeader {
                        key: i as u64 + 5,
                        priority: 1.0,
                        times_sampled: 0,
                    },
                    steps: Arc::clone(steps),
                })
                .collect(),
        };
        let tables = vec![table("a"), table("b")];
        let dir = write(root.path(), &tables, 1, 0).unwrap();
        let meta: ReplayMeta = fleet_checkpoint::read(&dir).unwrap().metadata().unwrap();
        assert_eq!(meta.chunks, 3, "three chunks for six item references");
        assert_eq!(meta.tables, ["a", "b"]);

        let restored_store = ChunkStore::new();
        let restored = read(&dir, &restored_store).unwrap().tables;
        assert_eq!(restored, tables);
        assert_eq!(restored_store.totals(), store.totals(), "the same chunks, once each");
        assert_eq!(restored[1].items[2].steps.to_sequence().unwrap(), stream.slice_steps(10..20));
        let chunk = |t: usize, i: usize| Arc::as_ptr(&restored[t].items[i].steps.segments()[0].chunk);
        assert_eq!(chunk(0, 0), chunk(1, 0), "both tables share one restored chunk");
        // New chunks never reuse a restored id.
        let next = restored_store.item(cartpole_sequence(3, 1), Compression::NONE).unwrap();
        assert!(next.segments()[0].chunk.id() > 3);
    }
}
