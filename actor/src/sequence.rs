//! Cutting one environment's stream of steps into fixed-length sequences.
//!
//! A sequence has `length = unroll_length + 1` steps; its last step is the
//! bootstrap step and is kept as the first step of the next sequence, so
//! consecutive sequences overlap by exactly one step. This is a plain data
//! structure (no I/O): the actor feeds it one step at a time. A finished
//! sequence knows its overlap with the previous one, so the insert stream can
//! leave the shared steps out (replay stores them once).

use fleet_proto::pb;

/// Everything recorded about one step of one environment.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord<'a> {
    pub observation: &'a [f32],
    pub action: i64,
    pub reward: f32,
    pub is_first: bool,
    pub terminated: bool,
    pub truncated: bool,
    pub behaviour_logits: &'a [f32],
    pub behaviour_version: u64,
}

/// A sequence ready for replay, with what lets replay share its first steps
/// with the previous sequence of the same writer.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The environment's writer id, unique within the actor.
    pub writer: u64,
    /// Leading steps that repeat the end of the writer's previous sequence
    /// (0 for its first).
    pub overlap: usize,
    pub sequence: pb::Sequence,
}

impl Finished {
    /// The insert request for `table`: the whole sequence, or, when replay
    /// holds the writer's previous sequence from this insert stream
    /// (`continued`), only the steps after the overlap.
    pub fn request(&self, table: &str, continued: bool) -> pb::InsertRequest {
        let (overlap, sequence) = if continued && self.overlap > 0 {
            let mut rest = self.sequence.slice_steps(self.overlap..self.sequence.num_steps());
            rest.initial_state = self.sequence.initial_state.clone();
            rest.priority = self.sequence.priority;
            (self.overlap, rest)
        } else {
            (0, self.sequence.clone())
        };
        pb::InsertRequest {
            table: table.to_owned(),
            sequence: Some(sequence),
            writer: self.writer,
            overlap: overlap as u32,
            also_tables: Vec::new(),
        }
    }
}

/// Accumulates the steps of one environment and emits overlapping sequences.
#[derive(Debug)]
pub struct SequenceWriter {
    writer: u64,
    /// Sequences emitted so far; all but the first overlap their predecessor.
    emitted: u64,
    length: usize,
    observation_size: usize,
    num_actions: usize,
    actor_id: u64,
    observations: Vec<f32>,
    actions: Vec<i64>,
    rewards: Vec<f32>,
    is_first: Vec<bool>,
    terminated: Vec<bool>,
    truncated: Vec<bool>,
    logits: Vec<f32>,
    versions: Vec<u64>,
}

impl SequenceWriter {
    /// `length` is the number of steps per sequence (unroll + 1), at least 2;
    /// `writer` names this environment's stream of sequences.
    pub fn new(length: usize, observation_size: usize, num_actions: usize, actor_id: u64, writer: u64) -> Self {
        assert!(length >= 2, "a sequence needs at least one learning step and a bootstrap step");
        Self {
            writer,
            emitted: 0,
            length,
            observation_size,
            num_actions,
            actor_id,
            observations: Vec::with_capacity(length * observation_size),
            actions: Vec::with_capacity(length),
            rewards: Vec::with_capacity(length),
            is_first: Vec::with_capacity(length),
            terminated: Vec::with_capacity(length),
            truncated: Vec::with_capacity(length),
            logits: Vec::with_capacity(length * num_actions),
            versions: Vec::with_capacity(length),
        }
    }

    /// Steps held now (fewer than `length`).
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Appends a step; returns a finished sequence when this step completes one.
    pub fn push(&mut self, step: &StepRecord<'_>) -> Option<Finished> {
        assert_eq!(step.observation.len(), self.observation_size, "observation size");
        assert_eq!(step.behaviour_logits.len(), self.num_actions, "logit count");
        self.observations.extend_from_slice(step.observation);
        self.actions.push(step.action);
        self.rewards.push(step.reward);
        self.is_first.push(step.is_first);
        self.terminated.push(step.terminated);
        self.truncated.push(step.truncated);
        self.logits.extend_from_slice(step.behaviour_logits);
        self.versions.push(step.behaviour_version);
        if self.actions.len() < self.length {
            return None;
        }
        let t = self.length;
        let sequence = pb::Sequence {
            observations: Some(pb::Tensor::from_f32(&[t, self.observation_size], &self.observations)),
            actions: Some(pb::Tensor::from_i64(&[t], &self.actions)),
            rewards: self.rewards.clone(),
            is_first: self.is_first.clone(),
            terminated: self.terminated.clone(),
            truncated: self.truncated.clone(),
            behaviour_logits: Some(pb::Tensor::from_f32(&[t, self.num_actions], &self.logits)),
            behaviour_versions: self.versions.clone(),
            initial_state: None,
            actor_id: self.actor_id,
            priority: 0.0,
        };
        self.keep_last_step();
        let overlap = if self.emitted == 0 { 0 } else { 1 };
        self.emitted += 1;
        Some(Finished {
            writer: self.writer,
            overlap,
            sequence,
        })
    }

    /// Drops all but the last step, which opens the next sequence.
    fn keep_last_step(&mut self) {
        let last = self.length - 1;
        self.observations.drain(..last * self.observation_size);
        self.logits.drain(..last * self.num_actions);
        for v in [&mut self.is_first, &mut self.terminated, &mut self.truncated] {
            v.drain(..last);
        }
        self.actions.drain(..last);
        self.rewards.drain(..last);
        self.versions.drain(..last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_step(w: &mut SequenceWriter, i: usize) -> Option<Finished> {
        let obs = [i as f32, -(i as f32)];
        let logits = [0.1 * i as f32, 0.0, 1.0];
        w.push(&StepRecord {
            observation: &obs,
            action: (i % 3) as i64,
            reward: i as f32,
            is_first: i.is_multiple_of(7),
            terminated: i % 7 == 6,
            truncated: false,
            behaviour_logits: &logits,
            behaviour_version: i as u64 / 4,
        })
    }

    #[test]
    fn sequences_overlap_by_their_bootstrap_step() {
        let mut w = SequenceWriter::new(5, 2, 3, 9, 4);
        let mut finished = Vec::new();
        for i in 0..13 {
            if let Some(s) = push_step(&mut w, i) {
                finished.push(s);
            }
        }
        assert_eq!(
            finished.iter().map(|f| (f.writer, f.overlap)).collect::<Vec<_>>(),
            vec![(4, 0), (4, 1), (4, 1)]
        );
        let out: Vec<pb::Sequence> = finished.iter().map(|f| f.sequence.clone()).collect();
        // Steps 0..=4, 4..=8, 8..=12.
        assert_eq!(out.len(), 3);
        for (k, s) in out.iter().enumerate() {
            let first = 4 * k;
            let expected: Vec<f32> = (first..first + 5).map(|i| i as f32).collect();
            assert_eq!(s.rewards, expected);
            let obs = s.observations.as_ref().unwrap().to_f32().unwrap();
            assert_eq!(obs.len(), 10);
            assert_eq!(obs[0], first as f32);
            assert_eq!(obs[9], -((first + 4) as f32));
            assert_eq!(s.actions.as_ref().unwrap().to_i64().unwrap()[4], ((first + 4) % 3) as i64);
            assert_eq!(s.behaviour_logits.as_ref().unwrap().dims(), vec![5, 3]);
            assert_eq!(s.is_first, (first..first + 5).map(|i| i % 7 == 0).collect::<Vec<_>>());
            assert_eq!(s.terminated, (first..first + 5).map(|i| i % 7 == 6).collect::<Vec<_>>());
            assert_eq!(s.behaviour_versions, (first..first + 5).map(|i| i as u64 / 4).collect::<Vec<_>>());
            assert_eq!(s.actor_id, 9);
        }
        assert_eq!(w.len(), 1);
    }
}

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn continued_requests_leave_out_the_overlap() {
        let mut w = SequenceWriter::new(3, 1, 2, 0, 7);
        let mut finished = Vec::new();
        for i in 0..5 {
            let record = StepRecord {
                observation: &[i as f32],
                action: 0,
                reward: i as f32,
                is_first: i == 0,
                terminated: false,
                truncated: false,
                behaviour_logits: &[0.0, 0.0],
                behaviour_version: 1,
            };
            finished.extend(w.push(&record));
        }
        let second = &finished[1];
        let whole = second.request("t", false);
        assert_eq!(
            (whole.overlap, whole.sequence.as_ref().unwrap().rewards.clone()),
            (0, vec![2.0, 3.0, 4.0])
        );
        let rest = second.request("t", true);
        assert_eq!((rest.writer, rest.overlap), (7, 1));
        assert_eq!(rest.sequence.as_ref().unwrap().rewards, vec![3.0, 4.0]);
        assert_eq!(
            rest.sequence.as_ref().unwrap().observations.as_ref().unwrap().to_f32().unwrap(),
            vec![3.0, 4.0]
        );
        assert_eq!(finished[0].request("t", true).overlap, 0, "a first sequence has nothing to share");
    }
}
