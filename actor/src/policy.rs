//! Acting from policy logits: sampling categorical actions on the host with
//! the actor's own seeded RNG (reproducible, independent of candle's RNG),
//! or taking the most probable one.

use rand::Rng;

/// Samples one action per row of `logits` (`[n, num_actions]`, row-major).
pub fn sample_actions(logits: &[f32], num_actions: usize, rng: &mut impl Rng, actions: &mut Vec<usize>) {
    actions.clear();
    for row in logits.chunks_exact(num_actions) {
        actions.push(sample_categorical(row, rng));
    }
}

/// The most probable action of each row of `logits` (`[n, num_actions]`,
/// row-major): the first of equal largest logits; NaN logits never win.
pub fn greedy_actions(logits: &[f32], num_actions: usize, actions: &mut Vec<usize>) {
    actions.clear();
    for row in logits.chunks_exact(num_actions) {
        let mut best = 0;
        for (i, &l) in row.iter().enumerate() {
            if l > row[best] || row[best].is_nan() {
                best = i;
            }
        }
        actions.push(best);
    }
}

/// Draws from softmax(`logits`) in f64. Non-finite logits fall back to the
/// first action rather than panicking (the learner never publishes such weights).
pub fn sample_categorical(logits: &[f32], rng: &mut impl Rng) -> usize {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return 0;
    }
    let total: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let mut u = rng.random::<f64>() * total;
    for (i, &l) in logits.iter().enumerate() {
        u -= (l as f64 - max).exp();
        if u < 0.0 {
            return i;
        }
    }
    logits.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn frequencies_follow_the_softmax() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let mut counts = [0usize; 3];
        for _ in 0..40_000 {
            counts[sample_categorical(&logits, &mut rng)] += 1;
        }
        assert_eq!(counts[2], 0);
        let p1 = counts[1] as f64 / 40_000.0;
        assert!((p1 - 0.75).abs() < 0.01, "p1 = {p1}");
    }

    #[test]
    fn batch_sampling_gives_one_action_per_row() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let logits = [100.0f32, 0.0, 0.0, 100.0];
        let mut actions = Vec::new();
        sample_actions(&logits, 2, &mut rng, &mut actions);
        assert_eq!(actions, vec![0, 1]);
    }

    #[test]
    fn greedy_takes_the_largest_logit_of_each_row() {
        let logits = [0.1f32, 2.0, -1.0, 3.0, 3.0, 0.0, f32::NAN, -5.0, -6.0];
        let mut actions = Vec::new();
        greedy_actions(&logits, 3, &mut actions);
        assert_eq!(actions, vec![1, 0, 1]);
    }
}
