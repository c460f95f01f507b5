//! Samplers: the rule that decides which item of a table a draw returns —
//! oldest first, newest first, uniform, prioritised through a
//! [`KeyedSumTree`], or highest/lowest priority first. Each keeps its own
//! index of the table's keys (the table tells it about every key that
//! enters, changes priority or leaves) and, if it draws at random, its own
//! seeded generator. A table's remover, which picks the item to evict, is a
//! sampler too.
//!
//! Plain structs: no locking, waiting or gRPC; [`crate::table`] holds one
//! sampler per table under the table's lock and decides when to draw.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{SamplerKind, TableConfig};
use crate::sum_tree::KeyedSumTree;

/// One sampler decision: the key, and the probability that this draw picked it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub key: u64,
    pub probability: f64,
}

/// Chooses which item a sample returns.
pub trait Sampler: Send + fmt::Debug {
    /// Name reported by `Info`; the same as the config's [`SamplerKind`].
    fn name(&self) -> &'static str;
    /// A new key. `priority` is finite and >= 0.
    fn insert(&mut self, key: u64, priority: f64);
    /// A new priority (finite, >= 0) for a key the sampler holds.
    fn update(&mut self, key: u64, priority: f64);
    fn remove(&mut self, key: u64);
    /// One draw, or `None` when the sampler holds no keys.
    fn sample(&mut self) -> Option<Choice>;
    /// Whether samples are biased and need importance weights
    /// `(N·P(i))^-β / max_j w_j`; unbiased samplers report weight 1.
    fn is_prioritised(&self) -> bool {
        false
    }
}

/// The sampler `config` asks for. `seed` fixes the random draws of the
/// samplers that make any, so a table can be replayed exactly in tests.
pub fn sampler_for(kind: SamplerKind, config: &TableConfig, seed: u64) -> Box<dyn Sampler> {
    match kind {
        SamplerKind::Fifo => Box::new(OrderedSampler::fifo()),
        SamplerKind::Lifo => Box::new(OrderedSampler::lifo()),
        SamplerKind::Uniform => Box::new(UniformSampler::new(seed)),
        SamplerKind::Prioritized => Box::new(PrioritizedSampler::new(config.priority_exponent, config.max_size, seed)),
        SamplerKind::MaxHeap => Box::new(HeapSampler::max_first()),
        SamplerKind::MinHeap => Box::new(HeapSampler::min_first()),
    }
}

/// The item of highest (max-heap) or lowest (min-heap) priority; among
/// equal priorities the oldest. O(log n) per operation.
///
/// Deterministic, so, like [`OrderedSampler`], it reports `1 / size` as the
/// probability (unit importance weight).
#[derive(Debug)]
pub struct HeapSampler {
    /// `(priority bits, tie-break)`: the bits of a finite priority >= 0
    /// order as the priorities do; the tie-break is the key for a min-heap
    /// and `u64::MAX - key` for a max-heap, so the oldest wins either way.
    order: BTreeSet<(u64, u64)>,
    priorities: HashMap<u64, u64>,
    max_first: bool,
}

impl HeapSampler {
    pub fn max_first() -> Self {
        Self {
            order: BTreeSet::new(),
            priorities: HashMap::new(),
            max_first: true,
        }
    }

    pub fn min_first() -> Self {
        Self {
            max_first: false,
            ..Self::max_first()
        }
    }

    fn entry(&self, key: u64, bits: u64) -> (u64, u64) {
        (bits, if self.max_first { u64::MAX - key } else { key })
    }
}

impl Sampler for HeapSampler {
    fn name(&self) -> &'static str {
        if self.max_first {
            SamplerKind::MaxHeap.as_str()
        } else {
            SamplerKind::MinHeap.as_str()
        }
    }
    fn insert(&mut self, key: u64, priority: f64) {
        self.remove(key);
        // + 0.0 turns -0.0 into 0.0, whose bits sort first.
        let bits = (priority + 0.0).to_bits();
        self.priorities.insert(key, bits);
        self.order.insert(self.entry(key, bits));
    }
    fn update(&mut self, key: u64, priority: f64) {
        if self.priorities.contains_key(&key) {
            self.insert(key, priority);
        }
    }
    fn remove(&mut self, key: u64) {
        if let Some(bits) = self.priorities.remove(&key) {
            self.order.remove(&self.entry(key, bits));
        }
    }
    fn sample(&mut self) -> Option<Choice> {
        let &(_, tie) = if self.max_first { self.order.last()? } else { self.order.first()? };
        Some(Choice {
            key: if self.max_first { u64::MAX - tie } else { tie },
            probability: 1.0 / self.order.len() as f64,
        })
    }
}

/// Items in insertion order (keys increase with insertion): the oldest
/// first for a FIFO table, the newest first for a LIFO one.
///
/// The reported probability is `1 / size` at the time of the draw, the
/// probability a uniform draw would have had. The choice itself is
/// deterministic, but with this value `(N·P)^-β = 1`, which agrees with the
/// unit importance weight such an item gets, so a learner that recomputes
/// weights from probabilities treats these items as unbiased.
///
/// With `max_times_sampled` other than 1 the same item is returned again
/// until it has been sampled out.
#[derive(Debug)]
pub struct OrderedSampler {
    keys: BTreeSet<u64>,
    newest_first: bool,
}

impl OrderedSampler {
    pub fn fifo() -> Self {
        Self {
            keys: BTreeSet::new(),
            newest_first: false,
        }
    }

    pub fn lifo() -> Self {
        Self {
            keys: BTreeSet::new(),
            newest_first: true,
        }
    }
}

impl Sampler for OrderedSampler {
    fn name(&self) -> &'static str {
        if self.newest_first {
            SamplerKind::Lifo.as_str()
        } else {
            SamplerKind::Fifo.as_str()
        }
    }
    fn insert(&mut self, key: u64, _priority: f64) {
        self.keys.insert(key);
    }
    fn update(&mut self, _key: u64, _priority: f64) {}
    fn remove(&mut self, key: u64) {
        self.keys.remove(&key);
    }
    fn sample(&mut self) -> Option<Choice> {
        let key = if self.newest_first {
            *self.keys.last()?
        } else {
            *self.keys.first()?
        };
        Some(Choice {
            key,
            probability: 1.0 / self.keys.len() as f64,
        })
    }
}

/// Every key equally likely, with replacement. O(1) per operation: keys are
/// kept densely in a vector, a removed key's place taken by the last one.
#[derive(Debug)]
pub struct UniformSampler {
    keys: Vec<u64>,
    position: HashMap<u64, usize>,
    rng: StdRng,
}

impl UniformSampler {
    pub fn new(seed: u64) -> Self {
        Self {
            keys: Vec::new(),
            position: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl Sampler for UniformSampler {
    fn name(&self) -> &'static str {
        SamplerKind::Uniform.as_str()
    }
    fn insert(&mut self, key: u64, _priority: f64) {
        if !self.position.contains_key(&key) {
            self.position.insert(key, self.keys.len());
            self.keys.push(key);
        }
    }
    fn update(&mut self, _key: u64, _priority: f64) {}
    fn remove(&mut self, key: u64) {
        if let Some(position) = self.position.remove(&key) {
            self.keys.swap_remove(position);
            if let Some(&moved) = self.keys.get(position) {
                self.position.insert(moved, position);
            }
        }
    }
    fn sample(&mut self) -> Option<Choice> {
        if self.keys.is_empty() {
            return None;
        }
        let key = self.keys[self.rng.random_range(0..self.keys.len())];
        Some(Choice {
            key,
            probability: 1.0 / self.keys.len() as f64,
        })
    }
}

/// Prioritised experience replay: key `i` with probability
/// `p_i^α / Σ_k p_k^α`, with replacement, through a sum tree (O(log n) per
/// draw and per priority change).
///
/// A priority of 0 is never drawn while any other is positive (also for
/// α = 0, where every positive priority counts the same). When every
/// priority is 0 — or the sum of `p^α` overflowed — draws fall back to
/// uniform, so a table never stops serving because of its priorities.
#[derive(Debug)]
pub struct PrioritizedSampler {
    /// α: 0 is uniform over positive priorities, 1 proportional.
    exponent: f64,
    /// `p^α` per key.
    tree: KeyedSumTree,
    rng: StdRng,
}

impl PrioritizedSampler {
    /// A sampler with exponent α, room for `capacity` keys before its tree
    /// has to grow, and draws fixed by `seed`.
    pub fn new(exponent: f64, capacity: usize, seed: u64) -> Self {
        Self {
            exponent,
            tree: KeyedSumTree::with_capacity(capacity),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// `p^α`, with 0 kept at 0 (`powf` would make `0^0` one).
    fn sampling_weight(&self, priority: f64) -> f64 {
        if priority > 0.0 { priority.powf(self.exponent) } else { 0.0 }
    }
}

impl Sampler for PrioritizedSampler {
    fn name(&self) -> &'static str {
        SamplerKind::Prioritized.as_str()
    }
    fn insert(&mut self, key: u64, priority: f64) {
        self.tree.set(key, self.sampling_weight(priority));
    }
    fn update(&mut self, key: u64, priority: f64) {
        if self.tree.contains(key) {
            self.tree.set(key, self.sampling_weight(priority));
        }
    }
    fn remove(&mut self, key: u64) {
        self.tree.remove(key);
    }
    fn sample(&mut self) -> Option<Choice> {
        let size = self.tree.len();
        if size == 0 {
            return None;
        }
        let total = self.tree.total();
        if total > 0.0 && total.is_finite() {
            let key = self.tree.find(self.rng.random::<f64>() * total)?;
            let weight = self.tree.get(key)?;
            return Some(Choice {
                key,
                probability: weight / total,
            });
        }
        let key = self.tree.key_at(self.rng.random_range(0..size))?;
        Some(Choice {
            key,
            probability: 1.0 / size as f64,
        })
    }
    fn is_prioritised(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(sampler: &mut dyn Sampler, draws: usize, keys: usize) -> Vec<usize> {
        let mut counts = vec![0; keys];
        for _ in 0..draws {
            counts[sampler.sample().unwrap().key as usize] += 1;
        }
        counts
    }

    #[test]
    fn fifo_and_lifo_ends() {
        let mut fifo = OrderedSampler::fifo();
        let mut lifo = OrderedSampler::lifo();
        for sampler in [&mut fifo as &mut dyn Sampler, &mut lifo] {
            assert_eq!(sampler.sample(), None);
            for key in [3, 1, 2] {
                sampler.insert(key, 1.0);
            }
        }
        assert_eq!(
            fifo.sample(),
            Some(Choice {
                key: 1,
                probability: 1.0 / 3.0
            })
        );
        assert_eq!(
            lifo.sample(),
            Some(Choice {
                key: 3,
                probability: 1.0 / 3.0
            })
        );
        lifo.remove(3);
        assert_eq!(lifo.sample().unwrap().key, 2);
    }

    #[test]
    fn uniform_draws_evenly_and_forgets_removed_keys() {
        let mut uniform = UniformSampler::new(3);
        for key in 0..10 {
            uniform.insert(key, key as f64);
        }
        uniform.remove(4);
        uniform.remove(0);
        uniform.remove(99);
        let counts = counts(&mut uniform, 40_000, 10);
        assert_eq!((counts[0], counts[4]), (0, 0));
        for (key, &count) in counts.iter().enumerate().filter(|&(k, _)| k != 0 && k != 4) {
            // 8 keys left: 5000 expected, standard deviation about 66.
            assert!((4650..=5350).contains(&count), "key {key}: {count} of 40000");
        }
        assert_eq!(uniform.sample().unwrap().probability, 0.125);
    }

    #[test]
    fn prioritized_follows_priorities_to_the_exponent() {
        let mut sampler = PrioritizedSampler::new(0.5, 4, 11);
        // p^0.5 = 1, 2, 3, 4 (sum 10); key 4 has priority 0.
        for (key, priority) in [(0, 1.0), (1, 4.0), (2, 9.0), (3, 16.0), (4, 0.0)] {
            sampler.insert(key, priority);
        }
        let draws = 100_000;
        let counts = counts(&mut sampler, draws, 5);
        assert_eq!(counts[4], 0);
        for (key, &count) in counts[..4].iter().enumerate() {
            let expected = (key + 1) as f64 / 10.0;
            let frequency = count as f64 / draws as f64;
            assert!((frequency - expected).abs() < 0.006, "key {key}: {frequency} vs {expected}");
        }
        let choice = sampler.sample().unwrap();
        assert!((choice.probability - (choice.key + 1) as f64 / 10.0).abs() < 1e-12, "{choice:?}");
    }

    #[test]
    fn prioritized_falls_back_to_uniform_when_all_priorities_are_zero() {
        let mut sampler = PrioritizedSampler::new(0.9, 2, 5);
        assert_eq!(sampler.sample(), None);
        for key in 0..4 {
            sampler.insert(key, 0.0);
        }
        let counts = counts(&mut sampler, 4000, 4);
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(sampler.sample().unwrap().probability, 0.25);
        // One positive priority takes every draw.
        sampler.update(2, 0.01);
        assert_eq!(counts_of_key(&mut sampler, 2, 100), 100);
        // Updates for keys it does not hold are ignored rather than inserted.
        sampler.update(77, 5.0);
        assert_eq!(counts_of_key(&mut sampler, 77, 100), 0);
    }

    fn counts_of_key(sampler: &mut dyn Sampler, key: u64, draws: usize) -> usize {
        (0..draws).filter(|_| sampler.sample().unwrap().key == key).count()
    }

    #[test]
    fn exponent_zero_is_uniform_over_positive_priorities() {
        let mut sampler = PrioritizedSampler::new(0.0, 4, 9);
        for (key, priority) in [(0, 100.0), (1, 0.001), (2, 0.0)] {
            sampler.insert(key, priority);
        }
        let counts = counts(&mut sampler, 10_000, 3);
        assert_eq!(counts[2], 0);
        assert!((4700..=5300).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn seeds_make_draws_repeatable() {
        let draw = |seed| {
            let mut sampler = PrioritizedSampler::new(1.0, 8, seed);
            for key in 0..8 {
                sampler.insert(key, 1.0 + key as f64);
            }
            (0..50).map(|_| sampler.sample().unwrap().key).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn heaps_return_the_extreme_priority_oldest_first() {
        let mut max = HeapSampler::max_first();
        let mut min = HeapSampler::min_first();
        for (key, priority) in [(1, 2.0), (2, 5.0), (3, 0.5), (4, 5.0), (5, 0.5), (6, 0.0)] {
            max.insert(key, priority);
            min.insert(key, priority);
        }
        assert_eq!(max.sample().map(|c| c.key), Some(2), "5.0, and older than 4");
        assert_eq!(min.sample().map(|c| c.key), Some(6));
        assert_eq!(max.sample().unwrap().probability, 1.0 / 6.0);
        max.update(3, 9.0);
        min.update(6, 3.0);
        assert_eq!(max.sample().map(|c| c.key), Some(3));
        assert_eq!(min.sample().map(|c| c.key), Some(3), "0.5 now the lowest; 5 is newer");
        max.remove(3);
        min.remove(3);
        min.update(42, 0.0);
        assert_eq!((max.sample().map(|c| c.key), min.sample().map(|c| c.key)), (Some(2), Some(5)));
        for key in [1, 2, 4, 5, 6] {
            max.remove(key);
        }
        assert_eq!(max.sample(), None);
    }

    #[test]
    fn names_match_the_config() {
        for kind in SamplerKind::ALL {
            let sampler = sampler_for(kind, &TableConfig::default(), 0);
            assert_eq!(sampler.name(), kind.as_str());
            assert_eq!(sampler.is_prioritised(), kind == SamplerKind::Prioritized);
        }
    }
}
