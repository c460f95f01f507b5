//! `fleet bench learner`: learner updates per second on synthetic batches,
//! so that neither replay nor the network is measured — for the CartPole
//! MLP, the IMPALA shallow CNN on 84×84×4 u8 frames, that CNN with an
//! LSTM core and a burn-in, IMPALA's deep ResNet torso, and DQN's network
//! (the torso of `config/atari.toml`). Each update is what the learner does
//! per batch: host batch to device tensors, forward, V-trace, loss,
//! backward, gradient clipping, Adam step. `bench/learner_torch.py` does
//! the same in PyTorch.

use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::Device;
use fleet_agent::{Activation, Core, EnvSpec, FrameShape, NetworkConfig, Torso};
use fleet_learner::batch::HostBatch;
use fleet_learner::{Learner, LearnerConfig};
use rand::{Rng, SeedableRng};

/// Sequences per batch and learning steps per sequence.
const BATCH: usize = 32;
const UNROLL: usize = 20;
/// Burn-in steps of the recurrent workload.
const BURN_IN: usize = 20;
/// Width of the recurrent workload's LSTM.
const LSTM: usize = 256;
/// Actions of the image workloads (a typical Atari action set).
const IMAGE_ACTIONS: usize = 6;

/// One model and batch shape to measure.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    spec: EnvSpec,
    network: NetworkConfig,
    burn_in: usize,
}

/// The workloads, by the names the PyTorch script uses.
pub fn workloads() -> Vec<Workload> {
    let frames = EnvSpec::frames(
        FrameShape {
            channels: 4,
            height: 84,
            width: 84,
        },
        IMAGE_ACTIONS,
    );
    let cnn = NetworkConfig {
        torso: Torso::ShallowCnn,
        ..NetworkConfig::default()
    };
    vec![
        Workload {
            name: "mlp",
            spec: EnvSpec::vector(4, 2),
            network: NetworkConfig {
                hidden: vec![64, 64],
                activation: Activation::Tanh,
                ..NetworkConfig::default()
            },
            burn_in: 0,
        },
        Workload {
            name: "shallow_cnn",
            spec: frames,
            network: cnn.clone(),
            burn_in: 0,
        },
        Workload {
            name: "shallow_cnn_lstm",
            spec: frames,
            network: NetworkConfig {
                core: Core::Lstm,
                lstm_size: LSTM,
                ..cnn.clone()
            },
            burn_in: BURN_IN,
        },
        Workload {
            name: "deep_resnet",
            spec: frames,
            network: NetworkConfig {
                torso: Torso::DeepResnet,
                ..cnn.clone()
            },
            burn_in: 0,
        },
        Workload {
            name: "nature_cnn",
            spec: frames,
            network: NetworkConfig {
                torso: Torso::NatureCnn,
                ..cnn
            },
            burn_in: 0,
        },
    ]
}

/// What one workload measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub updates_per_s: f64,
    pub frames_per_s: f64,
    pub ms_per_update_p50: f64,
    pub updates: usize,
}

/// Runs `workload` for about `seconds` after a short warm-up.
pub fn measure(workload: &Workload, seconds: f64, seed: u64) -> Result<Measured> {
    let config = LearnerConfig {
        batch_size: BATCH,
        learning_rate: 5e-4,
        max_grad_norm: 40.0,
        burn_in: workload.burn_in,
        ..LearnerConfig::default()
    };
    let mut learner = Learner::new(workload.spec, &workload.network, config, seed, Device::Cpu)?;
    let mut batch = HostBatch::synthetic(workload.spec, workload.burn_in + UNROLL + 1, BATCH, seed);
    if let Some(state) = workload.network.state_spec() {
        // Stored (h, c) per sequence, as actors send them.
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        batch.state = Some(state);
        batch.initial_states = (0..BATCH * state.width()).map(|_| rng.random_range(-0.5..0.5)).collect();
    }
    let frames = batch.learning_frames(workload.burn_in);
    for _ in 0..2 {
        learner.update(&batch)?;
    }
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut times = Vec::new();
    while started.elapsed() < budget || times.len() < 3 {
        let at = Instant::now();
        learner.update(&batch)?;
        times.push(at.elapsed().as_secs_f64());
    }
    let elapsed = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let updates_per_s = times.len() as f64 / elapsed;
    Ok(Measured {
        updates_per_s,
        frames_per_s: updates_per_s * frames as f64,
        ms_per_update_p50: times[times.len() / 2] * 1e3,
        updates: times.len(),
    })
}

/// Prints a table, or one JSON line per workload with `json`.
pub fn learner(seconds: f64, only: &[String], json: bool) -> Result<()> {
    let chosen: Vec<Workload> = workloads()
        .into_iter()
        .filter(|w| only.is_empty() || only.iter().any(|n| n == w.name))
        .collect();
    if chosen.is_empty() {
        let known: Vec<&str> = workloads().iter().map(|w| w.name).collect();
        anyhow::bail!("no workload named {only:?}; known: {}", known.join(", "));
    }
    if !json {
        println!(
            "batch {BATCH} × unroll {UNROLL}; CPU, {} compute threads",
            candle_core::utils::get_num_threads()
        );
        println!("| workload | updates/s | frames/s | ms/update p50 | updates |");
        println!("| --- | ---: | ---: | ---: | ---: |");
    }
    for workload in &chosen {
        let m = measure(workload, seconds, 0)?;
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "workload": workload.name,
                    "updates_per_s": m.updates_per_s,
                    "frames_per_s": m.frames_per_s,
                    "ms_per_update_p50": m.ms_per_update_p50,
                })
            );
        } else {
            println!(
                "| {} | {:.2} | {:.0} | {:.1} | {} |",
                workload.name, m.updates_per_s, m.frames_per_s, m.ms_per_update_p50, m.updates
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mlp_workload_runs_and_counts_learning_frames() {
        let workload = workloads().into_iter().find(|w| w.name == "mlp").unwrap();
        let m = measure(&workload, 0.0, 1).unwrap();
        assert!(m.updates >= 3 && m.updates_per_s > 0.0, "{m:?}");
        // Frames per update are the learning steps that are real decisions.
        let per_update = m.frames_per_s / m.updates_per_s;
        assert!(
            per_update > 0.8 * (BATCH * UNROLL) as f64 && per_update <= (BATCH * UNROLL) as f64,
            "{m:?}"
        );
    }
}
