//! Learner checkpoints on disk: weights and optimiser state as safetensors
//! plus a small JSON metadata file, one directory per checkpoint named by
//! weights version. A checkpoint is written into a temporary directory,
//! fsynced and renamed into place, so a crash never leaves a half-written
//! one under a final name; the metadata file is written last and marks it
//! complete. The newest `keep` checkpoints are kept.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "meta.json";
const PREFIX: &str = "ckpt-";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything besides tensors that a resumed learner needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Version of the weights in this checkpoint; the resumed learner goes on from it.
    pub version: u64,
    pub updates: u64,
    /// Env frames consumed (drives the learning-rate schedule).
    pub frames: u64,
    pub optimizer_steps: u64,
    /// Seconds since the Unix epoch when it was written.
    pub written_at: u64,
}

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub meta: CheckpointMeta,
    pub model: Vec<u8>,
    pub optimizer: HashMap<String, Tensor>,
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = fs::File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<(), CheckpointError> {
    fs::File::open(path).and_then(|d| d.sync_all()).map_err(io(path))
}

/// Writes one checkpoint atomically and prunes all but the newest `keep`.
pub fn write(dir: &Path, keep: usize, meta: &CheckpointMeta, model: &[u8], optimizer: &[u8]) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let name = format!("{PREFIX}{:020}", meta.version);
    let final_path = dir.join(&name);
    let staging = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    fs::create_dir(&staging).map_err(io(&staging))?;
    write_synced(&staging.join(MODEL_FILE), model)?;
    write_synced(&staging.join(OPTIMIZER_FILE), optimizer)?;
    let json = serde_json::to_vec_pretty(meta).expect("metadata serialises");
    write_synced(&staging.join(META_FILE), &json)?;
    sync_dir(&staging)?;
    if final_path.exists() {
        fs::remove_dir_all(&final_path).map_err(io(&final_path))?;
    }
    fs::rename(&staging, &final_path).map_err(io(&final_path))?;
    sync_dir(dir)?;
    for old in complete(dir)?.into_iter().rev().skip(keep.max(1)) {
        fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(final_path)
}

/// Complete checkpoint directories, oldest first.
fn complete(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let is_checkpoint = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(PREFIX));
        if is_checkpoint && path.join(META_FILE).exists() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Reads the newest complete checkpoint in `dir`, if any. A damaged newest
/// checkpoint is an error naming the file, never a silent fallback.
pub fn latest(dir: &Path, device: &Device) -> Result<Option<Loaded>, CheckpointError> {
    if !dir.exists() {
        return Ok(None);
    }
    let Some(path) = complete(dir)?.pop() else { return Ok(None) };
    let corrupt = |file: &Path, message: String| CheckpointError::Corrupt {
        path: file.to_path_buf(),
        message,
    };
    let meta_path = path.join(META_FILE);
    let meta_bytes = fs::read(&meta_path).map_err(io(&meta_path))?;
    let meta: CheckpointMeta = serde_json::from_slice(&meta_bytes).map_err(|e| corrupt(&meta_path, e.to_string()))?;
    let model_path = path.join(MODEL_FILE);
    let model = fs::read(&model_path).map_err(io(&model_path))?;
    safetensors::SafeTensors::deserialize(&model).map_err(|e| corrupt(&model_path, e.to_string()))?;
    let optimizer_path = path.join(OPTIMIZER_FILE);
    let optimizer_bytes = fs::read(&optimizer_path).map_err(io(&optimizer_path))?;
    let optimizer = candle_core::safetensors::load_buffer(&optimizer_bytes, device).map_err(|e| corrupt(&optimizer_path, e.to_string()))?;
    Ok(Some(Loaded {
        path,
        meta,
        model,
        optimizer,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(version: u64) -> CheckpointMeta {
        CheckpointMeta {
            version,
            updates: version - 1,
            frames: 10 * version,
            optimizer_steps: version - 1,
            written_at: 0,
        }
    }

    fn optimizer_blob() -> Vec<u8> {
        let t = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        safetensors::tensor::serialize([("w.second", &t)], None).unwrap()
    }

    #[test]
    fn newest_complete_checkpoint_wins_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let model = safetensors::tensor::serialize([("x", &Tensor::new(&[0f32], &Device::Cpu).unwrap())], None).unwrap();
        for v in [2, 9, 11, 30] {
            write(dir.path(), 2, &meta(v), &model, &optimizer_blob()).unwrap();
        }
        // An interrupted write leaves only a staging directory, which is ignored.
        fs::create_dir(dir.path().join(".tmp-ckpt-00000000000000000099-1")).unwrap();
        let names: Vec<_> = complete(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["ckpt-00000000000000000011", "ckpt-00000000000000000030"]);
        let loaded = latest(dir.path(), &Device::Cpu).unwrap().unwrap();
        assert_eq!(loaded.meta, meta(30));
        assert_eq!(loaded.optimizer["w.second"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn a_damaged_checkpoint_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let model = safetensors::tensor::serialize([("x", &Tensor::new(&[0f32], &Device::Cpu).unwrap())], None).unwrap();
        let path = write(dir.path(), 3, &meta(5), &model, &optimizer_blob()).unwrap();
        fs::write(path.join(MODEL_FILE), b"garbage").unwrap();
        let err = latest(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(MODEL_FILE), "{err}");
        fs::write(path.join(META_FILE), b"{").unwrap();
        let err = latest(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(META_FILE), "{err}");
        assert!(latest(&dir.path().join("absent"), &Device::Cpu).unwrap().is_none());
    }
}
