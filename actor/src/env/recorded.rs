//! Test support for the classic-control ports: the fixtures that
//! `scripts/record_classic_control_fixtures.py` records from Gymnasium, and
//! the checks that replay them against a native environment, transition by
//! transition and episode by episode. Compiled for tests only; CartPole's
//! fixture predates this format and has its own reader.

use std::fmt::Debug;

use fleet_trajectory::{Action, ObservationsMut};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{Environment, StepOutcome};

#[derive(Deserialize)]
pub struct Fixture<A> {
    pub env_id: String,
    pub gymnasium_version: String,
    pub max_episode_steps: u32,
    pub episodes: Vec<Episode<A>>,
}

#[derive(Deserialize)]
pub struct Episode<A> {
    pub name: String,
    /// `terminated`, `truncated`, or `running` for an episode recorded in part.
    pub ending: String,
    /// Present for episodes that start from a seeded reset.
    pub reset_state_bits: Option<Vec<u64>>,
    pub reset_dtype: Option<Dtype>,
    pub reset_observation: Option<Vec<f32>>,
    pub steps: Vec<Step<A>>,
}

#[derive(Deserialize)]
pub struct Step<A> {
    /// The time limit wrapper's count before this step.
    pub elapsed_before: u32,
    /// The type Gymnasium held the state in before this step.
    pub dtype_before: Dtype,
    pub state_before_bits: Vec<u64>,
    pub action: A,
    pub state_after: Vec<f64>,
    pub state_after_bits: Vec<u64>,
    pub observation: Vec<f32>,
    pub reward: f64,
    pub reward_bits: u64,
    pub terminated: bool,
    pub truncated: bool,
}

impl<A> Episode<A> {
    /// The state the seeded reset drew, exactly, for episodes that start from one.
    pub fn reset_state(&self) -> Option<Vec<f64>> {
        self.reset_state_bits.as_deref().map(from_bits)
    }
}

impl<A> Step<A> {
    /// The state before, exactly.
    pub fn before(&self) -> Vec<f64> {
        from_bits(&self.state_before_bits)
    }

    /// The state after, exactly (the decimal `state_after` may parse one ulp off).
    pub fn after(&self) -> Vec<f64> {
        from_bits(&self.state_after_bits)
    }
}

/// NumPy's name for the type a state was held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Float32,
    Float64,
}

/// A recorded action: an index, or the values of a continuous one.
pub trait RecordedAction: DeserializeOwned + Debug {
    fn action(&self) -> Action<'_>;
}

impl RecordedAction for usize {
    fn action(&self) -> Action<'_> {
        Action::Discrete(*self)
    }
}

impl RecordedAction for Vec<f32> {
    fn action(&self) -> Action<'_> {
        Action::Continuous(self)
    }
}

/// What replaying a fixture needs of a port besides [`Environment`].
pub trait Port: Environment + Clone {
    /// Places it in `state`, held as `dtype` the way Gymnasium held it,
    /// `elapsed_steps` into a running episode.
    fn place(&mut self, state: &[f64], dtype: Dtype, elapsed_steps: u32);

    fn elapsed_steps(&self) -> u32;

    /// The reward `action` earns from here, in `f64` as Gymnasium computes
    /// it, before [`Environment::step`] rounds it to `f32`. Leaves `self` as it is.
    fn exact_reward(&self, action: Action<'_>) -> f64;
}

pub fn load<A: RecordedAction>(text: &str, env_id: &str) -> Fixture<A> {
    let fixture: Fixture<A> = serde_json::from_str(text).expect("fixture parses");
    assert_eq!(fixture.env_id, env_id);
    assert!(fixture.gymnasium_version.starts_with("1."), "{}", fixture.gymnasium_version);
    fixture
}

pub fn from_bits(bits: &[u64]) -> Vec<f64> {
    bits.iter().copied().map(f64::from_bits).collect()
}

fn state_of<E: Port>(env: &E) -> Vec<f64> {
    env.physical_state().expect("a port shows its state").to_vec()
}

/// Checks one transition against Gymnasium's: the state bit for bit (and
/// within 1e-12 of the decimal floats, whose parsing may be one ulp off),
/// the observation, the reward both in `f64` and as stepping reports it,
/// and the flags.
fn check_step<E: Port, A: RecordedAction>(env: &mut E, recorded: &Step<A>, context: &str) {
    let action = recorded.action.action();
    let exact_reward = env.exact_reward(action);
    let mut observation = vec![0.0f32; env.observation_size()];
    let outcome = env.step(action, ObservationsMut::F32(&mut observation));
    let state = state_of(env);
    assert_eq!(state.len(), recorded.state_after.len(), "{context}: state size");
    for (component, (&ours, &theirs)) in state.iter().zip(&recorded.state_after).enumerate() {
        assert!((ours - theirs).abs() <= 1e-12, "{context}: state[{component}] {ours} vs {theirs}");
    }
    assert_eq!(
        state.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        recorded.state_after_bits,
        "{context}: state {state:?} differs in its bits from {:?}",
        from_bits(&recorded.state_after_bits)
    );
    assert_eq!(observation, recorded.observation, "{context}: observation");
    assert!((exact_reward - recorded.reward).abs() <= 1e-12, "{context}: reward");
    assert_eq!(
        exact_reward.to_bits(),
        recorded.reward_bits,
        "{context}: reward {exact_reward} vs {}",
        f64::from_bits(recorded.reward_bits)
    );
    let expected = StepOutcome {
        reward: f64::from_bits(recorded.reward_bits) as f32,
        terminated: recorded.terminated,
        truncated: recorded.truncated,
    };
    assert_eq!(outcome, expected, "{context}: outcome");
}

/// Places `env` in every recorded state in turn and checks the step from
/// there; returns the number of steps checked.
pub fn check_every_step<E: Port, A: RecordedAction>(env: &mut E, fixture: &Fixture<A>) -> usize {
    let mut checked = 0;
    for episode in &fixture.episodes {
        for (index, recorded) in episode.steps.iter().enumerate() {
            let context = format!("{} step {index}", episode.name);
            env.place(
                &from_bits(&recorded.state_before_bits),
                recorded.dtype_before,
                recorded.elapsed_before,
            );
            assert_eq!(env.elapsed_steps(), recorded.elapsed_before, "{context}: placed");
            check_step(env, recorded, &context);
            checked += 1;
        }
    }
    checked
}

/// Places `env` in each episode's first state only and steps it through
/// the whole episode, so that every later state is the port's own.
pub fn replay_episodes<E: Port, A: RecordedAction>(env: &mut E, fixture: &Fixture<A>) {
    for episode in &fixture.episodes {
        let first = &episode.steps[0];
        env.place(&from_bits(&first.state_before_bits), first.dtype_before, first.elapsed_before);
        for (index, recorded) in episode.steps.iter().enumerate() {
            check_step(env, recorded, &format!("{} step {index} (replayed)", episode.name));
        }
    }
}

/// The endings the fixture's episodes cover, and checks that the time
/// limit cuts an episode exactly at the fixture's step count.
pub fn check_time_limit<A: RecordedAction>(fixture: &Fixture<A>, max_episode_steps: u32) -> Vec<&str> {
    assert_eq!(fixture.max_episode_steps, max_episode_steps);
    let steps = || fixture.episodes.iter().flat_map(|episode| &episode.steps);
    for step in steps() {
        assert_eq!(step.truncated, step.elapsed_before + 1 >= max_episode_steps);
    }
    assert!(steps().any(|step| step.truncated), "no step reaches the time limit");
    fixture.episodes.iter().map(|episode| episode.ending.as_str()).collect()
}
