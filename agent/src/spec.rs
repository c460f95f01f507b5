//! The shapes actor and learner must agree on: observation size, whether the
//! observations are image frames (and their shape), and the number of
//! discrete actions.

use fleet_proto::pb::Dtype;
use serde::{Deserialize, Serialize};

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

/// Observation and action spaces of an environment, as the network sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvSpec {
    /// Length of the flat observation vector (`frame.size()` for frames).
    pub observation_size: usize,
    /// Number of discrete actions.
    pub num_actions: usize,
    /// Set when observations are image frames: pixel intensities 0..=255,
    /// stored and sent as u8 and scaled by 1/255 at the network's input.
    #[serde(default)]
    pub frame: Option<FrameShape>,
}

impl EnvSpec {
    /// Flat f32 observations of `observation_size` values.
    pub const fn vector(observation_size: usize, num_actions: usize) -> Self {
        Self {
            observation_size,
            num_actions,
            frame: None,
        }
    }

    /// Image observations of shape `frame`.
    pub const fn frames(frame: FrameShape, num_actions: usize) -> Self {
        Self {
            observation_size: frame.size(),
            num_actions,
            frame: Some(frame),
        }
    }

    /// How observations travel and are stored: u8 for frames (their values
    /// are whole intensities, so nothing is lost), f32 otherwise.
    pub const fn observation_dtype(&self) -> Dtype {
        match self.frame {
            Some(_) => Dtype::U8,
            None => Dtype::F32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_size_their_observations_and_travel_as_u8() {
        let frame = FrameShape {
            channels: 4,
            height: 84,
            width: 84,
        };
        let spec = EnvSpec::frames(frame, 6);
        assert_eq!((spec.observation_size, spec.num_actions), (4 * 84 * 84, 6));
        assert_eq!(spec.observation_dtype(), Dtype::U8);
        assert_eq!(EnvSpec::vector(4, 2).observation_dtype(), Dtype::F32);
        assert_eq!(EnvSpec::vector(4, 2).frame, None);
    }
}
