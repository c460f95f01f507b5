//! Forward and backward time of `fleet_kernels::conv::conv2d` against candle's
//! `Tensor::conv2d` on the IMPALA shallow CNN's layers, and one of the deep
//! ResNet's 3×3 convs, at the learner's batch (32 × 21 images). Prints the
//! median of `CONV_BENCH_REPS` runs (default 5) per phase; set
//! `RAYON_NUM_THREADS` to pin the thread count, `CONV_BENCH_ONLY` to a
//! substring of the variants' labels to run only those and
//! `CONV_BENCH_LAYER` to a substring of the layers' names.
//!
//! `cargo bench -p fleet-kernels --bench conv`

use std::time::{Duration, Instant};

use candle_core::{Device, Result, Tensor, Var};
use fleet_kernels::conv::conv2d;

struct Layer {
    name: &'static str,
    input: [usize; 4],
    weight: [usize; 4],
    stride: usize,
    padding: usize,
}

const LAYERS: &[Layer] = &[
    layer("conv1 4→16 8×8/4 on 84×84", [672, 4, 84, 84], [16, 4, 8, 8], 4, 0),
    layer("conv2 16→32 4×4/2 on 20×20", [672, 16, 20, 20], [32, 16, 4, 4], 2, 0),
    layer("deep 16→32 3×3/1 pad 1 on 42×42", [672, 16, 42, 42], [32, 16, 3, 3], 1, 1),
    layer("nature1 4→32 8×8/4 on 84×84", [672, 4, 84, 84], [32, 4, 8, 8], 4, 0),
    layer("nature2 32→64 4×4/2 on 20×20", [672, 32, 20, 20], [64, 32, 4, 4], 2, 0),
    layer("nature3 64→64 3×3/1 on 9×9", [672, 64, 9, 9], [64, 64, 3, 3], 1, 0),
];

const fn layer(name: &'static str, input: [usize; 4], weight: [usize; 4], stride: usize, padding: usize) -> Layer {
    Layer {
        name,
        input,
        weight,
        stride,
        padding,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Candle,
    Ours {
        input_grad: bool,
    },
    /// No conv: the output is a variable itself, to time the loss's share
    /// of the backward (the same for every conv).
    LossOnly,
}

/// The conv's forward, then the backward of `(conv(x, w) * r).sum()`;
/// returns both times.
fn step(layer: &Layer, imp: Impl, x: &Var, w: &Var, y0: &Var, r: &Tensor) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let y = match imp {
        Impl::Candle => x.conv2d(w, layer.padding, layer.stride, 1, 1)?,
        Impl::Ours { input_grad } => conv2d(x, w, layer.stride, layer.padding, input_grad)?,
        Impl::LossOnly => y0.as_tensor().clone(),
    };
    let fwd = t0.elapsed();
    let loss = (y * r)?.sum_all()?;
    let t1 = Instant::now();
    let grads = loss.backward()?;
    assert!(imp == Impl::LossOnly || grads.get(w).is_some());
    Ok((fwd, t1.elapsed()))
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let reps: usize = std::env::var("CONV_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let only = std::env::var("CONV_BENCH_ONLY").unwrap_or_default();
    let only_layer = std::env::var("CONV_BENCH_LAYER").unwrap_or_default();
    println!("rayon threads: {}, median of {reps}", rayon::current_num_threads());
    let dev = Device::Cpu;
    for layer in LAYERS.iter().filter(|l| l.name.contains(only_layer.as_str())) {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, &layer.input, &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, &layer.weight, &dev)?)?;
        let out = conv2d(&x, &w, layer.stride, layer.padding, true)?;
        let r = Tensor::randn(0f32, 1.0, out.dims(), &dev)?;
        let y0 = Var::from_tensor(&out)?;
        println!("{}", layer.name);
        for (label, imp) in [
            ("candle", Impl::Candle),
            ("fleet, input grad", Impl::Ours { input_grad: true }),
            ("fleet, no input grad", Impl::Ours { input_grad: false }),
            ("loss only", Impl::LossOnly),
        ] {
            if !label.contains(only.as_str()) {
                continue;
            }
            step(layer, imp, &x, &w, &y0, &r)?; // warm-up
            let (mut fwd, mut bwd, mut total) = (vec![], vec![], vec![]);
            for _ in 0..reps {
                let (f, b) = step(layer, imp, &x, &w, &y0, &r)?;
                fwd.push(f);
                bwd.push(b);
                total.push(f + b);
            }
            println!(
                "  {label:<22} forward {:8.1} ms  backward {:8.1} ms  total {:8.1} ms",
                median(fwd),
                median(bwd),
                median(total)
            );
        }
    }
    Ok(())
}
