//! The sum tree behind prioritised sampling at replay-service scale: draw,
//! priority update, and insert/remove churn on a tree of 10^6 keys.
//!
//! `cargo bench -p fleet-replay --bench sum_tree`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fleet_replay::sum_tree::KeyedSumTree;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const N: u64 = 1_000_000;

fn full_tree(rng: &mut StdRng) -> KeyedSumTree {
    let mut tree = KeyedSumTree::with_capacity(N as usize);
    for key in 0..N {
        tree.set(key, rng.random_range(0.01..10.0));
    }
    tree
}

fn sum_tree(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut tree = full_tree(&mut rng);
    let mut group = c.benchmark_group("sum_tree_1e6");
    group.bench_function("sample", |b| {
        b.iter(|| {
            let mass = rng.random::<f64>() * tree.total();
            black_box(tree.find(mass))
        })
    });
    group.bench_function("update", |b| {
        b.iter(|| {
            let key = rng.random_range(0..N);
            tree.set(key, rng.random_range(0.01..10.0));
        })
    });
    // A full table's steady state: the oldest key leaves, a new one enters.
    let mut oldest = 0;
    let mut next = N;
    group.bench_function("insert_and_remove", |b| {
        b.iter(|| {
            tree.remove(oldest);
            tree.set(next, rng.random_range(0.01..10.0));
            oldest += 1;
            next += 1;
        })
    });
    group.bench_function("build_1e6", |b| {
        b.iter_batched(|| StdRng::seed_from_u64(1), |mut rng| full_tree(&mut rng), BatchSize::LargeInput)
    });
    group.finish();
}

criterion_group!(benches, sum_tree);
criterion_main!(benches);
