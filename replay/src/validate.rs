//! Checks one incoming [`pb::Sequence`] before anything of it is stored,
//! the one place a sequence is validated: its tensors describe an item of
//! the trajectory contract (its [`Signature`], which a table compares with
//! the one its first item fixed), byte counts and per-step lengths agree
//! with the step count `T`, every float the learner will compute with is
//! finite, and discrete actions index a logit. Downstream code (the
//! learner's batches) trusts what passed here.
//!
//! This is a pure function of the message. It does not check the meaning of
//! step flags across steps (episode boundaries are the learner's business);
//! `terminated` and `truncated` may both be set.

use fleet_proto::pb;
use fleet_proto::{SignatureError, TensorError};
pub use fleet_trajectory::Signature;
use fleet_trajectory::{ActionSpec, Dtype};

/// Why a sequence was rejected. Every message names the field at fault.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{0}")]
    Shape(#[from] SignatureError),
    #[error("{field}: {source}")]
    Tensor { field: &'static str, source: TensorError },
    #[error("sequence has {0} steps; at least {1} are needed (a whole item needs steps to learn from plus a bootstrap step)")]
    TooShort(usize, usize),
    #[error("{field} has {found} entries but observations have {steps} steps")]
    Length { field: &'static str, found: usize, steps: usize },
    #[error("{field}{location} is {value}")]
    NonFinite { field: &'static str, location: String, value: f32 },
    #[error("actions[{step}] is {value}; expected an action in 0..{num_actions}")]
    ActionOutOfRange { step: usize, value: i64, num_actions: usize },
    #[error("priority is {0}; expected a finite number >= 0")]
    Priority(f64),
    #[error("{0}")]
    Overlap(String),
}

/// Checks a whole item's `sequence` (at least 2 steps) and returns its signature.
pub fn validate_sequence(sequence: &pb::Sequence) -> Result<Signature, ValidationError> {
    validate_steps(sequence, 2)
}

/// Checks `sequence` as [`validate_sequence`] does, but asks for only
/// `min_steps` steps: the new steps that continue an item whose first steps
/// the service already holds.
pub fn validate_steps(sequence: &pb::Sequence, min_steps: usize) -> Result<Signature, ValidationError> {
    let (steps, signature) = fleet_proto::signature(sequence)?;
    if steps < min_steps {
        return Err(ValidationError::TooShort(steps, min_steps));
    }
    let observations = with_whole_bytes("observations", &sequence.observations)?;
    let actions = with_whole_bytes("actions", &sequence.actions)?;
    let logits = with_whole_bytes("behaviour_logits", &sequence.behaviour_logits)?;

    // Per-step scalars.
    let lengths = [
        ("rewards", sequence.rewards.len()),
        ("is_first", sequence.is_first.len()),
        ("terminated", sequence.terminated.len()),
        ("truncated", sequence.truncated.len()),
        ("behaviour_versions", sequence.behaviour_versions.len()),
    ];
    for (field, found) in lengths {
        if found != steps {
            return Err(ValidationError::Length { field, found, steps });
        }
    }

    // Actions: discrete ones index a logit (padding at last steps included,
    // so the learner can gather without special cases); continuous ones are
    // finite.
    let f32_values = |field: &'static str, t: &pb::Tensor| t.to_f32().map_err(|source| ValidationError::Tensor { field, source });
    match signature.env.action {
        ActionSpec::Discrete { num_actions } => {
            let values = actions
                .to_i64()
                .map_err(|source| ValidationError::Tensor { field: "actions", source })?;
            if let Some((step, &value)) = values.iter().enumerate().find(|&(_, &a)| a < 0 || a >= num_actions as i64) {
                return Err(ValidationError::ActionOutOfRange { step, value, num_actions });
            }
        }
        ActionSpec::Continuous { dims } => check_finite_steps("actions", &f32_values("actions", actions)?, dims)?,
    }

    // Finiteness of everything the learner computes with.
    check_finite_steps("rewards", &sequence.rewards, 1)?;
    check_finite_steps(
        "behaviour_logits",
        &f32_values("behaviour_logits", logits)?,
        signature.env.policy_width(),
    )?;
    if signature.env.observation_dtype() == Dtype::F32 {
        let values = f32_values("observations", observations)?;
        check_finite_steps("observations", &values, signature.env.observation_size())?;
    }
    if let Some(state) = &sequence.initial_state {
        check_initial_state(state)?;
    }

    if !(sequence.priority.is_finite() && sequence.priority >= 0.0) {
        return Err(ValidationError::Priority(sequence.priority));
    }
    Ok(signature)
}

/// The tensor `field`, whose byte count must match its shape.
fn with_whole_bytes<'a>(field: &'static str, tensor: &'a Option<pb::Tensor>) -> Result<&'a pb::Tensor, ValidationError> {
    let tensor = tensor.as_ref().ok_or(SignatureError::Missing(field))?;
    tensor.check_bytes().map_err(|source| ValidationError::Tensor { field, source })?;
    Ok(tensor)
}

/// Checks a stored recurrent state's bytes and values: f32 of the right
/// byte count, all finite (its shape is part of the signature).
pub fn check_initial_state(state: &pb::Tensor) -> Result<(), ValidationError> {
    let values = state.to_f32().map_err(|source| ValidationError::Tensor {
        field: "initial_state",
        source,
    })?;
    match first_non_finite(&values) {
        Some((i, value)) => Err(ValidationError::NonFinite {
            field: "initial_state",
            location: format!("[{i}]"),
            value,
        }),
        None => Ok(()),
    }
}

/// Rejects the first non-finite value of a time-major buffer with
/// `per_step` values per step, naming the step (and the element within the
/// step when there is more than one).
fn check_finite_steps(field: &'static str, values: &[f32], per_step: usize) -> Result<(), ValidationError> {
    let Some((i, value)) = first_non_finite(values) else {
        return Ok(());
    };
    let location = if per_step == 1 {
        format!("[{i}]")
    } else {
        format!("[{}][{}]", i / per_step, i % per_step)
    };
    Err(ValidationError::NonFinite { field, location, value })
}

fn first_non_finite(values: &[f32]) -> Option<(usize, f32)> {
    values.iter().copied().enumerate().find(|(_, v)| !v.is_finite())
}

/// Valid sequences for tests in this crate.
#[cfg(test)]
pub(crate) mod testing {
    use fleet_proto::pb;

    /// A valid CartPole-like sequence of `steps` steps: observations [T, 4]
    /// f32, two actions, no stored state. `seed` makes the contents of
    /// different sequences differ so tests can tell them apart.
    pub(crate) fn cartpole_sequence(steps: usize, seed: u64) -> pb::Sequence {
        let observations: Vec<f32> = (0..steps * 4).map(|i| seed as f32 + i as f32 * 0.01).collect();
        let actions: Vec<i64> = (0..steps).map(|t| ((t as u64 + seed) % 2) as i64).collect();
        let logits: Vec<f32> = (0..steps * 2).map(|i| (i as f32 * 0.1).sin()).collect();
        let mut is_first = vec![false; steps];
        is_first[0] = true;
        pb::Sequence {
            observations: Some(pb::Tensor::from_f32(&[steps, 4], &observations)),
            actions: Some(pb::Tensor::from_i64(&[steps], &actions)),
            rewards: vec![1.0; steps],
            is_first,
            terminated: vec![false; steps],
            truncated: vec![false; steps],
            behaviour_logits: Some(pb::Tensor::from_f32(&[steps, 2], &logits)),
            behaviour_versions: vec![seed; steps],
            initial_state: None,
            actor_id: seed,
            priority: 0.0,
            run_id: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::cartpole_sequence;
    use super::*;

    fn rejected(edit: impl FnOnce(&mut pb::Sequence)) -> String {
        let mut sequence = cartpole_sequence(5, 1);
        edit(&mut sequence);
        validate_sequence(&sequence).expect_err("sequence should be rejected").to_string()
    }

    #[test]
    fn valid_sequence_yields_its_signature() {
        let signature = validate_sequence(&cartpole_sequence(5, 1)).unwrap();
        assert_eq!(
            signature,
            Signature {
                env: fleet_trajectory::EnvSpec::vector(4, 2),
                state: None
            }
        );
        assert_eq!(signature.to_string(), "f32 observations [4], 2 discrete actions, no stored state");
    }

    #[test]
    fn u8_frames_and_initial_state_are_accepted() {
        let mut sequence = cartpole_sequence(3, 0);
        sequence.observations = Some(pb::Tensor::from_u8(&[3, 1, 2, 2], vec![7; 12]));
        sequence.initial_state = Some(pb::Tensor::from_f32(&[2, 8], &[0.5; 16]));
        sequence.terminated[2] = true;
        sequence.truncated[2] = true;
        let signature = validate_sequence(&sequence).unwrap();
        assert_eq!(signature.env.observation.shape(), vec![1, 2, 2]);
        assert_eq!(signature.env.observation_dtype(), Dtype::U8);
        assert_eq!(signature.state, Some(fleet_trajectory::StateSpec::Lstm { hidden: 8 }));
    }

    #[test]
    fn continuous_actions_must_be_finite() {
        let mut sequence = cartpole_sequence(3, 0);
        sequence.actions = Some(pb::Tensor::from_f32(&[3, 1], &[0.5, -0.25, 1.0]));
        assert!(validate_sequence(&sequence).is_ok());
        sequence.actions = Some(pb::Tensor::from_f32(&[3, 1], &[0.5, f32::NAN, 1.0]));
        assert_eq!(validate_sequence(&sequence).unwrap_err().to_string(), "actions[1] is NaN");
    }

    #[test]
    fn missing_tensors_are_named() {
        assert_eq!(rejected(|s| s.observations = None), "observations is missing");
        assert_eq!(rejected(|s| s.actions = None), "actions is missing");
        assert_eq!(rejected(|s| s.behaviour_logits = None), "behaviour_logits is missing");
    }

    #[test]
    fn too_few_steps() {
        let message = validate_sequence(&cartpole_sequence(1, 0)).unwrap_err().to_string();
        assert!(message.contains("1 steps; at least 2"), "{message}");
        let message = rejected(|s| s.observations = Some(pb::Tensor::from_f32(&[], &[1.0])));
        assert!(message.contains("expected f32 [steps, size]"), "{message}");
    }

    #[test]
    fn mismatched_lengths() {
        assert_eq!(
            rejected(|s| {
                s.rewards.pop();
            }),
            "rewards has 4 entries but observations have 5 steps"
        );
        assert_eq!(
            rejected(|s| s.is_first.push(false)),
            "is_first has 6 entries but observations have 5 steps"
        );
        assert!(rejected(|s| s.terminated.clear()).starts_with("terminated has 0 entries"));
        assert!(
            rejected(|s| {
                s.truncated.pop();
            })
            .starts_with("truncated has 4")
        );
        assert!(
            rejected(|s| {
                s.behaviour_versions.pop();
            })
            .starts_with("behaviour_versions has 4")
        );
        let message = rejected(|s| s.actions = Some(pb::Tensor::from_i64(&[4], &[0; 4])));
        assert!(message.starts_with("actions are i64 of shape [4]; expected i64 [5]"), "{message}");
        let message = rejected(|s| s.behaviour_logits = Some(pb::Tensor::from_f32(&[4, 2], &[0.0; 8])));
        assert!(message.starts_with("behaviour_logits has shape [4, 2]"), "{message}");
        let message = rejected(|s| s.behaviour_logits = Some(pb::Tensor::from_f32(&[5, 0], &[])));
        assert!(message.contains("num_actions >= 1"), "{message}");
    }

    #[test]
    fn wrong_byte_counts() {
        let message = rejected(|s| {
            let data = &mut s.observations.as_mut().unwrap().data;
            data.truncate(data.len() - 1);
        });
        assert!(
            message.starts_with("observations: ") && message.contains("needs 80 bytes, got 79"),
            "{message}"
        );
        let message = rejected(|s| {
            let data = &mut s.actions.as_mut().unwrap().data;
            *data = [&data[..], &[0; 8]].concat().into();
        });
        assert!(message.starts_with("actions: ") && message.contains("got 48"), "{message}");
        let message = rejected(|s| {
            let data = &mut s.behaviour_logits.as_mut().unwrap().data;
            data.truncate(data.len() - 1);
        });
        assert!(message.starts_with("behaviour_logits: "), "{message}");
        let message = rejected(|s| {
            let mut state = pb::Tensor::from_f32(&[2, 2], &[0.0; 4]);
            state.data.truncate(12);
            s.initial_state = Some(state);
        });
        assert!(message.starts_with("initial_state: ") && message.contains("got 12"), "{message}");
    }

    #[test]
    fn wrong_dtypes() {
        let message = rejected(|s| s.observations = Some(pb::Tensor::from_i64(&[5, 4], &[0; 20])));
        assert!(message.starts_with("observations are i64 of shape [5, 4]"), "{message}");
        let message = rejected(|s| s.actions = Some(pb::Tensor::from_f32(&[5], &[0.0; 5])));
        assert!(message.starts_with("actions are f32 of shape [5]"), "{message}");
        let message = rejected(|s| s.behaviour_logits = Some(pb::Tensor::from_u8(&[5, 2], vec![0; 10])));
        assert!(message.starts_with("behaviour_logits: "), "{message}");
        let message = rejected(|s| s.initial_state = Some(pb::Tensor::from_u8(&[4], vec![0; 4])));
        assert!(message.starts_with("initial_state is u8 of shape [4]"), "{message}");
        let message = rejected(|s| s.initial_state = Some(pb::Tensor::from_f32(&[3, 4], &[0.0; 12])));
        assert!(message.contains("expected f32 [2, hidden]"), "{message}");
        let message = rejected(|s| s.observations.as_mut().unwrap().dtype = 42);
        assert!(
            message.starts_with("observations: ") && message.contains("unknown dtype"),
            "{message}"
        );
    }

    #[test]
    fn non_finite_values() {
        assert_eq!(rejected(|s| s.rewards[3] = f32::NAN), "rewards[3] is NaN");
        assert_eq!(rejected(|s| s.rewards[0] = f32::NEG_INFINITY), "rewards[0] is -inf");
        assert_eq!(
            rejected(|s| {
                let mut values = s.observations.as_ref().unwrap().to_f32().unwrap();
                values[9] = f32::NAN;
                s.observations = Some(pb::Tensor::from_f32(&[5, 4], &values));
            }),
            "observations[2][1] is NaN"
        );
        assert_eq!(
            rejected(|s| {
                let mut values = s.behaviour_logits.as_ref().unwrap().to_f32().unwrap();
                values[7] = f32::INFINITY;
                s.behaviour_logits = Some(pb::Tensor::from_f32(&[5, 2], &values));
            }),
            "behaviour_logits[3][1] is inf"
        );
        assert_eq!(
            rejected(|s| s.initial_state = Some(pb::Tensor::from_f32(&[2, 2], &[0.0, f32::NAN, 0.0, 0.0]))),
            "initial_state[1] is NaN"
        );
    }

    #[test]
    fn actions_must_index_a_logit() {
        assert_eq!(
            rejected(|s| s.actions = Some(pb::Tensor::from_i64(&[5], &[0, 1, 2, 0, 0]))),
            "actions[2] is 2; expected an action in 0..2"
        );
        assert!(rejected(|s| s.actions = Some(pb::Tensor::from_i64(&[5], &[0, 0, 0, 0, -1]))).starts_with("actions[4] is -1"));
    }

    #[test]
    fn bad_priorities() {
        assert_eq!(rejected(|s| s.priority = -1.0), "priority is -1; expected a finite number >= 0");
        assert!(rejected(|s| s.priority = f64::NAN).starts_with("priority is NaN"));
        assert!(rejected(|s| s.priority = f64::INFINITY).starts_with("priority is inf"));
    }
}
