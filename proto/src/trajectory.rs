//! The trajectory contract on the wire: the element types of
//! [`pb::Tensor`]s as [`Dtype`]s, observations in and out of tensors, and a
//! [`pb::Sequence`]'s [`Signature`] read from the dtypes and shapes of its
//! tensors.
//!
//! [`signature`] looks at shapes only: it is what tells a replay table or a
//! learner which kind of item it holds. Whether the bytes, lengths and
//! values agree with those shapes is the replay service's check, made once
//! when an item arrives.

use fleet_trajectory::{ActionSpec, Dtype, EnvSpec, ObservationSpec, ObservationsRef, Signature, StateSpec};

use crate::TensorError;
use crate::pb::{self, Sequence, Tensor};

impl From<Dtype> for pb::Dtype {
    fn from(dtype: Dtype) -> Self {
        match dtype {
            Dtype::F32 => pb::Dtype::F32,
            Dtype::U8 => pb::Dtype::U8,
            Dtype::I64 => pb::Dtype::I64,
        }
    }
}

impl Tensor {
    /// The element type, rejecting an unspecified or unknown one.
    pub fn element_type(&self) -> Result<Dtype, TensorError> {
        match self.checked_dtype()? {
            pb::Dtype::F32 => Ok(Dtype::F32),
            pb::Dtype::U8 => Ok(Dtype::U8),
            pb::Dtype::I64 => Ok(Dtype::I64),
            pb::Dtype::Unspecified => Err(TensorError::UnknownDType(self.dtype)),
        }
    }

    /// Observations of shape `shape` in the type they come in.
    pub fn from_observations(shape: &[usize], observations: ObservationsRef<'_>) -> Self {
        match observations {
            ObservationsRef::F32(values) => Self::from_f32(shape, values),
            ObservationsRef::U8(values) => Self::from_u8(shape, values.to_vec()),
        }
    }
}

/// Why a sequence's tensors do not describe any item of the contract.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SignatureError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{field}: {source}")]
    Tensor { field: &'static str, source: TensorError },
    #[error("observations are {dtype} of shape {shape:?}; expected f32 [steps, size] or u8 [steps, channels, height, width]")]
    Observations { dtype: Dtype, shape: Vec<u64> },
    #[error("actions are {dtype} of shape {shape:?}; expected i64 [{steps}] (discrete) or f32 [{steps}, dims] (continuous)")]
    Actions { dtype: Dtype, shape: Vec<u64>, steps: usize },
    #[error("behaviour_logits has shape {found:?}; expected [{steps}, {width}] for {action}")]
    Policy {
        found: Vec<u64>,
        steps: usize,
        width: String,
        action: String,
    },
    #[error("initial_state is {dtype} of shape {shape:?}; expected f32 [2, hidden] (an LSTM's h and c)")]
    State { dtype: Dtype, shape: Vec<u64> },
}

/// The sequence's step count and signature, from its tensors' dtypes and
/// shapes alone (see the module doc).
pub fn signature(sequence: &Sequence) -> Result<(usize, Signature), SignatureError> {
    let tensor = |field: &'static str, t: &Option<Tensor>| -> Result<(Dtype, Vec<usize>), SignatureError> {
        let t = t.as_ref().ok_or(SignatureError::Missing(field))?;
        let dtype = t.element_type().map_err(|source| SignatureError::Tensor { field, source })?;
        Ok((dtype, t.dims()))
    };
    let (dtype, dims) = tensor("observations", &sequence.observations)?;
    let observation = match dims.split_first() {
        Some((&steps, shape)) => ObservationSpec::from_tensor(dtype, shape).map(|spec| (steps, spec)),
        None => None,
    };
    let (steps, observation) = observation.ok_or_else(|| SignatureError::Observations {
        dtype,
        shape: dims.iter().map(|&d| d as u64).collect(),
    })?;

    let (dtype, dims) = tensor("actions", &sequence.actions)?;
    let (_, policy) = tensor("behaviour_logits", &sequence.behaviour_logits)?;
    let action = match (dtype, dims.as_slice()) {
        (Dtype::I64, &[t]) if t == steps => match policy.as_slice() {
            &[_, num_actions] if num_actions >= 1 => ActionSpec::Discrete { num_actions },
            _ => {
                return Err(SignatureError::Policy {
                    found: policy.iter().map(|&d| d as u64).collect(),
                    steps,
                    width: "num_actions >= 1".into(),
                    action: "discrete actions".into(),
                });
            }
        },
        // The policy records two values per dimension: a width that
        // overflows is no contract's.
        (Dtype::F32, &[t, dims]) if t == steps && (1..=usize::MAX / 2).contains(&dims) => ActionSpec::Continuous { dims },
        _ => {
            return Err(SignatureError::Actions {
                dtype,
                shape: dims.iter().map(|&d| d as u64).collect(),
                steps,
            });
        }
    };
    if policy != [steps, action.policy_width()] {
        return Err(SignatureError::Policy {
            found: policy.iter().map(|&d| d as u64).collect(),
            steps,
            width: action.policy_width().to_string(),
            action: action.to_string(),
        });
    }

    let state = match &sequence.initial_state {
        None => None,
        Some(t) => {
            let dtype = t.element_type().map_err(|source| SignatureError::Tensor {
                field: "initial_state",
                source,
            })?;
            let spec = (dtype == Dtype::F32).then(|| StateSpec::from_shape(&t.dims())).flatten();
            Some(spec.ok_or_else(|| SignatureError::State {
                dtype,
                shape: t.shape.clone(),
            })?)
        }
    };
    Ok((
        steps,
        Signature {
            env: EnvSpec { observation, action },
            state,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_trajectory::FrameShape;

    fn sequence(steps: usize) -> Sequence {
        Sequence {
            observations: Some(Tensor::from_u8(&[steps, 1, 2, 3], vec![0; steps * 6])),
            actions: Some(Tensor::from_i64(&[steps], &vec![0; steps])),
            behaviour_logits: Some(Tensor::from_f32(&[steps, 4], &vec![0.0; steps * 4])),
            initial_state: Some(Tensor::from_f32(&[2, 8], &[0.0; 16])),
            ..Default::default()
        }
    }

    #[test]
    fn shapes_and_dtypes_give_the_signature() {
        let (steps, signature) = signature(&sequence(5)).unwrap();
        let frame = FrameShape {
            channels: 1,
            height: 2,
            width: 3,
        };
        assert_eq!(steps, 5);
        assert_eq!(
            signature,
            Signature {
                env: EnvSpec::frames(frame, 4),
                state: Some(StateSpec::Lstm { hidden: 8 })
            }
        );
    }

    #[test]
    fn continuous_actions_carry_a_mean_and_a_log_std_per_dimension() {
        let mut s = sequence(3);
        s.actions = Some(Tensor::from_f32(&[3, 2], &[0.5; 6]));
        let (_, signature) = signature(&s).unwrap();
        assert_eq!(signature.env.action, ActionSpec::Continuous { dims: 2 });
        s.behaviour_logits = Some(Tensor::from_f32(&[3, 3], &[0.0; 9]));
        let message = super::signature(&s).unwrap_err().to_string();
        assert_eq!(
            message,
            "behaviour_logits has shape [3, 3]; expected [3, 4] for continuous actions of 2 dimensions"
        );
    }

    /// A continuous action of more dimensions than a policy width can
    /// count is refused, not multiplied into an overflow.
    #[test]
    fn absurd_continuous_action_shapes_are_refused() {
        let mut s = sequence(3);
        s.actions = Some(Tensor {
            dtype: pb::Dtype::F32 as i32,
            shape: vec![3, u64::MAX],
            data: Default::default(),
        });
        let message = signature(&s).unwrap_err().to_string();
        assert!(
            message.starts_with("actions are f32 of shape [3, 18446744073709551615]"),
            "{message}"
        );
    }

    #[test]
    fn shapes_outside_the_contract_are_named() {
        let mut s = sequence(3);
        s.observations = Some(Tensor::from_u8(&[3, 6], vec![0; 18]));
        assert_eq!(
            signature(&s).unwrap_err().to_string(),
            "observations are u8 of shape [3, 6]; expected f32 [steps, size] or u8 [steps, channels, height, width]"
        );
        let mut s = sequence(3);
        s.actions = Some(Tensor::from_i64(&[2], &[0, 0]));
        assert!(signature(&s).unwrap_err().to_string().starts_with("actions are i64 of shape [2]"));
        let mut s = sequence(3);
        s.initial_state = Some(Tensor::from_f32(&[16], &[0.0; 16]));
        assert!(
            signature(&s)
                .unwrap_err()
                .to_string()
                .starts_with("initial_state is f32 of shape [16]")
        );
        let mut s = sequence(3);
        s.behaviour_logits = None;
        assert_eq!(signature(&s).unwrap_err(), SignatureError::Missing("behaviour_logits"));
    }
}
