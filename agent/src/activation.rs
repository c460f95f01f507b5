//! tanh and sigmoid for the CPU learner and actors: branch-free kernels the
//! compiler vectorises, as candle custom ops whose backward is one pass.
//!
//! candle's CPU `tanh` calls the C library's scalar `tanhf` per element and
//! its backward takes three more passes (square, affine, product), each
//! allocating; on the CartPole MLP that was a third of a learner update.
//! Here tanh is evaluated from a polynomial near zero and from `exp` (range
//! reduction to `[-ln2/2, ln2/2]` and a degree-7 Taylor polynomial) further
//! out, with selects instead of branches, so a loop over a slice becomes
//! SIMD code. The absolute error is below 2.5e-7 (about 2 ULP of 1), the
//! relative error near zero below 1e-6. sigmoid is `(1 + tanh(x/2)) / 2`.
//!
//! Only f32 tensors on the CPU take this path; anything else (CUDA, other
//! dtypes) uses candle's own ops. Gradients of gradients are not supported.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

/// `tanh(x)`, elementwise.
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    if takes_fast_path(x) { x.apply_op1(Tanh) } else { x.tanh() }
}

/// `1 / (1 + e^{-x})`, elementwise.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    if takes_fast_path(x) {
        x.apply_op1(Sigmoid)
    } else {
        candle_nn::ops::sigmoid(x)
    }
}

fn takes_fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Taylor coefficients of tanh's odd powers x³ … x¹³; below
/// [`SMALL`] the first omitted term is under 2e-9.
const TANH_TAYLOR: [f32; 6] = [
    -1.0 / 3.0,
    2.0 / 15.0,
    -17.0 / 315.0,
    62.0 / 2835.0,
    -1382.0 / 155_925.0,
    21844.0 / 6_081_075.0,
];
/// Where the series hands over to `1 - 2 / (e^{2|x|} + 1)`, whose
/// cancellation would cost relative precision closer to zero.
const SMALL: f32 = 0.4;
/// Past this |x|, tanh rounds to ±1 in f32.
const SATURATED: f32 = 9.0;

/// `e^y` for `0 ≤ y ≤ 2·SATURATED`: `y = n ln2 + r` with `|r| ≤ ln2/2`
/// (ln2 split in two so `n ln2` is exact), `e^r` by its Taylor series to
/// r⁷ (error below 6e-9), times `2^n` built in the exponent bits.
#[inline(always)]
fn exp_nonnegative(y: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // y ≥ 0, so truncating y/ln2 + 1/2 rounds to nearest.
    let n = (y * std::f32::consts::LOG2_E + 0.5) as i32;
    let nf = n as f32;
    let r = (y - nf * LN2_HI) - nf * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    p * f32::from_bits(((n + 127) as u32) << 23)
}

#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let a = if a < SATURATED { a } else { SATURATED };
    let s = a * a;
    let mut series = TANH_TAYLOR[5];
    for &c in TANH_TAYLOR[..5].iter().rev() {
        series = series * s + c;
    }
    let near_zero = a + a * s * series;
    let far = 1.0 - 2.0 / (exp_nonnegative(2.0 * a) + 1.0);
    let t = if a < SMALL { near_zero } else { far };
    // NaN compares false above and would come out as ±1.
    if x.is_nan() { x } else { t.copysign(x) }
}

#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    0.5 + 0.5 * tanh_f32(0.5 * x)
}

/// A contiguous tensor's values.
fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("{op}: expected f32, got {:?}", s.dtype());
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: expected a contiguous tensor"),
    }
}

/// `f` over every element of `s` as `l` lays it out: a contiguous tensor
/// as one slice (the loop the compiler vectorises), any other layout (an
/// LSTM's gates are column blocks of one matrix) through candle's strided
/// iteration rather than a copy.
fn map(s: &CpuStorage, l: &Layout, op: &str, f: impl Fn(f32) -> f32) -> Result<(CpuStorage, Shape)> {
    let CpuStorage::F32(data) = s else {
        bail!("{op}: expected f32, got {:?}", s.dtype());
    };
    let out = match l.contiguous_offsets() {
        Some((start, end)) => data[start..end].iter().map(|&x| f(x)).collect(),
        None => candle_core::cpu_backend::unary_map(data, l, f),
    };
    Ok((CpuStorage::F32(out), l.shape().clone()))
}

/// `(grad, y) -> grad · f(y)`, one pass: the backward of an op whose
/// derivative is a function of its output.
fn zip_with_output(
    grad: (&CpuStorage, &Layout),
    output: (&CpuStorage, &Layout),
    op: &str,
    derivative: impl Fn(f32) -> f32,
) -> Result<(CpuStorage, Shape)> {
    let (g, y) = (f32_data(grad.0, grad.1, op)?, f32_data(output.0, output.1, op)?);
    if g.len() != y.len() {
        bail!("{op}: gradient of {} values for an output of {}", g.len(), y.len());
    }
    let out = g.iter().zip(y).map(|(&g, &y)| g * derivative(y)).collect();
    Ok((CpuStorage::F32(out), output.1.shape().clone()))
}

struct Tanh;

impl CustomOp1 for Tanh {
    fn name(&self) -> &'static str {
        "fleet-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map(s, l, self.name(), tanh_f32)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(res, &TanhGrad)?))
    }
}

struct TanhGrad;

impl CustomOp2 for TanhGrad {
    fn name(&self) -> &'static str {
        "fleet-tanh-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        zip_with_output((s1, l1), (s2, l2), self.name(), |y| 1.0 - y * y)
    }
}

struct Sigmoid;

impl CustomOp1 for Sigmoid {
    fn name(&self) -> &'static str {
        "fleet-sigmoid"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map(s, l, self.name(), sigmoid_f32)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(res, &SigmoidGrad)?))
    }
}

struct SigmoidGrad;

impl CustomOp2 for SigmoidGrad {
    fn name(&self) -> &'static str {
        "fleet-sigmoid-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        zip_with_output((s1, l1), (s2, l2), self.name(), |y| y * (1.0 - y))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Every f32 in ±30 at a step of 1e-4, plus the edges of the kernels.
    fn grid() -> Vec<f32> {
        let mut xs: Vec<f32> = (-300_000..=300_000).map(|i| i as f32 * 1e-4).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 1e-7, SMALL, -SMALL, SATURATED, 1e30, -1e30]);
        xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE]);
        xs
    }

    #[test]
    fn tanh_is_within_its_error_bound_everywhere() {
        let mut worst_abs = 0f64;
        for x in grid() {
            let (got, want) = (tanh_f32(x) as f64, (x as f64).tanh());
            let abs = (got - want).abs();
            worst_abs = worst_abs.max(abs);
            assert!(abs <= 2.5e-7, "tanh({x}) = {got}, want {want}");
            if want != 0.0 {
                assert!(abs / want.abs() <= 1e-6, "tanh({x}) = {got}, want {want}");
            }
            assert!((-1.0..=1.0).contains(&got), "tanh({x}) = {got}");
        }
        assert!(worst_abs > 0.0, "the grid must exercise the approximation");
        assert!(tanh_f32(f32::NAN).is_nan());
        assert!(tanh_f32(-0.0).is_sign_negative());
    }

    #[test]
    fn sigmoid_is_within_its_error_bound_everywhere() {
        for x in grid() {
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            let got = sigmoid_f32(x) as f64;
            assert!((got - want).abs() <= 2e-7, "sigmoid({x}) = {got}, want {want}");
            assert!((0.0..=1.0).contains(&got), "sigmoid({x}) = {got}");
        }
        assert!(sigmoid_f32(f32::NAN).is_nan());
    }

    #[test]
    fn the_ops_and_their_gradients_match_candles_on_any_layout() {
        let device = Device::Cpu;
        let values: Vec<f32> = (0..600).map(|i| (i as f32 - 300.0) * 0.037).collect();
        let x = Var::from_tensor(&Tensor::from_vec(values, (20, 30), &device).unwrap()).unwrap();
        // Weights in ±1 that differ by element, for a loss over each view.
        let weights = |t: &Tensor| {
            let n = t.elem_count();
            let w = Tensor::arange(0f32, n as f32, &device)
                .unwrap()
                .affine(2.0 / n as f64, -1.0)
                .unwrap();
            w.reshape(t.shape()).unwrap()
        };
        type Op = fn(&Tensor) -> Result<Tensor>;
        let pairs: [(Op, Op); 2] = [(tanh, |x| x.tanh()), (sigmoid, candle_nn::ops::sigmoid)];
        for (fast, reference) in pairs {
            let mut outputs = Vec::new();
            let mut grads = Vec::new();
            for op in [fast, reference] {
                let t = x.as_tensor();
                // Contiguous, column blocks (as an LSTM's gates are) and transposed.
                let views = [t.clone(), t.narrow(1, 10, 20).unwrap(), t.t().unwrap()];
                let mut loss = Tensor::zeros((), DType::F32, &device).unwrap();
                let mut out = Vec::new();
                for view in &views {
                    let y = op(view).unwrap();
                    loss = (loss + (&y * weights(&y)).unwrap().sum_all().unwrap()).unwrap();
                    out.extend(y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                }
                let grad = loss.backward().unwrap().get(t).unwrap().clone();
                outputs.push(out);
                grads.push(grad.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            // Both backwards compute the derivative from their own output.
            let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert_eq!(outputs[0].len(), outputs[1].len());
            assert!(
                worst(&outputs[0], &outputs[1]) <= 3e-7,
                "outputs differ by {}",
                worst(&outputs[0], &outputs[1])
            );
            assert!(
                worst(&grads[0], &grads[1]) <= 3e-6,
                "gradients differ by {}",
                worst(&grads[0], &grads[1])
            );
        }
    }
}
