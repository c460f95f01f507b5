//! Stacking the last k observations of an environment into one, so that a
//! feed-forward policy sees motion: [`FrameStack`] for one native
//! environment (`env.frame_stack`), [`StackBatch`] for a whole bridged
//! vector (the Atari preprocessing's `env.atari.frame_stack`, stacked here
//! so that the bridge sends each environment's newest frame alone).
//!
//! Frames stack along the channel axis, oldest first: the newest frame is
//! the last `C` channels of the `k·C`. Vector observations stack the same
//! way, end to end. At reset every slot holds the first frame (as
//! Gymnasium's `FrameStackObservation` with `padding_type = "reset"` does),
//! so a stacked observation never shows a blank that the game never drew.

use fleet_agent::EnvSpec;
use fleet_trajectory::{Action, ActionBounds, ActionSpec, Actions, FrameShape, ObservationSpec, Observations, ObservationsMut};

use super::vector::{BatchEnv, Timestep};
use super::{EnvError, Environment, StepOutcome};

/// Largest accepted stack: far beyond IMPALA's 4, small enough that a
/// typo does not multiply memory a hundredfold.
pub const MAX_FRAME_STACK: usize = 32;

/// Checks a configured stack depth.
pub fn check_frame_stack(frames: usize) -> Result<(), EnvError> {
    if (1..=MAX_FRAME_STACK).contains(&frames) {
        Ok(())
    } else {
        Err(EnvError::BadFrameStack(frames))
    }
}

/// An environment whose observation is the last `frames` observations of
/// `inner`, oldest first, in the element type `inner` writes.
pub struct FrameStack {
    inner: Box<dyn Environment>,
    frames: usize,
    /// The stacked observation, `frames` times the inner observation.
    stack: Observations,
}

impl FrameStack {
    /// # Panics
    /// If `frames` is outside `1..=MAX_FRAME_STACK` (check with
    /// [`check_frame_stack`] first).
    pub fn new(inner: Box<dyn Environment>, frames: usize) -> Self {
        if let Err(error) = check_frame_stack(frames) {
            panic!("{error}");
        }
        let spec = inner.spec().observation;
        Self {
            inner,
            frames,
            stack: Observations::zeros(&spec, frames * spec.size()),
        }
    }
}

/// Copies the first `size` values of `stack` into every later slot.
fn repeat_first<T: Copy>(stack: &mut [T], size: usize) {
    let (first, rest) = stack.split_at_mut(size);
    for slot in rest.chunks_exact_mut(size) {
        slot.copy_from_slice(first);
    }
}

impl Environment for FrameStack {
    fn observation_size(&self) -> usize {
        self.stack.len()
    }

    fn action_spec(&self) -> ActionSpec {
        self.inner.action_spec()
    }

    fn action_bounds(&self) -> Option<ActionBounds> {
        self.inner.action_bounds()
    }

    fn frame(&self) -> Option<FrameShape> {
        self.inner.frame().map(|frame| FrameShape {
            channels: frame.channels * self.frames,
            ..frame
        })
    }

    fn physical_state(&self) -> Option<&[f64]> {
        self.inner.physical_state()
    }

    fn reset(&mut self, observation: ObservationsMut<'_>) {
        let size = self.inner.observation_size();
        self.inner.reset(self.stack.slice_mut(0..size));
        match &mut self.stack {
            Observations::F32(stack) => repeat_first(stack, size),
            Observations::U8(stack) => repeat_first(stack, size),
        }
        observation.copy_from(self.stack.as_ref());
    }

    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
        let size = self.inner.observation_size();
        match &mut self.stack {
            Observations::F32(stack) => stack.copy_within(size.., 0),
            Observations::U8(stack) => stack.copy_within(size.., 0),
        }
        let newest = self.stack.len() - size;
        let outcome = self.inner.step(action, self.stack.slice_mut(newest..self.stack.len()));
        observation.copy_from(self.stack.as_ref());
        outcome
    }
}

/// `spec` with `frames` observations stacked into one.
pub fn stacked_spec(spec: EnvSpec, frames: usize) -> EnvSpec {
    let observation = match spec.observation {
        ObservationSpec::Vector { size } => ObservationSpec::Vector { size: size * frames },
        ObservationSpec::Frames(frame) => ObservationSpec::Frames(FrameShape {
            channels: frame.channels * frames,
            ..frame
        }),
    };
    EnvSpec { observation, ..spec }
}

/// A vector of environments whose observations are each environment's last
/// `frames` observations of `inner`'s, oldest first.
pub struct StackBatch {
    inner: Box<dyn BatchEnv>,
    spec: EnvSpec,
    /// The inner vector's own current step, one frame per environment. It
    /// is the inner vector's to read and write: a lost bridge leaves it as
    /// it was and cuts its episodes there.
    newest: Timestep,
}

impl StackBatch {
    /// # Panics
    /// If `frames` is outside `1..=MAX_FRAME_STACK` (check with
    /// [`check_frame_stack`] first).
    pub fn new(inner: Box<dyn BatchEnv>, frames: usize) -> Self {
        if let Err(error) = check_frame_stack(frames) {
            panic!("{error}");
        }
        let inner_spec = inner.spec();
        Self {
            newest: Timestep::new(&inner_spec, inner.num_envs()),
            spec: stacked_spec(inner_spec, frames),
            inner,
        }
    }

    /// Takes in the inner step: an environment that starts an episode fills
    /// its stack with its first frame, one that acted pushes its newest
    /// frame out of the oldest, and one that did not (none acted: its bridge
    /// was lost) keeps its stack. Flags and rewards are the inner ones.
    fn observe(&mut self, acted: bool, timestep: &mut Timestep) {
        let is_first = &self.newest.is_first;
        match (&mut timestep.observations, &self.newest.observations) {
            (Observations::F32(stacks), Observations::F32(newest)) => stack_frames(stacks, newest, is_first, acted),
            (Observations::U8(stacks), Observations::U8(newest)) => stack_frames(stacks, newest, is_first, acted),
            _ => panic!("a stacked vector's observations changed their element type"),
        }
        timestep.copy_rewards_and_flags(&self.newest);
    }
}

/// Updates each environment's stack in `stacks` with its frame in
/// `newest`: refilled where it starts an episode, pushed if `acted`, else kept.
fn stack_frames<T: Copy>(stacks: &mut [T], newest: &[T], is_first: &[bool], acted: bool) {
    let num_envs = is_first.len();
    if num_envs == 0 || newest.is_empty() {
        return;
    }
    let (size, stack) = (newest.len() / num_envs, stacks.len() / num_envs);
    for ((slots, frame), &first) in stacks.chunks_exact_mut(stack).zip(newest.chunks_exact(size)).zip(is_first) {
        if first {
            for slot in slots.chunks_exact_mut(size) {
                slot.copy_from_slice(frame);
            }
        } else if acted {
            slots.copy_within(size.., 0);
            slots[stack - size..].copy_from_slice(frame);
        }
    }
}

impl BatchEnv for StackBatch {
    fn spec(&self) -> EnvSpec {
        self.spec
    }

    fn num_envs(&self) -> usize {
        self.inner.num_envs()
    }

    fn reset(&mut self, timestep: &mut Timestep) -> Result<(), EnvError> {
        self.inner.reset(&mut self.newest)?;
        self.observe(true, timestep);
        Ok(())
    }

    fn step(&mut self, actions: &Actions, timestep: &mut Timestep) -> Result<usize, EnvError> {
        let acted = self.inner.step(actions, &mut self.newest)?;
        self.observe(acted > 0, timestep);
        Ok(acted)
    }

    fn action_bounds(&self) -> Option<ActionBounds> {
        self.inner.action_bounds()
    }

    fn physical_state(&self, env_index: usize) -> Option<&[f64]> {
        self.inner.physical_state(env_index)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Observes `[episode, t]` as a 1×2 frame, with t the steps since reset.
    struct Counter {
        episode: u8,
        t: u8,
    }

    impl Environment for Counter {
        fn observation_size(&self) -> usize {
            2
        }
        fn action_spec(&self) -> ActionSpec {
            ActionSpec::Discrete { num_actions: 1 }
        }
        fn frame(&self) -> Option<FrameShape> {
            Some(FrameShape {
                channels: 1,
                height: 1,
                width: 2,
            })
        }
        fn reset(&mut self, observation: ObservationsMut<'_>) {
            self.episode += 1;
            self.t = 0;
            observation.u8().copy_from_slice(&[self.episode, self.t]);
        }
        fn step(&mut self, _: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
            self.t += 1;
            observation.u8().copy_from_slice(&[self.episode, self.t]);
            StepOutcome {
                reward: 0.0,
                terminated: false,
                truncated: false,
            }
        }
    }

    #[test]
    fn frames_stack_oldest_first_and_reset_repeats_the_first_frame() {
        let mut env = FrameStack::new(Box::new(Counter { episode: 0, t: 0 }), 3);
        assert_eq!(env.observation_size(), 6);
        assert_eq!(
            env.frame(),
            Some(FrameShape {
                channels: 3,
                height: 1,
                width: 2
            })
        );
        let mut obs = vec![9u8; 6];
        env.reset(ObservationsMut::U8(&mut obs));
        assert_eq!(obs, [1, 0, 1, 0, 1, 0]);
        env.step(Action::Discrete(0), ObservationsMut::U8(&mut obs));
        assert_eq!(obs, [1, 0, 1, 0, 1, 1]);
        env.step(Action::Discrete(0), ObservationsMut::U8(&mut obs));
        assert_eq!(obs, [1, 0, 1, 1, 1, 2]);
        env.step(Action::Discrete(0), ObservationsMut::U8(&mut obs));
        assert_eq!(obs, [1, 1, 1, 2, 1, 3]);
        // A new episode forgets the old one's frames.
        env.reset(ObservationsMut::U8(&mut obs));
        assert_eq!(obs, [2, 0, 2, 0, 2, 0]);
    }

    #[test]
    fn a_stack_of_one_is_the_environment_itself() {
        let mut env = FrameStack::new(Box::new(Counter { episode: 0, t: 0 }), 1);
        let mut obs = vec![0u8; 2];
        env.reset(ObservationsMut::U8(&mut obs));
        env.step(Action::Discrete(0), ObservationsMut::U8(&mut obs));
        assert_eq!(obs, [1, 1]);
        assert_eq!(env.frame().unwrap().channels, 1);
    }

    /// [`Counter`]s stepped as one vector, each episode `length` steps long;
    /// with `lost` set a step acts nowhere and cuts the episodes in flight,
    /// leaving the observations as they were, as a lost bridge does.
    struct Counters {
        envs: Vec<Counter>,
        length: u8,
        lost: Arc<AtomicBool>,
    }

    impl BatchEnv for Counters {
        fn spec(&self) -> EnvSpec {
            EnvSpec::frames(self.envs[0].frame().unwrap(), 1)
        }
        fn num_envs(&self) -> usize {
            self.envs.len()
        }
        fn reset(&mut self, timestep: &mut Timestep) -> Result<(), EnvError> {
            for (i, env) in self.envs.iter_mut().enumerate() {
                env.reset(timestep.observations.slice_mut(2 * i..2 * i + 2));
                timestep.set_first(i);
            }
            Ok(())
        }
        fn step(&mut self, _: &Actions, timestep: &mut Timestep) -> Result<usize, EnvError> {
            let mut acted = 0;
            for (i, env) in self.envs.iter_mut().enumerate() {
                if timestep.is_last(i) {
                    env.reset(timestep.observations.slice_mut(2 * i..2 * i + 2));
                    timestep.set_first(i);
                } else if self.lost.load(Ordering::Relaxed) {
                    (timestep.is_first[i], timestep.truncated[i]) = (false, true);
                } else {
                    env.step(Action::Discrete(0), timestep.observations.slice_mut(2 * i..2 * i + 2));
                    timestep.is_first[i] = false;
                    timestep.terminated[i] = env.t == self.length;
                    acted += 1;
                }
            }
            Ok(acted)
        }
        fn action_bounds(&self) -> Option<ActionBounds> {
            None
        }
    }

    #[test]
    fn a_vector_stacks_each_environment_apart_and_a_lost_step_pushes_nothing() {
        let lost = Arc::new(AtomicBool::new(false));
        let inner = Counters {
            envs: vec![Counter { episode: 0, t: 0 }, Counter { episode: 10, t: 0 }],
            length: 2,
            lost: Arc::clone(&lost),
        };
        let mut envs = StackBatch::new(Box::new(inner), 3);
        assert_eq!(envs.spec().frame().unwrap().channels, 3);
        let mut timestep = Timestep::new(&envs.spec(), 2);
        let actions = Actions::Discrete(vec![0, 0]);
        let u8s = |timestep: &Timestep| timestep.observations.as_ref().u8().to_vec();
        envs.reset(&mut timestep).unwrap();
        assert_eq!(u8s(&timestep), [1, 0, 1, 0, 1, 0, 11, 0, 11, 0, 11, 0]);
        envs.step(&actions, &mut timestep).unwrap();
        assert_eq!(u8s(&timestep), [1, 0, 1, 0, 1, 1, 11, 0, 11, 0, 11, 1]);
        envs.step(&actions, &mut timestep).unwrap();
        assert_eq!(u8s(&timestep), [1, 0, 1, 1, 1, 2, 11, 0, 11, 1, 11, 2]);
        assert_eq!(timestep.terminated, [true, true]);
        // The next episode forgets the last one's frames.
        envs.step(&actions, &mut timestep).unwrap();
        assert_eq!(u8s(&timestep), [2, 0, 2, 0, 2, 0, 12, 0, 12, 0, 12, 0]);
        assert_eq!(timestep.is_first, [true, true]);
        envs.step(&actions, &mut timestep).unwrap();
        // A step that acted nowhere cuts the episodes with their stacks as they were.
        lost.store(true, Ordering::Relaxed);
        assert_eq!(envs.step(&actions, &mut timestep).unwrap(), 0);
        assert_eq!(u8s(&timestep), [2, 0, 2, 0, 2, 1, 12, 0, 12, 0, 12, 1]);
        assert_eq!(timestep.truncated, [true, true]);
        lost.store(false, Ordering::Relaxed);
        envs.step(&actions, &mut timestep).unwrap();
        assert_eq!(u8s(&timestep), [3, 0, 3, 0, 3, 0, 13, 0, 13, 0, 13, 0]);
    }

    #[test]
    fn stacked_specs_multiply_channels_or_vector_sizes() {
        let frames = EnvSpec::frames(
            FrameShape {
                channels: 3,
                height: 5,
                width: 7,
            },
            6,
        );
        assert_eq!(
            stacked_spec(frames, 4),
            EnvSpec::frames(
                FrameShape {
                    channels: 12,
                    height: 5,
                    width: 7
                },
                6
            )
        );
        assert_eq!(stacked_spec(EnvSpec::vector(4, 2), 3), EnvSpec::vector(12, 2));
    }

    #[test]
    fn stack_depths_outside_the_range_are_refused() {
        assert!(check_frame_stack(1).is_ok() && check_frame_stack(MAX_FRAME_STACK).is_ok());
        for bad in [0, MAX_FRAME_STACK + 1] {
            let message = check_frame_stack(bad).unwrap_err().to_string();
            assert!(message.contains(&bad.to_string()), "{message}");
        }
    }
}
