//! fleet's checkpoint store: one checkpoint is a directory of named byte
//! files plus a manifest, and a store is the directory of one role's
//! checkpoints. It knows nothing of what the files hold — the learner's
//! weights and the replay tables each encode and decode their own — only
//! how to put them on disk so that a crash or a damaged disk is noticed.
//!
//! # Layout
//!
//! `<root>/<kind>-<sequence>/` holds the caller's files and `MANIFEST.json`:
//! the format version, the sequence number, each file's byte length and
//! CRC-32, and a small JSON value the caller supplies (a step, a version,
//! what the files hold). The sequence is zero-padded to 20 digits and goes
//! up by one with every checkpoint written under the root, so names sort in
//! the order the checkpoints were written; `kind` keeps two roles that share
//! a directory apart.
//!
//! # Writing
//!
//! A checkpoint is assembled under `.tmp-<kind>-<sequence>-<pid>`; every
//! file, then the manifest, then the directory is fsynced, and one rename
//! gives it its final name (the root is fsynced after). A crash therefore
//! leaves either a complete checkpoint or a `.tmp-` directory, which is never
//! read. [`Store::remove_leftovers`] deletes such leftovers; a role calls it
//! at start, and every checkpoint calls it before it begins. After the
//! rename all but the newest `keep` complete checkpoints are deleted. One
//! writer per root and kind at a time: the callers serialise their own
//! writes.
//!
//! # Starts
//!
//! Beside the checkpoints, `<root>/<kind>.starts` counts the starts of the
//! role that writes there ([`Store::record_start`]): a number that is never
//! handed out twice, even when the role crashes long after its last
//! checkpoint. Replay puts it in the high bits of its item keys.
//!
//! # Reading
//!
//! [`read`] checks the manifest (present, valid JSON, a supported format,
//! plain file names) and every file it lists (present, the listed length,
//! the listed CRC-32), and returns the files' contents. Any mismatch is an
//! error naming the checkpoint directory and the file. [`Store::latest`] is
//! the complete checkpoint with the highest sequence; a damaged newest
//! checkpoint is an error, never a silent fall back to an older one. A
//! directory under a checkpoint name that has no manifest at all is not
//! complete and is passed over with a warning, as both roles always did
//! (a crash cannot leave one, since the name comes with the rename).
//!
//! Not here: when to write (the roles' timers and shutdown) and what any
//! file means.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The manifest's file name in every checkpoint directory.
pub const MANIFEST: &str = "MANIFEST.json";
/// The manifest format this crate writes and the only one it reads.
pub const FORMAT: u32 = 1;
const TEMP_PREFIX: &str = ".tmp-";
const SEQUENCE_DIGITS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A file of a checkpoint (its manifest included) does not match what
    /// the manifest says, or cannot be decoded by the caller.
    #[error("{} is corrupt: {problem}", .dir.join(.file).display())]
    Corrupt { dir: PathBuf, file: String, problem: String },
    #[error("{} has format {found}; this build reads only format {FORMAT}", .dir.join(MANIFEST).display())]
    UnsupportedFormat { dir: PathBuf, found: u32 },
    #[error("{name:?} cannot name a checkpoint file: {why}")]
    BadName { name: String, why: &'static str },
    #[error("checkpoint metadata does not serialise: {0}")]
    Metadata(serde_json::Error),
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    sequence: u64,
    /// Milliseconds since the Unix epoch when the checkpoint was written.
    written_at_unix_ms: u64,
    /// In the order they were written.
    files: Vec<FileEntry>,
    /// The caller's, verbatim.
    metadata: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    bytes: u64,
    crc32: u32,
}

/// Only the format, so that a newer manifest is refused as such rather than
/// as garbled.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// A plain file name: the manifest must not point outside its directory.
fn check_name(name: &str) -> Result<(), Error> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name == MANIFEST {
        "it is the manifest's"
    } else if name.starts_with('.') {
        "it starts with a dot"
    } else if name.contains(['/', '\\', '\0']) {
        "it is not a plain file name"
    } else {
        return Ok(());
    };
    Err(Error::BadName {
        name: name.to_owned(),
        why,
    })
}

/// The checkpoints of one kind under one root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Prefix of every checkpoint name (`learner`, `replay`).
    kind: String,
    /// Complete checkpoints kept after a write (at least 1).
    keep: usize,
}

impl Store {
    /// `kind` must be a plain name; `keep` below 1 counts as 1.
    pub fn new(root: impl Into<PathBuf>, kind: &str, keep: usize) -> Self {
        Self {
            root: root.into(),
            kind: kind.to_owned(),
            keep: keep.max(1),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sequence a directory name holds, if it is one of ours.
    fn sequence_of(&self, name: &str) -> Option<u64> {
        let digits = name.strip_prefix(&self.kind)?.strip_prefix('-')?;
        (digits.len() == SEQUENCE_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    }

    fn name(&self, sequence: u64) -> String {
        format!("{}-{sequence:0width$}", self.kind, width = SEQUENCE_DIGITS)
    }

    fn temp_prefix(&self) -> String {
        format!("{TEMP_PREFIX}{}-", self.kind)
    }

    /// Every directory under a checkpoint name, complete or not, by sequence.
    fn named(&self) -> Result<Vec<(u64, PathBuf)>, Error> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error("listing", &self.root)(error)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("listing", &self.root))?;
            if let Some(sequence) = entry.file_name().to_str().and_then(|n| self.sequence_of(n)) {
                found.push((sequence, entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Complete checkpoints (those with a manifest), oldest first.
    pub fn list(&self) -> Result<Vec<PathBuf>, Error> {
        Ok(self
            .named()?
            .into_iter()
            .map(|(_, path)| path)
            .filter(|path| {
                let complete = path.join(MANIFEST).is_file();
                if !complete {
                    tracing::warn!(path = %path.display(), "passing over a checkpoint directory without a manifest");
                }
                complete
            })
            .collect())
    }

    /// The newest complete checkpoint's directory, if any (a missing root
    /// holds none).
    pub fn latest(&self) -> Result<Option<PathBuf>, Error> {
        Ok(self.list()?.pop())
    }

    /// The newest complete checkpoint, read and checked (see [`read`]).
    pub fn read_latest(&self) -> Result<Option<Checkpoint>, Error> {
        self.latest()?.map(|dir| read(&dir)).transpose()
    }

    /// Deletes the temporaries (`.tmp-<kind>-…`) that a crash mid-write
    /// left under the root, and returns how many there were. A missing root
    /// holds none. Only for the one writer of this root and kind: another
    /// process's checkpoint in progress would be deleted too.
    pub fn remove_leftovers(&self) -> Result<usize, Error> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(io_error("listing", &self.root)(error)),
        };
        let temp_prefix = self.temp_prefix();
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io_error("listing", &self.root))?;
            if !entry.file_name().to_str().is_some_and(|n| n.starts_with(&temp_prefix)) {
                continue;
            }
            let path = entry.path();
            let is_dir = entry.file_type().map_err(io_error("inspecting", &path))?.is_dir();
            let result = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.map_err(io_error("deleting the leftover", &path))?;
            tracing::info!(path = %path.display(), "deleted a checkpoint left unfinished by a crash");
            removed += 1;
        }
        Ok(removed)
    }

    /// Counts one more start in `<root>/<kind>.starts` and returns its
    /// number: one more than the last one recorded (1 the first time), or
    /// `at_least` if that is larger. The new count is on disk (written to a
    /// temporary, fsynced, renamed, the root fsynced) before this returns,
    /// so a number is never returned twice, whatever happens afterwards. An
    /// unreadable count is an error, never a silent restart from 1.
    pub fn record_start(&self, at_least: u64) -> Result<u64, Error> {
        fs::create_dir_all(&self.root).map_err(io_error("creating", &self.root))?;
        let path = self.root.join(format!("{}.starts", self.kind));
        let last = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| Error::Corrupt {
                dir: self.root.clone(),
                file: format!("{}.starts", self.kind),
                problem: format!("not a count of starts ({e}): {:?}", text.trim()),
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
            Err(error) => return Err(io_error("reading", &path)(error)),
        };
        let start = last.checked_add(1).ok_or_else(|| Error::Corrupt {
            dir: self.root.clone(),
            file: format!("{}.starts", self.kind),
            problem: "the count of starts is at its largest".into(),
        })?;
        let start = start.max(at_least);
        let temp = self.root.join(format!("{}starts-{}", self.temp_prefix(), std::process::id()));
        let mut file = File::create(&temp).map_err(io_error("creating", &temp))?;
        file.write_all(format!("{start}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error("writing", &temp))?;
        fs::rename(&temp, &path).map_err(io_error("renaming into", &path))?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io_error("syncing", &self.root))?;
        Ok(start)
    }

    /// Checks that checkpoints can be written under the root: creates it if
    /// need be, then writes, syncs and deletes a small file there. A role
    /// calls this as it starts, so that a directory it cannot write stops it
    /// at once, naming the directory, instead of at its first checkpoint.
    pub fn check_writable(&self) -> Result<(), Error> {
        fs::create_dir_all(&self.root).map_err(io_error("creating", &self.root))?;
        let probe = self.root.join(format!("{}probe-{}", self.temp_prefix(), std::process::id()));
        let mut file = File::create(&probe).map_err(io_error("creating a file in", &self.root))?;
        let written = file.write_all(b"probe\n").and_then(|()| file.sync_all());
        drop(file);
        let removed = fs::remove_file(&probe);
        written.map_err(io_error("writing a file in", &self.root))?;
        removed.map_err(io_error("deleting", &probe))
    }

    /// Starts the next checkpoint: creates the root if need be, deletes
    /// temporaries a crash left, and opens a temporary directory.
    pub fn begin(&self) -> Result<Writer, Error> {
        fs::create_dir_all(&self.root).map_err(io_error("creating", &self.root))?;
        self.remove_leftovers()?;
        let sequence = self.named()?.last().map_or(1, |(last, _)| last + 1);
        let name = self.name(sequence);
        let temp = self.root.join(format!("{TEMP_PREFIX}{name}-{}", std::process::id()));
        fs::create_dir(&temp).map_err(io_error("creating", &temp))?;
        Ok(Writer {
            store: self.clone(),
            sequence,
            final_path: self.root.join(name),
            temp,
            files: Vec::new(),
            committed: false,
        })
    }

    /// Deletes all but the newest `keep` complete checkpoints. A failure is
    /// logged, not returned: the new checkpoint is already in place.
    fn prune(&self) -> Result<(), Error> {
        let complete = self.list()?;
        for old in complete.iter().rev().skip(self.keep) {
            if let Err(error) = fs::remove_dir_all(old) {
                tracing::warn!(path = %old.display(), %error, "could not delete an old checkpoint");
            }
        }
        Ok(())
    }
}

/// A checkpoint being written; dropping it before [`Writer::commit`]
/// deletes what it wrote.
#[derive(Debug)]
pub struct Writer {
    store: Store,
    sequence: u64,
    temp: PathBuf,
    final_path: PathBuf,
    files: Vec<FileEntry>,
    committed: bool,
}

/// Counts and checksums what passes through to the file.
struct Hashing<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Writer {
    /// The sequence number the checkpoint will have.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Writes file `name` by streaming into it, then fsyncs it.
    pub fn write_file(&mut self, name: &str, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), Error> {
        check_name(name)?;
        if self.files.iter().any(|f| f.name == name) {
            return Err(Error::BadName {
                name: name.to_owned(),
                why: "the checkpoint already has a file of that name",
            });
        }
        let path = self.temp.join(name);
        let file = File::create(&path).map_err(io_error("creating", &path))?;
        let mut out = Hashing {
            inner: BufWriter::new(file),
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
        };
        write(&mut out).and_then(|()| out.flush()).map_err(io_error("writing", &path))?;
        out.inner.get_ref().sync_all().map_err(io_error("syncing", &path))?;
        self.files.push(FileEntry {
            name: name.to_owned(),
            bytes: out.bytes,
            crc32: out.hasher.finalize(),
        });
        Ok(())
    }

    /// Writes file `name` holding `bytes`.
    pub fn put(&mut self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        self.write_file(name, |out| out.write_all(bytes))
    }

    /// Writes the manifest with `metadata`, renames the checkpoint into
    /// place and prunes old ones. Returns the checkpoint's directory.
    pub fn commit(mut self, metadata: &impl Serialize) -> Result<PathBuf, Error> {
        let manifest = Manifest {
            format: FORMAT,
            sequence: self.sequence,
            written_at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            files: std::mem::take(&mut self.files),
            metadata: serde_json::to_value(metadata).map_err(Error::Metadata)?,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(Error::Metadata)?;
        let path = self.temp.join(MANIFEST);
        let mut file = File::create(&path).map_err(io_error("creating", &path))?;
        file.write_all(&json).map_err(io_error("writing", &path))?;
        file.sync_all().map_err(io_error("syncing", &path))?;
        File::open(&self.temp)
            .and_then(|d| d.sync_all())
            .map_err(io_error("syncing", &self.temp))?;
        fs::rename(&self.temp, &self.final_path).map_err(io_error("renaming into", &self.final_path))?;
        self.committed = true;
        File::open(&self.store.root)
            .and_then(|d| d.sync_all())
            .map_err(io_error("syncing", &self.store.root))?;
        self.store.prune()?;
        Ok(self.final_path.clone())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.temp);
        }
    }
}

/// A checkpoint read back and checked against its manifest.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    sequence: u64,
    metadata: serde_json::Value,
    /// Every file the manifest lists; [`Checkpoint::take`] moves them out.
    files: BTreeMap<String, Vec<u8>>,
}

/// Reads the checkpoint in `dir`: its manifest and every file it lists,
/// each checked for length and CRC-32.
pub fn read(dir: &Path) -> Result<Checkpoint, Error> {
    let corrupt = |file: &str, problem: String| Error::Corrupt {
        dir: dir.to_path_buf(),
        file: file.to_owned(),
        problem,
    };
    let manifest_path = dir.join(MANIFEST);
    let text = match fs::read(&manifest_path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(corrupt(MANIFEST, "it is missing".into())),
        Err(error) => return Err(io_error("reading", &manifest_path)(error)),
    };
    let FormatOnly { format } = serde_json::from_slice(&text).map_err(|e| corrupt(MANIFEST, format!("not a manifest: {e}")))?;
    if format != FORMAT {
        return Err(Error::UnsupportedFormat {
            dir: dir.to_path_buf(),
            found: format,
        });
    }
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| corrupt(MANIFEST, format!("not a manifest: {e}")))?;
    let mut files = BTreeMap::new();
    for entry in &manifest.files {
        check_name(&entry.name).map_err(|e| corrupt(MANIFEST, e.to_string()))?;
        let path = dir.join(&entry.name);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt(&entry.name, "it is missing".into()));
            }
            Err(error) => return Err(io_error("reading", &path)(error)),
        };
        if data.len() as u64 != entry.bytes {
            return Err(corrupt(
                &entry.name,
                format!("{} bytes where the manifest says {}", data.len(), entry.bytes),
            ));
        }
        let crc32 = crc32fast::hash(&data);
        if crc32 != entry.crc32 {
            return Err(corrupt(
                &entry.name,
                format!("CRC-32 {crc32:08x} where the manifest says {:08x}", entry.crc32),
            ));
        }
        if files.insert(entry.name.clone(), data).is_some() {
            return Err(corrupt(MANIFEST, format!("{:?} is listed twice", entry.name)));
        }
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        sequence: manifest.sequence,
        metadata: manifest.metadata,
        files,
    })
}

impl Checkpoint {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The caller's metadata, decoded; a mismatch is corruption of the manifest.
    pub fn metadata<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.metadata).map_err(|e| self.corrupt(MANIFEST, format!("metadata: {e}")))
    }

    /// The contents of file `name`, moved out; a file the manifest does not
    /// list (or already taken) is an error naming it.
    pub fn take(&mut self, name: &str) -> Result<Vec<u8>, Error> {
        self.files
            .remove(name)
            .ok_or_else(|| self.corrupt(name, "the manifest does not list it"))
    }

    /// An error saying that `file` of this checkpoint is corrupt, for callers
    /// whose decoding of a file fails.
    pub fn corrupt(&self, file: &str, problem: impl std::fmt::Display) -> Error {
        Error::Corrupt {
            dir: self.dir.clone(),
            file: file.to_owned(),
            problem: problem.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Meta {
        step: u64,
    }

    fn write(store: &Store, step: u64) -> PathBuf {
        let mut writer = store.begin().unwrap();
        writer.put("weights.bin", &step.to_le_bytes().repeat(100)).unwrap();
        writer
            .write_file("stream.bin", |out| {
                for i in 0..step {
                    out.write_all(format!("record {i}\n").as_bytes())?;
                }
                Ok(())
            })
            .unwrap();
        writer.commit(&Meta { step }).unwrap()
    }

    fn name(path: &Path) -> String {
        path.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// A store with one checkpoint; its directory.
    fn one() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let dir = write(&Store::new(root.path(), "test", 3), 7);
        (root, dir)
    }

    fn message(result: Result<Checkpoint, Error>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn files_and_metadata_read_back_as_written() {
        let (_root, dir) = one();
        let mut checkpoint = read(&dir).unwrap();
        assert_eq!(checkpoint.sequence(), 1);
        assert_eq!(checkpoint.metadata::<Meta>().unwrap(), Meta { step: 7 });
        assert_eq!(checkpoint.take("weights.bin").unwrap(), 7u64.to_le_bytes().repeat(100));
        let stream = String::from_utf8(checkpoint.take("stream.bin").unwrap()).unwrap();
        assert_eq!(stream.lines().last(), Some("record 6"));
        let err = checkpoint.take("stream.bin").unwrap_err().to_string();
        assert!(err.contains("stream.bin is corrupt: the manifest does not list it"), "{err}");
    }

    #[test]
    fn names_are_monotonic_and_only_the_newest_k_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path(), "test", 2);
        assert_eq!(store.latest().unwrap(), None);
        let written: Vec<PathBuf> = (1..=4).map(|step| write(&store, step)).collect();
        assert_eq!(name(&written[3]), "test-00000000000000000004");
        assert_eq!(store.list().unwrap(), written[2..].to_vec());
        // A store opened afresh over the same root goes on from the newest.
        let again = Store::new(root.path(), "test", 2);
        assert_eq!(name(&write(&again, 5)), "test-00000000000000000005");
        let latest = again.read_latest().unwrap().unwrap();
        assert_eq!(latest.metadata::<Meta>().unwrap(), Meta { step: 5 });
        // Another kind in the same root is invisible.
        let other = Store::new(root.path(), "other", 1);
        assert_eq!(other.latest().unwrap(), None);
        write(&other, 9);
        assert_eq!(again.list().unwrap().len(), 2);
        assert_eq!(other.list().unwrap().len(), 1);
    }

    #[test]
    fn a_crash_mid_write_leaves_nothing_under_a_checkpoint_name() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path(), "test", 3);
        let done = write(&store, 1);
        // The process dies with a temporary directory half written.
        let mut writer = store.begin().unwrap();
        writer.put("weights.bin", b"half").unwrap();
        std::mem::forget(writer);
        assert_eq!(store.latest().unwrap(), Some(done.clone()));
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 2, "the temporary is still there");
        // A writer dropped without committing cleans up after itself.
        drop(store.begin().unwrap());
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1, "the next write removed the leftover");
        // The next checkpoint takes the sequence the crashed one never got.
        assert_eq!(name(&write(&store, 2)), "test-00000000000000000002");
    }

    #[test]
    fn leftovers_of_this_kind_are_removed_at_start_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path(), "test", 3);
        assert_eq!(Store::new(root.path().join("absent"), "test", 1).remove_leftovers().unwrap(), 0);
        let done = write(&store, 1);
        let mut writer = store.begin().unwrap();
        writer.put("weights.bin", b"half").unwrap();
        std::mem::forget(writer);
        fs::write(root.path().join(".tmp-test-starts-1"), b"7").unwrap();
        let other = root.path().join(".tmp-other-00000000000000000001-1");
        fs::create_dir(&other).unwrap();
        assert_eq!(store.remove_leftovers().unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec![".tmp-other-00000000000000000001-1".to_owned(), name(&done)]);
    }

    #[test]
    fn starts_are_counted_durably_and_never_repeat() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path().join("new"), "test", 1);
        assert_eq!(store.record_start(0).unwrap(), 1);
        assert_eq!(store.record_start(0).unwrap(), 2);
        // A larger floor (keys restored from elsewhere) wins, and is recorded.
        assert_eq!(store.record_start(10).unwrap(), 10);
        assert_eq!(store.record_start(3).unwrap(), 11);
        let again = Store::new(root.path().join("new"), "test", 1);
        assert_eq!(again.record_start(0).unwrap(), 12);
        assert_eq!(Store::new(root.path().join("new"), "other", 1).record_start(0).unwrap(), 1);
        assert!(store.latest().unwrap().is_none(), "the count is no checkpoint");
        // A damaged count stops the start instead of counting from 1 again.
        fs::write(root.path().join("new").join("test.starts"), b"garbage").unwrap();
        let err = store.record_start(0).unwrap_err().to_string();
        assert!(err.contains("test.starts is corrupt"), "{err}");
    }

    #[test]
    fn a_directory_without_a_manifest_is_passed_over_by_latest_but_refused_by_read() {
        let (root, dir) = one();
        let store = Store::new(root.path(), "test", 3);
        let bare = root.path().join("test-00000000000000000009");
        fs::create_dir(&bare).unwrap();
        assert_eq!(store.latest().unwrap(), Some(dir.clone()));
        let err = message(read(&bare));
        assert!(
            err.contains(&format!("{} is corrupt: it is missing", bare.join(MANIFEST).display())),
            "{err}"
        );
        // The next checkpoint still sorts after it.
        assert_eq!(name(&write(&store, 8)), "test-00000000000000000010");
    }

    #[test]
    fn a_truncated_file_is_an_error_naming_it() {
        let (_root, dir) = one();
        let file = dir.join("stream.bin");
        let bytes = fs::read(&file).unwrap();
        fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
        let err = message(read(&dir));
        assert!(
            err.contains(&format!(
                "{} is corrupt: {} bytes where the manifest says {}",
                file.display(),
                bytes.len() - 3,
                bytes.len()
            )),
            "{err}"
        );
    }

    #[test]
    fn a_flipped_byte_is_an_error_naming_the_file() {
        let (_root, dir) = one();
        let file = dir.join("weights.bin");
        let mut bytes = fs::read(&file).unwrap();
        bytes[17] ^= 0x01;
        fs::write(&file, &bytes).unwrap();
        let err = message(read(&dir));
        assert!(err.contains(&format!("{} is corrupt: CRC-32", file.display())), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let (_root, dir) = one();
        fs::remove_file(dir.join("weights.bin")).unwrap();
        let err = message(read(&dir));
        assert!(
            err.contains(&format!("{} is corrupt: it is missing", dir.join("weights.bin").display())),
            "{err}"
        );
    }

    #[test]
    fn a_missing_manifest_is_an_error_naming_it() {
        let (_root, dir) = one();
        fs::remove_file(dir.join(MANIFEST)).unwrap();
        let err = message(read(&dir));
        assert!(
            err.contains(&format!("{} is corrupt: it is missing", dir.join(MANIFEST).display())),
            "{err}"
        );
    }

    #[test]
    fn a_garbled_manifest_is_an_error_naming_it() {
        let (_root, dir) = one();
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).unwrap();
        for garbled in [&text[..text.len() / 2], "[]", &text.replace("\"crc32\"", "\"crc\"")] {
            fs::write(&path, garbled).unwrap();
            let err = message(read(&dir));
            assert!(
                err.contains(&format!("{} is corrupt: not a manifest", path.display())),
                "{garbled}: {err}"
            );
        }
        // A manifest pointing outside its directory.
        fs::write(&path, text.replace("\"weights.bin\"", "\"../weights.bin\"")).unwrap();
        let err = message(read(&dir));
        assert!(err.contains(&format!("{} is corrupt: \"../weights.bin\"", path.display())), "{err}");
    }

    #[test]
    fn an_unknown_format_version_is_refused_as_such() {
        let (_root, dir) = one();
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace(&format!("\"format\": {FORMAT}"), "\"format\": 99")).unwrap();
        let err = message(read(&dir));
        assert!(err.contains(&format!("{} has format 99", path.display())), "{err}");
    }

    #[test]
    fn metadata_of_the_wrong_shape_is_an_error_naming_the_manifest() {
        let (_root, dir) = one();
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Other {
            version: u64,
        }
        let err = read(&dir).unwrap().metadata::<Other>().unwrap_err().to_string();
        assert!(
            err.contains(&format!("{} is corrupt: metadata", dir.join(MANIFEST).display())),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_newest_checkpoint_is_an_error_not_a_fall_back() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path(), "test", 3);
        write(&store, 1);
        let newest = write(&store, 2);
        fs::write(newest.join("weights.bin"), b"x").unwrap();
        let err = store.read_latest().unwrap_err().to_string();
        assert!(err.contains(&newest.join("weights.bin").display().to_string()), "{err}");
    }

    #[test]
    fn file_names_that_could_escape_or_clash_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut writer = Store::new(root.path(), "test", 1).begin().unwrap();
        for bad in ["", MANIFEST, ".hidden", "a/b", "../up"] {
            assert!(matches!(writer.put(bad, b""), Err(Error::BadName { .. })), "{bad:?}");
        }
        writer.put("a", b"1").unwrap();
        assert!(matches!(writer.put("a", b"2"), Err(Error::BadName { .. })));
    }
}
