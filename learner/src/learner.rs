//! The learner's state and its update: network, optimiser, update count and
//! weights version. Plain struct, no I/O, so tests and benchmarks drive it
//! directly with synthetic batches.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use fleet_agent::{ActorCritic, EnvSpec, NetworkConfig, Weights, WeightsError};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::batch::{DeviceBatch, HostBatch};
use crate::checkpoint::{self, CheckpointMeta};
use crate::config::{InitialState, LearnerConfig, TargetsAt};
use crate::loss::{
    KeptFor, LossDiagnostics, LossWeights, StepData, clip_rewards, impala_loss, learning_outputs, loss_terms, sequence_priorities,
    state_staleness, step_targets,
};
use crate::optim::{Optimiser, StepReport};
use crate::targets::KeptTargets;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("batch does not fit the network: {0}")]
    Spec(String),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Checkpoint(#[from] fleet_checkpoint::Error),
    #[error("checkpoint {path} does not fit this learner: {message}")]
    Incompatible { path: PathBuf, message: String },
}

/// What one update measured.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStats {
    pub total_loss: f32,
    pub policy_loss: f32,
    pub baseline_loss: f32,
    pub entropy: f32,
    pub clipped_rho_fraction: f32,
    /// Share of real decisions outside the surrogate's trust region (the
    /// minibatches' mean).
    pub clip_fraction: f32,
    pub mean_abs_advantage: f32,
    pub diagnostics: LossDiagnostics,
    pub learning_rate: f64,
    /// Gradient and step norms (of the last step, with minibatches);
    /// `step.applied()` is false when the gradient was not finite and the
    /// update was skipped.
    pub step: StepReport,
    /// Optimiser steps tried: 1, or `learner.minibatches`.
    pub attempted_steps: u64,
    /// Of those, the steps applied (the others had a gradient that was not finite).
    pub applied_steps: u64,
    /// Per sequence (value, policy) staleness, every [`STALENESS_EVERY`]th
    /// update of a recurrent network with stored states; see
    /// [`crate::loss::state_staleness`].
    pub staleness: Vec<(f32, f32)>,
    /// Per sequence: the replay priority its learning steps' TD errors give
    /// (see [`crate::loss::sequence_priorities`]).
    pub priorities: Vec<f64>,
}

/// Updates between staleness measurements (each costs one extra forward
/// pass over the batch, two when the learner starts from zeros).
pub const STALENESS_EVERY: u64 = 10;

#[derive(Debug)]
pub struct Learner {
    config: LearnerConfig,
    network: ActorCritic,
    optimiser: Optimiser,
    device: Device,
    updates: u64,
    version: u64,
    /// New env frames learnt from by applied updates (a replayed step
    /// counts once): the clock of the learning-rate, entropy and β schedules.
    frames: u64,
    /// With `targets = "first_draw"`: the targets of the sequences drawn lately.
    kept_targets: KeptTargets,
    /// Seeds the order of each batch's minibatches.
    seed: u64,
}

impl Learner {
    pub fn new(spec: EnvSpec, network: &NetworkConfig, config: LearnerConfig, seed: u64, device: Device) -> Result<Self, UpdateError> {
        let network = ActorCritic::new(spec, network, seed, &device)?;
        let optimiser = Optimiser::new(network.vars(), config.optimizer(), config.max_grad_norm)?;
        // Version 1 is the initial network; every applied update adds one.
        Ok(Self {
            config,
            network,
            optimiser,
            device,
            updates: 0,
            version: 1,
            frames: 0,
            kept_targets: KeptTargets::new(),
            seed,
        })
    }

    pub fn network(&self) -> &ActorCritic {
        &self.network
    }

    /// Leading steps of each sequence that only warm the core's state up.
    pub fn burn_in(&self) -> usize {
        self.config.burn_in
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Steps the optimiser has taken (a checkpoint's `optimizer_steps`).
    pub fn optimizer_steps(&self) -> u64 {
        self.optimiser.steps()
    }

    /// The parameters' names, in the order of [`StepReport`]'s per-variable norms.
    pub fn param_names(&self) -> Vec<String> {
        self.network.params().iter().map(|(name, _)| name.clone()).collect()
    }

    /// Writes a checkpoint of the whole learner state into `dir`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf, UpdateError> {
        let meta = CheckpointMeta {
            version: self.version,
            updates: self.updates,
            frames: self.frames,
            optimizer_steps: self.optimiser.steps(),
        };
        let model = self.weights()?.bytes;
        let state = self.optimiser.state(&self.param_names());
        let optimizer = safetensors::tensor::serialize(state.iter().map(|(n, t)| (n.as_str(), t)), None)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(checkpoint::write(dir, self.config.keep_checkpoints, &meta, &model, &optimizer)?)
    }

    /// Restores the newest checkpoint in `dir`; returns its path, or `None`
    /// when there is none. On any error the learner is unchanged.
    pub fn restore_latest(&mut self, dir: &Path) -> Result<Option<PathBuf>, UpdateError> {
        let Some(loaded) = checkpoint::latest(dir, &self.device)? else {
            return Ok(None);
        };
        let incompatible = |message: String| UpdateError::Incompatible {
            path: loaded.path.clone(),
            message,
        };
        // Check the optimiser state against a scratch optimiser first, so a
        // bad checkpoint cannot leave weights and state half-restored.
        let names = self.param_names();
        let mut optimiser = Optimiser::new(self.network.vars(), self.config.optimizer(), self.config.max_grad_norm)?;
        optimiser
            .restore(&names, loaded.optimizer.clone(), loaded.meta.optimizer_steps)
            .map_err(&incompatible)?;
        Weights {
            version: loaded.meta.version,
            bytes: loaded.model.clone().into(),
        }
        .load_into(&self.network)
        .map_err(|e| incompatible(e.to_string()))?;
        self.optimiser = optimiser;
        self.version = loaded.meta.version;
        self.updates = loaded.meta.updates;
        self.frames = loaded.meta.frames;
        Ok(Some(loaded.path))
    }

    pub fn weights(&self) -> Result<Weights, WeightsError> {
        Weights::from_network(&self.network, self.version)
    }

    pub fn update(&mut self, batch: &HostBatch) -> Result<UpdateStats, UpdateError> {
        if batch.spec != self.network.spec() {
            return Err(UpdateError::Spec(format!(
                "batch has {:?}, network has {:?}",
                batch.spec,
                self.network.spec()
            )));
        }
        let mut device_batch = DeviceBatch::new(batch, self.config.discount, self.config.burn_in, &self.device)?;
        let scaled = device_batch.rewards.affine(self.config.reward_scale, 0.0)?;
        device_batch.rewards = clip_rewards(&scaled, self.config.reward_clip)?;
        let weights = LossWeights {
            baseline_cost: self.config.baseline_cost,
            entropy_cost: self.config.entropy_cost_at(self.frames),
            ratio_clip: self.config.ratio_clip,
            normalize_advantages: self.config.normalize_advantages,
            off_policy_correction: self.config.off_policy_correction,
        };
        if self.config.minibatches > 1 {
            return self.update_in_minibatches(batch, &device_batch, weights);
        }
        let kept = kept_for(self.config.targets, &mut self.kept_targets, batch);
        let stored = self.config.initial_state == InitialState::Stored;
        let loss = impala_loss(&self.network, &device_batch, &self.config.vtrace(), weights, stored, kept)?;
        let learning_rate = self.config.learning_rate_at(self.frames);
        let staleness = if self.updates.is_multiple_of(STALENESS_EVERY) {
            // The loss's outputs are the stored-state ones unless it learns from zeros.
            let recomputed;
            let from_stored = if stored {
                &loss.outputs
            } else {
                recomputed = learning_outputs(&self.network, &device_batch, loss.core_inputs.as_ref(), true)?;
                &recomputed
            };
            state_staleness(&self.network, &device_batch, from_stored, loss.core_inputs.as_ref())?
        } else {
            Vec::new()
        };
        let priorities = sequence_priorities(&loss.td_errors, &device_batch.mask, self.config.priority_eta)?;
        let step = self.optimiser.step(&loss.total, learning_rate)?;
        if step.applied() {
            self.updates += 1;
            self.version += 1;
            self.frames += batch.env_frames(self.config.burn_in);
        }
        Ok(UpdateStats {
            total_loss: loss.total.to_scalar()?,
            policy_loss: loss.policy,
            baseline_loss: loss.baseline,
            entropy: loss.entropy,
            clipped_rho_fraction: loss.clipped_rho_fraction,
            clip_fraction: loss.clip_fraction,
            mean_abs_advantage: loss.mean_abs_advantage,
            diagnostics: loss.diagnostics,
            learning_rate,
            attempted_steps: 1,
            applied_steps: u64::from(step.applied()),
            step,
            staleness,
            priorities,
        })
    }

    /// PPO's minibatches: the targets of the whole batch first, from the
    /// network as it is, then one optimiser step on each of
    /// `learner.minibatches` disjoint random subsets of its learning steps,
    /// so that no step's gradient comes only from a few neighbouring steps
    /// of the same episodes. Each step counts as an update and a version;
    /// the losses reported are the steps' means, the gradient norms the
    /// last step's. Feed-forward networks only (a step's output then
    /// depends on its observation alone).
    fn update_in_minibatches(
        &mut self,
        batch: &HostBatch,
        device_batch: &DeviceBatch,
        weights: LossWeights,
    ) -> Result<UpdateStats, UpdateError> {
        let (l, b) = (device_batch.steps, device_batch.batch_size);
        let learning_steps = (l - 1) * b;
        let out = self.network.forward(&device_batch.observations)?;
        let width = out.logits.dim(1)?;
        let kept = kept_for(self.config.targets, &mut self.kept_targets, batch);
        let distribution = self.network.distribution();
        let targets = step_targets(
            distribution,
            device_batch,
            &out.logits.detach().reshape((l, b, width))?,
            &out.values.detach().reshape((l, b))?,
            &self.config.vtrace(),
            weights,
            kept,
        )?;
        let data = StepData::of_batch(device_batch, &targets.returns)?;
        let learning_rate = self.config.learning_rate_at(self.frames);
        // Drawn from the seed and the update count, so that a run resumed
        // from a checkpoint splits its batches as the uninterrupted run does.
        let mut rng = StdRng::seed_from_u64(self.seed ^ self.updates.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut order: Vec<u32> = (0..learning_steps as u32).collect();
        order.shuffle(&mut rng);
        let (mut total, mut policy, mut baseline, mut entropy, mut clip_fraction) = (0f32, 0f32, 0f32, 0f32, 0f32);
        let (mut applied, mut attempted) = (0u64, 0u64);
        let mut step = None;
        let minibatches = self.config.minibatches.min(learning_steps);
        for rows in order.chunks(learning_steps.div_ceil(minibatches)) {
            let rows = Tensor::from_slice(rows, rows.len(), &self.device)?;
            let part = data.rows(&rows)?;
            let out = self.network.forward(&device_batch.observations.index_select(&rows, 0)?)?;
            let terms = loss_terms(distribution, &out.logits, &out.values, &part, weights)?;
            let report = self.optimiser.step(&terms.total, learning_rate)?;
            if report.applied() {
                applied += 1;
            }
            total += terms.total.to_scalar::<f32>()?;
            policy += terms.policy;
            baseline += terms.baseline;
            entropy += terms.entropy;
            clip_fraction += terms.clip_fraction;
            attempted += 1;
            step = Some(report);
        }
        let steps = attempted as f32;
        if applied > 0 {
            self.updates += applied;
            self.version += applied;
            self.frames += batch.env_frames(self.config.burn_in);
        }
        Ok(UpdateStats {
            total_loss: total / steps,
            policy_loss: policy / steps,
            baseline_loss: baseline / steps,
            entropy: entropy / steps,
            clipped_rho_fraction: targets.clipped_rho_fraction,
            clip_fraction: clip_fraction / steps,
            mean_abs_advantage: targets.mean_abs_advantage,
            diagnostics: targets.diagnostics,
            learning_rate,
            attempted_steps: attempted,
            applied_steps: applied,
            step: step.ok_or_else(|| UpdateError::Spec("a batch without learning steps".into()))?,
            staleness: Vec::new(),
            priorities: sequence_priorities(&targets.td_errors, &device_batch.mask, self.config.priority_eta)?,
        })
    }
}

/// Where the loss keeps the targets of each sequence's first draw, with
/// `targets = "first_draw"`.
fn kept_for<'a>(at: TargetsAt, targets: &'a mut KeptTargets, batch: &'a HostBatch) -> Option<KeptFor<'a>> {
    (at == TargetsAt::FirstDraw).then(|| KeptFor {
        targets,
        keys: &batch.keys,
        first_draws: &batch.first_draws,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;
    use fleet_trajectory::Observations;

    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    const SPEC: EnvSpec = EnvSpec::vector(4, 2);

    fn params(learner: &Learner) -> Vec<f32> {
        learner
            .network()
            .params()
            .iter()
            .flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    fn learner(seed: u64, config: &LearnerConfig) -> Learner {
        Learner::new(SPEC, &NetworkConfig::default(), config.clone(), seed, Device::Cpu).unwrap()
    }

    #[test]
    fn targets_kept_from_the_first_draw_serve_the_later_draws() {
        let first_draw = LearnerConfig {
            targets: TargetsAt::FirstDraw,
            ..Default::default()
        };
        let (mut kept, mut each) = (learner(3, &first_draw), learner(3, &LearnerConfig::default()));
        let fresh = HostBatch::synthetic(SPEC, 21, 8, 0);
        let again = HostBatch {
            first_draws: vec![false; 8],
            ..fresh.clone()
        };
        let (kept_first, each_first) = (kept.update(&fresh).unwrap(), each.update(&fresh).unwrap());
        assert_eq!(kept_first.diagnostics.target_mean, each_first.diagnostics.target_mean);
        // The value function has moved: recomputed targets move with it,
        // kept ones stay those of the first draw.
        let (kept_again, each_again) = (kept.update(&again).unwrap(), each.update(&again).unwrap());
        assert_eq!(kept_again.diagnostics.target_mean, kept_first.diagnostics.target_mean);
        assert_ne!(each_again.diagnostics.target_mean, each_first.diagnostics.target_mean);
        assert_ne!(kept_again.diagnostics.value_mean, kept_first.diagnostics.value_mean);
    }

    /// A synthetic batch of 8 sequences of 20 learning steps, all real decisions.
    fn batch_without_episode_ends(seed: u64) -> HostBatch {
        let mut batch = HostBatch::synthetic(SPEC, 21, 8, seed);
        batch.terminated = vec![false; 21 * 8];
        batch.truncated = vec![false; 21 * 8];
        batch
    }

    #[test]
    fn minibatches_each_take_a_step_and_the_batch_counts_its_frames_once() {
        let split = LearnerConfig {
            minibatches: 4,
            ..Default::default()
        };
        let (mut split, mut whole) = (learner(3, &split), learner(3, &LearnerConfig::default()));
        let batch = batch_without_episode_ends(0);
        let before = params(&split);
        split.update(&batch).unwrap();
        whole.update(&batch).unwrap();
        assert_eq!((split.updates(), split.version(), split.optimizer_steps()), (4, 5, 4));
        assert_eq!(split.frames(), whole.frames());
        assert_ne!(params(&split), before);
    }

    #[test]
    fn minibatch_losses_average_to_the_whole_batch_loss() {
        // With steps too small to move the network, the minibatches (equal
        // shares of real decisions) see the targets of the whole batch at
        // the steps they pick: their losses average to the whole batch's.
        let config = LearnerConfig {
            learning_rate: 1e-12,
            ..Default::default()
        };
        let split = LearnerConfig {
            minibatches: 4,
            ..config.clone()
        };
        let (mut split, mut whole) = (learner(3, &split), learner(3, &config));
        let batch = batch_without_episode_ends(1);
        let (split, whole) = (split.update(&batch).unwrap(), whole.update(&batch).unwrap());
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1e-3);
        for (name, a, b) in [
            ("policy", split.policy_loss, whole.policy_loss),
            ("baseline", split.baseline_loss, whole.baseline_loss),
            ("entropy", split.entropy, whole.entropy),
        ] {
            assert!(close(a, b), "{name}: minibatches average {a}, the whole batch gives {b}");
        }
        assert_eq!(split.priorities, whole.priorities);
        assert_eq!(split.diagnostics, whole.diagnostics);
    }

    #[test]
    fn resuming_from_a_checkpoint_continues_the_uninterrupted_run() {
        for optimizer in [crate::config::OptimizerKind::Adam, crate::config::OptimizerKind::Rmsprop] {
            let config = LearnerConfig {
                optimizer,
                lr_schedule: crate::config::Schedule::Linear,
                lr_decay_frames: 5_000,
                ..Default::default()
            };
            let batches: Vec<HostBatch> = (0..6).map(|i| HostBatch::synthetic(SPEC, 21, 8, i)).collect();
            let dir = tempfile::tempdir().unwrap();

            let mut original = learner(1, &config);
            for batch in &batches[..5] {
                assert!(original.update(batch).unwrap().step.applied());
            }
            let saved = (original.version(), original.updates(), original.frames());
            assert_eq!((saved.0, saved.1), (6, 5));
            original.save_checkpoint(dir.path()).unwrap();
            let uninterrupted = original.update(&batches[5]).unwrap();

            // A learner built from another seed must end up identical once restored.
            let mut resumed = learner(99, &config);
            assert_ne!(params(&resumed), params(&original));
            let restored = resumed.restore_latest(dir.path()).unwrap();
            assert!(restored.is_some());
            assert_eq!(
                (resumed.version(), resumed.updates(), resumed.frames()),
                saved,
                "the checkpointed version, update step and frames, exactly"
            );
            let after_resume = resumed.update(&batches[5]).unwrap();
            assert!(
                (after_resume.total_loss - uninterrupted.total_loss).abs() <= 1e-6 * uninterrupted.total_loss.abs().max(1.0),
                "{optimizer:?}: {after_resume:?} vs {uninterrupted:?}"
            );
            assert_eq!(after_resume.learning_rate, uninterrupted.learning_rate);
            let (a, b) = (params(&resumed), params(&original));
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-6, "{optimizer:?}: parameters differ by {worst}");
            assert_eq!(resumed.version(), 7, "versions keep increasing across restarts");
        }
    }

    #[test]
    fn an_incompatible_checkpoint_leaves_the_learner_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let wide = Learner::new(
            SPEC,
            &NetworkConfig {
                hidden: vec![8],
                ..Default::default()
            },
            LearnerConfig::default(),
            0,
            Device::Cpu,
        )
        .unwrap();
        wide.save_checkpoint(dir.path()).unwrap();
        let mut other = learner(3, &LearnerConfig::default());
        let before = params(&other);
        let err = other.restore_latest(dir.path()).unwrap_err().to_string();
        assert!(err.contains(checkpoint::KIND), "{err}");
        assert_eq!(params(&other), before);
        assert_eq!(other.version(), 1);
    }

    #[test]
    fn training_on_a_fixed_batch_lowers_its_loss() {
        let batch = HostBatch::synthetic(SPEC, 21, 8, 7);
        let mut learner = learner(
            0,
            &LearnerConfig {
                entropy_cost: 0.0,
                // The V-trace targets move with the policy; 200 updates on
                // one batch keep them still enough to fit only at a small
                // rate and with the plain policy gradient (the clipped
                // surrogate leaves the policy jittering at its trust region's
                // edge, and the targets with it).
                learning_rate: 5e-4,
                ratio_clip: 0.0,
                // Targets of the synthetic batch's unit rewards, as the
                // rate and the 200 updates were chosen for.
                reward_scale: 1.0,
                ..Default::default()
            },
        );
        let first = learner.update(&batch).unwrap().baseline_loss;
        for _ in 0..200 {
            learner.update(&batch).unwrap();
        }
        let last = learner.update(&batch).unwrap().baseline_loss;
        assert!(last < 0.5 * first, "baseline loss went from {first} to {last}");
    }

    /// The clipped-ratio surrogate is a trust region around the behaviour
    /// policy: on a bandit whose better arm already has π/μ above 1 + ε the
    /// policy gets no gradient at all, while inside the region the same
    /// batch raises the better arm, as the plain policy gradient does.
    #[test]
    fn the_ratio_clip_stops_the_policy_at_the_edge_of_its_trust_region() {
        let spec = EnvSpec::vector(1, 2);
        let config = LearnerConfig {
            learning_rate: 0.01,
            entropy_cost: 0.0,
            ratio_clip: 0.2,
            ..Default::default()
        };
        let observation = Tensor::new(&[[1f32]], &Device::Cpu).unwrap();
        let policy = |learner: &Learner| -> Vec<f32> {
            let logits = learner.network().forward(&observation).unwrap().logits;
            values(&candle_nn::ops::softmax_last_dim(&logits).unwrap())
        };
        // Every pull is of the better arm, which pays 1; the behaviour
        // policy's logits are the current ones shifted by `shift` on arm 0.
        let run = |shift: f32| -> (Vec<f32>, Vec<f32>) {
            let mut learner = Learner::new(spec, &NetworkConfig::default(), config.clone(), 3, Device::Cpu).unwrap();
            let mut logits = values(&learner.network().forward(&observation).unwrap().logits);
            logits[0] += shift;
            let pulls = 16;
            let mut batch = HostBatch::synthetic(spec, 2, pulls, 0);
            batch.observations = Observations::F32(vec![1.0; 2 * pulls]);
            batch.behaviour_logits = logits.iter().copied().cycle().take(2 * pulls * 2).collect();
            for j in 0..pulls {
                (batch.actions[j], batch.rewards[j]) = (1.0, 1.0);
                (batch.is_first[j], batch.terminated[j], batch.truncated[j]) = (true, false, false);
                (batch.actions[pulls + j], batch.rewards[pulls + j]) = (0.0, 0.0);
                (batch.is_first[pulls + j], batch.terminated[pulls + j], batch.truncated[pulls + j]) = (false, true, false);
            }
            let before = policy(&learner);
            learner.update(&batch).unwrap();
            (before, policy(&learner))
        };
        // μ(arm 1) well below π(arm 1): ρ > 1.2, outside the region.
        let (before, after) = run(2.0);
        assert_eq!(before, after, "the policy moved outside its trust region");
        // μ = π: ρ = 1, inside; the better arm gains.
        let (before, after) = run(0.0);
        assert!(after[1] > before[1] + 1e-3, "P(better arm) went from {} to {}", before[1], after[1]);
    }

    /// One update on a two-armed bandit must raise the better arm's
    /// probability. Both arms are pulled equally often, on-policy, from one
    /// observation; arm 1 pays 1 and arm 0 pays 0, and the episode ends
    /// after the pull. A flipped policy-gradient sign lowers it instead, and
    /// this catches that in milliseconds rather than in a learning run.
    #[test]
    fn one_update_on_a_bandit_raises_the_better_arms_probability() {
        // Minibatches of 4 pulls get Adam's full step each, whichever arms
        // they hold: standardised advantages keep a minibatch of one arm
        // from pushing it by how far the initial value happens to be off.
        for (ratio_clip, minibatches, normalize_advantages) in [(0.0, 1, false), (0.2, 1, false), (0.2, 4, true)] {
            bandit_update_raises_the_better_arm(ratio_clip, minibatches, normalize_advantages);
        }
    }

    fn bandit_update_raises_the_better_arm(ratio_clip: f64, minibatches: usize, normalize_advantages: bool) {
        let spec = EnvSpec::vector(1, 2);
        let config = LearnerConfig {
            learning_rate: 0.01,
            entropy_cost: 0.0,
            ratio_clip,
            minibatches,
            normalize_advantages,
            ..Default::default()
        };
        let mut learner = Learner::new(spec, &NetworkConfig::default(), config, 3, Device::Cpu).unwrap();
        let observation = Tensor::new(&[[1f32]], &Device::Cpu).unwrap();
        let policy = |learner: &Learner| -> Vec<f32> {
            let logits = learner.network().forward(&observation).unwrap().logits;
            values(&candle_nn::ops::softmax_last_dim(&logits).unwrap())
        };
        let before = policy(&learner);
        let logits = values(&learner.network().forward(&observation).unwrap().logits);

        let pulls = 16;
        let mut batch = HostBatch::synthetic(spec, 2, pulls, 0);
        batch.observations = Observations::F32(vec![1.0; 2 * pulls]);
        batch.behaviour_logits = logits.iter().copied().cycle().take(2 * pulls * 2).collect();
        for j in 0..pulls {
            // Step 0 pulls an arm; step 1 is the episode's terminal observation.
            let arm = (j % 2) as u32;
            (batch.actions[j], batch.rewards[j]) = (arm as f32, arm as f32);
            (batch.is_first[j], batch.terminated[j], batch.truncated[j]) = (true, false, false);
            let last = pulls + j;
            (batch.actions[last], batch.rewards[last]) = (0.0, 0.0);
            (batch.is_first[last], batch.terminated[last], batch.truncated[last]) = (false, true, false);
        }
        learner.update(&batch).unwrap();
        let after = policy(&learner);
        assert!(
            after[1] > before[1] + 1e-3,
            "ratio clip {ratio_clip}, {minibatches} minibatches: P(better arm) went from {} to {} in one update",
            before[1],
            after[1]
        );
    }
}
