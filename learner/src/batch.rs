//! Turning sampled sequences into one time-major batch: host arrays shaped
//! `[L, B, …]` (L steps per sequence), checked for agreement with each other
//! and with the network. Built off the training thread; [`DeviceBatch`] then
//! moves it onto the learner's device in one go. Image observations stay u8
//! up to the device, which turns them into f32 there: the copy is a quarter
//! of the size.

use candle_core::{DType, Device, Tensor};
use fleet_agent::EnvSpec;
use fleet_proto::pb::{self, Dtype};

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("sampled batch is empty")]
    Empty,
    #[error("item {index} (key {key}): {message}")]
    Item { index: usize, key: u64, message: String },
}

/// Observations `[L, B, observation_size]` in the dtype they travel in: u8
/// for image frames, f32 for vectors.
#[derive(Debug, Clone, PartialEq)]
pub enum Observations {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl Observations {
    /// `len` zeros of the dtype `spec` observations travel in.
    fn zeros(spec: &EnvSpec, len: usize) -> Self {
        match spec.observation_dtype() {
            Dtype::U8 => Self::U8(vec![0; len]),
            _ => Self::F32(vec![0.0; len]),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            Self::F32(_) => Dtype::F32,
            Self::U8(_) => Dtype::U8,
        }
    }

    /// Values `range` as a `rows × width` f32 tensor on `device`; u8 goes
    /// over as u8 and is converted there.
    fn to_device(&self, range: std::ops::Range<usize>, rows: usize, width: usize, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Self::F32(v) => Tensor::from_slice(&v[range], (rows, width), device),
            Self::U8(v) => Tensor::from_slice(&v[range], (rows, width), device)?.to_dtype(DType::F32),
        }
    }
}

/// f32 observations index like the vector they are, which keeps code that
/// edits f32 batches in place simple.
///
/// # Panics
/// On u8 observations.
impl<I: std::slice::SliceIndex<[f32]>> std::ops::Index<I> for Observations {
    type Output = I::Output;

    fn index(&self, index: I) -> &Self::Output {
        match self {
            Self::F32(v) => &v[index],
            Self::U8(_) => panic!("u8 observations are not f32 values; match on Observations::U8"),
        }
    }
}

impl<I: std::slice::SliceIndex<[f32]>> std::ops::IndexMut<I> for Observations {
    fn index_mut(&mut self, index: I) -> &mut Self::Output {
        match self {
            Self::F32(v) => &mut v[index],
            Self::U8(_) => panic!("u8 observations are not f32 values; match on Observations::U8"),
        }
    }
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
    /// `[L, B, observation_size]`, u8 when the spec has frames.
    pub observations: Observations,
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
            observations: Observations::zeros(&spec, steps * b * o),
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
            let obs = seq.observations.as_ref().ok_or_else(|| fail("no observations".into()))?;
            let expected = spec.observation_dtype();
            let found = obs.checked_dtype().map_err(|e| fail(e.to_string()))?;
            if found != expected {
                let name = |dtype| match dtype {
                    Dtype::U8 => "u8",
                    Dtype::F32 => "f32",
                    Dtype::I64 => "i64",
                    Dtype::Unspecified => "unspecified",
                };
                let kind = if spec.frame.is_some() {
                    "image frames, sent as"
                } else {
                    "vectors, sent as"
                };
                return Err(fail(format!(
                    "observations are {}, but the environment's are {kind} {}",
                    name(found),
                    name(expected)
                )));
            }
            let values = obs.num_elements().map_err(|e| fail(e.to_string()))?;
            if values != steps * o {
                return Err(fail(format!("observations hold {values} values, expected {steps}×{o}")));
            }
            match &mut batch.observations {
                Observations::F32(dst) => {
                    scatter_steps(dst, &obs.to_f32().map_err(|e| fail(e.to_string()))?, steps, b, j, o);
                }
                Observations::U8(dst) => scatter_steps(dst, obs.as_u8().map_err(|e| fail(e.to_string()))?, steps, b, j, o),
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
    /// observations (u8 intensities for a spec with frames), actions and
    /// behaviour logits, reward 1 per step, and a few episode ends, some by
    /// termination and some by truncation.
    pub fn synthetic(spec: EnvSpec, steps: usize, batch_size: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = steps * batch_size;
        let terminated: Vec<bool> = (0..n).map(|_| rng.random_bool(0.03)).collect();
        let truncated: Vec<bool> = terminated.iter().map(|&t| !t && rng.random_bool(0.01)).collect();
        let observations = match spec.observation_dtype() {
            Dtype::U8 => {
                let mut pixels = vec![0u8; n * spec.observation_size];
                rng.fill(pixels.as_mut_slice());
                Observations::U8(pixels)
            }
            _ => Observations::F32((0..n * spec.observation_size).map(|_| rng.random_range(-1.0..1.0)).collect()),
        };
        HostBatch {
            steps,
            batch_size,
            spec,
            keys: (0..batch_size as u64).collect(),
            importance_weights: vec![1.0; batch_size],
            observations,
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
    /// Observations are f32 whatever they travelled as.
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
            burn_in_observations: batch.observations.to_device(0..skip * o, skip, o, device)?,
            burn_in_is_first: Tensor::from_vec(flags(0..skip), skip, device)?,
            burn_in,
            initial_states: (batch.state_width > 0)
                .then(|| Tensor::from_slice(&batch.initial_states, (b, batch.state_width), device))
                .transpose()?,
            observations: batch.observations.to_device(skip * o..batch.observations.len(), l * b, o, device)?,
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

#[cfg(test)]
mod tests {
    use fleet_agent::FrameShape;

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
        let o = spec.observation_size;
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

    #[test]
    fn u8_frames_stay_u8_in_the_host_batch_and_land_time_major() {
        let spec = EnvSpec::frames(FRAME, 2);
        let items: Vec<pb::SampledItem> = (0..3).map(|j| item(j, &spec, true)).collect();
        let batch = HostBatch::from_items(&items, spec).unwrap();
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
    fn observations_of_the_wrong_dtype_are_refused() {
        let frames = EnvSpec::frames(FRAME, 2);
        let items = [item(0, &frames, true), item(1, &frames, false)];
        let err = HostBatch::from_items(&items, frames).unwrap_err().to_string();
        assert!(err.contains("item 1") && err.contains("f32") && err.contains("u8"), "{err}");
        let vectors = EnvSpec::vector(FRAME.size(), 2);
        let err = HostBatch::from_items(&[item(0, &frames, true)], vectors).unwrap_err().to_string();
        assert!(err.contains("observations are u8") && err.contains("vectors"), "{err}");
        assert!(HostBatch::from_items(&[item(0, &frames, false)], vectors).is_ok());
    }

    #[test]
    fn the_device_batch_turns_u8_into_exactly_the_same_f32() {
        let spec = EnvSpec::frames(FRAME, 2);
        let items: Vec<pb::SampledItem> = (0..4).map(|j| item(j, &spec, true)).collect();
        let batch = HostBatch::from_items(&items, spec).unwrap();
        let Observations::U8(pixels) = &batch.observations else {
            unreachable!()
        };
        let burn_in = 1;
        let device = DeviceBatch::new(&batch, 0.99, burn_in, &Device::Cpu).unwrap();
        assert_eq!(device.observations.dtype(), DType::F32);
        assert_eq!(device.observations.dims(), &[(STEPS - burn_in) * 4, FRAME.size()]);
        assert_eq!(device.burn_in_observations.dims(), &[burn_in * 4, FRAME.size()]);
        let on_device: Vec<f32> = [&device.burn_in_observations, &device.observations]
            .iter()
            .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        let expected: Vec<f32> = pixels.iter().map(|&p| f32::from(p)).collect();
        assert_eq!(on_device, expected);
        assert!(expected.contains(&255.0) && expected.contains(&0.0));
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
        let max = device.observations.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max > 200.0 && max <= 255.0, "{max}");
        let vectors = HostBatch::synthetic(EnvSpec::vector(4, 2), 3, 2, 0);
        assert_eq!(vectors.observations.dtype(), Dtype::F32);
        assert!(vectors.observations[..].iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
