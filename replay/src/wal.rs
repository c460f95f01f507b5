//! The write-ahead log behind `replay.durability = "wal"`: every change to a
//! table (an insert, an eviction, a sample, a priority update) is appended
//! here while that table is locked, so the log holds each table's changes in
//! the order they happened; an insert is acknowledged only once the log
//! holding it is on disk. One writer thread commits in groups: whatever is
//! appended while one `fdatasync` runs goes out in the next write and sync,
//! so concurrent inserts share a sync instead of paying one each.
//!
//! # Layout
//!
//! `<checkpoint_dir>/wal/<segment>.wal` (the segment number zero-padded to
//! 20 digits) holds frames of `u32 length | u32 crc32 | WalRecord`, both
//! numbers little-endian. A chunk of steps is written into a segment before
//! the first record there that references it. A checkpoint starts a new
//! segment before it takes its snapshots and names that segment in its
//! metadata; once the checkpoint is committed, older segments are deleted.
//!
//! # Recovery
//!
//! Each table numbers its records (`wal_seq`, from 1) and a snapshot keeps
//! the number of the last record it includes, so that a restart applies, on
//! top of the newest checkpoint, exactly the records that checkpoint lacks,
//! in order, whichever segment they fell in. A table whose records skip a
//! number stops the start (the log is missing changes). A frame cut short or
//! failing its checksum at the end of the newest segment is what a crash in
//! the middle of a write leaves: it was never acknowledged, so it is cut off
//! with a warning. The same damage in an older segment stops the start with
//! an error naming the file and offset.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use prost::Message;
use tokio::sync::watch;
use tracing::{error, warn};

use crate::checkpoint::{ItemRecord, item_steps, steps_record};
use crate::chunk::{Chunk, ChunkRecord, ChunkStore, ItemSteps};
use crate::error::Error;
use crate::table::{Redo, Table};

/// The log's directory under `replay.checkpoint_dir`.
pub const DIR: &str = "wal";
const SUFFIX: &str = ".wal";
/// Length and checksum in front of every record.
const FRAME_HEADER: usize = 8;

/// One logged change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WalRecord {
    #[prost(oneof = "Change", tags = "1, 2, 3, 4, 5")]
    pub change: Option<Change>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Change {
    /// Steps that later records of the segment reference.
    #[prost(message, tag = "1")]
    Chunk(ChunkRecord),
    /// An item stored in one or more tables at once.
    #[prost(message, tag = "2")]
    Insert(InsertRecord),
    /// Items evicted to make room.
    #[prost(message, tag = "3")]
    Evict(KeysRecord),
    /// One sampled batch, its draws in order (each counts towards
    /// `max_times_sampled`).
    #[prost(message, tag = "4")]
    Sample(KeysRecord),
    /// New priorities of items present.
    #[prost(message, tag = "5")]
    Priorities(PrioritiesRecord),
}

/// The item's steps (its `key`, `priority` and `times_sampled` unused), and
/// where it went.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InsertRecord {
    #[prost(message, optional, tag = "1")]
    pub item: Option<ItemRecord>,
    #[prost(message, repeated, tag = "2")]
    pub placements: Vec<Placement>,
}

/// The item in one table: its key, and the priority it was stored with.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Placement {
    #[prost(string, tag = "1")]
    pub table: String,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(uint64, tag = "3")]
    pub key: u64,
    #[prost(double, tag = "4")]
    pub priority: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeysRecord {
    #[prost(string, tag = "1")]
    pub table: String,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(uint64, repeated, tag = "3")]
    pub keys: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PrioritiesRecord {
    #[prost(string, tag = "1")]
    pub table: String,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(uint64, repeated, tag = "3")]
    pub keys: Vec<u64>,
    #[prost(double, repeated, tag = "4")]
    pub priorities: Vec<f64>,
}

/// An open log: appends from the tables, a writer thread that makes them
/// durable. Closing (or dropping) it writes and syncs what was appended.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    pending: Mutex<Pending>,
    /// Wakes the writer when something is appended or the log closes.
    wake: Condvar,
    /// What the writer has made durable, or why it stopped.
    durable: watch::Sender<Durable>,
}

#[derive(Debug)]
struct Pending {
    /// Appended, not yet taken by the writer; in order.
    batches: VecDeque<Batch>,
    /// The segment appends go to.
    segment: u64,
    /// Bytes appended since the log was opened: a position in the log.
    appended: u64,
    /// Chunks already written into `segment`.
    chunks: HashSet<u64>,
    /// Closed, or the writer failed: appends are dropped.
    closed: bool,
}

#[derive(Debug)]
struct Batch {
    segment: u64,
    bytes: Vec<u8>,
    /// The log position at the batch's end.
    end: u64,
}

#[derive(Debug, Clone, Default)]
struct Durable {
    /// Every append up to this position is on disk.
    synced: u64,
    /// Why the writer stopped; nothing appended after that is durable.
    failed: Option<String>,
}

/// What [`recover`] found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovery {
    /// Segments read.
    pub segments: usize,
    /// Records applied (the rest were in the checkpoint already).
    pub applied: u64,
    /// Bytes of a torn last frame that were cut off.
    pub torn_bytes: u64,
    /// The segment the reopened log starts.
    pub next_segment: u64,
}

impl Wal {
    /// Opens the log under `dir` (made if need be), appending to a new
    /// segment `segment`.
    pub fn open(dir: &Path, segment: u64) -> Result<Arc<Self>, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::Wal(format!("creating {}: {e}", dir.display())))?;
        let (durable, _) = watch::channel(Durable::default());
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            pending: Mutex::new(Pending {
                batches: VecDeque::new(),
                segment,
                appended: 0,
                chunks: HashSet::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            durable,
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("replay-wal".into())
                .spawn(move || shared.write_loop())
                .map_err(|e| Error::Wal(format!("starting the log writer: {e}")))?
        };
        Ok(Arc::new(Self {
            shared,
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// Logs an item stored in the tables of `placements`, after every chunk
    /// of its steps this segment lacks.
    pub fn log_insert(&self, placements: Vec<Placement>, steps: &ItemSteps) {
        let mut pending = self.shared.lock();
        for segment in steps.segments() {
            let chunk = &segment.chunk;
            if !pending.closed && pending.chunks.insert(chunk.id()) {
                pending.append(Change::Chunk(chunk.record()));
            }
        }
        let item = steps_record(steps);
        pending.append(Change::Insert(InsertRecord {
            item: Some(item),
            placements,
        }));
        self.shared.wake.notify_one();
    }

    /// Logs `change` (not an insert); it becomes durable with the next
    /// insert's sync, or the one after.
    pub fn log(&self, change: Change) {
        self.shared.lock().append(change);
        self.shared.wake.notify_one();
    }

    /// The log position after everything appended so far.
    pub fn appended(&self) -> u64 {
        self.shared.lock().appended
    }

    /// Waits until everything up to `position` is on disk; an error if the
    /// writer failed first.
    pub async fn synced(&self, position: u64) -> Result<(), Error> {
        let mut durable = self.shared.durable.subscribe();
        let state = durable
            .wait_for(|d| d.synced >= position || d.failed.is_some())
            .await
            .map_err(|_| Error::Wal("the log writer is gone".to_owned()))?;
        match &state.failed {
            Some(why) if state.synced < position => Err(Error::Wal(why.clone())),
            _ => Ok(()),
        }
    }

    /// Starts a new segment for every later append and returns its number:
    /// a checkpoint calls this before taking its snapshots.
    pub fn rotate(&self) -> u64 {
        let mut pending = self.shared.lock();
        pending.segment += 1;
        pending.chunks.clear();
        pending.segment
    }

    /// Deletes the segments before `segment`, which a committed checkpoint
    /// has made unnecessary.
    pub fn remove_segments_before(&self, segment: u64) -> Result<(), Error> {
        for (number, path) in segments(&self.shared.dir)? {
            if number < segment {
                fs::remove_file(&path).map_err(|e| Error::Wal(format!("deleting {}: {e}", path.display())))?;
            }
        }
        Ok(())
    }

    /// Writes and syncs everything appended, then stops the writer; later
    /// appends are dropped. Called at shutdown, after the last checkpoint.
    pub fn close(&self) {
        self.shared.lock().closed_by_owner();
        self.shared.wake.notify_one();
        let writer = match self.writer.lock() {
            Ok(mut writer) => writer.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            error!("the replay log writer panicked");
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

impl Pending {
    fn append(&mut self, change: Change) {
        if self.closed {
            return;
        }
        let record = WalRecord { change: Some(change) };
        let len = record.encoded_len();
        let segment = self.segment;
        if self.batches.back().is_none_or(|b| b.segment != segment) {
            self.batches.push_back(Batch {
                segment,
                bytes: Vec::new(),
                end: self.appended,
            });
        }
        let Some(batch) = self.batches.back_mut() else {
            unreachable!("a batch was just pushed");
        };
        let start = batch.bytes.len();
        batch.bytes.reserve(FRAME_HEADER + len);
        batch.bytes.extend_from_slice(&(len as u32).to_le_bytes());
        batch.bytes.extend_from_slice(&[0; 4]);
        record
            .encode(&mut batch.bytes)
            .unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
        let crc = crc32fast::hash(&batch.bytes[start + FRAME_HEADER..]);
        batch.bytes[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
        self.appended += (FRAME_HEADER + len) as u64;
        batch.end = self.appended;
    }

    fn closed_by_owner(&mut self) {
        // The writer drains what is queued before it sees `closed`.
        self.closed = true;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        match self.pending.lock() {
            Ok(pending) => pending,
            Err(_) => panic!("replay log lock poisoned"),
        }
    }

    /// The writer thread: takes everything appended, writes it to its
    /// segments, syncs, publishes the position, until closed or failed.
    fn write_loop(&self) {
        let mut open: Option<(u64, File)> = None;
        loop {
            let batches: Vec<Batch> = {
                let mut pending = self.lock();
                while pending.batches.is_empty() && !pending.closed {
                    pending = match self.wake.wait(pending) {
                        Ok(pending) => pending,
                        Err(_) => panic!("replay log lock poisoned"),
                    };
                }
                if pending.batches.is_empty() {
                    break;
                }
                pending.batches.drain(..).collect()
            };
            let started = Instant::now();
            let bytes: usize = batches.iter().map(|b| b.bytes.len()).sum();
            match self.write(&mut open, &batches) {
                Ok(end) => {
                    crate::metrics::wal_synced(bytes as u64, started.elapsed());
                    self.durable.send_modify(|d| d.synced = end);
                }
                Err(why) => {
                    error!(%why, "the replay write-ahead log failed; inserts are no longer acknowledged");
                    self.lock().closed = true;
                    self.durable.send_modify(|d| d.failed = Some(why));
                    return;
                }
            }
        }
    }

    /// Writes `batches` in order and syncs; returns the position reached.
    fn write(&self, open: &mut Option<(u64, File)>, batches: &[Batch]) -> Result<u64, String> {
        let mut end = 0;
        for batch in batches {
            if open.as_ref().is_none_or(|(segment, _)| *segment != batch.segment) {
                if let Some((segment, file)) = open.take() {
                    file.sync_data().map_err(|e| format!("syncing segment {segment}: {e}"))?;
                }
                let path = segment_path(&self.dir, batch.segment);
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| format!("opening {}: {e}", path.display()))?;
                // The new file's name must survive a crash too.
                File::open(&self.dir)
                    .and_then(|dir| dir.sync_all())
                    .map_err(|e| format!("syncing {}: {e}", self.dir.display()))?;
                *open = Some((batch.segment, file));
            }
            let Some((_, file)) = open.as_mut() else {
                unreachable!("a segment was just opened");
            };
            file.write_all(&batch.bytes)
                .map_err(|e| format!("writing segment {}: {e}", batch.segment))?;
            end = batch.end;
        }
        if let Some((segment, file)) = open.as_ref() {
            file.sync_data().map_err(|e| format!("syncing segment {segment}: {e}"))?;
        }
        Ok(end)
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SUFFIX}"))
}

/// The segments under `dir`, by number; a missing directory has none.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Wal(format!("listing {}: {e}", dir.display()))),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::Wal(format!("listing {}: {e}", dir.display())))?;
        let name = entry.file_name();
        if let Some(number) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(|n| n.parse().ok()) {
            found.push((number, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Whether `dir` holds any segment.
pub fn has_segments(dir: &Path) -> Result<bool, Error> {
    Ok(!segments(dir)?.is_empty())
}

/// Applies the log under `dir` to `tables`, restored from a checkpoint
/// whose log starts at `from_segment` (0 and empty tables without one), with
/// the checkpoint's `chunks`; new chunks go into `store`. Deletes the
/// segments before `from_segment`, and cuts a torn last frame off.
pub fn recover(
    dir: &Path,
    from_segment: u64,
    store: &Arc<ChunkStore>,
    mut chunks: HashMap<u64, Arc<Chunk>>,
    tables: &[Arc<Table>],
) -> Result<Recovery, Error> {
    let by_name: HashMap<&str, &Table> = tables.iter().map(|t| (t.name(), t.as_ref())).collect();
    let found = segments(dir)?;
    let mut recovery = Recovery {
        next_segment: from_segment,
        ..Recovery::default()
    };
    let newest = found.last().map(|(number, _)| *number);
    for (number, path) in found {
        if number < from_segment {
            fs::remove_file(&path).map_err(|e| Error::Wal(format!("deleting {}: {e}", path.display())))?;
            continue;
        }
        recovery.segments += 1;
        recovery.next_segment = number + 1;
        let data = fs::read(&path).map_err(|e| Error::Wal(format!("reading {}: {e}", path.display())))?;
        let mut offset = 0;
        while offset < data.len() {
            let record = match frame(&data[offset..]) {
                Ok((record, len)) => {
                    offset += len;
                    record
                }
                Err(why) if Some(number) == newest => {
                    let torn = data.len() - offset;
                    warn!(
                        file = %path.display(),
                        offset,
                        bytes = torn,
                        %why,
                        "cutting off a torn record at the end of the replay log (never acknowledged)"
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(offset as u64).and_then(|()| f.sync_all()));
                    file.map_err(|e| Error::Wal(format!("truncating {}: {e}", path.display())))?;
                    recovery.torn_bytes = torn as u64;
                    break;
                }
                Err(why) => return Err(Error::Wal(format!("{} at byte {offset}: {why}", path.display()))),
            };
            let applied = apply(record, store, &mut chunks, &by_name)
                .map_err(|why| Error::Wal(format!("{} at byte {offset}: {why}", path.display())))?;
            recovery.applied += applied;
        }
    }
    for table in tables {
        table.publish_restored();
    }
    Ok(recovery)
}

/// Decodes the frame at the start of `data`: the record and the frame's length.
fn frame(data: &[u8]) -> Result<(WalRecord, usize), String> {
    let Some(header) = data.get(..FRAME_HEADER) else {
        return Err(format!("{} bytes, less than a frame header", data.len()));
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let Some(body) = data.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Err(format!("a record of {len} bytes with {} left", data.len() - FRAME_HEADER));
    };
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".to_owned());
    }
    let record = WalRecord::decode(body).map_err(|e| format!("undecodable record: {e}"))?;
    Ok((record, FRAME_HEADER + len))
}

/// Applies one record; returns how many table changes it made (0 for
/// chunks and for changes the checkpoint holds already).
fn apply(
    record: WalRecord,
    store: &Arc<ChunkStore>,
    chunks: &mut HashMap<u64, Arc<Chunk>>,
    tables: &HashMap<&str, &Table>,
) -> Result<u64, String> {
    let table = |name: &str| {
        tables
            .get(name)
            .copied()
            .ok_or_else(|| format!("a record for table {name:?}, which replay.tables does not declare"))
    };
    let applied = |done: bool| u64::from(done);
    match record.change.ok_or("an empty record")? {
        Change::Chunk(record) => {
            if !chunks.contains_key(&record.id) {
                let id = record.id;
                let chunk = store.restore(record).map_err(|e| e.to_string())?;
                chunks.insert(id, chunk);
            }
            Ok(0)
        }
        Change::Insert(insert) => {
            let item = insert.item.ok_or("an insert without its item")?;
            let steps = Arc::new(item_steps(&item, chunks)?);
            let mut count = 0;
            for placement in insert.placements {
                let done = table(&placement.table)?.redo(
                    placement.seq,
                    Redo::Insert {
                        key: placement.key,
                        priority: placement.priority,
                        steps: Arc::clone(&steps),
                    },
                )?;
                count += applied(done);
            }
            Ok(count)
        }
        Change::Evict(keys) => Ok(applied(table(&keys.table)?.redo(keys.seq, Redo::Evict(keys.keys))?)),
        Change::Sample(keys) => Ok(applied(table(&keys.table)?.redo(keys.seq, Redo::Sample(keys.keys))?)),
        Change::Priorities(update) => {
            if update.keys.len() != update.priorities.len() {
                return Err(format!("{} keys with {} priorities", update.keys.len(), update.priorities.len()));
            }
            let updates = update.keys.into_iter().zip(update.priorities).collect();
            Ok(applied(table(&update.table)?.redo(update.seq, Redo::Priorities(updates))?))
        }
    }
}
