//! Turning sampled sequences into one time-major batch: host arrays shaped
//! `[L, B, …]` (L steps per sequence). Built off the training thread;
//! [`DeviceBatch`] then moves it onto the learner's device in one go. Image
//! observations stay u8 on the device too (a quarter of the bytes): the
//! network's first convolution turns them into f32 image by image.
//!
//! The replay service validated every item when it arrived and every item
//! of a table shares its signature, so the only checks here are that the
//! table's signature is the one the network expects (an actor running
//! another environment or network would break it) and that the items agree
//! on their length; the rest are debug assertions.

use candle_core::{Device, Tensor};
use fleet_agent::{EnvSpec, observations_tensor};
use fleet_proto::pb;
use fleet_trajectory::{ActionSpec, Observations, Signature, StateSpec, is_decision};

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
    /// The actor that wrote each sequence.
    pub actor_ids: Vec<u64>,
    /// Sampler importance weights, one per sequence.
    pub importance_weights: Vec<f32>,
    /// Whether each sequence is drawn for the first time from the table
    /// fresh experience comes from: only these count as new env frames, so
    /// that schedules keep to env frames however often items are replayed.
    pub first_draws: Vec<bool>,
    /// `[L, B, observation_size]`, u8 when the spec has frames.
    pub observations: Observations,
    /// `[L, B, spec.action.width()]`: indices (as exact small floats) or
    /// continuous values.
    pub actions: Vec<f32>,
    pub rewards: Vec<f32>,
    pub terminated: Vec<bool>,
    pub truncated: Vec<bool>,
    /// `[L, B]`: where episodes start (a recurrent core resets there).
    pub is_first: Vec<bool>,
    pub behaviour_logits: Vec<f32>,
    pub behaviour_versions: Vec<u64>,
    /// The stored state's layout, `None` when the sequences carry none.
    pub state: Option<StateSpec>,
    /// `[B, state.width()]`: each sequence's stored recurrent state (empty
    /// when the sequences carry none).
    pub initial_states: Vec<f32>,
}

impl HostBatch {
    /// Stacks `items`, which must all have signature `expected`.
    pub fn from_items(items: &[pb::SampledItem], expected: Signature) -> Result<Self, BatchError> {
        let first = items.first().ok_or(BatchError::Empty)?;
        let steps = first.sequence.as_ref().map_or(0, pb::Sequence::num_steps);
        let spec = expected.env;
        let (a, action_width) = (spec.policy_width(), spec.action.width());
        let b = items.len();
        let o = spec.observation_size();
        let width = expected.state.map_or(0, |s| s.width());
        let mut batch = HostBatch {
            steps,
            batch_size: b,
            spec,
            keys: Vec::with_capacity(b),
            actor_ids: Vec::with_capacity(b),
            importance_weights: Vec::with_capacity(b),
            first_draws: Vec::with_capacity(b),
            observations: Observations::zeros(&spec.observation, steps * b * o),
            actions: vec![0.0; steps * b * action_width],
            rewards: vec![0.0; steps * b],
            terminated: vec![false; steps * b],
            truncated: vec![false; steps * b],
            is_first: vec![false; steps * b],
            behaviour_logits: vec![0.0; steps * b * a],
            behaviour_versions: vec![0; steps * b],
            state: expected.state,
            initial_states: Vec::with_capacity(b * width),
        };
        for (j, item) in items.iter().enumerate() {
            let fail = |message: String| BatchError::Item {
                index: j,
                key: item.key,
                message,
            };
            let seq = item.sequence.as_ref().ok_or_else(|| fail("no sequence".into()))?;
            let (found_steps, found) = fleet_proto::signature(seq).map_err(|e| fail(e.to_string()))?;
            if found != expected {
                return Err(fail(format!("the table holds {found}; the learner's network expects {expected}")));
            }
            if found_steps != steps {
                return Err(fail(format!("{found_steps} steps, the batch's first item has {steps}")));
            }
            let missing = || fail("a tensor is missing".into());
            let observations = seq.observations.as_ref().ok_or_else(missing)?;
            match &mut batch.observations {
                Observations::F32(dst) => {
                    scatter_steps(dst, &observations.to_f32().map_err(|e| fail(e.to_string()))?, steps, b, j, o);
                }
                Observations::U8(dst) => scatter_steps(dst, observations.as_u8().map_err(|e| fail(e.to_string()))?, steps, b, j, o),
            }
            let actions = seq.actions.as_ref().ok_or_else(missing)?;
            let actions = match spec.action {
                ActionSpec::Discrete { .. } => actions.to_i64().map(|indices| indices.iter().map(|&a| a as f32).collect()),
                ActionSpec::Continuous { .. } => actions.to_f32(),
            }
            .map_err(|e| fail(e.to_string()))?;
            scatter_steps(&mut batch.actions, &actions, steps, b, j, action_width);
            let logits = seq
                .behaviour_logits
                .as_ref()
                .ok_or_else(missing)?
                .to_f32()
                .map_err(|e| fail(e.to_string()))?;
            scatter_steps(&mut batch.behaviour_logits, &logits, steps, b, j, a);
            if let Some(state) = &seq.initial_state {
                batch
                    .initial_states
                    .extend_from_slice(&state.to_f32().map_err(|e| fail(format!("initial_state: {e}")))?);
            }
            batch.keys.push(item.key);
            batch.actor_ids.push(seq.actor_id);
            batch
                .importance_weights
                .push(if item.weight > 0.0 { item.weight as f32 } else { 1.0 });
            // The server counts this draw; 0 is a server that does not say.
            batch.first_draws.push(item.times_sampled <= 1);
            for t in 0..steps {
                let at = t * b + j;
                batch.rewards[at] = seq.rewards[t];
                batch.terminated[at] = seq.terminated[t];
                batch.truncated[at] = seq.truncated[t];
                batch.is_first[at] = seq.is_first[t];
                batch.behaviour_versions[at] = seq.behaviour_versions[t];
            }
        }
        debug_assert_eq!(batch.initial_states.len(), b * width);
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
    /// observations (u8 intensities for a spec with frames), actions and
    /// behaviour logits, reward 1 per step, and a few episode ends, some by
    /// termination and some by truncation.
    pub fn synthetic(spec: EnvSpec, steps: usize, batch_size: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = steps * batch_size;
        let terminated: Vec<bool> = (0..n).map(|_| rng.random_bool(0.03)).collect();
        let truncated: Vec<bool> = terminated.iter().map(|&t| !t && rng.random_bool(0.01)).collect();
        let mut observations = Observations::zeros(&spec.observation, n * spec.observation_size());
        match &mut observations {
            Observations::U8(pixels) => rng.fill(pixels.as_mut_slice()),
            Observations::F32(values) => values.iter_mut().for_each(|v| *v = rng.random_range(-1.0..1.0)),
        }
        let num_actions = spec.policy_width();
        let actions = match spec.action {
            ActionSpec::Discrete { num_actions } => (0..n).map(|_| rng.random_range(0..num_actions) as f32).collect(),
            ActionSpec::Continuous { dims } => (0..n * dims).map(|_| rng.random_range(-1.5..1.5)).collect(),
        };
        HostBatch {
            steps,
            batch_size,
            spec,
            keys: (0..batch_size as u64).collect(),
            actor_ids: vec![0; batch_size],
            importance_weights: vec![1.0; batch_size],
            first_draws: vec![true; batch_size],
            observations,
            actions,
            rewards: (0..n).map(|i| if terminated[i] || truncated[i] { 0.0 } else { 1.0 }).collect(),
            is_first: (0..n)
                .map(|i| i < batch_size || terminated[i - batch_size] || truncated[i - batch_size])
                .collect(),
            terminated,
            truncated,
            behaviour_logits: (0..n * num_actions).map(|_| rng.random_range(-0.5..0.5)).collect(),
            behaviour_versions: vec![1; n],
            state: None,
            initial_states: Vec::new(),
        }
    }

    /// Environment steps this batch teaches: the real decisions among its
    /// learning steps (those after `burn_in`).
    pub fn learning_frames(&self, burn_in: usize) -> u64 {
        let (from, to) = (burn_in * self.batch_size, (self.steps - 1) * self.batch_size);
        (from..to).filter(|&i| is_decision(self.terminated[i], self.truncated[i])).count() as u64
    }

    /// New env steps this batch teaches: [`learning_frames`](Self::learning_frames)
    /// of the sequences drawn for the first time.
    pub fn env_frames(&self, burn_in: usize) -> u64 {
        let b = self.batch_size;
        (burn_in * b..(self.steps - 1) * b)
            .filter(|&i| self.first_draws[i % b] && is_decision(self.terminated[i], self.truncated[i]))
            .count() as u64
    }

    /// Each sequence's age at learner version `version`: how many versions
    /// older than it is the oldest policy that made one of its learning
    /// decisions (0 for a sequence without one).
    pub fn sequence_ages(&self, version: u64, burn_in: usize) -> Vec<u64> {
        let b = self.batch_size;
        (0..b)
            .map(|j| {
                (burn_in..self.steps - 1)
                    .map(|t| t * b + j)
                    .filter(|&i| is_decision(self.terminated[i], self.truncated[i]))
                    .map(|i| version.saturating_sub(self.behaviour_versions[i]))
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The batch of sequences `columns` (in that order), e.g. without those
    /// too stale to learn from.
    pub fn select(&self, columns: &[usize]) -> HostBatch {
        let (b, n) = (self.batch_size, columns.len());
        let o = self.spec.observation_size();
        let (a, w) = (self.spec.policy_width(), self.spec.action.width());
        let width = self.state.map_or(0, |s| s.width());
        let rows = |t: usize| columns.iter().map(move |&j| t * b + j);
        let gather = |values: &[bool]| -> Vec<bool> { (0..self.steps).flat_map(rows).map(|i| values[i]).collect() };
        let mut observations = Observations::with_capacity(&self.spec.observation, self.steps * n * o);
        let mut behaviour_logits = Vec::with_capacity(self.steps * n * a);
        let mut actions = Vec::with_capacity(self.steps * n * w);
        for i in (0..self.steps).flat_map(rows) {
            observations.extend_from(self.observations.slice(i * o..(i + 1) * o));
            behaviour_logits.extend_from_slice(&self.behaviour_logits[i * a..(i + 1) * a]);
            actions.extend_from_slice(&self.actions[i * w..(i + 1) * w]);
        }
        HostBatch {
            steps: self.steps,
            batch_size: n,
            spec: self.spec,
            keys: columns.iter().map(|&j| self.keys[j]).collect(),
            actor_ids: columns.iter().map(|&j| self.actor_ids[j]).collect(),
            importance_weights: columns.iter().map(|&j| self.importance_weights[j]).collect(),
            first_draws: columns.iter().map(|&j| self.first_draws[j]).collect(),
            observations,
            actions,
            rewards: (0..self.steps).flat_map(rows).map(|i| self.rewards[i]).collect(),
            terminated: gather(&self.terminated),
            truncated: gather(&self.truncated),
            is_first: gather(&self.is_first),
            behaviour_logits,
            behaviour_versions: (0..self.steps).flat_map(rows).map(|i| self.behaviour_versions[i]).collect(),
            state: self.state,
            initial_states: columns
                .iter()
                .flat_map(|&j| self.initial_states[j * width..(j + 1) * width].iter().copied())
                .collect(),
        }
    }
}

/// Copies sequence `j`'s `steps` time-major rows of `width` values into
/// column `j` of a `[steps, b, width]` batch.
fn scatter_steps<T: Copy>(dst: &mut [T], src: &[T], steps: usize, b: usize, j: usize, width: usize) {
    for t in 0..steps {
        let at = t * b + j;
        dst[at * width..(at + 1) * width].copy_from_slice(&src[t * width..(t + 1) * width]);
    }
}

/// The batch as tensors on the learner's device, split into the burn-in
/// steps and the `L = T + 1` steps after them (learning steps plus the
/// bootstrap step), which everything but the burn-in fields describes.
#[derive(Debug)]
pub struct DeviceBatch {
    /// `[burn_in·B, obs]` and `[burn_in·B]` f32 (1 where an episode starts).
    /// Observations keep the dtype they travelled as (u8 frames, else f32).
    pub burn_in_observations: Tensor,
    pub burn_in_is_first: Tensor,
    pub burn_in: usize,
    /// `[B, state.width()]`, when the sequences carry a stored state.
    pub initial_states: Option<Tensor>,
    /// `[L·B, obs]`
    pub observations: Tensor,
    /// `[L·B]` f32, 1 where an episode starts.
    pub is_first: Tensor,
    /// `[T, B]` u32 indices, or `[T, B, dims]` f32 values.
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
        let o = batch.spec.observation_size();
        // Indices below are relative to the first step after the burn-in.
        let decision = |i: usize| is_decision(batch.terminated[skip + i], batch.truncated[skip + i]);
        let flags = |range: std::ops::Range<usize>| -> Vec<f32> { batch.is_first[range].iter().map(|&f| f32::from(u8::from(f))).collect() };
        let mask: Vec<f32> = (0..learning).map(|i| if decision(i) { 1.0 } else { 0.0 }).collect();
        let discounts: Vec<f32> = (0..learning)
            .map(|i| {
                if decision(i) && !batch.terminated[skip + i + b] {
                    discount as f32
                } else {
                    0.0
                }
            })
            .collect();
        let a = batch.spec.policy_width();
        let learning_range = skip..skip + learning;
        let actions = match batch.spec.action {
            ActionSpec::Discrete { .. } => {
                let indices: Vec<u32> = batch.actions[learning_range.clone()].iter().map(|&a| a as u32).collect();
                Tensor::from_vec(indices, (t, b), device)?
            }
            ActionSpec::Continuous { dims } => {
                Tensor::from_slice(&batch.actions[skip * dims..(skip + learning) * dims], (t, b, dims), device)?
            }
        };
        Ok(Self {
            burn_in_observations: observations_tensor(batch.observations.slice(0..skip * o), skip, o, device)?,
            burn_in_is_first: Tensor::from_vec(flags(0..skip), skip, device)?,
            burn_in,
            initial_states: batch
                .state
                .map(|state| Tensor::from_slice(&batch.initial_states, (b, state.width()), device))
                .transpose()?,
            observations: observations_tensor(batch.observations.slice(skip * o..batch.observations.len()), l * b, o, device)?,
            is_first: Tensor::from_vec(flags(skip..skip + l * b), l * b, device)?,
            actions,
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

#[cfg(test)]
mod tests {
    use fleet_trajectory::{Dtype, FrameShape};

    use super::*;

    const FRAME: FrameShape = FrameShape {
        channels: 2,
        height: 3,
        width: 4,
    };
    const STEPS: usize = 5;

    /// Sequence `j` of a batch: its i-th pixel (over all steps) is
    /// `(7·j + 11·i) % 256`, which reaches both 0 and 255.
    fn item(j: usize, spec: &EnvSpec, as_u8: bool) -> pb::SampledItem {
        let o = spec.observation_size();
        let pixels: Vec<u8> = (0..STEPS * o).map(|i| ((7 * j + 11 * i) % 256) as u8).collect();
        let observations = if as_u8 {
            pb::Tensor::from_u8(&[STEPS, FRAME.channels, FRAME.height, FRAME.width], pixels)
        } else {
            pb::Tensor::from_f32(&[STEPS, o], &pixels.iter().map(|&p| f32::from(p)).collect::<Vec<_>>())
        };
        pb::SampledItem {
            key: j as u64,
            weight: 1.0,
            sequence: Some(pb::Sequence {
                observations: Some(observations),
                actions: Some(pb::Tensor::from_i64(&[STEPS], &[0; STEPS])),
                rewards: vec![0.0; STEPS],
                is_first: vec![false; STEPS],
                terminated: vec![false; STEPS],
                truncated: vec![false; STEPS],
                behaviour_logits: Some(pb::Tensor::from_f32(&[STEPS, 2], &[0.0; 2 * STEPS])),
                behaviour_versions: vec![1; STEPS],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn signature(env: EnvSpec) -> Signature {
        Signature { env, state: None }
    }

    #[test]
    fn u8_frames_stay_u8_in_the_host_batch_and_land_time_major() {
        let spec = EnvSpec::frames(FRAME, 2);
        let mut items: Vec<pb::SampledItem> = (0..3).map(|j| item(j, &spec, true)).collect();
        items[0].times_sampled = 1;
        items[1].times_sampled = 3;
        let batch = HostBatch::from_items(&items, signature(spec)).unwrap();
        assert_eq!(batch.first_draws, [true, false, true], "from the draw counts 1, 3 and none");
        let Observations::U8(pixels) = &batch.observations else {
            panic!("frames became {:?}", batch.observations.dtype());
        };
        let o = FRAME.size();
        assert_eq!(pixels.len(), STEPS * 3 * o);
        for t in 0..STEPS {
            for j in 0..3 {
                let sent = &items[j].sequence.as_ref().unwrap().observations.as_ref().unwrap().as_u8().unwrap()[t * o..(t + 1) * o];
                assert_eq!(&pixels[(t * 3 + j) * o..(t * 3 + j + 1) * o], sent, "step {t}, sequence {j}");
            }
        }
    }

    #[test]
    fn items_of_another_signature_are_refused() {
        let frames = EnvSpec::frames(FRAME, 2);
        let items = [item(0, &frames, true), item(1, &frames, false)];
        let err = HostBatch::from_items(&items, signature(frames)).unwrap_err().to_string();
        assert!(
            err.starts_with("item 1 (key 1): the table holds f32 observations [24]") && err.contains("expects u8 observations [2, 3, 4]"),
            "{err}"
        );
        let vectors = EnvSpec::vector(FRAME.size(), 2);
        let err = HostBatch::from_items(&[item(0, &frames, true)], signature(vectors))
            .unwrap_err()
            .to_string();
        assert!(err.contains("the table holds u8 observations"), "{err}");
        assert!(HostBatch::from_items(&[item(0, &frames, false)], signature(vectors)).is_ok());
        let recurrent = Signature {
            env: vectors,
            state: Some(StateSpec::Lstm { hidden: 4 }),
        };
        let err = HostBatch::from_items(&[item(0, &frames, false)], recurrent)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("expects f32 observations [24], 2 discrete actions, an LSTM state of 4 units"),
            "{err}"
        );
    }

    #[test]
    fn the_device_batch_keeps_u8_frames_exactly() {
        let spec = EnvSpec::frames(FRAME, 2);
        let items: Vec<pb::SampledItem> = (0..4).map(|j| item(j, &spec, true)).collect();
        let batch = HostBatch::from_items(&items, signature(spec)).unwrap();
        let Observations::U8(pixels) = &batch.observations else {
            unreachable!()
        };
        let burn_in = 1;
        let device = DeviceBatch::new(&batch, 0.99, burn_in, &Device::Cpu).unwrap();
        // The network's first convolution reads u8 itself.
        assert_eq!(device.observations.dtype(), candle_core::DType::U8);
        assert_eq!(device.observations.dims(), &[(STEPS - burn_in) * 4, FRAME.size()]);
        assert_eq!(device.burn_in_observations.dims(), &[burn_in * 4, FRAME.size()]);
        let on_device: Vec<u8> = [&device.burn_in_observations, &device.observations]
            .iter()
            .flat_map(|t| t.flatten_all().unwrap().to_vec1::<u8>().unwrap())
            .collect();
        assert_eq!(&on_device, pixels);
        assert!(pixels.contains(&255) && pixels.contains(&0));
    }

    /// Selecting columns keeps each kept sequence whole, every field in
    /// step, and the ages follow the oldest learning decision.
    #[test]
    fn selecting_sequences_keeps_them_whole_and_ages_count_learning_decisions() {
        let spec = EnvSpec::vector(3, 2);
        let mut batch = HostBatch::synthetic(spec, 6, 4, 9);
        batch.state = Some(StateSpec::Lstm { hidden: 1 });
        batch.initial_states = (0..8).map(|v| v as f32).collect();
        batch.terminated = vec![false; 24];
        batch.truncated = vec![false; 24];
        for t in 0..6 {
            for j in 0..4 {
                batch.behaviour_versions[t * 4 + j] = 100 + 10 * j as u64 + t as u64;
            }
        }
        // Sequence 3's burn-in step is older still, and does not count.
        batch.behaviour_versions[3] = 1;
        assert_eq!(batch.sequence_ages(130, 1), vec![29, 19, 9, 0]);
        // The last step is only bootstrapped: a sequence whose learning steps
        // are all episode ends has no decision and age 0.
        let mut ended = batch.clone();
        for t in 1..5 {
            ended.truncated[t * 4] = true;
        }
        assert_eq!(ended.sequence_ages(130, 1)[0], 0);

        let picked = batch.select(&[3, 1]);
        assert_eq!((picked.batch_size, picked.steps, picked.keys.clone()), (2, 6, vec![3, 1]));
        assert_eq!(picked.initial_states, vec![6.0, 7.0, 2.0, 3.0]);
        let o = 3;
        for t in 0..6 {
            for (k, j) in [3usize, 1].into_iter().enumerate() {
                let (at, from) = (t * 2 + k, t * 4 + j);
                assert_eq!(picked.actions[at], batch.actions[from]);
                assert_eq!(picked.behaviour_versions[at], batch.behaviour_versions[from]);
                assert_eq!(picked.is_first[at], batch.is_first[from]);
                assert_eq!(
                    picked.behaviour_logits[at * 2..at * 2 + 2],
                    batch.behaviour_logits[from * 2..from * 2 + 2]
                );
                assert_eq!(
                    picked.observations.slice(at * o..(at + 1) * o).f32(),
                    batch.observations.slice(from * o..(from + 1) * o).f32()
                );
            }
        }
        assert_eq!(picked.learning_frames(1), 8);
    }

    /// A sequence drawn again teaches no new env frames; the others count
    /// their learning decisions.
    #[test]
    fn env_frames_count_only_first_draws() {
        let mut batch = HostBatch::synthetic(EnvSpec::vector(3, 2), 6, 4, 9);
        batch.terminated = vec![false; 24];
        batch.truncated = vec![false; 24];
        batch.truncated[2 * 4] = true; // sequence 0 has one episode end among its learning steps
        assert_eq!((batch.learning_frames(1), batch.env_frames(1)), (15, 15));
        batch.first_draws = vec![true, false, true, false];
        assert_eq!(batch.env_frames(1), 7);
        assert_eq!(batch.select(&[1, 2]).env_frames(1), 4);
        assert_eq!(batch.learning_frames(1), 15, "every draw is still learnt from");
    }

    #[test]
    fn synthetic_batches_of_atari_frames_are_u8() {
        let atari = FrameShape {
            channels: 4,
            height: 84,
            width: 84,
        };
        let batch = HostBatch::synthetic(EnvSpec::frames(atari, 6), 3, 2, 0);
        assert_eq!(batch.observations.dtype(), Dtype::U8);
        assert_eq!(batch.observations.len(), 3 * 2 * 4 * 84 * 84);
        let device = DeviceBatch::new(&batch, 0.99, 0, &Device::Cpu).unwrap();
        let max = device.observations.max_all().unwrap().to_scalar::<u8>().unwrap();
        assert!(max > 200, "{max}");
        let vectors = HostBatch::synthetic(EnvSpec::vector(4, 2), 3, 2, 0);
        assert_eq!(vectors.observations.dtype(), Dtype::F32);
        assert!(vectors.observations.as_ref().f32().iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
