//! Turning sampled sequences into one time-major batch: host arrays shaped
//! `[L, B, …]` (L steps per sequence), checked for agreement with each other
//! and with the network. Built off the training thread; [`DeviceBatch`] then
//! moves it onto the learner's device in one go.

use candle_core::{Device, Tensor};
use fleet_agent::EnvSpec;
use fleet_proto::pb;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("sampled batch is empty")]
    Empty,
    #[error("item {index} (key {key}): {message}")]
    Item { index: usize, key: u64, message: String },
}

/// A batch on the host, time-major.
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// Steps per sequence (unroll + 1).
    pub steps: usize,
    pub batch_size: usize,
    pub spec: EnvSpec,
    pub keys: Vec<u64>,
    /// Sampler importance weights, one per sequence.
    pub importance_weights: Vec<f32>,
    pub observations: Vec<f32>,
    pub actions: Vec<u32>,
    pub rewards: Vec<f32>,
    pub terminated: Vec<bool>,
    pub truncated: Vec<bool>,
    pub behaviour_logits: Vec<f32>,
    pub behaviour_versions: Vec<u64>,
}

impl HostBatch {
    pub fn from_items(items: &[pb::SampledItem], spec: EnvSpec) -> Result<Self, BatchError> {
        let first = items.first().ok_or(BatchError::Empty)?;
        let steps = first.sequence.as_ref().map(|s| s.rewards.len()).unwrap_or(0);
        let b = items.len();
        let (o, a) = (spec.observation_size, spec.num_actions);
        let mut batch = HostBatch {
            steps,
            batch_size: b,
            spec,
            keys: Vec::with_capacity(b),
            importance_weights: Vec::with_capacity(b),
            observations: vec![0.0; steps * b * o],
            actions: vec![0; steps * b],
            rewards: vec![0.0; steps * b],
            terminated: vec![false; steps * b],
            truncated: vec![false; steps * b],
            behaviour_logits: vec![0.0; steps * b * a],
            behaviour_versions: vec![0; steps * b],
        };
        for (j, item) in items.iter().enumerate() {
            let fail = |message: String| BatchError::Item {
                index: j,
                key: item.key,
                message,
            };
            let seq = item.sequence.as_ref().ok_or_else(|| fail("no sequence".into()))?;
            if seq.rewards.len() != steps {
                return Err(fail(format!("{} steps, the batch has {steps}", seq.rewards.len())));
            }
            let obs = seq
                .observations
                .as_ref()
                .ok_or_else(|| fail("no observations".into()))?
                .to_f32()
                .map_err(|e| fail(e.to_string()))?;
            if obs.len() != steps * o {
                return Err(fail(format!("observations hold {} values, expected {steps}×{o}", obs.len())));
            }
            let actions = seq
                .actions
                .as_ref()
                .ok_or_else(|| fail("no actions".into()))?
                .to_i64()
                .map_err(|e| fail(e.to_string()))?;
            let logits = seq
                .behaviour_logits
                .as_ref()
                .ok_or_else(|| fail("no behaviour logits".into()))?
                .to_f32()
                .map_err(|e| fail(e.to_string()))?;
            if logits.len() != steps * a || actions.len() != steps {
                return Err(fail(format!("actions/logits do not match {steps} steps of {a} actions")));
            }
            if seq.terminated.len() != steps || seq.truncated.len() != steps || seq.behaviour_versions.len() != steps {
                return Err(fail("per-step flags do not match the step count".into()));
            }
            batch.keys.push(item.key);
            batch
                .importance_weights
                .push(if item.weight > 0.0 { item.weight as f32 } else { 1.0 });
            for t in 0..steps {
                let at = t * b + j;
                batch.observations[at * o..(at + 1) * o].copy_from_slice(&obs[t * o..(t + 1) * o]);
                batch.behaviour_logits[at * a..(at + 1) * a].copy_from_slice(&logits[t * a..(t + 1) * a]);
                let action = actions[t];
                if action < 0 || action as usize >= a {
                    return Err(fail(format!("action {action} at step {t} is outside 0..{a}")));
                }
                batch.actions[at] = action as u32;
                batch.rewards[at] = seq.rewards[t];
                batch.terminated[at] = seq.terminated[t];
                batch.truncated[at] = seq.truncated[t];
                batch.behaviour_versions[at] = seq.behaviour_versions[t];
            }
        }
        if steps < 2 {
            return Err(BatchError::Item {
                index: 0,
                key: first.key,
                message: format!("{steps} steps; at least 2 needed"),
            });
        }
        Ok(batch)
    }

    /// A random but well-formed batch (for tests and benchmarks): random
    /// observations, actions and behaviour logits, reward 1 per step, and a
    /// few episode ends, some by termination and some by truncation.
    pub fn synthetic(spec: EnvSpec, steps: usize, batch_size: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = steps * batch_size;
        let terminated: Vec<bool> = (0..n).map(|_| rng.random_bool(0.03)).collect();
        let truncated: Vec<bool> = terminated.iter().map(|&t| !t && rng.random_bool(0.01)).collect();
        HostBatch {
            steps,
            batch_size,
            spec,
            keys: (0..batch_size as u64).collect(),
            importance_weights: vec![1.0; batch_size],
            observations: (0..n * spec.observation_size).map(|_| rng.random_range(-1.0..1.0)).collect(),
            actions: (0..n).map(|_| rng.random_range(0..spec.num_actions as u32)).collect(),
            rewards: (0..n).map(|i| if terminated[i] || truncated[i] { 0.0 } else { 1.0 }).collect(),
            terminated,
            truncated,
            behaviour_logits: (0..n * spec.num_actions).map(|_| rng.random_range(-0.5..0.5)).collect(),
            behaviour_versions: vec![1; n],
        }
    }

    /// Environment steps this batch teaches (its learning steps that are real decisions).
    pub fn learning_frames(&self) -> u64 {
        let learning = (self.steps - 1) * self.batch_size;
        (0..learning).filter(|&i| !(self.terminated[i] || self.truncated[i])).count() as u64
    }
}

/// The batch as tensors on the learner's device. `L = T + 1`.
#[derive(Debug)]
pub struct DeviceBatch {
    /// `[L·B, obs]`
    pub observations: Tensor,
    /// `[T, B]` u32
    pub actions: Tensor,
    /// `[T, B]`
    pub rewards: Tensor,
    /// `[T, B]`: γ·(1 − terminated_{t+1}) where step t is a real decision, else 0.
    pub discounts: Tensor,
    /// `[T, B]`: 1 where x_t is not the last observation of an episode.
    pub mask: Tensor,
    /// `[T, B, A]`
    pub behaviour_logits: Tensor,
    /// `[B]`
    pub importance_weights: Tensor,
    pub steps: usize,
    pub batch_size: usize,
}

impl DeviceBatch {
    pub fn new(batch: &HostBatch, discount: f64, device: &Device) -> candle_core::Result<Self> {
        let (l, b) = (batch.steps, batch.batch_size);
        let t = l - 1;
        let learning = t * b;
        let is_last = |i: usize| batch.terminated[i] || batch.truncated[i];
        let mask: Vec<f32> = (0..learning).map(|i| if is_last(i) { 0.0 } else { 1.0 }).collect();
        let discounts: Vec<f32> = (0..learning)
            .map(|i| {
                if is_last(i) || batch.terminated[i + b] {
                    0.0
                } else {
                    discount as f32
                }
            })
            .collect();
        let a = batch.spec.num_actions;
        Ok(Self {
            observations: Tensor::from_slice(&batch.observations, (l * b, batch.spec.observation_size), device)?,
            actions: Tensor::from_slice(&batch.actions[..learning], (t, b), device)?,
            rewards: Tensor::from_slice(&batch.rewards[..learning], (t, b), device)?,
            discounts: Tensor::from_vec(discounts, (t, b), device)?,
            mask: Tensor::from_vec(mask, (t, b), device)?,
            behaviour_logits: Tensor::from_slice(&batch.behaviour_logits[..learning * a], (t, b, a), device)?,
            importance_weights: Tensor::from_slice(&batch.importance_weights, b, device)?,
            steps: l,
            batch_size: b,
        })
    }
}
