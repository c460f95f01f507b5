//! Observations scaled by their running mean and standard deviation
//! (`env.normalize_observations`), as Gymnasium's `NormalizeObservation`
//! does: a network sees every component on the same unit scale, so small
//! changes in a component with a small spread (a pole's angle from one step
//! to the next) are as visible as large ones.
//!
//! The statistics belong to each environment and keep updating for its whole
//! life, the new observation included before it is scaled. They start from
//! Gymnasium's prior (mean 0, variance 1, weight 1e-4), so the first
//! observations come out near their raw values rather than divided by a
//! variance of zero. Scaled values are clipped to ±[`CLIP`].

use super::{Environment, StepOutcome};
use fleet_trajectory::{Action, ActionBounds, ActionSpec, ObservationsMut};

/// Bound on a scaled component: one wild early observation cannot saturate
/// the network.
pub const CLIP: f32 = 10.0;

/// Weight of the prior (mean 0, variance 1) in the running statistics.
const PRIOR_COUNT: f64 = 1e-4;

/// Keeps the division finite for a component that never changes.
const EPSILON: f64 = 1e-8;

/// Running mean and variance of each observation component.
#[derive(Debug, Clone)]
pub struct RunningMoments {
    count: f64,
    mean: Vec<f64>,
    variance: Vec<f64>,
}

impl RunningMoments {
    pub fn new(size: usize) -> Self {
        Self {
            count: PRIOR_COUNT,
            mean: vec![0.0; size],
            variance: vec![1.0; size],
        }
    }

    /// Adds one observation (Chan et al.'s merge with a batch of one).
    pub fn update(&mut self, observation: &[f32]) {
        let total = self.count + 1.0;
        for ((mean, variance), &x) in self.mean.iter_mut().zip(&mut self.variance).zip(observation) {
            let delta = f64::from(x) - *mean;
            *mean += delta / total;
            *variance = (*variance * self.count + delta * delta * self.count / total) / total;
        }
        self.count = total;
    }

    /// Scales `observation` in place to zero mean and unit variance, clipped.
    pub fn normalize(&self, observation: &mut [f32]) {
        for ((x, mean), variance) in observation.iter_mut().zip(&self.mean).zip(&self.variance) {
            let scaled = (f64::from(*x) - mean) / (variance + EPSILON).sqrt();
            *x = (scaled as f32).clamp(-CLIP, CLIP);
        }
    }

    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    pub fn variance(&self) -> &[f64] {
        &self.variance
    }
}

/// An environment whose observations are normalised by their running moments.
pub struct NormalizeObservation {
    inner: Box<dyn Environment>,
    moments: RunningMoments,
}

impl NormalizeObservation {
    pub fn new(inner: Box<dyn Environment>) -> Self {
        let moments = RunningMoments::new(inner.observation_size());
        Self { inner, moments }
    }

    fn observe(&mut self, observation: &mut [f32]) {
        self.moments.update(observation);
        self.moments.normalize(observation);
    }
}

impl Environment for NormalizeObservation {
    fn observation_size(&self) -> usize {
        self.inner.observation_size()
    }

    fn action_spec(&self) -> ActionSpec {
        self.inner.action_spec()
    }

    fn action_bounds(&self) -> Option<ActionBounds> {
        self.inner.action_bounds()
    }

    fn physical_state(&self) -> Option<&[f64]> {
        self.inner.physical_state()
    }

    // Frames keep no shape here: scaled pixels are no longer intensities,
    // and the registry refuses to normalise image environments.

    fn reset(&mut self, observation: ObservationsMut<'_>) {
        let observation = observation.f32();
        self.inner.reset(ObservationsMut::F32(&mut *observation));
        self.observe(observation);
    }

    fn step(&mut self, action: Action<'_>, observation: ObservationsMut<'_>) -> StepOutcome {
        let observation = observation.f32();
        let outcome = self.inner.step(action, ObservationsMut::F32(&mut *observation));
        self.observe(observation);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_moments_match_the_sample_moments() {
        let samples: Vec<[f32; 2]> = (0..1000).map(|i| [i as f32 * 0.01, 5.0 + (i % 7) as f32]).collect();
        let mut moments = RunningMoments::new(2);
        for sample in &samples {
            moments.update(sample);
        }
        for k in 0..2 {
            let n = samples.len() as f64;
            let mean = samples.iter().map(|s| f64::from(s[k])).sum::<f64>() / n;
            let variance = samples.iter().map(|s| (f64::from(s[k]) - mean).powi(2)).sum::<f64>() / n;
            assert!((moments.mean()[k] - mean).abs() < 1e-6 * (1.0 + mean.abs()), "mean {k}");
            assert!((moments.variance()[k] - variance).abs() < 1e-3 * variance, "variance {k}");
        }
    }

    #[test]
    fn normalised_values_have_unit_scale_and_are_clipped() {
        let mut moments = RunningMoments::new(1);
        for i in 0..10_000 {
            moments.update(&[if i % 2 == 0 { 0.01 } else { -0.01 }]);
        }
        let mut x = [0.01_f32];
        moments.normalize(&mut x);
        assert!((x[0] - 1.0).abs() < 1e-3, "{x:?}");
        let mut far = [1.0_f32];
        moments.normalize(&mut far);
        assert_eq!(far[0], CLIP);
    }

    #[test]
    fn the_wrapper_scales_a_small_component_up_to_unit_spread() {
        let mut env = NormalizeObservation::new(Box::new(super::super::MaskedCartPole::new(3)));
        let mut observation = [0.0_f32; 2];
        env.reset(ObservationsMut::F32(&mut observation));
        let mut angles = Vec::new();
        for t in 0..5000 {
            if env.step(Action::Discrete(t % 2), ObservationsMut::F32(&mut observation)).is_last() {
                env.reset(ObservationsMut::F32(&mut observation));
            }
            angles.push(observation[1]);
        }
        let late = &angles[4000..];
        let spread = (late.iter().map(|a| a * a).sum::<f32>() / late.len() as f32).sqrt();
        assert!((0.5..2.0).contains(&spread), "{spread}");
    }
}
