//! `fleet bench compression`: what each replay codec does to one item's
//! steps, for CartPole vectors and 84×84 u8 frames: stored bytes, ratio, and
//! the cost of storing (compressing) and reading back (decompressing and
//! assembling, as every sample does). Single-threaded, in process.

use std::time::Instant;

use anyhow::Result;
use fleet_actor::env;
use fleet_proto::pb::{self, Tensor};
use fleet_replay::chunk::ChunkStore;
use fleet_replay::{Codec, Compression};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Steps per item: R2D2's 80 learning steps plus the bootstrap step.
const STEPS: usize = 81;

/// The codecs measured, with zstd at its fastest and its default levels.
const CODECS: [(&str, Compression); 4] = [
    ("none", Compression::NONE),
    (
        "lz4",
        Compression {
            codec: Codec::Lz4,
            level: 0,
        },
    ),
    (
        "zstd-1",
        Compression {
            codec: Codec::Zstd,
            level: 1,
        },
    ),
    (
        "zstd-3",
        Compression {
            codec: Codec::Zstd,
            level: 3,
        },
    ),
];

/// Prints the table; `reps` items per data kind and codec.
pub fn compression(reps: usize) -> Result<()> {
    let kinds: [(&str, pb::Sequence); 3] = [
        ("CartPole-v1 [81, 4] f32", cartpole(7)?),
        ("84×84 u8 frames, moving objects", frames(7, false)),
        ("84×84 u8 frames, random bytes", frames(7, true)),
    ];
    println!("| steps | codec | stored bytes | ratio | store µs | read µs | store MB/s | read MB/s |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, sequence) in &kinds {
        let plain = prost::Message::encoded_len(sequence) as f64;
        for (codec, compression) in CODECS {
            let store = ChunkStore::new();
            let started = Instant::now();
            let mut items = Vec::with_capacity(reps);
            for _ in 0..reps {
                items.push(store.item(sequence.clone(), compression)?);
            }
            let store_secs = started.elapsed().as_secs_f64() / reps as f64;
            let started = Instant::now();
            for item in &items {
                let read = item.to_sequence()?;
                std::hint::black_box(read);
            }
            let read_secs = started.elapsed().as_secs_f64() / reps as f64;
            assert_eq!(items[0].to_sequence()?, *sequence, "{codec} must give the steps back exactly");
            let stored = store.totals().1 as f64 / reps as f64;
            println!(
                "| {name} | {codec} | {stored:.0} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} |",
                plain / stored,
                store_secs * 1e6,
                read_secs * 1e6,
                plain / store_secs / 1e6,
                plain / read_secs / 1e6,
            );
        }
    }
    println!("\n{STEPS} steps per item, {reps} items per row; ratio = uncompressed / stored; MB/s of uncompressed steps.");
    Ok(())
}

/// `STEPS` steps of CartPole-v1 under a random policy, as an actor records them.
fn cartpole(seed: u64) -> Result<pb::Sequence> {
    let mut env = env::make("CartPole-v1", seed)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut observation = vec![0f32; env.observation_size()];
    env.reset(fleet_trajectory::ObservationsMut::F32(&mut observation));
    let mut sequence = empty(STEPS);
    let (mut observations, mut actions, mut logits) = (Vec::new(), Vec::new(), Vec::new());
    let mut is_first = true;
    for _ in 0..STEPS {
        let action = rng.random_range(0..2);
        observations.extend_from_slice(&observation);
        actions.push(action as i64);
        let left: f32 = rng.random_range(-1.0..1.0);
        logits.extend_from_slice(&[left, -left]);
        let outcome = env.step(
            fleet_trajectory::Action::Discrete(action),
            fleet_trajectory::ObservationsMut::F32(&mut observation),
        );
        sequence.rewards.push(outcome.reward);
        sequence.is_first.push(is_first);
        sequence.terminated.push(false);
        sequence.truncated.push(false);
        is_first = false;
        if outcome.is_last() {
            env.reset(fleet_trajectory::ObservationsMut::F32(&mut observation));
            is_first = true;
        }
    }
    sequence.observations = Some(Tensor::from_f32(&[STEPS, 4], &observations));
    sequence.actions = Some(Tensor::from_i64(&[STEPS], &actions));
    sequence.behaviour_logits = Some(Tensor::from_f32(&[STEPS, 2], &logits));
    Ok(sequence)
}

/// `STEPS` 84×84 frames: a dark field with a paddle, a ball and a wall that
/// move from frame to frame (the kind of picture Atari games show), or
/// random bytes, which nothing can compress.
fn frames(seed: u64, random: bool) -> pb::Sequence {
    const SIDE: usize = 84;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; STEPS * SIDE * SIDE];
    for (t, frame) in data.chunks_exact_mut(SIDE * SIDE).enumerate() {
        if random {
            rng.fill(frame);
            continue;
        }
        let mut paint = |x0: usize, y0: usize, w: usize, h: usize, value: u8| {
            for y in y0..(y0 + h).min(SIDE) {
                for x in x0..(x0 + w).min(SIDE) {
                    frame[y * SIDE + x] = value;
                }
            }
        };
        paint(0, 0, SIDE, SIDE, 17);
        paint(0, 0, SIDE, 4, 142);
        paint(4, 10 + (t * 3) % 60, 3, 14, 200);
        paint((t * 5) % 80, (t * 7) % 80, 2, 2, 236);
    }
    let mut sequence = empty(STEPS);
    sequence.observations = Some(Tensor::from_u8(&[STEPS, 1, SIDE, SIDE], data));
    sequence.actions = Some(Tensor::from_i64(&[STEPS], &(0..STEPS).map(|t| (t % 6) as i64).collect::<Vec<_>>()));
    sequence.behaviour_logits = Some(Tensor::from_f32(
        &[STEPS, 6],
        &(0..STEPS * 6).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
    ));
    sequence.rewards = (0..STEPS).map(|t| if t % 20 == 19 { 1.0 } else { 0.0 }).collect();
    sequence.is_first = (0..STEPS).map(|t| t == 0).collect();
    sequence.terminated = vec![false; STEPS];
    sequence.truncated = vec![false; STEPS];
    sequence
}

fn empty(steps: usize) -> pb::Sequence {
    pb::Sequence {
        behaviour_versions: vec![3; steps],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_items_are_valid_replay_items() {
        for sequence in [cartpole(1).unwrap(), frames(1, false), frames(1, true)] {
            fleet_replay::validate_sequence(&sequence).unwrap();
            assert_eq!(sequence.num_steps(), STEPS);
        }
    }
}
