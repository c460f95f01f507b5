//! The learner's diagnostics log: one JSON object per line, every
//! `stats_every` updates, with what an update measured and what its batch
//! was made of. Prometheus shows the latest values; this file keeps the
//! whole history, for finding when and why learning went wrong.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::learner::UpdateStats;

/// What the update loop knows about a batch besides the update's own stats.
#[derive(Debug, Clone, Default)]
pub struct BatchFacts {
    /// Sequences learnt from.
    pub sequences: usize,
    /// Fresh sequences dropped as too stale.
    pub dropped_stale: usize,
    /// Distinct actors among the learnt sequences.
    pub actors: usize,
    /// Sequence ages in versions: min, mean, max (over all sampled fresh
    /// ones, dropped ones included), and the mean per actor.
    pub age_min: u64,
    pub age_mean: f64,
    pub age_max: u64,
    pub age_by_actor: Vec<(u64, f64)>,
}

pub struct StatsLog {
    out: BufWriter<File>,
    every: u64,
    started: Instant,
    layers: Vec<String>,
}

impl StatsLog {
    /// Appends to `path`; `layers` names the per-variable norms.
    pub fn open(path: &Path, every: u64, layers: Vec<String>) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            out: BufWriter::new(file),
            every: every.max(1),
            started: Instant::now(),
            layers,
        })
    }

    /// Writes the line of update `update` if it is one of every `every`th.
    pub fn record(&mut self, update: u64, version: u64, frames: u64, stats: &UpdateStats, batch: &BatchFacts) -> std::io::Result<()> {
        if !update.is_multiple_of(self.every) {
            return Ok(());
        }
        let per_layer = |norms: &[f64]| -> Value {
            Value::Object(
                self.layers
                    .iter()
                    .zip(norms)
                    .map(|(name, &norm)| (name.clone(), json!(norm)))
                    .collect::<Map<_, _>>(),
            )
        };
        let d = &stats.diagnostics;
        let line = json!({
            "update": update,
            "version": version,
            "frames": frames,
            "seconds": self.started.elapsed().as_secs_f64(),
            "policy_loss": stats.policy_loss,
            "baseline_loss": stats.baseline_loss,
            "entropy": stats.entropy,
            "mean_abs_advantage": stats.mean_abs_advantage,
            "clipped_rho_fraction": stats.clipped_rho_fraction,
            "clip_fraction": stats.clip_fraction,
            "rho_mean": d.rho_mean,
            "rho_max": d.rho_max,
            "logit_gap_mean": d.logit_gap_mean,
            "logit_gap_max": d.logit_gap_max,
            "value_mean": d.value_mean,
            "target_mean": d.target_mean,
            "learning_rate": stats.learning_rate,
            "grad_norm": stats.step.grad_norm,
            "relative_step": stats.step.relative_step(),
            "layer_grad_norms": per_layer(&stats.step.layer_grad_norms),
            "layer_step_norms": per_layer(&stats.step.layer_step_norms),
            "sequences": batch.sequences,
            "dropped_stale": batch.dropped_stale,
            "actors": batch.actors,
            "age_min": batch.age_min,
            "age_mean": batch.age_mean,
            "age_max": batch.age_max,
            "age_by_actor": Value::Object(
                batch
                    .age_by_actor
                    .iter()
                    .map(|(actor, age)| (actor.to_string(), json!(age)))
                    .collect::<Map<_, _>>()
            ),
        });
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
