//! Cutting one environment's stream of steps into fixed-length sequences.
//!
//! A sequence has `length = burn_in + unroll_length + 1` steps and a new one
//! starts every `period` steps, so consecutive sequences share `length −
//! period` steps (at least the bootstrap step, which opens the next one).
//! With a recurrent core each sequence carries the state the actor had at
//! its first step. This is a plain data structure (no I/O): the actor feeds
//! it one step at a time. A finished sequence knows its overlap with the
//! previous one, so the insert stream can leave the shared steps out (replay
//! stores them once). Image observations are kept and sent as u8 (`[L, C,
//! H, W]`): their values are whole intensities, so this loses nothing and
//! takes a quarter of the bytes; vectors stay f32 (`[L, observation_size]`).

use fleet_agent::{EnvSpec, FrameShape};
use fleet_proto::pb;

/// Everything recorded about one step of one environment.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord<'a> {
    /// For frames, intensities 0..=255 (whole numbers).
    pub observation: &'a [f32],
    pub action: i64,
    pub reward: f32,
    pub is_first: bool,
    pub terminated: bool,
    pub truncated: bool,
    pub behaviour_logits: &'a [f32],
    pub behaviour_version: u64,
    /// The recurrent state the policy acted from at this step (`h` then `c`;
    /// empty without a core).
    pub state: &'a [f32],
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
    period: usize,
    observation_size: usize,
    /// Set for image observations, which are kept as u8.
    frame: Option<FrameShape>,
    num_actions: usize,
    state_size: usize,
    actor_id: u64,
    /// Per step, `state_size` values.
    states: Vec<f32>,
    observations: ObservationBuffer,
    actions: Vec<i64>,
    rewards: Vec<f32>,
    is_first: Vec<bool>,
    terminated: Vec<bool>,
    truncated: Vec<bool>,
    logits: Vec<f32>,
    versions: Vec<u64>,
}

impl SequenceWriter {
    /// `length` is the number of steps per sequence (burn-in + unroll + 1),
    /// at least 2; a sequence starts every `period` steps (`1..length`);
    /// `state_size` values of recurrent state come with each step (0: none);
    /// `writer` names this environment's stream of sequences.
    pub fn new(length: usize, period: usize, spec: EnvSpec, state_size: usize, actor_id: u64, writer: u64) -> Self {
        assert!(length >= 2, "a sequence needs at least one learning step and a bootstrap step");
        assert!(
            (1..length).contains(&period),
            "consecutive sequences must share at least the bootstrap step"
        );
        let (observation_size, num_actions) = (spec.observation_size, spec.num_actions);
        let values = length * observation_size;
        Self {
            writer,
            emitted: 0,
            length,
            period,
            observation_size,
            frame: spec.frame,
            num_actions,
            state_size,
            actor_id,
            states: Vec::with_capacity(length * state_size),
            observations: match spec.frame {
                Some(_) => ObservationBuffer::U8(Vec::with_capacity(values)),
                None => ObservationBuffer::F32(Vec::with_capacity(values)),
            },
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
        assert_eq!(step.state.len(), self.state_size, "state size");
        self.states.extend_from_slice(step.state);
        self.observations.push(step.observation);
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
            observations: Some(self.observations.tensor(t, self.observation_size, self.frame)),
            actions: Some(pb::Tensor::from_i64(&[t], &self.actions)),
            rewards: self.rewards.clone(),
            is_first: self.is_first.clone(),
            terminated: self.terminated.clone(),
            truncated: self.truncated.clone(),
            behaviour_logits: Some(pb::Tensor::from_f32(&[t, self.num_actions], &self.logits)),
            behaviour_versions: self.versions.clone(),
            initial_state: (self.state_size > 0).then(|| pb::Tensor::from_f32(&[2, self.state_size / 2], &self.states[..self.state_size])),
            actor_id: self.actor_id,
            priority: 0.0,
        };
        self.drop_first_steps();
        let overlap = if self.emitted == 0 { 0 } else { self.length - self.period };
        self.emitted += 1;
        Some(Finished {
            writer: self.writer,
            overlap,
            sequence,
        })
    }

    /// Drops the first `period` steps; the rest open the next sequence.
    fn drop_first_steps(&mut self) {
        let n = self.period;
        self.observations.drop_first(n * self.observation_size);
        self.logits.drain(..n * self.num_actions);
        self.states.drain(..n * self.state_size);
        for v in [&mut self.is_first, &mut self.terminated, &mut self.truncated] {
            v.drain(..n);
        }
        self.actions.drain(..n);
        self.rewards.drain(..n);
        self.versions.drain(..n);
    }
}

/// Observations as they are stored and sent.
#[derive(Debug)]
enum ObservationBuffer {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl ObservationBuffer {
    fn push(&mut self, observation: &[f32]) {
        match self {
            Self::F32(values) => values.extend_from_slice(observation),
            Self::U8(values) => values.extend(observation.iter().map(|&v| {
                debug_assert!(v == v.round() && (0.0..=255.0).contains(&v), "pixel intensity {v}");
                v as u8
            })),
        }
    }

    /// The first `steps` steps as a tensor: `[steps, C, H, W]` u8 for
    /// frames, `[steps, observation_size]` f32 otherwise.
    fn tensor(&self, steps: usize, observation_size: usize, frame: Option<FrameShape>) -> pb::Tensor {
        match (self, frame) {
            (Self::U8(values), Some(f)) => pb::Tensor::from_u8(&[steps, f.channels, f.height, f.width], values.clone()),
            (Self::U8(values), None) => pb::Tensor::from_u8(&[steps, observation_size], values.clone()),
            (Self::F32(values), _) => pb::Tensor::from_f32(&[steps, observation_size], values),
        }
    }

    fn drop_first(&mut self, values: usize) {
        match self {
            Self::F32(v) => drop(v.drain(..values)),
            Self::U8(v) => drop(v.drain(..values)),
        }
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
            state: &[],
        })
    }

    #[test]
    fn sequences_overlap_by_their_bootstrap_step() {
        let mut w = SequenceWriter::new(5, 4, EnvSpec::vector(2, 3), 0, 9, 4);
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
        let mut w = SequenceWriter::new(3, 2, EnvSpec::vector(1, 2), 0, 0, 7);
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
                state: &[],
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

#[cfg(test)]
mod overlap_tests {
    use super::*;

    /// Burn-in 3, unroll 4, period 2: sequences of 8 steps every 2 steps,
    /// each carrying exactly the state the actor had at its first step.
    #[test]
    fn overlapping_sequences_carry_the_state_at_their_first_step() {
        let (length, period) = (3 + 4 + 1, 2);
        let mut w = SequenceWriter::new(length, period, EnvSpec::vector(1, 2), 4, 5, 0);
        let state_at = |i: usize| -> Vec<f32> { (0..4).map(|k| (i * 10 + k) as f32).collect() };
        let mut finished = Vec::new();
        for i in 0..20 {
            let state = state_at(i);
            let record = StepRecord {
                observation: &[i as f32],
                action: (i % 2) as i64,
                reward: i as f32,
                is_first: i == 0 || i == 11,
                terminated: i == 10,
                truncated: false,
                behaviour_logits: &[0.0, 1.0],
                behaviour_version: i as u64,
                state: &state,
            };
            finished.extend(w.push(&record));
        }
        // Sequences start at steps 0, 2, 4, ..., 12 (the last ends at 19).
        assert_eq!(finished.len(), 7);
        for (k, f) in finished.iter().enumerate() {
            let first = k * period;
            assert_eq!(f.overlap, if k == 0 { 0 } else { length - period });
            assert_eq!(f.sequence.rewards, (first..first + length).map(|i| i as f32).collect::<Vec<_>>());
            assert_eq!(
                f.sequence.is_first,
                (first..first + length).map(|i| i == 0 || i == 11).collect::<Vec<_>>()
            );
            assert_eq!(
                f.sequence.terminated,
                (first..first + length).map(|i| i == 10).collect::<Vec<_>>(),
                "episode ends are marked, not cut"
            );
            let state = f.sequence.initial_state.as_ref().unwrap();
            assert_eq!(state.dims(), vec![2, 2]);
            assert_eq!(
                state.to_f32().unwrap(),
                state_at(first),
                "sequence {k} stores the state at step {first}"
            );
        }
        assert_eq!(w.len(), length - period);
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;

    const FRAME: FrameShape = FrameShape {
        channels: 2,
        height: 3,
        width: 2,
    };

    /// Every intensity 0..=255 appears somewhere, and each step's frame differs.
    fn frame_at(i: usize) -> Vec<f32> {
        (0..FRAME.size()).map(|k| ((i * 12 + k) % 256) as f32).collect()
    }

    #[test]
    fn frames_are_stored_as_u8_and_round_trip_exactly() {
        let (length, period) = (4, 2);
        let mut w = SequenceWriter::new(length, period, EnvSpec::frames(FRAME, 3), 0, 1, 0);
        let mut finished = Vec::new();
        for i in 0..60 {
            let frame = frame_at(i);
            let record = StepRecord {
                observation: &frame,
                action: 0,
                reward: 0.0,
                is_first: i == 0,
                terminated: false,
                truncated: false,
                behaviour_logits: &[0.0, 0.0, 0.0],
                behaviour_version: 0,
                state: &[],
            };
            finished.extend(w.push(&record));
        }
        let mut seen = [false; 256];
        for (k, f) in finished.iter().enumerate() {
            let observations = f.sequence.observations.as_ref().unwrap();
            assert_eq!(observations.dims(), vec![length, 2, 3, 2]);
            assert_eq!(observations.data.len(), length * FRAME.size(), "one byte per pixel");
            let bytes = observations.as_u8().unwrap();
            let expected: Vec<f32> = (k * period..k * period + length).flat_map(frame_at).collect();
            let back: Vec<f32> = bytes.iter().map(|&b| f32::from(b)).collect();
            assert_eq!(back, expected, "sequence {k}");
            for &b in bytes {
                seen[b as usize] = true;
            }
            // The overlap-free request slices the u8 steps too.
            let rest = f.request("t", true).sequence.unwrap();
            let rest_obs = rest.observations.unwrap();
            assert_eq!(rest_obs.dims()[0], length - f.overlap);
            assert_eq!(rest_obs.as_u8().unwrap(), &bytes[f.overlap * FRAME.size()..]);
        }
        assert!(seen.iter().all(|&s| s), "every intensity survives");
    }
}
