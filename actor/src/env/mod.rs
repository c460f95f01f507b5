//! Environments the actor runs natively, behind one small trait, and the
//! registry that builds them by Gymnasium name.
//!
//! An [`Environment`] writes flat `f32` observations into a buffer the caller
//! owns, so stepping allocates nothing. Episode bookkeeping across many
//! environments (first/last flags, auto-reset, returns) lives in [`vector`];
//! policies, sequences and networking are not this module's business.

pub mod cartpole;
pub mod vector;

pub use cartpole::CartPole;
pub use vector::{FinishedEpisode, StepReport, VecEnv};

/// Names accepted by [`make`].
pub const ENVIRONMENTS: &[&str] = &[cartpole::NAME];

/// What one step of an environment produced besides the next observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Reward for the action just taken.
    pub reward: f32,
    /// The episode reached a terminal state: no future rewards, do not bootstrap.
    pub terminated: bool,
    /// The episode was cut short (time limit): the next state still has value.
    pub truncated: bool,
}

impl StepOutcome {
    /// Whether the observation this step produced is the episode's last one.
    pub fn is_last(&self) -> bool {
        self.terminated || self.truncated
    }
}

/// A single-agent environment with a flat `f32` observation and discrete actions.
pub trait Environment: Send {
    /// Length of the observation slices passed to [`reset`](Self::reset) and [`step`](Self::step).
    fn observation_size(&self) -> usize;

    /// Actions are `0..num_actions()`.
    fn num_actions(&self) -> usize;

    /// Starts a new episode and writes its first observation.
    ///
    /// # Panics
    /// If `observation.len() != self.observation_size()`.
    fn reset(&mut self, observation: &mut [f32]);

    /// Applies `action` and writes the next observation.
    ///
    /// # Panics
    /// If `action >= self.num_actions()` or the observation slice has the wrong
    /// length; both are programming errors, checked in release builds too.
    /// [`VecEnv::validate_actions`] checks actions without panicking.
    fn step(&mut self, action: usize, observation: &mut [f32]) -> StepOutcome;
}

/// Errors from building environments or feeding them actions.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("unknown environment `{0}` (known: CartPole-v1)")]
    Unknown(String),
    #[error("expected one action per environment ({expected}), got {got}")]
    ActionCount { expected: usize, got: usize },
    #[error("action {action} for environment {env_index} is out of range (actions are 0..{num_actions})")]
    BadAction {
        env_index: usize,
        action: usize,
        num_actions: usize,
    },
}

/// Builds the environment registered under `name`, its randomness seeded by `seed`.
pub fn make(name: &str, seed: u64) -> Result<Box<dyn Environment>, EnvError> {
    match name {
        cartpole::NAME => Ok(Box::new(CartPole::new(seed))),
        _ => Err(EnvError::Unknown(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_make_knows_every_listed_name() {
        for name in ENVIRONMENTS {
            let env = make(name, 0).expect("listed environments can be built");
            assert!(env.observation_size() > 0 && env.num_actions() > 0);
        }
    }

    #[test]
    fn env_make_rejects_unknown_names() {
        let error = make("CartPole-v0", 0).err().expect("unknown name must fail");
        assert!(matches!(&error, EnvError::Unknown(name) if name == "CartPole-v0"));
        assert!(error.to_string().contains("CartPole-v1"));
    }
}
