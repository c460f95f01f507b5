//! MountainCarContinuous-v0 with the same dynamics as Gymnasium's, to the
//! last bit.
//!
//! Gymnasium keeps this car's state in NumPy `float32` once it has stepped
//! (a reset leaves it `float64`), and mixes those values with Python floats
//! and the `float32` action, so that, under NumPy 2's promotion rules, most
//! of a step is `float32` arithmetic and some of it `f64`. `Scalar` carries
//! each intermediate value's type so that every operation is done in the
//! type NumPy does it in; the fixture test replays transitions recorded from
//! Gymnasium and compares the bit patterns. The force is the action clipped
//! to `[-1, 1]`; the reward is 100 on reaching the flag, less `0.1 · a²` of
//! the action as given, before clipping (Gymnasium squares `action[0]`, not
//! the force). The observation is the state as `f32`, and the 999-step time
//! limit of `gymnasium.make("MountainCarContinuous-v0")` is built in. Only
//! the reset's random stream differs: it comes from a seeded ChaCha8
//! generator, not NumPy's. Rendering is not provided here;
//! `physical_state` gives the state to draw.

use std::cmp::Ordering;
use std::ops::{Add, Mul, Sub};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::mountain_car::{MAX_POSITION, MAX_SPEED, MIN_POSITION, RESET_HIGH, RESET_LOW};
use super::pendulum::numpy_square;
use super::{Environment, StepOutcome};
use fleet_trajectory::{Action, ActionBounds, ActionSpec, ObservationsMut};

/// Registry name.
pub const NAME: &str = "MountainCarContinuous-v0";

/// The force is the action clipped to `[MIN_ACTION, MAX_ACTION]` (the action box).
pub const MIN_ACTION: f32 = -1.0;
pub const MAX_ACTION: f32 = 1.0;
/// Acceleration per unit of force.
pub const POWER: f64 = 0.0015;
pub const GRAVITY: f64 = 0.0025;
/// The episode terminates once the car is at or beyond this position, moving right or at rest.
pub const GOAL_POSITION: f64 = 0.45;
/// Reward for reaching the goal.
pub const GOAL_REWARD: f64 = 100.0;
/// Steps after which an episode is truncated.
pub const MAX_EPISODE_STEPS: u32 = 999;

const OBSERVATION_SIZE: usize = 2;

/// A number as it is typed in Gymnasium's step: a NumPy `float32` or
/// `float64` scalar, or a Python float. Under NumPy 2's rules (NEP 50) a
/// Python float takes the type of the NumPy scalar it meets, so a Python
/// float and a `float32` are added, multiplied or compared in `float32`;
/// anything with a `float64` is `float64`; two Python floats stay `f64`.
#[derive(Debug, Clone, Copy)]
enum Scalar {
    Single(f32),
    Double(f64),
    Python(f64),
}

/// Two operands in the type NumPy computes them in.
enum Promoted {
    Single(f32, f32),
    Double(f64, f64),
    Python(f64, f64),
}

impl Scalar {
    fn value(self) -> f64 {
        match self {
            Self::Single(v) => f64::from(v),
            Self::Double(v) | Self::Python(v) => v,
        }
    }

    /// The value as a `float32`, rounded to nearest as NumPy casts.
    fn single(self) -> f32 {
        match self {
            Self::Single(v) => v,
            Self::Double(v) | Self::Python(v) => v as f32,
        }
    }

    fn promote(self, other: Self) -> Promoted {
        match (self, other) {
            (Self::Python(a), Self::Python(b)) => Promoted::Python(a, b),
            (Self::Double(_), _) | (_, Self::Double(_)) => Promoted::Double(self.value(), other.value()),
            _ => Promoted::Single(self.single(), other.single()),
        }
    }

    fn apply(self, other: Self, single: fn(f32, f32) -> f32, double: fn(f64, f64) -> f64) -> Self {
        match self.promote(other) {
            Promoted::Single(a, b) => Self::Single(single(a, b)),
            Promoted::Double(a, b) => Self::Double(double(a, b)),
            Promoted::Python(a, b) => Self::Python(double(a, b)),
        }
    }
}

impl Add for Scalar {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        self.apply(other, |a, b| a + b, |a, b| a + b)
    }
}

impl Sub for Scalar {
    type Output = Self;
    fn sub(self, other: Self) -> Self {
        self.apply(other, |a, b| a - b, |a, b| a - b)
    }
}

impl Mul for Scalar {
    type Output = Self;
    fn mul(self, other: Self) -> Self {
        self.apply(other, |a, b| a * b, |a, b| a * b)
    }
}

impl PartialEq for Scalar {
    fn eq(&self, other: &Self) -> bool {
        self.partial_cmp(other) == Some(Ordering::Equal)
    }
}

impl PartialOrd for Scalar {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.promote(*other) {
            Promoted::Single(a, b) => a.partial_cmp(&b),
            Promoted::Double(a, b) | Promoted::Python(a, b) => a.partial_cmp(&b),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MountainCarContinuous {
    /// `[position, velocity]`: `f32` values once stepped, as Gymnasium stores them.
    state: [f64; 2],
    /// Gymnasium holds the state as `float32` (true once stepped) or as
    /// `float64` (after a reset), which decides the type of the arithmetic.
    single_precision: bool,
    /// Steps taken since the last reset, for the time limit.
    elapsed_steps: u32,
    /// Source of reset states only; the dynamics are deterministic.
    rng: ChaCha8Rng,
}

impl MountainCarContinuous {
    pub fn new(seed: u64) -> Self {
        Self {
            state: [0.0; 2],
            single_precision: false,
            elapsed_steps: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The physical state `[position, velocity]`.
    pub fn state(&self) -> [f64; 2] {
        self.state
    }

    /// Steps taken since the last reset.
    pub fn elapsed_steps(&self) -> u32 {
        self.elapsed_steps
    }

    /// Places the environment in `state`, held in `f64` as a reset leaves
    /// it, as if `elapsed_steps` steps of the episode had been taken. For
    /// tests and replays.
    pub fn set_state(&mut self, state: [f64; 2], elapsed_steps: u32) {
        self.state = state;
        self.single_precision = false;
        self.elapsed_steps = elapsed_steps;
    }

    /// Places the environment in `state`, held in `f32` as a step leaves it.
    pub fn set_stepped_state(&mut self, state: [f32; 2], elapsed_steps: u32) {
        self.state = state.map(f64::from);
        self.single_precision = true;
        self.elapsed_steps = elapsed_steps;
    }

    /// The observation of the current state: each component cast to `f32`.
    pub fn observation(&self) -> [f32; 2] {
        self.state.map(|component| component as f32)
    }

    fn write_observation(&self, observation: &mut [f32]) {
        assert_eq!(
            observation.len(),
            OBSERVATION_SIZE,
            "MountainCarContinuous-v0 observations have {OBSERVATION_SIZE} components"
        );
        observation.copy_from_slice(&self.observation());
    }

    fn component(&self, index: usize) -> Scalar {
        if self.single_precision {
            Scalar::Single(self.state[index] as f32)
        } else {
            Scalar::Double(self.state[index])
        }
    }

    /// One step under `action`, every operation as Gymnasium writes it and
    /// in the type NumPy gives it; returns the reward in `f64` and whether
    /// the car has reached the goal.
    fn advance(&mut self, action: f32) -> (f64, bool) {
        use Scalar::Python;
        let mut position = self.component(0);
        let mut velocity = self.component(1);
        let raw = Scalar::Single(action);
        // Python's `min(max(action, low), high)` keeps its first argument
        // unless the bound beats it, and then is the bound, a Python float.
        let force = if Python(MIN_ACTION.into()) > raw {
            Python(MIN_ACTION.into())
        } else {
            raw
        };
        let force = if Python(MAX_ACTION.into()) < force {
            Python(MAX_ACTION.into())
        } else {
            force
        };

        // `math.cos` takes and returns Python floats.
        let slope = Python(GRAVITY * (Python(3.0) * position).value().cos());
        velocity = velocity + (force * Python(POWER) - slope);
        if velocity > Python(MAX_SPEED) {
            velocity = Python(MAX_SPEED);
        }
        if velocity < Python(-MAX_SPEED) {
            velocity = Python(-MAX_SPEED);
        }
        position = position + velocity;
        if position > Python(MAX_POSITION) {
            position = Python(MAX_POSITION);
        }
        if position < Python(MIN_POSITION) {
            position = Python(MIN_POSITION);
        }
        if position == Python(MIN_POSITION) && velocity < Python(0.0) {
            velocity = Python(0.0);
        }
        let terminated = position >= Python(GOAL_POSITION) && velocity >= Python(0.0);

        // `math.pow(action, 2)` is C's `pow` too.
        let reward = (if terminated { GOAL_REWARD } else { 0.0 }) - numpy_square(action.into()) * 0.1;
        self.state = [position.single(), velocity.single()].map(f64::from);
        self.single_precision = true;
        (reward, terminated)
    }
}

impl Environment for MountainCarContinuous {
    fn observation_size(&self) -> usize {
        OBSERVATION_SIZE
    }

    fn action_spec(&self) -> ActionSpec {
        ActionSpec::Continuous { dims: 1 }
    }

    fn action_bounds(&self) -> Option<ActionBounds> {
        Some(ActionBounds::uniform(1, MIN_ACTION, MAX_ACTION))
    }

    fn physical_state(&self) -> Option<&[f64]> {
        Some(&self.state)
    }

    fn reset(&mut self, observation: ObservationsMut<'_>) {
        self.state = [self.rng.random_range(RESET_LOW..RESET_HIGH), 0.0];
        self.single_precision = false;
        self.elapsed_steps = 0;
        self.write_observation(observation.f32());
    }

    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
        let &[force] = action.continuous() else {
            panic!("MountainCarContinuous-v0 actions are one force, got {action}");
        };
        let (reward, terminated) = self.advance(force);
        self.elapsed_steps = self.elapsed_steps.saturating_add(1);
        self.write_observation(observation.f32());
        StepOutcome {
            reward: reward as f32,
            terminated,
            truncated: self.elapsed_steps >= MAX_EPISODE_STEPS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::recorded::{self, Dtype, Port};
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/mountain_car_continuous_v0.json");

    impl Port for MountainCarContinuous {
        fn place(&mut self, state: &[f64], dtype: Dtype, elapsed_steps: u32) {
            let state: [f64; 2] = state.try_into().expect("two components");
            match dtype {
                Dtype::Float64 => self.set_state(state, elapsed_steps),
                Dtype::Float32 => {
                    let single = state.map(|v| v as f32);
                    assert_eq!(single.map(f64::from), state, "a float32 state");
                    self.set_stepped_state(single, elapsed_steps);
                }
            }
        }

        fn elapsed_steps(&self) -> u32 {
            self.elapsed_steps
        }

        fn exact_reward(&self, action: Action<'_>) -> f64 {
            self.clone().advance(action.continuous()[0]).0
        }
    }

    fn fixture() -> recorded::Fixture<Vec<f32>> {
        recorded::load(FIXTURE, NAME)
    }

    #[test]
    fn env_mountain_car_continuous_matches_every_recorded_gymnasium_step() {
        let checked = recorded::check_every_step(&mut MountainCarContinuous::new(0), &fixture());
        assert!(checked > 400, "only {checked} recorded steps");
    }

    #[test]
    fn env_mountain_car_continuous_replays_whole_recorded_episodes() {
        recorded::replay_episodes(&mut MountainCarContinuous::new(0), &fixture());
    }

    #[test]
    fn env_mountain_car_continuous_fixture_covers_clipping_the_goal_and_the_time_limit() {
        let fixture = fixture();
        let endings = recorded::check_time_limit(&fixture, MAX_EPISODE_STEPS);
        assert!(endings.contains(&"terminated") && endings.contains(&"truncated"));
        let steps = || fixture.episodes.iter().flat_map(|episode| &episode.steps);
        assert!(steps().any(|step| step.terminated && step.truncated));
        assert!(steps().any(|step| step.action[0] > MAX_ACTION) && steps().any(|step| step.action[0] < MIN_ACTION));
        // Both kinds of state, from a reset (float64) and from a step (float32), with clipped actions.
        for dtype in [Dtype::Float32, Dtype::Float64] {
            assert!(steps().any(|step| step.dtype_before == dtype && step.action[0].abs() > MAX_ACTION));
        }
        let wall = f64::from(MIN_POSITION as f32);
        assert!(steps().any(|step| step.after() == [wall, 0.0]));
        let speed = f64::from(MAX_SPEED as f32);
        assert!(steps().any(|step| step.after()[1] == speed) && steps().any(|step| step.after()[1] == -speed));
        assert!(steps().any(|step| step.after()[0] == f64::from(MAX_POSITION as f32)));
        // float32(0.45) is below 0.45, yet NumPy compares in float32: the goal is reached.
        let goal = f64::from(GOAL_POSITION as f32);
        assert!(goal < GOAL_POSITION);
        assert!(steps().any(|step| step.after()[0] == goal && step.terminated));
    }

    #[test]
    fn env_mountain_car_continuous_reward_squares_the_unclipped_action() {
        let mut env = MountainCarContinuous::new(0);
        env.set_stepped_state([-0.5, 0.0], 3);
        let mut observation = [0.0f32; 2];
        let outcome = env.step(Action::Continuous(&[3.0]), ObservationsMut::F32(&mut observation));
        assert_eq!(outcome.reward, -0.9);
        let clipped = env.state();
        env.set_stepped_state([-0.5, 0.0], 3);
        env.step(Action::Continuous(&[1.0]), ObservationsMut::F32(&mut observation));
        assert_eq!(env.state(), clipped, "the force is clipped");
    }

    #[test]
    fn env_mountain_car_continuous_pays_for_the_goal() {
        let mut env = MountainCarContinuous::new(0);
        env.set_stepped_state([0.44, 0.02], 3);
        let outcome = env.step(Action::Continuous(&[0.5]), ObservationsMut::F32(&mut [0.0; 2]));
        assert_eq!(
            outcome,
            StepOutcome {
                reward: 99.975,
                terminated: true,
                truncated: false
            }
        );
    }

    #[test]
    fn env_mountain_car_continuous_keeps_a_stepped_state_in_f32() {
        let mut env = MountainCarContinuous::new(7);
        let mut observation = [0.0f32; 2];
        env.reset(ObservationsMut::F32(&mut observation));
        assert_eq!(observation, env.observation());
        for step in 1..=MAX_EPISODE_STEPS {
            let outcome = env.step(Action::Continuous(&[0.0]), ObservationsMut::F32(&mut observation));
            assert_eq!(observation.map(f64::from), env.state());
            assert!(!outcome.terminated);
            assert_eq!(outcome.truncated, step == MAX_EPISODE_STEPS, "step {step}");
        }
    }

    #[test]
    fn env_mountain_car_continuous_resets_at_rest_within_gymnasium_range() {
        let mut env = MountainCarContinuous::new(11);
        let mut observation = [0.0f32; 2];
        let (mut low, mut high) = (f64::MAX, f64::MIN);
        for _ in 0..10_000 {
            env.reset(ObservationsMut::F32(&mut observation));
            let [position, velocity] = env.state();
            assert!((RESET_LOW..RESET_HIGH).contains(&position), "{position}");
            assert_eq!(velocity, 0.0);
            assert_eq!(env.elapsed_steps(), 0);
            (low, high) = (low.min(position), high.max(position));
        }
        assert!(low < RESET_LOW + 1e-3 && high > RESET_HIGH - 1e-3);
        let first_states = |seed| {
            let mut env = MountainCarContinuous::new(seed);
            env.reset(ObservationsMut::F32(&mut [0.0; 2]));
            env.state()
        };
        assert_eq!(first_states(5), first_states(5));
        assert_ne!(first_states(5), first_states(6));
    }

    #[test]
    fn env_mountain_car_continuous_declares_its_force_box() {
        let env = MountainCarContinuous::new(0);
        assert_eq!(env.action_spec(), ActionSpec::Continuous { dims: 1 });
        assert_eq!(env.action_bounds(), Some(ActionBounds::uniform(1, -1.0, 1.0)));
    }

    #[test]
    #[should_panic(expected = "MountainCarContinuous-v0 actions are one force, got []")]
    fn env_mountain_car_continuous_rejects_actions_of_another_width() {
        MountainCarContinuous::new(0).step(Action::Continuous(&[]), ObservationsMut::F32(&mut [0.0; 2]));
    }

    #[test]
    #[should_panic(expected = "a continuous environment was given the discrete action 0")]
    fn env_mountain_car_continuous_rejects_discrete_actions() {
        MountainCarContinuous::new(0).step(Action::Discrete(0), ObservationsMut::F32(&mut [0.0; 2]));
    }
}
