//! The per-item cost of an insert into one table and into two, in process
//! (no gRPC): the lock, the room check, the store and the wake-ups, with the
//! item's steps already assembled, as the Insert stream hands them over.
//! The tables evict (uniform sampler, FIFO remover), so an insert never waits.
//!
//! `cargo bench -p fleet-replay --bench table_insert`

// A bench that cannot set up has nothing to measure: it may unwrap.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_proto::pb;
use fleet_replay::config::{Compression, SamplerKind, TableConfig};
use fleet_replay::table::Table;
use tokio_util::sync::CancellationToken;

/// A CartPole sequence of 21 steps: observations [21, 4] f32, two actions.
fn sequence(steps: usize) -> pb::Sequence {
    let observations: Vec<f32> = (0..steps * 4).map(|i| i as f32 * 0.01).collect();
    let actions: Vec<i64> = (0..steps).map(|t| (t % 2) as i64).collect();
    let mut is_first = vec![false; steps];
    is_first[0] = true;
    pb::Sequence {
        observations: Some(pb::Tensor::from_f32(&[steps, 4], &observations)),
        actions: Some(pb::Tensor::from_i64(&[steps], &actions)),
        rewards: vec![1.0; steps],
        is_first,
        terminated: vec![false; steps],
        truncated: vec![false; steps],
        behaviour_logits: Some(pb::Tensor::from_f32(&[steps, 2], &vec![0.0; steps * 2])),
        behaviour_versions: vec![1; steps],
        initial_state: None,
        actor_id: 1,
        priority: 0.0,
        run_id: 0,
    }
}

fn evicting(name: &str) -> TableConfig {
    TableConfig {
        name: name.into(),
        max_size: 10_000,
        sampler: SamplerKind::Uniform,
        ..TableConfig::default()
    }
}

fn table_insert(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let shutdown = CancellationToken::new();
    let first = Table::new(evicting("first"), shutdown.clone());
    let second = Table::sharing(evicting("second"), shutdown, Arc::clone(first.store()));
    let steps = first.store().item(sequence(21), Compression::NONE).unwrap();
    let mut group = c.benchmark_group("table_insert");
    group.bench_function("one_table", |b| {
        b.iter(|| {
            let keys = runtime.block_on(Table::insert_into_all(&[&first], Arc::clone(&steps), 1.0, None));
            black_box(keys.unwrap())
        })
    });
    group.bench_function("two_tables", |b| {
        b.iter(|| {
            let keys = runtime.block_on(Table::insert_into_all(&[&first, &second], Arc::clone(&steps), 1.0, None));
            black_box(keys.unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, table_insert);
criterion_main!(benches);
