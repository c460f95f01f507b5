//! The actor-critic network. With the MLP torso and no core: two MLP towers
//! of the same shape, one ending in the policy head (logits over discrete
//! actions), one in the value head; separate towers keep the value loss,
//! whose scale grows with the return, from swamping the policy gradient in a
//! shared torso. With a core (`core = "lstm"`): one torso, an LSTM, and both
//! heads on the LSTM's output, with the state `(h, c)` carried per
//! environment and reset where an episode starts. The convolutional torsos
//! (IMPALA's `shallow_cnn` and `deep_resnet`, DQN's `nature_cnn`, MinAtar's
//! `small_cnn`) read image frames and are always
//! one torso shared by both heads, as in IMPALA: two towers would double the
//! cost of the most expensive part. Frames arrive as their 0..=255
//! intensities and are scaled by 1/255 at the input, whatever the torso (a
//! CNN folds the factor into its first convolution's weight).
//!
//! Parameters are candle `Var`s held in plain fields (so the model is `Send`)
//! and initialised from a seed, so the same seed gives the same network on
//! every run.
//!
//! Layout: `config` ([`NetworkConfig`] and its choices), `mlp` (the affine
//! layer everything is built from, and the MLP towers), `cnn` (the
//! convolutional torsos), `lstm` (the
//! LSTM core and its [`RecurrentState`]), `heads` (the policy and value
//! heads and their [`PolicyOutput`]); this module puts them together as
//! [`ActorCritic`]. The CPU kernels under the layers are the
//! `fleet-kernels` crate's.

mod cnn;
mod config;
mod heads;
mod lstm;
mod mlp;

pub use config::{Activation, Core, LogStd, NetworkConfig, Torso, WeightInit};
pub use heads::PolicyOutput;
pub use lstm::RecurrentState;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::SeedableRng;

use crate::EnvSpec;
use crate::distribution::PolicyDistribution;
use cnn::{ConvTorso, conv_torso_features};
use heads::Heads;
use lstm::{GateInit, LstmCell};
use mlp::Dense;

/// What frames' 0..=255 intensities are multiplied by on the way in.
pub const FRAME_SCALE: f64 = 1.0 / 255.0;

/// What turns observations into the heads' (or the core's) input.
#[derive(Debug)]
enum Body {
    /// MLP towers: the policy's (the one torso with a core) and the value's
    /// (empty with a core).
    Towers { policy: Vec<Dense>, value: Vec<Dense> },
    /// One convolutional torso for both heads.
    Conv(ConvTorso),
}

/// The actor-critic network.
#[derive(Debug)]
pub struct ActorCritic {
    spec: EnvSpec,
    config: NetworkConfig,
    body: Body,
    lstm: Option<LstmCell>,
    heads: Heads,
    /// Every parameter under its stable name, in a fixed order (for
    /// serialisation and the optimiser).
    params: Vec<(String, Var)>,
    device: Device,
}

impl ActorCritic {
    /// # Errors
    /// Besides candle's, when the torso cannot read the spec's observations
    /// (see [`NetworkConfig::check_spec`]).
    pub fn new(spec: EnvSpec, config: &NetworkConfig, seed: u64, device: &Device) -> Result<Self> {
        config.check_spec(&spec).map_err(candle_core::Error::msg)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::new();
        let tower = |prefix: &str, rng: &mut rand_chacha::ChaCha8Rng, params: &mut Vec<(String, Var)>| {
            mlp::tower(
                prefix,
                spec.observation_size(),
                &config.hidden,
                config.init.gain(),
                rng,
                device,
                params,
            )
        };
        let (body, torso_width, value_width) = match (config.torso, spec.frame()) {
            (Torso::Mlp, _) => {
                let (policy, torso_width) = tower("policy_tower", &mut rng, &mut params)?;
                let (value, value_width) = match config.core {
                    Core::None => tower("value_tower", &mut rng, &mut params)?,
                    Core::Lstm => (Vec::new(), torso_width),
                };
                (Body::Towers { policy, value }, torso_width, value_width)
            }
            (torso, Some(frame)) => {
                let conv = ConvTorso::new(torso, frame, config.init.gain(), &mut rng, device, &mut params)?;
                let features = conv_torso_features(torso);
                (Body::Conv(conv), features, features)
            }
            (_, None) => unreachable!("check_spec refuses a CNN torso without frames"),
        };
        let (lstm, policy_width, value_width) = match config.core {
            Core::None => (None, torso_width, value_width),
            Core::Lstm => {
                let size = config.lstm_size;
                let init = match config.lstm_chrono_horizon {
                    0 => GateInit::ForgetBias(config.lstm_forget_bias),
                    horizon => GateInit::Chrono { horizon },
                };
                let lstm = LstmCell::new(torso_width, size, init, &mut rng, device, &mut params)?;
                (Some(lstm), size, size)
            }
        };
        let heads = Heads::new(
            policy_width,
            value_width,
            PolicyDistribution::new(spec.action, config.squash),
            config.log_std,
            config.initial_log_std,
            &mut rng,
            device,
            &mut params,
        )?;
        Ok(Self {
            spec,
            config: config.clone(),
            body,
            lstm,
            heads,
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

    /// How the policy's parameters become actions and probabilities.
    pub fn distribution(&self) -> PolicyDistribution {
        PolicyDistribution::new(self.spec.action, self.config.squash)
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
    /// `observations`: `[N, observation_size]`, f32 or u8 (frames as 0..=255).
    ///
    /// # Errors
    /// With a recurrent core, which needs [`ActorCritic::step`].
    pub fn forward(&self, observations: &Tensor) -> Result<PolicyOutput> {
        if self.is_recurrent() {
            candle_core::bail!("a recurrent network steps with its state: use step or unroll");
        }
        let x = self.scaled(observations)?;
        match &self.body {
            Body::Towers { policy, value } => {
                let activation = self.config.activation;
                let policy_features = mlp::forward(policy, activation, &x)?;
                let value_features = mlp::forward(value, activation, &x)?;
                self.heads.forward(&policy_features, &value_features)
            }
            Body::Conv(conv) => {
                let features = conv.forward(&x)?;
                self.heads.forward(&features, &features)
            }
        }
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
        let projected = lstm.project(&self.core_input(observations)?)?;
        let (_, next) = lstm.unroll(&projected, &keep_mask(is_first)?, 1, state)?;
        Ok((self.heads.forward(&next.h, &next.h)?, next))
    }

    /// `T` steps of `B` sequences, time-major: `observations` `[T·B,
    /// observation_size]`, `is_first` `[T·B]`, `state` the state before the
    /// first step. Returns outputs `[T·B, …]` in the same order and the
    /// state after the last step. The torso and the LSTM's input projection
    /// run on all steps at once, the recurrence in one fused op.
    pub fn unroll(
        &self,
        observations: &Tensor,
        is_first: &Tensor,
        steps: usize,
        state: &RecurrentState,
    ) -> Result<(PolicyOutput, RecurrentState)> {
        if self.lstm.is_none() {
            return Ok((self.forward(observations)?, state.clone()));
        }
        self.unroll_from(&self.core_inputs(observations)?, is_first, steps, state)
    }

    /// What a recurrent network's unroll reads from `observations` that no
    /// state changes: the torso's features through the LSTM's input
    /// projection, `[rows, 4·lstm_size]`. Unrolls of the same steps from
    /// different states ([`ActorCritic::unroll_from`]) can share it.
    ///
    /// # Errors
    /// For a feed-forward network.
    pub fn core_inputs(&self, observations: &Tensor) -> Result<Tensor> {
        let Some(lstm) = &self.lstm else {
            candle_core::bail!("a feed-forward network has no core inputs");
        };
        lstm.project(&self.core_input(observations)?)
    }

    /// [`ActorCritic::unroll`] of a recurrent network from its
    /// [`ActorCritic::core_inputs`].
    pub fn unroll_from(
        &self,
        core_inputs: &Tensor,
        is_first: &Tensor,
        steps: usize,
        state: &RecurrentState,
    ) -> Result<(PolicyOutput, RecurrentState)> {
        let Some(lstm) = &self.lstm else {
            candle_core::bail!("a feed-forward network has no core to unroll");
        };
        let total = core_inputs.dim(0)?;
        if steps == 0 || total % steps != 0 {
            candle_core::bail!("{total} rows do not split into {steps} steps");
        }
        let (every, last) = lstm.unroll(core_inputs, &keep_mask(is_first)?, steps, state)?;
        Ok((self.heads.forward(&every.h, &every.h)?, last))
    }

    /// The torso's input: frames as they come (u8 or f32) for a CNN, whose
    /// first layer reads u8 itself and scales its weight instead; for an MLP,
    /// f32 with frames scaled to 0..=1.
    fn scaled(&self, observations: &Tensor) -> Result<Tensor> {
        match (&self.body, self.spec.frame()) {
            (Body::Conv(_), _) => Ok(observations.clone()),
            (Body::Towers { .. }, Some(_)) => observations.to_dtype(DType::F32)?.affine(FRAME_SCALE, 0.0),
            (Body::Towers { .. }, None) => observations.to_dtype(DType::F32),
        }
    }

    /// The one torso's features, the LSTM's input.
    fn core_input(&self, observations: &Tensor) -> Result<Tensor> {
        let x = self.scaled(observations)?;
        match &self.body {
            Body::Towers { policy, .. } => mlp::forward(policy, self.config.activation, &x),
            Body::Conv(conv) => conv.forward(&x),
        }
    }
}

/// 0 where `is_first` (any dtype, one value per row) marks an episode's
/// start, 1 elsewhere: which rows keep their recurrent state.
fn keep_mask(is_first: &Tensor) -> Result<Vec<f32>> {
    let first = is_first.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(first.into_iter().map(|f| if f != 0.0 { 0.0 } else { 1.0 }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameShape;

    const SPEC: EnvSpec = EnvSpec::vector(4, 2);

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

    #[test]
    fn frames_are_scaled_to_unit_intensities_at_the_input() {
        // An MLP on frames sees x/255: the same network on vectors sees x.
        let frame = FrameShape {
            channels: 1,
            height: 2,
            width: 2,
        };
        let on_frames = ActorCritic::new(EnvSpec::frames(frame, 2), &NetworkConfig::default(), 4, &Device::Cpu).unwrap();
        let on_vectors = ActorCritic::new(EnvSpec::vector(4, 2), &NetworkConfig::default(), 4, &Device::Cpu).unwrap();
        let pixels = Tensor::new(&[[0f32, 51.0, 255.0, 102.0]], &Device::Cpu).unwrap();
        let unit = Tensor::new(&[[0f32, 0.2, 1.0, 0.4]], &Device::Cpu).unwrap();
        let a = on_frames.forward(&pixels).unwrap().values.to_vec1::<f32>().unwrap();
        let b = on_vectors.forward(&unit).unwrap().values.to_vec1::<f32>().unwrap();
        assert!((a[0] - b[0]).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}
