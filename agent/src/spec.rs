//! The shapes actor and learner must agree on: observation size and number of
//! discrete actions.

use serde::{Deserialize, Serialize};

/// Observation and action spaces of an environment, as the network sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvSpec {
    /// Length of the flat f32 observation vector.
    pub observation_size: usize,
    /// Number of discrete actions.
    pub num_actions: usize,
}
