//! Adding a per-channel bias on the CPU, as a candle custom op whose
//! backward sums the gradient into the bias in one contiguous pass.
//!
//! With `broadcast_add`, the bias gradient is candle's generic reduction
//! over the broadcast dimensions, which walks the gradient element by
//! element through computed indices: on the CartPole MLP that was a fifth of
//! a learner update. Here the gradient, laid out as `[outer, C, inner]`, is
//! added row by row into one `C`-vector (or each `inner` run is summed into
//! its channel), loops the compiler vectorises; a convolution's gradient is
//! split by image across the rayon pool.
//!
//! Only f32 tensors on the CPU take this path; anything else uses
//! `broadcast_add`. Gradients of gradients are not supported.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, with_widest_simd};

/// Gradients at least this long are summed on every rayon thread.
const PARALLEL_LEN: usize = 1 << 16;

/// `x + bias`, with `bias` (`C` values, any shape) broadcast along every
/// dimension of `x` but `channel_dim`, whose size is `C`: the bias of a
/// dense layer (`[rows, C]`, channel dimension 1) or of a convolution
/// (`[N, C, H, W]`, channel dimension 1).
pub fn add_bias(x: &Tensor, bias: &Tensor, channel_dim: usize) -> Result<Tensor> {
    let channels = x.dim(channel_dim)?;
    if bias.elem_count() != channels {
        bail!("add_bias: a bias of {} values for {channels} channels", bias.elem_count());
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        x.contiguous()?.apply_op2(&bias.contiguous()?, AddBias { channel_dim })
    } else {
        let mut shape = vec![1; x.rank()];
        shape[channel_dim] = channels;
        x.broadcast_add(&bias.reshape(shape)?)
    }
}

/// `(C, inner)`: the size of `channel_dim` and of the dimensions after it.
fn channels_and_inner(shape: &Shape, channel_dim: usize) -> (usize, usize) {
    let dims = shape.dims();
    (dims[channel_dim], dims[channel_dim + 1..].iter().product())
}

struct AddBias {
    channel_dim: usize,
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "fleet-add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, bias) = (contiguous_f32(s1, l1, "add_bias input")?, contiguous_f32(s2, l2, "add_bias bias")?);
        let (channels, inner) = channels_and_inner(l1.shape(), self.channel_dim);
        let mut y = x.to_vec();
        with_widest_simd(|| {
            for block in y.chunks_exact_mut(channels * inner) {
                if inner == 1 {
                    block.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                } else {
                    for (run, b) in block.chunks_exact_mut(inner).zip(bias) {
                        run.iter_mut().for_each(|v| *v += b);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, bias: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_bias = channel_sums(&grad.contiguous()?, self.channel_dim, bias.shape())?;
        Ok((Some(grad.clone()), Some(grad_bias)))
    }
}

/// A bias gradient: the contiguous f32 CPU `grad` summed over every
/// dimension but `channel_dim`, in `bias_shape`.
pub(crate) fn channel_sums(grad: &Tensor, channel_dim: usize, bias_shape: &Shape) -> Result<Tensor> {
    grad.apply_op1_no_bwd(&SumToChannels {
        channel_dim,
        bias_shape: bias_shape.clone(),
    })
}

/// The bias gradient: the sum of `grad` over every dimension but the
/// channel one, in the bias's shape.
struct SumToChannels {
    channel_dim: usize,
    bias_shape: Shape,
}

impl CustomOp1 for SumToChannels {
    fn name(&self) -> &'static str {
        "fleet-bias-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let grad = contiguous_f32(s, l, "add_bias gradient")?;
        let (channels, inner) = channels_and_inner(l.shape(), self.channel_dim);
        let add_block = |mut sums: Vec<f32>, block: &[f32]| {
            with_widest_simd(|| {
                if inner == 1 {
                    sums.iter_mut().zip(block).for_each(|(s, g)| *s += g);
                } else {
                    for (s, run) in sums.iter_mut().zip(block.chunks_exact(inner)) {
                        *s += run.iter().sum::<f32>();
                    }
                }
            });
            sums
        };
        let block = channels * inner;
        let sums = if grad.len() < PARALLEL_LEN || block == 0 {
            grad.chunks_exact(block.max(1)).fold(vec![0f32; channels], add_block)
        } else {
            // A convolution's gradient: blocks (images) split across the
            // rayon pool, a partial sum per task.
            grad.par_chunks_exact(block)
                .fold(|| vec![0f32; channels], add_block)
                .reduce(|| vec![0f32; channels], |a, b| a.iter().zip(&b).map(|(a, b)| a + b).collect())
        };
        Ok((CpuStorage::F32(sums), self.bias_shape.clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Against `broadcast_add`: output, input gradient and bias gradient, for
    /// a dense layer's `[rows, C]` and a convolution's `[N, C, H, W]`.
    #[test]
    fn matches_broadcast_add_and_its_gradients() {
        let device = Device::Cpu;
        for (shape, broadcast) in [(vec![7, 5], vec![1, 5]), (vec![3, 5, 4, 2], vec![1, 5, 1, 1])] {
            let n: usize = shape.iter().product();
            let x = Var::from_tensor(
                &Tensor::arange(0f32, n as f32, &device)
                    .unwrap()
                    .affine(0.1, -2.0)
                    .unwrap()
                    .reshape(shape.as_slice())
                    .unwrap(),
            )
            .unwrap();
            let bias = Var::from_tensor(&Tensor::new(&[0.5f32, -1.0, 2.0, 0.25, -3.0], &device).unwrap()).unwrap();
            // A loss whose gradient differs per element.
            let weights = Tensor::arange(0f32, n as f32, &device).unwrap().sin().unwrap();
            let weights = weights.reshape(shape.as_slice()).unwrap();
            let run = |fast: bool| {
                let y = if fast {
                    add_bias(x.as_tensor(), bias.as_tensor(), 1).unwrap()
                } else {
                    x.as_tensor()
                        .broadcast_add(&bias.as_tensor().reshape(broadcast.as_slice()).unwrap())
                        .unwrap()
                };
                let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (
                    flat(&y),
                    flat(grads.get(x.as_tensor()).unwrap()),
                    flat(grads.get(bias.as_tensor()).unwrap()),
                )
            };
            let (fast, reference) = (run(true), run(false));
            assert_eq!(fast.0, reference.0, "outputs, {shape:?}");
            assert_eq!(fast.1, reference.1, "input gradients, {shape:?}");
            let close = fast
                .2
                .iter()
                .zip(&reference.2)
                .all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs()));
            assert!(close, "bias gradients, {shape:?}: {:?} vs {:?}", fast.2, reference.2);
        }
    }

    #[test]
    fn a_bias_of_the_wrong_size_is_an_error() {
        let x = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
        let bias = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let error = add_bias(&x, &bias, 1).unwrap_err().to_string();
        assert!(error.contains("4 values for 3 channels"), "{error}");
    }
}
