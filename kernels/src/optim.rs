//! Optimiser updates applied in place on the CPU: each moment, then the
//! parameters, updated in one pass each with no tensor allocated.
//!
//! Built from candle ops, an Adam step took about twenty passes over each
//! parameter's values (the moments, their bias corrections, the step, its
//! norm, the parameters' norm, the copy into the variable), each writing a
//! new tensor. Here it is three (four with AMSGrad), and the norms the
//! learner reports come from the last one.
//!
//! Only contiguous f32 tensors on the CPU take this path ([`in_place`]
//! says which); the caller keeps the candle-op form for the rest.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, bail};

use crate::cpu::{contiguous_f32, with_widest_simd};

/// Whether every tensor is a contiguous f32 tensor on the CPU, the same
/// size as the first, so that the functions below apply.
pub fn in_place(tensors: &[&Tensor]) -> bool {
    let count = tensors.first().map_or(0, |t| t.elem_count());
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() && t.elem_count() == count)
}

/// `moment ← β·moment + (1−β)·g`, or with `square` `(1−β)·g²`: Adam's
/// first and second moments, RMSProp's mean square.
pub fn decay_toward(moment: &Tensor, grad: &Tensor, beta: f64, square: bool) -> Result<()> {
    moment.inplace_op2(grad, &Decay { beta: beta as f32, square })
}

/// `max ← max(max, v)` element-wise: AMSGrad's running maximum.
pub fn raise_to(max: &Tensor, v: &Tensor) -> Result<()> {
    max.inplace_op2(v, &Raise)
}

/// One Adam (or AdamW) step's scalars: `θ ← θ − lr·(m·m_scale /
/// (√(v·v_scale) + ε) + decay·θ)`, where the scales are the bias
/// corrections `1/(1−βᵗ)`.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub learning_rate: f64,
    pub first_scale: f64,
    pub second_scale: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

/// Applies an Adam step to `theta` from the moments `first` and `second`
/// (AMSGrad: its running maximum). Returns `(‖Δθ‖², ‖θ‖²)`, `θ` after the step.
pub fn adam_apply(theta: &Tensor, first: &Tensor, second: &Tensor, step: AdamStep) -> Result<(f64, f64)> {
    let op = Apply {
        rule: Rule::Adam(step),
        norms: Mutex::new((0.0, 0.0)),
    };
    theta.inplace_op3(first, second, &op)?;
    op.norms()
}

/// Applies an RMSProp step (TensorFlow's form): `θ ← θ − lr·g/√(ms + ε)`.
/// Returns `(‖Δθ‖², ‖θ‖²)`, `θ` after the step.
pub fn rmsprop_apply(theta: &Tensor, grad: &Tensor, mean_square: &Tensor, learning_rate: f64, epsilon: f64) -> Result<(f64, f64)> {
    let op = Apply {
        rule: Rule::Rmsprop { learning_rate, epsilon },
        norms: Mutex::new((0.0, 0.0)),
    };
    theta.inplace_op3(grad, mean_square, &op)?;
    op.norms()
}

struct Decay {
    beta: f32,
    square: bool,
}

impl InplaceOp2 for Decay {
    fn name(&self) -> &'static str {
        "fleet-moment"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let grad = contiguous_f32(s2, l2, "moment gradient")?;
        let moment = contiguous_mut(s1, l1, "moment")?;
        if moment.len() != grad.len() {
            bail!("moment of {} values for a gradient of {}", moment.len(), grad.len());
        }
        let (beta, rest) = (self.beta, 1.0 - self.beta);
        with_widest_simd(|| {
            if self.square {
                moment.iter_mut().zip(grad).for_each(|(m, &g)| *m = beta * *m + rest * (g * g));
            } else {
                moment.iter_mut().zip(grad).for_each(|(m, &g)| *m = beta * *m + rest * g);
            }
        });
        Ok(())
    }
}

struct Raise;

impl InplaceOp2 for Raise {
    fn name(&self) -> &'static str {
        "fleet-running-max"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let v = contiguous_f32(s2, l2, "second moment")?;
        let max = contiguous_mut(s1, l1, "running maximum")?;
        if max.len() != v.len() {
            bail!("running maximum of {} values for a moment of {}", max.len(), v.len());
        }
        with_widest_simd(|| max.iter_mut().zip(v).for_each(|(m, &v)| *m = m.max(v)));
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Rule {
    Adam(AdamStep),
    Rmsprop { learning_rate: f64, epsilon: f64 },
}

/// `(θ, a, b) -> θ` in place: Adam from `(m, v)`, RMSProp from `(g, ms)`;
/// keeps the step's and the result's squared norms.
struct Apply {
    rule: Rule,
    norms: Mutex<(f64, f64)>,
}

impl Apply {
    fn norms(&self) -> Result<(f64, f64)> {
        match self.norms.lock() {
            Ok(norms) => Ok(*norms),
            Err(_) => bail!("optimiser step: norms lock poisoned"),
        }
    }
}

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "fleet-optimiser-step"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<()> {
        let (a, b) = (
            contiguous_f32(s2, l2, "optimiser state")?,
            contiguous_f32(s3, l3, "optimiser state")?,
        );
        let theta = contiguous_mut(s1, l1, "parameters")?;
        if a.len() != theta.len() || b.len() != theta.len() {
            bail!(
                "optimiser state of {} and {} values for {} parameters",
                a.len(),
                b.len(),
                theta.len()
            );
        }
        let (change, size) = match self.rule {
            Rule::Adam(s) => {
                let (lr, m_scale, v_scale, eps, decay) = (
                    s.learning_rate as f32,
                    s.first_scale as f32,
                    s.second_scale as f32,
                    s.epsilon as f32,
                    s.weight_decay as f32,
                );
                step_all(theta, a, b, |t, m, v| {
                    lr * ((m * m_scale) / ((v * v_scale).sqrt() + eps) + decay * t)
                })
            }
            Rule::Rmsprop { learning_rate, epsilon } => {
                let (lr, eps) = (learning_rate as f32, epsilon as f32);
                step_all(theta, a, b, |_, g, ms| lr * (g / (ms + eps).sqrt()))
            }
        };
        match self.norms.lock() {
            Ok(mut norms) => *norms = (change, size),
            Err(_) => bail!("optimiser step: norms lock poisoned"),
        }
        Ok(())
    }
}

/// `θ ← θ − step(θ, a, b)` per value; returns `(‖Δθ‖², ‖θ‖²)`, summed in
/// f32 per block of values (a loop that vectorises) and in f64 across blocks.
#[inline(always)]
fn step_all(theta: &mut [f32], a: &[f32], b: &[f32], step: impl Fn(f32, f32, f32) -> f32) -> (f64, f64) {
    const BLOCK: usize = 1024;
    let (mut change, mut size) = (0f64, 0f64);
    for ((theta, a), b) in theta.chunks_mut(BLOCK).zip(a.chunks(BLOCK)).zip(b.chunks(BLOCK)) {
        let (block_change, block_size) = with_widest_simd(
            #[inline(always)]
            || {
                let (mut dc, mut ds) = (0f32, 0f32);
                for ((t, &a), &b) in theta.iter_mut().zip(a).zip(b) {
                    let next = *t - step(*t, a, b);
                    let d = next - *t;
                    dc += d * d;
                    ds += next * next;
                    *t = next;
                }
                (dc, ds)
            },
        );
        change += f64::from(block_change);
        size += f64::from(block_size);
    }
    (change, size)
}

/// The values `l` views in `s`, which must be a contiguous f32 storage, to write.
fn contiguous_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("{what}: expected f32, got {:?}", s.dtype());
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn tensor(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_vec1().unwrap()
    }

    #[test]
    fn moments_decay_toward_the_gradient_and_its_square() {
        let (m, g) = (tensor(&[1.0, -2.0, 0.5]), tensor(&[3.0, 1.0, -4.0]));
        decay_toward(&m, &g, 0.9, false).unwrap();
        let want = [0.9 + 0.1 * 3.0, -1.8 + 0.1, 0.45 - 0.4];
        values(&m)
            .iter()
            .zip(want)
            .for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{a} {b}"));
        let v = tensor(&[1.0, 0.0, 2.0]);
        decay_toward(&v, &g, 0.99, true).unwrap();
        let want = [0.99 + 0.01 * 9.0, 0.01, 1.98 + 0.01 * 16.0];
        values(&v)
            .iter()
            .zip(want)
            .for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{a} {b}"));
        let max = tensor(&[2.0, -1.0, 2.14]);
        raise_to(&max, &v).unwrap();
        let v = values(&v);
        assert_eq!(values(&max), vec![2.0, v[1], 2.14]);
    }

    /// The in-place steps against the closed forms, norms included, over
    /// more values than one block.
    #[test]
    fn steps_match_their_closed_forms() {
        let n = 2500;
        let theta0: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
        let a: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.11).cos() * 0.1).collect();
        let b: Vec<f32> = (0..n).map(|i| 0.01 + ((i as f32) * 0.07).sin().abs() * 0.02).collect();
        let step = AdamStep {
            learning_rate: 3e-3,
            first_scale: 1.0 / (1.0 - 0.9f64.powi(3)),
            second_scale: 1.0 / (1.0 - 0.999f64.powi(3)),
            epsilon: 1e-8,
            weight_decay: 0.01,
        };
        let adam = |t: f32, m: f32, v: f32| {
            let m_hat = f64::from(m) * step.first_scale;
            let v_hat = f64::from(v) * step.second_scale;
            f64::from(t) - step.learning_rate * (m_hat / (v_hat.sqrt() + step.epsilon) + step.weight_decay * f64::from(t))
        };
        let rmsprop = |t: f32, g: f32, ms: f32| f64::from(t) - 0.05 * f64::from(g) / (f64::from(ms) + 0.01).sqrt();
        type ClosedForm<'a> = &'a dyn Fn(f32, f32, f32) -> f64;
        let cases: [(ClosedForm, bool); 2] = [(&adam, true), (&rmsprop, false)];
        for (closed, is_adam) in cases {
            let theta = tensor(&theta0);
            let (change, size) = if is_adam {
                adam_apply(&theta, &tensor(&a), &tensor(&b), step).unwrap()
            } else {
                rmsprop_apply(&theta, &tensor(&a), &tensor(&b), 0.05, 0.01).unwrap()
            };
            let want: Vec<f64> = (0..n).map(|i| closed(theta0[i], a[i], b[i])).collect();
            for (got, want) in values(&theta).iter().zip(&want) {
                assert!((f64::from(*got) - want).abs() < 1e-6, "{got} {want}");
            }
            let want_change: f64 = want.iter().zip(&theta0).map(|(w, t)| (w - f64::from(*t)).powi(2)).sum();
            let want_size: f64 = want.iter().map(|w| w * w).sum();
            assert!((change - want_change).abs() < 1e-4 * want_change, "{change} {want_change}");
            assert!((size - want_size).abs() < 1e-4 * want_size, "{size} {want_size}");
        }
    }

    #[test]
    fn only_contiguous_cpu_f32_tensors_of_one_size_go_in_place() {
        let a = tensor(&[1.0, 2.0, 3.0, 4.0]);
        assert!(in_place(&[&a, &tensor(&[0.0; 4])]));
        assert!(!in_place(&[&a, &tensor(&[0.0; 3])]));
        assert!(!in_place(&[&a, &a.to_dtype(DType::F64).unwrap()]));
        let strided = a.reshape((2, 2)).unwrap().t().unwrap();
        assert!(!in_place(&[&strided]));
    }
}
