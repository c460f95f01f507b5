//! The network's shape as the config file gives it: [`NetworkConfig`] and
//! the choices in it (torso, activation, core), with the checks that a
//! config is sound and that its torso can read an environment's
//! observations. What the choices build lives in the sibling modules.

use serde::{Deserialize, Serialize};

use super::cnn::{conv_torso_output, min_frame_side};
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
    /// The DQN network of Mnih et al. (2015), which PPO's Atari setups
    /// (Baselines, CleanRL, Stable-Baselines3) train: conv 32×8×8 stride 4,
    /// ReLU, conv 64×4×4 stride 2, ReLU, conv 64×3×3 stride 1, ReLU, fully
    /// connected 512, ReLU.
    NatureCnn,
    /// MinAtar's network (Young & Tian 2019), on small frames such as its
    /// 10×10 grids: conv 16×3×3 stride 1, ReLU, fully connected 128, ReLU.
    SmallCnn,
}

impl Torso {
    /// The name the config uses.
    pub fn name(self) -> &'static str {
        match self {
            Torso::Mlp => "mlp",
            Torso::ShallowCnn => "shallow_cnn",
            Torso::DeepResnet => "deep_resnet",
            Torso::NatureCnn => "nature_cnn",
            Torso::SmallCnn => "small_cnn",
        }
    }
}

/// How the hidden layers' weights start: uniform in `±gain/√fan_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// Gain 1: PyTorch's default for its linear and convolution layers.
    /// Each ReLU layer then shrinks its input's scale by about 2.4.
    #[default]
    Torch,
    /// Gain √6 (He et al. 2015): a ReLU layer keeps its input's scale, so a
    /// deep torso's features start as large as its frames.
    He,
}

impl WeightInit {
    /// The factor on `1/√fan_in` that bounds a hidden layer's weights.
    pub fn gain(self) -> f64 {
        match self {
            Self::Torch => 1.0,
            Self::He => 6f64.sqrt(),
        }
    }
}

/// Where a Gaussian policy's log standard deviations come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStd {
    /// One learnt value per action dimension, the same in every state (as
    /// PPO's and IMPALA's continuous-control setups have it).
    #[default]
    Parameter,
    /// The policy head outputs them beside the means, per state.
    StateDependent,
}

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
    /// Chrono initialisation (Tallec & Ollivier 2018) for dependencies up
    /// to this many steps: each unit's forget bias is drawn as ln(u), u
    /// uniform in [1, horizon − 1], and its input bias set to the negative,
    /// so that the units' memory spans are spread up to the horizon and a
    /// cell that keeps its state does not also fill with every input. 0:
    /// off (lstm_forget_bias applies); otherwise it replaces lstm_forget_bias.
    pub lstm_chrono_horizon: u32,
    /// Continuous actions: where the Gaussian's log standard deviations
    /// come from.
    pub log_std: LogStd,
    /// Continuous actions: the log standard deviation every dimension
    /// starts with (0: a deviation of half the action range, in the
    /// normalised actions the policy acts in).
    pub initial_log_std: f64,
    /// Continuous actions: act with tanh of the Gaussian's sample, so every
    /// action lies inside the bounds; without it the environment's bounds
    /// clip the sample.
    pub squash: bool,
    /// How the torso's and towers' weights start; the policy and value
    /// heads keep their own gains (0.01 and 1) whatever this says.
    pub init: WeightInit,
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
            lstm_chrono_horizon: 0,
            log_std: LogStd::Parameter,
            initial_log_std: 0.0,
            squash: false,
            init: WeightInit::Torch,
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
        if self.lstm_chrono_horizon == 1 || self.lstm_chrono_horizon == 2 {
            return Err(format!(
                "network.lstm_chrono_horizon must be 0 (off) or at least 3, got {}",
                self.lstm_chrono_horizon
            ));
        }
        let (low, high) = crate::distribution::LOG_STD_RANGE;
        if !(f64::from(low)..=f64::from(high)).contains(&self.initial_log_std) {
            return Err(format!(
                "network.initial_log_std must be in [{low}, {high}] (the range log deviations are held to), got {}",
                self.initial_log_std
            ));
        }
        Ok(())
    }

    /// Whether the network can act in `spec`: a CNN torso needs frames
    /// large enough for its convolutions, an MLP reads any observation.
    pub fn check_spec(&self, spec: &EnvSpec) -> std::result::Result<(), String> {
        let torso = self.torso;
        if torso == Torso::Mlp {
            return Ok(());
        }
        let Some(frame) = spec.frame() else {
            return Err(format!(
                "network.torso = \"{}\" needs image observations, but the environment's are a flat vector of {} values (use torso = \"mlp\")",
                torso.name(),
                spec.observation_size()
            ));
        };
        if conv_torso_output(torso, frame).is_none() {
            let least = min_frame_side(torso);
            return Err(format!(
                "network.torso = \"{}\" needs frames of at least {least}×{least} pixels, but the environment's are {}×{}",
                torso.name(),
                frame.height,
                frame.width
            ));
        }
        Ok(())
    }
}
