//! What a learner checkpoint holds and how it decodes: the weights and the
//! optimiser state as two safetensors files, and the counters a resumed
//! learner goes on from as the checkpoint's metadata. Writing, naming,
//! checksums and pruning are `fleet_checkpoint`'s: checkpoints are
//! `learner-<sequence>` directories, written atomically, the newest
//! `keep_checkpoints` kept. A damaged newest checkpoint is an error naming
//! the file; the learner never falls back to an older one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use fleet_checkpoint::{Error, Store};
use serde::{Deserialize, Serialize};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Checkpoint names start with this, so that a directory shared with another
/// role holds both apart.
pub const KIND: &str = "learner";

/// Everything besides tensors that a resumed learner needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// Version of the weights in this checkpoint; the resumed learner goes on from it.
    pub version: u64,
    pub updates: u64,
    /// Env frames consumed (drives the learning-rate schedule).
    pub frames: u64,
    pub optimizer_steps: u64,
}

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub meta: CheckpointMeta,
    pub model: Vec<u8>,
    pub optimizer: HashMap<String, Tensor>,
}

/// Writes one checkpoint under `dir` and prunes all but the newest `keep`.
pub fn write(dir: &Path, keep: usize, meta: &CheckpointMeta, model: &[u8], optimizer: &[u8]) -> Result<PathBuf, Error> {
    let mut writer = Store::new(dir, KIND, keep).begin()?;
    writer.put(MODEL_FILE, model)?;
    writer.put(OPTIMIZER_FILE, optimizer)?;
    writer.commit(meta)
}

/// Checks that checkpoints can be written under `dir` (creating it if need
/// be), so that a learner that could not save its progress never starts.
pub fn check_writable(dir: &Path) -> Result<(), Error> {
    Store::new(dir, KIND, 1).check_writable()
}

/// Reads the newest complete checkpoint under `dir`, if any (a missing
/// directory holds none).
pub fn latest(dir: &Path, device: &Device) -> Result<Option<Loaded>, Error> {
    let Some(mut checkpoint) = Store::new(dir, KIND, 1).read_latest()? else {
        return Ok(None);
    };
    let meta: CheckpointMeta = checkpoint.metadata()?;
    let model = checkpoint.take(MODEL_FILE)?;
    safetensors::SafeTensors::deserialize(&model).map_err(|e| checkpoint.corrupt(MODEL_FILE, e))?;
    let optimizer = checkpoint.take(OPTIMIZER_FILE)?;
    let optimizer = candle_core::safetensors::load_buffer(&optimizer, device).map_err(|e| checkpoint.corrupt(OPTIMIZER_FILE, e))?;
    Ok(Some(Loaded {
        path: checkpoint.dir().to_path_buf(),
        meta,
        model,
        optimizer,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_weights_and_optimiser_state_read_back_from_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let tensor = |values: &[f32]| Tensor::new(values, &Device::Cpu).unwrap();
        let model = safetensors::tensor::serialize([("x", &tensor(&[0.5]))], None).unwrap();
        let optimizer = |v: f32| safetensors::tensor::serialize([("w.second", &tensor(&[v, 2.0]))], None).unwrap();
        let meta = |version: u64| CheckpointMeta {
            version,
            updates: version - 1,
            frames: 10 * version,
            optimizer_steps: version - 1,
        };
        assert!(latest(&dir.path().join("absent"), &Device::Cpu).unwrap().is_none());
        write(dir.path(), 2, &meta(9), &model, &optimizer(9.0)).unwrap();
        let path = write(dir.path(), 2, &meta(30), &model, &optimizer(30.0)).unwrap();
        let loaded = latest(dir.path(), &Device::Cpu).unwrap().unwrap();
        assert_eq!(loaded.path, path);
        assert!(path.file_name().unwrap().to_string_lossy().starts_with(KIND));
        assert_eq!(loaded.meta, meta(30));
        assert_eq!(loaded.model, model);
        assert_eq!(loaded.optimizer["w.second"].to_vec1::<f32>().unwrap(), vec![30.0, 2.0]);
    }
}
