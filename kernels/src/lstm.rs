//! An LSTM layer unrolled over a sequence in one candle custom op, the
//! backward pass through time in one more: the recurrent matrix product,
//! the resets at episode starts, the gate activations and the state update
//! of every step, with no tensor allocated per step.
//!
//! Stepped with candle ops, each step of an unroll took about ten ops
//! forward (reset masks on `h` and `c`, the recurrent product and its sum
//! with the input part, the cell, slicing `h` and `c` out of it) and as many
//! backward, each allocating, and every one of their gradients accumulated
//! into a zero tensor. Here the forward keeps each step's state and gate
//! activations in its output, so the backward needs no recomputation; the
//! recurrent weight's gradient is one matrix product over all steps at the
//! end.
//!
//! Only f32 tensors on the CPU take this path; [`lstm_unroll`] builds the
//! same computation from candle ops elsewhere. Gradients of gradients are
//! not supported.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use gemm::Parallelism;

use crate::activation::{lstm_cell, sigmoid_f32, tanh_f32};
use crate::conv::matmul;
use crate::cpu::{contiguous_f32, map_into, with_widest_simd};

/// Runs an LSTM over `steps` steps of `B` rows each and returns every
/// step's `(h, c)` as `[T·B, 2H]`, step-major (`h` in the first `H`
/// columns).
///
/// - `projected` `[T·B, 4H]`: each step's gate pre-activations from its
///   input, biases included (`x W_ihᵀ + b_ih + b_hh`), gates `[i, f, g, o]`.
/// - `recurrent` `[4H, H]`: `W_hh`, the gates' weights on `h`.
/// - `state` `[B, 2H]`: `(h, c)` before the first step.
/// - `keep` (`T·B` values): 0 where a row's state resets to zero before its
///   step (an episode starts there), 1 elsewhere.
///
/// Gradients flow to `projected`, `recurrent` and `state`.
pub fn lstm_unroll(projected: &Tensor, recurrent: &Tensor, state: &Tensor, keep: &[f32], steps: usize) -> Result<Tensor> {
    let (rows, gates) = projected.dims2()?;
    let (batch, width) = state.dims2()?;
    let size = width / 2;
    if steps == 0 || rows != steps * batch || gates != 4 * size || width != 2 * size || keep.len() != rows {
        bail!(
            "lstm_unroll: {steps} steps of projected gates {:?} for a state {:?} and {} resets",
            projected.dims(),
            state.dims(),
            keep.len()
        );
    }
    if recurrent.dims2()? != (4 * size, size) {
        bail!("lstm_unroll: recurrent weights {:?} for an LSTM of {size}", recurrent.dims());
    }
    let fast = [projected, recurrent, state]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if !fast {
        return unroll_from_ops(projected, recurrent, state, keep, steps);
    }
    let op = Unroll {
        steps,
        batch,
        size,
        keep: keep.to_vec(),
    };
    let out = projected
        .contiguous()?
        .apply_op3(&recurrent.contiguous()?, &state.contiguous()?, op)?;
    out.narrow(1, 0, width)
}

/// [`lstm_unroll`] from candle ops and the fused cell, step by step.
fn unroll_from_ops(projected: &Tensor, recurrent: &Tensor, state: &Tensor, keep: &[f32], steps: usize) -> Result<Tensor> {
    let (batch, width) = state.dims2()?;
    let size = width / 2;
    let keep = Tensor::from_slice(keep, (keep.len(), 1), projected.device())?.to_dtype(projected.dtype())?;
    let (mut h, mut c) = (state.narrow(1, 0, size)?, state.narrow(1, size, size)?);
    let mut outputs = Vec::with_capacity(steps);
    for t in 0..steps {
        let keep_t = keep.narrow(0, t * batch, batch)?;
        let (h_kept, c_kept) = (h.broadcast_mul(&keep_t)?, c.broadcast_mul(&keep_t)?);
        let gates = (projected.narrow(0, t * batch, batch)? + h_kept.matmul(&recurrent.t()?)?)?;
        let hc = lstm_cell(&gates, &c_kept)?;
        (h, c) = (hc.narrow(1, 0, size)?, hc.narrow(1, size, size)?);
        outputs.push(hc);
    }
    Tensor::cat(&outputs, 0)
}

/// The forward op: `(projected, recurrent, state) -> [T·B, 6H]`, each row
/// `h`, `c`, then the activated gates `i, f, g, o` (kept for the backward).
struct Unroll {
    steps: usize,
    batch: usize,
    size: usize,
    keep: Vec<f32>,
}

/// Floats per output row: `h`, `c` and four gates.
const ROW: usize = 6;

/// Multiply-adds below which a product runs on the calling thread alone.
const SMALL_PRODUCT: usize = 1 << 22;

impl Unroll {
    /// Threads for one step's recurrent product: all of them, unless the
    /// product is too small to pay for waking them (a few microseconds of
    /// work, 41 times per unroll each way).
    fn parallelism(&self) -> Parallelism {
        if self.batch * 4 * self.size * self.size < SMALL_PRODUCT {
            Parallelism::None
        } else {
            Parallelism::Rayon(rayon::current_num_threads())
        }
    }

    /// Row `b`'s state before step `t`, after its reset: `(h, c)` from
    /// `state` or the previous step's output, times `keep`.
    fn previous(&self, t: usize, out: &[f32], state: &[f32], b: usize, into: (&mut [f32], &mut [f32])) {
        let h = self.size;
        let keep = self.keep[t * self.batch + b];
        let source = if t == 0 {
            &state[b * 2 * h..][..2 * h]
        } else {
            &out[((t - 1) * self.batch + b) * ROW * h..][..2 * h]
        };
        for (dst, src) in into.0.iter_mut().zip(&source[..h]) {
            *dst = src * keep;
        }
        for (dst, src) in into.1.iter_mut().zip(&source[h..]) {
            *dst = src * keep;
        }
    }
}

impl CustomOp3 for Unroll {
    fn name(&self) -> &'static str {
        "fleet-lstm-unroll"
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
        let projected = contiguous_f32(s1, l1, "lstm projected gates")?;
        let recurrent = contiguous_f32(s2, l2, "lstm recurrent weights")?;
        let state = contiguous_f32(s3, l3, "lstm state")?;
        let (batch, h) = (self.batch, self.size);
        let mut out = vec![0f32; self.steps * batch * ROW * h];
        let mut h_prev = vec![0f32; batch * h];
        let mut c_prev = vec![0f32; batch * h];
        let mut gates = vec![0f32; batch * 4 * h];
        // W_hhᵀ, `[H, 4H]`: as the product's operand gemm reads it in place,
        // where W_hh as stored would be packed again at every step.
        let mut recurrent_t = vec![0f32; 4 * h * h];
        for (g, row) in recurrent.chunks_exact(h).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                recurrent_t[k * 4 * h + g] = v;
            }
        }
        for t in 0..self.steps {
            for b in 0..batch {
                let into = (&mut h_prev[b * h..][..h], &mut c_prev[b * h..][..h]);
                self.previous(t, &out, state, b, into);
            }
            // gates = projected_t + h_prev · W_hhᵀ
            gates.copy_from_slice(&projected[t * batch * 4 * h..][..batch * 4 * h]);
            matmul(
                &mut gates,
                (batch, 4 * h, 4 * h, 1),
                true,
                (&h_prev, (batch, h, h, 1)),
                (&recurrent_t, (h, 4 * h, 4 * h, 1)),
                self.parallelism(),
            );
            let step = &mut out[t * batch * ROW * h..][..batch * ROW * h];
            // On the widest vectors: every pass below is a plain zip.
            with_widest_simd(|| {
                for ((row, pre), c_prev) in step
                    .chunks_exact_mut(ROW * h)
                    .zip(gates.chunks_exact(4 * h))
                    .zip(c_prev.chunks_exact(h))
                {
                    let (hc, acts) = row.split_at_mut(2 * h);
                    let (h_out, c_out) = hc.split_at_mut(h);
                    // One pass per gate and per output: plain zips, which the
                    // compiler vectorises (one loop doing all of it stayed scalar).
                    let (i, acts) = acts.split_at_mut(h);
                    let (f, acts) = acts.split_at_mut(h);
                    let (g, o) = acts.split_at_mut(h);
                    map_into(i, &pre[..h], sigmoid_f32);
                    map_into(f, &pre[h..2 * h], sigmoid_f32);
                    map_into(g, &pre[2 * h..3 * h], tanh_f32);
                    map_into(o, &pre[3 * h..], sigmoid_f32);
                    for ((c, &c_prev), ((&i, &f), &g)) in c_out.iter_mut().zip(c_prev).zip(i.iter().zip(f.iter()).zip(g.iter())) {
                        *c = f * c_prev + i * g;
                    }
                    map_into(h_out, c_out, tanh_f32);
                    for (h_j, &o_j) in h_out.iter_mut().zip(o.iter()) {
                        *h_j *= o_j;
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((self.steps * batch, ROW * h))))
    }

    fn bwd(
        &self,
        _projected: &Tensor,
        recurrent: &Tensor,
        state: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (batch, h, steps) = (self.batch, self.size, self.steps);
        let out = res.flatten_all()?.to_vec1::<f32>()?;
        let grad = grad.flatten_all()?.to_vec1::<f32>()?;
        let recurrent_values = recurrent.flatten_all()?.to_vec1::<f32>()?;
        let state_values = state.flatten_all()?.to_vec1::<f32>()?;

        // Every step's reset previous h, for the recurrent weights' gradient.
        let mut h_prevs = vec![0f32; steps * batch * h];
        let mut c_prev = vec![0f32; h];
        let mut d_gates = vec![0f32; steps * batch * 4 * h];
        // Gradients reaching the state after step t from step t + 1, reset applied.
        let mut dh_next = vec![0f32; batch * h];
        let mut dc_next = vec![0f32; batch * h];
        let mut tanh_c = vec![0f32; h];
        for t in (0..steps).rev() {
            with_widest_simd(|| {
                for b in 0..batch {
                    let r = t * batch + b;
                    let row = &out[r * ROW * h..][..ROW * h];
                    let (c, acts) = (&row[h..2 * h], &row[2 * h..]);
                    let g_row = &grad[r * ROW * h..][..2 * h];
                    self.previous(t, &out, &state_values, b, (&mut h_prevs[r * h..][..h], &mut c_prev));
                    let dg = &mut d_gates[r * 4 * h..][..4 * h];
                    let (dh_in, dc_in) = (&mut dh_next[b * h..][..h], &mut dc_next[b * h..][..h]);
                    map_into(&mut tanh_c, c, tanh_f32);
                    // Every slice cut to `h` first, so the loop has no bounds
                    // checks and vectorises.
                    let (i, f, g, o) = (&acts[..h], &acts[h..2 * h], &acts[2 * h..3 * h], &acts[3 * h..4 * h]);
                    let (g_h, g_c, c_prev, tanh_c) = (&g_row[..h], &g_row[h..2 * h], &c_prev[..h], &tanh_c[..h]);
                    let (dg_i, dg) = dg.split_at_mut(h);
                    let (dg_f, dg) = dg.split_at_mut(h);
                    let (dg_g, dg_o) = dg.split_at_mut(h);
                    let (dg_o, dh_in, dc_in) = (&mut dg_o[..h], &dh_in[..h], &mut dc_in[..h]);
                    for j in 0..h {
                        let (i, f, g, o, tc) = (i[j], f[j], g[j], o[j], tanh_c[j]);
                        let dh = g_h[j] + dh_in[j];
                        let dc = g_c[j] + dc_in[j] + dh * o * (1.0 - tc * tc);
                        dg_i[j] = dc * g * i * (1.0 - i);
                        dg_f[j] = dc * c_prev[j] * f * (1.0 - f);
                        dg_g[j] = dc * i * (1.0 - g * g);
                        dg_o[j] = dh * tc * o * (1.0 - o);
                        // The cell state's path to the previous step, before its reset.
                        dc_in[j] = dc * f;
                    }
                }
            });
            // dh_prev = d_gates_t · W_hh, then both through the reset.
            let step_gates = &d_gates[t * batch * 4 * h..][..batch * 4 * h];
            matmul(
                &mut dh_next,
                (batch, h, h, 1),
                false,
                (step_gates, (batch, 4 * h, 4 * h, 1)),
                (&recurrent_values, (4 * h, h, h, 1)),
                self.parallelism(),
            );
            for b in 0..batch {
                let keep = self.keep[t * batch + b];
                dh_next[b * h..][..h].iter_mut().for_each(|v| *v *= keep);
                dc_next[b * h..][..h].iter_mut().for_each(|v| *v *= keep);
            }
        }
        // dW_hh = Σ_t d_gates_tᵀ · h_prev_t, over all steps at once.
        let mut d_recurrent = vec![0f32; 4 * h * h];
        matmul(
            &mut d_recurrent,
            (4 * h, h, h, 1),
            false,
            (&d_gates, (4 * h, steps * batch, 1, 4 * h)),
            (&h_prevs, (steps * batch, h, h, 1)),
            Parallelism::Rayon(rayon::current_num_threads()),
        );
        let mut d_state = vec![0f32; batch * 2 * h];
        for (b, row) in d_state.chunks_exact_mut(2 * h).enumerate() {
            row[..h].copy_from_slice(&dh_next[b * h..][..h]);
            row[h..].copy_from_slice(&dc_next[b * h..][..h]);
        }
        let device = res.device();
        Ok((
            Some(Tensor::from_vec(d_gates, (steps * batch, 4 * h), device)?),
            Some(Tensor::from_vec(d_recurrent, (4 * h, h), device)?),
            Some(Tensor::from_vec(d_state, (batch, 2 * h), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn random(shape: &[usize], scale: f32, seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-scale..scale)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// The fused unroll against the same LSTM stepped with candle ops and
    /// the fused cell: outputs, and the gradients of a weighted sum of them
    /// for every input, with resets at the first step, mid-sequence, and
    /// on consecutive steps.
    #[test]
    fn the_fused_unroll_equals_stepping_values_and_gradients() {
        let (steps, batch, size) = (5, 3, 4);
        let projected = Var::from_tensor(&random(&[steps * batch, 4 * size], 1.5, 1)).unwrap();
        let recurrent = Var::from_tensor(&random(&[4 * size, size], 0.8, 2)).unwrap();
        let state = Var::from_tensor(&random(&[batch, 2 * size], 1.0, 3)).unwrap();
        let mut keep = vec![1f32; steps * batch];
        for (t, b) in [(0, 1), (2, 0), (3, 0), (2, 2)] {
            keep[t * batch + b] = 0.0;
        }
        let weights = random(&[steps * batch, 2 * size], 1.0, 4);
        let fused = lstm_unroll(&projected, &recurrent, &state, &keep, steps).unwrap();
        let stepped = unroll_from_ops(&projected, &recurrent, &state, &keep, steps).unwrap();
        assert!(max_abs_diff(&fused, &stepped) < 1e-5, "outputs differ");
        let [ours, theirs] = [fused, stepped].map(|out| (out * &weights).unwrap().sum_all().unwrap().backward().unwrap());
        for (name, var) in [("projected", &projected), ("recurrent", &recurrent), ("state", &state)] {
            let (a, b) = (ours.get(var).unwrap(), theirs.get(var).unwrap());
            let diff = max_abs_diff(a, b);
            assert!(diff < 1e-4, "{name} gradient differs by {diff}");
            assert!(
                b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-3,
                "{name}: no gradient to compare"
            );
        }
        // A row reset at step 0 takes nothing from its initial state.
        let d_state = ours.get(&state).unwrap().to_vec2::<f32>().unwrap();
        assert!(d_state[1].iter().all(|&v| v == 0.0), "{:?}", d_state[1]);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let (projected, recurrent, state) = (random(&[6, 16], 1.0, 1), random(&[16, 4], 1.0, 2), random(&[3, 8], 1.0, 3));
        assert!(lstm_unroll(&projected, &recurrent, &state, &[1.0; 6], 2).is_ok());
        for (steps, keep) in [(3, 6), (2, 5), (0, 6)] {
            let err = lstm_unroll(&projected, &recurrent, &state, &vec![1.0; keep], steps).unwrap_err();
            assert!(err.to_string().contains("lstm_unroll"), "{err}");
        }
        let err = lstm_unroll(&projected, &random(&[16, 5], 1.0, 4), &state, &[1.0; 6], 2).unwrap_err();
        assert!(err.to_string().contains("recurrent weights"), "{err}");
    }
}
