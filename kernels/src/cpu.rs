//! What the CPU custom ops share: reading a tensor's storage as a contiguous slice.

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
