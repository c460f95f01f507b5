//! Cutting one environment's stream of steps into fixed-length sequences.
//!
//! A sequence has `length = burn_in + unroll_length + 1` steps and a new one
//! starts every `period` steps, so consecutive sequences share `length −
//! period` steps (at least the bootstrap step, which opens the next one).
//! With a recurrent core each sequence carries the state the actor had at
//! its first step. This is a plain data structure (no I/O): the actor feeds
//! it one step at a time. A finished sequence knows its overlap with the
//! previous one, so the insert stream can leave the shared steps out (replay
//! stores them once). Observations are kept and sent in the type the
//! environment wrote them in, as the trajectory contract says: u8 frames
//! (`[L, C, H, W]`), f32 vectors (`[L, observation_size]`).

use fleet_agent::EnvSpec;
use fleet_proto::pb;
use fleet_trajectory::{Action, ActionSpec, Actions, Observations, ObservationsRef, StateSpec};

/// Everything recorded about one step of one environment.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord<'a> {
    pub observation: ObservationsRef<'a>,
    /// As the policy chose it (for a squashed Gaussian, the sample before tanh).
    pub action: Action<'a>,
    pub reward: f32,
    pub is_first: bool,
    pub terminated: bool,
    pub truncated: bool,
    pub behaviour_logits: &'a [f32],
    pub behaviour_version: u64,
    /// The recurrent state the policy acted from at this step, in the
    /// contract's flat layout (empty without a core).
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
    spec: EnvSpec,
    /// What a stored state is, `None` without a recurrent core.
    state: Option<StateSpec>,
    actor_id: u64,
    /// The actor process start that writes these steps (see
    /// [`SequenceWriter::with_run_id`]); 0 until set.
    run_id: u64,
    /// Per step, `state.width()` values.
    states: Vec<f32>,
    observations: Observations,
    actions: Actions,
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
    /// each step comes with a recurrent state of `state`'s layout (`None`:
    /// no state); `writer` names this environment's stream of sequences.
    pub fn new(length: usize, period: usize, spec: EnvSpec, state: Option<StateSpec>, actor_id: u64, writer: u64) -> Self {
        assert!(length >= 2, "a sequence needs at least one learning step and a bootstrap step");
        assert!(
            (1..length).contains(&period),
            "consecutive sequences must share at least the bootstrap step"
        );
        Self {
            writer,
            emitted: 0,
            length,
            period,
            spec,
            state,
            actor_id,
            run_id: 0,
            states: Vec::with_capacity(length * state.map_or(0, |s| s.width())),
            observations: Observations::with_capacity(&spec.observation, length * spec.observation_size()),
            actions: Actions::empty(spec.action),
            rewards: Vec::with_capacity(length),
            is_first: Vec::with_capacity(length),
            terminated: Vec::with_capacity(length),
            truncated: Vec::with_capacity(length),
            logits: Vec::with_capacity(length * spec.policy_width()),
            versions: Vec::with_capacity(length),
        }
    }

    /// Marks every sequence this writer emits with `run_id`, the actor
    /// process start that acts in its environment: replay then never takes
    /// them for a continuation of another start's steps.
    pub fn with_run_id(mut self, run_id: u64) -> Self {
        self.run_id = run_id;
        self
    }

    /// Steps held now (fewer than `length`).
    pub fn len(&self) -> usize {
        self.rewards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty()
    }

    /// Steps held that no emitted sequence contains: all of them before the
    /// first sequence, afterwards those past the overlap the previous one
    /// ended with. An actor that stops loses these (fewer than `length`
    /// before the first sequence, fewer than `period` after).
    pub fn unsent_steps(&self) -> usize {
        if self.emitted == 0 {
            self.len()
        } else {
            self.len() - (self.length - self.period)
        }
    }

    /// Appends a step; returns a finished sequence when this step completes one.
    pub fn push(&mut self, step: &StepRecord<'_>) -> Option<Finished> {
        assert_eq!(step.observation.len(), self.spec.observation_size(), "observation size");
        assert_eq!(step.behaviour_logits.len(), self.spec.policy_width(), "logit count");
        assert_eq!(step.state.len(), self.state_width(), "state size");
        self.states.extend_from_slice(step.state);
        self.observations.extend_from(step.observation);
        self.actions.push(step.action);
        self.rewards.push(step.reward);
        self.is_first.push(step.is_first);
        self.terminated.push(step.terminated);
        self.truncated.push(step.truncated);
        self.logits.extend_from_slice(step.behaviour_logits);
        self.versions.push(step.behaviour_version);
        if self.len() < self.length {
            return None;
        }
        let t = self.length;
        let observation_shape: Vec<usize> = [t].into_iter().chain(self.spec.observation.shape()).collect();
        let sequence = pb::Sequence {
            observations: Some(pb::Tensor::from_observations(&observation_shape, self.observations.as_ref())),
            actions: Some(match (&self.actions, self.spec.action) {
                (Actions::Discrete(indices), _) => pb::Tensor::from_i64(&[t], &indices.iter().map(|&a| a as i64).collect::<Vec<_>>()),
                (Actions::Continuous { values, .. }, ActionSpec::Continuous { dims }) => pb::Tensor::from_f32(&[t, dims], values),
                (actions, spec) => unreachable!("{actions:?} kept for {spec}"),
            }),
            rewards: self.rewards.clone(),
            is_first: self.is_first.clone(),
            terminated: self.terminated.clone(),
            truncated: self.truncated.clone(),
            behaviour_logits: Some(pb::Tensor::from_f32(&[t, self.spec.policy_width()], &self.logits)),
            behaviour_versions: self.versions.clone(),
            initial_state: self
                .state
                .map(|state| pb::Tensor::from_f32(&state.shape(), &self.states[..state.width()])),
            actor_id: self.actor_id,
            priority: 0.0,
            run_id: self.run_id,
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

    fn state_width(&self) -> usize {
        self.state.map_or(0, |s| s.width())
    }

    /// Drops the first `period` steps; the rest open the next sequence.
    fn drop_first_steps(&mut self) {
        let n = self.period;
        self.observations.drain_front(n * self.spec.observation_size());
        self.logits.drain(..n * self.spec.policy_width());
        self.states.drain(..n * self.state_width());
        for v in [&mut self.is_first, &mut self.terminated, &mut self.truncated] {
            v.drain(..n);
        }
        self.actions.drain_front(n);
        self.rewards.drain(..n);
        self.versions.drain(..n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_step(w: &mut SequenceWriter, i: usize) -> Option<Finished> {
        let obs = [i as f32, -(i as f32)];
        let logits = [0.1 * i as f32, 0.0, 1.0];
        w.push(&StepRecord {
            observation: ObservationsRef::F32(&obs),
            action: Action::Discrete(i % 3),
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
        let mut w = SequenceWriter::new(5, 4, EnvSpec::vector(2, 3), None, 9, 4).with_run_id(0xfeed);
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
            assert_eq!((s.actor_id, s.run_id), (9, 0xfeed));
        }
        assert_eq!(w.len(), 1);
        assert_eq!(w.unsent_steps(), 0, "the held step closed the last sequence");
        push_step(&mut w, 13);
        assert_eq!(w.unsent_steps(), 1);
    }
}

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn continued_requests_leave_out_the_overlap() {
        let mut w = SequenceWriter::new(3, 2, EnvSpec::vector(1, 2), None, 0, 7);
        let mut finished = Vec::new();
        for i in 0..5 {
            let record = StepRecord {
                observation: ObservationsRef::F32(&[i as f32]),
                action: Action::Discrete(0),
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
        let mut w = SequenceWriter::new(length, period, EnvSpec::vector(1, 2), Some(StateSpec::Lstm { hidden: 2 }), 5, 0);
        let state_at = |i: usize| -> Vec<f32> { (0..4).map(|k| (i * 10 + k) as f32).collect() };
        let mut finished = Vec::new();
        for i in 0..20 {
            let state = state_at(i);
            let record = StepRecord {
                observation: ObservationsRef::F32(&[i as f32]),
                action: Action::Discrete(i % 2),
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
    use fleet_trajectory::FrameShape;

    use super::*;

    const FRAME: FrameShape = FrameShape {
        channels: 2,
        height: 3,
        width: 2,
    };

    /// Every intensity 0..=255 appears somewhere, and each step's frame differs.
    fn frame_at(i: usize) -> Vec<u8> {
        (0..FRAME.size()).map(|k| ((i * 12 + k) % 256) as u8).collect()
    }

    #[test]
    fn frames_are_stored_as_u8_and_round_trip_exactly() {
        let (length, period) = (4, 2);
        let mut w = SequenceWriter::new(length, period, EnvSpec::frames(FRAME, 3), None, 1, 0);
        let mut finished = Vec::new();
        for i in 0..60 {
            let frame = frame_at(i);
            let record = StepRecord {
                observation: ObservationsRef::U8(&frame),
                action: Action::Discrete(0),
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
            let expected: Vec<u8> = (k * period..k * period + length).flat_map(frame_at).collect();
            assert_eq!(bytes, expected, "sequence {k}");
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
