//! Actions as they pass from the policy to the environments: one buffer for
//! a whole vector of environments ([`Actions`]), one environment's view of
//! it ([`Action`]), and the bounds a continuous action is mapped into
//! ([`ActionBounds`]).
//!
//! A continuous policy acts in a normalised space where every dimension
//! spans `[-1, 1]`; the environment's own bounds, which come from its spec,
//! are applied on the way in by [`ActionBounds::to_env`] (clip, then
//! rescale). The policy's distribution is therefore the same whatever the
//! units of the environment, and a Gaussian of unit deviation covers half
//! of every range.

use std::fmt;

use crate::ActionSpec;

/// One environment's action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action<'a> {
    /// An index in `0..num_actions`.
    Discrete(usize),
    /// One value per dimension.
    Continuous(&'a [f32]),
}

impl<'a> Action<'a> {
    /// The index of a discrete action.
    ///
    /// # Panics
    /// For a continuous action: an environment with discrete actions was
    /// handed one, a programming error (the actor checks actions against the
    /// spec before stepping).
    pub fn index(self) -> usize {
        match self {
            Self::Discrete(index) => index,
            Self::Continuous(values) => panic!("a discrete environment was given the continuous action {values:?}"),
        }
    }

    /// The values of a continuous action, borrowed for as long as the action.
    ///
    /// # Panics
    /// For a discrete action (see [`Action::index`]).
    pub fn continuous(self) -> &'a [f32] {
        match self {
            Self::Continuous(values) => values,
            Self::Discrete(index) => panic!("a continuous environment was given the discrete action {index}"),
        }
    }
}

impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Discrete(index) => write!(f, "{index}"),
            Self::Continuous(values) => write!(f, "{values:?}"),
        }
    }
}

/// The actions of a vector of environments, one per environment, in one
/// buffer: indices, or `dims` values per environment row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Actions {
    Discrete(Vec<usize>),
    Continuous { dims: usize, values: Vec<f32> },
}

impl Actions {
    /// An empty buffer for actions of `spec`.
    pub fn empty(spec: ActionSpec) -> Self {
        match spec {
            ActionSpec::Discrete { .. } => Self::Discrete(Vec::new()),
            ActionSpec::Continuous { dims } => Self::Continuous { dims, values: Vec::new() },
        }
    }

    /// `n` actions of `spec`: index 0, or zeros (the middle of every range).
    pub fn zeros(spec: ActionSpec, n: usize) -> Self {
        match spec {
            ActionSpec::Discrete { .. } => Self::Discrete(vec![0; n]),
            ActionSpec::Continuous { dims } => Self::Continuous {
                dims,
                values: vec![0.0; n * dims],
            },
        }
    }

    /// Number of environments these actions are for.
    pub fn len(&self) -> usize {
        match self {
            Self::Discrete(indices) => indices.len(),
            Self::Continuous { dims, values } => values.len() / dims.max(&1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Environment `env_index`'s action.
    ///
    /// # Panics
    /// If `env_index >= self.len()`.
    pub fn get(&self, env_index: usize) -> Action<'_> {
        match self {
            Self::Discrete(indices) => Action::Discrete(indices[env_index]),
            Self::Continuous { dims, values } => Action::Continuous(&values[env_index * dims..(env_index + 1) * dims]),
        }
    }

    /// Appends `action`.
    ///
    /// # Panics
    /// If it is of the other kind or, continuous, of another width.
    pub fn push(&mut self, action: Action<'_>) {
        match (self, action) {
            (Self::Discrete(indices), Action::Discrete(index)) => indices.push(index),
            (Self::Continuous { dims, values }, Action::Continuous(action)) if action.len() == *dims => values.extend_from_slice(action),
            (this, action) => panic!("cannot append {action:?} to {this:?}"),
        }
    }

    /// Removes the first `n` actions.
    pub fn drain_front(&mut self, n: usize) {
        match self {
            Self::Discrete(indices) => drop(indices.drain(..n)),
            Self::Continuous { dims, values } => drop(values.drain(..n * *dims)),
        }
    }

    /// Removes every action, keeping the kind and the allocation.
    pub fn clear(&mut self) {
        match self {
            Self::Discrete(indices) => indices.clear(),
            Self::Continuous { values, .. } => values.clear(),
        }
    }

    /// Whether these actions fit `spec`: its kind, and for continuous
    /// actions its number of dimensions.
    pub fn fits(&self, spec: ActionSpec) -> bool {
        match (self, spec) {
            (Self::Discrete(_), ActionSpec::Discrete { .. }) => true,
            (Self::Continuous { dims, .. }, ActionSpec::Continuous { dims: expected }) => *dims == expected,
            _ => false,
        }
    }
}

/// The box a continuous action lives in, per dimension, in the
/// environment's units (Gymnasium's `Box.low` and `Box.high`).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionBounds {
    pub low: Vec<f32>,
    pub high: Vec<f32>,
}

impl ActionBounds {
    /// `[low, high]` in each of `dims` dimensions.
    pub fn uniform(dims: usize, low: f32, high: f32) -> Self {
        Self {
            low: vec![low; dims],
            high: vec![high; dims],
        }
    }

    pub fn dims(&self) -> usize {
        self.low.len()
    }

    /// Checks that both ends are finite and `low < high` in every
    /// dimension; the message names the first dimension that is not.
    pub fn check(&self) -> Result<(), String> {
        if self.low.len() != self.high.len() {
            return Err(format!("{} lower and {} upper bounds", self.low.len(), self.high.len()));
        }
        for (dim, (&low, &high)) in self.low.iter().zip(&self.high).enumerate() {
            if !(low.is_finite() && high.is_finite() && low < high) {
                return Err(format!(
                    "dimension {dim} has bounds [{low}, {high}]; fleet needs finite bounds with low < high"
                ));
            }
        }
        Ok(())
    }

    /// Maps normalised actions (`[-1, 1]` per dimension, clipped there
    /// first) into these bounds, row-major, `dims` values per action.
    pub fn to_env(&self, normalised: &[f32], env: &mut Vec<f32>) {
        let dims = self.dims();
        env.clear();
        env.extend(normalised.iter().enumerate().map(|(i, &u)| {
            let d = i % dims;
            let unit = (u.clamp(-1.0, 1.0) + 1.0) * 0.5;
            self.low[d] + unit * (self.high[d] - self.low[d])
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_hands_each_environment_its_own_action() {
        let discrete = Actions::Discrete(vec![2, 0, 1]);
        assert_eq!((discrete.len(), discrete.get(1)), (3, Action::Discrete(0)));
        let continuous = Actions::Continuous {
            dims: 2,
            values: vec![0.1, 0.2, 0.3, 0.4],
        };
        assert_eq!(continuous.len(), 2);
        assert_eq!(continuous.get(1).continuous(), &[0.3, 0.4]);
        assert!(continuous.fits(ActionSpec::Continuous { dims: 2 }));
        assert!(!continuous.fits(ActionSpec::Continuous { dims: 3 }));
        assert!(!continuous.fits(ActionSpec::Discrete { num_actions: 2 }));
        assert_eq!(Actions::zeros(ActionSpec::Continuous { dims: 3 }, 2).len(), 2);
        let mut kept = Actions::empty(ActionSpec::Continuous { dims: 2 });
        for i in 0..3 {
            kept.push(continuous.get(i % 2));
        }
        kept.drain_front(2);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept.get(0).continuous(), &[0.1, 0.2]);
    }

    #[test]
    fn normalised_actions_are_clipped_and_rescaled_into_the_bounds() {
        let bounds = ActionBounds {
            low: vec![-2.0, 0.0],
            high: vec![2.0, 10.0],
        };
        let mut env = Vec::new();
        bounds.to_env(&[0.0, 0.0, 1.0, -1.0, 3.0, -7.0, 0.5, 0.5], &mut env);
        assert_eq!(env, vec![0.0, 5.0, 2.0, 0.0, 2.0, 0.0, 1.0, 7.5]);
    }

    #[test]
    fn bounds_must_be_finite_and_ordered() {
        assert!(ActionBounds::uniform(3, -1.0, 1.0).check().is_ok());
        let open = ActionBounds {
            low: vec![-1.0, f32::NEG_INFINITY],
            high: vec![1.0, 1.0],
        };
        assert!(open.check().unwrap_err().contains("dimension 1"));
        assert!(ActionBounds::uniform(1, 1.0, 1.0).check().is_err());
    }

    #[test]
    #[should_panic(expected = "continuous action")]
    fn a_discrete_environment_refuses_a_continuous_action() {
        Action::Continuous(&[0.5]).index();
    }
}
