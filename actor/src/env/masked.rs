//! CartPole-v1 seen without its velocities: a partially observed task whose
//! missing state has to be inferred from the history of observations.
//!
//! It wraps [`CartPole`], so dynamics, rewards, termination, the 500-step time
//! limit and the reset stream are exactly those of [`super::cartpole`]; only
//! the observation is cut down to `[x, theta]`.

use super::{CartPole, Environment, StepOutcome};
use fleet_trajectory::{Action, ActionBounds, ActionSpec, ObservationsMut};

/// Registry name.
pub const NAME: &str = "cartpole-masked";

/// Positions in CartPole's observation `[x, x_dot, theta, theta_dot]` that stay visible.
pub const VISIBLE: [usize; 2] = [0, 2];

const FULL_OBSERVATION_SIZE: usize = 4;

/// [`CartPole`] observing only `[x, theta]`.
///
/// Seeded with the same seed and given the same actions, it reports the same
/// outcomes as a plain [`CartPole`] and observes components 0 and 2 of its
/// observations. Stepping on after the episode has ended behaves as CartPole does.
pub struct MaskedCartPole {
    inner: CartPole,
    /// The wrapped environment's full observation, written before masking.
    full: [f32; FULL_OBSERVATION_SIZE],
}

impl MaskedCartPole {
    pub fn new(seed: u64) -> Self {
        Self {
            inner: CartPole::new(seed),
            full: [0.0; FULL_OBSERVATION_SIZE],
        }
    }

    /// The wrapped environment, whose state includes the hidden velocities.
    pub fn inner(&self) -> &CartPole {
        &self.inner
    }

    fn write_observation(&self, observation: &mut [f32]) {
        assert_eq!(
            observation.len(),
            VISIBLE.len(),
            "{NAME} observations have {} components",
            VISIBLE.len()
        );
        for (slot, &component) in observation.iter_mut().zip(&VISIBLE) {
            *slot = self.full[component];
        }
    }
}

impl Environment for MaskedCartPole {
    fn observation_size(&self) -> usize {
        VISIBLE.len()
    }

    fn action_spec(&self) -> ActionSpec {
        self.inner.action_spec()
    }

    fn action_bounds(&self) -> Option<ActionBounds> {
        self.inner.action_bounds()
    }

    fn physical_state(&self) -> Option<&[f64]> {
        self.inner.physical_state()
    }

    fn reset(&mut self, observation: ObservationsMut<'_>) {
        self.inner.reset(ObservationsMut::F32(&mut self.full));
        self.write_observation(observation.f32());
    }

    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
        let outcome = self.inner.step(action, ObservationsMut::F32(&mut self.full));
        self.write_observation(observation.f32());
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::cartpole::MAX_EPISODE_STEPS;
    use crate::env::make;

    /// A deterministic action pattern that mixes short and long episodes.
    fn action(step: usize) -> usize {
        (step * 7 + step / 3) % 5 % 2
    }

    #[test]
    fn env_masked_observes_positions_0_and_2_of_the_same_cartpole() {
        for seed in [0, 1, 42] {
            let mut masked = MaskedCartPole::new(seed);
            let mut plain = CartPole::new(seed);
            let (mut seen, mut full) = ([0.0f32; 2], [0.0f32; 4]);
            masked.reset(ObservationsMut::F32(&mut seen));
            plain.reset(ObservationsMut::F32(&mut full));
            assert_eq!(seen, [full[0], full[2]], "seed {seed}: reset");
            let mut episodes = 0;
            for step in 0..3000 {
                let ours = masked.step(Action::Discrete(action(step)), ObservationsMut::F32(&mut seen));
                let theirs = plain.step(Action::Discrete(action(step)), ObservationsMut::F32(&mut full));
                assert_eq!(ours, theirs, "seed {seed} step {step}: outcome");
                assert_eq!(seen, [full[0], full[2]], "seed {seed} step {step}: observation");
                assert_eq!(masked.inner().state(), plain.state());
                if ours.is_last() {
                    episodes += 1;
                    masked.reset(ObservationsMut::F32(&mut seen));
                    plain.reset(ObservationsMut::F32(&mut full));
                    assert_eq!(seen, [full[0], full[2]], "seed {seed} step {step}: reset");
                }
            }
            assert!(episodes >= 10, "seed {seed}: only {episodes} episodes");
        }
    }

    #[test]
    fn env_masked_keeps_the_time_limit() {
        let mut masked = MaskedCartPole::new(0);
        let mut seen = [0.0f32; 2];
        masked.reset(ObservationsMut::F32(&mut seen));
        for step in 1..=MAX_EPISODE_STEPS {
            // Balances with the hidden velocities, which only the wrapped CartPole knows.
            let [_, _, theta, theta_dot] = masked.inner().observation();
            let outcome = masked.step(
                Action::Discrete(usize::from(theta + 0.5 * theta_dot > 0.0)),
                ObservationsMut::F32(&mut seen),
            );
            assert!(!outcome.terminated, "step {step}");
            assert_eq!(outcome.truncated, step == MAX_EPISODE_STEPS, "step {step}");
        }
    }

    #[test]
    fn env_masked_is_registered_with_two_observations() {
        let mut env = make(NAME, 3).unwrap();
        assert_eq!((env.observation_size(), env.action_spec().policy_width()), (2, 2));
        let mut seen = [0.0f32; 2];
        env.reset(ObservationsMut::F32(&mut seen));
        let mut full = [0.0f32; 4];
        CartPole::new(3).reset(ObservationsMut::F32(&mut full));
        assert_eq!(seen, [full[0], full[2]]);
    }

    #[test]
    #[should_panic(expected = "2 components")]
    fn env_masked_rejects_a_full_size_observation_buffer() {
        MaskedCartPole::new(0).reset(ObservationsMut::F32(&mut [0.0; 4]));
    }
}
