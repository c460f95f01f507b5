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
    /// `[L, B]`: where episodes start (a recurrent core resets there).
    pub is_first: Vec<bool>,
    pub behaviour_logits: Vec<f32>,
    pub behaviour_versions: Vec<u64>,
    /// `[B, state_width]`: each sequence's stored recurrent state (empty
    /// when the sequences carry none).
    pub initial_states: Vec<f32>,
    pub state_width: usize,
}

impl HostBatch {
    pub fn from_items(items: &[pb::SampledItem], spec: EnvSpec) -> Result<Self, BatchError> {
        let first = items.first().ok_or(BatchError::Empty)?;
        let steps = first.sequence.as_ref().map(|s| s.rewards.len()).unwrap_or(0);
        let state_width = first
            .sequence
            .as_ref()
            .and_then(|s| s.initial_state.as_ref())
            .map_or(0, |t| t.dims().iter().product());
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
            is_first: vec![false; steps * b],
            behaviour_logits: vec![0.0; steps * b * a],
            behaviour_versions: vec![0; steps * b],
            initial_states: Vec::with_capacity(b * state_width),
            state_width,
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
            if seq.terminated.len() != steps
                || seq.truncated.len() != steps
                || seq.is_first.len() != steps
                || seq.behaviour_versions.len() != steps
            {
                return Err(fail("per-step flags do not match the step count".into()));
            }
            let state = match &seq.initial_state {
                Some(state) => state.to_f32().map_err(|e| fail(format!("initial_state: {e}")))?,
                None => Vec::new(),
            };
            if state.len() != state_width {
                return Err(fail(format!(
                    "stored state of {} values, the batch's first item has {state_width}",
                    state.len()
                )));
            }
            batch.initial_states.extend_from_slice(&state);
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
                batch.is_first[at] = seq.is_first[t];
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
            is_first: (0..n)
                .map(|i| i < batch_size || terminated[i - batch_size] || truncated[i - batch_size])
                .collect(),
            terminated,
            truncated,
            behaviour_logits: (0..n * spec.num_actions).map(|_| rng.random_range(-0.5..0.5)).collect(),
            behaviour_versions: vec![1; n],
            initial_states: Vec::new(),
            state_width: 0,
        }
    }

    /// Environment steps this batch teaches: the real decisions among its
    /// learning steps (those after `burn_in`).
    pub fn learning_frames(&self, burn_in: usize) -> u64 {
        let (from, to) = (burn_in * self.batch_size, (self.steps - 1) * self.batch_size);
        (from..to).filter(|&i| !(self.terminated[i] || self.truncated[i])).count() as u64
    }
}

/// The batch as tensors on the learner's device, split into the burn-in
/// steps and the `L = T + 1` steps after them (learning steps plus the
/// bootstrap step), which everything but the burn-in fields describes.
#[derive(Debug)]
pub struct DeviceBatch {
    /// `[burn_in·B, obs]` and `[burn_in·B]` f32 (1 where an episode starts).
    pub burn_in_observations: Tensor,
    pub burn_in_is_first: Tensor,
    pub burn_in: usize,
    /// `[B, state_width]`, when the sequences carry a stored state.
    pub initial_states: Option<Tensor>,
    /// `[L·B, obs]`
    pub observations: Tensor,
    /// `[L·B]` f32, 1 where an episode starts.
    pub is_first: Tensor,
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
    /// `burn_in` leading steps (fewer than `steps − 1`) go to the burn-in fields.
    pub fn new(batch: &HostBatch, discount: f64, burn_in: usize, device: &Device) -> candle_core::Result<Self> {
        if burn_in + 2 > batch.steps {
            candle_core::bail!(
                "burn-in of {burn_in} steps leaves nothing to learn from in sequences of {} steps",
                batch.steps
            );
        }
        let b = batch.batch_size;
        let skip = burn_in * b;
        let l = batch.steps - burn_in;
        let t = l - 1;
        let learning = t * b;
        let o = batch.spec.observation_size;
        // Indices below are relative to the first step after the burn-in.
        let is_last = |i: usize| batch.terminated[skip + i] || batch.truncated[skip + i];
        let flags = |range: std::ops::Range<usize>| -> Vec<f32> { batch.is_first[range].iter().map(|&f| f32::from(u8::from(f))).collect() };
        let mask: Vec<f32> = (0..learning).map(|i| if is_last(i) { 0.0 } else { 1.0 }).collect();
        let discounts: Vec<f32> = (0..learning)
            .map(|i| {
                if is_last(i) || batch.terminated[skip + i + b] {
                    0.0
                } else {
                    discount as f32
                }
            })
            .collect();
        let a = batch.spec.num_actions;
        let learning_range = skip..skip + learning;
        Ok(Self {
            burn_in_observations: Tensor::from_slice(&batch.observations[..skip * o], (skip, o), device)?,
            burn_in_is_first: Tensor::from_vec(flags(0..skip), skip, device)?,
            burn_in,
            initial_states: (batch.state_width > 0)
                .then(|| Tensor::from_slice(&batch.initial_states, (b, batch.state_width), device))
                .transpose()?,
            observations: Tensor::from_slice(&batch.observations[skip * o..], (l * b, o), device)?,
            is_first: Tensor::from_vec(flags(skip..skip + l * b), l * b, device)?,
            actions: Tensor::from_slice(&batch.actions[learning_range.clone()], (t, b), device)?,
            rewards: Tensor::from_slice(&batch.rewards[learning_range], (t, b), device)?,
            discounts: Tensor::from_vec(discounts, (t, b), device)?,
            mask: Tensor::from_vec(mask, (t, b), device)?,
            behaviour_logits: Tensor::from_slice(&batch.behaviour_logits[skip * a..(skip + learning) * a], (t, b, a), device)?,
            importance_weights: Tensor::from_slice(&batch.importance_weights, b, device)?,
            steps: l,
            batch_size: b,
        })
    }
}
