//! `fleet bench env`: the configured environment's vector stepped with
//! uniformly random actions, as the actor steps it but without a policy:
//! agent steps/s and env frames/s (a step is `env.atari.frame_skip` frames
//! under Atari preprocessing). For a bridged environment this is the rate
//! through the bridge; `bench/env_bridge.sh` sets it beside the same vector
//! stepped in Python alone, which gives the bridge's overhead.

use std::time::{Duration, Instant};

use anyhow::Result;
use fleet_actor::env::{Preprocess, VecEnv};
use fleet_trajectory::{ActionSpec, Actions};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// One measurement of a vector of environments.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnvRate {
    pub env: String,
    pub num_envs: usize,
    pub steps: u64,
    pub seconds: f64,
    pub steps_per_second: f64,
    pub frames_per_second: f64,
}

/// Steps the configured vector for `seconds` (after one second of warm-up)
/// and prints its rate, as a table row or one JSON line. Blocks on the
/// current runtime, so call it from a blocking thread.
pub fn env(config: &Config, runtime: tokio::runtime::Handle, seconds: f64, json: bool) -> Result<EnvRate> {
    let num_envs = config.actor.num_envs;
    let mut envs = config.env.make_vec(
        num_envs,
        config.seed,
        config.replay.max_message_bytes,
        runtime,
        CancellationToken::new(),
    )?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
    let mut actions = Actions::zeros(envs.action_spec(), num_envs);
    let mut step = |envs: &mut VecEnv| -> Result<u64> {
        match (&mut actions, envs.action_spec()) {
            (Actions::Discrete(indices), ActionSpec::Discrete { num_actions }) => {
                indices.iter_mut().for_each(|a| *a = rng.random_range(0..num_actions));
            }
            (Actions::Continuous { values, .. }, _) => values.iter_mut().for_each(|v| *v = rng.random_range(-1.0..1.0)),
            _ => unreachable!("the buffer was made for the spec"),
        }
        Ok(envs.step(&actions)?.real_steps as u64)
    };
    let warm_up = Instant::now();
    while warm_up.elapsed() < Duration::from_secs(1) {
        step(&mut envs)?;
    }
    let start = Instant::now();
    let mut steps = 0;
    while start.elapsed().as_secs_f64() < seconds {
        steps += step(&mut envs)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let frame_skip = match config.env.preprocess {
        Preprocess::Atari => f64::from(config.env.atari.frame_skip),
        Preprocess::None => 1.0,
    };
    let rate = EnvRate {
        env: config.env.name.clone(),
        num_envs,
        steps,
        seconds: elapsed,
        steps_per_second: steps as f64 / elapsed,
        frames_per_second: steps as f64 * frame_skip / elapsed,
    };
    if json {
        println!("{}", serde_json::to_string(&rate)?);
    } else {
        println!("| env | num_envs | agent steps/s | env frames/s |");
        println!("| --- | ---: | ---: | ---: |");
        println!(
            "| {} | {} | {:.0} | {:.0} |",
            rate.env, rate.num_envs, rate.steps_per_second, rate.frames_per_second
        );
    }
    Ok(rate)
}
