//! Value targets and advantages kept from a sequence's first draw and
//! reused whenever it is drawn again, as PPO computes its rollout's
//! advantages once and keeps them through all its epochs.
//!
//! Recomputed at every draw, the targets of a sequence learnt from several
//! times come from a value function that has already been fitted to that
//! very sequence: by its later draws the advantages shrink to what the fit
//! left over, and standardising them per batch blows that residue back up
//! to full size. Kept from the first draw, every draw pushes the policy the
//! way the data said when it was fresh.

use std::collections::HashMap;

use candle_core::{Result, Tensor};

use crate::vtrace::VTraceReturns;

/// Kept targets not used for this many updates are dropped (a later draw
/// then computes them afresh, as at a first draw).
const KEEP_FOR_UPDATES: u64 = 10_000;

/// Updates between sweeps for entries past [`KEEP_FOR_UPDATES`].
const SWEEP_EVERY: u64 = 1_000;

/// One sequence's `[T]` value targets and advantages.
#[derive(Debug)]
struct Kept {
    vs: Vec<f32>,
    advantages: Vec<f32>,
    last_used: u64,
}

/// The targets of the sequences drawn lately, by replay key.
#[derive(Debug, Default)]
pub struct KeptTargets {
    entries: HashMap<u64, Kept>,
    updates: u64,
}

impl KeptTargets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sequences whose targets are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `returns` of a batch whose column `b` is the sequence `keys[b]`,
    /// with the targets of every sequence drawn before (not `first_draws[b]`)
    /// and kept replaced by the kept ones, and those of the others kept.
    /// The policy-gradient advantages follow the advantages (`pg_rhos` times
    /// them); the ratios stay those of this draw.
    pub fn apply(&mut self, keys: &[u64], first_draws: &[bool], returns: VTraceReturns) -> Result<VTraceReturns> {
        let (t, b) = returns.vs.dims2()?;
        assert_eq!((keys.len(), first_draws.len()), (b, b), "one key and one draw flag per sequence");
        self.updates += 1;
        let now = self.updates;
        let mut vs = returns.vs.flatten_all()?.to_vec1::<f32>()?;
        let mut advantages = returns.advantages.flatten_all()?.to_vec1::<f32>()?;
        for (column, (&key, &first)) in keys.iter().zip(first_draws).enumerate() {
            let at = |step: usize| step * b + column;
            match self.entries.get_mut(&key) {
                Some(kept) if !first && kept.vs.len() == t => {
                    for step in 0..t {
                        vs[at(step)] = kept.vs[step];
                        advantages[at(step)] = kept.advantages[step];
                    }
                    kept.last_used = now;
                }
                _ => {
                    let kept = Kept {
                        vs: (0..t).map(|step| vs[at(step)]).collect(),
                        advantages: (0..t).map(|step| advantages[at(step)]).collect(),
                        last_used: now,
                    };
                    self.entries.insert(key, kept);
                }
            }
        }
        if now.is_multiple_of(SWEEP_EVERY) {
            self.entries.retain(|_, kept| now - kept.last_used < KEEP_FOR_UPDATES);
        }
        let device = returns.vs.device();
        let vs = Tensor::from_vec(vs, (t, b), device)?;
        let advantages = Tensor::from_vec(advantages, (t, b), device)?;
        Ok(VTraceReturns {
            pg_advantages: (&returns.pg_rhos * &advantages)?,
            vs,
            advantages,
            ..returns
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// `[T, B]` returns whose targets and advantages are `base + column`.
    fn returns(t: usize, b: usize, base: f32) -> VTraceReturns {
        let grid = |offset: f32| {
            let values: Vec<f32> = (0..t * b).map(|i| offset + base + (i % b) as f32).collect();
            Tensor::from_vec(values, (t, b), &Device::Cpu).unwrap()
        };
        VTraceReturns {
            vs: grid(0.0),
            pg_advantages: grid(100.0),
            pg_rhos: Tensor::full(0.5f32, (t, b), &Device::Cpu).unwrap(),
            advantages: grid(100.0),
            clipped_rho_fraction: 0.0,
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn later_draws_take_the_targets_of_the_first() {
        let mut kept = KeptTargets::new();
        let first = kept.apply(&[7, 8], &[true, true], returns(3, 2, 0.0)).unwrap();
        assert_eq!(
            values(&first.vs),
            [0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
            "a first draw keeps its own targets"
        );
        // Drawn again beside a new sequence, from a value function that moved.
        let again = kept.apply(&[9, 7], &[true, false], returns(3, 2, 10.0)).unwrap();
        assert_eq!(values(&again.vs), [10.0, 0.0, 10.0, 0.0, 10.0, 0.0]);
        assert_eq!(values(&again.advantages), [110.0, 100.0, 110.0, 100.0, 110.0, 100.0]);
        // The policy-gradient advantages are this draw's ratios times the kept advantages.
        assert_eq!(values(&again.pg_advantages), [55.0, 50.0, 55.0, 50.0, 55.0, 50.0]);
        assert_eq!(kept.len(), 3);
    }

    #[test]
    fn a_sequence_drawn_first_again_gets_new_targets() {
        // A key seen before but flagged as a first draw (a restarted replay
        // reuses keys) is computed afresh and kept anew.
        let mut kept = KeptTargets::new();
        kept.apply(&[7], &[true], returns(2, 1, 0.0)).unwrap();
        let fresh = kept.apply(&[7], &[true], returns(2, 1, 5.0)).unwrap();
        assert_eq!(values(&fresh.vs), [5.0, 5.0]);
        let later = kept.apply(&[7], &[false], returns(2, 1, 9.0)).unwrap();
        assert_eq!(values(&later.vs), [5.0, 5.0]);
    }

    #[test]
    fn a_later_draw_with_nothing_kept_keeps_its_own() {
        // After a learner restart nothing is kept: the draw computes and keeps.
        let mut kept = KeptTargets::new();
        let own = kept.apply(&[3], &[false], returns(2, 1, 4.0)).unwrap();
        assert_eq!(values(&own.vs), [4.0, 4.0]);
        let again = kept.apply(&[3], &[false], returns(2, 1, 8.0)).unwrap();
        assert_eq!(values(&again.vs), [4.0, 4.0]);
    }

    #[test]
    fn targets_unused_for_long_are_dropped() {
        let mut kept = KeptTargets::new();
        kept.apply(&[1], &[true], returns(2, 1, 0.0)).unwrap();
        for _ in 0..KEEP_FOR_UPDATES + SWEEP_EVERY {
            kept.apply(&[2], &[false], returns(2, 1, 0.0)).unwrap();
        }
        assert_eq!(kept.len(), 1, "only the sequence still drawn is kept");
        let fresh = kept.apply(&[1], &[false], returns(2, 1, 6.0)).unwrap();
        assert_eq!(values(&fresh.vs), [6.0, 6.0], "a dropped sequence's targets are computed afresh");
    }
}
