//! tanh, ReLU and the LSTM cell's gate arithmetic for the CPU learner and actors:
//! branch-free kernels the compiler vectorises, as candle custom ops whose
//! backward is one pass.
//!
//! candle's CPU `tanh` calls the C library's scalar `tanhf` per element and
//! its backward takes three more passes (square, affine, product), each
//! allocating; on the CartPole MLP that was a third of a learner update.
//! Here tanh is evaluated from a polynomial near zero and from `exp` (range
//! reduction to `[-ln2/2, ln2/2]` and a degree-7 Taylor polynomial) further
//! out, with selects instead of branches, so a loop over a slice becomes
//! SIMD code. The absolute error is below 2.5e-7 (about 2 ULP of 1), the
//! relative error near zero below 1e-6. [`lstm_cell`] applies the four gate
//! activations (sigmoid as `(1 + tanh(x/2)) / 2`) and the state update in
//! one pass where candle ops would take ten, each allocating.
//!
//! Only f32 tensors on the CPU take this path; anything else (CUDA, other
//! dtypes) uses candle's own ops. Gradients of gradients are not supported.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};

use rayon::prelude::*;

use crate::cpu::{contiguous_f32, map_into, with_widest_simd, zip_map_into};

/// `tanh(x)`, elementwise.
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    if takes_fast_path(x) {
        x.apply_op1(Activation(Tanh))
    } else {
        x.tanh()
    }
}

/// `max(x, 0)`, elementwise (a NaN stays NaN). The backward passes the
/// gradient where the output is positive, in one pass; candle's takes five,
/// each allocating a tensor of the input's size.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if takes_fast_path(x) {
        x.apply_op1(Activation(Relu))
    } else {
        x.relu()
    }
}

/// The LSTM cell after its matrix products: `gates` `[B, 4H]` are the
/// pre-activations of `[i, f, g, o]`, `c_prev` `[B, H]` the cell state
/// before the step. Returns `[B, 2H]`: `h = σ(o)·tanh(c)` then
/// `c = σ(f)·c_prev + σ(i)·tanh(g)`.
pub fn lstm_cell(gates: &Tensor, c_prev: &Tensor) -> Result<Tensor> {
    let (batch, size) = c_prev.dims2()?;
    if gates.dims2()? != (batch, 4 * size) {
        bail!("lstm_cell: gates {:?} for a cell state {:?}", gates.dims(), c_prev.dims());
    }
    if takes_fast_path(gates) && c_prev.dtype() == DType::F32 {
        gates.contiguous()?.apply_op2(&c_prev.contiguous()?, LstmCell)
    } else {
        lstm_cell_unfused(gates, c_prev)
    }
}

/// [`lstm_cell`] from candle ops, off the CPU fast path.
fn lstm_cell_unfused(gates: &Tensor, c_prev: &Tensor) -> Result<Tensor> {
    let size = c_prev.dim(1)?;
    let gate = |k: usize| gates.narrow(1, k * size, size);
    let (i, f) = (candle_nn::ops::sigmoid(&gate(0)?)?, candle_nn::ops::sigmoid(&gate(1)?)?);
    let (g, o) = (gate(2)?.tanh()?, candle_nn::ops::sigmoid(&gate(3)?)?);
    let c = ((f * c_prev)? + (i * g)?)?;
    let h = (o * c.tanh()?)?;
    Tensor::cat(&[h, c], 1)
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
    // Adding 1.5·2²³ rounds y/ln2 to an integer held in the low mantissa
    // bits, without a float-to-int conversion (Rust's saturating `as`
    // compares each lane and keeps the loop from vectorising).
    const ROUNDER: f32 = 12_582_912.0;
    let shifted = y * std::f32::consts::LOG2_E + ROUNDER;
    let nf = shifted - ROUNDER;
    let n = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    let r = (y - nf * LN2_HI) - nf * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    p * f32::from_bits((n + 127) << 23)
}

#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
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
pub(crate) fn sigmoid_f32(x: f32) -> f32 {
    0.5 + 0.5 * tanh_f32(0.5 * x)
}

/// `f` over every element of `s` as `l` lays it out: a contiguous tensor
/// as one slice (the loop the compiler vectorises), any other layout
/// through candle's strided iteration rather than a copy.
fn map(s: &CpuStorage, l: &Layout, op: &str, f: impl Fn(f32) -> f32 + Sync) -> Result<(CpuStorage, Shape)> {
    let CpuStorage::F32(data) = s else {
        bail!("{op}: expected f32, got {:?}", s.dtype());
    };
    let out = match l.contiguous_offsets() {
        Some((start, end)) => {
            let src = &data[start..end];
            let mut out = vec![0.0; src.len()];
            if src.len() < 2 * PARALLEL_CHUNK {
                with_widest_simd(|| map_into(&mut out, src, f));
            } else {
                out.par_chunks_mut(PARALLEL_CHUNK)
                    .zip(src.par_chunks(PARALLEL_CHUNK))
                    .for_each(|(dst, src)| with_widest_simd(|| map_into(dst, src, &f)));
            }
            out
        }
        None => candle_core::cpu_backend::unary_map(data, l, f),
    };
    Ok((CpuStorage::F32(out), l.shape().clone()))
}

/// Elements per rayon task in elementwise passes. Tensors shorter than two
/// tasks (an MLP's activations) never enter rayon, whose hand-over to its
/// pool costs more than they take; feature maps spread over every thread.
const PARALLEL_CHUNK: usize = 1 << 15;

/// `out[i] = f(a[i], b[i])` over two slices of one length, in parallel.
fn zip_map(op: &str, a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Vec<f32>> {
    if a.len() != b.len() {
        bail!("{op}: gradient of {} values for an output of {}", a.len(), b.len());
    }
    let mut out = vec![0.0; a.len()];
    if a.len() < 2 * PARALLEL_CHUNK {
        with_widest_simd(|| zip_map_into(&mut out, a, b, f));
    } else {
        out.par_chunks_mut(PARALLEL_CHUNK)
            .zip(a.par_chunks(PARALLEL_CHUNK).zip(b.par_chunks(PARALLEL_CHUNK)))
            .for_each(|(dst, (a, b))| with_widest_simd(|| zip_map_into(dst, a, b, &f)));
    }
    Ok(out)
}

/// An element-wise activation whose derivative is a function of its
/// output, so that the backward reads only the output and the gradient.
/// Implemented by unit types, so that both loops inline the functions and
/// vectorise.
trait ByOutput: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    fn f(x: f32) -> f32;
    /// `(gradient, output) -> input gradient`.
    fn grad(g: f32, y: f32) -> f32;
}

#[derive(Clone, Copy)]
struct Relu;

impl ByOutput for Relu {
    const NAME: &'static str = "fleet-relu";

    fn f(x: f32) -> f32 {
        relu_f32(x)
    }

    fn grad(g: f32, y: f32) -> f32 {
        if y > 0.0 { g } else { 0.0 }
    }
}

/// `max(x, 0)`, a NaN staying NaN.
#[inline(always)]
pub(crate) fn relu_f32(x: f32) -> f32 {
    if x < 0.0 { 0.0 } else { x }
}

/// The gradient of a ReLU's input from its output `y` and the gradient
/// `grad` of `y`, for ops that apply a ReLU to their own output.
pub(crate) fn relu_grad(grad: &Tensor, y: &Tensor) -> Result<Tensor> {
    grad.contiguous()?.apply_op2_no_bwd(&y.contiguous()?, &ActivationGrad(Relu))
}

#[derive(Clone, Copy)]
struct Tanh;

impl ByOutput for Tanh {
    const NAME: &'static str = "fleet-tanh";

    fn f(x: f32) -> f32 {
        tanh_f32(x)
    }

    fn grad(g: f32, y: f32) -> f32 {
        g * (1.0 - y * y)
    }
}

/// The forward op of a [`ByOutput`] activation.
struct Activation<A>(A);

impl<A: ByOutput> CustomOp1 for Activation<A> {
    fn name(&self) -> &'static str {
        A::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map(s, l, A::NAME, A::f)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(res, &ActivationGrad(self.0))?))
    }
}

/// `(grad, y) -> input gradient` of a [`ByOutput`] activation, one pass.
struct ActivationGrad<A>(A);

impl<A: ByOutput> CustomOp2 for ActivationGrad<A> {
    fn name(&self) -> &'static str {
        A::NAME
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, y) = (contiguous_f32(s1, l1, A::NAME)?, contiguous_f32(s2, l2, A::NAME)?);
        let out = zip_map(A::NAME, g, y, A::grad)?;
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }
}

/// One row of the cell: activations of the gates `[i, f, g, o]` and the new
/// cell state, element `j` of `H`.
#[inline(always)]
fn cell_terms(gates: &[f32], c_prev: f32, size: usize, j: usize) -> [f32; 5] {
    let i = sigmoid_f32(gates[j]);
    let f = sigmoid_f32(gates[size + j]);
    let g = tanh_f32(gates[2 * size + j]);
    let o = sigmoid_f32(gates[3 * size + j]);
    [i, f, g, o, f * c_prev + i * g]
}

struct LstmCell;

impl CustomOp2 for LstmCell {
    fn name(&self) -> &'static str {
        "fleet-lstm-cell"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gates, c_prev) = (contiguous_f32(s1, l1, self.name())?, contiguous_f32(s2, l2, self.name())?);
        let (batch, size) = l2.shape().dims2()?;
        let mut out = vec![0f32; batch * 2 * size];
        for ((row, c_row), out_row) in gates
            .chunks_exact(4 * size)
            .zip(c_prev.chunks_exact(size))
            .zip(out.chunks_exact_mut(2 * size))
        {
            let (h_out, c_out) = out_row.split_at_mut(size);
            for j in 0..size {
                let [_, _, _, o, c] = cell_terms(row, c_row[j], size, j);
                h_out[j] = o * tanh_f32(c);
                c_out[j] = c;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, 2 * size))))
    }

    fn bwd(&self, gates: &Tensor, c_prev: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_gates = gates.apply_op3_no_bwd(c_prev, &grad, &LstmCellGrad { of_gates: true })?;
        let d_c_prev = gates.apply_op3_no_bwd(c_prev, &grad, &LstmCellGrad { of_gates: false })?;
        Ok((Some(d_gates), Some(d_c_prev)))
    }
}

/// `(gates, c_prev, [dh | dc]) ->` the gradient of the gates (`of_gates`) or
/// of `c_prev`, recomputing the activations rather than storing them.
struct LstmCellGrad {
    of_gates: bool,
}

impl CustomOp3 for LstmCellGrad {
    fn name(&self) -> &'static str {
        "fleet-lstm-cell-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (gates, c_prev, grad) = (
            contiguous_f32(s1, l1, name)?,
            contiguous_f32(s2, l2, name)?,
            contiguous_f32(s3, l3, name)?,
        );
        let (batch, size) = l2.shape().dims2()?;
        let width = if self.of_gates { 4 * size } else { size };
        let mut out = vec![0f32; batch * width];
        let rows = gates
            .chunks_exact(4 * size)
            .zip(c_prev.chunks_exact(size))
            .zip(grad.chunks_exact(2 * size));
        for (((row, c_row), g_row), out_row) in rows.zip(out.chunks_exact_mut(width)) {
            let (dh, dc_next) = g_row.split_at(size);
            for j in 0..size {
                let [i, f, g, o, c] = cell_terms(row, c_row[j], size, j);
                let tanh_c = tanh_f32(c);
                let dc = dc_next[j] + dh[j] * o * (1.0 - tanh_c * tanh_c);
                if self.of_gates {
                    out_row[j] = dc * g * i * (1.0 - i);
                    out_row[size + j] = dc * c_row[j] * f * (1.0 - f);
                    out_row[2 * size + j] = dc * i * (1.0 - g * g);
                    out_row[3 * size + j] = dh[j] * tanh_c * o * (1.0 - o);
                } else {
                    out_row[j] = dc * f;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, width))))
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
    fn relu_and_its_gradient_pass_positives_only_on_large_and_small_tensors() {
        for len in [7, 3 * PARALLEL_CHUNK + 5] {
            let xs: Vec<f32> = (0..len).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
            let var = Var::from_vec(xs.clone(), len, &Device::Cpu).unwrap();
            let y = relu(var.as_tensor()).unwrap();
            let weights: Vec<f32> = (0..len).map(|i| 1.0 + i as f32 % 5.0).collect();
            let w = Tensor::from_vec(weights.clone(), len, &Device::Cpu).unwrap();
            let grads = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
            let (y, dx) = (
                y.to_vec1::<f32>().unwrap(),
                grads.get(var.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            );
            for i in 0..len {
                let positive = xs[i] > 0.0;
                assert_eq!(y[i], if positive { xs[i] } else { 0.0 }, "relu({})", xs[i]);
                assert_eq!(dx[i], if positive { weights[i] } else { 0.0 }, "relu'({})", xs[i]);
            }
        }
        let odd = Tensor::new(&[f32::NAN, -0.0, f32::NEG_INFINITY, f32::INFINITY], &Device::Cpu).unwrap();
        let y = relu(&odd).unwrap().to_vec1::<f32>().unwrap();
        assert!(y[0].is_nan(), "a NaN must not turn into a 0: {y:?}");
        assert_eq!(&y[1..], [0.0, 0.0, f32::INFINITY]);
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
    fn the_fused_lstm_cell_and_its_gradients_match_candle_ops() {
        let device = Device::Cpu;
        let (batch, size) = (3, 5);
        let wave = |n: usize, scale: f64| {
            let t = Tensor::arange(0f32, n as f32, &device).unwrap();
            (t.affine(0.7, 0.3).unwrap().sin().unwrap() * scale).unwrap()
        };
        let gates = Var::from_tensor(&wave(batch * 4 * size, 3.0).reshape((batch, 4 * size)).unwrap()).unwrap();
        let c_prev = Var::from_tensor(&wave(batch * size, 2.0).reshape((batch, size)).unwrap()).unwrap();
        let weights = wave(batch * 2 * size, 1.0).reshape((batch, 2 * size)).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let run = |fused: bool| {
            let out = if fused {
                lstm_cell(gates.as_tensor(), c_prev.as_tensor()).unwrap()
            } else {
                lstm_cell_unfused(gates.as_tensor(), c_prev.as_tensor()).unwrap()
            };
            let grads = (&out * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            (
                flat(&out),
                flat(grads.get(gates.as_tensor()).unwrap()),
                flat(grads.get(c_prev.as_tensor()).unwrap()),
            )
        };
        let (fused, reference) = (run(true), run(false));
        let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert_eq!(fused.0.len(), reference.0.len());
        assert!(
            worst(&fused.0, &reference.0) <= 1e-6,
            "outputs differ by {}",
            worst(&fused.0, &reference.0)
        );
        assert!(
            worst(&fused.1, &reference.1) <= 1e-6,
            "gate gradients differ by {}",
            worst(&fused.1, &reference.1)
        );
        assert!(
            worst(&fused.2, &reference.2) <= 1e-6,
            "state gradients differ by {}",
            worst(&fused.2, &reference.2)
        );
        assert!(fused.1.iter().all(|g| g.is_finite()) && fused.1.iter().any(|g| g.abs() > 1e-3));
        let bad = Tensor::zeros((batch, 3 * size), DType::F32, &device).unwrap();
        assert!(
            lstm_cell(&bad, c_prev.as_tensor())
                .unwrap_err()
                .to_string()
                .contains("lstm_cell: gates")
        );
    }

    #[test]
    fn tanh_and_its_gradient_match_candles_on_any_layout() {
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
        let (fast, reference): (Op, Op) = (tanh, |x| x.tanh());
        let mut outputs = Vec::new();
        let mut grads = Vec::new();
        for op in [fast, reference] {
            let t = x.as_tensor();
            // Contiguous, column blocks and transposed.
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
