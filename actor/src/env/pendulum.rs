//! Pendulum-v1 with the same dynamics as Gymnasium's, to the last bit.
//!
//! The state `[theta, theta_dot]` is kept in `f64` and every expression is
//! evaluated in Gymnasium's order and types: the torque is a NumPy `float32`,
//! so its clipping, `3 * torque` and the torque's share of the cost are
//! `f32` arithmetic, and squares are C's `pow`, as NumPy's scalar power is
//! (see `numpy_square`). The fixture test replays transitions recorded from
//! Gymnasium and compares the bit patterns of the states and rewards. The
//! observation is `[cos theta, sin theta, theta_dot]` cast to `f32`; the
//! 200-step time limit of `gymnasium.make("Pendulum-v1")` is built in (the
//! pendulum never terminates). Only the reset's random stream differs: it
//! comes from a seeded ChaCha8 generator, not NumPy's. Rendering is not
//! provided here; `physical_state` gives the state to draw.

use std::f64::consts::{PI, TAU};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Environment, StepOutcome};
use fleet_trajectory::{Action, ActionBounds, ActionSpec, ObservationsMut};

/// Registry name.
pub const NAME: &str = "Pendulum-v1";

pub const GRAVITY: f64 = 10.0;
pub const MASS: f64 = 1.0;
pub const LENGTH: f64 = 1.0;
/// The angular velocity is clipped to ±this after every step.
pub const MAX_SPEED: f64 = 8.0;
/// Torques are clipped to ±this (the action box).
pub const MAX_TORQUE: f32 = 2.0;
/// Seconds between state updates.
pub const TIME_STEP: f64 = 0.05;
/// Steps after which an episode is truncated.
pub const MAX_EPISODE_STEPS: u32 = 200;
/// Resets draw the angle uniformly from `[-RESET_ANGLE, RESET_ANGLE)`...
pub const RESET_ANGLE: f64 = PI;
/// ...and the angular velocity from `[-RESET_SPEED, RESET_SPEED)`.
pub const RESET_SPEED: f64 = 1.0;

const OBSERVATION_SIZE: usize = 3;

/// `x ** 2` as NumPy computes it for a `float64` scalar: C's `pow(x, 2.0)`,
/// which is not always the correctly rounded `x * x` (one square in a few
/// thousand differs in its last bit). The exponent goes through
/// [`std::hint::black_box`] so that the compiler does not turn the call
/// into `x * x`.
pub(crate) fn numpy_square(x: f64) -> f64 {
    x.powf(std::hint::black_box(2.0))
}

/// `x ** 2` for a NumPy `float32` scalar: C's `powf(x, 2.0f)`.
pub(crate) fn numpy_square_f32(x: f32) -> f32 {
    x.powf(std::hint::black_box(2.0))
}

/// Gymnasium's `angle_normalize`: `((x + pi) % (2 * pi)) - pi`, with
/// Python's remainder, which takes the divisor's sign.
fn angle_normalize(x: f64) -> f64 {
    let remainder = (x + PI) % TAU;
    let remainder = if remainder < 0.0 { remainder + TAU } else { remainder };
    remainder - PI
}

#[derive(Debug, Clone)]
pub struct Pendulum {
    /// `[theta, theta_dot]`, theta 0 upright, integrated in `f64` like Gymnasium.
    state: [f64; 2],
    /// Steps taken since the last reset, for the time limit.
    elapsed_steps: u32,
    /// Source of reset states only; the dynamics are deterministic.
    rng: ChaCha8Rng,
}

impl Pendulum {
    pub fn new(seed: u64) -> Self {
        Self {
            state: [0.0; 2],
            elapsed_steps: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The physical state `[theta, theta_dot]`.
    pub fn state(&self) -> [f64; 2] {
        self.state
    }

    /// Steps taken since the last reset.
    pub fn elapsed_steps(&self) -> u32 {
        self.elapsed_steps
    }

    /// Places the environment in `state` as if `elapsed_steps` steps of the
    /// episode had been taken. For tests and replays.
    pub fn set_state(&mut self, state: [f64; 2], elapsed_steps: u32) {
        self.state = state;
        self.elapsed_steps = elapsed_steps;
    }

    /// The observation of the current state: `[cos theta, sin theta,
    /// theta_dot]`, computed in `f64` and cast to `f32`.
    pub fn observation(&self) -> [f32; 3] {
        let [theta, theta_dot] = self.state;
        [theta.cos() as f32, theta.sin() as f32, theta_dot as f32]
    }

    fn write_observation(&self, observation: &mut [f32]) {
        assert_eq!(
            observation.len(),
            OBSERVATION_SIZE,
            "Pendulum-v1 observations have {OBSERVATION_SIZE} components"
        );
        observation.copy_from_slice(&self.observation());
    }

    /// One semi-implicit Euler step under `torque` (clipped to the action
    /// box first); returns the reward, `-cost`, in `f64`. Every expression
    /// is grouped as Gymnasium's and computed in the type NumPy gives it.
    fn advance(&mut self, torque: f32) -> f64 {
        let [theta, theta_dot] = self.state;
        let torque = torque.clamp(-MAX_TORQUE, MAX_TORQUE);
        let cost = numpy_square(angle_normalize(theta)) + 0.1 * numpy_square(theta_dot) + f64::from(0.001 * numpy_square_f32(torque));

        // `3.0 / (m * l**2)` is a Python float, so NumPy multiplies it with
        // the float32 torque in float32.
        let torque_acceleration = (3.0 / (MASS * (LENGTH * LENGTH))) as f32 * torque;
        let gravity_acceleration = 3.0 * GRAVITY / (2.0 * LENGTH) * theta.sin();
        let new_theta_dot = (theta_dot + (gravity_acceleration + f64::from(torque_acceleration)) * TIME_STEP).clamp(-MAX_SPEED, MAX_SPEED);
        self.state = [theta + new_theta_dot * TIME_STEP, new_theta_dot];
        -cost
    }
}

impl Environment for Pendulum {
    fn observation_size(&self) -> usize {
        OBSERVATION_SIZE
    }

    fn action_spec(&self) -> ActionSpec {
        ActionSpec::Continuous { dims: 1 }
    }

    fn action_bounds(&self) -> Option<ActionBounds> {
        Some(ActionBounds::uniform(1, -MAX_TORQUE, MAX_TORQUE))
    }

    fn physical_state(&self) -> Option<&[f64]> {
        Some(&self.state)
    }

    fn reset(&mut self, observation: ObservationsMut<'_>) {
        self.state = [
            self.rng.random_range(-RESET_ANGLE..RESET_ANGLE),
            self.rng.random_range(-RESET_SPEED..RESET_SPEED),
        ];
        self.elapsed_steps = 0;
        self.write_observation(observation.f32());
    }

    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
        let &[torque] = action.continuous() else {
            panic!("Pendulum-v1 actions are one torque, got {action}");
        };
        let reward = self.advance(torque);
        self.elapsed_steps = self.elapsed_steps.saturating_add(1);
        self.write_observation(observation.f32());
        StepOutcome {
            reward: reward as f32,
            terminated: false,
            truncated: self.elapsed_steps >= MAX_EPISODE_STEPS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::recorded::{self, Dtype, Port};
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/pendulum_v1.json");

    impl Port for Pendulum {
        fn place(&mut self, state: &[f64], dtype: Dtype, elapsed_steps: u32) {
            assert_eq!(dtype, Dtype::Float64);
            self.set_state(state.try_into().expect("two components"), elapsed_steps);
        }

        fn elapsed_steps(&self) -> u32 {
            self.elapsed_steps
        }

        fn exact_reward(&self, action: Action<'_>) -> f64 {
            self.clone().advance(action.continuous()[0])
        }
    }

    fn fixture() -> recorded::Fixture<Vec<f32>> {
        recorded::load(FIXTURE, NAME)
    }

    #[test]
    fn env_pendulum_matches_every_recorded_gymnasium_step() {
        let checked = recorded::check_every_step(&mut Pendulum::new(0), &fixture());
        assert!(checked > 400, "only {checked} recorded steps");
    }

    #[test]
    fn env_pendulum_replays_whole_recorded_episodes() {
        recorded::replay_episodes(&mut Pendulum::new(0), &fixture());
    }

    #[test]
    fn env_pendulum_fixture_covers_clipping_and_the_time_limit() {
        let fixture = fixture();
        let endings = recorded::check_time_limit(&fixture, MAX_EPISODE_STEPS);
        assert!(endings.iter().all(|&ending| ending != "terminated"));
        let steps = || fixture.episodes.iter().flat_map(|episode| &episode.steps);
        assert!(steps().any(|step| step.action[0] > MAX_TORQUE) && steps().any(|step| step.action[0] < -MAX_TORQUE));
        assert!(steps().any(|step| step.after()[1] == MAX_SPEED) && steps().any(|step| step.after()[1] == -MAX_SPEED));
        assert!(steps().any(|step| step.before()[0].abs() > TAU));
        let whole = fixture
            .episodes
            .iter()
            .filter(|episode| episode.steps.len() == MAX_EPISODE_STEPS as usize);
        assert!(whole.count() >= 2, "episodes run from reset to the time limit");
    }

    #[test]
    fn env_pendulum_observes_cos_sin_and_speed_of_the_reset_state() {
        for episode in fixture().episodes {
            if let (Some(state), Some(observation)) = (episode.reset_state(), episode.reset_observation) {
                let mut env = Pendulum::new(0);
                env.set_state([state[0], state[1]], 0);
                assert_eq!(env.observation().to_vec(), observation, "{}", episode.name);
            }
        }
    }

    #[test]
    fn env_pendulum_truncates_at_200_steps() {
        let mut env = Pendulum::new(4);
        let mut observation = [0.0f32; 3];
        env.reset(ObservationsMut::F32(&mut observation));
        for step in 1..=MAX_EPISODE_STEPS {
            let outcome = env.step(Action::Continuous(&[1.0]), ObservationsMut::F32(&mut observation));
            assert!(!outcome.terminated);
            assert_eq!(outcome.truncated, step == MAX_EPISODE_STEPS, "step {step}");
            assert!(outcome.reward <= 0.0);
            assert_eq!(observation, env.observation());
        }
    }

    #[test]
    fn env_pendulum_costs_the_clipped_torque() {
        let upright = |torque: f32| {
            let mut env = Pendulum::new(0);
            env.set_state([0.0, 0.0], 0);
            let outcome = env.step(Action::Continuous(&[torque]), ObservationsMut::F32(&mut [0.0; 3]));
            (outcome.reward, env.state())
        };
        assert_eq!(upright(0.0), (0.0, [0.0, 0.0]));
        assert_eq!(upright(7.5), upright(MAX_TORQUE));
        assert_eq!(upright(-7.5), upright(-MAX_TORQUE));
        assert_eq!(upright(MAX_TORQUE).0, -0.004);
    }

    #[test]
    fn env_pendulum_resets_uniformly_within_gymnasium_ranges() {
        let mut env = Pendulum::new(11);
        let mut observation = [0.0f32; 3];
        let (mut low, mut high) = ([f64::MAX; 2], [f64::MIN; 2]);
        for _ in 0..10_000 {
            env.reset(ObservationsMut::F32(&mut observation));
            assert_eq!(env.elapsed_steps(), 0);
            assert_eq!(observation, env.observation());
            for (component, (value, bound)) in env.state().into_iter().zip([RESET_ANGLE, RESET_SPEED]).enumerate() {
                assert!((-bound..bound).contains(&value), "{value}");
                low[component] = low[component].min(value / bound);
                high[component] = high[component].max(value / bound);
            }
        }
        for component in 0..2 {
            assert!(low[component] < -1.0 + 1e-3 && high[component] > 1.0 - 1e-3);
        }
        let first_states = |seed| {
            let mut env = Pendulum::new(seed);
            env.reset(ObservationsMut::F32(&mut [0.0; 3]));
            env.state()
        };
        assert_eq!(first_states(5), first_states(5));
        assert_ne!(first_states(5), first_states(6));
    }

    #[test]
    fn env_pendulum_declares_its_torque_box() {
        let env = Pendulum::new(0);
        assert_eq!(env.action_spec(), ActionSpec::Continuous { dims: 1 });
        assert_eq!(env.action_bounds(), Some(ActionBounds::uniform(1, -2.0, 2.0)));
    }

    #[test]
    #[should_panic(expected = "Pendulum-v1 actions are one torque, got [1.0, 2.0]")]
    fn env_pendulum_rejects_actions_of_another_width() {
        Pendulum::new(0).step(Action::Continuous(&[1.0, 2.0]), ObservationsMut::F32(&mut [0.0; 3]));
    }

    #[test]
    #[should_panic(expected = "a continuous environment was given the discrete action 1")]
    fn env_pendulum_rejects_discrete_actions() {
        Pendulum::new(0).step(Action::Discrete(1), ObservationsMut::F32(&mut [0.0; 3]));
    }
}
