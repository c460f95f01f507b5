//! Replay checkpoints on disk: every table's items (in insertion order, with
//! keys, priorities and times sampled) and counters, written atomically to a
//! directory, and read back whole or not at all.
//!
//! # Layout
//!
//! `<root>/checkpoint-<unix ms>/` holds one file per table, `table-<i>.pb`: a
//! length-delimited [`TableHeader`], then per item a length-delimited
//! [`ItemHeader`] and the item's `Sequence`. `MANIFEST.json`, written last,
//! lists each file with its length and CRC-32 and is the completion marker.
//! A checkpoint is assembled under a `.tmp-` name, its files and directory
//! fsynced, and renamed into place, so a crash leaves either a complete
//! checkpoint or a `.tmp-` directory that [`newest`] ignores. A checkpoint
//! whose manifest exists but whose files do not match it is an error naming
//! the file, never a partial load.
//!
//! The rate limiter's cursor is restored through the insert and sample
//! counters. Not here: when to write (the service's timer and RPC) and how a
//! table takes a snapshot (`Table::snapshot`, under a short lock).

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_proto::pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::error::Error;

const MANIFEST: &str = "MANIFEST.json";
const PREFIX: &str = "checkpoint-";
const TEMP_PREFIX: &str = ".tmp-";
const FORMAT: u32 = 1;

/// A table's state at one instant: what a checkpoint stores.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSnapshot {
    pub header: TableHeader,
    pub items: Vec<StoredItem>,
}

/// One item of a snapshot; the sequence is shared with the live table.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    pub meta: ItemHeader,
    pub sequence: Arc<pb::Sequence>,
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

/// An item's bookkeeping; its sequence follows it in the file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ItemHeader {
    #[prost(uint64, tag = "1")]
    pub key: u64,
    #[prost(double, tag = "2")]
    pub priority: f64,
    #[prost(uint32, tag = "3")]
    pub times_sampled: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    tables: Vec<ManifestEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestEntry {
    table: String,
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

    let mut tables = Vec::with_capacity(snapshots.len());
    for (i, snapshot) in snapshots.iter().enumerate() {
        let file = format!("table-{i}.pb");
        let path = temp.join(&file);
        let (bytes, crc32) = write_table(&path, snapshot).map_err(|e| io_error(&path, "writing", e))?;
        tables.push(ManifestEntry {
            table: snapshot.header.name.clone(),
            file,
            bytes,
            crc32,
        });
    }
    let manifest = serde_json::to_vec_pretty(&Manifest { format: FORMAT, tables })
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

fn write_table(path: &Path, snapshot: &TableSnapshot) -> std::io::Result<(u64, u32)> {
    let file = File::create(path)?;
    let mut out = Crc32Writer {
        inner: BufWriter::new(file),
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    out.write_all(&snapshot.header.encode_length_delimited_to_vec())?;
    for item in &snapshot.items {
        out.write_all(&item.meta.encode_length_delimited_to_vec())?;
        out.write_all(&item.sequence.encode_length_delimited_to_vec())?;
    }
    out.inner.flush()?;
    out.inner.get_ref().sync_all()?;
    Ok((out.bytes, out.hasher.finalize()))
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
/// the manifest (length, CRC-32) and its own header (item count).
pub fn read(dir: &Path) -> Result<Vec<TableSnapshot>, Error> {
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
    manifest
        .tables
        .iter()
        .map(|entry| {
            let path = dir.join(&entry.file);
            read_table(&path, entry)
        })
        .collect()
}

fn read_table(path: &Path, entry: &ManifestEntry) -> Result<TableSnapshot, Error> {
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
        let meta = ItemHeader::decode_length_delimited(&mut rest).map_err(|e| corrupt(format!("item {i}: {e}")))?;
        let sequence = pb::Sequence::decode_length_delimited(&mut rest).map_err(|e| corrupt(format!("item {i}'s sequence: {e}")))?;
        items.push(StoredItem {
            meta,
            sequence: Arc::new(sequence),
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
    use crate::validate::testing::cartpole_sequence;

    fn snapshot(name: &str, items: u64) -> TableSnapshot {
        TableSnapshot {
            header: TableHeader {
                name: name.into(),
                next_key: items + 5,
                inserts: items + 4,
                samples: 17,
                evictions: 4,
                max_priority_seen: 3.5,
                items,
            },
            items: (0..items)
                .map(|i| StoredItem {
                    meta: ItemHeader {
                        key: i + 5,
                        priority: 0.5 + i as f64,
                        times_sampled: i as u32,
                    },
                    sequence: Arc::new(cartpole_sequence(5, i)),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_keeps_every_item_and_counter_and_only_the_newest_k() {
        let root = tempfile::tempdir().unwrap();
        let tables = vec![snapshot("queue", 3), snapshot("prioritized", 0), snapshot("uniform", 7)];
        let mut written = Vec::new();
        for _ in 0..4 {
            written.push(write(root.path(), &tables, 2).unwrap());
        }
        assert_eq!(newest(root.path()).unwrap().as_ref(), written.last());
        assert_eq!(list(root.path()).unwrap(), written[2..].to_vec(), "the newest 2 are kept");
        assert_eq!(read(written.last().unwrap()).unwrap(), tables);
    }

    #[test]
    fn partial_checkpoints_are_ignored_and_an_empty_root_has_none() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(newest(&root.path().join("missing")).unwrap(), None);
        let done = write(root.path(), &[snapshot("queue", 2)], 3).unwrap();
        // A checkpoint that never got its manifest, and a leftover temp dir.
        fs::create_dir(root.path().join(format!("{PREFIX}9999999999999999"))).unwrap();
        fs::create_dir(root.path().join(format!("{TEMP_PREFIX}{PREFIX}9999999999999998"))).unwrap();
        assert_eq!(newest(root.path()).unwrap(), Some(done));
    }

    #[test]
    fn truncated_or_altered_files_fail_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = write(root.path(), &[snapshot("queue", 4)], 3).unwrap();
        let file = dir.join("table-0.pb");
        let original = fs::read(&file).unwrap();

        fs::write(&file, &original[..original.len() - 10]).unwrap();
        let message = read(&dir).unwrap_err().to_string();
        assert!(
            message.contains("table-0.pb is corrupt") && message.contains("bytes where the manifest says"),
            "{message}"
        );

        let mut flipped = original.clone();
        flipped[original.len() / 2] ^= 0x40;
        fs::write(&file, &flipped).unwrap();
        let message = read(&dir).unwrap_err().to_string();
        assert!(message.contains("table-0.pb is corrupt: CRC-32"), "{message}");

        fs::remove_file(&file).unwrap();
        let message = read(&dir).unwrap_err().to_string();
        assert!(message.contains("opening") && message.contains("table-0.pb"), "{message}");

        fs::write(dir.join(MANIFEST), b"{ not json").unwrap();
        let message = read(&dir).unwrap_err().to_string();
        assert!(message.contains("parsing") && message.contains(MANIFEST), "{message}");
    }
}
