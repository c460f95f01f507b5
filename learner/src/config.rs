//! The `[learner]` config section.

use serde::{Deserialize, Serialize};

use crate::optim::OptimizerConfig;
use crate::vtrace::VTraceParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Rmsprop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LearningRateSchedule {
    Constant,
    /// Linear decay to zero over `lr_decay_frames` env frames consumed.
    Linear,
}

/// Where a recurrent core's state starts at a sequence's first step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    /// The state the actor stored with the sequence (R2D2).
    Stored,
    /// Zeros (for ablations).
    Zero,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Replay table to sample from.
    pub table: String,
    /// Batches decoded ahead of the update loop.
    pub prefetch_batches: usize,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub rmsprop_decay: f64,
    pub rmsprop_epsilon: f64,
    pub lr_schedule: LearningRateSchedule,
    /// Frames over which the linear schedule reaches zero.
    pub lr_decay_frames: u64,
    /// Global gradient-norm clip; 0 disables clipping.
    pub max_grad_norm: f64,
    pub discount: f64,
    /// Weight of the baseline (value) loss.
    pub baseline_cost: f64,
    /// Weight of the entropy bonus.
    pub entropy_cost: f64,
    /// V-trace ρ̄.
    pub rho_bar: f32,
    /// V-trace c̄.
    pub c_bar: f32,
    /// Importance-weight clip of the policy-gradient term.
    pub pg_rho_bar: f32,
    /// V-trace λ.
    pub lambda: f32,
    /// Publish weights every this many updates.
    pub publish_every: u64,
    /// Directory for checkpoints; empty disables them.
    pub checkpoint_dir: String,
    /// Seconds between checkpoints (one is also written at shutdown).
    pub checkpoint_interval_secs: f64,
    /// Checkpoints kept; older ones are deleted.
    pub keep_checkpoints: usize,
    pub initial_state: InitialState,
    /// Leading steps of each sequence that only warm the core's state up;
    /// not a key of its own: the binary sets it from `actor.burn_in`, so
    /// that the two cannot disagree.
    #[serde(skip)]
    pub burn_in: usize,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            batch_size: 8,
            table: "queue".into(),
            prefetch_batches: 2,
            optimizer: OptimizerKind::Adam,
            learning_rate: 5e-4,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            rmsprop_decay: 0.99,
            rmsprop_epsilon: 0.01,
            lr_schedule: LearningRateSchedule::Constant,
            lr_decay_frames: 1_000_000,
            max_grad_norm: 40.0,
            discount: 0.99,
            baseline_cost: 0.5,
            entropy_cost: 0.01,
            rho_bar: 1.0,
            c_bar: 1.0,
            pg_rho_bar: 1.0,
            lambda: 1.0,
            publish_every: 1,
            checkpoint_dir: String::new(),
            checkpoint_interval_secs: 60.0,
            keep_checkpoints: 3,
            initial_state: InitialState::Stored,
            burn_in: 0,
        }
    }
}

impl LearnerConfig {
    pub fn vtrace(&self) -> VTraceParams {
        VTraceParams {
            rho_bar: self.rho_bar,
            c_bar: self.c_bar,
            pg_rho_bar: self.pg_rho_bar,
            lambda: self.lambda,
        }
    }

    pub fn optimizer(&self) -> OptimizerConfig {
        match self.optimizer {
            OptimizerKind::Adam => OptimizerConfig::Adam {
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                epsilon: self.adam_epsilon,
            },
            OptimizerKind::Rmsprop => OptimizerConfig::Rmsprop {
                decay: self.rmsprop_decay,
                epsilon: self.rmsprop_epsilon,
            },
        }
    }

    /// The learning rate after `frames` env frames have been consumed.
    pub fn learning_rate_at(&self, frames: u64) -> f64 {
        match self.lr_schedule {
            LearningRateSchedule::Constant => self.learning_rate,
            LearningRateSchedule::Linear => self.learning_rate * (1.0 - frames as f64 / self.lr_decay_frames as f64).max(0.0),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("learner.batch_size", self.batch_size as f64),
            ("learner.prefetch_batches", self.prefetch_batches as f64),
            ("learner.learning_rate", self.learning_rate),
            ("learner.adam_epsilon", self.adam_epsilon),
            ("learner.publish_every", self.publish_every as f64),
            ("learner.rmsprop_epsilon", self.rmsprop_epsilon),
            ("learner.lr_decay_frames", self.lr_decay_frames as f64),
            ("learner.checkpoint_interval_secs", self.checkpoint_interval_secs),
            ("learner.keep_checkpoints", self.keep_checkpoints as f64),
        ];
        for (key, value) in positive {
            if !(value > 0.0 && value.is_finite()) {
                return Err(format!("{key} must be positive, got {value}"));
            }
        }
        if !(0.0..=1.0).contains(&self.discount) {
            return Err(format!("learner.discount must be in [0, 1], got {}", self.discount));
        }
        self.optimizer().validate()?;
        for (key, value) in [
            ("learner.baseline_cost", self.baseline_cost),
            ("learner.entropy_cost", self.entropy_cost),
            ("learner.max_grad_norm", self.max_grad_norm),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(format!("{key} must be a finite number ≥ 0, got {value}"));
            }
        }
        self.vtrace().validate().map_err(|e| format!("learner: {e}"))?;
        if self.table.is_empty() {
            return Err("learner.table must not be empty".into());
        }
        Ok(())
    }
}
