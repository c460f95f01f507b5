//! MountainCar-v0 with the same dynamics as Gymnasium's, to the last bit.
//!
//! The state `[position, velocity]` is kept in `f64` and updated with every
//! operation in Gymnasium's order: the velocity takes the push and gravity
//! and is clipped, the position takes the velocity and is clipped, and a car
//! that hits the left wall stops. The fixture test replays transitions
//! recorded from Gymnasium and compares the bit patterns. The observation is
//! the state cast to `f32`; every step costs 1 until the car reaches the
//! flag (terminated), and the 200-step time limit of
//! `gymnasium.make("MountainCar-v0")` is built in. Only the reset's random
//! stream differs: it comes from a seeded ChaCha8 generator, not NumPy's.
//! [`mountain_car_continuous`](super::mountain_car_continuous) shares the
//! track. Rendering is not provided here; `physical_state` gives the state
//! to draw.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Environment, StepOutcome};
use fleet_trajectory::{Action, ActionSpec, ObservationsMut};

/// Registry name.
pub const NAME: &str = "MountainCar-v0";

/// The left wall: positions are clipped here, and a car that reaches it stops.
pub const MIN_POSITION: f64 = -1.2;
/// The right edge of the track: positions are clipped here.
pub const MAX_POSITION: f64 = 0.6;
/// Velocities are clipped to ±this.
pub const MAX_SPEED: f64 = 0.07;
/// The episode terminates once the car is at or beyond this position, moving right or at rest.
pub const GOAL_POSITION: f64 = 0.5;
/// Acceleration of a push (action 0 pushes left, 2 right, 1 not at all).
pub const FORCE: f64 = 0.001;
pub const GRAVITY: f64 = 0.0025;
/// Steps after which an episode is truncated.
pub const MAX_EPISODE_STEPS: u32 = 200;
/// Resets place the car at rest, uniformly in `[RESET_LOW, RESET_HIGH)`.
pub const RESET_LOW: f64 = -0.6;
pub const RESET_HIGH: f64 = -0.4;

const OBSERVATION_SIZE: usize = 2;
const NUM_ACTIONS: usize = 3;

#[derive(Debug, Clone)]
pub struct MountainCar {
    /// `[position, velocity]`, updated in `f64` like Gymnasium.
    state: [f64; 2],
    /// Steps taken since the last reset, for the time limit.
    elapsed_steps: u32,
    /// Source of reset states only; the dynamics are deterministic.
    rng: ChaCha8Rng,
}

impl MountainCar {
    pub fn new(seed: u64) -> Self {
        Self {
            state: [0.0; 2],
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

    /// Places the environment in `state` as if `elapsed_steps` steps of the
    /// episode had been taken. For tests and replays.
    pub fn set_state(&mut self, state: [f64; 2], elapsed_steps: u32) {
        self.state = state;
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
            "MountainCar-v0 observations have {OBSERVATION_SIZE} components"
        );
        observation.copy_from_slice(&self.observation());
    }

    /// One step under `action`, grouped as Gymnasium's; returns whether the
    /// car has reached the goal.
    fn integrate(&mut self, action: usize) -> bool {
        let [mut position, mut velocity] = self.state;
        // `(action - 1)` is a Python integer, exact as an f64.
        velocity += (action as f64 - 1.0) * FORCE + (3.0 * position).cos() * (-GRAVITY);
        velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED);
        position += velocity;
        position = position.clamp(MIN_POSITION, MAX_POSITION);
        if position == MIN_POSITION && velocity < 0.0 {
            velocity = 0.0;
        }
        self.state = [position, velocity];
        position >= GOAL_POSITION && velocity >= 0.0
    }
}

impl Environment for MountainCar {
    fn observation_size(&self) -> usize {
        OBSERVATION_SIZE
    }

    fn action_spec(&self) -> ActionSpec {
        ActionSpec::Discrete { num_actions: NUM_ACTIONS }
    }

    fn physical_state(&self) -> Option<&[f64]> {
        Some(&self.state)
    }

    fn reset(&mut self, observation: ObservationsMut<'_>) {
        self.state = [self.rng.random_range(RESET_LOW..RESET_HIGH), 0.0];
        self.elapsed_steps = 0;
        self.write_observation(observation.f32());
    }

    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
        let action = action.index();
        assert!(
            action < NUM_ACTIONS,
            "MountainCar-v0 action must be 0 (push left), 1 (no push) or 2 (push right), got {action}"
        );
        let terminated = self.integrate(action);
        self.elapsed_steps = self.elapsed_steps.saturating_add(1);
        self.write_observation(observation.f32());
        StepOutcome {
            reward: -1.0,
            terminated,
            truncated: self.elapsed_steps >= MAX_EPISODE_STEPS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::recorded::{self, Dtype, Port};
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/mountain_car_v0.json");

    impl Port for MountainCar {
        fn place(&mut self, state: &[f64], dtype: Dtype, elapsed_steps: u32) {
            assert_eq!(dtype, Dtype::Float64);
            self.set_state(state.try_into().expect("two components"), elapsed_steps);
        }

        fn elapsed_steps(&self) -> u32 {
            self.elapsed_steps
        }

        fn exact_reward(&self, _action: Action<'_>) -> f64 {
            -1.0
        }
    }

    fn fixture() -> recorded::Fixture<usize> {
        recorded::load(FIXTURE, NAME)
    }

    #[test]
    fn env_mountain_car_matches_every_recorded_gymnasium_step() {
        let checked = recorded::check_every_step(&mut MountainCar::new(0), &fixture());
        assert!(checked > 400, "only {checked} recorded steps");
    }

    #[test]
    fn env_mountain_car_replays_whole_recorded_episodes() {
        recorded::replay_episodes(&mut MountainCar::new(0), &fixture());
    }

    #[test]
    fn env_mountain_car_fixture_covers_the_walls_the_goal_and_the_time_limit() {
        let fixture = fixture();
        let endings = recorded::check_time_limit(&fixture, MAX_EPISODE_STEPS);
        assert!(endings.contains(&"terminated") && endings.contains(&"truncated"));
        let steps = || fixture.episodes.iter().flat_map(|episode| &episode.steps);
        assert!(steps().any(|step| step.terminated && step.truncated));
        assert!(steps().any(|step| step.after() == [MIN_POSITION, 0.0]));
        assert!(steps().any(|step| step.after()[0] == MAX_POSITION));
        assert!(steps().any(|step| step.after()[1] == MAX_SPEED) && steps().any(|step| step.after()[1] == -MAX_SPEED));
        let whole = fixture
            .episodes
            .iter()
            .find(|episode| episode.steps.len() == MAX_EPISODE_STEPS as usize);
        assert_eq!(whole.map(|episode| episode.ending.as_str()), Some("truncated"));
    }

    #[test]
    fn env_mountain_car_observation_is_the_state_cast_to_f32() {
        for episode in fixture().episodes {
            if let (Some(state), Some(observation)) = (episode.reset_state(), episode.reset_observation) {
                assert_eq!(state.iter().map(|&v| v as f32).collect::<Vec<_>>(), observation);
            }
        }
    }

    #[test]
    fn env_mountain_car_truncates_at_200_steps_when_idle() {
        let mut env = MountainCar::new(1);
        let mut observation = [0.0f32; 2];
        env.reset(ObservationsMut::F32(&mut observation));
        for step in 1..=MAX_EPISODE_STEPS {
            let outcome = env.step(Action::Discrete(1), ObservationsMut::F32(&mut observation));
            assert!(!outcome.terminated && outcome.reward == -1.0);
            assert_eq!(outcome.truncated, step == MAX_EPISODE_STEPS, "step {step}");
            assert_eq!(observation, env.observation());
        }
    }

    #[test]
    fn env_mountain_car_resets_at_rest_within_gymnasium_range() {
        let mut env = MountainCar::new(11);
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
            let mut env = MountainCar::new(seed);
            env.reset(ObservationsMut::F32(&mut [0.0; 2]));
            env.state()
        };
        assert_eq!(first_states(5), first_states(5));
        assert_ne!(first_states(5), first_states(6));
    }

    #[test]
    #[should_panic(expected = "MountainCar-v0 action must be 0 (push left), 1 (no push) or 2 (push right), got 3")]
    fn env_mountain_car_rejects_out_of_range_actions() {
        MountainCar::new(0).step(Action::Discrete(3), ObservationsMut::F32(&mut [0.0; 2]));
    }
}
