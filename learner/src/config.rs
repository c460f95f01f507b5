//! The `[learner]` config section.

use serde::{Deserialize, Serialize};

use crate::optim::OptimizerConfig;
use crate::vtrace::VTraceParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
    /// Adam with decoupled weight decay (`weight_decay`).
    Adamw,
    Rmsprop,
}

/// How rewards are squashed before the loss sees them (IMPALA's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardClip {
    None,
    /// Clipped to [−1, 1].
    AbsOne,
    /// `5·tanh(r/5)`, with negative rewards scaled by a further 0.3.
    SoftAsymmetric,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Linear decay to zero over a number of env frames consumed.
    Linear,
}

impl Schedule {
    /// `start` after `frames` of the `decay_frames` a linear schedule takes to reach zero.
    pub fn at(self, start: f64, frames: u64, decay_frames: u64) -> f64 {
        match self {
            Self::Constant => start,
            Self::Linear => start * (1.0 - frames as f64 / decay_frames as f64).max(0.0),
        }
    }
}

/// What the value targets and advantages make of the gap between the
/// policy that acted (μ) and the one learning (π).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffPolicyCorrection {
    /// V-trace: each step's TD error and trace weighted by its clipped
    /// importance ratio.
    Vtrace,
    /// Every ratio taken as 1: the λ-returns of on-policy data, as PPO's
    /// later epochs treat their rollout. The clipped-ratio surrogate still
    /// weighs each step by π/μ.
    None,
}

/// When a sequence's value targets and advantages are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetsAt {
    /// At every draw, from the value function as it is then.
    EachDraw,
    /// At its first draw, and kept for its later ones (see
    /// [`crate::targets`]), as PPO computes a rollout's advantages once for
    /// all its epochs.
    FirstDraw,
}

/// Where a recurrent core's state starts at a sequence's first step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// Table of fresh sequences (a queue: each used once); the part of each
    /// batch not taken from `replay_table` comes from here.
    pub table: String,
    /// Prioritised table the replayed part of each batch comes from, and
    /// where new priorities go.
    pub replay_table: String,
    /// Share of each batch sampled from `replay_table` (LASER's replay
    /// proportion): 0 is pure IMPALA, 1 learns from replay only.
    pub replay_fraction: f64,
    /// Prioritised replay's importance-sampling exponent β at the start...
    pub beta: f64,
    /// ...and after `beta_anneal_frames` env frames (linear in between).
    pub beta_final: f64,
    /// 0: β stays at `beta`.
    pub beta_anneal_frames: u64,
    /// A sequence's new priority is `η·max|δ| + (1−η)·mean|δ|` over its
    /// learning steps (R2D2).
    pub priority_eta: f64,
    /// Priority updates are sent in requests of at most this many items, or
    /// sooner when the learner pauses.
    pub priority_batch: usize,
    /// Batches decoded ahead of the update loop.
    pub prefetch_batches: usize,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// AMSGrad: Adam's denominator from the largest second moment seen.
    pub adam_amsgrad: bool,
    /// AdamW's decoupled weight decay λ (only with `optimizer = "adamw"`).
    pub weight_decay: f64,
    pub rmsprop_decay: f64,
    pub rmsprop_epsilon: f64,
    pub lr_schedule: Schedule,
    /// Frames over which the linear schedule reaches zero.
    pub lr_decay_frames: u64,
    /// Global gradient-norm clip; 0 disables clipping.
    pub max_grad_norm: f64,
    pub discount: f64,
    /// Rewards are multiplied by this before `reward_clip`, so that values
    /// of environments with large rewards (MuJoCo, Pendulum's −16 per step)
    /// stay in the range the baseline learns well; returns are reported
    /// unscaled.
    pub reward_scale: f64,
    pub reward_clip: RewardClip,
    /// Weight of the baseline (value) loss.
    pub baseline_cost: f64,
    /// Weight of the entropy bonus (at the start, under `entropy_schedule`).
    pub entropy_cost: f64,
    /// Linear: the bonus decays to zero over `entropy_decay_frames`, so that
    /// it drives exploration early but is gone once a task is solved, where
    /// Adam would scale it, the one steady gradient left, to full-size steps.
    pub entropy_schedule: Schedule,
    pub entropy_decay_frames: u64,
    /// ε of the clipped-ratio policy surrogate, a trust region around the
    /// behaviour policy: `min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)` with ρ = π/μ and
    /// the V-trace advantage A (Sample Factory's and RLlib APPO's form).
    /// 0: IMPALA's `min(ρ̄_pg, ρ)·A·∇log π`, which lets a run of positive
    /// advantages drive an action's probability all the way to 1.
    pub ratio_clip: f64,
    /// Standardise the policy term's advantages over each batch's real
    /// decisions (zero mean, unit deviation), as PPO does per minibatch:
    /// the step size then no longer follows the reward scale or how far the
    /// value function lags.
    pub normalize_advantages: bool,
    /// V-trace, or targets that ignore the policy lag (see the enum).
    pub off_policy_correction: OffPolicyCorrection,
    /// Targets recomputed at each draw of a sequence, or kept from its first.
    pub targets: TargetsAt,
    /// Optimiser steps per batch: the targets come from the whole batch,
    /// then each step learns from its own random share of the batch's
    /// steps, as PPO's minibatches do (feed-forward networks only). 1: one
    /// step on the whole batch.
    pub minibatches: usize,
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
    /// Fresh sequences whose oldest learning decision is more than this
    /// many weights versions behind the learner are dropped unlearnt and
    /// counted (Sample Factory's bound); 0: no bound. Replayed sequences
    /// are old by design and never dropped.
    pub max_policy_lag: u64,
    /// A JSON line of diagnostics every `stats_every` updates (losses,
    /// entropy, logit gaps, importance ratios, per-layer gradient and step
    /// norms, sequence ages); empty: none.
    pub stats_file: String,
    pub stats_every: u64,
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
            batch_size: 32,
            table: "queue".into(),
            replay_table: "replay".into(),
            replay_fraction: 0.0,
            beta: 0.6,
            beta_final: 1.0,
            beta_anneal_frames: 0,
            priority_eta: 0.9,
            priority_batch: 256,
            prefetch_batches: 2,
            optimizer: OptimizerKind::Adam,
            learning_rate: 2e-3,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            adam_amsgrad: false,
            weight_decay: 0.0,
            rmsprop_decay: 0.99,
            rmsprop_epsilon: 0.01,
            lr_schedule: Schedule::Constant,
            lr_decay_frames: 1_000_000,
            max_grad_norm: 40.0,
            discount: 0.99,
            reward_scale: 0.1,
            reward_clip: RewardClip::None,
            baseline_cost: 0.5,
            entropy_cost: 0.0,
            entropy_schedule: Schedule::Constant,
            entropy_decay_frames: 1_000_000,
            ratio_clip: 0.05,
            normalize_advantages: false,
            off_policy_correction: OffPolicyCorrection::Vtrace,
            targets: TargetsAt::EachDraw,
            minibatches: 1,
            rho_bar: 1.0,
            c_bar: 1.0,
            pg_rho_bar: 1.0,
            lambda: 1.0,
            publish_every: 1,
            max_policy_lag: 100,
            stats_file: String::new(),
            stats_every: 1,
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
            OptimizerKind::Adam | OptimizerKind::Adamw => OptimizerConfig::Adam {
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                epsilon: self.adam_epsilon,
                weight_decay: if self.optimizer == OptimizerKind::Adamw {
                    self.weight_decay
                } else {
                    0.0
                },
                amsgrad: self.adam_amsgrad,
            },
            OptimizerKind::Rmsprop => OptimizerConfig::Rmsprop {
                decay: self.rmsprop_decay,
                epsilon: self.rmsprop_epsilon,
            },
        }
    }

    /// The learning rate after `frames` env frames have been consumed.
    pub fn learning_rate_at(&self, frames: u64) -> f64 {
        self.lr_schedule.at(self.learning_rate, frames, self.lr_decay_frames)
    }

    /// The entropy bonus's weight after `frames` env frames have been consumed.
    pub fn entropy_cost_at(&self, frames: u64) -> f64 {
        self.entropy_schedule.at(self.entropy_cost, frames, self.entropy_decay_frames)
    }

    /// β after `frames` env frames have been consumed.
    pub fn beta_at(&self, frames: u64) -> f64 {
        if self.beta_anneal_frames == 0 {
            return self.beta;
        }
        let progress = (frames as f64 / self.beta_anneal_frames as f64).min(1.0);
        self.beta + (self.beta_final - self.beta) * progress
    }

    /// Sequences per batch from the replay table; the rest come from `table`.
    pub fn replayed_per_batch(&self) -> usize {
        (self.replay_fraction * self.batch_size as f64).round() as usize
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("learner.batch_size", self.batch_size as f64),
            ("learner.minibatches", self.minibatches as f64),
            ("learner.prefetch_batches", self.prefetch_batches as f64),
            ("learner.learning_rate", self.learning_rate),
            ("learner.adam_epsilon", self.adam_epsilon),
            ("learner.publish_every", self.publish_every as f64),
            ("learner.stats_every", self.stats_every as f64),
            ("learner.rmsprop_epsilon", self.rmsprop_epsilon),
            ("learner.lr_decay_frames", self.lr_decay_frames as f64),
            ("learner.entropy_decay_frames", self.entropy_decay_frames as f64),
            ("learner.checkpoint_interval_secs", self.checkpoint_interval_secs),
            ("learner.keep_checkpoints", self.keep_checkpoints as f64),
        ];
        for (key, value) in positive {
            if !(value > 0.0 && value.is_finite()) {
                return Err(format!("{key} must be positive, got {value}"));
            }
        }
        if !(self.reward_scale.is_finite() && self.reward_scale > 0.0) {
            return Err(format!(
                "learner.reward_scale must be finite and positive, got {}",
                self.reward_scale
            ));
        }
        if !(0.0..=1.0).contains(&self.discount) {
            return Err(format!("learner.discount must be in [0, 1], got {}", self.discount));
        }
        self.optimizer().validate()?;
        for (key, value) in [
            ("learner.baseline_cost", self.baseline_cost),
            ("learner.entropy_cost", self.entropy_cost),
            ("learner.ratio_clip", self.ratio_clip),
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
        if self.weight_decay != 0.0 && self.optimizer != OptimizerKind::Adamw {
            return Err(format!(
                "learner.weight_decay = {} needs learner.optimizer = \"adamw\"",
                self.weight_decay
            ));
        }
        if self.adam_amsgrad && self.optimizer == OptimizerKind::Rmsprop {
            return Err("learner.adam_amsgrad = true needs learner.optimizer = \"adam\" or \"adamw\"".into());
        }
        self.validate_replay()
    }

    fn validate_replay(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.replay_fraction) {
            return Err(format!("learner.replay_fraction must be in [0, 1], got {}", self.replay_fraction));
        }
        for (key, value) in [
            ("learner.beta", self.beta),
            ("learner.beta_final", self.beta_final),
            ("learner.priority_eta", self.priority_eta),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("{key} must be in [0, 1], got {value}"));
            }
        }
        if self.priority_batch == 0 {
            return Err("learner.priority_batch must be positive, got 0".into());
        }
        if self.replay_fraction == 0.0 {
            return Ok(());
        }
        if self.replay_table.is_empty() || self.replay_table == self.table {
            return Err(format!(
                "learner.replay_table must name a table other than learner.table (`{}`) when learner.replay_fraction > 0, got `{}`",
                self.table, self.replay_table
            ));
        }
        let replayed = self.replayed_per_batch();
        if replayed == 0 {
            return Err(format!(
                "learner.replay_fraction = {} of learner.batch_size = {} takes no sequence from replay; raise one of them",
                self.replay_fraction, self.batch_size
            ));
        }
        if self.replay_fraction < 1.0 && replayed == self.batch_size {
            return Err(format!(
                "learner.replay_fraction = {} of learner.batch_size = {} takes no fresh sequence; use 1 or a larger batch",
                self.replay_fraction, self.batch_size
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linear_schedule_decays_to_zero_over_its_frames_and_stays_there() {
        let config = LearnerConfig {
            entropy_cost: 0.01,
            entropy_schedule: Schedule::Linear,
            entropy_decay_frames: 1000,
            ..LearnerConfig::default()
        };
        let at = |frames| config.entropy_cost_at(frames);
        assert_eq!((at(0), at(250), at(1000), at(5000)), (0.01, 0.0075, 0.0, 0.0));
        // The learning rate keeps its own (constant) schedule.
        assert_eq!(config.learning_rate_at(5000), config.learning_rate);
        let bad = LearnerConfig {
            entropy_decay_frames: 0,
            ..config
        };
        assert!(bad.validate().unwrap_err().contains("learner.entropy_decay_frames"));
    }

    #[test]
    fn beta_anneals_linearly_and_then_holds() {
        let config = LearnerConfig {
            beta: 0.4,
            beta_final: 1.0,
            beta_anneal_frames: 1000,
            ..Default::default()
        };
        assert_eq!(config.beta_at(0), 0.4);
        assert!((config.beta_at(500) - 0.7).abs() < 1e-12);
        assert_eq!(config.beta_at(5000), 1.0);
        let constant = LearnerConfig {
            beta_anneal_frames: 0,
            ..config
        };
        assert_eq!(constant.beta_at(5000), 0.4);
    }

    #[test]
    fn the_replay_mix_is_checked_against_the_batch() {
        let mixed = |fraction: f64, batch_size: usize| LearnerConfig {
            replay_fraction: fraction,
            batch_size,
            ..Default::default()
        };
        assert_eq!(mixed(0.25, 8).replayed_per_batch(), 2);
        assert!(mixed(0.25, 8).validate().is_ok());
        assert!(mixed(1.0, 8).validate().is_ok());
        assert!(mixed(0.0, 8).validate().is_ok());
        let error = mixed(0.05, 8).validate().unwrap_err();
        assert!(
            error.contains("learner.replay_fraction = 0.05") && error.contains("no sequence from replay"),
            "{error}"
        );
        let error = mixed(0.95, 8).validate().unwrap_err();
        assert!(error.contains("no fresh sequence"), "{error}");
        assert!(mixed(1.5, 8).validate().unwrap_err().contains("[0, 1]"));
        let same = LearnerConfig {
            replay_table: "queue".into(),
            ..mixed(0.5, 8)
        };
        assert!(same.validate().unwrap_err().contains("learner.replay_table"));
    }

    #[test]
    fn weight_decay_belongs_to_adamw_and_amsgrad_to_adam() {
        let decayed = LearnerConfig {
            weight_decay: 0.01,
            ..Default::default()
        };
        assert!(decayed.validate().unwrap_err().contains("adamw"));
        let adamw = LearnerConfig {
            optimizer: OptimizerKind::Adamw,
            ..decayed
        };
        assert!(adamw.validate().is_ok());
        assert!(matches!(adamw.optimizer(), OptimizerConfig::Adam { weight_decay, .. } if weight_decay == 0.01));
        let amsgrad_rmsprop = LearnerConfig {
            optimizer: OptimizerKind::Rmsprop,
            adam_amsgrad: true,
            ..LearnerConfig::default()
        };
        assert!(amsgrad_rmsprop.validate().unwrap_err().contains("learner.adam_amsgrad"));
    }
}
