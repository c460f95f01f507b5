//! The actor-critic network. With the MLP torso and no core: two MLP towers
//! of the same shape, one ending in the policy head (logits over discrete
//! actions), one in the value head; separate towers keep the value loss,
//! whose scale grows with the return, from swamping the policy gradient in a
//! shared torso. With a core (`core = "lstm"`): one torso, an LSTM, and both
//! heads on the LSTM's output, with the state `(h, c)` carried per
//! environment and reset where an episode starts. The convolutional torsos
//! of IMPALA (`shallow_cnn`, `deep_resnet`) read image frames and are always
//! one torso shared by both heads, as in IMPALA: two towers would double the
//! cost of the most expensive part. Frames arrive as their 0..=255
//! intensities and are scaled by 1/255 at the input, whatever the torso (a
//! CNN folds the factor into its first convolution's weight).
//!
//! Parameters are candle `Var`s held in plain fields (so the model is `Send`)
//! and initialised from a seed, so the same seed gives the same network on
//! every run.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::EnvSpec;
use crate::spec::FrameShape;
use fleet_kernels::{activation, bias};

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

/// What turns an observation into features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Torso {
    /// Fully connected layers of `hidden` widths, on any observation.
    #[default]
    Mlp,
    /// IMPALA's shallow model, on frames: conv 16×8×8 stride 4, ReLU, conv
    /// 32×4×4 stride 2, ReLU, fully connected 256, ReLU.
    ShallowCnn,
    /// IMPALA's deep model, on frames: three sections of 16, 32, 32
    /// channels, each a 3×3 conv, a 3×3 stride-2 max-pool and two residual
    /// blocks (15 conv layers in all), then ReLU, fully connected 256, ReLU.
    DeepResnet,
}

impl Torso {
    /// The name the config uses.
    pub fn name(self) -> &'static str {
        match self {
            Torso::Mlp => "mlp",
            Torso::ShallowCnn => "shallow_cnn",
            Torso::DeepResnet => "deep_resnet",
        }
    }
}

/// Width of the CNN torsos' last fully connected layer (IMPALA's).
const CNN_FEATURES: usize = 256;

/// What frames' 0..=255 intensities are multiplied by on the way in.
const FRAME_SCALE: f64 = 1.0 / 255.0;

/// Shape of the network; the environment spec comes separately.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub torso: Torso,
    /// Widths of each MLP tower's hidden layers (of the one torso with a
    /// core). The CNN torsos end in their own fully connected layer instead.
    pub hidden: Vec<usize>,
    /// Between the MLP layers (the CNN torsos use ReLU throughout).
    pub activation: Activation,
    pub core: Core,
    /// Width of the LSTM's state `h` (and `c`).
    pub lstm_size: usize,
    /// Initial bias of the LSTM's forget gate (the other gates start at
    /// 0): 1 keeps the cell state through the first updates, as Jozefowicz
    /// et al. (2015) recommend; 0 is PyTorch's initialisation.
    pub lstm_forget_bias: f64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            torso: Torso::Mlp,
            hidden: vec![64, 64],
            activation: Activation::Tanh,
            core: Core::None,
            lstm_size: 64,
            lstm_forget_bias: 0.0,
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
        if !self.lstm_forget_bias.is_finite() {
            return Err(format!("network.lstm_forget_bias must be finite, got {}", self.lstm_forget_bias));
        }
        Ok(())
    }

    /// Whether the torso can read `spec`'s observations: a CNN torso needs
    /// frames, large enough for its convolutions; an MLP reads anything.
    pub fn check_spec(&self, spec: &EnvSpec) -> std::result::Result<(), String> {
        let torso = self.torso;
        if torso == Torso::Mlp {
            return Ok(());
        }
        let Some(frame) = spec.frame else {
            return Err(format!(
                "network.torso = \"{}\" needs image observations, but the environment's are a flat vector of {} values (use torso = \"mlp\")",
                torso.name(),
                spec.observation_size
            ));
        };
        if torso == Torso::ShallowCnn && conv_torso_output(torso, frame).is_none() {
            return Err(format!(
                "network.torso = \"shallow_cnn\" needs frames of at least 20×20 pixels, but the environment's are {}×{}",
                frame.height, frame.width
            ));
        }
        Ok(())
    }
}

/// `(height, width)` of a CNN torso's last feature map, or `None` when the
/// frame is too small for its convolutions.
fn conv_torso_output(torso: Torso, frame: FrameShape) -> Option<(usize, usize)> {
    let conv = |size: usize, kernel: usize, stride: usize| (size >= kernel).then(|| (size - kernel) / stride + 1);
    match torso {
        Torso::Mlp => None,
        Torso::ShallowCnn => {
            let side = |size| conv(conv(size, 8, 4)?, 4, 2);
            Some((side(frame.height)?, side(frame.width)?))
        }
        // Same-padded convs keep the size; each max-pool halves it, rounding up.
        Torso::DeepResnet => {
            let side = |size: usize| (0..3).fold(size, |s, _| s.div_ceil(2));
            Some((side(frame.height), side(frame.width)))
        }
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
        self.step_projected(&self.project(x)?, state)
    }

    /// The gates' input part, `x W_ihᵀ + b_ih`, for any number of rows: an
    /// unroll projects all its steps in one matrix product.
    fn project(&self, x: &Tensor) -> Result<Tensor> {
        self.input.forward(x)
    }

    /// One step from the input's [`LstmCell::project`]ion.
    fn step_projected(&self, projected: &Tensor, state: &RecurrentState) -> Result<RecurrentState> {
        let gates = (projected + self.recurrent.forward(&state.h)?)?;
        let hc = activation::lstm_cell(&gates, &state.c)?;
        Ok(RecurrentState {
            h: hc.narrow(1, 0, self.size)?,
            c: hc.narrow(1, self.size, self.size)?,
        })
    }
}

/// Parameters under their stable names, as each layer hands them out.
type NamedVars = Vec<(String, Var)>;

/// A weight of `shape` uniform in ±gain/√fan_in (PyTorch's default scale
/// times `gain`) and a zero bias of `fan_out`, named `{name}.weight` and
/// `{name}.bias`.
fn weight_and_bias(
    name: &str,
    shape: &[usize],
    fan_in: usize,
    gain: f64,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<(Var, Var, NamedVars)> {
    let bound = gain / (fan_in as f64).sqrt();
    let count: usize = shape.iter().product();
    let values: Vec<f32> = (0..count).map(|_| rng.random_range(-bound..bound) as f32).collect();
    let weight = Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?;
    let bias = Var::from_tensor(&Tensor::zeros(shape[0], DType::F32, device)?)?;
    let named = vec![(format!("{name}.weight"), weight.clone()), (format!("{name}.bias"), bias.clone())];
    Ok((weight, bias, named))
}

/// One affine layer `y = x Wᵀ + b` over variables.
#[derive(Debug)]
struct Dense {
    weight: Var,
    bias: Var,
}

impl Dense {
    fn new(name: &str, fan_in: usize, fan_out: usize, gain: f64, rng: &mut impl Rng, device: &Device) -> Result<(Self, NamedVars)> {
        let (weight, bias, named) = weight_and_bias(name, &[fan_out, fan_in], fan_in, gain, rng, device)?;
        Ok((Self { weight, bias }, named))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.as_tensor().t()?)?;
        bias::add_bias(&y, self.bias.as_tensor(), y.rank() - 1)
    }
}

/// One square convolution over `[N, C, H, W]`, weight `[out, in, k, k]`.
#[derive(Debug)]
struct Conv2d {
    weight: Var,
    /// `[1, out, 1, 1]`, broadcast over the batch and the pixels.
    bias: Var,
    stride: usize,
    padding: usize,
    /// Whether the backward computes the input's gradient; a first layer,
    /// fed with observations, has no use for it.
    input_grad: bool,
    /// A factor on the input, applied to the weight instead: the same
    /// product for a first layer that scales frames, on a few thousand
    /// weights rather than every pixel.
    input_scale: f64,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<(Self, NamedVars)> {
        let shape = [out_channels, in_channels, kernel, kernel];
        let (weight, bias, named) = weight_and_bias(name, &shape, in_channels * kernel * kernel, 1.0, rng, device)?;
        let conv = Self {
            weight,
            bias,
            stride,
            padding,
            input_grad: true,
            input_scale: 1.0,
        };
        Ok((conv, named))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut weight = self.weight.as_tensor().clone();
        if self.input_scale != 1.0 {
            weight = weight.affine(self.input_scale, 0.0)?;
        }
        let y = fleet_kernels::conv::conv2d(x, &weight, self.stride, self.padding, self.input_grad)?;
        bias::add_bias(&y, self.bias.as_tensor(), 1)
    }
}

/// IMPALA's residual block: `x + conv(relu(conv(relu(x))))`, 3×3 same-padded.
#[derive(Debug)]
struct ResidualBlock {
    first: Conv2d,
    second: Conv2d,
}

impl ResidualBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.first.forward(&x.relu()?)?;
        let y = self.second.forward(&y.relu()?)?;
        x + y
    }
}

/// One section of the deep torso: conv, max-pool, two residual blocks.
#[derive(Debug)]
struct ResidualSection {
    conv: Conv2d,
    blocks: Vec<ResidualBlock>,
}

#[derive(Debug)]
enum ConvLayers {
    Shallow { first: Conv2d, second: Conv2d },
    Deep(Vec<ResidualSection>),
}

/// A convolutional torso: frames `[N, C·H·W]` (already scaled) to features
/// `[N, 256]`.
#[derive(Debug)]
struct ConvTorso {
    frame: FrameShape,
    layers: ConvLayers,
    fc: Dense,
}

impl ConvTorso {
    fn new(torso: Torso, frame: FrameShape, rng: &mut impl Rng, device: &Device, params: &mut Vec<(String, Var)>) -> Result<Self> {
        let Some((height, width)) = conv_torso_output(torso, frame) else {
            candle_core::bail!("a {} torso cannot read {frame:?} frames", torso.name());
        };
        let mut conv = |name: &str, c_in, c_out, kernel, stride, padding| -> Result<Conv2d> {
            let (conv, named) = Conv2d::new(name, c_in, c_out, kernel, stride, padding, rng, device)?;
            params.extend(named);
            Ok(conv)
        };
        let (layers, channels) = match torso {
            Torso::ShallowCnn => {
                let mut first = conv("torso.conv0", frame.channels, 16, 8, 4, 0)?;
                // The observation needs no gradient, and arrives unscaled.
                first.input_grad = false;
                first.input_scale = FRAME_SCALE;
                let second = conv("torso.conv1", 16, 32, 4, 2, 0)?;
                (ConvLayers::Shallow { first, second }, 32)
            }
            _ => {
                let mut sections = Vec::new();
                let mut c_in = frame.channels;
                for (s, c_out) in [16, 32, 32].into_iter().enumerate() {
                    let mut section_conv = conv(&format!("torso.section{s}.conv"), c_in, c_out, 3, 1, 1)?;
                    if s == 0 {
                        // The observation needs no gradient, and arrives unscaled.
                        section_conv.input_grad = false;
                        section_conv.input_scale = FRAME_SCALE;
                    }
                    let mut blocks = Vec::new();
                    for b in 0..2 {
                        let prefix = format!("torso.section{s}.block{b}");
                        let first = conv(&format!("{prefix}.conv0"), c_out, c_out, 3, 1, 1)?;
                        let second = conv(&format!("{prefix}.conv1"), c_out, c_out, 3, 1, 1)?;
                        blocks.push(ResidualBlock { first, second });
                    }
                    sections.push(ResidualSection {
                        conv: section_conv,
                        blocks,
                    });
                    c_in = c_out;
                }
                (ConvLayers::Deep(sections), c_in)
            }
        };
        let (fc, named) = Dense::new("torso.fc", channels * height * width, CNN_FEATURES, 1.0, rng, device)?;
        params.extend(named);
        Ok(Self { frame, layers, fc })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let FrameShape { channels, height, width } = self.frame;
        let x = x.reshape((x.dim(0)?, channels, height, width))?;
        let x = match &self.layers {
            ConvLayers::Shallow { first, second } => second.forward(&first.forward(&x)?.relu()?)?.relu()?,
            ConvLayers::Deep(sections) => {
                let mut x = x;
                for section in sections {
                    x = max_pool_3x3_stride_2(&section.conv.forward(&x)?)?;
                    for block in &section.blocks {
                        x = block.forward(&x)?;
                    }
                }
                x.relu()?
            }
        };
        self.fc.forward(&x.flatten_from(1)?)?.relu()
    }
}

/// Max-pooling `[N, C, H, W]` with a 3×3 window, stride 2 and padding 1
/// (output `⌈H/2⌉ × ⌈W/2⌉`), one axis at a time. candle's own max-pool has
/// no backward pass when the stride differs from the window, so this is
/// built from slices and elementwise maxima, which have one.
fn max_pool_3x3_stride_2(x: &Tensor) -> Result<Tensor> {
    max_pool_axis(&max_pool_axis(x, 2)?, 3)
}

/// The 3-wide, stride-2, padding-1 max along `dim`.
fn max_pool_axis(x: &Tensor, dim: usize) -> Result<Tensor> {
    let size = x.dim(dim)?;
    let out = size.div_ceil(2);
    // Padding by repeating the edge value is exact for a max: every window
    // that reaches into the padding also holds the edge. Padding to 2·out + 2
    // makes every window start a reshape away.
    let padded = x.pad_with_same(dim, 1, 2 * out + 1 - size)?;
    let mut pooled: Option<Tensor> = None;
    for offset in 0..3 {
        // Elements offset, offset + 2, …: pairs along `dim`, first of each.
        let mut pairs = padded.dims().to_vec();
        pairs[dim] = out;
        pairs.insert(dim + 1, 2);
        let picked = padded
            .narrow(dim, offset, 2 * out)?
            .reshape(pairs)?
            .narrow(dim + 1, 0, 1)?
            .squeeze(dim + 1)?;
        pooled = Some(match pooled {
            None => picked,
            Some(best) => best.maximum(&picked)?,
        });
    }
    Ok(pooled.expect("three offsets"))
}

/// What turns observations into the heads' (or the core's) input.
#[derive(Debug)]
enum Body {
    /// MLP towers: the policy's (the one torso with a core) and the value's
    /// (empty with a core).
    Towers { policy: Vec<Dense>, value: Vec<Dense> },
    /// One convolutional torso for both heads.
    Conv(ConvTorso),
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
    body: Body,
    lstm: Option<LstmCell>,
    policy_head: Dense,
    value_head: Dense,
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
        let tower = |prefix: &str, rng: &mut rand_chacha::ChaCha8Rng, params: &mut Vec<(String, Var)>| -> Result<(Vec<Dense>, usize)> {
            let mut layers = Vec::new();
            let mut width = spec.observation_size;
            for (i, &out) in config.hidden.iter().enumerate() {
                let (layer, named) = Dense::new(&format!("{prefix}.{i}"), width, out, 1.0, rng, device)?;
                layers.push(layer);
                params.extend(named);
                width = out;
            }
            Ok((layers, width))
        };
        let (body, torso_width, value_width) = match (config.torso, spec.frame) {
            (Torso::Mlp, _) => {
                let (policy, torso_width) = tower("policy_tower", &mut rng, &mut params)?;
                let (value, value_width) = match config.core {
                    Core::None => tower("value_tower", &mut rng, &mut params)?,
                    Core::Lstm => (Vec::new(), torso_width),
                };
                (Body::Towers { policy, value }, torso_width, value_width)
            }
            (torso, Some(frame)) => {
                let conv = ConvTorso::new(torso, frame, &mut rng, device, &mut params)?;
                (Body::Conv(conv), CNN_FEATURES, CNN_FEATURES)
            }
            (_, None) => unreachable!("check_spec refuses a CNN torso without frames"),
        };
        let (lstm, policy_width, value_width) = match config.core {
            Core::None => (None, torso_width, value_width),
            Core::Lstm => {
                let size = config.lstm_size;
                let (input, named) = Dense::new("lstm.input", torso_width, 4 * size, 1.0, &mut rng, device)?;
                params.extend(named);
                if config.lstm_forget_bias != 0.0 {
                    // Gates are laid out [i, f, g, o]: the second block is the forget gate's.
                    let bias: Vec<f32> = (0..4 * size)
                        .map(|k| if k / size == 1 { config.lstm_forget_bias as f32 } else { 0.0 })
                        .collect();
                    input.bias.set(&Tensor::from_vec(bias, 4 * size, device)?)?;
                }
                let (recurrent, named) = Dense::new("lstm.recurrent", size, 4 * size, 1.0, &mut rng, device)?;
                params.extend(named);
                (Some(LstmCell { input, recurrent, size }), size, size)
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
            body,
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
    /// `observations`: `[N, observation_size]` f32 (frames as 0..=255).
    ///
    /// # Errors
    /// With a recurrent core, which needs [`ActorCritic::step`].
    pub fn forward(&self, observations: &Tensor) -> Result<PolicyOutput> {
        if self.is_recurrent() {
            candle_core::bail!("a recurrent network steps with its state: use step or unroll");
        }
        let x = self.scaled(observations)?;
        let (policy_features, value_features) = match &self.body {
            Body::Towers { policy, value } => (self.tower(policy, &x)?, self.tower(value, &x)?),
            Body::Conv(conv) => {
                let features = conv.forward(&x)?;
                (features.clone(), features)
            }
        };
        let logits = self.policy_head.forward(&policy_features)?;
        let values = self.value_head.forward(&value_features)?.squeeze(1)?;
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
        let features = self.core_input(observations)?;
        let next = lstm.step(&features, &state)?;
        let logits = self.policy_head.forward(&next.h)?;
        let values = self.value_head.forward(&next.h)?.squeeze(1)?;
        Ok((PolicyOutput { logits, values }, next))
    }

    /// `T` steps of `B` sequences, time-major: `observations` `[T·B,
    /// observation_size]`, `is_first` `[T·B]`, `state` the state before the
    /// first step. Returns outputs `[T·B, …]` in the same order and the
    /// state after the last step. The torso and the LSTM's input projection
    /// run on all steps at once; only the recurrence goes step by step.
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
        let projected = lstm.project(&self.core_input(observations)?)?;
        let keep = (1.0 - is_first.to_dtype(DType::F32)?)?.unsqueeze(1)?;
        let mut state = state.clone();
        let mut hs = Vec::with_capacity(steps);
        for t in 0..steps {
            state = state.masked(&keep.narrow(0, t * b, b)?)?;
            state = lstm.step_projected(&projected.narrow(0, t * b, b)?, &state)?;
            hs.push(state.h.clone());
        }
        let h = Tensor::cat(&hs, 0)?;
        let logits = self.policy_head.forward(&h)?;
        let values = self.value_head.forward(&h)?.squeeze(1)?;
        Ok((PolicyOutput { logits, values }, state))
    }

    /// Frames scaled to 0..=1 for an MLP (a CNN's first layer scales its
    /// weight instead); vector observations as they are.
    fn scaled(&self, observations: &Tensor) -> Result<Tensor> {
        match (&self.body, self.spec.frame) {
            (Body::Towers { .. }, Some(_)) => observations.affine(FRAME_SCALE, 0.0),
            _ => Ok(observations.clone()),
        }
    }

    /// The one torso's features, the LSTM's input.
    fn core_input(&self, observations: &Tensor) -> Result<Tensor> {
        let x = self.scaled(observations)?;
        match &self.body {
            Body::Towers { policy, .. } => self.tower(policy, &x),
            Body::Conv(conv) => conv.forward(&x),
        }
    }

    fn tower(&self, layers: &[Dense], input: &Tensor) -> Result<Tensor> {
        let mut x = input.clone();
        for layer in layers {
            x = layer.forward(&x)?;
            x = match self.config.activation {
                Activation::Tanh => activation::tanh(&x)?,
                Activation::Relu => x.relu()?,
            };
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_forget_bias_sets_only_the_forget_gate_block() {
        let config = NetworkConfig {
            hidden: vec![16],
            core: Core::Lstm,
            lstm_size: 8,
            lstm_forget_bias: 1.0,
            ..NetworkConfig::default()
        };
        let net = ActorCritic::new(SPEC, &config, 3, &Device::Cpu).unwrap();
        let bias = net.params().iter().find(|(name, _)| name == "lstm.input.bias").unwrap();
        let bias = values(bias.1.as_tensor());
        let expected: Vec<f32> = (0..32).map(|k| if (8..16).contains(&k) { 1.0 } else { 0.0 }).collect();
        assert_eq!(bias, expected);
        // The rest of the initialisation is the same as without the bias.
        let plain = lstm();
        let weight = |net: &ActorCritic| values(net.params().iter().find(|(n, _)| n == "lstm.input.weight").unwrap().1.as_tensor());
        assert_eq!(weight(&net), weight(&plain));
        let bad = NetworkConfig {
            lstm_forget_bias: f64::NAN,
            ..config
        };
        assert!(bad.validate().unwrap_err().contains("network.lstm_forget_bias"));
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

#[cfg(test)]
mod cnn_tests {
    use super::*;

    const ATARI: FrameShape = FrameShape {
        channels: 4,
        height: 84,
        width: 84,
    };
    /// Catch's frame: 10×5 cells of 4×4 pixels.
    const CATCH: FrameShape = FrameShape {
        channels: 1,
        height: 40,
        width: 20,
    };

    fn config(torso: Torso) -> NetworkConfig {
        NetworkConfig {
            torso,
            ..NetworkConfig::default()
        }
    }

    /// `n` frames of pseudo-random intensities 0..=255.
    fn frames(frame: FrameShape, n: usize, seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n * frame.size()).map(|_| f32::from(rng.random::<u8>())).collect();
        Tensor::from_vec(v, (n, frame.size()), &Device::Cpu).unwrap()
    }

    fn conv_weights(net: &ActorCritic) -> Vec<&str> {
        net.params()
            .iter()
            .filter(|(_, v)| v.dims().len() == 4)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    #[test]
    fn cnn_torsos_shape_their_outputs_on_atari_and_catch_frames() {
        for torso in [Torso::ShallowCnn, Torso::DeepResnet] {
            for (frame, actions) in [(ATARI, 6), (CATCH, 3)] {
                let net = ActorCritic::new(EnvSpec::frames(frame, actions), &config(torso), 0, &Device::Cpu).unwrap();
                let out = net.forward(&frames(frame, 2, 1)).unwrap();
                assert_eq!(out.logits.dims(), &[2, actions], "{torso:?} on {frame:?}");
                assert_eq!(out.values.dims(), &[2], "{torso:?} on {frame:?}");
                assert!(
                    out.logits
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .all(|v| v.is_finite())
                );
            }
        }
        // The fully connected layer reads what the convolutions leave:
        // 32×9×9 after the shallow torso on 84×84, 32×11×11 after the deep one.
        let fc_inputs = |torso| {
            let net = ActorCritic::new(EnvSpec::frames(ATARI, 6), &config(torso), 0, &Device::Cpu).unwrap();
            let (_, fc) = net.params().iter().find(|(n, _)| n == "torso.fc.weight").unwrap();
            fc.dims().to_vec()
        };
        assert_eq!(fc_inputs(Torso::ShallowCnn), vec![256, 32 * 9 * 9]);
        assert_eq!(fc_inputs(Torso::DeepResnet), vec![256, 32 * 11 * 11]);
    }

    #[test]
    fn the_deep_torso_has_fifteen_conv_layers_and_the_shallow_two() {
        let deep = ActorCritic::new(EnvSpec::frames(ATARI, 6), &config(Torso::DeepResnet), 0, &Device::Cpu).unwrap();
        let convs = conv_weights(&deep);
        assert_eq!(convs.len(), 15, "{convs:?}");
        let channels: Vec<usize> = deep
            .params()
            .iter()
            .filter(|(_, v)| v.dims().len() == 4)
            .map(|(_, v)| v.dims()[0])
            .collect();
        assert_eq!(channels, [[16; 5], [32; 5], [32; 5]].concat());
        let shallow = ActorCritic::new(EnvSpec::frames(ATARI, 6), &config(Torso::ShallowCnn), 0, &Device::Cpu).unwrap();
        let shapes: Vec<Vec<usize>> = shallow
            .params()
            .iter()
            .filter(|(_, v)| v.dims().len() == 4)
            .map(|(_, v)| v.dims().to_vec())
            .collect();
        assert_eq!(shapes, vec![vec![16, 4, 8, 8], vec![32, 16, 4, 4]]);
        // One torso for both heads: no value tower.
        assert!(!deep.params().iter().any(|(n, _)| n.contains("tower")));
    }

    /// A loss on both heads reaches every parameter, feed-forward and
    /// through an LSTM core.
    #[test]
    fn gradients_reach_every_cnn_parameter() {
        for torso in [Torso::ShallowCnn, Torso::DeepResnet] {
            for core in [Core::None, Core::Lstm] {
                let config = NetworkConfig {
                    torso,
                    core,
                    lstm_size: 16,
                    ..NetworkConfig::default()
                };
                let net = ActorCritic::new(EnvSpec::frames(CATCH, 3), &config, 2, &Device::Cpu).unwrap();
                let (steps, b) = (2, 3);
                let is_first = Tensor::zeros(steps * b, DType::F32, &Device::Cpu).unwrap();
                let (out, _) = net
                    .unroll(&frames(CATCH, steps * b, 3), &is_first, steps, &net.initial_state(b).unwrap())
                    .unwrap();
                let pick = Tensor::new(&[1f32, -2.0, 0.5], &Device::Cpu).unwrap();
                let policy_loss = out.logits.broadcast_mul(&pick).unwrap().sum_all().unwrap();
                let value_loss = out.values.sqr().unwrap().mean_all().unwrap();
                let grads = (policy_loss + value_loss).unwrap().backward().unwrap();
                for (name, var) in net.params() {
                    let grad = grads
                        .get(var.as_tensor())
                        .unwrap_or_else(|| panic!("{torso:?}/{core:?}: no gradient for {name}"));
                    let norm = grad.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(norm > 0.0 && norm.is_finite(), "{torso:?}/{core:?}: gradient of {name} is {norm}");
                }
            }
        }
    }

    /// The pool against its definition: the max over each 3×3 window at
    /// stride 2 of the input padded by one with −∞.
    #[test]
    fn max_pool_matches_the_padded_window_maximum() {
        for (h, w) in [(5, 4), (6, 7), (1, 2), (84, 84)] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((h * 100 + w) as u64);
            let (n, c) = (2, 3);
            let v: Vec<f32> = (0..n * c * h * w).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x = Tensor::from_vec(v.clone(), (n, c, h, w), &Device::Cpu).unwrap();
            let pooled = max_pool_3x3_stride_2(&x).unwrap();
            let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
            assert_eq!(pooled.dims(), &[n, c, ho, wo]);
            let got = pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut expected = Vec::new();
            for plane in v.chunks(h * w) {
                for i in 0..ho {
                    for j in 0..wo {
                        let mut best = f32::NEG_INFINITY;
                        for y in (2 * i).saturating_sub(1)..(2 * i + 2).min(h) {
                            for x in (2 * j).saturating_sub(1)..(2 * j + 2).min(w) {
                                best = best.max(plane[y * w + x]);
                            }
                        }
                        expected.push(best);
                    }
                }
            }
            assert_eq!(got, expected, "{h}×{w}");
        }
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

    /// A convolution that folds a scale into its weight equals the plain one
    /// on the scaled input, values and weight gradients.
    #[test]
    fn a_scaled_convolution_equals_the_convolution_of_the_scaled_input() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (mut scaled, _) = Conv2d::new("c", 2, 3, 3, 2, 1, &mut rng, &Device::Cpu).unwrap();
        scaled.input_scale = FRAME_SCALE;
        scaled.input_grad = false;
        let plain = Conv2d {
            weight: scaled.weight.clone(),
            bias: scaled.bias.clone(),
            input_scale: 1.0,
            ..scaled
        };
        let x = frames(
            FrameShape {
                channels: 2,
                height: 7,
                width: 6,
            },
            3,
            9,
        )
        .reshape((3, 2, 7, 6))
        .unwrap();
        let ys = scaled.forward(&x).unwrap();
        let yp = plain.forward(&x.affine(FRAME_SCALE, 0.0).unwrap()).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let near = |a: Vec<f32>, b: Vec<f32>| {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        };
        near(flat(&ys), flat(&yp));
        let gs = ys.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gp = yp.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let w = scaled.weight.as_tensor();
        near(flat(gs.get(w).unwrap()), flat(gp.get(w).unwrap()));
    }

    #[test]
    fn a_cnn_torso_refuses_vector_observations_and_too_small_frames() {
        let err = config(Torso::ShallowCnn).check_spec(&EnvSpec::vector(4, 2)).unwrap_err();
        assert!(err.contains("network.torso") && err.contains("shallow_cnn"), "{err}");
        assert!(ActorCritic::new(EnvSpec::vector(4, 2), &config(Torso::DeepResnet), 0, &Device::Cpu).is_err());
        let tiny = FrameShape {
            channels: 1,
            height: 16,
            width: 40,
        };
        let err = config(Torso::ShallowCnn).check_spec(&EnvSpec::frames(tiny, 2)).unwrap_err();
        assert!(err.contains("16×40"), "{err}");
        assert!(config(Torso::DeepResnet).check_spec(&EnvSpec::frames(tiny, 2)).is_ok());
        assert!(NetworkConfig::default().check_spec(&EnvSpec::frames(CATCH, 3)).is_ok());
        assert!(config(Torso::ShallowCnn).check_spec(&EnvSpec::frames(CATCH, 3)).is_ok());
    }
}
