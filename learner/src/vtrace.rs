//! V-trace off-policy targets and policy-gradient advantages, as defined in
//! IMPALA (Espeholt et al. 2018, §4.1), on time-major `[T, B]` candle tensors.
//!
//! This module only turns per-step log importance ratios, rewards, discounts
//! and values into value targets `v_s` and advantages. It is not a loss: it
//! takes no network, computes no log-probabilities and returns plain tensors
//! with no gradient attached (targets are constants for the optimiser). It
//! does not decide discounts either: callers pass `γ_t = γ·(1 − terminated_t)`
//! and mark episode boundaries with `mask`.
//!
//! Everything runs on the device the inputs live on. The only sequential part
//! is the backward recursion over `T`, done on `[B]` slices without copying to
//! the host; one small host read at the end produces `clipped_rho_fraction`.

use candle_core::{DType, Device, Result, Tensor, bail};

/// Clipping thresholds and trace decay. The defaults (all 1.0) are IMPALA's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VTraceParams {
    /// ρ̄: caps the importance weight inside δ_t, which sets the fixed point
    /// the value function converges to (π when ρ̄ = ∞, nearer μ as ρ̄ shrinks).
    pub rho_bar: f32,
    /// c̄: caps the trace coefficients, which only affects how fast the
    /// targets contract (the variance of the estimate), not the fixed point.
    pub c_bar: f32,
    /// Separate cap on the importance weight of the policy-gradient term.
    pub pg_rho_bar: f32,
    /// λ multiplies every trace coefficient `c_t` (as in SEED RL); 1 is the
    /// paper's setting, smaller values cut traces shorter.
    pub lambda: f32,
}

impl Default for VTraceParams {
    fn default() -> Self {
        Self {
            rho_bar: 1.0,
            c_bar: 1.0,
            pg_rho_bar: 1.0,
            lambda: 1.0,
        }
    }
}

impl VTraceParams {
    /// Rejects thresholds that are not positive (NaN included) and λ outside
    /// `[0, 1]`. Infinite thresholds are allowed and mean "no clipping".
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [("rho_bar", self.rho_bar), ("c_bar", self.c_bar), ("pg_rho_bar", self.pg_rho_bar)] {
            if value.is_nan() || value <= 0.0 {
                bail!("vtrace: {name} must be > 0, got {value}");
            }
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            bail!("vtrace: lambda must be in [0, 1], got {}", self.lambda);
        }
        Ok(())
    }
}

/// One batch of unrolls, time-major. All tensors are f32 on one device.
#[derive(Debug, Clone, Copy)]
pub struct VTraceInputs<'a> {
    /// `[T, B]` log π(a_t|x_t) − log μ(a_t|x_t): target over behaviour policy.
    pub log_rhos: &'a Tensor,
    /// `[T, B]` γ_t, the discount applied to the value of x_{t+1}: 0 when
    /// x_{t+1} is terminal, γ otherwise (truncation keeps γ and bootstraps).
    pub discounts: &'a Tensor,
    /// `[T, B]` reward received after acting at x_t.
    pub rewards: &'a Tensor,
    /// `[T, B]` V(x_t) from the current network.
    pub values: &'a Tensor,
    /// `[B]` V(x_T), the value of the observation after the last step.
    pub bootstrap_value: &'a Tensor,
    /// `[T, B]` 1.0 where step t is a real decision, 0.0 where x_t is the last
    /// observation of an episode and no action was taken there. Expected to
    /// hold only 0 and 1. At a masked step `v_t = V(x_t)`, which is what lets
    /// the step before it bootstrap from V(x_t) and stops the trace from
    /// running into the next episode.
    pub mask: &'a Tensor,
}

/// V-trace outputs, detached from any graph.
#[derive(Debug, Clone)]
pub struct VTraceReturns {
    /// `[T, B]` value targets v_s.
    pub vs: Tensor,
    /// `[T, B]` min(ρ̄_pg, ρ_s)·(r_s + γ_s v_{s+1} − V(x_s)), zero where masked.
    pub pg_advantages: Tensor,
    /// `[T, B]` min(ρ̄_pg, ρ_s), the factor of `pg_advantages` (for a loss
    /// that scales the advantages first).
    pub pg_rhos: Tensor,
    /// `[T, B]` r_s + γ_s v_{s+1} − V(x_s) without the importance weight,
    /// zero where masked (for a clipped-ratio surrogate, which applies its own).
    pub advantages: Tensor,
    /// Share of masked-in steps whose ρ_t is strictly above ρ̄ (a diagnostic
    /// for how far the behaviour policy lags); 0 when no step is masked in.
    pub clipped_rho_fraction: f32,
}

impl VTraceInputs<'_> {
    /// Checks ranks, shapes, dtypes and devices; returns `(T, B)`.
    fn validate(&self) -> Result<(usize, usize)> {
        let (t_len, batch) = match self.log_rhos.dims() {
            &[t, b] => (t, b),
            dims => bail!("vtrace: log_rhos must be [T, B], got shape {dims:?}"),
        };
        if t_len == 0 || batch == 0 {
            bail!("vtrace: empty unroll, log_rhos has shape [{t_len}, {batch}]");
        }
        let device = self.log_rhos.device();
        let expected: [(&str, &Tensor, &[usize]); 6] = [
            ("log_rhos", self.log_rhos, &[t_len, batch]),
            ("discounts", self.discounts, &[t_len, batch]),
            ("rewards", self.rewards, &[t_len, batch]),
            ("values", self.values, &[t_len, batch]),
            ("bootstrap_value", self.bootstrap_value, &[batch]),
            ("mask", self.mask, &[t_len, batch]),
        ];
        for (name, tensor, dims) in expected {
            if tensor.dims() != dims {
                bail!(
                    "vtrace: {name} has shape {:?}, expected {dims:?} (T = {t_len}, B = {batch} from log_rhos)",
                    tensor.dims()
                );
            }
            if tensor.dtype() != DType::F32 {
                bail!("vtrace: {name} has dtype {:?}, expected f32", tensor.dtype());
            }
            if !tensor.device().same_device(device) {
                bail!(
                    "vtrace: {name} is on {:?} but log_rhos is on {:?}",
                    tensor.device().location(),
                    device.location()
                );
            }
        }
        Ok((t_len, batch))
    }
}

/// `x` shifted one step earlier in time with `last` appended:
/// row t of the result is row t+1 of `x`, and row T−1 is `last`.
fn shift_in(x: &Tensor, last: &Tensor, t_len: usize) -> Result<Tensor> {
    let last = last.unsqueeze(0)?;
    if t_len == 1 {
        return Ok(last);
    }
    Tensor::cat(&[&x.narrow(0, 1, t_len - 1)?, &last], 0)
}

/// Computes V-trace targets and policy-gradient advantages.
///
/// With ρ_t = exp(log_rhos_t), ρ̃_t = min(ρ̄, ρ_t)·mask_t and
/// c_t = λ·min(c̄, ρ_t)·mask_t:
///
/// - δ_t = ρ̃_t (r_t + γ_t V(x_{t+1}) − V(x_t)), with V(x_T) = bootstrap_value;
/// - v_s − V(x_s) = δ_s + γ_s c_s (v_{s+1} − V(x_{s+1})), scanned backwards
///   from v_T − V(x_T) = 0;
/// - pg_advantage_s = min(ρ̄_pg, ρ_s)·(r_s + γ_s v_{s+1} − V(x_s))·mask_s,
///   with v_T = bootstrap_value.
///
/// The advantage is the paper's form for every λ. rlax's λ < 1 variant
/// (which uses λ v_{s+1} + (1−λ) V(x_{s+1}) in place of v_{s+1}) is not used.
///
/// Inputs are detached, so no gradient flows through the results. Returns an
/// error on bad parameters or on shape, dtype or device mismatches.
pub fn vtrace(inputs: &VTraceInputs<'_>, params: &VTraceParams) -> Result<VTraceReturns> {
    params.validate()?;
    let (t_len, batch) = inputs.validate()?;
    let device: &Device = inputs.log_rhos.device();

    let log_rhos = inputs.log_rhos.detach();
    let discounts = inputs.discounts.detach();
    let rewards = inputs.rewards.detach();
    let values = inputs.values.detach();
    let bootstrap = inputs.bootstrap_value.detach();
    let mask = inputs.mask.detach();

    let rhos = log_rhos.exp()?;
    let clipped_rhos = rhos.minimum(params.rho_bar)?.mul(&mask)?;
    let cs = (rhos.minimum(params.c_bar)? * f64::from(params.lambda))?.mul(&mask)?;

    let values_tp1 = shift_in(&values, &bootstrap, t_len)?;
    let td = ((&rewards + discounts.mul(&values_tp1)?)? - &values)?;
    let deltas = clipped_rhos.mul(&td)?;
    // γ_t c_t, the factor carrying the correction at t+1 back to t.
    let decay = discounts.mul(&cs)?;

    // Backward scan on [B] rows; everything stays on `device`.
    let mut acc = Tensor::zeros(batch, DType::F32, device)?;
    let mut rows = Vec::with_capacity(t_len);
    for t in (0..t_len).rev() {
        acc = (deltas.get(t)? + decay.get(t)?.mul(&acc)?)?;
        rows.push(acc.clone());
    }
    rows.reverse();
    let vs = (Tensor::stack(&rows, 0)? + &values)?;

    let vs_tp1 = shift_in(&vs, &bootstrap, t_len)?;
    let pg_td = ((&rewards + discounts.mul(&vs_tp1)?)? - &values)?;
    let advantages = pg_td.mul(&mask)?;
    let pg_rhos = rhos.minimum(params.pg_rho_bar)?;
    let pg_advantages = pg_rhos.mul(&advantages)?;

    Ok(VTraceReturns {
        vs,
        pg_advantages,
        pg_rhos,
        advantages,
        clipped_rho_fraction: clipped_rho_fraction(&rhos, &mask, params.rho_bar)?,
    })
}

/// Share of the `[T, B]` steps the mask keeps whose ratio `rhos` is strictly
/// above ρ̄; 0 when the mask keeps none.
pub fn clipped_rho_fraction(rhos: &Tensor, mask: &Tensor, rho_bar: f32) -> Result<f32> {
    let decided = mask.gt(0f32)?.to_dtype(DType::F32)?;
    let clipped = rhos.gt(rho_bar)?.to_dtype(DType::F32)?.mul(&decided)?;
    // One host read for both counts. f32 counts are exact far beyond any T·B.
    let counts = Tensor::stack(&[clipped.sum_all()?, decided.sum_all()?], 0)?.to_vec1::<f32>()?;
    Ok(if counts[1] > 0.0 { counts[0] / counts[1] } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Host-side copy of one batch, row-major `[T, B]` (index `t * b + j`).
    #[derive(Debug, Clone)]
    struct Batch {
        t: usize,
        b: usize,
        log_rhos: Vec<f32>,
        discounts: Vec<f32>,
        rewards: Vec<f32>,
        values: Vec<f32>,
        bootstrap: Vec<f32>,
        mask: Vec<f32>,
    }

    struct Tensors {
        log_rhos: Tensor,
        discounts: Tensor,
        rewards: Tensor,
        values: Tensor,
        bootstrap: Tensor,
        mask: Tensor,
    }

    impl Tensors {
        fn inputs(&self) -> VTraceInputs<'_> {
            VTraceInputs {
                log_rhos: &self.log_rhos,
                discounts: &self.discounts,
                rewards: &self.rewards,
                values: &self.values,
                bootstrap_value: &self.bootstrap,
                mask: &self.mask,
            }
        }
    }

    impl Batch {
        fn tensors(&self) -> Tensors {
            let tb = |v: &[f32]| Tensor::from_slice(v, (self.t, self.b), &Device::Cpu).unwrap();
            Tensors {
                log_rhos: tb(&self.log_rhos),
                discounts: tb(&self.discounts),
                rewards: tb(&self.rewards),
                values: tb(&self.values),
                bootstrap: Tensor::from_slice(&self.bootstrap, self.b, &Device::Cpu).unwrap(),
                mask: tb(&self.mask),
            }
        }

        fn run(&self, params: &VTraceParams) -> (Vec<f32>, Vec<f32>, f32) {
            let tensors = self.tensors();
            let out = vtrace(&tensors.inputs(), params).unwrap();
            assert_eq!(out.vs.dims(), &[self.t, self.b]);
            assert_eq!(out.pg_advantages.dims(), &[self.t, self.b]);
            let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (flat(&out.vs), flat(&out.pg_advantages), out.clipped_rho_fraction)
        }

        fn at(&self, v: &[f32], t: usize, j: usize) -> f64 {
            f64::from(v[t * self.b + j])
        }

        /// V(x_t) for t in 0..=T, where V(x_T) is the bootstrap value.
        fn value(&self, t: usize, j: usize) -> f64 {
            if t == self.t {
                f64::from(self.bootstrap[j])
            } else {
                self.at(&self.values, t, j)
            }
        }
    }

    /// Random batch with terminations (zero discounts) and last observations
    /// (zero mask) scattered through the sequence, plus one of each forced
    /// into the middle of column 0 so every case exercises both.
    fn random_batch(seed: u64, t: usize, b: usize) -> Batch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = t * b;
        let log_rhos = (0..n).map(|_| rng.random_range(-2.5f32..2.5)).collect();
        let mut discounts: Vec<f32> = (0..n)
            .map(|_| {
                if rng.random_bool(0.15) {
                    0.0
                } else {
                    rng.random_range(0.8f32..1.0)
                }
            })
            .collect();
        let rewards = (0..n).map(|_| rng.random_range(-1f32..1.0)).collect();
        let values = (0..n).map(|_| rng.random_range(-2f32..2.0)).collect();
        let bootstrap = (0..b).map(|_| rng.random_range(-2f32..2.0)).collect();
        let mut mask: Vec<f32> = (0..n).map(|_| if rng.random_bool(0.15) { 0.0 } else { 1.0 }).collect();
        if t >= 4 {
            discounts[b] = 0.0; // x_2 of column 0 is terminal
            mask[(t - 2) * b] = 0.0; // x_{T-2} of column 0 is a last observation
        }
        Batch {
            t,
            b,
            log_rhos,
            discounts,
            rewards,
            values,
            bootstrap,
            mask,
        }
    }

    /// The paper's Eq. 1 written out as a double sum, in f64:
    /// v_s = V(x_s) + Σ_{t=s}^{T−1} (Π_{i=s}^{t−1} γ_i c_i) δ_t.
    /// Returns (vs, pg_advantages, clipped fraction).
    fn ground_truth(batch: &Batch, p: &VTraceParams) -> (Vec<f64>, Vec<f64>, f64) {
        let (t_len, b) = (batch.t, batch.b);
        let rho_bar = f64::from(p.rho_bar);
        let c_bar = f64::from(p.c_bar);
        let pg_bar = f64::from(p.pg_rho_bar);
        let lambda = f64::from(p.lambda);
        let rho = |t: usize, j: usize| batch.at(&batch.log_rhos, t, j).exp();
        let mask = |t: usize, j: usize| batch.at(&batch.mask, t, j);
        let gamma = |t: usize, j: usize| batch.at(&batch.discounts, t, j);
        let reward = |t: usize, j: usize| batch.at(&batch.rewards, t, j);
        let c = |t: usize, j: usize| lambda * c_bar.min(rho(t, j)) * mask(t, j);
        let delta = |t: usize, j: usize| {
            rho_bar.min(rho(t, j)) * mask(t, j) * (reward(t, j) + gamma(t, j) * batch.value(t + 1, j) - batch.value(t, j))
        };

        let mut vs = vec![0.0; t_len * b];
        for j in 0..b {
            for s in 0..t_len {
                let mut v = batch.value(s, j);
                for t in s..t_len {
                    let mut weight = 1.0;
                    for i in s..t {
                        weight *= gamma(i, j) * c(i, j);
                    }
                    v += weight * delta(t, j);
                }
                vs[s * b + j] = v;
            }
        }
        let mut pg = vec![0.0; t_len * b];
        for j in 0..b {
            for s in 0..t_len {
                let v_next = if s + 1 == t_len {
                    batch.value(t_len, j)
                } else {
                    vs[(s + 1) * b + j]
                };
                pg[s * b + j] = pg_bar.min(rho(s, j)) * (reward(s, j) + gamma(s, j) * v_next - batch.value(s, j)) * mask(s, j);
            }
        }
        let (mut clipped, mut decided) = (0usize, 0usize);
        for t in 0..t_len {
            for j in 0..b {
                if mask(t, j) > 0.0 {
                    decided += 1;
                    if rho(t, j) > rho_bar {
                        clipped += 1;
                    }
                }
            }
        }
        (vs, pg, clipped as f64 / decided as f64)
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (f64::from(g) - w).abs();
            assert!(err <= tol * w.abs().max(1.0), "{what}[{i}]: got {g}, want {w} (error {err:e})");
        }
    }

    #[test]
    fn vtrace_matches_eq1_ground_truth() {
        let paper = VTraceParams {
            rho_bar: 3.7,
            c_bar: 1.0,
            pg_rho_bar: 2.2,
            lambda: 1.0,
        };
        let with_lambda = VTraceParams {
            c_bar: 1.5,
            lambda: 0.9,
            ..paper
        };
        let cases = [
            (1, 5, 1, paper),
            (2, 5, 5, paper),
            (3, 20, 3, paper),
            (4, 20, 3, with_lambda),
            (5, 5, 5, with_lambda),
        ];
        for (seed, t, b, params) in cases {
            let batch = random_batch(seed, t, b);
            let (vs, pg, fraction) = batch.run(&params);
            let (want_vs, want_pg, want_fraction) = ground_truth(&batch, &params);
            let what = format!("T={t} B={b} {params:?}");
            assert_close(&format!("vs {what}"), &vs, &want_vs, 1e-5);
            assert_close(&format!("pg {what}"), &pg, &want_pg, 1e-5);
            assert!(
                (f64::from(fraction) - want_fraction).abs() < 1e-6,
                "clipped fraction {what}: got {fraction}, want {want_fraction}"
            );
        }
    }

    #[test]
    fn vtrace_on_policy_is_lambda_return() {
        let mut batch = random_batch(11, 12, 4);
        batch.log_rhos.iter_mut().for_each(|x| *x = 0.0);
        batch.mask.iter_mut().for_each(|x| *x = 1.0);
        for lambda in [1.0f32, 0.8] {
            let params = VTraceParams {
                lambda,
                ..VTraceParams::default()
            };
            let (vs, pg, fraction) = batch.run(&params);
            let lambda = f64::from(lambda);
            let (t_len, b) = (batch.t, batch.b);
            let mut returns = vec![0.0; t_len * b];
            let mut want_pg = vec![0.0; t_len * b];
            for j in 0..b {
                let mut g_next = f64::from(batch.bootstrap[j]);
                for s in (0..t_len).rev() {
                    let r = batch.at(&batch.rewards, s, j);
                    let gamma = batch.at(&batch.discounts, s, j);
                    let v_next = batch.value(s + 1, j);
                    returns[s * b + j] = r + gamma * ((1.0 - lambda) * v_next + lambda * g_next);
                    want_pg[s * b + j] = r + gamma * g_next - batch.value(s, j);
                    g_next = returns[s * b + j];
                }
            }
            assert_close(&format!("vs lambda={lambda}"), &vs, &returns, 1e-5);
            assert_close(&format!("pg lambda={lambda}"), &pg, &want_pg, 1e-5);
            assert_eq!(fraction, 0.0);
        }
    }

    #[test]
    fn vtrace_clips_with_min_at_thresholds() {
        // T = 1 and γ = 0 make v = V + ρ̃·r and pg = min(ρ̄_pg, ρ)·r with r = 1, V = 0.
        // exp(0) is exactly 1, so the middle column sits exactly on ρ̄ = ρ̄_pg = 1.
        let log_rhos = [-0.1f32, 0.0, 0.1, 0.5];
        let batch = Batch {
            t: 1,
            b: 4,
            log_rhos: log_rhos.to_vec(),
            discounts: vec![0.0; 4],
            rewards: vec![1.0; 4],
            values: vec![0.0; 4],
            bootstrap: vec![5.0; 4],
            // The last column is above ρ̄ but masked out: it must not count as clipped.
            mask: vec![1.0, 1.0, 1.0, 0.0],
        };
        let (vs, pg, fraction) = batch.run(&VTraceParams::default());
        let below = f64::from((-0.1f32).exp());
        assert_close("vs at threshold", &vs, &[below, 1.0, 1.0, 0.0], 1e-6);
        assert_close("pg at threshold", &pg, &[below, 1.0, 1.0, 0.0], 1e-6);
        assert_eq!(fraction, 1.0 / 3.0, "only ρ > ρ̄ among masked-in steps counts");

        // Distinct thresholds, T = 2: ρ_0 ∈ {0.3, 1.2, 2.0}, ρ_1 = 1, r = 1,
        // γ_0 = 1, γ_1 = 0, V = 0. Then v_1 = 1 and
        // v_0 = min(ρ̄, ρ_0) + min(c̄, ρ_0)·v_1, pg_0 = min(ρ̄_pg, ρ_0)·(1 + v_1).
        let params = VTraceParams {
            rho_bar: 1.5,
            c_bar: 0.8,
            pg_rho_bar: 0.5,
            lambda: 1.0,
        };
        let rho0: Vec<f32> = [0.3f32, 1.2, 2.0].iter().map(|r| r.ln()).collect();
        let batch = Batch {
            t: 2,
            b: 3,
            log_rhos: [rho0.clone(), vec![0.0; 3]].concat(),
            discounts: [vec![1.0; 3], vec![0.0; 3]].concat(),
            rewards: vec![1.0; 6],
            values: vec![0.0; 6],
            bootstrap: vec![5.0; 3],
            mask: vec![1.0; 6],
        };
        let (vs, pg, fraction) = batch.run(&params);
        let rho: Vec<f64> = rho0.iter().map(|&l| f64::from(l.exp())).collect();
        let want_vs: Vec<f64> = rho.iter().map(|&r| 1.5f64.min(r) + 0.8f64.min(r)).chain([1.0; 3]).collect();
        let want_pg: Vec<f64> = rho
            .iter()
            .map(|&r| 0.5f64.min(r) * 2.0)
            .chain([f64::from(params.pg_rho_bar.min(1.0)); 3])
            .collect();
        assert_close("vs distinct thresholds", &vs, &want_vs, 1e-6);
        assert_close("pg distinct thresholds", &pg, &want_pg, 1e-6);
        assert!((fraction - 1.0 / 6.0).abs() < 1e-7, "fraction {fraction}");
    }

    #[test]
    fn vtrace_masked_step_cuts_trace_and_bootstraps() {
        // Column 0: an episode truncated at x_2 (mask 0 there, γ_1 = γ, not 0),
        // followed by a new episode at x_3.
        let gamma = 0.9f32;
        let mut batch = random_batch(21, 5, 1);
        batch.log_rhos = vec![0.3, -0.4, 0.7, 0.2, -0.1];
        batch.mask = vec![1.0, 1.0, 0.0, 1.0, 1.0];
        batch.discounts = vec![gamma; 5];
        let params = VTraceParams {
            rho_bar: 1.2,
            c_bar: 1.0,
            pg_rho_bar: 1.1,
            lambda: 1.0,
        };
        let (vs, pg, _) = batch.run(&params);

        assert_eq!(vs[2], batch.values[2], "masked step keeps v = V(x)");
        assert_eq!(pg[2], 0.0, "masked step has no advantage");

        let rho = |t: usize| f64::from(batch.log_rhos[t]).exp();
        let r = |t: usize| f64::from(batch.rewards[t]);
        let v = |t: usize| batch.value(t, 0);
        let g = f64::from(gamma);
        let want_v1 = v(1) + 1.2f64.min(rho(1)) * (r(1) + g * v(2) - v(1));
        let want_pg1 = 1.1f64.min(rho(1)) * (r(1) + g * v(2) - v(1));
        let want_v0 = v(0) + 1.2f64.min(rho(0)) * (r(0) + g * v(1) - v(0)) + g * 1.0f64.min(rho(0)) * (want_v1 - v(1));
        assert_close("v_0, v_1", &vs[..2], &[want_v0, want_v1], 1e-6);
        assert_close("pg_1", &pg[1..2], &[want_pg1], 1e-6);

        // Nothing after x_2 other than V(x_2) itself may reach steps 0 and 1.
        let mut later = batch.clone();
        later.rewards[2] += 3.0;
        later.rewards[3] -= 2.0;
        later.values[3] += 1.5;
        later.log_rhos[3] = -2.0;
        later.bootstrap[0] += 4.0;
        let (vs_later, pg_later, _) = later.run(&params);
        assert_eq!(vs_later[..3], vs[..3]);
        assert_eq!(pg_later[..3], pg[..3]);
        assert_ne!(vs_later[3], vs[3], "the perturbation must reach the next episode");
    }

    #[test]
    fn vtrace_rejects_bad_shapes_and_params() {
        let good = random_batch(31, 4, 3).tensors();
        let p = VTraceParams::default();
        assert!(vtrace(&good.inputs(), &p).is_ok());

        let wide = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
        let short = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap();
        let flat = Tensor::zeros(12, DType::F32, &Device::Cpu).unwrap();
        let boot4 = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let double = Tensor::zeros((4, 3), DType::F64, &Device::Cpu).unwrap();
        let empty = Tensor::zeros((0, 3), DType::F32, &Device::Cpu).unwrap();
        let cases: [(&str, VTraceInputs<'_>); 7] = [
            (
                "rewards",
                VTraceInputs {
                    rewards: &wide,
                    ..good.inputs()
                },
            ),
            (
                "discounts",
                VTraceInputs {
                    discounts: &short,
                    ..good.inputs()
                },
            ),
            (
                "mask",
                VTraceInputs {
                    mask: &wide,
                    ..good.inputs()
                },
            ),
            (
                "values",
                VTraceInputs {
                    values: &double,
                    ..good.inputs()
                },
            ),
            (
                "bootstrap_value",
                VTraceInputs {
                    bootstrap_value: &boot4,
                    ..good.inputs()
                },
            ),
            (
                "log_rhos",
                VTraceInputs {
                    log_rhos: &flat,
                    ..good.inputs()
                },
            ),
            (
                "empty",
                VTraceInputs {
                    log_rhos: &empty,
                    ..good.inputs()
                },
            ),
        ];
        for (name, inputs) in cases {
            match vtrace(&inputs, &p) {
                Ok(_) => panic!("{name}: mismatch accepted"),
                Err(e) => assert!(e.to_string().contains(name), "{name}: unclear error {e}"),
            }
        }

        for bad in [
            VTraceParams { lambda: 1.5, ..p },
            VTraceParams { rho_bar: 0.0, ..p },
            VTraceParams { c_bar: f32::NAN, ..p },
            VTraceParams { pg_rho_bar: -1.0, ..p },
        ] {
            assert!(vtrace(&good.inputs(), &bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn vtrace_outputs_carry_no_gradient() {
        let batch = random_batch(41, 6, 2);
        let tensors = batch.tensors();
        let values = Var::from_tensor(&tensors.values).unwrap();
        let log_rhos = Var::from_tensor(&tensors.log_rhos).unwrap();
        let inputs = VTraceInputs {
            values: values.as_tensor(),
            log_rhos: log_rhos.as_tensor(),
            ..tensors.inputs()
        };
        let out = vtrace(&inputs, &VTraceParams::default()).unwrap();
        // A loss that uses the targets together with the live values: only the
        // explicit use of `values` may produce a gradient.
        let loss = (out.vs.sum_all().unwrap() + out.pg_advantages.sum_all().unwrap()).unwrap();
        let loss = (loss + values.as_tensor().sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(log_rhos.as_tensor()).is_none(), "gradient leaked into log_rhos");
        let grad_v = grads.get(values.as_tensor()).expect("values gradient").flatten_all().unwrap();
        assert_eq!(grad_v.to_vec1::<f32>().unwrap(), vec![1.0; 12], "gradient leaked through vs");
    }
}
