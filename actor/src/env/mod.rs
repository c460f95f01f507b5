//! Environments the actor runs natively, behind one small trait, and the
//! registry that builds them by Gymnasium name.
//!
//! An [`Environment`] writes flat `f32` observations into a buffer the caller
//! owns, so stepping allocates nothing; image environments write pixel
//! intensities 0..=255 and report their frame shape. [`frame_stack`] wraps
//! any environment to stack its last k observations. Episode bookkeeping across many
//! environments (first/last flags, auto-reset, returns) lives in [`vector`];
//! policies, sequences and networking are not this module's business.

pub mod cartpole;
pub mod catch;
pub mod frame_stack;
pub mod masked;
pub mod memory_chain;
pub mod vector;

pub use cartpole::CartPole;
pub use catch::Catch;
pub use frame_stack::{FrameStack, check_frame_stack};
pub use masked::MaskedCartPole;
pub use memory_chain::MemoryChain;
pub use vector::{FinishedEpisode, StepReport, VecEnv};

use fleet_agent::{EnvSpec, FrameShape};

/// Names accepted by [`make`]. Besides these, `memory-chain-N` picks the
/// horizon of [`MemoryChain`]; [`check_name`] knows every accepted name.
pub const ENVIRONMENTS: &[&str] = &[cartpole::NAME, masked::NAME, memory_chain::NAME, catch::NAME];

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

    /// For image observations, their shape (`observation_size` is its
    /// size, the values whole intensities 0..=255); `None` for vectors.
    fn frame(&self) -> Option<FrameShape> {
        None
    }

    /// What the network needs to know of this environment.
    fn spec(&self) -> EnvSpec {
        match self.frame() {
            Some(frame) => EnvSpec::frames(frame, self.num_actions()),
            None => EnvSpec::vector(self.observation_size(), self.num_actions()),
        }
    }

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
    #[error(
        "unknown environment `{0}` (known: {known}; {family}-N sets the horizon, N in 1..={max})",
        known = ENVIRONMENTS.join(", "),
        family = memory_chain::NAME,
        max = memory_chain::MAX_HORIZON
    )]
    Unknown(String),
    #[error(
        "environment `{name}`: horizon `{value}` is not an integer in 1..={max}",
        max = memory_chain::MAX_HORIZON
    )]
    BadHorizon { name: String, value: String },
    #[error("frame stack of {0}: it must be in 1..={max}", max = frame_stack::MAX_FRAME_STACK)]
    BadFrameStack(usize),
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
        masked::NAME => Ok(Box::new(MaskedCartPole::new(seed))),
        catch::NAME => Ok(Box::new(Catch::new(seed))),
        _ => match memory_chain::horizon_from_name(name) {
            Some(horizon) => Ok(Box::new(MemoryChain::new(horizon?, seed))),
            None => Err(EnvError::Unknown(name.to_owned())),
        },
    }
}

/// [`make`], with the last `frame_stack` observations stacked into one
/// (1: the environment as it is).
pub fn make_stacked(name: &str, frame_stack: usize, seed: u64) -> Result<Box<dyn Environment>, EnvError> {
    check_frame_stack(frame_stack)?;
    let env = make(name, seed)?;
    Ok(if frame_stack == 1 {
        env
    } else {
        Box::new(FrameStack::new(env, frame_stack))
    })
}

/// Whether [`make`] accepts `name`, with the error it would give if not,
/// without building anything. Unlike a lookup in [`ENVIRONMENTS`], this
/// accepts every `memory-chain-N`.
pub fn check_name(name: &str) -> Result<(), EnvError> {
    if ENVIRONMENTS.contains(&name) {
        return Ok(());
    }
    match memory_chain::horizon_from_name(name) {
        Some(horizon) => horizon.map(drop),
        None => Err(EnvError::Unknown(name.to_owned())),
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
            assert_eq!(env.spec().observation_size, env.observation_size());
        }
    }

    #[test]
    fn image_environments_report_their_frames_and_stacks_multiply_channels() {
        let spec = make("catch", 0).unwrap().spec();
        assert_eq!(spec.frame, Some(catch::FRAME));
        assert_eq!(make("CartPole-v1", 0).unwrap().spec().frame, None);
        let stacked = make_stacked("catch", 4, 0).unwrap().spec();
        assert_eq!(
            stacked.frame,
            Some(FrameShape {
                channels: 4,
                ..catch::FRAME
            })
        );
        assert_eq!(stacked.observation_size, 4 * catch::FRAME.size());
        assert_eq!(make_stacked("CartPole-v1", 2, 0).unwrap().observation_size(), 8);
        assert!(matches!(make_stacked("catch", 0, 0), Err(EnvError::BadFrameStack(0))));
    }

    #[test]
    fn env_make_rejects_unknown_names() {
        let error = make("CartPole-v0", 0).err().expect("unknown name must fail");
        assert!(matches!(&error, EnvError::Unknown(name) if name == "CartPole-v0"));
        let message = error.to_string();
        for name in ENVIRONMENTS {
            assert!(message.contains(name), "{message} does not list {name}");
        }
    }

    #[test]
    fn env_check_name_agrees_with_make() {
        for name in ENVIRONMENTS
            .iter()
            .copied()
            .chain(["memory-chain-50", "memory-chain-0", "memory-chain-x", "Pong", "cartpole"])
        {
            assert_eq!(check_name(name).is_ok(), make(name, 0).is_ok(), "{name}");
        }
        assert!(check_name("memory-chain-50").is_ok());
        assert!(matches!(check_name("memory-chain-0"), Err(EnvError::BadHorizon { .. })));
        assert!(matches!(check_name("Pong"), Err(EnvError::Unknown(_))));
    }
}
