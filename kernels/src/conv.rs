//! 2-D convolution for the CPU learner: im2col + `gemm` kernels as a candle
//! custom op, whose backward can skip the input gradient.
//!
//! candle's own CPU conv is several times slower than PyTorch's, and its
//! backward always computes the input gradient — pure waste for a first
//! layer whose input is the observation. Here each image is unfolded into a
//! `[C·kh·kw, oh·ow]` column matrix in a per-task buffer (stored transposed
//! for strides above 1, see [`ColsLayout`]) and multiplied with the `gemm`
//! crate, the batch split across the current rayon pool:
//! - forward: `y_b = W · cols_b`, plus the bias, if any, while `y_b` is in
//!   cache; a strided conv whose kernel is a whole number of strides (both
//!   layers of IMPALA's shallow CNN) skips the column matrix instead, see
//!   [`SpaceToDepth`];
//! - weight gradient: `dW = Σ_b dy_b · cols_bᵀ` (columns rebuilt, not
//!   stored: a batch of them would not fit in cache, nor comfortably in RAM);
//! - input gradient (only when asked for): `dx_b = col2im(Wᵀ · dy_b)`, or,
//!   for stride 1 and a square kernel, the forward convolution of `dy` with
//!   the flipped kernels (see [`Geometry::transposed_as_forward`]).
//!
//! The input may be u8 (frames as whole intensities): each image is then
//! converted to f32 in its task's buffer, in cache, so the batch is never
//! materialised as f32, and it gets no gradient.
//!
//! Only contiguous f32 (or u8 input) tensors on the CPU take this path;
//! anything else (CUDA, other dtypes) goes to candle's `Tensor::conv2d`,
//! which always computes the input gradient. Gradients of gradients are not
//! supported.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::activation::{relu, relu_f32, relu_grad};
use crate::bias;
use crate::cpu::{contiguous, contiguous_f32, with_widest_simd};

/// `conv2d(input [N, C, H, W], weight [O, C, kh, kw]) -> [N, O, oh, ow]`
/// with the given stride and symmetric zero padding (dilation 1, one group,
/// no bias: add it with `broadcast_add`).
///
/// `input_grad = false` makes the backward return no gradient for `input`
/// (it is then absent from the `GradStore`), which is what a first layer fed
/// with observations wants; the weight gradient is the same either way. A
/// u8 `input` never gets one. Off the CPU or for other dtypes this is
/// candle's `conv2d` (on the input as f32) and the flag is ignored.
pub fn conv2d(input: &Tensor, weight: &Tensor, stride: usize, padding: usize, input_grad: bool) -> Result<Tensor> {
    if !fast_path(input, &[weight]) {
        return candle_conv2d(&input.to_dtype(DType::F32)?, weight, stride, padding);
    }
    // Shape errors surface here, before the op is built.
    Geometry::new(input.dims(), weight.dims(), stride, padding)?;
    input.contiguous()?.apply_op2(
        &weight.contiguous()?,
        Conv2d {
            stride,
            padding,
            input_grad: input_grad && input.dtype() == DType::F32,
            relu: false,
        },
    )
}

/// [`conv2d`] plus a per-output-channel `bias` (`O` values, any shape),
/// added to each image's output while it is still in cache: one pass and
/// one tensor fewer than a separate bias add, forward and backward. The
/// bias gradient is the output gradient summed per channel. Off the fast
/// path this is candle's `conv2d` and a broadcast add.
pub fn conv2d_bias(input: &Tensor, weight: &Tensor, bias: &Tensor, stride: usize, padding: usize, input_grad: bool) -> Result<Tensor> {
    biased(input, weight, bias, (stride, padding), input_grad, false)
}

/// [`conv2d_bias`] followed by a ReLU, applied as each image's output is
/// finished: no pass over the output and no tensor for the ReLU, and its
/// gradient is taken in the convolution's backward. Off the fast path this
/// is candle's `conv2d`, a broadcast add and [`relu`].
pub fn conv2d_bias_relu(input: &Tensor, weight: &Tensor, bias: &Tensor, stride: usize, padding: usize, input_grad: bool) -> Result<Tensor> {
    biased(input, weight, bias, (stride, padding), input_grad, true)
}

fn biased(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    (stride, padding): (usize, usize),
    input_grad: bool,
    with_relu: bool,
) -> Result<Tensor> {
    let out_channels = weight.dim(0)?;
    if bias.elem_count() != out_channels {
        bail!("conv2d: a bias of {} values for {out_channels} output channels", bias.elem_count());
    }
    if !fast_path(input, &[weight, bias]) {
        let input = input.to_dtype(DType::F32)?;
        let y = candle_conv2d(&input, weight, stride, padding)?.broadcast_add(&bias.reshape((1, out_channels, 1, 1))?)?;
        return if with_relu { relu(&y) } else { Ok(y) };
    }
    Geometry::new(input.dims(), weight.dims(), stride, padding)?;
    input.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Conv2d {
            stride,
            padding,
            input_grad: input_grad && input.dtype() == DType::F32,
            relu: with_relu,
        },
    )
}

/// Whether the custom op runs: on the CPU, f32 or u8 input, f32 parameters.
fn fast_path(input: &Tensor, parameters: &[&Tensor]) -> bool {
    input.device().is_cpu() && matches!(input.dtype(), DType::F32 | DType::U8) && parameters.iter().all(|p| p.dtype() == DType::F32)
}

/// A conv's input images, `[N, C, H, W]` values: f32, or u8 observations.
#[derive(Clone, Copy)]
enum Images<'a> {
    F32(&'a [f32]),
    U8(&'a [u8]),
}

impl<'a> Images<'a> {
    fn new(s: &'a CpuStorage, l: &Layout) -> Result<Self> {
        match s {
            CpuStorage::U8(data) => Ok(Self::U8(contiguous(data, l, "conv2d input")?)),
            _ => Ok(Self::F32(contiguous_f32(s, l, "conv2d input")?)),
        }
    }

    /// Image `index` of `len` values as f32: borrowed, or converted into
    /// `buffer`.
    fn image<'s>(self, index: usize, len: usize, buffer: &'s mut Vec<f32>) -> &'s [f32]
    where
        'a: 's,
    {
        match self {
            Self::F32(x) => &x[index * len..][..len],
            Self::U8(x) => {
                buffer.resize(len, 0.0);
                let frames = &x[index * len..][..len];
                with_widest_simd(|| {
                    for (d, &v) in buffer.iter_mut().zip(frames) {
                        *d = f32::from(v);
                    }
                });
                buffer
            }
        }
    }
}

/// candle's `conv2d`, on an input cropped to the pixels the kernel reaches.
///
/// candle's conv backward sizes the input gradient from the height's
/// remainder alone, which fails when the stride leaves a different one along
/// the width. Cropping an unpadded input changes nothing else and leaves no
/// remainder.
fn candle_conv2d(input: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let mut input = input.clone();
    if padding == 0 && stride > 0 {
        for (dim, kernel) in [(2, weight.dim(2)?), (3, weight.dim(3)?)] {
            let size = input.dim(dim)?;
            let reached = size.saturating_sub(kernel) / stride * stride + kernel;
            if reached < size {
                input = input.narrow(dim, 0, reached)?;
            }
        }
    }
    input.conv2d(weight, padding, stride, 1, 1)
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(input: &[usize], weight: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c, h, w], &[o, wc, kh, kw]) = (input, weight) else {
            bail!("conv2d: want a 4-d input and weight, got {input:?} and {weight:?}");
        };
        if wc != c {
            bail!("conv2d: input has {c} channels, weight expects {wc}");
        }
        if stride == 0 || kh == 0 || kw == 0 || h + 2 * pad < kh || w + 2 * pad < kw {
            bail!("conv2d: kernel {kh}x{kw} (stride {stride}, padding {pad}) does not fit input {h}x{w}");
        }
        let (oh, ow) = ((h + 2 * pad - kh) / stride + 1, (w + 2 * pad - kw) / stride + 1);
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            stride,
            pad,
            oh,
            ow,
        })
    }

    /// Rows of the column matrix: one per weight tap.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per channel.
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }

    fn out_len(&self) -> usize {
        self.o * self.p()
    }

    fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad, self.w + 2 * self.pad)
    }

    fn layout(&self) -> ColsLayout {
        if self.stride == 1 {
            ColsLayout::PerTap
        } else {
            ColsLayout::PerPixel
        }
    }

    /// The column matrix as a `[K, P]` view of its buffer.
    fn cols_view(&self) -> View {
        let (k, p) = (self.k(), self.p());
        match self.layout() {
            ColsLayout::PerTap => (k, p, p, 1),
            ColsLayout::PerPixel => (k, p, 1, k),
        }
    }

    /// For a stride-1 convolution with a square kernel wider than its
    /// padding, the convolution whose forward is this one's input gradient:
    /// `dx = conv(dy, W')` with `W'[c, o, i, j] = W[o, c, kh−1−i, kw−1−j]`
    /// and padding `k − 1 − pad`, which gives back `H × W`. Its product has
    /// `O·kh·kw` terms where the direct route has `O` (then a fold adding
    /// every column back): a shape gemm runs far faster, and a copy
    /// (im2col) instead of the fold's additions.
    fn transposed_as_forward(&self) -> Option<Self> {
        if self.stride != 1 || self.kh != self.kw || self.pad >= self.kh || self.is_pointwise() {
            return None;
        }
        Geometry::new(
            &[self.n, self.o, self.oh, self.ow],
            &[self.c, self.o, self.kh, self.kw],
            1,
            self.kh - 1 - self.pad,
        )
        .ok()
    }

    /// Nothing to compute (and no chunks to split the batch into).
    fn is_empty(&self) -> bool {
        self.n == 0 || self.in_len() == 0 || self.out_len() == 0
    }

    /// 1×1, stride 1, no padding: an image already is its column matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output positions `lo..hi` (along one axis of `out` positions) whose
    /// tap at kernel offset `t` lands inside an input axis of length `len`.
    fn valid(&self, t: usize, len: usize, out: usize) -> (usize, usize) {
        let s = self.stride;
        // position = o·s + t - pad must lie in [0, len)
        let lo = self.pad.saturating_sub(t).div_ceil(s).min(out);
        let hi = if len + self.pad > t {
            ((len + self.pad - t - 1) / s + 1).min(out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }

    /// Images per rayon task: a few tasks per thread so that a busy core
    /// does not hold back the whole batch.
    fn images_per_task(&self) -> usize {
        let tasks = (rayon::current_num_threads() * 4).clamp(1, self.n.max(1));
        self.n.div_ceil(tasks).max(1)
    }

    /// With fewer images than threads, let gemm spread each product instead.
    fn gemm_parallelism(&self) -> Parallelism {
        let threads = rayon::current_num_threads();
        if self.n < threads {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        }
    }
}

/// How an image's column matrix — logically `[K, P]`, a row per weight tap
/// (`c, i, j`) and a column per output pixel — sits in memory. Filling it
/// costs as much as the products, so it is stored such that every copy into
/// it is a contiguous run of input.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ColsLayout {
    /// `[K, P]`, for stride 1: a tap's row copies whole input rows.
    PerTap,
    /// `[P, K]`, for larger strides: a pixel's row copies `kw`-long runs.
    PerPixel,
}

/// Calls `f::<KW>(args)` with the kernel width as a constant for common
/// widths (`KW = 0` otherwise), so that per-run copies become fixed moves.
macro_rules! by_kernel_width {
    ($kw:expr, $f:ident($($arg:expr),*)) => {
        match $kw {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            _ => $f::<0>($($arg),*),
        }
    };
}

/// Per-task buffers, reused for each of the task's images.
struct Scratch {
    /// The column matrix (or its gradient) of one image.
    cols: Vec<f32>,
    /// One zero-padded image, `[C, H + 2·pad, W + 2·pad]`: lets the
    /// per-pixel layout copy whole runs without bounds logic.
    padded: Vec<f32>,
    /// One u8 input image converted to f32 (grown on first use).
    image: Vec<f32>,
}

impl Scratch {
    fn new(g: &Geometry) -> Self {
        let pointwise = g.is_pointwise();
        let per_pixel = g.layout() == ColsLayout::PerPixel;
        let (hp, wp) = g.padded();
        Self {
            cols: if pointwise { Vec::new() } else { vec![0.0; g.k() * g.p()] },
            padded: if per_pixel && g.pad > 0 {
                vec![0.0; g.c * hp * wp]
            } else {
                Vec::new()
            },
            image: Vec::new(),
        }
    }

    /// The column matrix of image `index` of `x`.
    fn columns<'s>(&'s mut self, g: &Geometry, x: Images<'s>, index: usize) -> &'s [f32] {
        let image = x.image(index, g.in_len(), &mut self.image);
        unfold(g, image, &mut self.cols, &mut self.padded)
    }
}

/// The column matrix of image `x` (`[C, H, W]`): `x` itself for a
/// pointwise conv, else filled into `cols`.
fn unfold<'a>(g: &Geometry, x: &'a [f32], cols: &'a mut [f32], padded: &mut [f32]) -> &'a [f32] {
    if g.is_pointwise() {
        return x;
    }
    match g.layout() {
        ColsLayout::PerTap => im2col_per_tap(g, x, cols),
        ColsLayout::PerPixel if g.pad > 0 => {
            pad_into(g, x, padded);
            by_kernel_width!(g.kw, im2col_per_pixel(g, padded, cols));
        }
        ColsLayout::PerPixel => by_kernel_width!(g.kw, im2col_per_pixel(g, x, cols)),
    }
    cols
}

/// Adjoint of [`unfold`]: adds every entry of `cols` onto the input pixel it
/// was read from; `dx` (`[C, H, W]`) is overwritten.
fn fold(g: &Geometry, cols: &[f32], dx: &mut [f32], padded: &mut [f32]) {
    dx.fill(0.0);
    match g.layout() {
        ColsLayout::PerTap => col2im_per_tap(g, cols, dx),
        ColsLayout::PerPixel if g.pad > 0 => {
            padded.fill(0.0);
            by_kernel_width!(g.kw, col2im_per_pixel(g, cols, padded));
            unpad_into(g, padded, dx);
        }
        ColsLayout::PerPixel => by_kernel_width!(g.kw, col2im_per_pixel(g, cols, dx)),
    }
}

/// Copies `x` into the interior of `padded`, whose border stays zero.
fn pad_into(g: &Geometry, x: &[f32], padded: &mut [f32]) {
    let (hp, wp) = g.padded();
    for (ci, plane) in x.chunks_exact(g.h * g.w).enumerate() {
        for (y, row) in plane.chunks_exact(g.w).enumerate() {
            padded[(ci * hp + y + g.pad) * wp + g.pad..][..g.w].copy_from_slice(row);
        }
    }
}

/// The interior of `padded`, written to `dx`.
fn unpad_into(g: &Geometry, padded: &[f32], dx: &mut [f32]) {
    let (hp, wp) = g.padded();
    for (ci, plane) in dx.chunks_exact_mut(g.h * g.w).enumerate() {
        for (y, row) in plane.chunks_exact_mut(g.w).enumerate() {
            row.copy_from_slice(&padded[(ci * hp + y + g.pad) * wp + g.pad..][..g.w]);
        }
    }
}

/// `[P, K]` columns from `src`, the image already padded (`[C, hp, wp]`).
fn im2col_per_pixel<const KW: usize>(g: &Geometry, src: &[f32], cols: &mut [f32]) {
    let kw = if KW == 0 { g.kw } else { KW };
    let ((hp, wp), s, k) = (g.padded(), g.stride, g.c * g.kh * kw);
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let pixel = &mut cols[(oy * g.ow + ox) * k..][..k];
            for (ci, taps) in pixel.chunks_exact_mut(g.kh * kw).enumerate() {
                for (i, run) in taps.chunks_exact_mut(kw).enumerate() {
                    let at = (ci * hp + oy * s + i) * wp + ox * s;
                    run.copy_from_slice(&src[at..at + kw]);
                }
            }
        }
    }
}

/// Adjoint of [`im2col_per_pixel`], adding into `dst` (`[C, hp, wp]`).
fn col2im_per_pixel<const KW: usize>(g: &Geometry, cols: &[f32], dst: &mut [f32]) {
    let kw = if KW == 0 { g.kw } else { KW };
    let ((hp, wp), s, k) = (g.padded(), g.stride, g.c * g.kh * kw);
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let pixel = &cols[(oy * g.ow + ox) * k..][..k];
            for (ci, taps) in pixel.chunks_exact(g.kh * kw).enumerate() {
                for (i, run) in taps.chunks_exact(kw).enumerate() {
                    let at = (ci * hp + oy * s + i) * wp + ox * s;
                    for (d, v) in dst[at..at + kw].iter_mut().zip(run) {
                        *d += *v;
                    }
                }
            }
        }
    }
}

/// `[K, P]` columns for stride 1. Entries that read padding are zero: rows
/// of the output that read only padding are never written and stay zero
/// from the buffer's allocation, as every image of the same geometry
/// writes the same positions; columns that do are zeroed where a run
/// crossed them.
///
/// Where the output is as wide as the input ("same" padding, as in the
/// ResNet's 3×3 convolutions), output pixel `(oy, ox)` of tap `(i, j)`
/// reads input pixel `(oy·w + ox) + (i − pad)·w + j − pad`: one offset for
/// the whole tap, so its valid rows are one run of the plane, copied at
/// once, instead of a copy of a few dozen values per output row. The run
/// also passes over the columns of the neighbouring rows that should read
/// padding, so those few are zeroed after it.
fn im2col_per_tap(g: &Geometry, x: &[f32], cols: &mut [f32]) {
    debug_assert_eq!(g.stride, 1);
    debug_assert_eq!(cols.len(), g.k() * g.p());
    let (w, ow) = (g.w, g.ow);
    let channel_rows = cols.chunks_exact_mut(g.kh * g.kw * g.p());
    for (plane, taps) in x.chunks_exact(g.h * w).zip(channel_rows) {
        for (i, tap_row) in taps.chunks_exact_mut(g.kw * g.p()).enumerate() {
            let (y_lo, y_hi) = g.valid(i, g.h, g.oh);
            for (j, row) in tap_row.chunks_exact_mut(g.p()).enumerate() {
                let (x_lo, x_hi) = g.valid(j, w, ow);
                if y_lo == y_hi || x_lo == x_hi {
                    continue;
                }
                if ow == w {
                    let (first, last) = (y_lo * ow + x_lo, (y_hi - 1) * ow + x_hi);
                    let from = (y_lo + i - g.pad) * w + x_lo + j - g.pad;
                    row[first..last].copy_from_slice(&plane[from..][..last - first]);
                    // Column by column down the rows: per row these are one
                    // or two values, which as slices became a `memset` call each.
                    for ox in (0..x_lo).chain(x_hi..ow) {
                        row[y_lo * ow + ox..y_hi * ow].iter_mut().step_by(ow).for_each(|v| *v = 0.0);
                    }
                } else {
                    for oy in y_lo..y_hi {
                        let src = &plane[(oy + i - g.pad) * w + x_lo + j - g.pad..][..x_hi - x_lo];
                        row[oy * ow..][x_lo..x_hi].copy_from_slice(src);
                    }
                }
            }
        }
    }
}

/// Adjoint of [`im2col_per_tap`], adding into `dx` (`[C, H, W]`).
fn col2im_per_tap(g: &Geometry, cols: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(cols.len(), g.k() * g.p());
    let channel_rows = cols.chunks_exact(g.kh * g.kw * g.p());
    for (plane, taps) in dx.chunks_exact_mut(g.h * g.w).zip(channel_rows) {
        for (i, tap_row) in taps.chunks_exact(g.kw * g.p()).enumerate() {
            let (y_lo, y_hi) = g.valid(i, g.h, g.oh);
            for (j, row) in tap_row.chunks_exact(g.p()).enumerate() {
                let (x_lo, x_hi) = g.valid(j, g.w, g.ow);
                for oy in y_lo..y_hi {
                    let src = &row[oy * g.ow..][x_lo..x_hi];
                    let dst = &mut plane[(oy + i - g.pad) * g.w + x_lo + j - g.pad..];
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d += *v;
                    }
                }
            }
        }
    }
}

/// `dst[c, r] = src[r, c]` for a row-major `src` of `rows × cols`.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    for (r, row) in src.chunks_exact(cols).take(rows).enumerate() {
        for (c, v) in row.iter().enumerate() {
            dst[c * rows + r] = *v;
        }
    }
}

/// A strided matrix view: `(rows, cols, row stride, column stride)`.
pub(crate) type View = (usize, usize, usize, usize);

/// Whether every element of `view` indexes into a slice of `len` elements.
fn fits(len: usize, (rows, cols, rs, cs): View) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` when `accumulate`), on strided
/// views into slices; the views are bounds-checked before gemm reads them.
#[allow(unsafe_code)]
pub(crate) fn matmul(
    dst: &mut [f32],
    (m, n, dst_rs, dst_cs): View,
    accumulate: bool,
    (lhs, (lm, k, lhs_rs, lhs_cs)): (&[f32], View),
    (rhs, (rk, rn, rhs_rs, rhs_cs)): (&[f32], View),
    parallelism: Parallelism,
) {
    assert!(lm == m && rk == k && rn == n, "matmul: mismatched shapes");
    assert!(
        fits(dst.len(), (m, n, dst_rs, dst_cs)) && fits(lhs.len(), (m, k, lhs_rs, lhs_cs)) && fits(rhs.len(), (k, n, rhs_rs, rhs_cs)),
        "matmul: view outside its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    // SAFETY: the assertions above keep every element gemm reads or writes
    // inside its slice; `dst` is borrowed mutably, so it aliases neither
    // operand. gemm computes dst = alpha·dst + beta·lhs·rhs (dst is read
    // only when `accumulate`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// What the forward applies to each image's output while it is in cache:
/// the bias per output channel, then a ReLU.
#[derive(Clone, Copy, Default)]
struct Epilogue<'a> {
    bias: Option<&'a [f32]>,
    relu: bool,
}

impl Epilogue<'_> {
    /// Channel `c`'s bias (0 without one).
    fn bias_of(&self, c: usize) -> f32 {
        self.bias.map_or(0.0, |bias| bias[c])
    }

    /// Writes channel `c`'s finished values from `raw` into `out`.
    #[inline(always)]
    fn finish_into(&self, out: &mut [f32], raw: &[f32], c: usize) {
        let b = self.bias_of(c);
        let pairs = out.iter_mut().zip(raw);
        if self.relu {
            pairs.for_each(|(v, &u)| *v = relu_f32(u + b));
        } else {
            pairs.for_each(|(v, &u)| *v = u + b);
        }
    }

    /// Finishes one image's output `[O, P]` in place.
    fn apply(&self, y: &mut [f32], p: usize) {
        if self.bias.is_none() && !self.relu {
            return;
        }
        for (c, values) in y.chunks_exact_mut(p.max(1)).enumerate() {
            let b = self.bias_of(c);
            if self.relu {
                values.iter_mut().for_each(|v| *v = relu_f32(*v + b));
            } else {
                values.iter_mut().for_each(|v| *v += b);
            }
        }
    }
}

/// The convolution of `x` with `w`, finished by `epilogue`.
fn forward(g: &Geometry, x: Images<'_>, w: &[f32], epilogue: Epilogue<'_>) -> Vec<f32> {
    if g.is_empty() {
        let mut y = vec![0.0; g.n * g.out_len()];
        for image in y.chunks_exact_mut(g.out_len().max(1)) {
            epilogue.apply(image, g.p());
        }
        return y;
    }
    if let Some(s2d) = SpaceToDepth::new(g) {
        return s2d.forward(g, x, w, epilogue);
    }
    let (k, p, o) = (g.k(), g.p(), g.o);
    let (imgs, par) = (g.images_per_task(), g.gemm_parallelism());
    let mut y = vec![0.0f32; g.n * g.out_len()];
    y.par_chunks_mut(imgs * g.out_len()).enumerate().for_each(|(task, ys)| {
        let mut scratch = Scratch::new(g);
        // One image's output, `[P, O]`, before it is transposed to `[O, P]`.
        let mut out_t = if g.layout() == ColsLayout::PerPixel {
            vec![0.0; g.out_len()]
        } else {
            Vec::new()
        };
        for (i, yb) in ys.chunks_mut(g.out_len()).enumerate() {
            let cols = scratch.columns(g, x, task * imgs + i);
            // y[o, p] = Σ_k W[o, k] · cols[k, p]
            match g.layout() {
                ColsLayout::PerTap => matmul(yb, (o, p, p, 1), false, (w, (o, k, k, 1)), (cols, g.cols_view()), par),
                ColsLayout::PerPixel => {
                    // gemm runs far faster on per-pixel columns with a
                    // column-major destination; transposing it back is cheap.
                    matmul(&mut out_t, (o, p, 1, o), false, (w, (o, k, k, 1)), (cols, g.cols_view()), par);
                    transpose(&out_t, p, o, yb);
                }
            }
            epilogue.apply(yb, p);
        }
    });
    y
}

/// A strided convolution whose kernel is a whole number of strides, run as
/// a stride-1 one ("space to depth"): padded input pixel `(Y·s + a, X·s + b)`
/// of channel `c` becomes pixel `(Y, X)` of channel `(c, a, b)`, and the
/// `kh × kw` kernel becomes `(kh/s) × (kw/s)` taps over `C·s²` channels.
///
/// Each tap is then one matrix product straight from the rearranged image,
/// with no column matrix: output row `oy` is computed over the image's
/// whole width ("wide" pixels `oy·w + ox`, the columns past `ow` dropped
/// after), so tap `(i, j)` reads the channel planes at the one offset
/// `i·w + j`, a column-major operand gemm takes as it lies. The product's
/// rows are the pixels (hundreds), not the output channels (16–32), which
/// suits gemm's widest micro-kernels; with the per-pixel columns the first
/// convolution of an Atari network ran on gemm's narrowest.
struct SpaceToDepth {
    s: usize,
    /// Channels, rows and columns of the rearranged image.
    c: usize,
    h: usize,
    w: usize,
    /// Rows and columns of taps.
    kh: usize,
    kw: usize,
    /// Wide pixels computed per image: `oh · w`, rounded up to a multiple
    /// of 16 so that gemm reads the operand in place instead of packing it.
    m: usize,
}

impl SpaceToDepth {
    fn new(g: &Geometry) -> Option<Self> {
        let s = g.stride;
        if s == 1 || !g.kh.is_multiple_of(s) || !g.kw.is_multiple_of(s) || g.is_empty() {
            return None;
        }
        let (kh, kw) = (g.kh / s, g.kw / s);
        let (h, w) = (g.oh + kh - 1, g.ow + kw - 1);
        Some(Self {
            s,
            c: g.c * s * s,
            h,
            w,
            kh,
            kw,
            m: (g.oh * w).next_multiple_of(16),
        })
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// The rearranged image's buffer: its planes, then room for the reads
    /// of the rounded-up and dropped wide pixels past the last one.
    fn image_len(&self) -> usize {
        self.c * self.plane() + self.m + self.kh * self.w + self.kw
    }

    /// Fills `dst` with image `x` (`[C, H, W]`) rearranged. Positions that
    /// read padding are never written: they stay zero from the buffer's
    /// allocation, as every image writes the same positions. `phases` is
    /// scratch space.
    fn rearrange<T: Copy + Into<f32>>(&self, g: &Geometry, x: &[T], dst: &mut [f32], phases: &mut Vec<f32>) {
        // Unpadded rows that split into whole strides (both layers of the
        // Atari networks) split a plane at a time, long loops that vectorise.
        let whole_rows = g.pad == 0 && g.w == self.w * self.s;
        match self.s {
            2 if whole_rows => self.rearrange_whole_rows::<2, T>(g, x, dst, phases),
            4 if whole_rows => self.rearrange_whole_rows::<4, T>(g, x, dst, phases),
            _ => self.rearrange_any(g, x, dst),
        }
    }

    /// [`Self::rearrange`] for stride `S`, no padding and `W = w·S`: each
    /// plane's used rows are split into their `S` column phases in one
    /// pass, then every row of a phase is copied to its channel.
    fn rearrange_whole_rows<const S: usize, T: Copy + Into<f32>>(&self, g: &Geometry, x: &[T], dst: &mut [f32], phases: &mut Vec<f32>) {
        let (plane, w) = (self.plane(), self.w);
        let n = self.h * S * w;
        phases.resize(S * n, 0.0);
        for (ci, src_plane) in x.chunks_exact(g.h * g.w).enumerate() {
            // phases[b][f] = src[f·S + b]: value X of row r of phase b is
            // input pixel (r, X·S + b).
            let source = &src_plane[..S * n];
            with_widest_simd(
                #[inline(always)]
                || split_phases::<S, T>(source, phases),
            );
            for (b, phase) in phases.chunks_exact(n).enumerate() {
                for (r, row) in phase.chunks_exact(w).enumerate() {
                    let (y, a) = (r / S, r % S);
                    dst[((ci * S + a) * S + b) * plane + y * w..][..w].copy_from_slice(row);
                }
            }
        }
    }

    /// [`Self::rearrange`] for any stride and padding, a value at a time.
    fn rearrange_any<T: Copy + Into<f32>>(&self, g: &Geometry, x: &[T], dst: &mut [f32]) {
        let (s, pad, plane) = (self.s, g.pad, self.plane());
        for (ci, src_plane) in x.chunks_exact(g.h * g.w).enumerate() {
            for yp in 0..self.h * s {
                let Some(src_row) = yp.checked_sub(pad).filter(|&y| y < g.h).map(|y| &src_plane[y * g.w..][..g.w]) else {
                    continue;
                };
                let (row, a) = (yp / s, yp % s);
                for b in 0..s {
                    let out = &mut dst[((ci * s + a) * s + b) * plane + row * self.w..][..self.w];
                    for (xo, v) in out.iter_mut().enumerate() {
                        if let Some(u) = (xo * s + b).checked_sub(pad).and_then(|xp| src_row.get(xp)) {
                            *v = (*u).into();
                        }
                    }
                }
            }
        }
    }

    /// The weights per tap, `[taps][O][C·s²]`: tap `(i, j)` of channel
    /// `(c, a, b)` is `W[o, c, i·s + a, j·s + b]`.
    fn weights(&self, g: &Geometry, w: &[f32]) -> Vec<f32> {
        let s = self.s;
        let mut out = vec![0.0; self.kh * self.kw * g.o * self.c];
        for (o, kernels) in w.chunks_exact(g.k()).enumerate() {
            for (ci, kernel) in kernels.chunks_exact(g.kh * g.kw).enumerate() {
                for (tap, v) in kernel.iter().enumerate() {
                    let (ky, kx) = (tap / g.kw, tap % g.kw);
                    let t = (ky / s) * self.kw + kx / s;
                    let channel = (ci * s + ky % s) * s + kx % s;
                    out[(t * g.o + o) * self.c + channel] = *v;
                }
            }
        }
        out
    }

    fn forward(&self, g: &Geometry, x: Images<'_>, w: &[f32], epilogue: Epilogue<'_>) -> Vec<f32> {
        let (o, m, plane) = (g.o, self.m, self.plane());
        let (imgs, par) = (g.images_per_task(), g.gemm_parallelism());
        let taps = self.weights(g, w);
        let mut y = vec![0.0f32; g.n * g.out_len()];
        y.par_chunks_mut(imgs * g.out_len()).enumerate().for_each(|(task, ys)| {
            let mut image = vec![0.0f32; self.image_len()];
            let mut phases = Vec::new();
            // `[O, m]`: the wide pixels of every output channel.
            let mut wide = vec![0.0f32; o * m];
            for (i, yb) in ys.chunks_mut(g.out_len()).enumerate() {
                let index = task * imgs + i;
                match x {
                    Images::F32(x) => self.rearrange(g, &x[index * g.in_len()..][..g.in_len()], &mut image, &mut phases),
                    Images::U8(x) => self.rearrange(g, &x[index * g.in_len()..][..g.in_len()], &mut image, &mut phases),
                }
                for (t, tap) in taps.chunks_exact(o * self.c).enumerate() {
                    let offset = (t / self.kw) * self.w + t % self.kw;
                    // wide[p, o] (+)= Σ_c image[c, p + offset] · W_t[o, c]
                    matmul(
                        &mut wide,
                        (m, o, 1, m),
                        t > 0,
                        (&image[offset..], (m, self.c, 1, plane)),
                        (tap, (self.c, o, 1, self.c)),
                        par,
                    );
                }
                for (oc, (out, wide)) in yb.chunks_exact_mut(g.p()).zip(wide.chunks_exact(m)).enumerate() {
                    for (out_row, wide_row) in out.chunks_exact_mut(g.ow).zip(wide.chunks(self.w)) {
                        epilogue.finish_into(out_row, wide_row, oc);
                    }
                }
            }
        });
        y
    }
}

/// `phases[b·n + f] = src[f·S + b]` (`n` values per phase) for strides 2
/// and 4: each phase's values zipped from their own iterator, the form in
/// which the compiler turns the strided reads into vector shuffles
/// (indexing kept them scalar).
#[inline(always)]
fn split_phases<const S: usize, T: Copy + Into<f32>>(src: &[T], phases: &mut [f32]) {
    let n = src.len() / S;
    match S {
        2 => {
            let (o0, o1) = phases.split_at_mut(n);
            for ((px, a), b) in src.chunks_exact(2).zip(o0).zip(o1) {
                (*a, *b) = (px[0].into(), px[1].into());
            }
        }
        4 => {
            let (o01, o23) = phases.split_at_mut(2 * n);
            let ((o0, o1), (o2, o3)) = (o01.split_at_mut(n), o23.split_at_mut(n));
            for ((((px, a), b), c), d) in src.chunks_exact(4).zip(o0).zip(o1).zip(o2).zip(o3) {
                (*a, *b, *c, *d) = (px[0].into(), px[1].into(), px[2].into(), px[3].into());
            }
        }
        _ => unreachable!("phases are split for strides 2 and 4"),
    }
}

fn weight_grad(g: &Geometry, x: Images<'_>, dy: &[f32]) -> Vec<f32> {
    if g.is_empty() {
        return vec![0.0; g.o * g.k()];
    }
    let (k, p, o) = (g.k(), g.p(), g.o);
    let (imgs, par) = (g.images_per_task(), g.gemm_parallelism());
    // One partial sum per task, each `dW[O, K]` seen by gemm as its
    // column-major transpose `[K, O]`: gemm vectorises the K rows (64–512
    // of them) instead of the O (16–32), so its micro-kernel tiles are full.
    let partials: Vec<Vec<f32>> = dy
        .par_chunks(imgs * g.out_len())
        .enumerate()
        .map(|(task, dys)| {
            let mut dw = vec![0.0f32; o * k];
            let mut scratch = Scratch::new(g);
            for (i, dyb) in dys.chunks(g.out_len()).enumerate() {
                let cols = scratch.columns(g, x, task * imgs + i);
                // dWᵀ[k, o] += Σ_p cols[k, p] · dyᵀ[p, o]
                matmul(&mut dw, (k, o, 1, k), true, (cols, g.cols_view()), (dyb, (p, o, 1, p)), par);
            }
            dw
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut dw = parts.next().unwrap_or_else(|| vec![0.0; o * k]);
    for part in parts {
        for (a, b) in dw.iter_mut().zip(&part) {
            *a += *b;
        }
    }
    dw
}

fn input_grad(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if g.is_empty() {
        return vec![0.0; g.n * g.in_len()];
    }
    if let Some(transposed) = g.transposed_as_forward() {
        return forward(&transposed, Images::F32(dy), &flip_kernels(g, w), Epilogue::default());
    }
    let (k, p, o) = (g.k(), g.p(), g.o);
    let (imgs, par) = (g.images_per_task(), g.gemm_parallelism());
    let mut dx = vec![0.0f32; g.n * g.in_len()];
    dx.par_chunks_mut(imgs * g.in_len())
        .zip(dy.par_chunks(imgs * g.out_len()))
        .for_each(|(dxs, dys)| {
            let Scratch { mut cols, mut padded, .. } = Scratch::new(g);
            for (dxb, dyb) in dxs.chunks_mut(g.in_len()).zip(dys.chunks(g.out_len())) {
                // cols[k, p] = Σ_o W[o, k] · dy[o, p], then folded back onto dx.
                if g.is_pointwise() {
                    matmul(dxb, (k, p, p, 1), false, (w, (k, o, 1, k)), (dyb, (o, p, p, 1)), par);
                } else {
                    matmul(&mut cols, g.cols_view(), false, (w, (k, o, 1, k)), (dyb, (o, p, p, 1)), par);
                    fold(g, &cols, dxb, &mut padded);
                }
            }
        });
    dx
}

/// `W'[c, o, i, j] = W[o, c, kh−1−i, kw−1−j]`: the kernels of the
/// transposed convolution (see [`Geometry::transposed_as_forward`]).
fn flip_kernels(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let taps = g.kh * g.kw;
    let mut flipped = vec![0.0; w.len()];
    for (oc, kernel) in w.chunks_exact(taps).enumerate() {
        let (o, c) = (oc / g.c, oc % g.c);
        let out = &mut flipped[(c * g.o + o) * taps..][..taps];
        for (t, &v) in kernel.iter().enumerate() {
            out[taps - 1 - t] = v;
        }
    }
    flipped
}

/// The forward op: `(input, weight[, bias]) -> output`.
struct Conv2d {
    stride: usize,
    padding: usize,
    input_grad: bool,
    /// A ReLU on the output (only with a bias, [`conv2d_bias_relu`]).
    relu: bool,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "fleet-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, Epilogue::default())
    }

    fn bwd(&self, input: &Tensor, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(input, weight, &grad.contiguous()?)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "fleet-conv2d-bias"
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
        let bias = Some(contiguous_f32(s3, l3, "conv2d bias")?);
        self.run(s1, l1, s2, l2, Epilogue { bias, relu: self.relu })
    }

    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Through the ReLU first: the gradient where the output is positive.
        let grad = if self.relu { relu_grad(grad, res)? } else { grad.contiguous()? };
        let (dx, dw) = self.grads(input, weight, &grad)?;
        let db = bias::channel_sums(&grad, 1, bias.shape())?;
        Ok((dx, Some(dw), Some(db)))
    }
}

impl Conv2d {
    fn run(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, epilogue: Epilogue<'_>) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        let y = forward(&g, Images::new(s1, l1)?, contiguous_f32(s2, l2, "conv2d weight")?, epilogue);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.oh, g.ow))))
    }

    /// The input gradient (when asked for) and the weight gradient, from a
    /// contiguous output gradient.
    fn grads(&self, input: &Tensor, weight: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        let (_, _, kh, kw) = weight.dims4()?;
        let dw = input.apply_op2_no_bwd(
            grad,
            &WeightGrad {
                stride: self.stride,
                padding: self.padding,
                kh,
                kw,
            },
        )?;
        let dx = if self.input_grad {
            let (_, _, h, w) = input.dims4()?;
            Some(grad.apply_op2_no_bwd(
                weight,
                &InputGrad {
                    stride: self.stride,
                    padding: self.padding,
                    h,
                    w,
                },
            )?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `(input, output gradient) -> weight gradient`.
struct WeightGrad {
    stride: usize,
    padding: usize,
    kh: usize,
    kw: usize,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "fleet-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (c, o) = (l1.dims()[1], l2.dims()[1]);
        let g = Geometry::new(l1.dims(), &[o, c, self.kh, self.kw], self.stride, self.padding)?;
        if l2.dims() != [g.n, g.o, g.oh, g.ow] {
            bail!("conv2d: output gradient {:?} does not match the conv", l2.dims());
        }
        let dw = weight_grad(&g, Images::new(s1, l1)?, contiguous_f32(s2, l2, "conv2d output gradient")?);
        Ok((CpuStorage::F32(dw), Shape::from((g.o, g.c, g.kh, g.kw))))
    }
}

/// `(output gradient, weight) -> input gradient`.
struct InputGrad {
    stride: usize,
    padding: usize,
    h: usize,
    w: usize,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "fleet-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c) = (l1.dims()[0], l2.dims()[1]);
        let g = Geometry::new(&[n, c, self.h, self.w], l2.dims(), self.stride, self.padding)?;
        if l1.dims() != [g.n, g.o, g.oh, g.ow] {
            bail!("conv2d: output gradient {:?} does not match the conv", l1.dims());
        }
        let dx = input_grad(
            &g,
            contiguous_f32(s1, l1, "conv2d output gradient")?,
            contiguous_f32(s2, l2, "conv2d weight")?,
        );
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let len = shape.iter().product();
        let data: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// max |a - b| relative to max |b|.
    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap();
        let (diff, scale) = (diff.to_scalar::<f32>().unwrap(), scale.to_scalar::<f32>().unwrap());
        diff / scale.max(1e-12)
    }

    /// `(N, C, H, W, O, kh, kw, stride, padding)`: the IMPALA shallow CNN's
    /// two layers, deep ResNet 3×3 layers, and odd shapes (rectangular
    /// kernel, padding with stride, 1×1, padding wider than a tap, a kernel
    /// wider than the specialised widths, stride-1 kernels without padding
    /// or of width 5, whose input gradient is a transposed convolution),
    /// and a batch large enough that each parallel task sums several
    /// images' weight gradients.
    const CASES: &[[usize; 9]] = &[
        [1, 4, 84, 84, 16, 8, 8, 4, 0],
        [5, 4, 84, 84, 16, 8, 8, 4, 0],
        [37, 4, 84, 84, 16, 8, 8, 4, 0],
        [1, 16, 20, 20, 32, 4, 4, 2, 0],
        [5, 16, 20, 20, 32, 4, 4, 2, 0],
        [1, 16, 42, 42, 32, 3, 3, 1, 1],
        [5, 16, 42, 42, 32, 3, 3, 1, 1],
        [5, 4, 84, 84, 16, 3, 3, 1, 1],
        [3, 3, 7, 9, 5, 3, 2, 2, 1],
        [2, 6, 5, 5, 4, 1, 1, 1, 0],
        [2, 2, 4, 3, 3, 2, 2, 3, 2],
        [2, 2, 12, 13, 3, 2, 9, 2, 1],
        [2, 3, 6, 5, 4, 3, 3, 1, 1],
        [2, 6, 5, 5, 4, 1, 1, 2, 0],
        [2, 3, 6, 7, 4, 3, 3, 1, 0],
        [2, 3, 9, 9, 4, 5, 5, 1, 2],
        [3, 3, 11, 13, 5, 4, 2, 2, 1],
        [2, 2, 10, 9, 3, 6, 3, 3, 2],
        [2, 2, 9, 9, 3, 2, 2, 2, 3],
    ];

    fn case_tensors(case: &[usize; 9], seed: u64) -> (Tensor, Tensor, usize, usize) {
        let &[n, c, h, w, o, kh, kw, stride, pad] = case;
        let x = random(&[n, c, h, w], seed);
        let wt = random(&[o, c, kh, kw], seed + 1);
        (x, wt, stride, pad)
    }

    #[test]
    fn forward_matches_candle() {
        for (i, case) in CASES.iter().enumerate() {
            let (x, w, stride, pad) = case_tensors(case, 10 * i as u64);
            let ours = conv2d(&x, &w, stride, pad, true).unwrap();
            let theirs = x.conv2d(&w, pad, stride, 1, 1).unwrap();
            let err = rel_err(&ours, &theirs);
            assert!(err < 1e-5, "case {case:?}: relative error {err}");
        }
    }

    #[test]
    fn a_fused_bias_equals_a_broadcast_add_values_and_gradients() {
        for (i, case) in CASES.iter().enumerate() {
            let (x, w, stride, pad) = case_tensors(case, 30 + i as u64);
            let (x, w) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
            let b = Var::from_tensor(&random(&[1, case[4], 1, 1], 40 + i as u64)).unwrap();
            let fused = conv2d_bias(&x, &w, &b, stride, pad, true).unwrap();
            let apart = conv2d(&x, &w, stride, pad, true).unwrap().broadcast_add(&b).unwrap();
            assert!(rel_err(&fused, &apart) < 1e-6, "case {case:?}: values");
            let r = random(fused.dims(), 50 + i as u64);
            let [ours, theirs] = [fused, apart].map(|out| (out * &r).unwrap().sum_all().unwrap().backward().unwrap());
            for (what, var) in [("input", &x), ("weight", &w), ("bias", &b)] {
                let err = rel_err(ours.get(var).unwrap(), theirs.get(var).unwrap());
                assert!(err < 1e-5, "case {case:?}: {what} gradient relative error {err}");
            }
        }
        let (x, w, stride, pad) = case_tensors(&CASES[0], 1);
        let err = conv2d_bias(&x, &w, &random(&[3], 2), stride, pad, true).unwrap_err().to_string();
        assert!(err.contains("bias of 3 values for 16 output channels"), "{err}");
    }

    #[test]
    fn a_fused_relu_equals_a_separate_one_values_and_gradients() {
        for (i, case) in CASES.iter().enumerate() {
            let (x, w, stride, pad) = case_tensors(case, 60 + i as u64);
            let (x, w) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
            let b = Var::from_tensor(&random(&[case[4]], 70 + i as u64)).unwrap();
            let fused = conv2d_bias_relu(&x, &w, &b, stride, pad, true).unwrap();
            let apart = relu(&conv2d_bias(&x, &w, &b, stride, pad, true).unwrap()).unwrap();
            assert!(rel_err(&fused, &apart) < 1e-6, "case {case:?}: values");
            let values = fused.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            if !values.is_empty() {
                assert!(
                    values.iter().all(|&v| v >= 0.0) && values.contains(&0.0),
                    "case {case:?}: not rectified"
                );
            }
            let r = random(fused.dims(), 80 + i as u64);
            let [ours, theirs] = [fused, apart].map(|out| (out * &r).unwrap().sum_all().unwrap().backward().unwrap());
            for (what, var) in [("input", &x), ("weight", &w), ("bias", &b)] {
                let err = rel_err(ours.get(var).unwrap(), theirs.get(var).unwrap());
                assert!(err < 1e-5, "case {case:?}: {what} gradient relative error {err}");
            }
        }
    }

    #[test]
    fn forward_takes_non_contiguous_input() {
        let x = random(&[2, 5, 9, 9], 1).transpose(2, 3).unwrap();
        let w = random(&[3, 5, 3, 3], 2);
        let ours = conv2d(&x, &w, 2, 1, true).unwrap();
        let theirs = x.conv2d(&w, 1, 2, 1, 1).unwrap();
        assert!(rel_err(&ours, &theirs) < 1e-5);
    }

    /// Gradients of `(conv(x, w) * r).sum()` for x and w, ours then candle's.
    fn grads(case: &[usize; 9], seed: u64, input_grad: bool) -> [(Option<Tensor>, Tensor); 2] {
        let (x, w, stride, pad) = case_tensors(case, seed);
        let (x, w) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let ours = conv2d(&x, &w, stride, pad, input_grad).unwrap();
        let theirs = x.conv2d(&w, pad, stride, 1, 1).unwrap();
        let r = random(ours.dims(), seed + 2);
        [ours, theirs].map(|out| {
            let g = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (g.get(&x).cloned(), g.get(&w).unwrap().clone())
        })
    }

    #[test]
    fn gradients_match_candle() {
        for (i, case) in CASES.iter().enumerate() {
            if case[2] != case[3] || case[5] != case[6] {
                // candle's own backward fails unless input and kernel are
                // square (it derives both output paddings from the height);
                // `gradients_match_naive_loops` covers those.
                continue;
            }
            let [(dx, dw), (want_dx, want_dw)] = grads(case, 10 * i as u64, true);
            let err = rel_err(&dw, &want_dw);
            assert!(err < 1e-4, "case {case:?}: weight gradient relative error {err}");
            let err = rel_err(&dx.unwrap(), &want_dx.unwrap());
            assert!(err < 1e-4, "case {case:?}: input gradient relative error {err}");
        }
    }

    /// Output, input gradient and weight gradient of `(conv(x, w) * r).sum()`
    /// by direct loops.
    fn naive(case: &[usize; 9], x: &[f32], w: &[f32], r: &[f32]) -> [Vec<f32>; 3] {
        let &[n, c, h, wd, o, kh, kw, s, pad] = case;
        let g = Geometry::new(&[n, c, h, wd], &[o, c, kh, kw], s, pad).unwrap();
        let (mut y, mut dx, mut dw) = (vec![0.0; n * g.out_len()], vec![0.0; x.len()], vec![0.0; w.len()]);
        for b in 0..n {
            for oc in 0..o {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let yi = ((b * o + oc) * g.oh + oy) * g.ow + ox;
                        for ci in 0..c {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let (py, px) = ((oy * s + i) as isize - pad as isize, (ox * s + j) as isize - pad as isize);
                                    if py < 0 || px < 0 || py >= h as isize || px >= wd as isize {
                                        continue;
                                    }
                                    let xi = ((b * c + ci) * h + py as usize) * wd + px as usize;
                                    let wi = ((oc * c + ci) * kh + i) * kw + j;
                                    y[yi] += x[xi] * w[wi];
                                    dx[xi] += w[wi] * r[yi];
                                    dw[wi] += x[xi] * r[yi];
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    #[test]
    fn gradients_match_naive_loops() {
        for (i, case) in CASES.iter().enumerate().filter(|(_, c)| c[1] * c[2] * c[3] < 2000) {
            let (x, w, stride, pad) = case_tensors(case, 10 * i as u64);
            let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
            let y = conv2d(&xv, &wv, stride, pad, true).unwrap();
            let r = random(y.dims(), 3);
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = naive(case, &flat(&x), &flat(&w), &flat(&r));
            let got = [y.as_ref(), g.get(&xv).unwrap(), g.get(&wv).unwrap()];
            for (what, (got, want)) in ["output", "input gradient", "weight gradient"].iter().zip(got.iter().zip(&want)) {
                let want = Tensor::from_slice(want, got.dims(), &Device::Cpu).unwrap();
                let err = rel_err(got, &want);
                assert!(err < 1e-5, "case {case:?}: {what} relative error {err}");
            }
        }
    }

    #[test]
    fn no_input_gradient_when_not_asked() {
        for case in &CASES[..2] {
            let [(dx, dw), (want_dx, want_dw)] = grads(case, 7, false);
            assert!(dx.is_none(), "case {case:?}: input got a gradient");
            assert!(want_dx.is_some());
            let err = rel_err(&dw, &want_dw);
            assert!(err < 1e-4, "case {case:?}: weight gradient relative error {err}");
        }
    }

    #[test]
    fn u8_input_equals_the_same_frames_as_f32_values_and_gradients() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for (i, case) in CASES.iter().enumerate() {
            let &[n, c, h, w, o, kh, kw, stride, pad] = case;
            let frames: Vec<u8> = (0..n * c * h * w).map(|_| rng.random()).collect();
            let x_u8 = Tensor::from_vec(frames, (n, c, h, w), &Device::Cpu).unwrap();
            let x_f32 = x_u8.to_dtype(DType::F32).unwrap();
            let wt = Var::from_tensor(&random(&[o, c, kh, kw], 60 + i as u64)).unwrap();
            let b = Var::from_tensor(&random(&[o], 70 + i as u64)).unwrap();
            // Asking for an input gradient of u8 frames gets none.
            let ours = conv2d_bias(&x_u8, &wt, &b, stride, pad, true).unwrap();
            let want = conv2d_bias(&x_f32, &wt, &b, stride, pad, false).unwrap();
            assert_eq!(ours.dtype(), DType::F32);
            assert!(rel_err(&ours, &want) < 1e-6, "case {case:?}: values");
            let r = random(ours.dims(), 80 + i as u64);
            let [ours, want] = [ours, want].map(|out| (out * &r).unwrap().sum_all().unwrap().backward().unwrap());
            assert!(ours.get(&x_u8).is_none(), "case {case:?}: u8 frames got a gradient");
            for (what, var) in [("weight", &wt), ("bias", &b)] {
                let err = rel_err(ours.get(var).unwrap(), want.get(var).unwrap());
                assert!(err < 1e-6, "case {case:?}: {what} gradient relative error {err}");
            }
        }
    }

    #[test]
    fn gradients_through_later_layers() {
        // Two stacked convs with a ReLU: the second's input gradient feeds
        // the first's weight gradient.
        let x = random(&[3, 4, 84, 84], 1);
        let (w1, w2) = (random(&[16, 4, 8, 8], 2), random(&[32, 16, 4, 4], 3));
        let (w1, w2) = (Var::from_tensor(&w1).unwrap(), Var::from_tensor(&w2).unwrap());
        let r = random(&[3, 32, 9, 9], 4);
        let ours = conv2d(&conv2d(&x, &w1, 4, 0, false).unwrap().relu().unwrap(), &w2, 2, 0, true);
        let theirs = x.conv2d(&w1, 0, 4, 1, 1).unwrap().relu().unwrap().conv2d(&w2, 0, 2, 1, 1);
        let [ours, theirs] = [ours, theirs].map(|out| (out.unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap());
        for w in [&w1, &w2] {
            let err = rel_err(ours.get(w).unwrap(), theirs.get(w).unwrap());
            assert!(err < 1e-4, "weight gradient relative error {err}");
        }
    }

    #[test]
    fn empty_batch() {
        let x = Var::from_tensor(&Tensor::zeros((0, 4, 84, 84), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let w = Var::from_tensor(&random(&[16, 4, 8, 8], 1)).unwrap();
        let y = conv2d(&x, &w, 4, 0, true).unwrap();
        assert_eq!(y.dims(), [0, 16, 20, 20]);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&x).unwrap().dims(), [0, 4, 84, 84]);
        let dw = g.get(&w).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(dw.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn rejects_bad_shapes() {
        let x = random(&[1, 4, 8, 8], 1);
        assert!(conv2d(&x, &random(&[2, 3, 3, 3], 2), 1, 0, true).is_err());
        assert!(conv2d(&x, &random(&[2, 4, 9, 9], 2), 1, 0, true).is_err());
        assert!(conv2d(&x, &random(&[2, 4, 3, 3], 2), 0, 0, true).is_err());
        assert!(conv2d(&x.flatten_all().unwrap(), &random(&[2, 4, 3, 3], 2), 1, 0, true).is_err());
    }

    #[test]
    fn valid_ranges() {
        let g = Geometry::new(&[1, 1, 5, 5], &[1, 1, 3, 3], 2, 2).unwrap();
        assert_eq!((g.oh, g.ow), (4, 4));
        // positions o·2 + t - 2 inside [0, 5)
        assert_eq!(g.valid(0, 5, 4), (1, 4));
        assert_eq!(g.valid(1, 5, 4), (1, 3));
        assert_eq!(g.valid(2, 5, 4), (0, 3));
    }
}
