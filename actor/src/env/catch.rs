//! bsuite's Catch rendered as pixels: a small image-observation task for the
//! convolutional torsos, solvable in minutes on a CPU.
//!
//! The board is 10 rows × 5 columns. A ball starts in a random column of the
//! top row and falls one row per step; a paddle in the bottom row (starting
//! in the middle column) moves left, stays or moves right (actions 0, 1, 2),
//! clamped to the board. When the ball reaches the bottom row, after 9
//! steps, the episode terminates with reward +1 if the paddle is under the
//! ball and −1 otherwise; every earlier step pays 0. A random policy scores
//! about −0.5 on average; a perfect one +1.
//!
//! The observation is one 40×20 frame (1 channel): each board cell is a 4×4
//! block of pixels, 255 where the ball or the paddle is, 0 elsewhere. Four
//! pixels per cell keep the frame large enough for the shallow CNN's 8×8
//! stride-4 first convolution (which then sees 2×2 cells per window) while
//! keeping the network small.

use fleet_agent::FrameShape;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use fleet_trajectory::{Action, ActionSpec, ObservationsMut};

use super::{Environment, StepOutcome};

pub const NAME: &str = "catch";
pub const ROWS: usize = 10;
pub const COLUMNS: usize = 5;
/// Pixels per board cell along each side.
pub const CELL_PIXELS: usize = 4;
/// Steps from the first observation to the ball's landing.
pub const EPISODE_STEPS: u32 = ROWS as u32 - 1;
pub const FRAME: FrameShape = FrameShape {
    channels: 1,
    height: ROWS * CELL_PIXELS,
    width: COLUMNS * CELL_PIXELS,
};
const NUM_ACTIONS: usize = 3;
/// Intensity of the ball and the paddle.
const LIT: u8 = 255;

/// One game of Catch. A new environment has no ball in play; call
/// [`Environment::reset`] to begin an episode. Steps after the landing pay
/// 0 and report `terminated` again; [`super::VecEnv`] never takes them.
pub struct Catch {
    ball_row: usize,
    ball_column: usize,
    paddle_column: usize,
    /// Source of the ball's starting column.
    rng: ChaCha8Rng,
}

impl Catch {
    pub fn new(seed: u64) -> Self {
        Self {
            ball_row: ROWS - 1,
            ball_column: 0,
            paddle_column: COLUMNS / 2,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn render(&self, observation: &mut [u8]) {
        assert_eq!(observation.len(), FRAME.size(), "catch observation size");
        observation.fill(0);
        for (row, column) in [(self.ball_row, self.ball_column), (ROWS - 1, self.paddle_column)] {
            for y in row * CELL_PIXELS..(row + 1) * CELL_PIXELS {
                let line = y * FRAME.width;
                observation[line + column * CELL_PIXELS..line + (column + 1) * CELL_PIXELS].fill(LIT);
            }
        }
    }
}

impl Environment for Catch {
    fn observation_size(&self) -> usize {
        FRAME.size()
    }

    fn action_spec(&self) -> ActionSpec {
        ActionSpec::Discrete { num_actions: NUM_ACTIONS }
    }

    fn frame(&self) -> Option<FrameShape> {
        Some(FRAME)
    }

    fn reset(&mut self, observation: ObservationsMut<'_>) {
        self.ball_row = 0;
        self.ball_column = self.rng.random_range(0..COLUMNS);
        self.paddle_column = COLUMNS / 2;
        self.render(observation.u8());
    }

    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
        let action = action.index();
        let observation = observation.u8();
        assert!(action < NUM_ACTIONS, "catch action {action} out of range");
        if self.ball_row == ROWS - 1 {
            self.render(observation);
            return StepOutcome {
                reward: 0.0,
                terminated: true,
                truncated: false,
            };
        }
        // As bsuite: the paddle moves, then the ball falls.
        self.paddle_column = (self.paddle_column + action).saturating_sub(1).min(COLUMNS - 1);
        self.ball_row += 1;
        self.render(observation);
        let landed = self.ball_row == ROWS - 1;
        let reward = match (landed, self.paddle_column == self.ball_column) {
            (false, _) => 0.0,
            (true, true) => 1.0,
            (true, false) => -1.0,
        };
        StepOutcome {
            reward,
            terminated: landed,
            truncated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lit cells of a frame, as (row, column), checking that every cell
    /// is uniformly 0 or 255.
    fn lit_cells(frame: &[u8]) -> Vec<(usize, usize)> {
        let mut lit = Vec::new();
        for row in 0..ROWS {
            for column in 0..COLUMNS {
                let pixel = |dy: usize, dx: usize| frame[(row * CELL_PIXELS + dy) * FRAME.width + column * CELL_PIXELS + dx];
                let first = pixel(0, 0);
                assert!(first == 0 || first == 255, "pixel value {first}");
                for dy in 0..CELL_PIXELS {
                    for dx in 0..CELL_PIXELS {
                        assert_eq!(pixel(dy, dx), first, "cell ({row}, {column}) is not one block");
                    }
                }
                if first == 255 {
                    lit.push((row, column));
                }
            }
        }
        lit
    }

    #[test]
    fn the_ball_falls_one_row_per_step_and_the_paddle_follows_the_actions() {
        let mut env = Catch::new(3);
        let mut frame = vec![0u8; FRAME.size()];
        assert_eq!((FRAME.height, FRAME.width, env.action_spec().policy_width()), (40, 20, 3));
        env.reset(ObservationsMut::U8(&mut frame));
        let column = env.ball_column;
        assert_eq!(lit_cells(&frame), vec![(0, column), (ROWS - 1, 2)]);
        // Left, left, left (clamped at 0), right, stay, ...
        let actions = [0, 0, 0, 2, 1, 1, 1, 1];
        let paddle = [1, 0, 0, 1, 1, 1, 1, 1];
        for (t, (&action, &paddle)) in actions.iter().zip(&paddle).enumerate() {
            let outcome = env.step(Action::Discrete(action), ObservationsMut::U8(&mut frame));
            assert_eq!(outcome, StepOutcome::default_step(), "step {t}");
            assert_eq!(lit_cells(&frame), vec![(t + 1, column), (ROWS - 1, paddle)], "step {t}");
        }
    }

    /// Plays an episode moving the paddle to `target`; returns the return
    /// and the number of steps.
    fn play_to(env: &mut Catch, target: usize) -> (f32, u32) {
        let mut frame = vec![0u8; FRAME.size()];
        env.reset(ObservationsMut::U8(&mut frame));
        let (mut total, mut steps) = (0.0, 0);
        loop {
            let action = match env.paddle_column.cmp(&target) {
                std::cmp::Ordering::Less => 2,
                std::cmp::Ordering::Equal => 1,
                std::cmp::Ordering::Greater => 0,
            };
            let outcome = env.step(Action::Discrete(action), ObservationsMut::U8(&mut frame));
            total += outcome.reward;
            steps += 1;
            if outcome.terminated {
                assert!(!outcome.truncated);
                // The landed ball is drawn in the bottom row.
                assert!(lit_cells(&frame).iter().all(|&(row, _)| row == ROWS - 1));
                return (total, steps);
            }
        }
    }

    #[test]
    fn catching_pays_plus_one_missing_minus_one_after_nine_steps() {
        let mut env = Catch::new(11);
        let mut columns = [false; COLUMNS];
        for _ in 0..50 {
            let mut peek = env.rng.clone();
            let column = peek.random_range(0..COLUMNS);
            columns[column] = true;
            assert_eq!(play_to(&mut env, column), (1.0, EPISODE_STEPS));
            let mut peek = env.rng.clone();
            let column = peek.random_range(0..COLUMNS);
            assert_eq!(play_to(&mut env, (column + 2) % COLUMNS), (-1.0, EPISODE_STEPS));
        }
        assert!(columns.iter().all(|&seen| seen), "the ball starts in every column");
        // Past the landing nothing more is paid.
        let mut frame = vec![0u8; FRAME.size()];
        let outcome = env.step(Action::Discrete(1), ObservationsMut::U8(&mut frame));
        assert!(outcome.terminated && outcome.reward == 0.0);
    }

    #[test]
    fn same_seed_same_balls() {
        let starts = |seed| {
            let mut env = Catch::new(seed);
            let mut frame = vec![0u8; FRAME.size()];
            (0..20)
                .map(|_| {
                    env.reset(ObservationsMut::U8(&mut frame));
                    env.ball_column
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(starts(5), starts(5));
        assert_ne!(starts(5), starts(6));
    }

    impl StepOutcome {
        fn default_step() -> Self {
            StepOutcome {
                reward: 0.0,
                terminated: false,
                truncated: false,
            }
        }
    }
}
