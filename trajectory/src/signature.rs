//! What every item of one replay table agrees on, so that a learner can
//! stack items into a batch without checking them again, and which steps of
//! a sequence are real decisions.
//!
//! Replay computes an incoming item's signature when it validates it (once,
//! at its door) and refuses items whose signature differs from the table's.
//! A learner compares the signature of what it samples with the one its
//! network expects, which catches actors running another environment.

use std::fmt;

use crate::{EnvSpec, StateSpec};

/// The shapes and types of one table's items (the step count aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    pub env: EnvSpec,
    /// The stored recurrent state, `None` for feed-forward agents.
    pub state: Option<StateSpec>,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, ", self.env)?;
        match &self.state {
            Some(state) => write!(f, "{state}"),
            None => write!(f, "no stored state"),
        }
    }
}

/// Whether a step whose observation has these flags is a real decision: an
/// action taken in a state that continues. The action recorded at an
/// episode's last observation (terminal or cut by a time limit) is never
/// carried out, so it teaches nothing and counts as no env step.
pub const fn is_decision(terminated: bool, truncated: bool) -> bool {
    !(terminated || truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameShape;

    #[test]
    fn only_steps_that_continue_an_episode_are_decisions() {
        assert!(is_decision(false, false));
        assert!(!is_decision(true, false));
        assert!(!is_decision(false, true));
        assert!(!is_decision(true, true));
    }

    #[test]
    fn signatures_print_every_part() {
        let frame = FrameShape {
            channels: 1,
            height: 2,
            width: 3,
        };
        let signature = Signature {
            env: EnvSpec::frames(frame, 3),
            state: Some(StateSpec::Lstm { hidden: 8 }),
        };
        assert_eq!(
            signature.to_string(),
            "u8 observations [1, 2, 3], 3 discrete actions, an LSTM state of 8 units"
        );
        let vector = Signature {
            env: EnvSpec::vector(4, 2),
            state: None,
        };
        assert_eq!(vector.to_string(), "f32 observations [4], 2 discrete actions, no stored state");
    }
}
