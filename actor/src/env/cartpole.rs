//! CartPole-v1 with the same dynamics as Gymnasium's, to the last bit.
//!
//! The state is kept in `f64` and integrated with explicit Euler, with every
//! floating-point operation in the order Gymnasium performs it, so that a step
//! from a given state lands on exactly the state Gymnasium computes (the fixture
//! test replays transitions recorded from Gymnasium and checks the bit patterns).
//! The observation is the state cast to `f32`. The 500-step time limit of
//! `gymnasium.make("CartPole-v1")` is built in. Only the reset distribution's
//! random stream differs: it comes from a seeded ChaCha8 generator, not numpy's.
//! Rendering is not provided here; `physical_state` gives the state to draw.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Environment, StepOutcome};
use fleet_trajectory::{Action, ActionSpec, ObservationsMut};

/// Registry name.
pub const NAME: &str = "CartPole-v1";

pub const GRAVITY: f64 = 9.8;
pub const MASS_CART: f64 = 1.0;
pub const MASS_POLE: f64 = 0.1;
pub const TOTAL_MASS: f64 = MASS_POLE + MASS_CART;
/// Half the pole's length.
pub const HALF_POLE_LENGTH: f64 = 0.5;
pub const POLE_MASS_LENGTH: f64 = MASS_POLE * HALF_POLE_LENGTH;
pub const FORCE_MAGNITUDE: f64 = 10.0;
/// Seconds between state updates.
pub const TIME_STEP: f64 = 0.02;
/// The episode terminates once the cart's position is strictly beyond ±this.
pub const X_THRESHOLD: f64 = 2.4;
/// The episode terminates once the pole's angle is strictly beyond ±this (12 degrees).
pub const THETA_THRESHOLD_RADIANS: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
/// Steps after which an episode is truncated.
pub const MAX_EPISODE_STEPS: u32 = 500;
/// Each component of the initial state is drawn uniformly from `[-RESET_BOUND, RESET_BOUND)`.
pub const RESET_BOUND: f64 = 0.05;

const OBSERVATION_SIZE: usize = 4;
const NUM_ACTIONS: usize = 2;

/// A cart on a frictionless track with a pole hinged on top.
///
/// Observation `[x, x_dot, theta, theta_dot]`; action 0 pushes the cart left,
/// action 1 right; reward 1.0 per step. Terminates when `|x| > 2.4` or
/// `|theta| > 12°` (strictly), truncates when the episode's step count reaches
/// 500; a step that does both reports both flags.
///
/// Stepping on after the episode has ended is allowed and keeps integrating the
/// physics, as Gymnasium does: every step after the terminating one pays 0.0,
/// reports `terminated` again while the state stays out of bounds, and reports
/// `truncated` for every step count at or past 500. [`super::VecEnv`] never
/// does this; it resets instead.
///
/// A new environment starts at rest in the all-zero state; call
/// [`Environment::reset`] to begin an episode.
pub struct CartPole {
    /// `[x, x_dot, theta, theta_dot]`, integrated in `f64` like Gymnasium.
    state: [f64; 4],
    /// Steps taken since the last reset, for the time limit.
    elapsed_steps: u32,
    /// The episode has terminated before; later steps are worth nothing.
    has_terminated: bool,
    /// Source of reset states only; the dynamics are deterministic.
    rng: ChaCha8Rng,
}

impl CartPole {
    pub fn new(seed: u64) -> Self {
        Self {
            state: [0.0; 4],
            elapsed_steps: 0,
            has_terminated: false,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The physical state `[x, x_dot, theta, theta_dot]`.
    pub fn state(&self) -> [f64; 4] {
        self.state
    }

    /// Steps taken since the last reset.
    pub fn elapsed_steps(&self) -> u32 {
        self.elapsed_steps
    }

    /// Places the environment in `state` as if `elapsed_steps` steps of a
    /// still-running episode had been taken. For tests and replays.
    pub fn set_state(&mut self, state: [f64; 4], elapsed_steps: u32) {
        self.state = state;
        self.elapsed_steps = elapsed_steps;
        self.has_terminated = false;
    }

    /// The observation of the current state: each component cast to `f32`.
    pub fn observation(&self) -> [f32; 4] {
        self.state.map(|component| component as f32)
    }

    fn write_observation(&self, observation: &mut [f32]) {
        assert_eq!(
            observation.len(),
            OBSERVATION_SIZE,
            "CartPole-v1 observations have {OBSERVATION_SIZE} components"
        );
        observation.copy_from_slice(&self.observation());
    }

    /// One explicit Euler step of the cart-pole equations of motion. The
    /// grouping of every expression is Gymnasium's; reordering it would change
    /// the last bits of the result.
    fn integrate(&mut self, push_right: bool) {
        let [x, x_dot, theta, theta_dot] = self.state;
        let force = if push_right { FORCE_MAGNITUDE } else { -FORCE_MAGNITUDE };
        let cos_theta = theta.cos();
        let sin_theta = theta.sin();

        let temp = (force + POLE_MASS_LENGTH * (theta_dot * theta_dot) * sin_theta) / TOTAL_MASS;
        let theta_acc =
            (GRAVITY * sin_theta - cos_theta * temp) / (HALF_POLE_LENGTH * (4.0 / 3.0 - MASS_POLE * (cos_theta * cos_theta) / TOTAL_MASS));
        let x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos_theta / TOTAL_MASS;

        // Explicit Euler: every update uses the velocities from before the step.
        self.state = [
            x + TIME_STEP * x_dot,
            x_dot + TIME_STEP * x_acc,
            theta + TIME_STEP * theta_dot,
            theta_dot + TIME_STEP * theta_acc,
        ];
    }

    // Four strict comparisons, as Gymnasium writes them: unlike a range check,
    // a NaN state does not count as out of bounds.
    #[allow(clippy::manual_range_contains)]
    fn out_of_bounds(&self) -> bool {
        let [x, _, theta, _] = self.state;
        x < -X_THRESHOLD || x > X_THRESHOLD || theta < -THETA_THRESHOLD_RADIANS || theta > THETA_THRESHOLD_RADIANS
    }
}

impl Environment for CartPole {
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
        for component in &mut self.state {
            *component = self.rng.random_range(-RESET_BOUND..RESET_BOUND);
        }
        self.elapsed_steps = 0;
        self.has_terminated = false;
        self.write_observation(observation.f32());
    }

    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
        let action = action.index();
        assert!(
            action < NUM_ACTIONS,
            "CartPole-v1 action must be 0 (push left) or 1 (push right), got {action}"
        );
        self.integrate(action == 1);
        self.elapsed_steps = self.elapsed_steps.saturating_add(1);
        let terminated = self.out_of_bounds();
        let reward = if self.has_terminated { 0.0 } else { 1.0 };
        self.has_terminated |= terminated;
        self.write_observation(observation.f32());
        StepOutcome {
            reward,
            terminated,
            truncated: self.elapsed_steps >= MAX_EPISODE_STEPS,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/cartpole_v1.json");

    #[derive(Deserialize)]
    struct Fixture {
        gymnasium_version: String,
        episodes: Vec<RecordedEpisode>,
    }

    #[derive(Deserialize)]
    struct RecordedEpisode {
        name: String,
        ending: String,
        reset_state: Option<[f64; 4]>,
        reset_observation: Option<[f32; 4]>,
        steps: Vec<RecordedStep>,
    }

    #[derive(Deserialize)]
    struct RecordedStep {
        state_before: [f64; 4],
        state_before_bits: [u64; 4],
        elapsed_before: u32,
        /// Gymnasium had already reported termination before this step.
        after_termination: bool,
        action: usize,
        state_after: [f64; 4],
        state_after_bits: [u64; 4],
        observation_after: [f32; 4],
        reward: f32,
        terminated: bool,
        truncated: bool,
    }

    fn fixture() -> Fixture {
        serde_json::from_str(FIXTURE).expect("fixture parses")
    }

    fn from_bits(bits: [u64; 4]) -> [f64; 4] {
        bits.map(f64::from_bits)
    }

    /// Checks one transition against Gymnasium's: the state bit for bit (and
    /// within 1e-12 of the decimal floats, whose parsing may be one ulp off),
    /// the rest exactly.
    fn check_step(env: &mut CartPole, recorded: &RecordedStep, context: &str) {
        let mut observation = [0.0f32; 4];
        let outcome = env.step(Action::Discrete(recorded.action), ObservationsMut::F32(&mut observation));
        let state = env.state();
        for (component, (&ours, &theirs)) in state.iter().zip(&recorded.state_after).enumerate() {
            assert!((ours - theirs).abs() <= 1e-12, "{context}: state[{component}] {ours} vs {theirs}");
        }
        assert_eq!(
            state.map(f64::to_bits),
            recorded.state_after_bits,
            "{context}: state {state:?} differs in its bits from {:?}",
            from_bits(recorded.state_after_bits)
        );
        assert_eq!(observation, recorded.observation_after, "{context}: observation");
        assert_eq!(outcome.reward, recorded.reward, "{context}: reward");
        assert_eq!(outcome.terminated, recorded.terminated, "{context}: terminated");
        assert_eq!(outcome.truncated, recorded.truncated, "{context}: truncated");
    }

    #[test]
    fn env_cartpole_matches_every_recorded_gymnasium_step() {
        let fixture = fixture();
        assert!(fixture.gymnasium_version.starts_with("1."));
        let mut env = CartPole::new(0);
        let mut checked = 0;
        for episode in &fixture.episodes {
            for (index, recorded) in episode.steps.iter().enumerate() {
                let before = from_bits(recorded.state_before_bits);
                for (&exact, &decimal) in before.iter().zip(&recorded.state_before) {
                    assert!((exact - decimal).abs() <= 1e-12, "{}: bits and floats agree", episode.name);
                }
                if recorded.after_termination {
                    // set_state starts a running episode; these steps follow on from the previous one.
                    assert_eq!(env.state(), before, "{} step {index}: continuation", episode.name);
                    assert_eq!(env.elapsed_steps(), recorded.elapsed_before);
                } else {
                    env.set_state(before, recorded.elapsed_before);
                }
                check_step(&mut env, recorded, &format!("{} step {index}", episode.name));
                checked += 1;
            }
        }
        assert!(checked > 1000, "only {checked} recorded steps");
    }

    #[test]
    fn env_cartpole_replays_whole_recorded_episodes() {
        for episode in fixture().episodes {
            let first = &episode.steps[0];
            let mut env = CartPole::new(0);
            env.set_state(from_bits(first.state_before_bits), first.elapsed_before);
            for (index, recorded) in episode.steps.iter().enumerate() {
                check_step(&mut env, recorded, &format!("{} step {index} (replayed)", episode.name));
            }
        }
    }

    #[test]
    fn env_cartpole_fixture_covers_every_way_an_episode_ends() {
        let fixture = fixture();
        let endings: Vec<&str> = fixture.episodes.iter().map(|episode| episode.ending.as_str()).collect();
        for ending in ["x", "theta", "truncated"] {
            assert!(endings.contains(&ending), "no episode ending by {ending}");
        }
        let steps = || fixture.episodes.iter().flat_map(|episode| &episode.steps);
        assert!(steps().any(|step| step.terminated && step.truncated));
        assert!(steps().any(|step| step.after_termination && step.reward == 0.0));
        let full_length = fixture
            .episodes
            .iter()
            .find(|episode| episode.ending == "truncated" && episode.steps.len() == 500)
            .expect("an episode runs to the time limit");
        assert!(full_length.steps.iter().all(|step| step.reward == 1.0 && !step.terminated));
    }

    #[test]
    fn env_cartpole_observation_is_the_state_cast_to_f32() {
        for episode in fixture().episodes {
            if let (Some(state), Some(observation)) = (episode.reset_state, episode.reset_observation) {
                assert_eq!(state.map(|component| component as f32), observation);
            }
        }
        let mut env = CartPole::new(3);
        let mut observation = [0.0f32; 4];
        env.reset(ObservationsMut::F32(&mut observation));
        for _ in 0..20 {
            assert_eq!(observation, env.state().map(|component| component as f32));
            env.step(Action::Discrete(1), ObservationsMut::F32(&mut observation));
        }
    }

    #[test]
    fn env_cartpole_theta_threshold_is_twelve_degrees() {
        assert_eq!(THETA_THRESHOLD_RADIANS, 0.20943951023931953);
        assert_eq!(TOTAL_MASS, 1.1);
        assert_eq!(POLE_MASS_LENGTH, 0.05);
    }

    /// A state at rest stays where it is for one step, whatever the force.
    fn step_from_rest(x: f64, theta: f64) -> StepOutcome {
        let mut env = CartPole::new(0);
        env.set_state([x, 0.0, theta, 0.0], 0);
        let outcome = env.step(Action::Discrete(0), ObservationsMut::F32(&mut [0.0; 4]));
        assert_eq!((env.state()[0], env.state()[2]), (x, theta));
        outcome
    }

    #[test]
    fn env_cartpole_thresholds_are_strict() {
        for sign in [1.0, -1.0] {
            assert!(!step_from_rest(sign * X_THRESHOLD, 0.0).terminated);
            assert!(step_from_rest(sign * X_THRESHOLD.next_up(), 0.0).terminated);
            assert!(!step_from_rest(0.0, sign * THETA_THRESHOLD_RADIANS).terminated);
            assert!(step_from_rest(0.0, sign * THETA_THRESHOLD_RADIANS.next_up()).terminated);
        }
    }

    #[test]
    fn env_cartpole_pays_for_the_terminating_step_and_nothing_after() {
        let mut env = CartPole::new(0);
        env.set_state([X_THRESHOLD, 1.0, 0.0, 0.0], 7);
        let mut observation = [0.0; 4];
        let ending = env.step(Action::Discrete(1), ObservationsMut::F32(&mut observation));
        assert_eq!(
            ending,
            StepOutcome {
                reward: 1.0,
                terminated: true,
                truncated: false
            }
        );
        let after = env.step(Action::Discrete(1), ObservationsMut::F32(&mut observation));
        assert_eq!(
            after,
            StepOutcome {
                reward: 0.0,
                terminated: true,
                truncated: false
            }
        );
        env.reset(ObservationsMut::F32(&mut observation));
        assert_eq!(env.step(Action::Discrete(1), ObservationsMut::F32(&mut observation)).reward, 1.0);
    }

    #[test]
    fn env_cartpole_truncates_at_500_steps_without_terminating() {
        let mut env = CartPole::new(0);
        let mut observation = [0.0; 4];
        env.reset(ObservationsMut::F32(&mut observation));
        for step in 1..=MAX_EPISODE_STEPS {
            let [_, _, theta, theta_dot] = env.state();
            let balancing_action = usize::from(theta + 0.5 * theta_dot > 0.0);
            let outcome = env.step(Action::Discrete(balancing_action), ObservationsMut::F32(&mut observation));
            assert!(!outcome.terminated, "terminated at step {step}");
            assert_eq!(outcome.truncated, step == MAX_EPISODE_STEPS, "step {step}");
            assert_eq!(outcome.reward, 1.0);
        }
        assert_eq!(env.elapsed_steps(), 500);
    }

    #[test]
    fn env_cartpole_reports_both_flags_when_the_last_allowed_step_terminates() {
        let mut env = CartPole::new(0);
        env.set_state([X_THRESHOLD, 1.0, 0.0, 0.0], MAX_EPISODE_STEPS - 1);
        let outcome = env.step(Action::Discrete(1), ObservationsMut::F32(&mut [0.0; 4]));
        assert_eq!(
            outcome,
            StepOutcome {
                reward: 1.0,
                terminated: true,
                truncated: true
            }
        );
    }

    #[test]
    fn env_cartpole_resets_uniformly_within_the_bound() {
        let mut env = CartPole::new(11);
        let mut observation = [0.0f32; 4];
        let (mut low, mut high) = ([f64::MAX; 4], [f64::MIN; 4]);
        for _ in 0..10_000 {
            env.reset(ObservationsMut::F32(&mut observation));
            assert_eq!(env.elapsed_steps(), 0);
            for (component, value) in env.state().into_iter().enumerate() {
                assert!((-RESET_BOUND..RESET_BOUND).contains(&value), "{value}");
                low[component] = low[component].min(value);
                high[component] = high[component].max(value);
            }
        }
        // 10,000 uniform draws reach within 1e-3 of both ends.
        for component in 0..4 {
            assert!(low[component] < -RESET_BOUND + 1e-3 && high[component] > RESET_BOUND - 1e-3);
        }
    }

    #[test]
    fn env_cartpole_resets_depend_only_on_the_seed() {
        let first_states = |seed| {
            let mut env = CartPole::new(seed);
            let mut observation = [0.0f32; 4];
            (0..5)
                .map(|_| {
                    env.reset(ObservationsMut::F32(&mut observation));
                    env.state()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(first_states(5), first_states(5));
        assert_ne!(first_states(5), first_states(6));
    }

    #[test]
    #[should_panic(expected = "action must be 0 (push left) or 1 (push right), got 2")]
    fn env_cartpole_rejects_out_of_range_actions() {
        CartPole::new(0).step(Action::Discrete(2), ObservationsMut::F32(&mut [0.0; 4]));
    }
}
