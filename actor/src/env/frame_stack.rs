//! Stacking the last k observations of an environment into one, so that a
//! feed-forward policy sees motion (`env.frame_stack`).
//!
//! Frames stack along the channel axis, oldest first: the newest frame is
//! the last `C` channels of the `k·C`. Vector observations stack the same
//! way, end to end. At reset every slot holds the first frame (as
//! Gymnasium's `FrameStackObservation` with `padding_type = "reset"` does),
//! so a stacked observation never shows a blank that the game never drew.

use fleet_agent::FrameShape;

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
/// `inner`, oldest first.
pub struct FrameStack {
    inner: Box<dyn Environment>,
    frames: usize,
    /// The stacked observation, `frames` times the inner observation.
    stack: Vec<f32>,
}

impl FrameStack {
    /// # Panics
    /// If `frames` is outside `1..=MAX_FRAME_STACK` (check with
    /// [`check_frame_stack`] first).
    pub fn new(inner: Box<dyn Environment>, frames: usize) -> Self {
        if let Err(error) = check_frame_stack(frames) {
            panic!("{error}");
        }
        let size = inner.observation_size();
        Self {
            inner,
            frames,
            stack: vec![0.0; frames * size],
        }
    }
}

impl Environment for FrameStack {
    fn observation_size(&self) -> usize {
        self.stack.len()
    }

    fn num_actions(&self) -> usize {
        self.inner.num_actions()
    }

    fn frame(&self) -> Option<FrameShape> {
        self.inner.frame().map(|frame| FrameShape {
            channels: frame.channels * self.frames,
            ..frame
        })
    }

    fn reset(&mut self, observation: &mut [f32]) {
        let size = self.inner.observation_size();
        let (first, rest) = self.stack.split_at_mut(size);
        self.inner.reset(first);
        for slot in rest.chunks_exact_mut(size) {
            slot.copy_from_slice(first);
        }
        observation.copy_from_slice(&self.stack);
    }

    fn step(&mut self, action: usize, observation: &mut [f32]) -> StepOutcome {
        let size = self.inner.observation_size();
        self.stack.copy_within(size.., 0);
        let newest = self.stack.len() - size;
        let outcome = self.inner.step(action, &mut self.stack[newest..]);
        observation.copy_from_slice(&self.stack);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observes `[episode, t]`, with t the steps since reset.
    struct Counter {
        episode: f32,
        t: f32,
    }

    impl Environment for Counter {
        fn observation_size(&self) -> usize {
            2
        }
        fn num_actions(&self) -> usize {
            1
        }
        fn frame(&self) -> Option<FrameShape> {
            Some(FrameShape {
                channels: 1,
                height: 1,
                width: 2,
            })
        }
        fn reset(&mut self, observation: &mut [f32]) {
            self.episode += 1.0;
            self.t = 0.0;
            observation.copy_from_slice(&[self.episode, self.t]);
        }
        fn step(&mut self, _: usize, observation: &mut [f32]) -> StepOutcome {
            self.t += 1.0;
            observation.copy_from_slice(&[self.episode, self.t]);
            StepOutcome {
                reward: 0.0,
                terminated: false,
                truncated: false,
            }
        }
    }

    #[test]
    fn frames_stack_oldest_first_and_reset_repeats_the_first_frame() {
        let mut env = FrameStack::new(Box::new(Counter { episode: 0.0, t: 0.0 }), 3);
        assert_eq!(env.observation_size(), 6);
        assert_eq!(
            env.frame(),
            Some(FrameShape {
                channels: 3,
                height: 1,
                width: 2
            })
        );
        let mut obs = vec![-1.0; 6];
        env.reset(&mut obs);
        assert_eq!(obs, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        env.step(0, &mut obs);
        assert_eq!(obs, [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]);
        env.step(0, &mut obs);
        assert_eq!(obs, [1.0, 0.0, 1.0, 1.0, 1.0, 2.0]);
        env.step(0, &mut obs);
        assert_eq!(obs, [1.0, 1.0, 1.0, 2.0, 1.0, 3.0]);
        // A new episode forgets the old one's frames.
        env.reset(&mut obs);
        assert_eq!(obs, [2.0, 0.0, 2.0, 0.0, 2.0, 0.0]);
    }

    #[test]
    fn a_stack_of_one_is_the_environment_itself() {
        let mut env = FrameStack::new(Box::new(Counter { episode: 0.0, t: 0.0 }), 1);
        let mut obs = vec![0.0; 2];
        env.reset(&mut obs);
        env.step(0, &mut obs);
        assert_eq!(obs, [1.0, 1.0]);
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
