//! The IMPALA loss on one batch: forward the network over every step, V-trace
//! targets from the detached values, then policy-gradient, baseline and
//! entropy terms averaged over the real decisions in the batch and weighted
//! per sequence by the sampler's importance weights.

use candle_core::{D, Result, Tensor};
use candle_nn::ops::log_softmax;
use fleet_agent::ActorCritic;

use crate::batch::DeviceBatch;
use crate::vtrace::{VTraceInputs, VTraceParams, vtrace};

#[derive(Debug, Clone, Copy)]
pub struct LossWeights {
    pub baseline_cost: f64,
    pub entropy_cost: f64,
}

/// The differentiable total and the scalar parts for reporting.
#[derive(Debug)]
pub struct LossOutput {
    pub total: Tensor,
    pub policy: f32,
    pub baseline: f32,
    /// Mean policy entropy (the loss term is `−entropy_cost · entropy`).
    pub entropy: f32,
    pub clipped_rho_fraction: f32,
    /// Mean |policy-gradient advantage| over real decisions.
    pub mean_abs_advantage: f32,
    /// `[T, B]` V-trace target minus value, detached (for priorities).
    pub td_errors: Tensor,
}

pub fn impala_loss(network: &ActorCritic, batch: &DeviceBatch, vtrace_params: &VTraceParams, weights: LossWeights) -> Result<LossOutput> {
    let (l, b) = (batch.steps, batch.batch_size);
    let t = l - 1;
    let out = network.forward(&batch.observations)?;
    let num_actions = out.logits.dim(1)?;
    let logits = out.logits.reshape((l, b, num_actions))?;
    let values = out.values.reshape((l, b))?;

    let learning_logits = logits.narrow(0, 0, t)?;
    let log_probs = log_softmax(&learning_logits, D::Minus1)?;
    let actions = batch.actions.unsqueeze(2)?;
    let action_log_probs = log_probs.gather(&actions, 2)?.squeeze(2)?;
    let behaviour_log_probs = log_softmax(&batch.behaviour_logits, D::Minus1)?.gather(&actions, 2)?.squeeze(2)?;
    let log_rhos = (action_log_probs.detach() - behaviour_log_probs)?;

    let learning_values = values.narrow(0, 0, t)?;
    let detached_values = learning_values.detach();
    let bootstrap = values.get(t)?.detach();
    let returns = vtrace(
        &VTraceInputs {
            log_rhos: &log_rhos,
            discounts: &batch.discounts,
            rewards: &batch.rewards,
            values: &detached_values,
            bootstrap_value: &bootstrap,
            mask: &batch.mask,
        },
        vtrace_params,
    )?;

    // Per-step weights: the mask (real decisions only) times the sequence's
    // importance weight, normalised by the number of real decisions.
    let step_weights = batch.mask.broadcast_mul(&batch.importance_weights.unsqueeze(0)?)?;
    let decisions = batch.mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    let mean = |x: &Tensor| -> Result<Tensor> { (x * &step_weights)?.sum_all()? / decisions };

    let policy = mean(&(action_log_probs * &returns.pg_advantages)?.neg()?)?;
    let td = (&returns.vs - &learning_values)?;
    let baseline = (mean(&td.sqr()?)? * 0.5)?;
    let probs = log_probs.exp()?;
    let entropy = mean(&(probs * &log_probs)?.sum(D::Minus1)?.neg()?)?;

    let total = ((&policy + (&baseline * weights.baseline_cost)?)? - (&entropy * weights.entropy_cost)?)?;
    Ok(LossOutput {
        policy: policy.to_scalar()?,
        baseline: baseline.to_scalar()?,
        entropy: entropy.to_scalar()?,
        clipped_rho_fraction: returns.clipped_rho_fraction,
        mean_abs_advantage: ((returns.pg_advantages.abs()? * &batch.mask)?.sum_all()? / decisions)?.to_scalar()?,
        td_errors: td.detach(),
        total,
    })
}
