//! The network's two heads on its features: the policy's logits over
//! discrete actions and the state value, and [`PolicyOutput`], what they
//! return together.

use candle_core::{Device, Result, Tensor};
use rand::Rng;

use super::mlp::{Dense, NamedVars};

/// Policy logits `[N, A]` and state values `[N]` for a batch of observations.
#[derive(Debug)]
pub struct PolicyOutput {
    pub logits: Tensor,
    pub values: Tensor,
}

/// The policy head (features to logits) and the value head (features to
/// one value).
#[derive(Debug)]
pub(super) struct Heads {
    policy: Dense,
    value: Dense,
}

impl Heads {
    /// Heads over `policy_width` and `value_width` features, their
    /// parameters named `policy.*` and `value.*` and appended to `params`.
    pub(super) fn new(
        policy_width: usize,
        value_width: usize,
        num_actions: usize,
        rng: &mut impl Rng,
        device: &Device,
        params: &mut NamedVars,
    ) -> Result<Self> {
        // A small policy head starts near-uniform, which keeps early exploration broad.
        let (policy, named) = Dense::new("policy", policy_width, num_actions, 0.01, rng, device)?;
        params.extend(named);
        let (value, named) = Dense::new("value", value_width, 1, 1.0, rng, device)?;
        params.extend(named);
        Ok(Self { policy, value })
    }

    /// Logits `[N, A]` from the policy's features, values `[N]` from the
    /// value's (the same tensor where the heads share a torso or a core).
    pub(super) fn forward(&self, policy_features: &Tensor, value_features: &Tensor) -> Result<PolicyOutput> {
        let logits = self.policy.forward(policy_features)?;
        let values = self.value.forward(value_features)?.squeeze(1)?;
        Ok(PolicyOutput { logits, values })
    }
}
