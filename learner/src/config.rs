//! The `[learner]` config section.

use serde::{Deserialize, Serialize};

use crate::vtrace::VTraceParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
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
            max_grad_norm: 40.0,
            discount: 0.99,
            baseline_cost: 0.5,
            entropy_cost: 0.01,
            rho_bar: 1.0,
            c_bar: 1.0,
            pg_rho_bar: 1.0,
            lambda: 1.0,
            publish_every: 1,
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

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("learner.batch_size", self.batch_size as f64),
            ("learner.prefetch_batches", self.prefetch_batches as f64),
            ("learner.learning_rate", self.learning_rate),
            ("learner.adam_epsilon", self.adam_epsilon),
            ("learner.publish_every", self.publish_every as f64),
        ];
        for (key, value) in positive {
            if !(value > 0.0 && value.is_finite()) {
                return Err(format!("{key} must be positive, got {value}"));
            }
        }
        for (key, value) in [
            ("learner.discount", self.discount),
            ("learner.adam_beta1", self.adam_beta1),
            ("learner.adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("{key} must be in [0, 1], got {value}"));
            }
        }
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
