//! Stacking the last k observations of an environment into one, so that a
//! feed-forward policy sees motion (`env.frame_stack`).
//!
//! Frames stack along the channel axis, oldest first: the newest frame is
//! the last `C` channels of the `k·C`. Vector observations stack the same
//! way, end to end. At reset every slot holds the first frame (as
//! Gymnasium's `FrameStackObservation` with `padding_type = "reset"` does),
//! so a stacked observation never shows a blank that the game never drew.

use fleet_trajectory::{Action, ActionBounds, ActionSpec, FrameShape, Observations, ObservationsMut};

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

#[cfg(test)]
mod tests {
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

    #[test]
    fn stack_depths_outside_the_range_are_refused() {
        assert!(check_frame_stack(1).is_ok() && check_frame_stack(MAX_FRAME_STACK).is_ok());
        for bad in [0, MAX_FRAME_STACK + 1] {
            let message = check_frame_stack(bad).unwrap_err().to_string();
            assert!(message.contains(&bad.to_string()), "{message}");
        }
    }
}
