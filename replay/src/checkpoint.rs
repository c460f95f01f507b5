//! Replay checkpoints on disk: every table's items (in insertion order, with
//! keys, priorities and times sampled) and counters, and the chunks of steps
//! they share, written atomically to a directory, and read back whole or not
//! at all.
//!
//! # Layout
//!
//! `<root>/checkpoint-<unix ms>/` holds `chunks.pb`, every chunk that some
//! item references, once (length-delimited [`ChunkRecord`]s), and one file
//! per table, `table-<i>.pb`: a length-delimited [`TableHeader`], then per
//! item a length-delimited [`ItemRecord`] that references chunks by id.
//! `MANIFEST.json`, written last, lists each file with its length and CRC-32
//! and is the completion marker.
//! A checkpoint is assembled under a `.tmp-` name, its files and directory
//! fsynced, and renamed into place, so a crash leaves either a complete
//! checkpoint or a `.tmp-` directory that [`newest`] ignores. A checkpoint
//! whose manifest exists but whose files do not match it is an error naming
//! the file, never a partial load.
//!
//! The rate limiter's cursor is restored through the insert and sample
//! counters. Not here: when to write (the service's timer and RPC) and how a
//! table takes a snapshot (`Table::snapshot`, under a short lock).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_proto::pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::chunk::{Chunk, ChunkRecord, ChunkStore, ItemSteps, Segment};
use crate::error::Error;

const MANIFEST: &str = "MANIFEST.json";
const CHUNKS: &str = "chunks.pb";
const PREFIX: &str = "checkpoint-";
const TEMP_PREFIX: &str = ".tmp-";
const FORMAT: u32 = 2;

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

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    chunks: ChunksEntry,
    tables: Vec<TableEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChunksEntry {
    count: u64,
    #[serde(flatten)]
    file: FileEntry,
}

#[derive(Debug, Serialize, Deserialize)]
struct TableEntry {
    table: String,
    #[serde(flatten)]
    file: FileEntry,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    file: String,
    bytes: u64,
    crc32: u32,
}

fn io_error(path: &Path, what: &str, error: impl std::fmt::Display) -> Error {
    Error::Checkpoint(format!("{what} {}: {error}", path.display()))
}

/// Writes `snapshots` as a new checkpoint under `root`, then deletes all but
/// the newest `keep` complete checkpoints there. Returns the new directory.
pub fn write(root: &Path, snapshots: &[TableSnapshot], keep: usize) -> Result<PathBuf, Error> {
    fs::create_dir_all(root).map_err(|e| io_error(root, "creating", e))?;
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    // Two checkpoints within one millisecond get distinct names.
    let mut name = format!("{PREFIX}{millis:016}");
    let mut n = 0;
    while root.join(&name).exists() {
        n += 1;
        name = format!("{PREFIX}{millis:016}-{n}");
    }
    let temp = root.join(format!("{TEMP_PREFIX}{name}"));
    let _ = fs::remove_dir_all(&temp);
    fs::create_dir(&temp).map_err(|e| io_error(&temp, "creating", e))?;

    // Every chunk once, however many items and tables reference it.
    let chunks: BTreeMap<u64, &Arc<Chunk>> = snapshots
        .iter()
        .flat_map(|s| &s.items)
        .flat_map(|item| item.steps.segments())
        .map(|segment| (segment.chunk.id(), &segment.chunk))
        .collect();
    let path = temp.join(CHUNKS);
    let file = write_file(&path, chunks.values().map(|c| c.record().encode_length_delimited_to_vec()))
        .map_err(|e| io_error(&path, "writing", e))?;
    let chunks = ChunksEntry {
        count: chunks.len() as u64,
        file: FileEntry {
            file: CHUNKS.to_owned(),
            ..file
        },
    };

    let mut tables = Vec::with_capacity(snapshots.len());
    for (i, snapshot) in snapshots.iter().enumerate() {
        let name = format!("table-{i}.pb");
        let path = temp.join(&name);
        let messages = std::iter::once(snapshot.header.encode_length_delimited_to_vec())
            .chain(snapshot.items.iter().map(|item| item_record(item).encode_length_delimited_to_vec()));
        let file = write_file(&path, messages).map_err(|e| io_error(&path, "writing", e))?;
        tables.push(TableEntry {
            table: snapshot.header.name.clone(),
            file: FileEntry { file: name, ..file },
        });
    }
    let manifest = serde_json::to_vec_pretty(&Manifest {
        format: FORMAT,
        chunks,
        tables,
    })
    .map_err(|e| Error::Checkpoint(format!("encoding the manifest: {e}")))?;
    let manifest_path = temp.join(MANIFEST);
    write_synced(&manifest_path, &manifest).map_err(|e| io_error(&manifest_path, "writing", e))?;
    sync_dir(&temp).map_err(|e| io_error(&temp, "syncing", e))?;
    let done = root.join(&name);
    fs::rename(&temp, &done).map_err(|e| io_error(&done, "renaming into", e))?;
    sync_dir(root).map_err(|e| io_error(root, "syncing", e))?;

    let complete = list(root)?;
    for old in complete.iter().rev().skip(keep.max(1)) {
        if let Err(error) = fs::remove_dir_all(old) {
            tracing::warn!(path = %old.display(), %error, "could not delete an old replay checkpoint");
        }
    }
    Ok(done)
}

fn item_record(item: &StoredItem) -> ItemRecord {
    ItemRecord {
        key: item.meta.key,
        priority: item.meta.priority,
        times_sampled: item.meta.times_sampled,
        actor_id: item.steps.actor_id(),
        initial_state: item.steps.initial_state().cloned(),
        segments: item
            .steps
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

/// Writes `messages` to a new file at `path` and syncs it; the entry's
/// `file` is left for the caller to name.
fn write_file(path: &Path, messages: impl Iterator<Item = Vec<u8>>) -> std::io::Result<FileEntry> {
    let file = File::create(path)?;
    let mut out = Crc32Writer {
        inner: BufWriter::new(file),
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    for message in messages {
        out.write_all(&message)?;
    }
    out.inner.flush()?;
    out.inner.get_ref().sync_all()?;
    Ok(FileEntry {
        file: String::new(),
        bytes: out.bytes,
        crc32: out.hasher.finalize(),
    })
}

struct Crc32Writer {
    inner: BufWriter<File>,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl Crc32Writer {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        self.inner.write_all(data)
    }
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(data)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Complete checkpoints under `root`, oldest first (names sort by time).
fn list(root: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(root, "listing", error)),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(PREFIX)) && p.join(MANIFEST).is_file())
        .collect();
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint under `root`, if any.
pub fn newest(root: &Path) -> Result<Option<PathBuf>, Error> {
    Ok(list(root)?.pop())
}

/// Reads every table of the checkpoint in `dir`, checking each file against
/// the manifest (length, CRC-32) and its own header (item count), and every
/// chunk as an insert would be. The chunks go into `store`.
pub fn read(dir: &Path, store: &Arc<ChunkStore>) -> Result<Vec<TableSnapshot>, Error> {
    let manifest_path = dir.join(MANIFEST);
    let text = fs::read(&manifest_path).map_err(|e| io_error(&manifest_path, "reading", e))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| io_error(&manifest_path, "parsing", e))?;
    if manifest.format != FORMAT {
        return Err(Error::Checkpoint(format!(
            "{}: format {} is not the supported format {FORMAT}",
            manifest_path.display(),
            manifest.format
        )));
    }
    let path = dir.join(&manifest.chunks.file.file);
    let corrupt = |path: &Path, what: String| Error::Checkpoint(format!("{} is corrupt: {what}", path.display()));
    let data = read_file(&path, &manifest.chunks.file)?;
    let mut rest = &data[..];
    let mut chunks = HashMap::with_capacity(manifest.chunks.count.min(1 << 20) as usize);
    while !rest.is_empty() {
        let record =
            ChunkRecord::decode_length_delimited(&mut rest).map_err(|e| corrupt(&path, format!("chunk record {}: {e}", chunks.len())))?;
        let id = record.id;
        let chunk = store.restore(record).map_err(|e| corrupt(&path, e.to_string()))?;
        if chunks.insert(id, chunk).is_some() {
            return Err(corrupt(&path, format!("chunk {id} appears twice")));
        }
    }
    if chunks.len() as u64 != manifest.chunks.count {
        return Err(corrupt(
            &path,
            format!("{} chunks where the manifest says {}", chunks.len(), manifest.chunks.count),
        ));
    }
    manifest
        .tables
        .iter()
        .map(|entry| read_table(&dir.join(&entry.file.file), entry, &chunks))
        .collect()
}

/// The contents of a file, checked against its manifest entry.
fn read_file(path: &Path, entry: &FileEntry) -> Result<Vec<u8>, Error> {
    let corrupt = |what: String| Error::Checkpoint(format!("{} is corrupt: {what}", path.display()));
    let mut data = Vec::new();
    BufReader::new(File::open(path).map_err(|e| io_error(path, "opening", e))?)
        .read_to_end(&mut data)
        .map_err(|e| io_error(path, "reading", e))?;
    if data.len() as u64 != entry.bytes {
        return Err(corrupt(format!("{} bytes where the manifest says {}", data.len(), entry.bytes)));
    }
    let crc32 = crc32fast::hash(&data);
    if crc32 != entry.crc32 {
        return Err(corrupt(format!("CRC-32 {crc32:08x} where the manifest says {:08x}", entry.crc32)));
    }
    Ok(data)
}

fn read_table(path: &Path, entry: &TableEntry, chunks: &HashMap<u64, Arc<Chunk>>) -> Result<TableSnapshot, Error> {
    let corrupt = |what: String| Error::Checkpoint(format!("{} is corrupt: {what}", path.display()));
    let data = read_file(path, &entry.file)?;
    let mut rest = &data[..];
    let header = TableHeader::decode_length_delimited(&mut rest).map_err(|e| corrupt(format!("table header: {e}")))?;
    if header.name != entry.table {
        return Err(corrupt(format!(
            "holds table {:?} where the manifest says {:?}",
            header.name, entry.table
        )));
    }
    let mut items = Vec::with_capacity(header.items.min(1 << 20) as usize);
    for i in 0..header.items {
        let record = ItemRecord::decode_length_delimited(&mut rest).map_err(|e| corrupt(format!("item {i}: {e}")))?;
        let segments = record
            .segments
            .iter()
            .map(|s| {
                let chunk = chunks
                    .get(&s.chunk)
                    .ok_or_else(|| corrupt(format!("item {} references chunk {}, which chunks.pb lacks", record.key, s.chunk)))?;
                let start = usize::try_from(s.start).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(s.len).unwrap_or(usize::MAX));
                Ok(Segment {
                    chunk: Arc::clone(chunk),
                    range: start..end,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let steps = ItemSteps::from_parts(segments, record.initial_state, record.actor_id)
            .map_err(|e| corrupt(format!("item {}: {e}", record.key)))?;
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
        return Err(corrupt(format!("{} bytes after the last of {} items", rest.len(), header.items)));
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
    fn round_trip_keeps_every_item_and_counter_and_only_the_newest_k() {
        let root = tempfile::tempdir().unwrap();
        let store = ChunkStore::new();
        let tables = vec![
            snapshot(&store, "queue", 3),
            snapshot(&store, "prioritized", 0),
            snapshot(&store, "uniform", 7),
        ];
        let mut written = Vec::new();
        for _ in 0..4 {
            written.push(write(root.path(), &tables, 2).unwrap());
        }
        assert_eq!(newest(root.path()).unwrap().as_ref(), written.last());
        assert_eq!(list(root.path()).unwrap(), written[2..].to_vec(), "the newest 2 are kept");
        assert_eq!(read(written.last().unwrap(), &ChunkStore::new()).unwrap(), tables);
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
        let dir = write(root.path(), &tables, 1).unwrap();
        let manifest: Manifest = serde_json::from_slice(&fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest.chunks.count, 3, "three chunks for six item references");

        let restored_store = ChunkStore::new();
        let restored = read(&dir, &restored_store).unwrap();
        assert_eq!(restored, tables);
        assert_eq!(restored_store.totals(), store.totals(), "the same chunks, once each");
        assert_eq!(restored[1].items[2].steps.to_sequence().unwrap(), stream.slice_steps(10..20));
        let chunk = |t: usize, i: usize| Arc::as_ptr(&restored[t].items[i].steps.segments()[0].chunk);
        assert_eq!(chunk(0, 0), chunk(1, 0), "both tables share one restored chunk");
        // New chunks never reuse a restored id.
        let next = restored_store.item(cartpole_sequence(3, 1), Compression::NONE).unwrap();
        assert!(next.segments()[0].chunk.id() > 3);
    }

    #[test]
    fn partial_checkpoints_are_ignored_and_an_empty_root_has_none() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(newest(&root.path().join("missing")).unwrap(), None);
        let done = write(root.path(), &[snapshot(&ChunkStore::new(), "queue", 2)], 3).unwrap();
        // A checkpoint that never got its manifest, and a leftover temp dir.
        fs::create_dir(root.path().join(format!("{PREFIX}9999999999999999"))).unwrap();
        fs::create_dir(root.path().join(format!("{TEMP_PREFIX}{PREFIX}9999999999999998"))).unwrap();
        assert_eq!(newest(root.path()).unwrap(), Some(done));
    }

    #[test]
    fn truncated_or_altered_files_fail_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = write(root.path(), &[snapshot(&ChunkStore::new(), "queue", 4)], 3).unwrap();
        let read = |dir: &Path| read(dir, &ChunkStore::new());
        for name in ["table-0.pb", CHUNKS] {
            let file = dir.join(name);
            let original = fs::read(&file).unwrap();

            fs::write(&file, &original[..original.len() - 10]).unwrap();
            let message = read(&dir).unwrap_err().to_string();
            assert!(
                message.contains(&format!("{name} is corrupt")) && message.contains("bytes where the manifest says"),
                "{message}"
            );

            let mut flipped = original.clone();
            flipped[original.len() / 2] ^= 0x40;
            fs::write(&file, &flipped).unwrap();
            let message = read(&dir).unwrap_err().to_string();
            assert!(message.contains(&format!("{name} is corrupt: CRC-32")), "{message}");
            fs::write(&file, &original).unwrap();
        }
        assert_eq!(read(&dir).unwrap().len(), 1, "restored files read again");

        fs::remove_file(dir.join("table-0.pb")).unwrap();
        let message = read(&dir).unwrap_err().to_string();
        assert!(message.contains("opening") && message.contains("table-0.pb"), "{message}");

        fs::write(dir.join(MANIFEST), b"{ not json").unwrap();
        let message = read(&dir).unwrap_err().to_string();
        assert!(message.contains("parsing") && message.contains(MANIFEST), "{message}");
    }
}
