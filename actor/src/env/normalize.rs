//! Observations scaled by their running mean and standard deviation
//! (`env.normalize_observations`), as Gymnasium's `NormalizeObservation`
//! does, then clipped to ±[`CLIP`] as PPO setups do (CleanRL's PPO, Stable
//! Baselines3's `VecNormalize`): a network sees every component on the same
//! unit scale, so small changes in a component with a small spread (a pole's
//! angle from one step to the next) are as visible as large ones.
//!
//! Two wrappers share [`RunningMoments`]:
//!
//! - [`NormalizeObservation`] wraps one native [`Environment`]: each
//!   environment keeps its own statistics, and normalises before any frame
//!   stacking.
//! - [`NormalizeBatch`] wraps a whole [`BatchEnv`] (a bridged vector, on
//!   every backend and across all its streams): one set of statistics over
//!   all observations of the vector, updated with each step's batch, as
//!   Gymnasium's vector `NormalizeObservation` does.
//!
//! Statistics keep updating for the whole life of the environments, the new
//! observations included before they are scaled, and are not saved. They
//! start from Gymnasium's prior (mean 0, variance 1, weight 1e-4), so the
//! first observations come out near their raw values rather than divided by
//! a variance of zero.

use fleet_agent::EnvSpec;
use fleet_trajectory::{Action, ActionBounds, ActionSpec, Actions, ObservationsMut};

use super::vector::{BatchEnv, Timestep};
use super::{EnvError, Environment, StepOutcome};

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

    /// Adds a batch of observations, `rows` of [`size`](Self::size) values
    /// each, merging its sample moments with the running ones (Chan et al.,
    /// as Gymnasium's `RunningMeanStd.update`). A batch of one row is
    /// [`update`](Self::update).
    ///
    /// # Panics
    /// If `rows` is not a whole number of observations.
    pub fn update_batch(&mut self, rows: &[f32]) {
        let size = self.mean.len();
        assert!(
            size > 0 && rows.len().is_multiple_of(size),
            "{} values are not rows of {size}",
            rows.len()
        );
        let n = (rows.len() / size) as f64;
        if n == 0.0 {
            return;
        }
        let total = self.count + n;
        for (k, (mean, variance)) in self.mean.iter_mut().zip(&mut self.variance).enumerate() {
            let column = || rows.iter().skip(k).step_by(size).map(|&x| f64::from(x));
            let batch_mean = column().sum::<f64>() / n;
            let batch_variance = column().map(|x| (x - batch_mean) * (x - batch_mean)).sum::<f64>() / n;
            let delta = batch_mean - *mean;
            *mean += delta * n / total;
            *variance = (*variance * self.count + batch_variance * n + delta * delta * self.count * n / total) / total;
        }
        self.count = total;
    }

    /// Number of components of one observation.
    pub fn size(&self) -> usize {
        self.mean.len()
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

/// A vector of environments whose observations are normalised by one set
/// of running moments over the whole vector: each step's observations (of
/// every environment, first ones after a reset included) update them as one
/// batch, then each is scaled. Only vector observations: frames are refused.
pub struct NormalizeBatch {
    inner: Box<dyn BatchEnv>,
    moments: RunningMoments,
    /// The inner vector's own current step, raw. It is the inner vector's
    /// to read and write (a lost bridge leaves it as it was), so
    /// observations are scaled exactly once whatever the inner one does.
    raw: Timestep,
}

impl NormalizeBatch {
    /// Wraps `inner`, whose environment is named `name` (for the error when
    /// its observations are frames).
    pub fn new(inner: Box<dyn BatchEnv>, name: &str) -> Result<Self, EnvError> {
        let spec = inner.spec();
        check_vector(name, &spec)?;
        Ok(Self {
            moments: RunningMoments::new(spec.observation_size()),
            raw: Timestep::new(&spec, inner.num_envs()),
            inner,
        })
    }

    /// The running moments so far.
    pub fn moments(&self) -> &RunningMoments {
        &self.moments
    }

    /// Takes in the raw step and writes it, scaled, into `timestep`.
    fn observe(&mut self, timestep: &mut Timestep) {
        let raw = self.raw.observations.as_ref().f32();
        self.moments.update_batch(raw);
        let scaled = timestep.observations.as_mut().f32();
        scaled.copy_from_slice(raw);
        for observation in scaled.chunks_exact_mut(self.moments.size()) {
            self.moments.normalize(observation);
        }
        timestep.copy_rewards_and_flags(&self.raw);
    }
}

/// `NormalizedFrames` naming `name` unless `spec` observes vectors.
pub fn check_vector(name: &str, spec: &EnvSpec) -> Result<(), EnvError> {
    match spec.frame() {
        Some(_) => Err(EnvError::NormalizedFrames(name.to_owned())),
        None => Ok(()),
    }
}

impl BatchEnv for NormalizeBatch {
    fn spec(&self) -> EnvSpec {
        self.inner.spec()
    }

    fn num_envs(&self) -> usize {
        self.inner.num_envs()
    }

    fn reset(&mut self, timestep: &mut Timestep) -> Result<(), EnvError> {
        self.inner.reset(&mut self.raw)?;
        self.observe(timestep);
        Ok(())
    }

    fn step(&mut self, actions: &Actions, timestep: &mut Timestep) -> Result<usize, EnvError> {
        let acted = self.inner.step(actions, &mut self.raw)?;
        self.observe(timestep);
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
    use super::*;
    use crate::env::{EnvConfig, NativeEnvs};

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
    fn a_batch_update_is_the_same_as_its_rows_one_by_one() {
        let rows: Vec<f32> = (0..24).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7 + (i % 3) as f32).collect();
        let (mut batched, mut one_by_one) = (RunningMoments::new(3), RunningMoments::new(3));
        batched.update_batch(&rows[..9]);
        batched.update_batch(&rows[9..]);
        for row in rows.chunks_exact(3) {
            one_by_one.update(row);
        }
        for k in 0..3 {
            assert!((batched.mean()[k] - one_by_one.mean()[k]).abs() < 1e-12, "mean {k}");
            assert!((batched.variance()[k] - one_by_one.variance()[k]).abs() < 1e-12, "variance {k}");
        }
        // A batch of one row is `update`, bit for bit.
        let mut single = RunningMoments::new(3);
        single.update_batch(&rows[..3]);
        let mut plain = RunningMoments::new(3);
        plain.update(&rows[..3]);
        assert_eq!((single.mean(), single.variance()), (plain.mean(), plain.variance()));
    }

    #[test]
    fn batch_updates_match_gymnasiums_running_mean_std() {
        // gymnasium.wrappers.utils.RunningMeanStd(shape=(2,)) updated with
        // these two batches, and the vector NormalizeObservation's scaling
        // of [4, -3] (Gymnasium 1.4.0). numpy takes a float32 batch's
        // moments in float32, so they agree to float32 precision.
        let mut moments = RunningMoments::new(2);
        moments.update_batch(&[1.0, -2.0, 3.0, 0.5, -0.5, 4.0]);
        moments.update_batch(&[10.0, 0.25, 2.0, -1.0]);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6 * b.abs().max(1.0);
        assert!(close(moments.mean()[0], 3.099_937_977_398_594_2) && close(moments.mean()[1], 0.349_992_988_219_306_5));
        assert!(close(moments.variance()[0], 13.239_947_552_968_87) && close(moments.variance()[1], 4.139_939_893_942_542));
        let mut scaled = [4.0_f32, -3.0];
        moments.normalize(&mut scaled);
        assert!(
            (scaled[0] - 0.247_359_9).abs() < 1e-6 && (scaled[1] + 1.646_443_7).abs() < 1e-6,
            "{scaled:?}"
        );
    }

    /// Pendulums with random actions in [-1, 1], and their current step.
    fn pendulums(normalized: bool) -> (Box<dyn BatchEnv>, Timestep) {
        let native = NativeEnvs::new(&EnvConfig::named(super::super::pendulum::NAME), 4, 8).unwrap();
        let spec = native.spec();
        let mut envs: Box<dyn BatchEnv> = Box::new(native);
        if normalized {
            envs = Box::new(NormalizeBatch::new(envs, "Pendulum-v1").unwrap());
        }
        let mut timestep = Timestep::new(&spec, 4);
        envs.reset(&mut timestep).unwrap();
        (envs, timestep)
    }

    fn actions(step: usize) -> Actions {
        let values = (0..4).map(|i| ((step * 7 + i * 3) % 9) as f32 / 4.0 - 1.0).collect();
        Actions::Continuous { dims: 1, values }
    }

    #[test]
    fn the_batch_wrapper_scales_every_observation_of_the_vector_by_one_set_of_moments() {
        let (mut raw, mut raw_step) = pendulums(false);
        let (mut scaled, mut scaled_step) = pendulums(true);
        let mut moments = RunningMoments::new(3);
        let mut velocities = Vec::new();
        for step in 0..=1200 {
            if step > 0 {
                assert_eq!(
                    raw.step(&actions(step), &mut raw_step).unwrap(),
                    scaled.step(&actions(step), &mut scaled_step).unwrap()
                );
            }
            let mut expected = raw_step.observations.as_ref().f32().to_vec();
            moments.update_batch(&expected);
            expected.chunks_exact_mut(3).for_each(|row| moments.normalize(row));
            assert_eq!(scaled_step.observations.as_ref().f32(), expected, "step {step}");
            assert_eq!(
                (
                    &scaled_step.rewards,
                    &scaled_step.is_first,
                    &scaled_step.terminated,
                    &scaled_step.truncated
                ),
                (&raw_step.rewards, &raw_step.is_first, &raw_step.terminated, &raw_step.truncated)
            );
            velocities.extend(expected.chunks_exact(3).map(|row| row[2]));
        }
        // The angular velocity (up to ±8 rad/s raw) comes out on a unit scale.
        let late = &velocities[velocities.len() / 2..];
        let spread = (late.iter().map(|v| v * v).sum::<f32>() / late.len() as f32).sqrt();
        assert!((0.5..2.0).contains(&spread), "{spread}");
        assert!(velocities.iter().all(|v| v.abs() <= CLIP));
    }

    /// A vector that goes on showing its first observations, as a lost
    /// bridge shows its last ones again without writing them.
    struct Frozen(NativeEnvs);

    impl BatchEnv for Frozen {
        fn spec(&self) -> EnvSpec {
            self.0.spec()
        }
        fn num_envs(&self) -> usize {
            self.0.num_envs()
        }
        fn reset(&mut self, timestep: &mut Timestep) -> Result<(), EnvError> {
            self.0.reset(timestep)
        }
        fn step(&mut self, _: &Actions, _: &mut Timestep) -> Result<usize, EnvError> {
            Ok(0)
        }
        fn action_bounds(&self) -> Option<ActionBounds> {
            self.0.action_bounds()
        }
    }

    #[test]
    fn observations_an_inner_vector_leaves_unwritten_are_scaled_once() {
        let native = NativeEnvs::new(&EnvConfig::named(super::super::pendulum::NAME), 2, 3).unwrap();
        let spec = native.spec();
        let mut envs = NormalizeBatch::new(Box::new(Frozen(native)), "Pendulum-v1").unwrap();
        let mut timestep = Timestep::new(&spec, 2);
        envs.reset(&mut timestep).unwrap();
        let first = envs.raw.observations.as_ref().f32().to_vec();
        envs.step(&actions(0), &mut timestep).unwrap();
        let mut moments = RunningMoments::new(3);
        moments.update_batch(&first);
        moments.update_batch(&first);
        let mut expected = first.clone();
        expected.chunks_exact_mut(3).for_each(|row| moments.normalize(row));
        assert_eq!(timestep.observations.as_ref().f32(), expected);
    }

    #[test]
    fn the_batch_wrapper_refuses_frames_naming_the_env() {
        let frames = NativeEnvs::new(&EnvConfig::named(super::super::catch::NAME), 2, 0).unwrap();
        let error = NormalizeBatch::new(Box::new(frames), "gym:ALE/Pong-v5")
            .err()
            .expect("frames are refused");
        assert!(
            matches!(&error, EnvError::NormalizedFrames(name) if name == "gym:ALE/Pong-v5"),
            "{error}"
        );
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
