//! Moving summaries of finished episodes' returns. The mean of the last N
//! episodes is dominated by short ones: a policy that fails in 9 steps
//! finishes 50 times as many episodes as one that lasts 500. The
//! step-weighted mean weights each episode by its length, over the episodes
//! that fill the last S env steps, so it reads as the return the agent
//! earns per unit of experience and a burst of short episodes cannot hide
//! or exaggerate a change.

use std::collections::VecDeque;

/// How the recent returns spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

#[derive(Debug, Clone)]
pub struct RecentReturns {
    /// The newest `episode_window` returns.
    returns: VecDeque<f64>,
    episode_window: usize,
    /// The newest episodes (return, length) whose lengths, without the
    /// oldest of them, sum to less than `step_window`.
    episodes: VecDeque<(f64, u64)>,
    step_window: u64,
    /// Σ return·length and Σ length over `episodes`.
    weighted_sum: f64,
    steps: u64,
}

impl RecentReturns {
    pub fn new(episode_window: usize, step_window: u64) -> Self {
        Self {
            returns: VecDeque::with_capacity(episode_window),
            episode_window,
            episodes: VecDeque::new(),
            step_window,
            weighted_sum: 0.0,
            steps: 0,
        }
    }

    pub fn push(&mut self, episode_return: f64, length: u64) {
        if self.returns.len() == self.episode_window {
            self.returns.pop_front();
        }
        self.returns.push_back(episode_return);
        self.episodes.push_back((episode_return, length));
        self.weighted_sum += episode_return * length as f64;
        self.steps += length;
        while let Some(&(oldest_return, oldest_length)) = self.episodes.front()
            && self.steps - oldest_length >= self.step_window
        {
            self.episodes.pop_front();
            self.weighted_sum -= oldest_return * oldest_length as f64;
            self.steps -= oldest_length;
        }
        // The running sum drifts by rounding; an empty-to-one refill resets it.
        if self.episodes.len() == 1 {
            self.weighted_sum = episode_return * length as f64;
        }
    }

    /// Mean of the last `episode_window` returns (`None` before any).
    pub fn episode_mean(&self) -> Option<f64> {
        (!self.returns.is_empty()).then(|| self.returns.iter().sum::<f64>() / self.returns.len() as f64)
    }

    /// Lowest, median and highest of the last `episode_window` returns
    /// (`None` before any); the median of an even count is the mean of
    /// the middle two.
    pub fn episode_spread(&self) -> Option<Spread> {
        if self.returns.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.returns.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Spread {
            min: sorted[0],
            median,
            max: sorted[n - 1],
        })
    }

    /// Σ return·length and Σ length over the episodes that fill the last
    /// `step_window` steps (the oldest of them may start before).
    pub fn step_weighted(&self) -> (f64, u64) {
        (self.weighted_sum, self.steps)
    }

    /// Σ return·length / Σ length (`None` before any episode, or when all
    /// had length 0).
    pub fn step_weighted_mean(&self) -> Option<f64> {
        (self.steps > 0).then(|| self.weighted_sum / self.steps as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_short_episodes_does_not_outvote_a_long_one() {
        let mut recent = RecentReturns::new(100, 1_000);
        recent.push(500.0, 500);
        for _ in 0..50 {
            recent.push(9.0, 9);
        }
        assert!((recent.episode_mean().unwrap() - (500.0 + 450.0) / 51.0).abs() < 1e-9);
        // Weighted by length: (500·500 + 50·9·9) / (500 + 450).
        assert!((recent.step_weighted_mean().unwrap() - (250_000.0 + 4_050.0) / 950.0).abs() < 1e-9);
    }

    #[test]
    fn the_step_window_keeps_just_enough_of_the_newest_episodes() {
        let mut recent = RecentReturns::new(3, 100);
        assert_eq!((recent.episode_mean(), recent.step_weighted_mean()), (None, None));
        for (r, l) in [(1.0, 60), (2.0, 60), (3.0, 30), (4.0, 30)] {
            recent.push(r, l);
        }
        // Newest first: 30 + 30 = 60 < 100, so the 60-step episode before
        // them stays; the first one goes.
        assert_eq!(recent.step_weighted(), (2.0 * 60.0 + 3.0 * 30.0 + 4.0 * 30.0, 120));
        assert_eq!(recent.episode_mean(), Some(3.0));
        recent.push(5.0, 100);
        assert_eq!(recent.step_weighted(), (500.0, 100));
        assert_eq!(recent.episode_mean(), Some(4.0));
    }

    #[test]
    fn the_spread_covers_the_episode_window_only() {
        let mut recent = RecentReturns::new(4, 1_000);
        assert_eq!(recent.episode_spread(), None);
        for r in [100.0, 3.0, 7.0, 5.0, 1.0] {
            recent.push(r, 10);
        }
        // 100 has left the window of 4: [3, 7, 5, 1].
        let expected = Spread {
            min: 1.0,
            median: 4.0,
            max: 7.0,
        };
        assert_eq!(recent.episode_spread(), Some(expected));
        recent.push(9.0, 10);
        assert_eq!(recent.episode_spread().map(|s| s.median), Some(6.0));
    }
}
