//! The network's two heads on its features: the policy's parameters (the
//! logits over discrete actions, or a Gaussian's means and log standard
//! deviations, see [`crate::distribution`]) and the state value, and
//! [`PolicyOutput`], what they return together.

use candle_core::{D, DType, Device, Result, Tensor, Var};
use rand::Rng;

use super::config::LogStd;
use super::mlp::{Dense, NamedVars};
use crate::distribution::{LOG_STD_RANGE, PolicyDistribution};

/// The policy's parameters `[N, W]` and state values `[N]` for a batch of
/// observations: `W` logits, or a Gaussian's means then log deviations.
#[derive(Debug)]
pub struct PolicyOutput {
    pub logits: Tensor,
    pub values: Tensor,
}

/// The policy head (features to the distribution's parameters) and the
/// value head (features to one value).
#[derive(Debug)]
pub(super) struct Heads {
    policy: Dense,
    value: Dense,
    /// A Gaussian's log deviations when they are a parameter of their own.
    log_std: Option<Var>,
    /// A Gaussian's dimensions (its parameters' log deviations are clamped
    /// to [`LOG_STD_RANGE`]); 0 for a categorical policy.
    gaussian_dims: usize,
}

impl Heads {
    /// Heads over `policy_width` and `value_width` features, their
    /// parameters named `policy.*` and `value.*` and appended to `params`.
    /// A Gaussian's log deviations are a parameter `policy.log_std` or the
    /// head's second half of outputs, per `log_std`, starting at
    /// `initial_log_std`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        policy_width: usize,
        value_width: usize,
        distribution: PolicyDistribution,
        log_std: LogStd,
        initial_log_std: f64,
        rng: &mut impl Rng,
        device: &Device,
        params: &mut NamedVars,
    ) -> Result<Self> {
        let (outputs, gaussian_dims) = match (distribution, log_std) {
            (PolicyDistribution::Categorical { num_actions }, _) => (num_actions, 0),
            (PolicyDistribution::Gaussian { dims, .. }, LogStd::Parameter) => (dims, dims),
            (PolicyDistribution::Gaussian { dims, .. }, LogStd::StateDependent) => (2 * dims, dims),
        };
        // A small policy head starts near-uniform (near-zero means), which
        // keeps early exploration broad.
        let (policy, named) = Dense::new("policy", policy_width, outputs, 0.01, rng, device)?;
        params.extend(named);
        let log_std = match (gaussian_dims, log_std) {
            (0, _) => None,
            (dims, LogStd::Parameter) => {
                let var = Var::from_tensor(&Tensor::full(initial_log_std as f32, dims, device)?)?;
                params.push(("policy.log_std".to_owned(), var.clone()));
                Some(var)
            }
            (dims, LogStd::StateDependent) => {
                let mut bias = vec![0f32; 2 * dims];
                bias[dims..].fill(initial_log_std as f32);
                policy.bias.set(&Tensor::from_vec(bias, 2 * dims, device)?)?;
                None
            }
        };
        let (value, named) = Dense::new("value", value_width, 1, 1.0, rng, device)?;
        params.extend(named);
        Ok(Self {
            policy,
            value,
            log_std,
            gaussian_dims,
        })
    }

    /// Logits `[N, A]` from the policy's features, values `[N]` from the
    /// value's (the same tensor where the heads share a torso or a core).
    pub(super) fn forward(&self, policy_features: &Tensor, value_features: &Tensor) -> Result<PolicyOutput> {
        let head = self.policy.forward(policy_features)?;
        let dims = self.gaussian_dims;
        let logits = match (&self.log_std, dims) {
            (_, 0) => head,
            (Some(log_std), _) => {
                let log_std = log_std.as_tensor().unsqueeze(0)?.broadcast_as(head.shape())?;
                Tensor::cat(&[&head, &log_std.clamp(LOG_STD_RANGE.0, LOG_STD_RANGE.1)?], D::Minus1)?
            }
            (None, _) => {
                let means = head.narrow(1, 0, dims)?;
                let log_std = head.narrow(1, dims, dims)?.clamp(LOG_STD_RANGE.0, LOG_STD_RANGE.1)?;
                Tensor::cat(&[&means, &log_std], D::Minus1)?
            }
        };
        let values = self.value.forward(value_features)?.squeeze(1)?;
        debug_assert_eq!(logits.dtype(), DType::F32);
        Ok(PolicyOutput { logits, values })
    }
}
