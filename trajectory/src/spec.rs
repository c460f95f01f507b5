//! Observation and action spaces as every stage sees them: what an
//! environment produces, what the network reads and what a sequence stores.
//!
//! Observations are one tensor per step: a flat f32 vector, or an image of
//! whole 0..=255 intensities that stays u8 from the environment to the
//! network's input. Actions are discrete (an index, with the behaviour
//! policy's logits) or continuous (an f32 vector, with the behaviour
//! policy's mean and log standard deviation). A new observation layout (an
//! image with a vector beside it) is a new [`ObservationSpec`] variant.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Element type of a tensor in a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    F32,
    U8,
    I64,
}

impl Dtype {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::U8 => 1,
            Self::I64 => 8,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::U8 => "u8",
            Self::I64 => "i64",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shape of an image observation, channels first (`[C, H, W]`). Stacked
/// frames count as channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl FrameShape {
    /// Pixels in one frame: `channels · height · width`.
    pub const fn size(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// What one step's observation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservationSpec {
    /// `size` f32 values.
    Vector { size: usize },
    /// An image of u8 intensities, scaled by 1/255 at the network's input.
    Frames(FrameShape),
}

impl ObservationSpec {
    /// Values per observation.
    pub const fn size(&self) -> usize {
        match self {
            Self::Vector { size } => *size,
            Self::Frames(frame) => frame.size(),
        }
    }

    /// The element type observations are produced, sent and stored in.
    pub const fn dtype(&self) -> Dtype {
        match self {
            Self::Vector { .. } => Dtype::F32,
            Self::Frames(_) => Dtype::U8,
        }
    }

    /// Shape of one observation: `[size]` or `[C, H, W]`.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Self::Vector { size } => vec![*size],
            Self::Frames(f) => vec![f.channels, f.height, f.width],
        }
    }

    /// The spec whose observations have `dtype` and `shape` (after the time
    /// dimension), if there is one.
    pub fn from_tensor(dtype: Dtype, shape: &[usize]) -> Option<Self> {
        match (dtype, shape) {
            (Dtype::F32, &[size]) => Some(Self::Vector { size }),
            (Dtype::U8, &[channels, height, width]) => Some(Self::Frames(FrameShape { channels, height, width })),
            _ => None,
        }
    }

    pub const fn frame(&self) -> Option<FrameShape> {
        match self {
            Self::Vector { .. } => None,
            Self::Frames(frame) => Some(*frame),
        }
    }
}

impl fmt::Display for ObservationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} observations {:?}", self.dtype(), self.shape())
    }
}

/// What one step's action is, and how the behaviour policy that chose it is
/// recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionSpec {
    /// An index in `0..num_actions`, stored as i64; the policy is recorded
    /// as its `num_actions` logits.
    Discrete { num_actions: usize },
    /// A vector of `dims` f32 values; the policy is recorded as a diagonal
    /// Gaussian's `dims` means then `dims` log standard deviations.
    Continuous { dims: usize },
}

impl ActionSpec {
    /// Values of the behaviour policy's distribution recorded per step.
    pub const fn policy_width(&self) -> usize {
        match self {
            Self::Discrete { num_actions } => *num_actions,
            Self::Continuous { dims } => 2 * *dims,
        }
    }

    /// Values one action is recorded as in a batch: an index, or `dims` values.
    pub const fn width(&self) -> usize {
        match self {
            Self::Discrete { .. } => 1,
            Self::Continuous { dims } => *dims,
        }
    }

    /// The number of discrete actions, or `None` for continuous ones.
    pub const fn num_discrete(&self) -> Option<usize> {
        match self {
            Self::Discrete { num_actions } => Some(*num_actions),
            Self::Continuous { .. } => None,
        }
    }
}

impl fmt::Display for ActionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Discrete { num_actions } => write!(f, "{num_actions} discrete actions"),
            Self::Continuous { dims } => write!(f, "continuous actions of {dims} dimensions"),
        }
    }
}

/// An environment's observation and action spaces, as the network sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvSpec {
    pub observation: ObservationSpec,
    pub action: ActionSpec,
}

impl EnvSpec {
    /// Flat f32 observations of `observation_size` values, discrete actions.
    pub const fn vector(observation_size: usize, num_actions: usize) -> Self {
        Self {
            observation: ObservationSpec::Vector { size: observation_size },
            action: ActionSpec::Discrete { num_actions },
        }
    }

    /// Image observations of shape `frame`, discrete actions.
    pub const fn frames(frame: FrameShape, num_actions: usize) -> Self {
        Self {
            observation: ObservationSpec::Frames(frame),
            action: ActionSpec::Discrete { num_actions },
        }
    }

    /// Values per observation.
    pub const fn observation_size(&self) -> usize {
        self.observation.size()
    }

    /// How observations are produced, sent and stored.
    pub const fn observation_dtype(&self) -> Dtype {
        self.observation.dtype()
    }

    /// The image shape, for image observations.
    pub const fn frame(&self) -> Option<FrameShape> {
        self.observation.frame()
    }

    /// Values of the behaviour policy recorded per step (logits for
    /// discrete actions).
    pub const fn policy_width(&self) -> usize {
        self.action.policy_width()
    }
}

impl fmt::Display for EnvSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.observation, self.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATARI: FrameShape = FrameShape {
        channels: 4,
        height: 84,
        width: 84,
    };

    #[test]
    fn frames_size_their_observations_and_travel_as_u8() {
        let spec = EnvSpec::frames(ATARI, 6);
        assert_eq!((spec.observation_size(), spec.policy_width()), (4 * 84 * 84, 6));
        assert_eq!(spec.observation_dtype(), Dtype::U8);
        assert_eq!(spec.observation.shape(), vec![4, 84, 84]);
        assert_eq!(EnvSpec::vector(4, 2).observation_dtype(), Dtype::F32);
        assert_eq!(EnvSpec::vector(4, 2).frame(), None);
    }

    #[test]
    fn observation_specs_are_recovered_from_tensor_shapes() {
        for spec in [ObservationSpec::Vector { size: 4 }, ObservationSpec::Frames(ATARI)] {
            assert_eq!(ObservationSpec::from_tensor(spec.dtype(), &spec.shape()), Some(spec));
        }
        assert_eq!(ObservationSpec::from_tensor(Dtype::U8, &[4]), None);
        assert_eq!(ObservationSpec::from_tensor(Dtype::F32, &[4, 84, 84]), None);
        assert_eq!(ObservationSpec::from_tensor(Dtype::I64, &[4]), None);
    }

    #[test]
    fn continuous_actions_record_a_mean_and_a_log_std_per_dimension() {
        let action = ActionSpec::Continuous { dims: 3 };
        assert_eq!((action.policy_width(), action.num_discrete()), (6, None));
        let discrete = ActionSpec::Discrete { num_actions: 5 };
        assert_eq!((discrete.policy_width(), discrete.num_discrete()), (5, Some(5)));
        assert_eq!(discrete.to_string(), "5 discrete actions");
    }
}
