//! 2-D max-pooling for the CPU learner, as a candle custom op whose backward
//! is one pass that routes each output's gradient to its window's maximum.
//!
//! candle's own `max_pool2d` has no backward when the stride differs from
//! the window (IMPALA's deep torso pools 3×3 windows with stride 2), and
//! the same pooling built from candle slices and elementwise maxima took a
//! dozen full passes over the feature map forward and three times as many
//! backward. Here the forward reads each window once and, when its input
//! takes part in a backward pass, keeps which tap of each window held the
//! maximum (two bytes an output, the first maximum in row-major order
//! winning a tie, as in PyTorch); the backward adds each output's gradient
//! at that tap. Planes (image × channel) are split across the current
//! rayon pool.
//!
//! Off the CPU, or for other dtypes, the same pooling is built from candle
//! ops (edge padding, strided slices and elementwise maxima).

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, with_widest_simd};

/// Max over `kernel × kernel` windows of `x` `[N, C, H, W]`, `stride` apart,
/// the input padded by `padding` on every side with values that never win
/// (`-∞`). The output is `[N, C, oh, ow]` with
/// `oh = (H + 2·padding − kernel) / stride + 1`, as PyTorch's `MaxPool2d`.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let pool = MaxPool2d { kernel, stride, padding };
    pool.output_side(h)?;
    pool.output_side(w)?;
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let op = PoolOp {
            pool,
            keep_taps: x.track_op(),
            taps: OnceLock::new(),
        };
        x.contiguous()?.apply_op1(op)
    } else {
        max_pool_axis(&max_pool_axis(x, 2, pool)?, 3, pool)
    }
}

/// The pooling along one axis of `x` from candle ops. Padding by repeating
/// the edge value is exact for a max when the padding is narrower than the
/// window: every window that reaches into it also holds the edge.
fn max_pool_axis(x: &Tensor, dim: usize, pool: MaxPool2d) -> Result<Tensor> {
    let MaxPool2d { kernel, stride, padding } = pool;
    let size = x.dim(dim)?;
    let out = pool.output_side(size)?;
    // Long enough that every window start is a reshape away: offset + stride·out.
    let padded_len = (kernel - 1 + stride * out).max(size + padding);
    let padded = x.pad_with_same(dim, padding, padded_len - size - padding)?;
    // Elements offset, offset + stride, …: `out` groups of `stride`, first of each.
    let pick = |offset: usize| -> Result<Tensor> {
        let mut groups = padded.dims().to_vec();
        groups[dim] = out;
        groups.insert(dim + 1, stride);
        padded
            .narrow(dim, offset, stride * out)?
            .reshape(groups)?
            .narrow(dim + 1, 0, 1)?
            .squeeze(dim + 1)
    };
    let mut pooled = pick(0)?;
    for offset in 1..kernel {
        pooled = pooled.maximum(&pick(offset)?)?;
    }
    Ok(pooled)
}

/// The widest window: a window's taps are kept as `u16`.
const MAX_KERNEL: usize = 255;

#[derive(Clone, Copy, Debug)]
struct MaxPool2d {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl MaxPool2d {
    /// Output length along an input axis of `size`, or an error when the
    /// window does not fit or would see nothing but padding.
    fn output_side(&self, size: usize) -> Result<usize> {
        let MaxPool2d { kernel, stride, padding } = *self;
        if size == 0 || kernel == 0 || stride == 0 || padding >= kernel || size + 2 * padding < kernel {
            bail!("max_pool2d: window {kernel} (stride {stride}, padding {padding}) does not fit an axis of {size}");
        }
        if kernel > MAX_KERNEL {
            bail!("max_pool2d: window {kernel} is wider than {MAX_KERNEL}, the widest whose taps fit in the kept indices");
        }
        Ok((size + 2 * padding - kernel) / stride + 1)
    }

    /// Rows `lo..hi` of output row `o`'s window in an input of `size`
    /// rows, clipped to the input.
    fn window(&self, o: usize, size: usize) -> (usize, usize) {
        let start = o * self.stride;
        (start.saturating_sub(self.padding), (start + self.kernel - self.padding).min(size))
    }

    /// Output columns `lo..hi` whose window's tap `j` lands inside an input
    /// row of `size`, out of `out`.
    fn valid(&self, j: usize, size: usize, out: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        // column o·s + j − p must lie in [0, size)
        let lo = p.saturating_sub(j).div_ceil(s).min(out);
        let hi = if size + p > j { ((size + p - j - 1) / s + 1).min(out) } else { 0 };
        (lo, hi.max(lo))
    }

    /// Pools one `[h, w]` plane, calling `row(oy, best, taps)` for every
    /// output row with each window's maximum in `best` and, when `TAPS`,
    /// which of its taps held the first maximum in `taps` (`i·kernel + j`
    /// for window row `i` and column `j`; see [`MaxPool2d::tap_index`]).
    ///
    /// The plane is first split into its `stride` column phases (columns
    /// `r, r + stride, …` of each row), so that one tap of every window
    /// along a row is a contiguous run. The loops then go tap by tap in
    /// row-major window order with output columns innermost: a compare and
    /// two selects per column, independent of its neighbours', written with
    /// bit masks so that the compiler makes vector code of them (as `if`s
    /// they stayed scalar branches). `>` keeps the first of equal maxima;
    /// a NaN wins its window (its first NaN), as in PyTorch, so that a
    /// diverged layer shows rather than hides. Inlined, so that its loops
    /// take the caller's `with_widest_simd` instructions.
    #[inline(always)]
    fn pool_plane<const TAPS: bool>(
        &self,
        plane: &[f32],
        (h, w): (usize, usize),
        scratch: &mut PlaneScratch,
        mut row: impl FnMut(usize, &[f32], &[u32]),
    ) {
        let PlaneScratch { best, taps, phases } = scratch;
        let (s, k, ow) = (self.stride, self.kernel, best.len());
        let phase_len = w.div_ceil(s);
        for (y, split) in plane.chunks_exact(w).zip(phases.chunks_exact_mut(s * phase_len)) {
            for (r, phase) in split.chunks_exact_mut(phase_len).enumerate() {
                for (slot, &v) in phase.iter_mut().zip(y[r.min(w)..].iter().step_by(s)) {
                    *slot = v;
                }
            }
        }
        let (p, oh) = (self.padding, (h + 2 * self.padding - k) / s + 1);
        for oy in 0..oh {
            let (y0, y1) = self.window(oy, h);
            best.fill(f32::NEG_INFINITY);
            if TAPS {
                // Each window's first tap inside the input, should none beat −∞.
                for (ox, tap) in taps.iter_mut().enumerate() {
                    *tap = ((y0 + p - oy * s) * k + self.window(ox, w).0 + p - ox * s) as u32;
                }
            }
            for y in y0..y1 {
                let split = &phases[y * s * phase_len..][..s * phase_len];
                for j in 0..k {
                    let (lo, hi) = self.valid(j, w, ow);
                    if lo == hi {
                        continue;
                    }
                    // Output `lo`'s tap `j` reads this column; the next output's, `s` further.
                    let first = lo * s + j - p;
                    let run = &split[(first % s) * phase_len + first / s..][..hi - lo];
                    let (best, taps) = (&mut best[lo..hi], &mut taps[lo..hi]);
                    let tap = ((y + p - oy * s) * k + j) as u32;
                    for i in 0..run.len() {
                        let (v, b) = (run[i], best[i]);
                        // v > b, or v is a NaN; never once b is a NaN.
                        let take = u32::from((v > b) | (v.is_nan() & !b.is_nan())).wrapping_neg();
                        best[i] = f32::from_bits((v.to_bits() & take) | (b.to_bits() & !take));
                        if TAPS {
                            taps[i] = (tap & take) | (taps[i] & !take);
                        }
                    }
                }
            }
            row(oy, best, taps);
        }
    }

    /// The flat index within an `[h, w]` plane of tap `tap` of output
    /// `(oy, ox)`'s window (a tap inside the input, as `pool_plane` finds).
    fn tap_index(&self, tap: u32, (oy, ox): (usize, usize), w: usize) -> usize {
        let (i, j) = (tap as usize / self.kernel, tap as usize % self.kernel);
        (oy * self.stride + i - self.padding) * w + ox * self.stride + j - self.padding
    }
}

/// Buffers for pooling one plane, reused across a task's planes.
struct PlaneScratch {
    /// One output row's maxima.
    best: Vec<f32>,
    /// One output row's winning taps.
    taps: Vec<u32>,
    /// The input plane split into column phases, row by row.
    phases: Vec<f32>,
}

impl PlaneScratch {
    fn new(pool: &MaxPool2d, (h, w): (usize, usize), ow: usize) -> Self {
        Self {
            best: vec![0.0; ow],
            taps: vec![0; ow],
            phases: vec![0.0; h * pool.stride * w.div_ceil(pool.stride)],
        }
    }
}

/// The forward op. `keep_taps` where the input is tracked for gradients:
/// `taps` then holds each output's winning tap (`i·kernel + j`), in the
/// output's layout, for the backward.
struct PoolOp {
    pool: MaxPool2d,
    keep_taps: bool,
    taps: OnceLock<Arc<[u16]>>,
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "fleet-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let pool = self.pool;
        let (n, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = (pool.output_side(h)?, pool.output_side(w)?);
        let mut y = vec![0f32; n * c * oh * ow];
        let mut taps = vec![0u16; if self.keep_taps { y.len() } else { 0 }];
        if !y.is_empty() {
            let planes = y.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w));
            let pool_into = |scratch: &mut PlaneScratch, (out, plane): (&mut [f32], &[f32]), out_taps: Option<&mut [u16]>| {
                with_widest_simd(|| match out_taps {
                    Some(out_taps) => pool.pool_plane::<true>(plane, (h, w), scratch, |oy, best, taps| {
                        out[oy * ow..][..ow].copy_from_slice(best);
                        for (kept, &tap) in out_taps[oy * ow..][..ow].iter_mut().zip(taps) {
                            *kept = tap as u16;
                        }
                    }),
                    None => pool.pool_plane::<false>(plane, (h, w), scratch, |oy, best, _| {
                        out[oy * ow..][..ow].copy_from_slice(best);
                    }),
                });
            };
            let scratch = || PlaneScratch::new(&pool, (h, w), ow);
            if self.keep_taps {
                planes
                    .zip(taps.par_chunks_mut(oh * ow))
                    .for_each_init(scratch, |scratch, (plane, out_taps)| pool_into(scratch, plane, Some(out_taps)));
            } else {
                planes.for_each_init(scratch, |scratch, plane| pool_into(scratch, plane, None));
            }
        }
        if self.keep_taps && self.taps.set(taps.into()).is_err() {
            bail!("{}: run twice", self.name());
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(taps) = self.taps.get() else {
            bail!("{}: a backward through an input that was not tracked", self.name());
        };
        let (_, _, h, w) = arg.dims4()?;
        let scatter = Scatter {
            pool: self.pool,
            input: (h, w),
            taps: Arc::clone(taps),
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&scatter)?))
    }
}

/// `output gradient -> input gradient`: each output's gradient added at its
/// window's kept tap.
struct Scatter {
    pool: MaxPool2d,
    /// The input's `(h, w)`.
    input: (usize, usize),
    taps: Arc<[u16]>,
}

impl CustomOp1 for Scatter {
    fn name(&self) -> &'static str {
        "fleet-max-pool2d-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = contiguous_f32(s, l, self.name())?;
        let (n, c, oh, ow) = l.shape().dims4()?;
        let (pool, (h, w)) = (self.pool, self.input);
        if (pool.output_side(h)?, pool.output_side(w)?) != (oh, ow) || self.taps.len() != dy.len() {
            bail!(
                "{}: output gradient {:?} for an input of {h}×{w} and {} taps",
                self.name(),
                l.dims(),
                self.taps.len()
            );
        }
        let mut dx = vec![0f32; n * c * h * w];
        if !dx.is_empty() {
            dx.par_chunks_mut(h * w)
                .zip(dy.par_chunks(oh * ow).zip(self.taps.par_chunks(oh * ow)))
                .for_each(|(dx, (dy, taps))| {
                    for (o, (&g, &tap)) in dy.iter().zip(taps).enumerate() {
                        dx[pool.tap_index(u32::from(tap), (o / ow, o % ow), w)] += g;
                    }
                });
        }
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn random(shape: &[usize], seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..shape.iter().product()).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// The pooling by definition, one output at a time over padded windows.
    fn reference(x: &[f32], [n, c, h, w]: [usize; 4], kernel: usize, stride: usize, padding: usize) -> Vec<f32> {
        let (oh, ow) = ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1);
        let mut y = Vec::new();
        for plane in x.chunks(h * w).take(n * c) {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = f32::NEG_INFINITY;
                    for i in 0..kernel {
                        for j in 0..kernel {
                            let (py, px) = (
                                (oy * stride + i) as isize - padding as isize,
                                (ox * stride + j) as isize - padding as isize,
                            );
                            if (0..h as isize).contains(&py) && (0..w as isize).contains(&px) {
                                best = best.max(plane[py as usize * w + px as usize]);
                            }
                        }
                    }
                    y.push(best);
                }
            }
        }
        y
    }

    /// `[N, C, H, W, kernel, stride, padding]`: IMPALA's pooling on odd and
    /// even sides, a window equal to its stride, padding with stride 1, a
    /// single output, and sides shorter than the window.
    const CASES: &[[usize; 7]] = &[
        [2, 3, 84, 84, 3, 2, 1],
        [2, 3, 21, 21, 3, 2, 1],
        [1, 2, 11, 6, 3, 2, 1],
        [3, 2, 8, 8, 2, 2, 0],
        [1, 1, 5, 7, 3, 1, 1],
        [1, 1, 3, 3, 3, 1, 0],
        [2, 1, 1, 2, 3, 2, 1],
    ];

    #[test]
    fn pooled_values_equal_the_definition_on_and_off_the_fast_path() {
        for &[n, c, h, w, k, s, p] in CASES {
            let x = random(&[n, c, h, w], 7);
            let want = reference(&x, [n, c, h, w], k, s, p);
            let t = Tensor::from_vec(x, (n, c, h, w), &Device::Cpu).unwrap();
            let fast = max_pool2d(&t, k, s, p).unwrap();
            let slices = max_pool_axis(
                &max_pool_axis(
                    &t,
                    2,
                    MaxPool2d {
                        kernel: k,
                        stride: s,
                        padding: p,
                    },
                )
                .unwrap(),
                3,
                MaxPool2d {
                    kernel: k,
                    stride: s,
                    padding: p,
                },
            )
            .unwrap();
            assert_eq!(fast.dims(), slices.dims(), "{n}x{c}x{h}x{w} k{k} s{s} p{p}");
            assert_eq!(
                fast.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want,
                "fast path, k{k} s{s} p{p}"
            );
            assert_eq!(
                slices.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want,
                "candle ops, k{k} s{s} p{p}"
            );
        }
    }

    #[test]
    fn the_gradient_goes_to_each_windows_maximum_and_sums_where_windows_overlap() {
        for &[n, c, h, w, k, s, p] in CASES {
            let x = random(&[n, c, h, w], 11);
            let dy = random(&[n, c, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1], 12);
            let var = Var::from_vec(x.clone(), (n, c, h, w), &Device::Cpu).unwrap();
            let y = max_pool2d(var.as_tensor(), k, s, p).unwrap();
            // A tracked input takes the path that keeps the taps: the same values.
            let pooled = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(pooled, reference(&x, [n, c, h, w], k, s, p), "k{k} s{s} p{p}: values");
            let dy_t = Tensor::from_vec(dy.clone(), y.dims(), &Device::Cpu).unwrap();
            let grads = (y * dy_t).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Each output's gradient lands on its window's maximum.
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let mut want = vec![0f32; x.len()];
            for (o, g) in dy.iter().enumerate() {
                let (plane, oy, ox) = (o / (oh * ow), o / ow % oh, o % ow);
                let window = (0..k * k).filter_map(|t| {
                    let (py, px) = ((oy * s + t / k).checked_sub(p)?, (ox * s + t % k).checked_sub(p)?);
                    (py < h && px < w).then_some(plane * h * w + py * w + px)
                });
                let argmax = window.reduce(|a, b| if x[b] > x[a] { b } else { a }).unwrap();
                want[argmax] += g;
            }
            for (i, (a, b)) in dx.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-5, "k{k} s{s} p{p}: input {i} got {a}, want {b}");
            }
        }
    }

    #[test]
    fn a_tie_routes_the_gradient_to_the_first_maximum_only_even_at_minus_infinity() {
        let var = Var::from_vec(vec![1f32; 9], (1, 1, 3, 3), &Device::Cpu).unwrap();
        let y = max_pool2d(var.as_tensor(), 3, 1, 0).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let dx = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(dx, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // Windows of −∞ clipped by the padding: each window's first input.
        let var = Var::from_vec(vec![f32::NEG_INFINITY; 9], (1, 1, 3, 3), &Device::Cpu).unwrap();
        let y = max_pool2d(var.as_tensor(), 3, 2, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let dx = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(dx, [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn a_nan_wins_its_window_and_takes_its_gradient() {
        let values = [1.0, f32::NAN, 3.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0];
        let var = Var::from_vec(values.to_vec(), (1, 1, 3, 3), &Device::Cpu).unwrap();
        let y = max_pool2d(var.as_tensor(), 2, 1, 0).unwrap();
        let pooled = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(pooled[0].is_nan() && pooled[1].is_nan() && pooled[2].is_nan(), "{pooled:?}");
        assert_eq!(pooled[3], 0.0);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let dx = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(dx, [0.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn windows_that_do_not_fit_are_refused() {
        let x = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        for (k, s, p) in [(5, 1, 0), (3, 0, 1), (3, 2, 3), (0, 1, 0)] {
            let err = max_pool2d(&x, k, s, p).unwrap_err().to_string();
            assert!(err.contains("does not fit"), "k{k} s{s} p{p}: {err}");
        }
        let empty = Tensor::zeros((1, 1, 0, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(max_pool2d(&empty, 3, 2, 2).is_err(), "a window over nothing but padding");
    }
}
