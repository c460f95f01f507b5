//! A vector of environments stepped as one unit, with the episode
//! bookkeeping the sequence format relies on.
//!
//! An episode of N actions has N + 1 observations `x_0 ..= x_N`, and every one
//! of them is a step of its own: `x_0` carries `is_first`, `x_N` carries
//! `terminated` and/or `truncated`. So when an environment's current
//! observation is a last one, the next step does not act in it; it
//! resets it, ignoring the action given, and the new current observation is an
//! `x_0`. The action taken at `x_N` is therefore meaningless, and its reward is
//! 0. This is the same layout as Gymnasium's "next-step" vector auto-reset.
//!
//! A [`BatchEnv`] steps all N environments in one call: natively
//! ([`NativeEnvs`], a loop over [`Environment`]s) or in another process
//! (the env bridge, one round trip per step). [`VecEnv`] wraps either with
//! what every backend shares: checking actions, counting steps and
//! reporting finished episodes. Buffers are allocated once; stepping
//! allocates only for episodes that end. Policies, sequences and transport
//! are not handled here.

use fleet_agent::EnvSpec;
use fleet_trajectory::{ActionBounds, ActionSpec, Actions, Observations, ObservationsRef};

use super::{EnvConfig, EnvError, Environment};

/// Every environment's current step: observation, reward and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Timestep {
    /// `[num_envs * observation_size]`, in the element type of the spec.
    pub observations: Observations,
    /// Reward of the action that led to the current observation (0 after a reset).
    pub rewards: Vec<f32>,
    /// The current observation starts an episode.
    pub is_first: Vec<bool>,
    /// The current observation is terminal.
    pub terminated: Vec<bool>,
    /// The current observation ends an episode cut short by a time limit
    /// (or by the loss of the process that stepped it).
    pub truncated: Vec<bool>,
}

impl Timestep {
    /// `num_envs` first observations of zeros.
    pub fn new(spec: &EnvSpec, num_envs: usize) -> Self {
        Self {
            observations: Observations::zeros(&spec.observation, num_envs * spec.observation_size()),
            rewards: vec![0.0; num_envs],
            is_first: vec![true; num_envs],
            terminated: vec![false; num_envs],
            truncated: vec![false; num_envs],
        }
    }

    pub fn num_envs(&self) -> usize {
        self.rewards.len()
    }

    /// Whether the current observation of `env_index` is its episode's last.
    pub fn is_last(&self, env_index: usize) -> bool {
        !fleet_trajectory::is_decision(self.terminated[env_index], self.truncated[env_index])
    }

    /// Copies `other`'s rewards and episode flags, leaving the
    /// observations alone: what a wrapper that only transforms observations
    /// passes through from the vector it wraps.
    pub fn copy_rewards_and_flags(&mut self, other: &Timestep) {
        self.rewards.copy_from_slice(&other.rewards);
        self.is_first.copy_from_slice(&other.is_first);
        self.terminated.copy_from_slice(&other.terminated);
        self.truncated.copy_from_slice(&other.truncated);
    }

    /// Marks environment `env_index`'s current observation as a first one.
    pub fn set_first(&mut self, env_index: usize) {
        self.rewards[env_index] = 0.0;
        self.is_first[env_index] = true;
        self.terminated[env_index] = false;
        self.truncated[env_index] = false;
    }
}

/// A vector of environments stepped as one unit, with next-step auto-reset
/// (see the module documentation).
pub trait BatchEnv: Send {
    /// What every environment of the vector observes and accepts.
    fn spec(&self) -> EnvSpec;

    fn num_envs(&self) -> usize;

    /// Starts a new episode in every environment: first observations,
    /// rewards 0.
    fn reset(&mut self, timestep: &mut Timestep) -> Result<(), EnvError>;

    /// Advances every environment by one observation, overwriting
    /// `timestep`, which holds the current one: environments whose current
    /// observation is a last one are reset, the others take their action
    /// (already checked against the spec; continuous ones in the
    /// environments' units, within [`action_bounds`](Self::action_bounds)).
    /// Returns how many environments acted.
    fn step(&mut self, actions: &Actions, timestep: &mut Timestep) -> Result<usize, EnvError>;

    /// For continuous actions, the box they live in, in the environments'
    /// units (see [`Environment::action_bounds`]).
    fn action_bounds(&self) -> Option<ActionBounds>;

    /// [`Environment::physical_state`] of environment `env_index`, where
    /// this process holds it (native environments only).
    fn physical_state(&self, env_index: usize) -> Option<&[f64]> {
        let _ = env_index;
        None
    }
}

/// Environments this process steps itself, one after another.
pub struct NativeEnvs {
    envs: Vec<Box<dyn Environment>>,
    spec: EnvSpec,
    bounds: Option<ActionBounds>,
}

impl NativeEnvs {
    /// `num_envs` environments as `config` describes them, environment i
    /// seeded with [`env_seed`]`(seed, i)`.
    pub fn new(config: &EnvConfig, num_envs: usize, seed: u64) -> Result<Self, EnvError> {
        let envs = (0..num_envs)
            .map(|env_index| config.make(env_seed(seed, env_index)))
            .collect::<Result<Vec<_>, _>>()?;
        // The spec comes from a probe so that an empty vector still knows it.
        let probe = config.make(seed)?;
        Ok(Self {
            envs,
            spec: probe.spec(),
            bounds: probe.action_bounds(),
        })
    }

    fn slot(&self, env_index: usize) -> std::ops::Range<usize> {
        let size = self.spec.observation_size();
        env_index * size..(env_index + 1) * size
    }
}

impl BatchEnv for NativeEnvs {
    fn spec(&self) -> EnvSpec {
        self.spec
    }

    fn num_envs(&self) -> usize {
        self.envs.len()
    }

    fn reset(&mut self, timestep: &mut Timestep) -> Result<(), EnvError> {
        for env_index in 0..self.envs.len() {
            let slot = self.slot(env_index);
            self.envs[env_index].reset(timestep.observations.slice_mut(slot));
            timestep.set_first(env_index);
        }
        Ok(())
    }

    fn step(&mut self, actions: &Actions, timestep: &mut Timestep) -> Result<usize, EnvError> {
        let mut acted = 0;
        for env_index in 0..self.envs.len() {
            let is_last = timestep.is_last(env_index);
            let slot = self.slot(env_index);
            let observation = timestep.observations.slice_mut(slot);
            if is_last {
                self.envs[env_index].reset(observation);
                timestep.set_first(env_index);
                continue;
            }
            let outcome = self.envs[env_index].step(actions.get(env_index), observation);
            acted += 1;
            timestep.rewards[env_index] = outcome.reward;
            timestep.is_first[env_index] = false;
            timestep.terminated[env_index] = outcome.terminated;
            timestep.truncated[env_index] = outcome.truncated;
        }
        Ok(acted)
    }

    fn action_bounds(&self) -> Option<ActionBounds> {
        self.bounds.clone()
    }

    fn physical_state(&self, env_index: usize) -> Option<&[f64]> {
        self.envs.get(env_index)?.physical_state()
    }
}

/// A [`BatchEnv`], its current step, and the running sums of its episodes.
pub struct VecEnv {
    envs: Box<dyn BatchEnv>,
    spec: EnvSpec,
    current: Timestep,
    /// Running sums for [`FinishedEpisode`].
    episode_returns: Vec<f64>,
    episode_lengths: Vec<u32>,
    /// Scratch: which current observations were last ones before a step.
    was_last: Vec<bool>,
    /// Continuous actions: the box the policy's normalised actions are
    /// mapped into, and scratch for the mapped ones.
    bounds: Option<ActionBounds>,
    env_actions: Actions,
}

/// What one [`VecEnv::step`] did across all environments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// Environments that acted (the rest were reset). This is the number of
    /// environment frames the step consumed.
    pub real_steps: usize,
    /// Episodes whose last observation this step produced.
    pub finished: Vec<FinishedEpisode>,
}

/// An episode that has just reached its last observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinishedEpisode {
    pub env_index: usize,
    /// Sum of the episode's rewards.
    pub episode_return: f64,
    /// Number of actions taken in the episode (its observations number one more).
    pub length: u32,
    pub terminated: bool,
    pub truncated: bool,
}

/// Seed of environment `env_index` in a vector seeded with `seed`: the
/// `env_index`-th output of SplitMix64 started at `seed`, so that vectors with
/// nearby seeds do not share environments.
pub fn env_seed(seed: u64, env_index: usize) -> u64 {
    let mut z = seed.wrapping_add((env_index as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl VecEnv {
    /// `num_envs` native environments named `name`, seeded from `seed` with
    /// [`env_seed`], all reset: every current observation is an `x_0` with
    /// `is_first` set.
    pub fn new(name: &str, num_envs: usize, seed: u64) -> Result<Self, EnvError> {
        Self::from_config(&EnvConfig::named(name), num_envs, seed)
    }

    /// [`VecEnv::new`] with the configured wrappers around each
    /// environment. Only native environments: bridged ones are made by
    /// [`super::bridge::BridgedEnvs`].
    pub fn from_config(config: &EnvConfig, num_envs: usize, seed: u64) -> Result<Self, EnvError> {
        Self::start(Box::new(NativeEnvs::new(config, num_envs, seed)?))
    }

    /// Resets `envs` and keeps their current step.
    pub fn start(mut envs: Box<dyn BatchEnv>) -> Result<Self, EnvError> {
        let spec = envs.spec();
        let num_envs = envs.num_envs();
        let bounds = match (spec.action, envs.action_bounds()) {
            (ActionSpec::Discrete { .. }, _) => None,
            (ActionSpec::Continuous { dims }, bounds) => {
                let bounds = bounds.unwrap_or_else(|| ActionBounds::uniform(dims, -1.0, 1.0));
                if bounds.dims() != dims {
                    return Err(EnvError::Bridge(format!(
                        "the action bounds have {} dimensions, the actions {dims}",
                        bounds.dims()
                    )));
                }
                bounds.check().map_err(|why| EnvError::Bridge(format!("action bounds: {why}")))?;
                Some(bounds)
            }
        };
        let mut current = Timestep::new(&spec, num_envs);
        envs.reset(&mut current)?;
        Ok(Self {
            envs,
            spec,
            current,
            episode_returns: vec![0.0; num_envs],
            episode_lengths: vec![0; num_envs],
            was_last: vec![false; num_envs],
            env_actions: Actions::empty(spec.action),
            bounds,
        })
    }

    pub fn num_envs(&self) -> usize {
        self.current.num_envs()
    }

    pub fn observation_size(&self) -> usize {
        self.spec.observation_size()
    }

    /// What the network needs to know of these environments.
    pub fn spec(&self) -> EnvSpec {
        self.spec
    }

    /// What actions the environments take.
    pub fn action_spec(&self) -> ActionSpec {
        self.spec.action
    }

    /// For continuous actions, the box [`step`](Self::step) maps the
    /// policy's normalised actions into.
    pub fn action_bounds(&self) -> Option<&ActionBounds> {
        self.bounds.as_ref()
    }

    /// Current observation of every environment, row-major `[num_envs, observation_size]`.
    pub fn observations(&self) -> ObservationsRef<'_> {
        self.current.observations.as_ref()
    }

    /// Current observation of environment `env_index`.
    pub fn observation(&self, env_index: usize) -> ObservationsRef<'_> {
        let size = self.observation_size();
        self.current.observations.slice(env_index * size..(env_index + 1) * size)
    }

    /// Reward of the action that led to each current observation; 0 where the
    /// current observation is an `x_0`.
    pub fn rewards(&self) -> &[f32] {
        &self.current.rewards
    }

    /// Whether each current observation starts an episode.
    pub fn is_first(&self) -> &[bool] {
        &self.current.is_first
    }

    /// Whether each current observation is terminal.
    pub fn terminated(&self) -> &[bool] {
        &self.current.terminated
    }

    /// Whether each current observation ends an episode cut short.
    pub fn truncated(&self) -> &[bool] {
        &self.current.truncated
    }

    /// Whether the current observation of `env_index` is its episode's last.
    pub fn is_last(&self, env_index: usize) -> bool {
        self.current.is_last(env_index)
    }

    /// The simulated state behind the current observation of `env_index`,
    /// where there is one to draw (see [`Environment::physical_state`]).
    pub fn physical_state(&self, env_index: usize) -> Option<&[f64]> {
        self.envs.physical_state(env_index)
    }

    /// Checks that there is one action per environment and each fits the
    /// spec: a discrete one in range, a continuous one of the spec's width
    /// and finite. Actions at last observations are checked too although
    /// they are ignored, so that a faulty policy is caught whichever
    /// environments it hits.
    pub fn validate_actions(&self, actions: &Actions) -> Result<(), EnvError> {
        let expected = self.spec.action;
        if !actions.fits(expected) {
            return Err(EnvError::BadAction {
                env_index: 0,
                action: match actions {
                    Actions::Discrete(_) => "an index".to_owned(),
                    Actions::Continuous { dims, .. } => format!("a vector of {dims} values"),
                },
                expected,
                why: "actions of another kind or width",
            });
        }
        if actions.len() != self.num_envs() {
            return Err(EnvError::ActionCount {
                expected: self.num_envs(),
                got: actions.len(),
            });
        }
        let bad = |env_index: usize, why| EnvError::BadAction {
            env_index,
            action: actions.get(env_index).to_string(),
            expected,
            why,
        };
        match (actions, expected) {
            (Actions::Discrete(indices), ActionSpec::Discrete { num_actions }) => match indices.iter().position(|&a| a >= num_actions) {
                Some(env_index) => Err(bad(env_index, "out of range")),
                None => Ok(()),
            },
            (Actions::Continuous { dims, values }, _) => match values.iter().position(|v| !v.is_finite()) {
                Some(at) => Err(bad(at / dims, "not finite")),
                None => Ok(()),
            },
            _ => unreachable!("fits checked the kind"),
        }
    }

    /// Advances every environment by one observation.
    ///
    /// An environment whose current observation is a last one is reset: its
    /// action is ignored, its new observation is an `x_0` with `is_first`
    /// set and its reward is 0. Every other environment takes its action; its
    /// reward in [`rewards`](Self::rewards) is that action's, and if the new
    /// observation is a last one the episode is listed in the report.
    /// Continuous actions are normalised ones, clipped to `[-1, 1]` and
    /// mapped into the [`action_bounds`](Self::action_bounds).
    pub fn step(&mut self, actions: &Actions) -> Result<StepReport, EnvError> {
        self.validate_actions(actions)?;
        for (env_index, was_last) in self.was_last.iter_mut().enumerate() {
            *was_last = self.current.is_last(env_index);
        }
        let env_actions = match (&self.bounds, actions, &mut self.env_actions) {
            (Some(bounds), Actions::Continuous { values, .. }, Actions::Continuous { values: mapped, .. }) => {
                bounds.to_env(values, mapped);
                &self.env_actions
            }
            _ => actions,
        };
        let real_steps = self.envs.step(env_actions, &mut self.current)?;
        let mut report = StepReport {
            real_steps,
            finished: Vec::new(),
        };
        for env_index in 0..self.num_envs() {
            if self.current.is_first[env_index] {
                self.episode_returns[env_index] = 0.0;
                self.episode_lengths[env_index] = 0;
                continue;
            }
            if self.was_last[env_index] {
                // A backend that lost its environments repeats a last
                // observation until it can reset them; nothing happened.
                continue;
            }
            self.episode_returns[env_index] += f64::from(self.current.rewards[env_index]);
            self.episode_lengths[env_index] += 1;
            if self.current.is_last(env_index) {
                report.finished.push(FinishedEpisode {
                    env_index,
                    episode_return: self.episode_returns[env_index],
                    length: self.episode_lengths[env_index],
                    terminated: self.current.terminated[env_index],
                    truncated: self.current.truncated[env_index],
                });
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::cartpole::{self, CartPole, MAX_EPISODE_STEPS};
    use fleet_trajectory::{Action, ObservationsMut};

    const NAME: &str = cartpole::NAME;

    /// Steps with a fixed action pattern and records, per environment, every
    /// observation's (is_first, is_last, reward) and the episodes finished.
    fn run(vec_env: &mut VecEnv, steps: usize, choose: impl Fn(usize, usize) -> usize) -> Vec<StepReport> {
        let mut actions = Actions::Discrete(vec![0; vec_env.num_envs()]);
        (0..steps)
            .map(|step| {
                let Actions::Discrete(indices) = &mut actions else { unreachable!() };
                for (env_index, action) in indices.iter_mut().enumerate() {
                    *action = choose(step, env_index);
                }
                vec_env.step(&actions).unwrap()
            })
            .collect()
    }

    #[test]
    fn env_vector_starts_with_first_observations_from_distinct_seeds() {
        let vec_env = VecEnv::new(NAME, 4, 9).unwrap();
        assert_eq!(
            (vec_env.num_envs(), vec_env.observation_size(), vec_env.action_spec().policy_width()),
            (4, 4, 2)
        );
        assert_eq!(vec_env.observations().f32().len(), 16);
        assert!(vec_env.is_first().iter().all(|&first| first));
        assert!((0..4).all(|env_index| !vec_env.is_last(env_index)));
        assert!(vec_env.rewards().iter().all(|&reward| reward == 0.0));
        assert!(vec_env.observations().f32().iter().all(|value| value.abs() < 0.05));
        assert_ne!(vec_env.observation(0).f32(), vec_env.observation(1).f32());
    }

    #[test]
    fn env_vector_episode_return_equals_its_number_of_actions() {
        let mut vec_env = VecEnv::new(NAME, 3, 1).unwrap();
        let reports = run(&mut vec_env, 400, |step, env_index| (step * 7 + env_index * 3) % 5 % 2);
        let finished: Vec<_> = reports.iter().flat_map(|report| &report.finished).collect();
        assert!(finished.len() >= 6, "only {} episodes ended", finished.len());
        for episode in finished {
            assert_eq!(episode.episode_return, f64::from(episode.length));
            assert!(episode.length >= 1 && episode.length <= MAX_EPISODE_STEPS);
            assert!(episode.terminated || episode.truncated);
        }
    }

    #[test]
    fn env_vector_last_observation_is_followed_by_a_first_one() {
        let mut vec_env = VecEnv::new(NAME, 2, 2).unwrap();
        let mut lasts_seen = 0;
        for step in 0..300 {
            let was_last: Vec<bool> = (0..2).map(|env_index| vec_env.is_last(env_index)).collect();
            let report = vec_env.step(&Actions::Discrete(vec![step % 2, 1])).unwrap();
            for (env_index, &was_last) in was_last.iter().enumerate() {
                let is_first = vec_env.is_first()[env_index];
                assert_eq!(is_first, was_last, "step {step} env {env_index}");
                if is_first {
                    lasts_seen += 1;
                    assert_eq!(vec_env.rewards()[env_index], 0.0);
                    assert!(!vec_env.is_last(env_index));
                    assert!(vec_env.observation(env_index).f32().iter().all(|value| value.abs() < 0.05));
                } else {
                    assert_eq!(vec_env.rewards()[env_index], 1.0);
                }
                let listed = report.finished.iter().any(|episode| episode.env_index == env_index);
                assert_eq!(listed, vec_env.is_last(env_index));
            }
        }
        assert!(lasts_seen >= 4);
    }

    #[test]
    fn env_vector_ignores_the_action_at_a_last_observation() {
        let run_until_first_end = |action_at_last: usize| {
            let mut vec_env = VecEnv::new(NAME, 1, 5).unwrap();
            while !vec_env.is_last(0) {
                vec_env.step(&Actions::Discrete(vec![1])).unwrap();
            }
            vec_env.step(&Actions::Discrete(vec![action_at_last])).unwrap();
            assert!(vec_env.is_first()[0]);
            (vec_env.observation(0).f32().to_vec(), vec_env.rewards()[0])
        };
        assert_eq!(run_until_first_end(0), run_until_first_end(1));
    }

    #[test]
    fn env_vector_counts_only_real_steps() {
        let mut vec_env = VecEnv::new(NAME, 4, 3).unwrap();
        let mut resets_expected = 0;
        let mut real_steps = 0;
        for _ in 0..200 {
            let lasts = (0..4).filter(|&env_index| vec_env.is_last(env_index)).count();
            let report = vec_env.step(&Actions::Discrete(vec![1, 0, 1, 1])).unwrap();
            assert_eq!(report.real_steps, 4 - lasts);
            real_steps += report.real_steps;
            resets_expected += lasts;
        }
        assert!(resets_expected > 0);
        assert_eq!(real_steps + resets_expected, 800);
    }

    #[test]
    fn env_vector_is_deterministic_given_the_seed() {
        let trace = |seed| {
            let mut vec_env = VecEnv::new(NAME, 3, seed).unwrap();
            let reports = run(&mut vec_env, 100, |step, env_index| (step + env_index) % 2);
            (vec_env.observations().f32().to_vec(), reports)
        };
        assert_eq!(trace(42), trace(42));
        assert_ne!(trace(42).0, trace(43).0);
    }

    #[test]
    fn env_vector_env_i_matches_a_cartpole_seeded_with_env_seed() {
        use crate::env::Environment;
        let vec_env = VecEnv::new(NAME, 3, 77).unwrap();
        let mut single = CartPole::new(env_seed(77, 2));
        let mut observation = [0.0f32; 4];
        single.reset(fleet_trajectory::ObservationsMut::F32(&mut observation));
        assert_eq!(vec_env.observation(2).f32(), observation);
    }

    #[test]
    fn env_vector_reports_truncated_episodes() {
        let mut vec_env = VecEnv::new(NAME, 1, 0).unwrap();
        let mut finished = Vec::new();
        while finished.is_empty() {
            let [_, _, theta, theta_dot]: [f32; 4] = vec_env.observation(0).f32().try_into().unwrap();
            finished = vec_env
                .step(&Actions::Discrete(vec![usize::from(theta + 0.5 * theta_dot > 0.0)]))
                .unwrap()
                .finished;
        }
        assert_eq!(finished.len(), 1);
        let episode = finished[0];
        assert!(episode.truncated && !episode.terminated, "{episode:?}");
        assert_eq!(episode.length, MAX_EPISODE_STEPS);
        assert_eq!(episode.episode_return, 500.0);
        assert!(vec_env.truncated()[0] && !vec_env.terminated()[0]);
    }

    #[test]
    fn env_vector_rejects_bad_actions() {
        let vec_env = VecEnv::new(NAME, 2, 0).unwrap();
        assert!(vec_env.validate_actions(&Actions::Discrete(vec![0, 1])).is_ok());
        assert!(matches!(
            vec_env.validate_actions(&Actions::Discrete(vec![0])),
            Err(EnvError::ActionCount { expected: 2, got: 1 })
        ));
        assert!(matches!(
            vec_env.validate_actions(&Actions::Discrete(vec![0, 2])),
            Err(EnvError::BadAction {
                env_index: 1,
                why: "out of range",
                ..
            })
        ));
    }

    /// Continuous actions reach the environments mapped from [-1, 1] onto
    /// their bounds (Pendulum's torque: [-2, 2]) and clipped there; one of
    /// another width or not finite is refused before anything steps.
    #[test]
    fn env_vector_maps_continuous_actions_onto_the_bounds_and_refuses_bad_ones() {
        use crate::env::pendulum::{self, Pendulum};
        let mut vec_env = VecEnv::new(pendulum::NAME, 3, 7).unwrap();
        assert_eq!(vec_env.action_bounds(), Some(&ActionBounds::uniform(1, -2.0, 2.0)));
        let policy = [0.25f32, 1.0, 7.5];
        let torques = [0.5f32, 2.0, 2.0];
        // The same environments, stepped directly with the torques.
        let mut direct: Vec<Pendulum> = (0..3).map(|i| Pendulum::new(env_seed(7, i))).collect();
        let mut observation = [0.0f32; 3];
        for env in &mut direct {
            env.reset(ObservationsMut::F32(&mut observation));
        }
        for _ in 0..5 {
            vec_env
                .step(&Actions::Continuous {
                    dims: 1,
                    values: policy.to_vec(),
                })
                .unwrap();
            for (env, torque) in direct.iter_mut().zip(torques) {
                env.step(Action::Continuous(&[torque]), ObservationsMut::F32(&mut observation));
            }
        }
        for (i, env) in direct.iter().enumerate() {
            assert_eq!(vec_env.physical_state(i).unwrap(), env.state(), "environment {i}");
        }
        let before = vec_env.observations().f32().to_vec();
        let wide = Actions::Continuous {
            dims: 2,
            values: vec![0.0; 6],
        };
        let nan = Actions::Continuous {
            dims: 1,
            values: vec![0.0, f32::NAN, 0.0],
        };
        for (actions, expected) in [
            (wide, "another kind or width"),
            (nan, "environment 1 is not one of continuous actions of 1 dimensions: not finite"),
        ] {
            let error = vec_env.step(&actions).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
        assert!(vec_env.step(&Actions::Discrete(vec![0; 3])).is_err());
        assert_eq!(vec_env.observations().f32(), before);
    }

    #[test]
    fn env_vector_step_refuses_bad_actions_and_leaves_the_environments_as_they_were() {
        let mut vec_env = VecEnv::new(NAME, 2, 0).unwrap();
        let before = vec_env.observations().f32().to_vec();
        let error = vec_env.step(&Actions::Discrete(vec![0, 5])).expect_err("action 5 is out of range");
        assert!(error.to_string().contains("out of range"), "{error}");
        assert_eq!(vec_env.observations().f32(), before);
    }

    /// A backend over native CartPoles that loses its environments at one
    /// step, as a bridged vector does when its server dies: episodes in
    /// flight are cut there, and new ones start at the next step.
    struct Losing {
        inner: NativeEnvs,
        steps: usize,
        lose_at: usize,
    }

    impl BatchEnv for Losing {
        fn spec(&self) -> EnvSpec {
            self.inner.spec()
        }
        fn num_envs(&self) -> usize {
            self.inner.num_envs()
        }
        fn reset(&mut self, timestep: &mut Timestep) -> Result<(), EnvError> {
            self.inner.reset(timestep)
        }
        fn action_bounds(&self) -> Option<ActionBounds> {
            None
        }
        fn step(&mut self, actions: &Actions, timestep: &mut Timestep) -> Result<usize, EnvError> {
            self.steps += 1;
            if self.steps == self.lose_at {
                crate::env::bridge::tests::cut(timestep);
                return Ok(0);
            }
            if self.steps == self.lose_at + 1 {
                self.inner.reset(timestep)?;
                return Ok(0);
            }
            self.inner.step(actions, timestep)
        }
    }

    #[test]
    fn env_vector_reports_episodes_a_backend_lost_as_truncated_and_never_stitches_them() {
        let inner = NativeEnvs::new(&EnvConfig::named(NAME), 2, 4).unwrap();
        let mut vec_env = VecEnv::start(Box::new(Losing {
            inner,
            steps: 0,
            lose_at: 6,
        }))
        .unwrap();
        let mut finished = Vec::new();
        for step in 1..=7 {
            let report = vec_env.step(&Actions::Discrete(vec![1, 1])).unwrap();
            if step == 6 {
                assert_eq!(report.real_steps, 0);
                assert!(vec_env.truncated()[0] && vec_env.is_last(0) && vec_env.is_last(1));
                assert_eq!(vec_env.rewards(), [0.0, 0.0]);
            }
            if step == 7 {
                assert_eq!(vec_env.is_first(), [true, true], "new episodes start after a loss");
            }
            finished.extend(report.finished);
        }
        let cut: Vec<_> = finished.iter().filter(|episode| episode.env_index == 0).collect();
        assert_eq!(cut.len(), 1, "{finished:?}");
        assert!(cut[0].truncated && !cut[0].terminated);
        // Five actions were taken; the cut adds a step without one.
        assert_eq!((cut[0].episode_return, cut[0].length), (5.0, 6));
    }

    #[test]
    fn env_vector_unknown_name_is_an_error() {
        assert!(matches!(VecEnv::new("Pong", 2, 0), Err(EnvError::Unknown(_))));
    }
}
