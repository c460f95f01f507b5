//! The recurrent state a sequence starts from (R2D2's stored state), and the
//! one flat layout it has wherever it is not a pair of tensors: in the
//! actor's per-environment records, on the wire and in the learner's batch.
//!
//! An LSTM of `hidden` units has a state of two rows, `h` then `c`: shape
//! `[2, hidden]`, flat `[h | c]` of `2·hidden` values per environment. The
//! network's `RecurrentState::to_flat` and `from_flat` are the one
//! implementation of that layout.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a recurrent core carries from step to step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateSpec {
    /// An LSTM's hidden and cell state, `hidden` values each.
    Lstm { hidden: usize },
}

impl StateSpec {
    /// Values of one environment's state in the flat layout.
    pub const fn width(&self) -> usize {
        match self {
            Self::Lstm { hidden } => 2 * *hidden,
        }
    }

    /// Shape of one environment's state as a sequence stores it.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Self::Lstm { hidden } => vec![2, *hidden],
        }
    }

    /// The spec of a stored state of shape `shape`, if there is one.
    pub fn from_shape(shape: &[usize]) -> Option<Self> {
        match shape {
            &[2, hidden] if hidden > 0 => Some(Self::Lstm { hidden }),
            _ => None,
        }
    }
}

impl fmt::Display for StateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lstm { hidden } => write!(f, "an LSTM state of {hidden} units"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lstm_state_is_two_rows_of_hidden_values() {
        let spec = StateSpec::Lstm { hidden: 3 };
        assert_eq!((spec.width(), spec.shape()), (6, vec![2, 3]));
        assert_eq!(StateSpec::from_shape(&spec.shape()), Some(spec));
    }

    #[test]
    fn stored_shapes_name_their_spec() {
        assert_eq!(StateSpec::from_shape(&[2, 64]), Some(StateSpec::Lstm { hidden: 64 }));
        assert_eq!(StateSpec::from_shape(&[128]), None);
        assert_eq!(StateSpec::from_shape(&[2, 0]), None);
        assert_eq!(StateSpec::from_shape(&[3, 64]), None);
    }
}
