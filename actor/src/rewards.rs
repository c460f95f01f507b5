//! Rewards as the learner receives them under `actor.normalize_rewards`:
//! divided by the running standard deviation of each environment's
//! discounted return, as Gymnasium's `NormalizeReward` does for PPO's MuJoCo
//! setups, then clipped to ±[`CLIP`]. Values then sit near unit scale
//! whatever the task's reward units. Only the recorded rewards change: the
//! returns the actor reports are the environment's own.

use crate::env::normalize::{CLIP, RunningMoments};

/// Follows each environment's discounted return and scales rewards by the
/// spread of all of them, one set of statistics per actor.
#[derive(Debug, Clone)]
pub struct RewardNormalizer {
    discount: f64,
    /// Each environment's discounted sum of rewards since its episode began.
    returns: Vec<f32>,
    moments: RunningMoments,
    scaled: Vec<f32>,
}

impl RewardNormalizer {
    pub fn new(num_envs: usize, discount: f64) -> Self {
        Self {
            discount,
            returns: vec![0.0; num_envs],
            moments: RunningMoments::new(1),
            scaled: vec![0.0; num_envs],
        }
    }

    /// Takes in one step of the vector: each environment's reward and
    /// whether its observation starts an episode (whose return starts
    /// afresh). Returns the rewards scaled by the returns' deviation,
    /// these steps' returns included.
    pub fn scale(&mut self, rewards: &[f32], is_first: &[bool]) -> &[f32] {
        debug_assert_eq!((rewards.len(), is_first.len()), (self.returns.len(), self.returns.len()));
        for ((ret, &reward), &first) in self.returns.iter_mut().zip(rewards).zip(is_first) {
            *ret = if first {
                reward
            } else {
                (f64::from(*ret) * self.discount + f64::from(reward)) as f32
            };
        }
        self.moments.update_batch(&self.returns);
        let deviation = self.moments.variance()[0].sqrt().max(1e-4);
        for (out, &reward) in self.scaled.iter_mut().zip(rewards) {
            *out = ((f64::from(reward) / deviation) as f32).clamp(-CLIP, CLIP);
        }
        &self.scaled
    }

    /// Standard deviation of the discounted returns so far.
    pub fn deviation(&self) -> f64 {
        self.moments.variance()[0].sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Constant reward r over episodes of length n: the returns take the
    /// values r·(1−γ^k)/(1−γ), and the scaled reward is r over their
    /// population deviation, whatever r is.
    #[test]
    fn rewards_are_divided_by_the_deviation_of_the_discounted_returns() {
        let (gamma, length) = (0.9_f64, 10usize);
        for reward in [0.5_f32, 40.0] {
            let mut normalizer = RewardNormalizer::new(2, gamma);
            let mut last = 0.0;
            for step in 0..length * 200 {
                let first = step % length == 0;
                last = normalizer.scale(&[reward, reward], &[first, first])[0];
            }
            let returns: Vec<f64> = (1..=length)
                .map(|k| f64::from(reward) * (1.0 - gamma.powi(k as i32)) / (1.0 - gamma))
                .collect();
            let mean = returns.iter().sum::<f64>() / length as f64;
            let deviation = (returns.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / length as f64).sqrt();
            assert!(
                (normalizer.deviation() - deviation).abs() < 1e-3 * deviation,
                "{} vs {deviation}",
                normalizer.deviation()
            );
            let expected = f64::from(reward) / deviation;
            assert!(
                (f64::from(last) - expected).abs() < 1e-3 * expected,
                "reward {reward}: {last} vs {expected}"
            );
        }
    }

    /// A new episode's return starts from its own first reward, not from
    /// what the last episode had gathered.
    #[test]
    fn a_new_episode_starts_its_return_afresh() {
        let mut normalizer = RewardNormalizer::new(1, 0.99);
        for _ in 0..50 {
            normalizer.scale(&[1.0], &[false]);
        }
        normalizer.scale(&[0.0], &[true]);
        assert_eq!(normalizer.returns, [0.0]);
        normalizer.scale(&[2.0], &[false]);
        assert_eq!(normalizer.returns, [2.0]);
    }
}
