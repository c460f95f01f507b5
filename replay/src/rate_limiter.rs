//! The rate limiter of a table, with Reverb's cursor semantics: when an
//! insert or a sample may go ahead, given how many items the table holds and
//! how many inserts and samples it has seen. It only decides; the table does
//! the waiting (on notifications, with timeouts) and counts the time spent.
//!
//! The cursor is `inserts · samples_per_insert − samples`. A sample of `n`
//! items may proceed once the table holds `min_size_to_sample` items and the
//! cursor minus `n` stays at or above `min_diff`; an insert may proceed while
//! the table holds no more than `min_size_to_sample` items (so a table can
//! always fill up to where sampling starts), and after that only while the
//! cursor after the insert stays at or below `max_diff`. So
//! `samples_per_insert` fixes how often each item is sampled on average, and
//! `max_diff − min_diff` how far inserts and samples may run ahead of each
//! other before one side waits.

/// A table's limiter; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimiter {
    pub samples_per_insert: f64,
    pub min_size_to_sample: usize,
    pub min_diff: f64,
    pub max_diff: f64,
}

/// The counters a limiter decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Items in the table now.
    pub size: usize,
    /// Items ever inserted.
    pub inserts: u64,
    /// Items ever sampled (each item of each batch).
    pub samples: u64,
}

impl RateLimiter {
    /// Only a minimum size: sampling waits for `min_size` items, inserts never wait.
    pub fn min_size(min_size: usize) -> Self {
        Self {
            samples_per_insert: 1.0,
            min_size_to_sample: min_size,
            min_diff: f64::NEG_INFINITY,
            max_diff: f64::INFINITY,
        }
    }

    /// Each item sampled `samples_per_insert` times on average, give or take
    /// `error_buffer` samples, once `min_size` items are in (Reverb's
    /// `SampleToInsertRatio`).
    pub fn sample_to_insert_ratio(samples_per_insert: f64, min_size: usize, error_buffer: f64) -> Self {
        let offset = min_size as f64 * samples_per_insert;
        Self {
            samples_per_insert,
            min_size_to_sample: min_size,
            min_diff: offset - error_buffer,
            max_diff: offset + error_buffer,
        }
    }

    /// A queue of `size`: each item sampled once, inserts at most `size`
    /// ahead of samples (Reverb's `Queue`).
    pub fn queue(size: usize) -> Self {
        Self {
            samples_per_insert: 1.0,
            min_size_to_sample: 1,
            min_diff: 0.0,
            max_diff: size as f64,
        }
    }

    fn cursor(&self, inserts: u64, samples: u64) -> f64 {
        inserts as f64 * self.samples_per_insert - samples as f64
    }

    /// Whether a sample of `n` items may proceed.
    pub fn can_sample(&self, counts: Counts, n: usize) -> bool {
        counts.size >= self.min_size_to_sample && self.cursor(counts.inserts, counts.samples) - n as f64 >= self.min_diff
    }

    /// Whether one more insert may proceed.
    pub fn can_insert(&self, counts: Counts) -> bool {
        counts.size < self.min_size_to_sample || self.cursor(counts.inserts + 1, counts.samples) <= self.max_diff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a limiter the way a table does: inserts and samples that go
    /// ahead when allowed, in an order given by the test.
    #[derive(Debug)]
    struct Driver {
        limiter: RateLimiter,
        counts: Counts,
    }

    impl Driver {
        fn new(limiter: RateLimiter) -> Self {
            Self {
                limiter,
                counts: Counts::default(),
            }
        }

        fn insert(&mut self) -> bool {
            let allowed = self.limiter.can_insert(self.counts);
            if allowed {
                self.counts.inserts += 1;
                self.counts.size += 1;
            }
            allowed
        }

        /// Samples `n` without removing items.
        fn sample(&mut self, n: usize) -> bool {
            let allowed = self.limiter.can_sample(self.counts, n);
            if allowed {
                self.counts.samples += n as u64;
            }
            allowed
        }

        /// Inserts until the limiter says wait; returns how many went in.
        fn insert_until_blocked(&mut self) -> usize {
            (0..10_000).take_while(|_| self.insert()).count()
        }

        fn sample_until_blocked(&mut self) -> usize {
            (0..10_000).take_while(|_| self.sample(1)).count()
        }
    }

    #[test]
    fn min_size_blocks_samples_until_the_size_is_reached_and_never_inserts() {
        let mut d = Driver::new(RateLimiter::min_size(3));
        assert!(!d.sample(1));
        assert!(d.insert() && d.insert());
        assert!(!d.sample(1), "2 items < min size 3");
        assert!(d.insert());
        assert!(d.sample(1));
        assert!(d.sample(100), "no ratio: any number of samples");
        assert_eq!(d.insert_until_blocked(), 10_000, "inserts never wait");
    }

    #[test]
    fn sample_to_insert_ratio_with_an_error_buffer() {
        // spi 2, min size 2, buffer 4: the cursor must stay in [0, 8].
        let limiter = RateLimiter::sample_to_insert_ratio(2.0, 2, 4.0);
        assert_eq!((limiter.min_diff, limiter.max_diff), (0.0, 8.0));
        let mut d = Driver::new(limiter);
        assert!(!d.sample(1), "empty");
        // Up to min size inserts always go ahead; then while cursor ≤ 8.
        assert_eq!(d.insert_until_blocked(), 4, "cursor after 4 inserts is 8");
        assert_eq!(d.counts.inserts, 4);
        // Samples go ahead while the cursor after them stays ≥ 0.
        assert!(!d.sample(9), "a batch that would take the cursor below 0 waits");
        assert!(d.sample(8));
        assert!(!d.sample(1), "cursor 0: samples wait for inserts");
        // Each insert buys 2 samples.
        assert!(d.insert());
        assert_eq!(d.sample_until_blocked(), 2);
        assert_eq!(d.insert_until_blocked(), 4);
        assert_eq!(d.sample_until_blocked(), 8);
        let spi = d.counts.samples as f64 / d.counts.inserts as f64;
        assert!((spi - 2.0).abs() < 1e-9, "{spi}");
    }

    #[test]
    fn a_small_table_always_admits_inserts_up_to_min_size() {
        // max_diff below what the first inserts reach still lets the table fill.
        let limiter = RateLimiter {
            samples_per_insert: 1.0,
            min_size_to_sample: 3,
            min_diff: 0.0,
            max_diff: 1.0,
        };
        let mut d = Driver::new(limiter);
        assert_eq!(d.insert_until_blocked(), 3);
        assert_eq!(d.sample_until_blocked(), 3, "cursor 3 down to 0");
        assert!(d.insert(), "cursor 1 after the insert");
        assert!(!d.insert(), "2 > max_diff 1");
    }

    #[test]
    fn queue_admits_size_inserts_ahead_and_samples_each_once() {
        let mut d = Driver::new(RateLimiter::queue(4));
        assert!(!d.sample(1));
        assert_eq!(d.insert_until_blocked(), 4);
        assert!(!d.sample(5));
        assert_eq!(d.sample_until_blocked(), 4);
        assert!(d.insert());
        assert!(d.sample(1));
        assert!(!d.sample(1));
    }

    #[test]
    fn a_fractional_ratio_samples_less_than_it_inserts() {
        // spi 0.25: one sample per four inserts, within a buffer of 1.
        let mut d = Driver::new(RateLimiter::sample_to_insert_ratio(0.25, 1, 1.0));
        assert_eq!(d.insert_until_blocked(), 5, "cursor 1.25 ≤ 1.25");
        assert_eq!(d.sample_until_blocked(), 2, "cursor 1.25 → 0.25 → -0.75 = min_diff");
        assert_eq!(d.insert_until_blocked(), 8, "each sample frees four inserts");
    }
}
