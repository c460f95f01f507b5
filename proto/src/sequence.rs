//! Cutting [`pb::Sequence`]s into runs of steps and joining runs back into
//! one sequence, along the time dimension that every per-step field shares.
//!
//! Both work on sequences whose per-step fields agree on the step count (the
//! replay service validates that before it cuts anything). Cutting shares
//! tensor bytes instead of copying them; joining copies only when there is
//! more than one part.

use std::ops::Range;

use prost::bytes::{Bytes, BytesMut};

use crate::pb::{Sequence, Tensor};

impl Tensor {
    /// Bytes of one step (one index of the first dimension).
    fn step_bytes(&self) -> usize {
        match self.shape.first() {
            Some(&steps) if steps > 0 => self.data.len() / steps as usize,
            _ => 0,
        }
    }

    /// Steps `range` of a time-major tensor, sharing its bytes.
    ///
    /// # Panics
    /// If `range` goes past the first dimension.
    pub fn slice_steps(&self, range: Range<usize>) -> Tensor {
        let step = self.step_bytes();
        let mut shape = self.shape.clone();
        assert!(
            range.end as u64 <= shape.first().copied().unwrap_or(0),
            "steps {range:?} out of range"
        );
        shape[0] = range.len() as u64;
        Tensor {
            dtype: self.dtype,
            shape,
            data: self.data.slice(range.start * step..range.end * step),
        }
    }

    /// The time-major tensors `first` then `rest` one after the other (same
    /// dtype and per-step shape, which the caller has checked). One part is
    /// shared, not copied.
    pub fn concat_steps(first: &Tensor, rest: &[&Tensor]) -> Tensor {
        if rest.is_empty() {
            return first.clone();
        }
        let parts = || std::iter::once(first).chain(rest.iter().copied());
        let mut data = BytesMut::with_capacity(parts().map(|t| t.data.len()).sum());
        let mut steps = 0;
        for part in parts() {
            data.extend_from_slice(&part.data);
            steps += part.shape.first().copied().unwrap_or(0);
        }
        let mut shape = first.shape.clone();
        shape[0] = steps;
        Tensor {
            dtype: first.dtype,
            shape,
            data: Bytes::from(data),
        }
    }
}

impl Sequence {
    /// Steps in the sequence, as its per-step scalars count them.
    pub fn num_steps(&self) -> usize {
        self.rewards.len()
    }

    /// Steps `range` of every per-step field; `actor_id` and `run_id` are
    /// kept, the per-item fields (`initial_state`, `priority`) are left unset.
    ///
    /// # Panics
    /// If `range` goes past the sequence's steps.
    pub fn slice_steps(&self, range: Range<usize>) -> Sequence {
        let slice = |t: &Option<Tensor>| t.as_ref().map(|t| t.slice_steps(range.clone()));
        Sequence {
            observations: slice(&self.observations),
            actions: slice(&self.actions),
            rewards: self.rewards[range.clone()].to_vec(),
            is_first: self.is_first[range.clone()].to_vec(),
            terminated: self.terminated[range.clone()].to_vec(),
            truncated: self.truncated[range.clone()].to_vec(),
            behaviour_logits: slice(&self.behaviour_logits),
            behaviour_versions: self.behaviour_versions[range.clone()].to_vec(),
            initial_state: None,
            actor_id: self.actor_id,
            priority: 0.0,
            run_id: self.run_id,
        }
    }

    /// The per-step fields of `first` then `rest` one after the other; the
    /// per-item fields come from `first`.
    pub fn concat_steps(first: &Sequence, rest: &[&Sequence]) -> Sequence {
        let tensors = |field: fn(&Sequence) -> &Option<Tensor>| {
            let first = field(first).as_ref()?;
            let rest: Option<Vec<&Tensor>> = rest.iter().map(|p| field(p).as_ref()).collect();
            Some(Tensor::concat_steps(first, &rest?))
        };
        fn joined<T: Clone>(first: &Sequence, rest: &[&Sequence], field: fn(&Sequence) -> &Vec<T>) -> Vec<T> {
            std::iter::once(first)
                .chain(rest.iter().copied())
                .flat_map(|p| field(p).iter().cloned())
                .collect()
        }
        Sequence {
            observations: tensors(|s| &s.observations),
            actions: tensors(|s| &s.actions),
            rewards: joined(first, rest, |s| &s.rewards),
            is_first: joined(first, rest, |s| &s.is_first),
            terminated: joined(first, rest, |s| &s.terminated),
            truncated: joined(first, rest, |s| &s.truncated),
            behaviour_logits: tensors(|s| &s.behaviour_logits),
            behaviour_versions: joined(first, rest, |s| &s.behaviour_versions),
            initial_state: first.initial_state.clone(),
            actor_id: first.actor_id,
            priority: first.priority,
            run_id: first.run_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(first: usize, steps: usize) -> Sequence {
        let range = first..first + steps;
        let obs: Vec<f32> = range.clone().flat_map(|i| [i as f32, -(i as f32)]).collect();
        let logits: Vec<f32> = range.clone().flat_map(|i| [i as f32, 0.5]).collect();
        Sequence {
            observations: Some(Tensor::from_f32(&[steps, 2], &obs)),
            actions: Some(Tensor::from_i64(
                &[steps],
                &range.clone().map(|i| (i % 2) as i64).collect::<Vec<_>>(),
            )),
            rewards: range.clone().map(|i| i as f32).collect(),
            is_first: range.clone().map(|i| i % 5 == 0).collect(),
            terminated: range.clone().map(|i| i % 5 == 4).collect(),
            truncated: vec![false; steps],
            behaviour_logits: Some(Tensor::from_f32(&[steps, 2], &logits)),
            behaviour_versions: range.map(|i| i as u64).collect(),
            initial_state: None,
            actor_id: 3,
            priority: 0.0,
            run_id: 7,
        }
    }

    #[test]
    fn slices_join_back_into_the_whole() {
        let whole = sequence(10, 9);
        let parts = [whole.slice_steps(0..4), whole.slice_steps(4..5), whole.slice_steps(5..9)];
        assert_eq!(parts[0], sequence(10, 4));
        assert_eq!(parts[2], sequence(15, 4));
        assert_eq!(Sequence::concat_steps(&parts[0], &[&parts[1], &parts[2]]), whole);
    }

    #[test]
    fn slicing_shares_the_bytes() {
        let whole = sequence(0, 6);
        let part = whole.slice_steps(2..5);
        let (w, p) = (
            &whole.observations.as_ref().unwrap().data,
            &part.observations.as_ref().unwrap().data,
        );
        assert_eq!(p.as_ptr(), w[2 * 8..].as_ptr());
        assert_eq!(part.observations.as_ref().unwrap().shape, vec![3, 2]);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn slicing_past_the_end_panics() {
        sequence(0, 3).observations.unwrap().slice_steps(1..4);
    }
}
