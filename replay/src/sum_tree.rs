//! Sum trees: the index behind prioritised sampling. A [`SumTree`] holds
//! non-negative `f64` values at leaf indices and keeps, in every internal
//! node, the sum of the leaves below it, so that setting a leaf, reading the
//! total and finding the leaf at a given cumulative mass are all O(log n).
//! [`KeyedSumTree`] puts `u64` keys (table item keys) on top, mapping each key
//! to a leaf slot. Drawing `find(u · total)` with `u` uniform in `[0, 1)`
//! picks leaf `i` with probability `value_i / total`.
//!
//! Plain data structures: no locking, no randomness of their own, no notion
//! of priority exponents or tables; [`crate::table`] builds samplers on them.
//!
//! # Rounding
//!
//! A tree that adds each change's difference to the nodes above a leaf
//! accumulates rounding error with every update (and a removed large value
//! can leave a positive residue in a tree whose leaves are all zero). This
//! one never does that: after a leaf changes, each node on its path is
//! recomputed as the sum of its two children. The internal sums are
//! therefore a pure function of the current leaves, identical bit for bit to
//! a tree rebuilt from them, however many updates came before, so there is
//! no drift to track and nothing to rebuild. The one remaining error is that
//! of summing the leaves pairwise: for non-negative leaves every node, the
//! total included, is within `depth · 2^-53` (relative) of the exact sum of
//! its leaves, `depth = log2(capacity)`; under `3·10^-15` for a million
//! leaves. A tree whose leaves are all zero has a total of exactly zero.

use std::collections::HashMap;

/// A complete binary tree of sums over `capacity` leaves (a power of two).
///
/// Node 1 is the root; node `i` has children `2i` and `2i + 1`; leaf `j`
/// lives at node `capacity + j`. Node 0 is unused.
#[derive(Debug, Clone, PartialEq)]
pub struct SumTree {
    capacity: usize,
    nodes: Vec<f64>,
}

impl SumTree {
    /// A tree of zeros with room for at least `capacity` leaves (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        Self {
            capacity,
            nodes: vec![0.0; 2 * capacity],
        }
    }

    /// Number of leaves.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The value at leaf `index`.
    ///
    /// # Panics
    /// If `index >= capacity`.
    pub fn get(&self, index: usize) -> f64 {
        assert!(index < self.capacity, "leaf {index} out of range 0..{}", self.capacity);
        self.nodes[self.capacity + index]
    }

    /// Sets leaf `index` to `value` (0 removes it from sampling) and
    /// recomputes the sums above it.
    ///
    /// # Panics
    /// If `index >= capacity`, or `value` is negative or not finite (callers
    /// validate priorities before they get here).
    pub fn set(&mut self, index: usize, value: f64) {
        assert!(index < self.capacity, "leaf {index} out of range 0..{}", self.capacity);
        assert!(
            value.is_finite() && value >= 0.0,
            "sum tree values must be finite and >= 0, got {value}"
        );
        let mut node = self.capacity + index;
        self.nodes[node] = value;
        while node > 1 {
            node /= 2;
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1];
        }
    }

    /// Sum of all leaves.
    pub fn total(&self) -> f64 {
        self.nodes[1]
    }

    /// The leaf whose cumulative range `[sum of leaves before it, that sum +
    /// its value)` contains `mass`, or `None` when the total is zero (or so
    /// large that it overflowed to infinity).
    ///
    /// Never returns a zero leaf while the total is positive: `mass` is
    /// clamped into `[0, total]`, and where rounding would send the search
    /// into a subtree whose sum is zero (a mass at or just past the total),
    /// it takes the other, positive, subtree instead.
    pub fn find(&self, mass: f64) -> Option<usize> {
        let total = self.total();
        if !(total > 0.0 && total.is_finite()) {
            return None;
        }
        // NaN clamps to 0 through `max`.
        let mut mass = mass.max(0.0).min(total);
        let mut node = 1;
        while node < self.capacity {
            let left = self.nodes[2 * node];
            let right = self.nodes[2 * node + 1];
            if mass < left || right <= 0.0 {
                node *= 2;
            } else {
                mass -= left;
                node = 2 * node + 1;
            }
        }
        Some(node - self.capacity)
    }

    /// Re-creates the tree with room for at least `capacity` leaves, keeping
    /// the leaves (growing only; a smaller `capacity` changes nothing).
    pub fn grow(&mut self, capacity: usize) {
        if capacity <= self.capacity {
            return;
        }
        let mut grown = Self::with_capacity(capacity);
        grown.nodes[grown.capacity..grown.capacity + self.capacity].copy_from_slice(&self.nodes[self.capacity..]);
        for node in (1..grown.capacity).rev() {
            grown.nodes[node] = grown.nodes[2 * node] + grown.nodes[2 * node + 1];
        }
        *self = grown;
    }
}

/// A [`SumTree`] whose leaves belong to `u64` keys.
///
/// Occupied slots are always `0..len`: removing a key moves the key in the
/// last slot into the hole. That keeps the tree as small as the number of
/// keys, and lets a caller pick a key uniformly ([`Self::key_at`] with a
/// random slot below [`Self::len`]) when every value is zero.
#[derive(Debug, Clone)]
pub struct KeyedSumTree {
    tree: SumTree,
    /// The key in each occupied slot.
    keys: Vec<u64>,
    slot_of: HashMap<u64, usize>,
}

impl KeyedSumTree {
    /// An empty tree with room for `capacity` keys before it has to grow.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            tree: SumTree::with_capacity(capacity),
            keys: Vec::with_capacity(capacity),
            slot_of: HashMap::with_capacity(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, key: u64) -> bool {
        self.slot_of.contains_key(&key)
    }

    /// The value stored for `key`.
    pub fn get(&self, key: u64) -> Option<f64> {
        let slot = *self.slot_of.get(&key)?;
        Some(self.tree.get(slot))
    }

    /// Inserts `key` with `value`, or changes its value. O(log n), amortised
    /// over the occasional doubling of the tree.
    ///
    /// # Panics
    /// If `value` is negative or not finite.
    pub fn set(&mut self, key: u64, value: f64) {
        let slot = match self.slot_of.get(&key) {
            Some(&slot) => slot,
            None => {
                let slot = self.keys.len();
                if slot >= self.tree.capacity() {
                    self.tree.grow(2 * self.tree.capacity());
                }
                self.keys.push(key);
                self.slot_of.insert(key, slot);
                slot
            }
        };
        self.tree.set(slot, value);
    }

    /// Removes `key`, returning its value, or `None` if it was not present.
    pub fn remove(&mut self, key: u64) -> Option<f64> {
        let slot = self.slot_of.remove(&key)?;
        let last = self.keys.len() - 1;
        let tree = &mut self.tree;
        let value = tree.get(slot);
        if slot != last {
            let moved_value = tree.get(last);
            tree.set(slot, moved_value);
        }
        tree.set(last, 0.0);
        self.keys.swap_remove(slot);
        if slot != last {
            self.slot_of.insert(self.keys[slot], slot);
        }
        Some(value)
    }

    /// Sum of all values.
    pub fn total(&self) -> f64 {
        self.tree.total()
    }

    /// The key whose cumulative range contains `mass` (see
    /// [`SumTree::find`]); `None` when the total is zero.
    pub fn find(&self, mass: f64) -> Option<u64> {
        let slot = self.tree.find(mass)?;
        Some(self.keys[slot])
    }

    /// The key in `slot`, for `slot < len`.
    pub fn key_at(&self, slot: usize) -> Option<u64> {
        self.keys.get(slot).copied()
    }
}

impl Default for KeyedSumTree {
    fn default() -> Self {
        Self::with_capacity(1)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn tree_of(values: &[f64]) -> SumTree {
        let mut tree = SumTree::with_capacity(values.len());
        for (i, &v) in values.iter().enumerate() {
            tree.set(i, v);
        }
        tree
    }

    /// Draws `draws` leaves with `find(u · total)` and returns how often each
    /// leaf came up.
    fn draw_counts(tree: &SumTree, leaves: usize, draws: usize, seed: u64) -> Vec<u64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts = vec![0; leaves];
        for _ in 0..draws {
            let leaf = tree.find(rng.random::<f64>() * tree.total()).unwrap();
            counts[leaf] += 1;
        }
        counts
    }

    /// A reference sum with its own error near one rounding (Neumaier's
    /// compensated summation), to measure the tree's error against.
    fn accurate_sum(values: &[f64]) -> f64 {
        let (mut sum, mut compensation) = (0.0f64, 0.0f64);
        for &v in values {
            let t = sum + v;
            compensation += if sum.abs() >= v.abs() { (sum - t) + v } else { (v - t) + sum };
            sum = t;
        }
        sum + compensation
    }

    /// Pearson's statistic of `counts` against the distribution `values /
    /// Σ values`, over the leaves with positive values.
    fn chi_square(counts: &[u64], values: &[f64]) -> (f64, usize) {
        let total: f64 = values.iter().sum();
        let draws: u64 = counts.iter().sum();
        let mut statistic = 0.0;
        let mut cells = 0usize;
        for (&count, &value) in counts.iter().zip(values) {
            if value > 0.0 {
                let expected = draws as f64 * value / total;
                statistic += (count as f64 - expected).powi(2) / expected;
                cells += 1;
            }
        }
        (statistic, cells.saturating_sub(1))
    }

    /// A bound that a chi-square variable with `dof` degrees of freedom
    /// (mean `dof`, variance `2·dof`) exceeds with negligible probability, so
    /// that seeded runs pass while a wrong distribution fails by far.
    fn chi_square_bound(dof: usize) -> f64 {
        let dof = dof as f64;
        dof + 7.0 * (2.0 * dof).sqrt() + 15.0
    }

    #[test]
    fn sums_and_find_by_hand() {
        let tree = tree_of(&[1.0, 0.0, 2.0, 3.0, 0.5]);
        assert_eq!(tree.capacity(), 8);
        assert_eq!(tree.total(), 6.5);
        // Cumulative ranges: [0,1) → 0, [1,3) → 2, [3,6) → 3, [6,6.5) → 4.
        assert_eq!(tree.find(0.0), Some(0));
        assert_eq!(tree.find(0.999), Some(0));
        assert_eq!(tree.find(1.0), Some(2));
        assert_eq!(tree.find(2.999), Some(2));
        assert_eq!(tree.find(3.0), Some(3));
        assert_eq!(tree.find(6.0), Some(4));
        // Out-of-range masses clamp to the ends and still land on a positive leaf.
        assert_eq!(tree.find(6.5), Some(4));
        assert_eq!(tree.find(100.0), Some(4));
        assert_eq!(tree.find(-1.0), Some(0));
        assert_eq!(tree.find(f64::NAN), Some(0));
    }

    #[test]
    fn set_updates_and_deletes() {
        let mut tree = tree_of(&[1.0, 2.0, 3.0]);
        tree.set(1, 10.0);
        assert_eq!(tree.total(), 14.0);
        assert_eq!(tree.get(1), 10.0);
        tree.set(1, 0.0);
        assert_eq!(tree.total(), 4.0);
        assert_eq!(tree.find(1.0), Some(2));
    }

    #[test]
    fn all_zero_is_detectable() {
        let mut tree = tree_of(&[1e300, 3.0, 1e-300]);
        for i in 0..3 {
            tree.set(i, 0.0);
        }
        // Exactly zero, not a rounding residue.
        assert_eq!(tree.total(), 0.0);
        assert_eq!(tree.find(0.0), None);
        assert_eq!(SumTree::with_capacity(4).find(0.5), None);
    }

    #[test]
    #[should_panic(expected = "finite and >= 0")]
    fn negative_values_are_refused() {
        SumTree::with_capacity(2).set(0, -1.0);
    }

    #[test]
    fn grow_keeps_leaves() {
        let mut tree = tree_of(&[1.0, 2.0, 3.0]);
        tree.grow(9);
        assert_eq!(tree.capacity(), 16);
        assert_eq!(tree, tree_of(&[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]));
        tree.grow(2);
        assert_eq!(tree.capacity(), 16);
    }

    #[test]
    fn frequencies_follow_the_values() {
        let values = [1.0, 0.0, 4.0, 2.0, 0.5, 8.0, 0.0, 3.0, 1.5];
        let tree = tree_of(&values);
        let counts = draw_counts(&tree, values.len(), 200_000, 7);
        assert_eq!((counts[1], counts[6]), (0, 0), "zero leaves were drawn: {counts:?}");
        let (statistic, dof) = chi_square(&counts, &values);
        assert!(
            statistic < chi_square_bound(dof),
            "chi-square {statistic} with {dof} dof: {counts:?}"
        );

        // The check has teeth: the same counts do not fit a uniform distribution.
        let (uniform, _) = chi_square(&counts, &[1.0; 9]);
        assert!(uniform > 1000.0 * chi_square_bound(dof), "{uniform}");
    }

    #[test]
    fn keyed_insert_update_remove() {
        let mut tree = KeyedSumTree::default();
        assert_eq!((tree.total(), tree.find(0.0), tree.get(1)), (0.0, None, None));
        tree.set(10, 1.0);
        tree.set(20, 2.0);
        tree.set(30, 3.0);
        assert_eq!(tree.len(), 3);
        assert_eq!(tree.total(), 6.0);
        assert_eq!(tree.find(2.5), Some(20));
        tree.set(20, 0.0);
        assert_eq!(tree.find(1.0), Some(30));
        assert_eq!(tree.remove(10), Some(1.0));
        assert_eq!(tree.remove(10), None);
        // 30 moved into 10's slot and keeps its value.
        assert_eq!((tree.key_at(0), tree.key_at(1), tree.key_at(2)), (Some(30), Some(20), None));
        assert_eq!(tree.get(30), Some(3.0));
        assert_eq!(tree.total(), 3.0);
        assert_eq!(tree.remove(30), Some(3.0));
        assert_eq!(tree.total(), 0.0);
        assert_eq!(tree.find(0.0), None);
        assert!(tree.contains(20) && !tree.contains(30));
        assert_eq!(tree.remove(20), Some(0.0));
        assert!(tree.is_empty());
    }

    #[test]
    fn keyed_tree_grows() {
        let mut tree = KeyedSumTree::with_capacity(2);
        for key in 0..100 {
            tree.set(key, 1.0);
        }
        assert_eq!(tree.total(), 100.0);
        assert_eq!(tree.find(57.5), Some(57));
    }

    /// Operations for the keyed-tree property: set `key` to `value` (0 when
    /// `zero`), or remove `key`.
    #[derive(Debug, Clone)]
    enum Op {
        Set { key: u64, value: f64, zero: bool },
        Remove { key: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..40, 0.0f64..1e6, prop::bool::weighted(0.2)).prop_map(|(key, value, zero)| Op::Set { key, value, zero }),
            1 => (0u64..40).prop_map(|key| Op::Remove { key }),
        ]
    }

    proptest! {
        /// After any sequence of updates the tree is exactly the tree built
        /// from its leaves (no drift), and its total is the sum of the leaves.
        #[test]
        fn total_is_the_sum_of_the_leaves(
            updates in prop::collection::vec((0usize..37, prop_oneof![Just(0.0), 0.0f64..1e9, 0.0f64..1e-6]), 1..400),
        ) {
            let mut tree = SumTree::with_capacity(37);
            let mut leaves = vec![0.0; tree.capacity()];
            for &(index, value) in &updates {
                tree.set(index, value);
                leaves[index] = value;
            }
            prop_assert_eq!(&tree, &tree_of(&leaves));
            // The documented bound, depth·2^-53 relative, plus the reference's own rounding.
            let exact = accurate_sum(&leaves);
            let depth = f64::from(tree.capacity().trailing_zeros());
            prop_assert!((tree.total() - exact).abs() <= (depth / 2.0 + 1.0) * f64::EPSILON * exact);
            prop_assert_eq!(tree.total() == 0.0, leaves.iter().all(|&v| v == 0.0));
        }

        /// `find` lands on a positive leaf for every mass, including the
        /// boundaries, whenever the total is positive; and on none otherwise.
        #[test]
        fn find_never_returns_a_zero_leaf(
            values in prop::collection::vec(prop_oneof![2 => Just(0.0), 1 => 1e-300f64..1.0, 1 => 1.0f64..1e12], 1..64),
            fractions in prop::collection::vec(0.0f64..=1.0, 1..50),
        ) {
            let tree = tree_of(&values);
            let total = tree.total();
            if values.iter().all(|&v| v == 0.0) {
                prop_assert_eq!(total, 0.0);
                prop_assert_eq!(tree.find(0.0), None);
            } else {
                prop_assert!(total > 0.0);
                let boundaries = [0.0, total, total * (1.0 - f64::EPSILON), f64::MAX, -0.0];
                for mass in fractions.iter().map(|f| f * total).chain(boundaries) {
                    let leaf = tree.find(mass);
                    prop_assert!(matches!(leaf, Some(i) if values[i] > 0.0), "mass {mass} gave {leaf:?}");
                }
            }
        }

        /// Seeded draws follow the values (chi-square), for random values.
        #[test]
        fn sampling_frequencies_follow_the_values(
            values in prop::collection::vec(prop_oneof![1 => Just(0.0), 4 => 0.1f64..10.0], 2..16),
            seed in any::<u64>(),
        ) {
            prop_assume!(values.iter().any(|&v| v > 0.0));
            let tree = tree_of(&values);
            let counts = draw_counts(&tree, values.len(), 40_000, seed);
            for (count, value) in counts.iter().zip(&values) {
                prop_assert!(*value > 0.0 || *count == 0, "a zero leaf was drawn: {counts:?}");
            }
            let (statistic, dof) = chi_square(&counts, &values);
            prop_assert!(statistic < chi_square_bound(dof), "chi-square {statistic}, {dof} dof: {counts:?} for {values:?}");
        }

        /// A keyed tree behaves like a map from keys to values whose draws
        /// land only on present keys with positive values.
        #[test]
        fn keyed_tree_matches_a_map(ops in prop::collection::vec(op(), 1..300)) {
            let mut tree = KeyedSumTree::with_capacity(4);
            let mut model: HashMap<u64, f64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Set { key, value, zero } => {
                        let value = if zero { 0.0 } else { value };
                        tree.set(key, value);
                        model.insert(key, value);
                    }
                    Op::Remove { key } => prop_assert_eq!(tree.remove(key), model.remove(&key)),
                }
            }
            prop_assert_eq!(tree.len(), model.len());
            for (&key, &value) in &model {
                prop_assert_eq!(tree.get(key), Some(value));
            }
            let mut slots: Vec<u64> = (0..tree.len()).map(|slot| tree.key_at(slot).unwrap()).collect();
            slots.sort_unstable();
            let mut keys: Vec<u64> = model.keys().copied().collect();
            keys.sort_unstable();
            prop_assert_eq!(slots, keys);
            let exact = accurate_sum(&model.values().copied().collect::<Vec<_>>());
            prop_assert!((tree.total() - exact).abs() <= 1e-14 * exact);
            for i in 0..=20 {
                match tree.find(tree.total() * f64::from(i) / 20.0) {
                    Some(key) => prop_assert!(model[&key] > 0.0),
                    None => prop_assert!(model.values().all(|&v| v == 0.0)),
                }
            }
        }
    }
}
