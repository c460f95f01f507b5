//! One optimisation step: gradients of the loss, global-norm clipping, then
//! Adam (or AdamW) or RMSProp. Written here rather than taken from candle-nn because the
//! optimiser state (moments, step count) must be saved in checkpoints and
//! restored exactly, which candle-nn's optimisers keep private.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use fleet_kernels::optim;

/// Which update rule, and its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerConfig {
    /// Adam (Kingma & Ba), bias-corrected; with `weight_decay > 0` it is
    /// AdamW (Loshchilov & Hutter): the decay is applied to the parameters
    /// directly, `θ ← θ − lr·(m̂/(√v̂ + ε) + λ·θ)`, not added to the gradient.
    /// With `amsgrad` (Reddi et al. 2018) the denominator uses the largest
    /// second moment seen so far instead of the current one, so a stretch of
    /// tiny gradients cannot shrink it and turn noise, or the first large
    /// gradient after the stretch, into full-size steps.
    Adam {
        beta1: f64,
        beta2: f64,
        epsilon: f64,
        weight_decay: f64,
        amsgrad: bool,
    },
    /// RMSProp as IMPALA used it (TensorFlow's form: ε inside the square
    /// root, no momentum): `ms ← ρ·ms + (1−ρ)·g²`, `θ ← θ − lr·g/√(ms + ε)`.
    Rmsprop { decay: f64, epsilon: f64 },
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }
}

impl OptimizerConfig {
    /// IMPALA's RMSProp settings (decay 0.99, ε 0.01).
    pub fn impala_rmsprop() -> Self {
        Self::Rmsprop {
            decay: 0.99,
            epsilon: 0.01,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let (rates, epsilon) = match *self {
            Self::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
                ..
            } => {
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return Err(format!("learner.weight_decay must be a finite number ≥ 0, got {weight_decay}"));
                }
                (vec![("adam_beta1", beta1), ("adam_beta2", beta2)], ("adam_epsilon", epsilon))
            }
            Self::Rmsprop { decay, epsilon } => (vec![("rmsprop_decay", decay)], ("rmsprop_epsilon", epsilon)),
        };
        for (key, value) in rates {
            if !(0.0..1.0).contains(&value) {
                return Err(format!("learner.{key} must be in [0, 1), got {value}"));
            }
        }
        if !(epsilon.1 > 0.0 && epsilon.1.is_finite()) {
            return Err(format!("learner.{} must be positive, got {}", epsilon.0, epsilon.1));
        }
        Ok(())
    }
}

/// What one step did, per variable in the order given to [`Optimiser::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Global gradient norm before clipping; not finite when the step was skipped.
    pub grad_norm: f64,
    /// ‖g‖ per variable, before clipping.
    pub layer_grad_norms: Vec<f64>,
    /// ‖Δθ‖ per variable: the optimiser's effective step (0 when skipped).
    pub layer_step_norms: Vec<f64>,
    /// ‖θ‖ per variable after the step (0 when skipped).
    pub layer_param_norms: Vec<f64>,
}

impl StepReport {
    pub fn applied(&self) -> bool {
        self.grad_norm.is_finite()
    }

    /// ‖Δθ‖ / ‖θ‖ over all variables: how far one step moved the network.
    pub fn relative_step(&self) -> f64 {
        let square = |v: &[f64]| v.iter().map(|n| n * n).sum::<f64>();
        (square(&self.layer_step_norms) / square(&self.layer_param_norms).max(f64::MIN_POSITIVE)).sqrt()
    }
}

/// Per-parameter state: Adam's two moments (and AMSGrad's running maximum
/// of the second), or RMSProp's mean square.
#[derive(Debug)]
struct Slot {
    var: Var,
    first: Option<Tensor>,
    second: Tensor,
    second_max: Option<Tensor>,
}

impl Slot {
    /// Whether this step runs on the CPU kernels, updating the moments and
    /// the parameters in place (contiguous f32 on the CPU, and Adam's first
    /// moment present).
    fn in_place(&self, config: OptimizerConfig, g: &Tensor) -> bool {
        if matches!(config, OptimizerConfig::Adam { .. }) && self.first.is_none() {
            return false;
        }
        let mut tensors = vec![self.var.as_tensor(), g, &self.second];
        tensors.extend(&self.first);
        tensors.extend(&self.second_max);
        optim::in_place(&tensors)
    }

    /// One step on the CPU kernels, in place; returns `(‖Δθ‖², ‖θ‖²)`.
    fn step_in_place(&mut self, config: OptimizerConfig, g: &Tensor, steps: u64, lr: f64) -> Result<(f64, f64)> {
        let theta = self.var.as_tensor();
        match config {
            OptimizerConfig::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
                ..
            } => {
                let Some(first) = &self.first else {
                    candle_core::bail!("Adam without its first moment");
                };
                optim::decay_toward(first, g, beta1, false)?;
                optim::decay_toward(&self.second, g, beta2, true)?;
                let denominator = match &self.second_max {
                    Some(max) => {
                        optim::raise_to(max, &self.second)?;
                        max
                    }
                    None => &self.second,
                };
                let t = steps as i32;
                let step = optim::AdamStep {
                    learning_rate: lr,
                    first_scale: 1.0 / (1.0 - beta1.powi(t)),
                    second_scale: 1.0 / (1.0 - beta2.powi(t)),
                    epsilon,
                    weight_decay,
                };
                optim::adam_apply(theta, first, denominator, step)
            }
            OptimizerConfig::Rmsprop { decay, epsilon } => {
                optim::decay_toward(&self.second, g, decay, true)?;
                optim::rmsprop_apply(theta, g, &self.second, lr, epsilon)
            }
        }
    }

    /// One step from candle ops, on any device; returns `(‖Δθ‖², ‖θ‖²)`.
    fn step_with_ops(&mut self, config: OptimizerConfig, g: &Tensor, steps: u64, lr: f64) -> Result<(f64, f64)> {
        let theta = self.var.as_tensor();
        let next = match config {
            OptimizerConfig::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
                ..
            } => {
                let t = steps as i32;
                // Adam slots start with a zero first moment; one
                // missing would be zero too, and contributes nothing.
                let m = match &self.first {
                    Some(first) => ((first * beta1)? + (g * (1.0 - beta1))?)?,
                    None => (g * (1.0 - beta1))?,
                };
                let v = ((&self.second * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                let m_hat = (&m / (1.0 - beta1.powi(t)))?;
                // AMSGrad: the bias-corrected running maximum (PyTorch's form).
                let denominator = match &self.second_max {
                    Some(max) => {
                        let max = max.maximum(&v)?;
                        let corrected = (&max / (1.0 - beta2.powi(t)))?;
                        self.second_max = Some(max);
                        corrected
                    }
                    None => (&v / (1.0 - beta2.powi(t)))?,
                };
                let v_hat = denominator;
                let mut step = (m_hat / (v_hat.sqrt()? + epsilon)?)?;
                if weight_decay > 0.0 {
                    step = (step + (theta * weight_decay)?)?;
                }
                self.first = Some(m);
                self.second = v;
                (theta - (step * lr)?)?
            }
            OptimizerConfig::Rmsprop { decay, epsilon } => {
                let ms = ((&self.second * decay)? + (g.sqr()? * (1.0 - decay))?)?;
                let step = (g / (&ms + epsilon)?.sqrt()?)?;
                self.second = ms;
                (theta - (step * lr)?)?
            }
        };
        let change = (&next - theta)?;
        let norms = Tensor::stack(&[change.sqr()?.sum_all()?, next.sqr()?.sum_all()?], 0)?.to_vec1::<f32>()?;
        self.var.set(&next)?;
        Ok((f64::from(norms[0]), f64::from(norms[1])))
    }
}

#[derive(Debug)]
pub struct Optimiser {
    config: OptimizerConfig,
    slots: Vec<Slot>,
    /// Updates applied so far (Adam's bias correction needs it).
    steps: u64,
    max_grad_norm: f64,
}

impl Optimiser {
    pub fn new(vars: Vec<Var>, config: OptimizerConfig, max_grad_norm: f64) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|var| {
                // Each moment its own storage: the CPU kernels update them in place.
                let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
                let first = matches!(config, OptimizerConfig::Adam { .. }).then(zeros).transpose()?;
                let second_max = matches!(config, OptimizerConfig::Adam { amsgrad: true, .. })
                    .then(zeros)
                    .transpose()?;
                Ok(Slot {
                    second: zeros()?,
                    var,
                    first,
                    second_max,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            slots,
            steps: 0,
            max_grad_norm,
        })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Backpropagates `loss`, clips the global gradient norm, applies one
    /// update with learning rate `lr`. A non-finite norm skips the update
    /// entirely (the parameters and the optimiser state never see NaN).
    pub fn step(&mut self, loss: &Tensor, lr: f64) -> Result<StepReport> {
        let mut grads = loss.backward()?;
        let vars: Vec<Var> = self.slots.iter().map(|s| s.var.clone()).collect();
        let layer_grad_norms = clip_global_norm(&mut grads, &vars, self.max_grad_norm)?;
        let grad_norm = layer_grad_norms.iter().map(|n| n * n).sum::<f64>().sqrt();
        let mut report = StepReport {
            grad_norm,
            layer_grad_norms,
            layer_step_norms: vec![0.0; self.slots.len()],
            layer_param_norms: vec![0.0; self.slots.len()],
        };
        if !grad_norm.is_finite() {
            return Ok(report);
        }
        self.steps += 1;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(g) = grads.get(slot.var.as_tensor()) else { continue };
            let g = g.contiguous()?;
            let (change, size) = match slot.in_place(self.config, &g) {
                true => slot.step_in_place(self.config, &g, self.steps, lr)?,
                false => slot.step_with_ops(self.config, &g, self.steps, lr)?,
            };
            report.layer_step_norms[i] = change.sqrt();
            report.layer_param_norms[i] = size.sqrt();
        }
        Ok(report)
    }
    /// The state as named tensors (`<param>.first`, `<param>.second`), given
    /// the parameters' names in the order they were passed to [`Optimiser::new`].
    /// The tensors share the moments' storage, which the next step updates in
    /// place: serialise them before it.
    pub fn state(&self, names: &[String]) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (slot, name) in self.slots.iter().zip(names) {
            if let Some(first) = &slot.first {
                out.push((format!("{name}.first"), first.clone()));
            }
            out.push((format!("{name}.second"), slot.second.clone()));
            if let Some(max) = &slot.second_max {
                out.push((format!("{name}.second_max"), max.clone()));
            }
        }
        out
    }

    /// Restores state written by [`Optimiser::state`]; every tensor must be
    /// present with the parameter's shape, else nothing changes. The one
    /// exception is AMSGrad's maximum, absent from state saved without it:
    /// it starts from the restored second moment, so AMSGrad can be turned
    /// on when resuming.
    pub fn restore(
        &mut self,
        names: &[String],
        mut state: std::collections::HashMap<String, Tensor>,
        steps: u64,
    ) -> std::result::Result<(), String> {
        let saved_max: std::collections::HashSet<String> = state.keys().filter(|k| k.ends_with(".second_max")).cloned().collect();
        let mut take = |key: String, like: &Var| -> std::result::Result<Tensor, String> {
            let t = state.remove(&key).ok_or_else(|| format!("optimizer state lacks `{key}`"))?;
            if t.dims() != like.dims() {
                return Err(format!(
                    "optimizer state `{key}` has shape {:?}, expected {:?}",
                    t.dims(),
                    like.dims()
                ));
            }
            t.to_device(like.device()).map_err(|e| e.to_string())
        };
        let mut restored = Vec::with_capacity(self.slots.len());
        for (slot, name) in self.slots.iter().zip(names) {
            let first = match slot.first {
                Some(_) => Some(take(format!("{name}.first"), &slot.var)?),
                None => None,
            };
            let second = take(format!("{name}.second"), &slot.var)?;
            let second_max = match slot.second_max {
                Some(_) if saved_max.contains(&format!("{name}.second_max")) => Some(take(format!("{name}.second_max"), &slot.var)?),
                // A copy: the running maximum is updated in place.
                Some(_) => Some(second.copy().map_err(|e| e.to_string())?),
                None => None,
            };
            restored.push((first, second, second_max));
        }
        for (slot, (first, second, second_max)) in self.slots.iter_mut().zip(restored) {
            slot.first = first;
            slot.second = second;
            slot.second_max = second_max;
        }
        self.steps = steps;
        Ok(())
    }
}

/// Scales the gradients so their global norm is at most `max_norm` (0: no
/// clipping). Returns each variable's gradient norm before clipping (0 for
/// one without a gradient); a non-finite global norm leaves the gradients
/// untouched for the caller to refuse.
pub fn clip_global_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<Vec<f64>> {
    let norms = layer_norms(grads, vars)?;
    let norm = norms.iter().map(|n| n * n).sum::<f64>().sqrt();
    if norm.is_finite() && max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / norm;
        for var in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norms)
}

/// ‖g‖ of each variable's gradient (0 without one), in one host read.
fn layer_norms(grads: &GradStore, vars: &[Var]) -> Result<Vec<f64>> {
    let squares = vars
        .iter()
        .map(|var| match grads.get(var.as_tensor()) {
            Some(g) => g.sqr()?.sum_all()?.to_dtype(DType::F64),
            None => Tensor::zeros((), DType::F64, var.device()),
        })
        .collect::<Result<Vec<_>>>()?;
    if squares.is_empty() {
        return Ok(Vec::new());
    }
    Ok(Tensor::stack(&squares, 0)?.to_vec1::<f64>()?.into_iter().map(f64::sqrt).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(values: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap()
    }

    fn half_square(v: &Var) -> Tensor {
        (v.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap()
    }

    /// The in-place CPU step and the candle-op step agree: parameters,
    /// every moment and the norms, over several steps of each rule.
    #[test]
    fn the_in_place_step_equals_the_step_from_ops() {
        let configs = [
            OptimizerConfig::default(),
            OptimizerConfig::Adam {
                beta1: 0.8,
                beta2: 0.99,
                epsilon: 1e-6,
                weight_decay: 0.01,
                amsgrad: true,
            },
            OptimizerConfig::impala_rmsprop(),
        ];
        let start: Vec<f32> = (0..3000).map(|i| ((i as f32) * 0.13).sin()).collect();
        for config in configs {
            let [mut fused, mut ops] = [0, 1].map(|_| {
                let opt = Optimiser::new(vec![var(&start)], config, 0.0).unwrap();
                opt.slots.into_iter().next().unwrap()
            });
            for step in 1..=4u64 {
                let g: Vec<f32> = (0..start.len()).map(|i| ((i as f32 + step as f32) * 0.71).cos() * 0.3).collect();
                let g = Tensor::new(g.as_slice(), &Device::Cpu).unwrap();
                assert!(fused.in_place(config, &g), "{config:?}: the CPU kernels should take this step");
                let a = fused.step_in_place(config, &g, step, 0.01).unwrap();
                let b = ops.step_with_ops(config, &g, step, 0.01).unwrap();
                assert!(
                    (a.0 - b.0).abs() <= 1e-4 * b.0 && (a.1 - b.1).abs() <= 1e-5 * b.1,
                    "{config:?} step {step}: norms {a:?} {b:?}"
                );
                let pairs = [
                    (Some(fused.var.as_tensor().clone()), Some(ops.var.as_tensor().clone())),
                    (fused.first.clone(), ops.first.clone()),
                    (Some(fused.second.clone()), Some(ops.second.clone())),
                    (fused.second_max.clone(), ops.second_max.clone()),
                ];
                for (what, (x, y)) in ["parameters", "first", "second", "second_max"].iter().zip(pairs) {
                    let (Some(x), Some(y)) = (x, y) else { continue };
                    let gap = (x - &y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(gap < 1e-6, "{config:?} step {step}: {what} differ by {gap}");
                }
            }
        }
    }

    #[test]
    fn clipping_scales_the_gradient_to_the_cap_and_only_above_it() {
        let v = var(&[3.0, 4.0]);
        let vars = std::slice::from_ref(&v);
        let mut grads = half_square(&v).backward().unwrap();
        assert!((clip_global_norm(&mut grads, vars, 1.0).unwrap()[0] - 5.0).abs() < 1e-6);
        assert!((layer_norms(&grads, vars).unwrap()[0] - 1.0).abs() < 1e-6);
        let g = grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6, "{g:?}");
        let mut grads = half_square(&v).backward().unwrap();
        clip_global_norm(&mut grads, vars, 10.0).unwrap();
        assert!((layer_norms(&grads, vars).unwrap()[0] - 5.0).abs() < 1e-6);
    }

    /// The report names each variable's gradient, step and size: ½x² on
    /// x = [3, 4] and y = [1] has gradients [3, 4] and [1]; Adam's first step
    /// moves every coordinate by lr (m̂/√v̂ = ±1).
    #[test]
    fn the_step_report_measures_each_variable() {
        let (x, y) = (var(&[3.0, 4.0]), var(&[1.0]));
        let loss = (half_square(&x) + half_square(&y)).unwrap();
        let mut opt = Optimiser::new(vec![x, y], OptimizerConfig::default(), 0.0).unwrap();
        let report = opt.step(&loss, 0.1).unwrap();
        assert!(report.applied());
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
        assert!(close(&report.layer_grad_norms, &[5.0, 1.0]), "{report:?}");
        assert!((report.grad_norm - 26f64.sqrt()).abs() < 1e-5);
        assert!(close(&report.layer_step_norms, &[0.1 * 2f64.sqrt(), 0.1]), "{report:?}");
        let after = [(2.9f64 * 2.9 + 3.9 * 3.9).sqrt(), 0.9];
        assert!(close(&report.layer_param_norms, &after), "{report:?}");
        let expected = (0.03f64 / (after[0] * after[0] + 0.81)).sqrt();
        assert!((report.relative_step() - expected).abs() < 1e-6, "{report:?}");
    }

    #[test]
    fn adam_matches_a_hand_computed_first_and_second_step() {
        // Gradient of ½x² is x. Step 1: m = 0.1·3, v = 0.001·9; bias-corrected
        // m̂ = 3, v̂ = 9, so x ← 3 − lr·3/(3 + ε).
        let v = var(&[3.0]);
        let mut opt = Optimiser::new(vec![v.clone()], OptimizerConfig::default(), 0.0).unwrap();
        opt.step(&half_square(&v), 0.1).unwrap();
        let x1 = 3.0 - 0.1 * 3.0 / (3.0 + 1e-8);
        assert!((v.as_tensor().to_vec1::<f32>().unwrap()[0] as f64 - x1).abs() < 1e-6);
        opt.step(&half_square(&v), 0.1).unwrap();
        let (m, s) = (0.9 * 0.3 + 0.1 * x1, 0.999 * 0.009 + 0.001 * x1 * x1);
        let (m_hat, s_hat) = (m / (1.0 - 0.81), s / (1.0 - 0.999f64.powi(2)));
        let x2 = x1 - 0.1 * m_hat / (s_hat.sqrt() + 1e-8);
        assert!((v.as_tensor().to_vec1::<f32>().unwrap()[0] as f64 - x2).abs() < 1e-5);
    }

    #[test]
    fn adamw_decays_the_parameters_apart_from_the_gradient() {
        // Same first step as Adam, plus lr·λ·x: x ← 3 − lr·(3/(3 + ε) + λ·3).
        let v = var(&[3.0]);
        let adamw = |weight_decay| OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay,
            amsgrad: false,
        };
        let config = adamw(0.5);
        let mut opt = Optimiser::new(vec![v.clone()], config, 0.0).unwrap();
        opt.step(&half_square(&v), 0.1).unwrap();
        let expected = 3.0 - 0.1 * (3.0 / (3.0 + 1e-8) + 0.5 * 3.0);
        assert!((v.as_tensor().to_vec1::<f32>().unwrap()[0] as f64 - expected).abs() < 1e-6);
        assert!(adamw(-1.0).validate().unwrap_err().contains("learner.weight_decay"));
    }

    #[test]
    fn rmsprop_matches_the_tensorflow_form() {
        let v = var(&[2.0]);
        let mut opt = Optimiser::new(vec![v.clone()], OptimizerConfig::impala_rmsprop(), 0.0).unwrap();
        opt.step(&half_square(&v), 0.01).unwrap();
        let ms = 0.01 * 4.0;
        let expected = 2.0 - 0.01 * 2.0 / (ms + 0.01f64).sqrt();
        assert!((v.as_tensor().to_vec1::<f32>().unwrap()[0] as f64 - expected).abs() < 1e-6);
    }

    #[test]
    fn non_finite_gradients_leave_parameters_and_state_alone() {
        let v = var(&[1.0]);
        let loss = (v.as_tensor() * f64::NAN).unwrap().sum_all().unwrap();
        let mut opt = Optimiser::new(vec![v.clone()], OptimizerConfig::default(), 40.0).unwrap();
        let report = opt.step(&loss, 0.1).unwrap();
        assert!(report.grad_norm.is_nan() && !report.applied());
        assert_eq!(v.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0]);
        assert_eq!(opt.steps(), 0);
    }

    #[test]
    fn state_round_trips_and_bad_state_changes_nothing() {
        let names = vec!["w".to_string()];
        let v = var(&[3.0, -1.0]);
        let mut opt = Optimiser::new(vec![v.clone()], OptimizerConfig::default(), 0.0).unwrap();
        opt.step(&half_square(&v), 0.1).unwrap();
        let state: std::collections::HashMap<_, _> = opt.state(&names).into_iter().collect();
        let mut other = Optimiser::new(vec![v.clone()], OptimizerConfig::default(), 0.0).unwrap();
        let mut broken = state.clone();
        broken.remove("w.first");
        assert!(other.restore(&names, broken, 1).unwrap_err().contains("w.first"));
        assert_eq!(other.steps(), 0);
        other.restore(&names, state.clone(), 1).unwrap();
        let again: std::collections::HashMap<_, _> = other.state(&names).into_iter().collect();
        for (k, t) in &state {
            assert_eq!(t.to_vec1::<f32>().unwrap(), again[k].to_vec1::<f32>().unwrap(), "{k}");
        }
    }

    fn adam(beta2: f64, amsgrad: bool) -> OptimizerConfig {
        OptimizerConfig::Adam {
            beta1: 0.9,
            beta2,
            epsilon: 1e-8,
            weight_decay: 0.0,
            amsgrad,
        }
    }

    fn amsgrad() -> OptimizerConfig {
        adam(0.999, true)
    }

    /// After a stretch of large gradients, Adam's step on a tiny gradient
    /// grows back towards lr as its second moment decays (β2 = 0.9 here, so
    /// within a few hundred steps); AMSGrad's stays scaled by the largest
    /// second moment seen.
    #[test]
    fn amsgrad_keeps_tiny_gradients_small_after_large_ones() {
        let last_step = |config: OptimizerConfig| {
            let v = var(&[0.0]);
            let mut opt = Optimiser::new(vec![v.clone()], config, 0.0).unwrap();
            let linear = |scale: f64| (v.as_tensor() * scale).unwrap().sum_all().unwrap();
            for _ in 0..50 {
                opt.step(&linear(10.0), 1e-3).unwrap();
            }
            let mut report = None;
            for _ in 0..500 {
                report = Some(opt.step(&linear(1e-3), 1e-3).unwrap());
            }
            report.unwrap().layer_step_norms[0]
        };
        let (adam, ams) = (last_step(adam(0.9, false)), last_step(adam(0.9, true)));
        assert!(adam > 5e-4, "Adam's step should have grown back towards lr: {adam}");
        assert!(ams < 1e-5, "AMSGrad's step should stay scaled by the old maximum: {ams}");
    }

    #[test]
    fn amsgrad_state_round_trips_and_starts_from_the_second_moment_when_absent() {
        let names = vec!["w".to_string()];
        let v = var(&[3.0, -1.0]);
        let mut opt = Optimiser::new(vec![v.clone()], amsgrad(), 0.0).unwrap();
        opt.step(&half_square(&v), 0.1).unwrap();
        let state: std::collections::HashMap<_, _> = opt.state(&names).into_iter().collect();
        assert!(state.contains_key("w.second_max"));
        let mut other = Optimiser::new(vec![v.clone()], amsgrad(), 0.0).unwrap();
        other.restore(&names, state.clone(), 1).unwrap();
        let again: std::collections::HashMap<_, _> = other.state(&names).into_iter().collect();
        for (k, t) in &state {
            assert_eq!(t.to_vec1::<f32>().unwrap(), again[k].to_vec1::<f32>().unwrap(), "{k}");
        }
        let mut without = state.clone();
        without.remove("w.second_max");
        let mut resumed = Optimiser::new(vec![v.clone()], amsgrad(), 0.0).unwrap();
        resumed.restore(&names, without, 1).unwrap();
        let after: std::collections::HashMap<_, _> = resumed.state(&names).into_iter().collect();
        assert_eq!(
            after["w.second_max"].to_vec1::<f32>().unwrap(),
            state["w.second"].to_vec1::<f32>().unwrap()
        );
    }
}
