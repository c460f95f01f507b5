//! The convolutional torsos on image frames: IMPALA's shallow model (two
//! convolutions) and deep ResNet (three sections of a convolution, a
//! max-pool and two residual blocks), DQN's three convolutions and
//! MinAtar's single one, each ending in a fully connected layer; and the
//! geometry that says whether a frame is large enough for them. The
//! convolutions, bias adds, max-pools and ReLUs are the kernels crate's.

use candle_core::{Device, Result, Tensor, Var};
use fleet_kernels::activation::relu;
use fleet_kernels::{conv, pool};
use rand::Rng;

use super::FRAME_SCALE;
use super::config::Torso;
use super::mlp::{Dense, NamedVars, weight_and_bias};
use crate::FrameShape;

/// Width of a CNN torso's last fully connected layer: 256 for IMPALA's,
/// 512 for DQN's, 128 for MinAtar's.
pub(super) const fn conv_torso_features(torso: Torso) -> usize {
    match torso {
        Torso::SmallCnn => 128,
        Torso::NatureCnn => 512,
        _ => 256,
    }
}

/// `(out_channels, kernel, stride)` of each unpadded convolution of a plain
/// stack, each followed by a ReLU; empty for the MLP and the deep ResNet.
const fn plain_convs(torso: Torso) -> &'static [(usize, usize, usize)] {
    match torso {
        Torso::SmallCnn => &[(16, 3, 1)],
        Torso::ShallowCnn => &[(16, 8, 4), (32, 4, 2)],
        Torso::NatureCnn => &[(32, 8, 4), (64, 4, 2), (64, 3, 1)],
        Torso::Mlp | Torso::DeepResnet => &[],
    }
}

/// The smallest side of a square frame that `torso`'s convolutions can read
/// (any frame for the MLP, which has none).
pub(super) fn min_frame_side(torso: Torso) -> usize {
    if torso == Torso::Mlp {
        return 1;
    }
    let square = |side| FrameShape {
        channels: 1,
        height: side,
        width: side,
    };
    // Every convolution reads a frame at least as large as its kernel, so
    // the search ends.
    (1..).find(|&side| conv_torso_output(torso, square(side)).is_some()).unwrap_or(1)
}

/// `(height, width)` of a CNN torso's last feature map, or `None` when the
/// frame is too small for its convolutions.
pub(super) fn conv_torso_output(torso: Torso, frame: FrameShape) -> Option<(usize, usize)> {
    let conv = |size: usize, kernel: usize, stride: usize| (size >= kernel).then(|| (size - kernel) / stride + 1);
    match torso {
        Torso::Mlp => None,
        // Same-padded convs keep the size; each max-pool halves it, rounding up.
        Torso::DeepResnet => {
            let side = |size: usize| (0..3).fold(size, |s, _| s.div_ceil(2));
            Some((side(frame.height), side(frame.width)))
        }
        plain => {
            let side = |size| {
                plain_convs(plain)
                    .iter()
                    .try_fold(size, |s, &(_, kernel, stride)| conv(s, kernel, stride))
            };
            Some((side(frame.height)?, side(frame.width)?))
        }
    }
}

/// One square convolution over `[N, C, H, W]`, weight `[out, in, k, k]`.
#[derive(Debug)]
struct Conv2d {
    weight: Var,
    /// `[1, out, 1, 1]`, broadcast over the batch and the pixels.
    bias: Var,
    stride: usize,
    padding: usize,
    /// Whether the backward computes the input's gradient; a first layer,
    /// fed with observations, has no use for it.
    input_grad: bool,
    /// A factor on the input, applied to the weight instead: the same
    /// product for a first layer that scales frames, on a few thousand
    /// weights rather than every pixel.
    input_scale: f64,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        gain: f64,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<(Self, NamedVars)> {
        let shape = [out_channels, in_channels, kernel, kernel];
        let (weight, bias, named) = weight_and_bias(name, &shape, in_channels * kernel * kernel, gain, rng, device)?;
        let conv = Self {
            weight,
            bias,
            stride,
            padding,
            input_grad: true,
            input_scale: 1.0,
        };
        Ok((conv, named))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv::conv2d_bias(
            x,
            &self.scaled_weight()?,
            self.bias.as_tensor(),
            self.stride,
            self.padding,
            self.input_grad,
        )
    }

    /// `relu(self.forward(x))`, the ReLU fused into the convolution.
    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        conv::conv2d_bias_relu(
            x,
            &self.scaled_weight()?,
            self.bias.as_tensor(),
            self.stride,
            self.padding,
            self.input_grad,
        )
    }

    fn scaled_weight(&self) -> Result<Tensor> {
        let weight = self.weight.as_tensor();
        if self.input_scale == 1.0 {
            Ok(weight.clone())
        } else {
            weight.affine(self.input_scale, 0.0)
        }
    }
}

/// IMPALA's residual block: `x + conv(relu(conv(relu(x))))`, 3×3 same-padded.
#[derive(Debug)]
struct ResidualBlock {
    first: Conv2d,
    second: Conv2d,
}

impl ResidualBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.first.forward_relu(&relu(x)?)?;
        let y = self.second.forward(&y)?;
        x + y
    }
}

/// One section of the deep torso: conv, max-pool, two residual blocks.
#[derive(Debug)]
struct ResidualSection {
    conv: Conv2d,
    blocks: Vec<ResidualBlock>,
}

#[derive(Debug)]
enum ConvLayers {
    /// Convolutions one after the other, each followed by a ReLU.
    Plain(Vec<Conv2d>),
    Deep(Vec<ResidualSection>),
}

/// A convolutional torso: frames `[N, C·H·W]` (u8 intensities as f32) to
/// features `[N, conv_torso_features(torso)]`.
#[derive(Debug)]
pub(super) struct ConvTorso {
    frame: FrameShape,
    layers: ConvLayers,
    fc: Dense,
}

impl ConvTorso {
    /// Weights uniform in `±gain/√fan_in`.
    pub(super) fn new(
        torso: Torso,
        frame: FrameShape,
        gain: f64,
        rng: &mut impl Rng,
        device: &Device,
        params: &mut Vec<(String, Var)>,
    ) -> Result<Self> {
        let Some((height, width)) = conv_torso_output(torso, frame) else {
            candle_core::bail!("a {} torso cannot read {frame:?} frames", torso.name());
        };
        let mut conv = |name: &str, c_in, c_out, kernel, stride, padding| -> Result<Conv2d> {
            let (conv, named) = Conv2d::new(name, c_in, c_out, kernel, stride, padding, gain, rng, device)?;
            params.extend(named);
            Ok(conv)
        };
        // The observation needs no gradient, and arrives unscaled.
        let first_layer = |mut conv: Conv2d| {
            conv.input_grad = false;
            conv.input_scale = FRAME_SCALE;
            conv
        };
        let (layers, channels) = match torso {
            Torso::DeepResnet => {
                let mut sections = Vec::new();
                let mut c_in = frame.channels;
                for (s, c_out) in [16, 32, 32].into_iter().enumerate() {
                    let mut section_conv = conv(&format!("torso.section{s}.conv"), c_in, c_out, 3, 1, 1)?;
                    if s == 0 {
                        section_conv = first_layer(section_conv);
                    }
                    let mut blocks = Vec::new();
                    for b in 0..2 {
                        let prefix = format!("torso.section{s}.block{b}");
                        let first = conv(&format!("{prefix}.conv0"), c_out, c_out, 3, 1, 1)?;
                        let second = conv(&format!("{prefix}.conv1"), c_out, c_out, 3, 1, 1)?;
                        blocks.push(ResidualBlock { first, second });
                    }
                    sections.push(ResidualSection {
                        conv: section_conv,
                        blocks,
                    });
                    c_in = c_out;
                }
                (ConvLayers::Deep(sections), c_in)
            }
            plain => {
                let mut convs = Vec::new();
                let mut c_in = frame.channels;
                for (i, &(c_out, kernel, stride)) in plain_convs(plain).iter().enumerate() {
                    let layer = conv(&format!("torso.conv{i}"), c_in, c_out, kernel, stride, 0)?;
                    convs.push(if i == 0 { first_layer(layer) } else { layer });
                    c_in = c_out;
                }
                (ConvLayers::Plain(convs), c_in)
            }
        };
        let (fc, named) = Dense::new("torso.fc", channels * height * width, conv_torso_features(torso), gain, rng, device)?;
        params.extend(named);
        Ok(Self { frame, layers, fc })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let FrameShape { channels, height, width } = self.frame;
        let x = x.reshape((x.dim(0)?, channels, height, width))?;
        let x = match &self.layers {
            ConvLayers::Plain(convs) => convs.iter().try_fold(x, |x, conv| conv.forward_relu(&x))?,
            ConvLayers::Deep(sections) => {
                let mut x = x;
                for section in sections {
                    x = pool::max_pool2d(&section.conv.forward(&x)?, 3, 2, 1)?;
                    for block in &section.blocks {
                        x = block.forward(&x)?;
                    }
                }
                relu(&x)?
            }
        };
        relu(&self.fc.forward(&x.flatten_from(1)?)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;
    use rand::SeedableRng;

    use super::*;
    use crate::EnvSpec;
    use crate::network::{ActorCritic, Core, NetworkConfig, WeightInit};

    const ATARI: FrameShape = FrameShape {
        channels: 4,
        height: 84,
        width: 84,
    };
    /// Catch's frame: 10×5 cells of 4×4 pixels.
    const CATCH: FrameShape = FrameShape {
        channels: 1,
        height: 40,
        width: 20,
    };

    fn config(torso: Torso) -> NetworkConfig {
        NetworkConfig {
            torso,
            ..NetworkConfig::default()
        }
    }

    /// `n` frames of pseudo-random intensities 0..=255.
    fn frames(frame: FrameShape, n: usize, seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n * frame.size()).map(|_| f32::from(rng.random::<u8>())).collect();
        Tensor::from_vec(v, (n, frame.size()), &Device::Cpu).unwrap()
    }

    fn conv_weights(net: &ActorCritic) -> Vec<&str> {
        net.params()
            .iter()
            .filter(|(_, v)| v.dims().len() == 4)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    #[test]
    fn cnn_torsos_shape_their_outputs_on_atari_and_catch_frames() {
        for torso in [Torso::ShallowCnn, Torso::DeepResnet, Torso::SmallCnn, Torso::NatureCnn] {
            for (frame, actions) in [(ATARI, 6), (CATCH, 3)] {
                if torso == Torso::NatureCnn && frame == CATCH {
                    continue; // narrower than its 36 pixels
                }
                let net = ActorCritic::new(EnvSpec::frames(frame, actions), &config(torso), 0, &Device::Cpu).unwrap();
                let out = net.forward(&frames(frame, 2, 1)).unwrap();
                assert_eq!(out.logits.dims(), &[2, actions], "{torso:?} on {frame:?}");
                assert_eq!(out.values.dims(), &[2], "{torso:?} on {frame:?}");
                assert!(
                    out.logits
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .all(|v| v.is_finite())
                );
            }
        }
        // The fully connected layer reads what the convolutions leave:
        // 32×9×9 after the shallow torso on 84×84, 32×11×11 after the deep one.
        let fc_inputs = |torso| {
            let net = ActorCritic::new(EnvSpec::frames(ATARI, 6), &config(torso), 0, &Device::Cpu).unwrap();
            let (_, fc) = net.params().iter().find(|(n, _)| n == "torso.fc.weight").unwrap();
            fc.dims().to_vec()
        };
        assert_eq!(fc_inputs(Torso::ShallowCnn), vec![256, 32 * 9 * 9]);
        assert_eq!(fc_inputs(Torso::DeepResnet), vec![256, 32 * 11 * 11]);
        assert_eq!(fc_inputs(Torso::SmallCnn), vec![128, 16 * 82 * 82]);
        assert_eq!(fc_inputs(Torso::NatureCnn), vec![512, 64 * 7 * 7]);
    }

    /// MinAtar's network on its 10×10 grids: one convolution of 16 3×3
    /// filters leaves 8×8, read by a layer of 128 shared by both heads.
    #[test]
    fn the_small_torso_is_minatars_network() {
        let grid = FrameShape {
            channels: 4,
            height: 10,
            width: 10,
        };
        let net = ActorCritic::new(EnvSpec::frames(grid, 3), &config(Torso::SmallCnn), 0, &Device::Cpu).unwrap();
        let shapes: Vec<(&str, Vec<usize>)> = net.params().iter().map(|(n, v)| (n.as_str(), v.dims().to_vec())).collect();
        assert_eq!(
            shapes,
            vec![
                ("torso.conv0.weight", vec![16, 4, 3, 3]),
                ("torso.conv0.bias", vec![16]),
                ("torso.fc.weight", vec![128, 16 * 8 * 8]),
                ("torso.fc.bias", vec![128]),
                ("policy.weight", vec![3, 128]),
                ("policy.bias", vec![3]),
                ("value.weight", vec![1, 128]),
                ("value.bias", vec![1]),
            ]
        );
        let out = net.forward(&frames(grid, 5, 2)).unwrap();
        assert_eq!((out.logits.dims(), out.values.dims()), (&[5, 3][..], &[5][..]));
    }

    #[test]
    fn the_deep_torso_has_fifteen_conv_layers_the_shallow_two_and_dqns_three() {
        let deep = ActorCritic::new(EnvSpec::frames(ATARI, 6), &config(Torso::DeepResnet), 0, &Device::Cpu).unwrap();
        let convs = conv_weights(&deep);
        assert_eq!(convs.len(), 15, "{convs:?}");
        let channels: Vec<usize> = deep
            .params()
            .iter()
            .filter(|(_, v)| v.dims().len() == 4)
            .map(|(_, v)| v.dims()[0])
            .collect();
        assert_eq!(channels, [[16; 5], [32; 5], [32; 5]].concat());
        let shallow = ActorCritic::new(EnvSpec::frames(ATARI, 6), &config(Torso::ShallowCnn), 0, &Device::Cpu).unwrap();
        let shapes: Vec<Vec<usize>> = shallow
            .params()
            .iter()
            .filter(|(_, v)| v.dims().len() == 4)
            .map(|(_, v)| v.dims().to_vec())
            .collect();
        assert_eq!(shapes, vec![vec![16, 4, 8, 8], vec![32, 16, 4, 4]]);
        let nature = ActorCritic::new(EnvSpec::frames(ATARI, 6), &config(Torso::NatureCnn), 0, &Device::Cpu).unwrap();
        let shapes: Vec<(&str, Vec<usize>)> = nature.params().iter().map(|(n, v)| (n.as_str(), v.dims().to_vec())).collect();
        assert_eq!(
            shapes,
            vec![
                ("torso.conv0.weight", vec![32, 4, 8, 8]),
                ("torso.conv0.bias", vec![32]),
                ("torso.conv1.weight", vec![64, 32, 4, 4]),
                ("torso.conv1.bias", vec![64]),
                ("torso.conv2.weight", vec![64, 64, 3, 3]),
                ("torso.conv2.bias", vec![64]),
                ("torso.fc.weight", vec![512, 64 * 7 * 7]),
                ("torso.fc.bias", vec![512]),
                ("policy.weight", vec![6, 512]),
                ("policy.bias", vec![6]),
                ("value.weight", vec![1, 512]),
                ("value.bias", vec![1]),
            ]
        );
        // One torso for both heads: no value tower.
        assert!(!deep.params().iter().any(|(n, _)| n.contains("tower")));
    }

    /// A loss on both heads reaches every parameter, feed-forward and
    /// through an LSTM core.
    #[test]
    fn gradients_reach_every_cnn_parameter() {
        for (torso, frame) in [
            (Torso::ShallowCnn, CATCH),
            (Torso::DeepResnet, CATCH),
            (Torso::SmallCnn, CATCH),
            (Torso::NatureCnn, ATARI),
        ] {
            for core in [Core::None, Core::Lstm] {
                let config = NetworkConfig {
                    torso,
                    core,
                    lstm_size: 16,
                    ..NetworkConfig::default()
                };
                let net = ActorCritic::new(EnvSpec::frames(frame, 3), &config, 2, &Device::Cpu).unwrap();
                let (steps, b) = (2, 3);
                let is_first = Tensor::zeros(steps * b, DType::F32, &Device::Cpu).unwrap();
                let (out, _) = net
                    .unroll(&frames(frame, steps * b, 3), &is_first, steps, &net.initial_state(b).unwrap())
                    .unwrap();
                let pick = Tensor::new(&[1f32, -2.0, 0.5], &Device::Cpu).unwrap();
                let policy_loss = out.logits.broadcast_mul(&pick).unwrap().sum_all().unwrap();
                let value_loss = out.values.sqr().unwrap().mean_all().unwrap();
                let grads = (policy_loss + value_loss).unwrap().backward().unwrap();
                for (name, var) in net.params() {
                    let grad = grads
                        .get(var.as_tensor())
                        .unwrap_or_else(|| panic!("{torso:?}/{core:?}: no gradient for {name}"));
                    let norm = grad.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(norm > 0.0 && norm.is_finite(), "{torso:?}/{core:?}: gradient of {name} is {norm}");
                }
            }
        }
    }

    /// A convolution that folds a scale into its weight equals the plain one
    /// on the scaled input, values and weight gradients.
    #[test]
    fn a_scaled_convolution_equals_the_convolution_of_the_scaled_input() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (mut scaled, _) = Conv2d::new("c", 2, 3, 3, 2, 1, 1.0, &mut rng, &Device::Cpu).unwrap();
        scaled.input_scale = FRAME_SCALE;
        scaled.input_grad = false;
        let plain = Conv2d {
            weight: scaled.weight.clone(),
            bias: scaled.bias.clone(),
            input_scale: 1.0,
            ..scaled
        };
        let x = frames(
            FrameShape {
                channels: 2,
                height: 7,
                width: 6,
            },
            3,
            9,
        )
        .reshape((3, 2, 7, 6))
        .unwrap();
        let ys = scaled.forward(&x).unwrap();
        let yp = plain.forward(&x.affine(FRAME_SCALE, 0.0).unwrap()).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let near = |a: Vec<f32>, b: Vec<f32>| {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        };
        near(flat(&ys), flat(&yp));
        let gs = ys.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gp = yp.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let w = scaled.weight.as_tensor();
        near(flat(gs.get(w).unwrap()), flat(gp.get(w).unwrap()));
    }

    /// He's gain keeps the shallow torso's features at about the scale of
    /// its frames; PyTorch's shrinks them through each of its three ReLU
    /// layers (by √6 each, about 15 in all).
    #[test]
    fn he_init_keeps_the_frames_scale_through_the_torso() {
        let x = frames(ATARI, 16, 3);
        let rms = |t: &Tensor| t.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        let input = rms(&x.affine(FRAME_SCALE, 0.0).unwrap());
        let features = |init: WeightInit| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let torso = ConvTorso::new(Torso::ShallowCnn, ATARI, init.gain(), &mut rng, &Device::Cpu, &mut Vec::new()).unwrap();
            rms(&torso.forward(&x).unwrap())
        };
        let (he, torch) = (features(WeightInit::He), features(WeightInit::Torch));
        assert!((0.4..2.5).contains(&(he / input)), "He: features {he}, frames {input}");
        assert!((8.0..30.0).contains(&(he / torch)), "He {he} against PyTorch's {torch}");
    }

    #[test]
    fn a_cnn_torso_refuses_vector_observations_and_too_small_frames() {
        let err = config(Torso::ShallowCnn).check_spec(&EnvSpec::vector(4, 2)).unwrap_err();
        assert!(err.contains("network.torso") && err.contains("shallow_cnn"), "{err}");
        assert!(ActorCritic::new(EnvSpec::vector(4, 2), &config(Torso::DeepResnet), 0, &Device::Cpu).is_err());
        let tiny = FrameShape {
            channels: 1,
            height: 16,
            width: 40,
        };
        let err = config(Torso::ShallowCnn).check_spec(&EnvSpec::frames(tiny, 2)).unwrap_err();
        assert!(err.contains("16×40"), "{err}");
        assert!(config(Torso::DeepResnet).check_spec(&EnvSpec::frames(tiny, 2)).is_ok());
        assert!(config(Torso::SmallCnn).check_spec(&EnvSpec::frames(tiny, 2)).is_ok());
        let sliver = FrameShape {
            channels: 1,
            height: 2,
            width: 10,
        };
        let err = config(Torso::SmallCnn).check_spec(&EnvSpec::frames(sliver, 2)).unwrap_err();
        assert!(err.contains("small_cnn") && err.contains("2×10"), "{err}");
        assert!(NetworkConfig::default().check_spec(&EnvSpec::frames(CATCH, 3)).is_ok());
        assert!(config(Torso::ShallowCnn).check_spec(&EnvSpec::frames(CATCH, 3)).is_ok());
        let least: Vec<usize> = [Torso::Mlp, Torso::ShallowCnn, Torso::DeepResnet, Torso::SmallCnn, Torso::NatureCnn]
            .into_iter()
            .map(min_frame_side)
            .collect();
        assert_eq!(least, [1, 20, 1, 3, 36]);
    }
}
