//! Fully connected layers: [`Dense`], the affine layer every part of the
//! network is built from (the MLP towers, the CNN torsos' last layer, the
//! LSTM's projections, the heads), the initialisation it shares with the
//! convolutions, and the MLP towers themselves.

use candle_core::{DType, Device, Result, Tensor, Var};
use fleet_kernels::{activation, bias};
use rand::Rng;

use super::Activation;

/// Parameters under their stable names, as each layer hands them out.
pub(super) type NamedVars = Vec<(String, Var)>;

/// A weight of `shape` uniform in ±gain/√fan_in (PyTorch's default scale
/// times `gain`) and a zero bias of `fan_out`, named `{name}.weight` and
/// `{name}.bias`.
pub(super) fn weight_and_bias(
    name: &str,
    shape: &[usize],
    fan_in: usize,
    gain: f64,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<(Var, Var, NamedVars)> {
    let bound = gain / (fan_in as f64).sqrt();
    let count: usize = shape.iter().product();
    let values: Vec<f32> = (0..count).map(|_| rng.random_range(-bound..bound) as f32).collect();
    let weight = Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?;
    let bias = Var::from_tensor(&Tensor::zeros(shape[0], DType::F32, device)?)?;
    let named = vec![(format!("{name}.weight"), weight.clone()), (format!("{name}.bias"), bias.clone())];
    Ok((weight, bias, named))
}

/// One affine layer `y = x Wᵀ + b` over variables.
#[derive(Debug)]
pub(super) struct Dense {
    weight: Var,
    /// Settable: the LSTM starts its forget gate from its own bias.
    pub(super) bias: Var,
}

impl Dense {
    pub(super) fn new(
        name: &str,
        fan_in: usize,
        fan_out: usize,
        gain: f64,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<(Self, NamedVars)> {
        let (weight, bias, named) = weight_and_bias(name, &[fan_out, fan_in], fan_in, gain, rng, device)?;
        Ok((Self { weight, bias }, named))
    }

    /// `[out, in]`.
    pub(super) fn weight(&self) -> &Tensor {
        self.weight.as_tensor()
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.as_tensor().t()?)?;
        bias::add_bias(&y, self.bias.as_tensor(), y.rank() - 1)
    }
}

/// An MLP tower of `hidden` widths over inputs of `input_width` values,
/// weights uniform in `±gain/√fan_in`, its layers named `{prefix}.{i}` and
/// appended to `params`. Returns the layers and the width of what the
/// tower outputs.
pub(super) fn tower(
    prefix: &str,
    input_width: usize,
    hidden: &[usize],
    gain: f64,
    rng: &mut impl Rng,
    device: &Device,
    params: &mut NamedVars,
) -> Result<(Vec<Dense>, usize)> {
    let mut layers = Vec::new();
    let mut width = input_width;
    for (i, &out) in hidden.iter().enumerate() {
        let (layer, named) = Dense::new(&format!("{prefix}.{i}"), width, out, gain, rng, device)?;
        layers.push(layer);
        params.extend(named);
        width = out;
    }
    Ok((layers, width))
}

/// A tower's output: each layer followed by `activation`.
pub(super) fn forward(layers: &[Dense], activation: Activation, input: &Tensor) -> Result<Tensor> {
    let mut x = input.clone();
    for layer in layers {
        x = layer.forward(&x)?;
        x = match activation {
            Activation::Tanh => activation::tanh(&x)?,
            Activation::Relu => activation::relu(&x)?,
        };
    }
    Ok(x)
}
