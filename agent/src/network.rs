//! The actor-critic network. Feed-forward (`core = "none"`): two MLP towers
//! of the same shape, one ending in the policy head (logits over discrete
//! actions), one in the value head; separate towers keep the value loss,
//! whose scale grows with the return, from swamping the policy gradient in a
//! shared torso. Recurrent (`core = "lstm"`): one MLP torso, an LSTM, and
//! both heads on the LSTM's output, with the state `(h, c)` carried per
//! environment and reset where an episode starts. Parameters are candle
//! `Var`s held in plain fields (so the model is `Send`) and initialised from
//! a seed, so the same seed gives the same network on every run.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::EnvSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Tanh,
    Relu,
}

/// What sits between the torso and the heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Core {
    /// Feed-forward: each step sees only its own observation.
    #[default]
    None,
    /// An LSTM whose state carries memory across the steps of an episode.
    Lstm,
}

/// Shape of the network; the environment spec comes separately.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Widths of each tower's hidden layers (of the one torso with a core).
    pub hidden: Vec<usize>,
    pub activation: Activation,
    pub core: Core,
    /// Width of the LSTM's state `h` (and `c`).
    pub lstm_size: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            hidden: vec![64, 64],
            activation: Activation::Tanh,
            core: Core::None,
            lstm_size: 64,
        }
    }
}

impl NetworkConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden.contains(&0) {
            return Err(format!("hidden layer widths must be positive, got {:?}", self.hidden));
        }
        if self.core == Core::Lstm && self.lstm_size == 0 {
            return Err("network.lstm_size must be positive with core = \"lstm\"".to_owned());
        }
        Ok(())
    }
}

/// An LSTM's state for `N` environments: `h` and `c`, each `[N, lstm_size]`.
#[derive(Debug, Clone)]
pub struct RecurrentState {
    pub h: Tensor,
    pub c: Tensor,
}

impl RecurrentState {
    /// The same state cut off from the graph: no gradient flows into it.
    pub fn detach(&self) -> Self {
        Self {
            h: self.h.detach(),
            c: self.c.detach(),
        }
    }

    /// Zeroes the rows where `keep` (`[N, 1]`, 1 = keep, 0 = reset) is 0.
    fn masked(&self, keep: &Tensor) -> Result<Self> {
        Ok(Self {
            h: self.h.broadcast_mul(keep)?,
            c: self.c.broadcast_mul(keep)?,
        })
    }
}

/// One LSTM layer: gates `[i, f, g, o] = x W_ihᵀ + h W_hhᵀ + b`.
#[derive(Debug)]
struct LstmCell {
    input: Dense,
    recurrent: Dense,
    size: usize,
}

impl LstmCell {
    fn step(&self, x: &Tensor, state: &RecurrentState) -> Result<RecurrentState> {
        let gates = (self.input.forward(x)? + self.recurrent.forward(&state.h)?)?;
        let chunk = |k: usize| gates.narrow(1, k * self.size, self.size);
        let i = candle_nn::ops::sigmoid(&chunk(0)?)?;
        let f = candle_nn::ops::sigmoid(&chunk(1)?)?;
        let g = chunk(2)?.tanh()?;
        let o = candle_nn::ops::sigmoid(&chunk(3)?)?;
        let c = ((f * &state.c)? + (i * g)?)?;
        let h = (o * c.tanh()?)?;
        Ok(RecurrentState { h, c })
    }
}

/// One affine layer `y = x Wᵀ + b` over variables.
#[derive(Debug)]
struct Dense {
    weight: Var,
    bias: Var,
}

impl Dense {
    /// Uniform in ±gain/√fan_in (PyTorch's default scale times `gain`), zero bias.
    fn new(
        name: &str,
        fan_in: usize,
        fan_out: usize,
        gain: f64,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<(Self, Vec<(String, Var)>)> {
        let bound = gain / (fan_in as f64).sqrt();
        let values: Vec<f32> = (0..fan_in * fan_out).map(|_| rng.random_range(-bound..bound) as f32).collect();
        let weight = Var::from_tensor(&Tensor::from_vec(values, (fan_out, fan_in), device)?)?;
        let bias = Var::from_tensor(&Tensor::zeros(fan_out, DType::F32, device)?)?;
        let named = vec![(format!("{name}.weight"), weight.clone()), (format!("{name}.bias"), bias.clone())];
        Ok((Self { weight, bias }, named))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight.as_tensor().t()?)?.broadcast_add(self.bias.as_tensor())
    }
}

/// Policy logits `[N, A]` and state values `[N]` for a batch of observations.
#[derive(Debug)]
pub struct PolicyOutput {
    pub logits: Tensor,
    pub values: Tensor,
}

/// The actor-critic network.
#[derive(Debug)]
pub struct ActorCritic {
    spec: EnvSpec,
    config: NetworkConfig,
    /// With a core, the one torso; without, the policy's tower.
    policy_tower: Vec<Dense>,
    /// Empty with a core.
    value_tower: Vec<Dense>,
    lstm: Option<LstmCell>,
    policy_head: Dense,
    value_head: Dense,
    /// Every parameter under its stable name, in a fixed order (for
    /// serialisation and the optimiser).
    params: Vec<(String, Var)>,
    device: Device,
}

impl ActorCritic {
    pub fn new(spec: EnvSpec, config: &NetworkConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::new();
        let mut tower = |prefix: &str, params: &mut Vec<(String, Var)>| -> Result<(Vec<Dense>, usize)> {
            let mut layers = Vec::new();
            let mut width = spec.observation_size;
            for (i, &out) in config.hidden.iter().enumerate() {
                let (layer, named) = Dense::new(&format!("{prefix}.{i}"), width, out, 1.0, &mut rng, device)?;
                layers.push(layer);
                params.extend(named);
                width = out;
            }
            Ok((layers, width))
        };
        let (policy_tower, torso_width) = tower("policy_tower", &mut params)?;
        let (value_tower, lstm, policy_width, value_width) = match config.core {
            Core::None => {
                let (layers, width) = tower("value_tower", &mut params)?;
                (layers, None, torso_width, width)
            }
            Core::Lstm => {
                let size = config.lstm_size;
                let (input, named) = Dense::new("lstm.input", torso_width, 4 * size, 1.0, &mut rng, device)?;
                params.extend(named);
                let (recurrent, named) = Dense::new("lstm.recurrent", size, 4 * size, 1.0, &mut rng, device)?;
                params.extend(named);
                (Vec::new(), Some(LstmCell { input, recurrent, size }), size, size)
            }
        };
        // A small policy head starts near-uniform, which keeps early exploration broad.
        let (policy_head, named) = Dense::new("policy", policy_width, spec.num_actions, 0.01, &mut rng, device)?;
        params.extend(named);
        let (value_head, named) = Dense::new("value", value_width, 1, 1.0, &mut rng, device)?;
        params.extend(named);
        Ok(Self {
            spec,
            config: config.clone(),
            policy_tower,
            value_tower,
            lstm,
            policy_head,
            value_head,
            params,
            device: device.clone(),
        })
    }

    pub fn spec(&self) -> EnvSpec {
        self.spec
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Parameters by name, in a fixed order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Whether the network carries a recurrent state between steps.
    pub fn is_recurrent(&self) -> bool {
        self.lstm.is_some()
    }

    /// Width of the LSTM's `h` (0 without a core).
    pub fn state_size(&self) -> usize {
        self.lstm.as_ref().map_or(0, |l| l.size)
    }

    /// The zero state for `n` environments (empty tensors without a core).
    pub fn initial_state(&self, n: usize) -> Result<RecurrentState> {
        let zeros = Tensor::zeros((n, self.state_size()), DType::F32, &self.device)?;
        Ok(RecurrentState {
            h: zeros.clone(),
            c: zeros,
        })
    }

    /// One step for `N` environments of a feed-forward network.
    /// `observations`: `[N, observation_size]` f32.
    ///
    /// # Errors
    /// With a recurrent core, which needs [`ActorCritic::step`].
    pub fn forward(&self, observations: &Tensor) -> Result<PolicyOutput> {
        if self.is_recurrent() {
            candle_core::bail!("a recurrent network steps with its state: use step or unroll");
        }
        let logits = self.policy_head.forward(&self.tower(&self.policy_tower, observations)?)?;
        let values = self.value_head.forward(&self.tower(&self.value_tower, observations)?)?.squeeze(1)?;
        Ok(PolicyOutput { logits, values })
    }

    /// One step for `N` environments: `observations` `[N, observation_size]`,
    /// `is_first` `[N]` (1.0 where the observation starts an episode, whose
    /// state then starts from zero), `state` the state before this step.
    /// Returns the outputs and the state after it. Without a core this is
    /// [`ActorCritic::forward`] and the state passes through.
    pub fn step(&self, observations: &Tensor, is_first: &Tensor, state: &RecurrentState) -> Result<(PolicyOutput, RecurrentState)> {
        let Some(lstm) = &self.lstm else {
            return Ok((self.forward(observations)?, state.clone()));
        };
        let keep = (1.0 - is_first.to_dtype(DType::F32)?)?.unsqueeze(1)?;
        let state = state.masked(&keep)?;
        let features = self.tower(&self.policy_tower, observations)?;
        let next = lstm.step(&features, &state)?;
        let logits = self.policy_head.forward(&next.h)?;
        let values = self.value_head.forward(&next.h)?.squeeze(1)?;
        Ok((PolicyOutput { logits, values }, next))
    }

    /// `T` steps of `B` sequences, time-major: `observations` `[T·B,
    /// observation_size]`, `is_first` `[T·B]`, `state` the state before the
    /// first step. Returns outputs `[T·B, …]` in the same order and the
    /// state after the last step. The torso runs on all steps at once; only
    /// the LSTM goes step by step.
    pub fn unroll(
        &self,
        observations: &Tensor,
        is_first: &Tensor,
        steps: usize,
        state: &RecurrentState,
    ) -> Result<(PolicyOutput, RecurrentState)> {
        let Some(lstm) = &self.lstm else {
            return Ok((self.forward(observations)?, state.clone()));
        };
        let total = observations.dim(0)?;
        if steps == 0 || total % steps != 0 {
            candle_core::bail!("{total} rows do not split into {steps} steps");
        }
        let b = total / steps;
        let features = self.tower(&self.policy_tower, observations)?;
        let keep = (1.0 - is_first.to_dtype(DType::F32)?)?.unsqueeze(1)?;
        let mut state = state.clone();
        let mut hs = Vec::with_capacity(steps);
        for t in 0..steps {
            state = state.masked(&keep.narrow(0, t * b, b)?)?;
            state = lstm.step(&features.narrow(0, t * b, b)?, &state)?;
            hs.push(state.h.clone());
        }
        let h = Tensor::cat(&hs, 0)?;
        let logits = self.policy_head.forward(&h)?;
        let values = self.value_head.forward(&h)?.squeeze(1)?;
        Ok((PolicyOutput { logits, values }, state))
    }

    fn tower(&self, layers: &[Dense], input: &Tensor) -> Result<Tensor> {
        let mut x = input.clone();
        for layer in layers {
            x = layer.forward(&x)?;
            x = match self.config.activation {
                Activation::Tanh => x.tanh()?,
                Activation::Relu => x.relu()?,
            };
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: EnvSpec = EnvSpec {
        observation_size: 4,
        num_actions: 2,
    };

    #[test]
    fn forward_shapes() {
        let net = ActorCritic::new(SPEC, &NetworkConfig::default(), 0, &Device::Cpu).unwrap();
        let obs = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let out = net.forward(&obs).unwrap();
        assert_eq!(out.logits.dims(), &[3, 2]);
        assert_eq!(out.values.dims(), &[3]);
    }

    #[test]
    fn same_seed_same_network_other_seed_other_network() {
        let a = ActorCritic::new(SPEC, &NetworkConfig::default(), 7, &Device::Cpu).unwrap();
        let b = ActorCritic::new(SPEC, &NetworkConfig::default(), 7, &Device::Cpu).unwrap();
        let c = ActorCritic::new(SPEC, &NetworkConfig::default(), 8, &Device::Cpu).unwrap();
        let w = |n: &ActorCritic| n.params()[0].1.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
    }

    fn lstm() -> ActorCritic {
        let config = NetworkConfig {
            hidden: vec![16],
            core: Core::Lstm,
            lstm_size: 8,
            ..NetworkConfig::default()
        };
        ActorCritic::new(SPEC, &config, 3, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    /// `[T·B, 4]` observations that differ by step and sequence.
    fn observations(steps: usize, b: usize) -> Tensor {
        let v: Vec<f32> = (0..steps * b * 4).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.2).collect();
        Tensor::from_vec(v, (steps * b, 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn unrolling_equals_stepping_and_resets_where_episodes_start() {
        let net = lstm();
        let (steps, b) = (6, 2);
        let obs = observations(steps, b);
        // Sequence 1 starts a new episode at step 3.
        let mut first = vec![0f32; steps * b];
        first[3 * b + 1] = 1.0;
        let is_first = Tensor::from_vec(first.clone(), steps * b, &Device::Cpu).unwrap();
        let start = RecurrentState {
            h: Tensor::full(0.3f32, (b, 8), &Device::Cpu).unwrap(),
            c: Tensor::full(-0.2f32, (b, 8), &Device::Cpu).unwrap(),
        };
        let (unrolled, end) = net.unroll(&obs, &is_first, steps, &start).unwrap();

        let mut state = start.clone();
        let mut logits = Vec::new();
        for t in 0..steps {
            let (out, next) = net
                .step(&obs.narrow(0, t * b, b).unwrap(), &is_first.narrow(0, t * b, b).unwrap(), &state)
                .unwrap();
            logits.extend(values(&out.logits));
            state = next;
        }
        assert!(close(&values(&unrolled.logits), &logits));
        assert!(close(&values(&end.h), &values(&state.h)));

        // From the reset on, sequence 1 is what a fresh start there gives.
        let rows = |t0: usize| -> Vec<usize> { (t0..steps).map(|t| t * b + 1).collect() };
        let tail: Vec<u32> = rows(3).iter().map(|&r| r as u32).collect();
        let tail_obs = obs.index_select(&Tensor::new(tail.as_slice(), &Device::Cpu).unwrap(), 0).unwrap();
        let fresh_first = Tensor::zeros(steps - 3, DType::F32, &Device::Cpu).unwrap();
        let (fresh, _) = net
            .unroll(&tail_obs, &fresh_first, steps - 3, &net.initial_state(1).unwrap())
            .unwrap();
        let all = values(&unrolled.logits);
        let reset_rows: Vec<f32> = rows(3).iter().flat_map(|&r| all[r * 2..r * 2 + 2].to_vec()).collect();
        assert!(
            close(&reset_rows, &values(&fresh.logits)),
            "a reset inside the unroll starts from the zero state"
        );
        // Before the reset, the carried state mattered.
        let (from_zero, _) = net.unroll(&obs, &is_first, steps, &net.initial_state(b).unwrap()).unwrap();
        assert!(!close(&values(&from_zero.logits)[2..4], &all[2..4]));
    }

    #[test]
    fn a_recurrent_network_refuses_stateless_forward_and_names_its_lstm() {
        let net = lstm();
        assert!(net.forward(&observations(1, 1)).is_err());
        let names: Vec<&str> = net.params().iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"lstm.input.weight") && names.contains(&"lstm.recurrent.weight"),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.starts_with("value_tower")));
        let state = net.initial_state(2).unwrap();
        assert_eq!((state.h.dims(), state.c.dims()), (&[2, 8][..], &[2, 8][..]));
    }
}
