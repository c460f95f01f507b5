//! One optimisation step: gradients of the loss, global-norm clipping, Adam.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::config::LearnerConfig;

#[derive(Debug)]
pub struct Optimiser {
    vars: Vec<Var>,
    adam: AdamW,
    max_grad_norm: f64,
}

impl Optimiser {
    pub fn new(vars: Vec<Var>, config: &LearnerConfig) -> Result<Self> {
        let params = ParamsAdamW {
            lr: config.learning_rate,
            beta1: config.adam_beta1,
            beta2: config.adam_beta2,
            eps: config.adam_epsilon,
            weight_decay: 0.0,
        };
        Ok(Self {
            adam: AdamW::new(vars.clone(), params)?,
            vars,
            max_grad_norm: config.max_grad_norm,
        })
    }

    /// Backpropagates `loss`, clips the global gradient norm, applies Adam.
    /// Returns the gradient norm before clipping. A non-finite norm skips the
    /// update entirely (the parameters never see NaN).
    pub fn step(&mut self, loss: &Tensor) -> Result<f64> {
        let mut grads = loss.backward()?;
        let norm = clip_global_norm(&mut grads, &self.vars, self.max_grad_norm)?;
        if !norm.is_finite() {
            return Ok(norm);
        }
        self.adam.step(&grads)?;
        Ok(norm)
    }
}

/// Scales the gradients so their global norm is at most `max_norm` (0: no
/// clipping). Returns the norm before clipping; non-finite norms are returned
/// untouched for the caller to refuse.
pub fn clip_global_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads, vars)?;
    if norm.is_finite() && max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / norm;
        for var in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// √(Σ‖g‖²) over the given variables' gradients.
pub fn global_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut total = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
    }
    Ok(total.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clipping_scales_the_gradient_to_the_cap_and_only_above_it() {
        let var = Var::from_tensor(&Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()).unwrap();
        let loss = (var.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let vars = std::slice::from_ref(&var);
        let mut grads = loss.backward().unwrap();
        assert!((clip_global_norm(&mut grads, vars, 1.0).unwrap() - 5.0).abs() < 1e-6);
        assert!((global_norm(&grads, vars).unwrap() - 1.0).abs() < 1e-6);
        let g = grads.get(var.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6, "{g:?}");
        let mut grads = loss.backward().unwrap();
        clip_global_norm(&mut grads, vars, 10.0).unwrap();
        assert!((global_norm(&grads, vars).unwrap() - 5.0).abs() < 1e-6);
    }

    #[test]
    fn non_finite_gradients_leave_parameters_alone() {
        let var = Var::from_tensor(&Tensor::new(&[1.0f32], &Device::Cpu).unwrap()).unwrap();
        let loss = (var.as_tensor() * f64::NAN).unwrap().sum_all().unwrap();
        let mut opt = Optimiser::new(vec![var.clone()], &LearnerConfig::default()).unwrap();
        assert!(opt.step(&loss).unwrap().is_nan());
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0]);
    }
}
