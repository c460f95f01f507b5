//! The policy's distribution over actions, read from the policy head's
//! output: a categorical over logits for discrete actions, or a diagonal
//! Gaussian over means then log standard deviations for continuous ones,
//! optionally squashed by tanh.
//!
//! The actor samples from it on the host with its own seeded RNG; the
//! learner takes log-probabilities and entropies of the same parameters on
//! tensors. A sequence records the parameters the behaviour policy acted
//! with, so the learner computes ρ = π(a)/μ(a) from both sides with the same
//! formula.
//!
//! A squashed Gaussian acts with `tanh(u)` for a Gaussian sample `u`, and the
//! sequence records `u`: its log-density is the Gaussian's at `u` minus
//! `Σ log(1 − tanh(u)²)` (the change of variables), a term that depends on
//! `u` only and so cancels in ρ. Its entropy has no closed form; the
//! Gaussian's entropy stands in for it as the bonus.

use candle_core::{D, DType, Result, Tensor};
use candle_nn::ops::log_softmax;
use fleet_trajectory::{ActionSpec, Actions};
use rand::Rng;
use rand_distr::StandardNormal;

/// `½·ln(2π)`, the normal density's constant.
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

/// Log standard deviations are clamped to this range at the head, so a
/// Gaussian policy can neither collapse to a point nor spread beyond any
/// action range (`e^2 ≈ 7.4` times the normalised range's half-width).
pub const LOG_STD_RANGE: (f32, f32) = (-5.0, 2.0);

/// How a policy's parameters become actions and probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyDistribution {
    /// Softmax over `num_actions` logits.
    Categorical { num_actions: usize },
    /// Independent normals per dimension: `dims` means then `dims` log
    /// standard deviations; actions `tanh(u)` of a sample `u` when `squash`.
    Gaussian { dims: usize, squash: bool },
}

impl PolicyDistribution {
    /// The distribution of a policy over `action`'s actions.
    pub const fn new(action: ActionSpec, squash: bool) -> Self {
        match action {
            ActionSpec::Discrete { num_actions } => Self::Categorical { num_actions },
            ActionSpec::Continuous { dims } => Self::Gaussian { dims, squash },
        }
    }

    /// Parameters per step: logits, or means and log deviations.
    pub const fn width(&self) -> usize {
        match self {
            Self::Categorical { num_actions } => *num_actions,
            Self::Gaussian { dims, .. } => 2 * *dims,
        }
    }

    /// Samples one action per row of `params` (`[n, width]`, row-major)
    /// into `actions`: an index, or for a Gaussian the sample `u` as the
    /// sequence records it (see [`env_actions`](Self::env_actions)).
    pub fn sample(&self, params: &[f32], rng: &mut impl Rng, actions: &mut Actions) {
        match (self, actions) {
            (Self::Categorical { num_actions }, Actions::Discrete(indices)) => {
                indices.clear();
                indices.extend(params.chunks_exact(*num_actions).map(|row| sample_categorical(row, rng)));
            }
            (Self::Gaussian { dims, .. }, Actions::Continuous { values, .. }) => {
                values.clear();
                for row in params.chunks_exact(2 * dims) {
                    let (means, log_stds) = row.split_at(*dims);
                    values.extend(means.iter().zip(log_stds).map(|(&mean, &log_std)| {
                        let noise: f32 = rng.sample(StandardNormal);
                        mean + log_std.exp() * noise
                    }));
                }
            }
            (this, actions) => panic!("{this:?} cannot fill {actions:?}"),
        }
    }

    /// The most likely action of each row: the first largest logit (NaN
    /// never wins), or the mean.
    pub fn greedy(&self, params: &[f32], actions: &mut Actions) {
        match (self, actions) {
            (Self::Categorical { num_actions }, Actions::Discrete(indices)) => {
                indices.clear();
                indices.extend(params.chunks_exact(*num_actions).map(argmax));
            }
            (Self::Gaussian { dims, .. }, Actions::Continuous { values, .. }) => {
                values.clear();
                for row in params.chunks_exact(2 * dims) {
                    values.extend_from_slice(&row[..*dims]);
                }
            }
            (this, actions) => panic!("{this:?} cannot fill {actions:?}"),
        }
    }

    /// Whether recorded actions pass through tanh on their way to the
    /// environment.
    pub const fn squashes(&self) -> bool {
        matches!(self, Self::Gaussian { squash: true, .. })
    }

    /// The normalised actions (`[-1, 1]` per dimension) the environment is
    /// given for the recorded `actions`: `tanh(u)`, written into `squashed`,
    /// when squashing; otherwise `actions` themselves, uncopied (the
    /// environment clips them).
    pub fn env_actions<'a>(&self, actions: &'a Actions, squashed: &'a mut Actions) -> &'a Actions {
        if !self.squashes() {
            return actions;
        }
        squashed.clone_from(actions);
        if let Actions::Continuous { values, .. } = squashed {
            values.iter_mut().for_each(|v| *v = v.tanh());
        }
        squashed
    }

    /// `log π(a)` per step, `[…]`, from `params` `[…, width]` and `actions`:
    /// u32 indices `[…]`, or f32 values `[…, dims]` (for a squashed
    /// Gaussian the recorded `u`; the log-density is that of `tanh(u)`).
    pub fn log_prob(&self, params: &Tensor, actions: &Tensor) -> Result<Tensor> {
        match self {
            Self::Categorical { .. } => {
                let index = actions.unsqueeze(D::Minus1)?;
                log_softmax(params, D::Minus1)?.gather(&index, D::Minus1)?.squeeze(D::Minus1)
            }
            Self::Gaussian { dims, squash } => {
                let (mean, log_std) = split_gaussian(params, *dims)?;
                let z = ((actions - &mean)? / log_std.exp()?)?;
                let per_dim = ((z.sqr()? * -0.5)? - &log_std)?.affine(1.0, -HALF_LN_2PI)?;
                let gaussian = per_dim.sum(D::Minus1)?;
                if *squash {
                    gaussian - tanh_log_jacobian(actions)?.sum(D::Minus1)?
                } else {
                    Ok(gaussian)
                }
            }
        }
    }

    /// The entropy per step, `[…]`: the softmax's, or the Gaussian's
    /// `Σ (log σ + ½·ln(2πe))` (for a squashed one too, see the module
    /// documentation).
    pub fn entropy(&self, params: &Tensor) -> Result<Tensor> {
        match self {
            Self::Categorical { .. } => {
                let log_probs = log_softmax(params, D::Minus1)?;
                (log_probs.exp()? * &log_probs)?.sum(D::Minus1)?.neg()
            }
            Self::Gaussian { dims, .. } => {
                let (_, log_std) = split_gaussian(params, *dims)?;
                log_std.affine(1.0, HALF_LN_2PI + 0.5)?.sum(D::Minus1)
            }
        }
    }

    /// The element type of recorded actions in a batch: u32 indices or f32 values.
    pub const fn action_dtype(&self) -> DType {
        match self {
            Self::Categorical { .. } => DType::U32,
            Self::Gaussian { .. } => DType::F32,
        }
    }
}

/// Means and log deviations of `[…, 2·dims]` Gaussian parameters.
fn split_gaussian(params: &Tensor, dims: usize) -> Result<(Tensor, Tensor)> {
    let last = params.rank() - 1;
    Ok((params.narrow(last, 0, dims)?, params.narrow(last, dims, dims)?))
}

/// `log(1 − tanh(u)²)` per element, as `2·(ln 2 − u − softplus(−2u))`,
/// which stays finite where `tanh(u)` rounds to ±1.
fn tanh_log_jacobian(u: &Tensor) -> Result<Tensor> {
    let softplus = ((u * -2.0)?.exp()? + 1.0)?.log()?;
    // softplus(−2u) overflows to inf for u ≪ 0; there it equals −2u.
    let minus_two_u = (u * -2.0)?;
    let softplus = softplus.minimum(&(minus_two_u.relu()? + std::f64::consts::LN_2)?)?;
    ((u.neg()? - softplus)? + std::f64::consts::LN_2)? * 2.0
}

/// Index of the largest value: the first of equal ones; NaN never wins.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in row.iter().enumerate() {
        if l > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
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
    use candle_core::Device;
    use rand::SeedableRng;

    fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(seed)
    }

    fn scalars(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn categorical_frequencies_follow_the_softmax() {
        let mut rng = rng(3);
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
    fn categorical_sampling_and_greedy_give_one_action_per_row() {
        let dist = PolicyDistribution::Categorical { num_actions: 3 };
        let mut actions = Actions::Discrete(Vec::new());
        dist.sample(&[100.0, 0.0, 0.0, 0.0, 0.0, 100.0], &mut rng(0), &mut actions);
        assert_eq!(actions, Actions::Discrete(vec![0, 2]));
        dist.greedy(&[0.1, 2.0, -1.0, 3.0, 3.0, 0.0, f32::NAN, -5.0, -6.0], &mut actions);
        assert_eq!(actions, Actions::Discrete(vec![1, 0, 1]));
    }

    #[test]
    fn gaussian_samples_have_the_policy_mean_and_deviation() {
        let dist = PolicyDistribution::Gaussian { dims: 2, squash: false };
        let params = [0.5f32, -1.0, (0.2f32).ln(), (2.0f32).ln()];
        let (mut sums, mut squares) = ([0f64; 2], [0f64; 2]);
        let mut actions = Actions::Continuous {
            dims: 2,
            values: Vec::new(),
        };
        let mut rng = rng(1);
        let n = 50_000;
        for _ in 0..n {
            dist.sample(&params, &mut rng, &mut actions);
            let Actions::Continuous { values, .. } = &actions else {
                unreachable!()
            };
            for d in 0..2 {
                sums[d] += f64::from(values[d]);
                squares[d] += f64::from(values[d]).powi(2);
            }
        }
        for (d, (mean, std)) in [(0.5, 0.2), (-1.0, 2.0)].into_iter().enumerate() {
            let m = sums[d] / n as f64;
            let s = (squares[d] / n as f64 - m * m).sqrt();
            assert!((m - mean).abs() < 0.03 && (s - std).abs() / std < 0.02, "dim {d}: {m} ± {s}");
        }
        dist.greedy(&params, &mut actions);
        assert_eq!(actions.get(0).continuous(), &[0.5, -1.0]);
    }

    #[test]
    fn gaussian_log_prob_and_entropy_match_the_closed_form() {
        let dims = 3;
        let dist = PolicyDistribution::Gaussian { dims, squash: false };
        let means = [0.3f64, -1.2, 2.0];
        let log_stds = [-0.7f64, 0.0, 0.9];
        let action = [0.1f64, -2.5, 4.0];
        let params: Vec<f32> = means.iter().chain(&log_stds).map(|&x| x as f32).collect();
        let params = Tensor::from_vec(params, (1, 2 * dims), &Device::Cpu).unwrap();
        let actions = Tensor::from_vec(action.map(|x| x as f32).to_vec(), (1, dims), &Device::Cpu).unwrap();
        // The product of three normal densities, written out.
        let density: f64 = (0..dims)
            .map(|d| {
                let std = log_stds[d].exp();
                (-(action[d] - means[d]).powi(2) / (2.0 * std * std)).exp() / (std * (2.0 * std::f64::consts::PI).sqrt())
            })
            .product();
        let log_prob = scalars(&dist.log_prob(&params, &actions).unwrap())[0];
        assert!((f64::from(log_prob) - density.ln()).abs() < 1e-5, "{log_prob} vs {}", density.ln());
        let entropy: f64 = log_stds
            .iter()
            .map(|&ls| 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * (2.0 * ls).exp()).ln())
            .sum();
        let ours = scalars(&dist.entropy(&params).unwrap())[0];
        assert!((f64::from(ours) - entropy).abs() < 1e-5, "{ours} vs {entropy}");
    }

    /// The squashed density integrates the Gaussian's over each small
    /// interval of `tanh(u)`: P(a ∈ [x, x + h]) ≈ density(x)·h, with the
    /// probability from the normal CDF at `atanh` of the ends.
    #[test]
    fn squashed_log_prob_matches_a_numeric_density() {
        let dist = PolicyDistribution::Gaussian { dims: 1, squash: true };
        let (mean, log_std) = (0.4f64, -0.3f64);
        let std = log_std.exp();
        let cdf = |u: f64| 0.5 * (1.0 + libm::erf((u - mean) / (std * std::f64::consts::SQRT_2)));
        let params = Tensor::from_vec(vec![mean as f32, log_std as f32], (1, 2), &Device::Cpu).unwrap();
        for u in [-2.0f64, -0.5, 0.0, 0.7, 1.5, 3.0] {
            let (a, h) = (u.tanh(), 1e-4);
            let numeric = ((cdf((a + h / 2.0).atanh()) - cdf((a - h / 2.0).atanh())) / h).ln();
            let actions = Tensor::from_vec(vec![u as f32], (1, 1), &Device::Cpu).unwrap();
            let ours = f64::from(scalars(&dist.log_prob(&params, &actions).unwrap())[0]);
            assert!((ours - numeric).abs() < 2e-3, "u = {u}: {ours} vs {numeric}");
        }
        // Far in the tails tanh(u) rounds to ±1 in f32; the correction stays finite.
        let far = Tensor::from_vec(vec![40f32, -40.0], (2, 1), &Device::Cpu).unwrap();
        let params = Tensor::from_vec(vec![0f32, 0.0, 0.0, 0.0], (2, 2), &Device::Cpu).unwrap();
        assert!(scalars(&dist.log_prob(&params, &far).unwrap()).iter().all(|x| x.is_finite()));
    }

    #[test]
    fn squashed_actions_reach_the_environment_through_tanh() {
        let recorded = Actions::Continuous {
            dims: 2,
            values: vec![0.0, 10.0],
        };
        let mut env = Actions::Continuous {
            dims: 2,
            values: Vec::new(),
        };
        let squashed = PolicyDistribution::Gaussian { dims: 2, squash: true }.env_actions(&recorded, &mut env);
        assert_eq!(squashed.get(0).continuous(), &[0.0, 10f32.tanh()]);
        let plain = PolicyDistribution::Gaussian { dims: 2, squash: false }.env_actions(&recorded, &mut env);
        assert!(std::ptr::eq(plain, &recorded), "unsquashed actions are passed on, not copied");
    }
}
