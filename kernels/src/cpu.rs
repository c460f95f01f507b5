//! What the CPU custom ops share: reading a tensor's storage as a contiguous
//! slice, and running element-wise loops on the CPU's widest vectors.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, bail};

/// The values of a contiguous f32 tensor; `what` names it in the error.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("{what}: expected f32, got {:?}", s.dtype());
    };
    contiguous(data, l, what)
}

/// The values `l` views in `data`, which must be contiguous.
pub(crate) fn contiguous<'a, T>(data: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// Runs `body` compiled for the widest vector instructions this CPU has
/// (AVX-512, else AVX2 with FMA, on x86-64; chosen at run time by `pulp`).
/// The build targets baseline x86-64, which caps the loops the compiler
/// vectorises at SSE2's 4 lanes; a loop inlined into `body` gets 16 or 8.
#[inline(always)]
pub(crate) fn with_widest_simd<R>(body: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(body)
}

/// `dst[i] = f(src[i])`. A plain loop, always inlined: called inside
/// [`with_widest_simd`], it takes that call's instructions, so a kernel
/// that runs several loops dispatches once for all of them.
#[inline(always)]
pub(crate) fn map_into(dst: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

/// `dst[i] = f(a[i], b[i])`, as [`map_into`].
#[inline(always)]
pub(crate) fn zip_map_into(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = f(a, b);
    }
}
