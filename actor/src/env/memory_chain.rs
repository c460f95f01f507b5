//! A memory task in the style of bsuite's Memory-Chain (a T-maze): a cue shown
//! only at the start of an episode decides the reward of its last action, so
//! the horizon sets how long the agent has to remember it.
//!
//! The registry accepts `memory-chain` (horizon [`DEFAULT_HORIZON`]) and
//! `memory-chain-N` for a horizon N in `1..=MAX_HORIZON`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{EnvError, Environment, StepOutcome};
use fleet_trajectory::{Action, ActionSpec, ObservationsMut};

/// Registry name of the default horizon; `memory-chain-N` picks horizon N.
pub const NAME: &str = "memory-chain";
pub const DEFAULT_HORIZON: u32 = 20;
pub const MAX_HORIZON: u32 = 1000;

const OBSERVATION_SIZE: usize = 4;
const NUM_ACTIONS: usize = 2;

/// The horizon a `memory-chain` name asks for: `None` if `name` is not of
/// this family, an error if it is but N is not a plain decimal in
/// `1..=MAX_HORIZON`.
pub fn horizon_from_name(name: &str) -> Option<Result<u32, EnvError>> {
    let rest = name.strip_prefix(NAME)?;
    if rest.is_empty() {
        return Some(Ok(DEFAULT_HORIZON));
    }
    let value = rest.strip_prefix('-')?;
    // `u32::from_str` would also take a leading `+`.
    let horizon = value
        .bytes()
        .all(|byte| byte.is_ascii_digit())
        .then(|| value.parse::<u32>().ok())
        .flatten()
        .filter(|horizon| (1..=MAX_HORIZON).contains(horizon));
    Some(horizon.ok_or_else(|| EnvError::BadHorizon {
        name: name.to_owned(),
        value: value.to_owned(),
    }))
}

/// A chain of `horizon + 1` decisions of which only the last one counts.
///
/// At reset one of two cues is drawn uniformly. The observation is
/// `[cue == 0, cue == 1, t / horizon, t == horizon]` (as 0.0 or 1.0), where
/// `t` is the number of actions taken so far; the cue entries are 1.0 only at
/// `t == 0`, so the cue is visible in the first observation alone. Actions
/// before `t == horizon` are ignored and pay 0.0. The action at
/// `t == horizon` pays +1.0 if it equals the cue and -1.0 otherwise, and
/// terminates the episode with the observation `[0, 0, 1, 0]`. A policy that
/// does not remember the cue therefore scores 0 on average.
///
/// Steps after the terminating one pay 0.0 and report `terminated` again;
/// [`super::VecEnv`] never takes them. A new environment has cue 0 and no
/// steps taken; call [`Environment::reset`] to begin an episode.
pub struct MemoryChain {
    horizon: u32,
    cue: usize,
    /// Actions taken since the last reset.
    elapsed_steps: u32,
    /// Source of the cues.
    rng: ChaCha8Rng,
}

impl MemoryChain {
    /// # Panics
    /// If `horizon` is not in `1..=MAX_HORIZON`.
    pub fn new(horizon: u32, seed: u64) -> Self {
        assert!(
            (1..=MAX_HORIZON).contains(&horizon),
            "{NAME} horizon must be in 1..={MAX_HORIZON}, got {horizon}"
        );
        Self {
            horizon,
            cue: 0,
            elapsed_steps: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Actions before the scored one; an episode takes `horizon() + 1` actions.
    pub fn horizon(&self) -> u32 {
        self.horizon
    }

    /// The action the current episode's last step rewards.
    pub fn cue(&self) -> usize {
        self.cue
    }

    /// Actions taken since the last reset.
    pub fn elapsed_steps(&self) -> u32 {
        self.elapsed_steps
    }

    fn write_observation(&self, observation: &mut [f32]) {
        assert_eq!(
            observation.len(),
            OBSERVATION_SIZE,
            "{NAME} observations have {OBSERVATION_SIZE} components"
        );
        let t = self.elapsed_steps;
        let flag = |condition: bool| if condition { 1.0 } else { 0.0 };
        observation.copy_from_slice(&[
            flag(t == 0 && self.cue == 0),
            flag(t == 0 && self.cue == 1),
            t.min(self.horizon) as f32 / self.horizon as f32,
            flag(t == self.horizon),
        ]);
    }
}

impl Environment for MemoryChain {
    fn observation_size(&self) -> usize {
        OBSERVATION_SIZE
    }

    fn action_spec(&self) -> ActionSpec {
        ActionSpec::Discrete { num_actions: NUM_ACTIONS }
    }

    fn reset(&mut self, observation: ObservationsMut<'_>) {
        self.cue = self.rng.random_range(0..NUM_ACTIONS);
        self.elapsed_steps = 0;
        self.write_observation(observation.f32());
    }

    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
        let action = action.index();
        assert!(action < NUM_ACTIONS, "{NAME} action must be 0 or 1, got {action}");
        let reward = if self.elapsed_steps != self.horizon {
            0.0
        } else if action == self.cue {
            1.0
        } else {
            -1.0
        };
        self.elapsed_steps = self.elapsed_steps.saturating_add(1);
        self.write_observation(observation.f32());
        StepOutcome {
            reward,
            terminated: self.elapsed_steps > self.horizon,
            truncated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{VecEnv, make};
    use fleet_trajectory::Actions;

    /// Plays one episode, taking `choose(t, cue)` at each step, and returns
    /// every observation and outcome.
    fn play(env: &mut MemoryChain, choose: impl Fn(u32, usize) -> usize) -> (Vec<[f32; 4]>, Vec<StepOutcome>) {
        let mut observation = [0.0f32; 4];
        env.reset(ObservationsMut::F32(&mut observation));
        let (mut observations, mut outcomes) = (vec![observation], Vec::new());
        while !outcomes.last().is_some_and(StepOutcome::is_last) {
            assert!(outcomes.len() <= 2 * env.horizon() as usize, "the episode does not end");
            let action = choose(outcomes.len() as u32, env.cue());
            outcomes.push(env.step(Action::Discrete(action), ObservationsMut::F32(&mut observation)));
            observations.push(observation);
        }
        (observations, outcomes)
    }

    #[test]
    fn env_memory_chain_scores_only_the_final_action_against_the_cue() {
        for horizon in [1, 2, 7, 20] {
            for seed in 0..20 {
                for (matching, expected) in [(true, 1.0), (false, -1.0)] {
                    let mut env = MemoryChain::new(horizon, seed);
                    // Earlier actions vary, and include the wrong one, to show they do not count.
                    let (_, outcomes) = play(&mut env, |t, cue| {
                        if t == horizon {
                            if matching { cue } else { 1 - cue }
                        } else {
                            (t as usize + seed as usize) % 2
                        }
                    });
                    let (last, earlier) = outcomes.split_last().unwrap();
                    assert!(earlier.iter().all(|outcome| outcome.reward == 0.0 && !outcome.is_last()));
                    assert_eq!(
                        *last,
                        StepOutcome {
                            reward: expected,
                            terminated: true,
                            truncated: false
                        },
                        "horizon {horizon} seed {seed}"
                    );
                }
            }
        }
    }

    #[test]
    fn env_memory_chain_shows_the_cue_only_in_the_first_observation() {
        let horizon = 6;
        for seed in 0..10 {
            let mut env = MemoryChain::new(horizon, seed);
            let (observations, _) = play(&mut env, |_, _| 0);
            let cue = env.cue();
            let mut shown = [0.0; 2];
            shown[cue] = 1.0;
            assert_eq!(observations[0][..2], shown, "seed {seed}");
            for (t, observation) in observations.iter().enumerate().skip(1) {
                assert_eq!(observation[..2], [0.0, 0.0], "seed {seed} t {t}");
            }
            for (t, observation) in observations.iter().enumerate() {
                let t = t as u32;
                assert_eq!(observation[2], t.min(horizon) as f32 / horizon as f32, "t {t}");
                assert_eq!(observation[3], if t == horizon { 1.0 } else { 0.0 }, "t {t}");
            }
        }
    }

    #[test]
    fn env_memory_chain_episode_takes_horizon_plus_one_actions() {
        for (name, horizon) in [("memory-chain-1", 1), ("memory-chain-5", 5), (NAME, DEFAULT_HORIZON)] {
            let mut vec_env = VecEnv::new(name, 3, 0).unwrap();
            let mut finished = Vec::new();
            for step in 0..200 {
                finished.extend(vec_env.step(&Actions::Discrete(vec![0, 1, step % 2])).unwrap().finished);
            }
            assert!(finished.len() >= 9, "{name}: only {} episodes", finished.len());
            for episode in finished {
                assert_eq!(episode.length, horizon + 1, "{name}");
                assert!(episode.terminated && !episode.truncated, "{name}");
            }
        }
    }

    #[test]
    fn env_memory_chain_draws_both_cues_across_seeds_and_resets() {
        let first_cues: Vec<usize> = (0..64)
            .map(|seed| {
                let mut env = MemoryChain::new(3, seed);
                env.reset(ObservationsMut::F32(&mut [0.0; 4]));
                env.cue()
            })
            .collect();
        let ones = first_cues.iter().filter(|&&cue| cue == 1).count();
        assert!((16..=48).contains(&ones), "{ones} of 64 seeds drew cue 1");

        let mut env = MemoryChain::new(3, 0);
        let resets: Vec<usize> = (0..64)
            .map(|_| {
                env.reset(ObservationsMut::F32(&mut [0.0; 4]));
                env.cue()
            })
            .collect();
        assert!(resets.contains(&0) && resets.contains(&1));
    }

    #[test]
    fn env_memory_chain_needs_memory_to_score() {
        let mean_return = |remember: bool, guess: usize| {
            let mut vec_env = VecEnv::new("memory-chain-3", 16, 7).unwrap();
            let mut cues = [0; 16];
            let (mut total, mut episodes) = (0.0, 0);
            while episodes < 4000 {
                for (env_index, cue) in cues.iter_mut().enumerate() {
                    if vec_env.is_first()[env_index] {
                        let observation = vec_env.observation(env_index).f32();
                        *cue = usize::from(observation[1] == 1.0);
                    }
                }
                let actions = Actions::Discrete(cues.iter().map(|&cue| if remember { cue } else { guess }).collect());
                for episode in vec_env.step(&actions).unwrap().finished {
                    total += episode.episode_return;
                    episodes += 1;
                }
            }
            total / f64::from(episodes)
        };
        assert_eq!(mean_return(true, 0), 1.0);
        for guess in [0, 1] {
            // The standard error of the mean of 4000 ±1 returns is about 0.016.
            let mean = mean_return(false, guess);
            assert!(mean.abs() < 0.08, "always {guess}: mean return {mean}");
        }
    }

    #[test]
    fn env_memory_chain_steps_after_the_end_pay_nothing() {
        let mut env = MemoryChain::new(2, 0);
        play(&mut env, |_, cue| cue);
        let mut observation = [0.0f32; 4];
        for _ in 0..3 {
            let outcome = env.step(Action::Discrete(env.cue()), ObservationsMut::F32(&mut observation));
            assert_eq!((outcome.reward, outcome.terminated), (0.0, true));
            assert_eq!(observation, [0.0, 0.0, 1.0, 0.0]);
        }
    }

    #[test]
    fn env_memory_chain_names_select_the_horizon() {
        for (name, horizon) in [
            (NAME, DEFAULT_HORIZON),
            ("memory-chain-7", 7),
            ("memory-chain-1", 1),
            ("memory-chain-1000", 1000),
        ] {
            assert_eq!(horizon_from_name(name).unwrap().unwrap(), horizon, "{name}");
            let env = make(name, 0).unwrap();
            assert_eq!((env.observation_size(), env.action_spec().policy_width()), (4, 2));
        }
        let mut observation = [0.0f32; 4];
        let mut env = make("memory-chain-7", 0).unwrap();
        env.reset(ObservationsMut::F32(&mut observation));
        for _ in 0..7 {
            assert_eq!(env.step(Action::Discrete(0), ObservationsMut::F32(&mut observation)).reward, 0.0);
        }
        assert!(env.step(Action::Discrete(0), ObservationsMut::F32(&mut observation)).terminated);
    }

    #[test]
    fn env_memory_chain_rejects_bad_horizons() {
        for (name, value) in [
            ("memory-chain-0", "0"),
            ("memory-chain-x", "x"),
            ("memory-chain-1001", "1001"),
            ("memory-chain-", ""),
            ("memory-chain-+7", "+7"),
            ("memory-chain--7", "-7"),
            ("memory-chain-99999999999", "99999999999"),
        ] {
            let error = make(name, 0).err().unwrap_or_else(|| panic!("{name} must be rejected"));
            assert!(
                matches!(&error, EnvError::BadHorizon { name: n, value: v } if n == name && v == value),
                "{name}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains(&format!("`{value}`")) && message.contains("1..=1000"), "{message}");
        }
        for name in ["memory-chain7", "memory-chains", "Memory-chain-7", "xmemory-chain"] {
            assert!(horizon_from_name(name).is_none(), "{name}");
            assert!(matches!(make(name, 0), Err(EnvError::Unknown(n)) if n == name));
        }
    }

    #[test]
    #[should_panic(expected = "horizon must be in 1..=1000")]
    fn env_memory_chain_rejects_a_zero_horizon() {
        MemoryChain::new(0, 0);
    }
}
