//! Acrobot-v1 with the same dynamics as Gymnasium's, to the last bit.
//!
//! The state `[theta1, theta2, theta1_dot, theta2_dot]` is integrated over
//! 0.2 s with one classical Runge-Kutta step, as Gymnasium's `rk4` does, in
//! `f64` with every expression grouped as Gymnasium's (`x ** 2` of a NumPy
//! scalar being C's `pow`, see `pendulum::numpy_square`); the angles are then
//! wrapped into `[-pi, pi]` and the speeds clipped. The fixture test replays
//! transitions recorded from Gymnasium and compares the bit patterns. The
//! observation is `[cos theta1, sin theta1, cos theta2, sin theta2,
//! theta1_dot, theta2_dot]` cast to `f32`; the episode terminates once the
//! tip is more than one link above the pivot, and the 500-step time limit
//! of `gymnasium.make("Acrobot-v1")` is built in. The reset state is drawn
//! in `f64` and rounded to `f32` like Gymnasium's, from a seeded ChaCha8
//! generator rather than NumPy's. Gymnasium computes the reset observation's
//! sines and cosines of that `float32` state with NumPy's own `float32`
//! routines; here they are computed in `f64` and rounded, which can differ
//! in the last bit of those four components on the first observation only.
//! Rendering is not provided here; `physical_state` gives the state to draw.

use std::f64::consts::PI;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::pendulum::numpy_square;
use super::{Environment, StepOutcome};
use fleet_trajectory::{Action, ActionSpec, ObservationsMut};

/// Registry name.
pub const NAME: &str = "Acrobot-v1";

/// Seconds integrated per step.
pub const TIME_STEP: f64 = 0.2;
pub const LINK_LENGTH_1: f64 = 1.0;
pub const LINK_MASS_1: f64 = 1.0;
pub const LINK_MASS_2: f64 = 1.0;
/// Distance of each link's centre of mass from its joint.
pub const LINK_COM_POS_1: f64 = 0.5;
pub const LINK_COM_POS_2: f64 = 0.5;
/// Moment of inertia of either link.
pub const LINK_MOI: f64 = 1.0;
pub const GRAVITY: f64 = 9.8;
/// The first joint's speed is clipped to ±this.
pub const MAX_VEL_1: f64 = 4.0 * PI;
/// The second joint's speed is clipped to ±this.
pub const MAX_VEL_2: f64 = 9.0 * PI;
/// Torque on the second joint for each action.
pub const TORQUES: [f64; 3] = [-1.0, 0.0, 1.0];
/// Steps after which an episode is truncated.
pub const MAX_EPISODE_STEPS: u32 = 500;
/// Each component of the initial state is drawn uniformly from
/// `[-RESET_BOUND, RESET_BOUND)`, then rounded to `f32`.
pub const RESET_BOUND: f64 = 0.1;

const OBSERVATION_SIZE: usize = 6;
const NUM_ACTIONS: usize = TORQUES.len();

/// The state with the torque appended, as Gymnasium integrates it.
type Augmented = [f64; 5];

/// Gymnasium's `_dsdt` ("book" dynamics): the time derivative of the
/// augmented state. The torque's derivative is 0.
fn derivatives(s: Augmented) -> Augmented {
    let (m1, m2, l1, lc1, lc2, i1, i2, g) = (
        LINK_MASS_1,
        LINK_MASS_2,
        LINK_LENGTH_1,
        LINK_COM_POS_1,
        LINK_COM_POS_2,
        LINK_MOI,
        LINK_MOI,
        GRAVITY,
    );
    let [theta1, theta2, dtheta1, dtheta2, a] = s;
    // Squares of Python floats (the constants) are exact; squares of NumPy
    // scalars (the state) are `pow`.
    let d1 = m1 * (lc1 * lc1) + m2 * (l1 * l1 + lc2 * lc2 + 2.0 * l1 * lc2 * theta2.cos()) + i1 + i2;
    let d2 = m2 * (lc2 * lc2 + l1 * lc2 * theta2.cos()) + i2;
    let phi2 = m2 * lc2 * g * (theta1 + theta2 - PI / 2.0).cos();
    let phi1 = -m2 * l1 * lc2 * numpy_square(dtheta2) * theta2.sin() - 2.0 * m2 * l1 * lc2 * dtheta2 * dtheta1 * theta2.sin()
        + (m1 * lc1 + m2 * l1) * g * (theta1 - PI / 2.0).cos()
        + phi2;
    let ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * numpy_square(dtheta1) * theta2.sin() - phi2)
        / (m2 * (lc2 * lc2) + i2 - numpy_square(d2) / d1);
    let ddtheta1 = -(d2 * ddtheta2 + phi1) / d1;
    [dtheta1, dtheta2, ddtheta1, ddtheta2, 0.0]
}

/// `y0 + scale * k`, element by element.
fn offset(y0: Augmented, scale: f64, k: Augmented) -> Augmented {
    std::array::from_fn(|i| y0[i] + scale * k[i])
}

/// One step of Gymnasium's `rk4` over `[0, dt]`.
fn rk4(y0: Augmented, dt: f64) -> Augmented {
    let dt2 = dt / 2.0;
    let k1 = derivatives(y0);
    let k2 = derivatives(offset(y0, dt2, k1));
    let k3 = derivatives(offset(y0, dt2, k2));
    let k4 = derivatives(offset(y0, dt, k3));
    std::array::from_fn(|i| y0[i] + dt / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]))
}

/// Gymnasium's `wrap`: shifts `x` by whole turns into `[low, high]`.
fn wrap(mut x: f64, low: f64, high: f64) -> f64 {
    let diff = high - low;
    while x > high {
        x -= diff;
    }
    while x < low {
        x += diff;
    }
    x
}

#[derive(Debug, Clone)]
pub struct Acrobot {
    /// `[theta1, theta2, theta1_dot, theta2_dot]`; both angles 0 hanging down.
    state: [f64; 4],
    /// Steps taken since the last reset, for the time limit.
    elapsed_steps: u32,
    /// Source of reset states only; the dynamics are deterministic.
    rng: ChaCha8Rng,
}

impl Acrobot {
    pub fn new(seed: u64) -> Self {
        Self {
            state: [0.0; 4],
            elapsed_steps: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The physical state `[theta1, theta2, theta1_dot, theta2_dot]`.
    pub fn state(&self) -> [f64; 4] {
        self.state
    }

    /// Steps taken since the last reset.
    pub fn elapsed_steps(&self) -> u32 {
        self.elapsed_steps
    }

    /// Places the environment in `state` as if `elapsed_steps` steps of the
    /// episode had been taken. For tests and replays.
    pub fn set_state(&mut self, state: [f64; 4], elapsed_steps: u32) {
        self.state = state;
        self.elapsed_steps = elapsed_steps;
    }

    /// The observation of the current state, computed in `f64` and cast to `f32`.
    pub fn observation(&self) -> [f32; 6] {
        let [theta1, theta2, dtheta1, dtheta2] = self.state;
        [theta1.cos(), theta1.sin(), theta2.cos(), theta2.sin(), dtheta1, dtheta2].map(|component| component as f32)
    }

    fn write_observation(&self, observation: &mut [f32]) {
        assert_eq!(
            observation.len(),
            OBSERVATION_SIZE,
            "Acrobot-v1 observations have {OBSERVATION_SIZE} components"
        );
        observation.copy_from_slice(&self.observation());
    }

    /// Whether the tip is more than one link length above the pivot.
    fn is_terminal(&self) -> bool {
        let [theta1, theta2, _, _] = self.state;
        -theta1.cos() - (theta2 + theta1).cos() > 1.0
    }

    fn integrate(&mut self, torque: f64) {
        let [theta1, theta2, dtheta1, dtheta2] = self.state;
        let [theta1, theta2, dtheta1, dtheta2, _] = rk4([theta1, theta2, dtheta1, dtheta2, torque], TIME_STEP);
        self.state = [
            wrap(theta1, -PI, PI),
            wrap(theta2, -PI, PI),
            dtheta1.clamp(-MAX_VEL_1, MAX_VEL_1),
            dtheta2.clamp(-MAX_VEL_2, MAX_VEL_2),
        ];
    }
}

impl Environment for Acrobot {
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
            *component = f64::from(self.rng.random_range(-RESET_BOUND..RESET_BOUND) as f32);
        }
        self.elapsed_steps = 0;
        self.write_observation(observation.f32());
    }

    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
        let action = action.index();
        assert!(
            action < NUM_ACTIONS,
            "Acrobot-v1 action must be 0, 1 or 2 (torque -1, 0, +1), got {action}"
        );
        self.integrate(TORQUES[action]);
        self.elapsed_steps = self.elapsed_steps.saturating_add(1);
        let terminated = self.is_terminal();
        self.write_observation(observation.f32());
        StepOutcome {
            reward: if terminated { 0.0 } else { -1.0 },
            terminated,
            truncated: self.elapsed_steps >= MAX_EPISODE_STEPS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::recorded::{self, Dtype, Port};
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/acrobot_v1.json");

    impl Port for Acrobot {
        fn place(&mut self, state: &[f64], dtype: Dtype, elapsed_steps: u32) {
            let state: [f64; 4] = state.try_into().expect("four components");
            if dtype == Dtype::Float32 {
                assert!(state.iter().all(|&v| f64::from(v as f32) == v));
            }
            self.set_state(state, elapsed_steps);
        }

        fn elapsed_steps(&self) -> u32 {
            self.elapsed_steps
        }

        fn exact_reward(&self, action: Action<'_>) -> f64 {
            let mut next = self.clone();
            next.integrate(TORQUES[action.index()]);
            if next.is_terminal() { 0.0 } else { -1.0 }
        }
    }

    fn fixture() -> recorded::Fixture<usize> {
        recorded::load(FIXTURE, NAME)
    }

    #[test]
    fn env_acrobot_matches_every_recorded_gymnasium_step() {
        let checked = recorded::check_every_step(&mut Acrobot::new(0), &fixture());
        assert!(checked > 400, "only {checked} recorded steps");
    }

    #[test]
    fn env_acrobot_replays_whole_recorded_episodes() {
        recorded::replay_episodes(&mut Acrobot::new(0), &fixture());
    }

    #[test]
    fn env_acrobot_fixture_covers_wrapping_clipping_and_both_endings() {
        let fixture = fixture();
        let endings = recorded::check_time_limit(&fixture, MAX_EPISODE_STEPS);
        assert!(endings.contains(&"terminated") && endings.contains(&"truncated"));
        let steps = || fixture.episodes.iter().flat_map(|episode| &episode.steps);
        assert!(steps().any(|step| step.terminated && step.truncated));
        assert!(steps().any(|step| step.after()[2].abs() == MAX_VEL_1));
        assert!(steps().any(|step| step.after()[3].abs() == MAX_VEL_2));
        // An angle that integrates past ±pi comes back wrapped.
        assert!(steps().any(|step| {
            let before = step.before();
            before[0] * step.after()[0] < 0.0 && before[0].abs() > 3.0
        }));
        for action in 0..NUM_ACTIONS {
            assert!(steps().any(|step| step.action == action));
        }
    }

    #[test]
    fn env_acrobot_reset_observation_is_within_an_ulp_of_gymnasiums() {
        for episode in fixture().episodes {
            let (Some(state), Some(observation)) = (episode.reset_state(), episode.reset_observation) else {
                continue;
            };
            assert_eq!(episode.reset_dtype, Some(Dtype::Float32));
            let mut env = Acrobot::new(0);
            env.set_state(state.try_into().expect("four components"), 0);
            for (component, (ours, theirs)) in env.observation().into_iter().zip(observation).enumerate() {
                let ulps = (ours.to_bits() as i64 - theirs.to_bits() as i64).abs();
                let allowed = if component < 4 { 1 } else { 0 };
                assert!(ulps <= allowed, "{}: component {component}: {ours} vs {theirs}", episode.name);
            }
        }
    }

    #[test]
    fn env_acrobot_truncates_at_500_steps() {
        let mut env = Acrobot::new(2);
        let mut observation = [0.0f32; 6];
        env.reset(ObservationsMut::F32(&mut observation));
        for step in 1..=MAX_EPISODE_STEPS {
            // No torque: the pendulum swings gently about its rest position.
            let outcome = env.step(Action::Discrete(1), ObservationsMut::F32(&mut observation));
            assert_eq!(
                outcome,
                StepOutcome {
                    reward: -1.0,
                    terminated: false,
                    truncated: step == MAX_EPISODE_STEPS
                },
                "step {step}"
            );
        }
    }

    #[test]
    fn env_acrobot_terminates_with_the_tip_above_one_link() {
        let mut env = Acrobot::new(0);
        env.set_state([PI, 0.0, 0.0, 0.0], 3);
        let mut observation = [0.0f32; 6];
        let outcome = env.step(Action::Discrete(1), ObservationsMut::F32(&mut observation));
        assert_eq!(
            outcome,
            StepOutcome {
                reward: 0.0,
                terminated: true,
                truncated: false
            }
        );
        assert_eq!(observation, env.observation());
    }

    #[test]
    fn env_acrobot_resets_uniformly_within_gymnasium_ranges() {
        let mut env = Acrobot::new(11);
        let mut observation = [0.0f32; 6];
        let bound = f64::from(RESET_BOUND as f32);
        let (mut low, mut high) = ([f64::MAX; 4], [f64::MIN; 4]);
        for _ in 0..10_000 {
            env.reset(ObservationsMut::F32(&mut observation));
            assert_eq!(env.elapsed_steps(), 0);
            assert_eq!(observation, env.observation());
            for (component, value) in env.state().into_iter().enumerate() {
                assert!((-bound..=bound).contains(&value), "{value}");
                assert_eq!(f64::from(value as f32), value, "a float32 state");
                low[component] = low[component].min(value);
                high[component] = high[component].max(value);
            }
        }
        for component in 0..4 {
            assert!(low[component] < -RESET_BOUND + 1e-3 && high[component] > RESET_BOUND - 1e-3);
        }
        let first_states = |seed| {
            let mut env = Acrobot::new(seed);
            env.reset(ObservationsMut::F32(&mut [0.0; 6]));
            env.state()
        };
        assert_eq!(first_states(5), first_states(5));
        assert_ne!(first_states(5), first_states(6));
    }

    #[test]
    #[should_panic(expected = "Acrobot-v1 action must be 0, 1 or 2 (torque -1, 0, +1), got 3")]
    fn env_acrobot_rejects_out_of_range_actions() {
        Acrobot::new(0).step(Action::Discrete(3), ObservationsMut::F32(&mut [0.0; 6]));
    }
}
