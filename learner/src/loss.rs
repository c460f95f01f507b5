//! The IMPALA loss on one batch: run the network over every step (a
//! recurrent core from the stored or zero state, over the burn-in steps
//! without gradient first), V-trace targets from the detached values, then
//! policy-gradient, baseline and entropy terms averaged over the real
//! decisions of the learning steps and weighted per sequence by the
//! sampler's importance weights.

use candle_core::{D, Result, Tensor};
use fleet_agent::{ActorCritic, PolicyDistribution, PolicyOutput, RecurrentState};

use crate::batch::DeviceBatch;
use crate::config::{OffPolicyCorrection, RewardClip};
use crate::targets::KeptTargets;
use crate::vtrace::{VTraceInputs, VTraceParams, VTraceReturns, clipped_rho_fraction, vtrace};

#[derive(Debug, Clone, Copy)]
pub struct LossWeights {
    pub baseline_cost: f64,
    pub entropy_cost: f64,
    /// With ε > 0 the policy term is the clipped-ratio surrogate
    /// `min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)` with ρ = π/μ against the behaviour
    /// policy and A the V-trace advantage, instead of `min(ρ̄, ρ)·A·log π`.
    pub ratio_clip: f64,
    /// Standardise the advantages over the batch's real decisions before
    /// the policy term uses them.
    pub normalize_advantages: bool,
    /// V-trace, or targets computed as if every ratio were 1.
    pub off_policy_correction: OffPolicyCorrection,
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
    /// Share of real decisions whose surrogate ratio lies outside the
    /// trust region (PPO's clip fraction); 0 without `ratio_clip`.
    pub clip_fraction: f32,
    /// Mean |policy-gradient advantage| over real decisions.
    pub mean_abs_advantage: f32,
    pub diagnostics: LossDiagnostics,
    /// `[T, B]` V-trace target minus value, detached (for priorities).
    pub td_errors: Tensor,
    /// The network's outputs on the learning and bootstrap steps.
    pub outputs: PolicyOutput,
    /// The batch's core inputs, cut off from the graph (recurrent networks).
    pub core_inputs: Option<CoreInputs>,
}

/// What the loss saw, over the real decisions of the learning steps: the
/// signs of a policy going deterministic (logit spread), of stale data
/// (importance ratios) and of the value scale.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossDiagnostics {
    /// Mean and largest gap between a step's highest and lowest logit; a
    /// gap of 12 leaves the other actions below 1e-5. (For a Gaussian
    /// policy the same spread over its means and log deviations.)
    pub logit_gap_mean: f32,
    pub logit_gap_max: f32,
    /// Mean and largest importance ratio π/μ of the taken actions, before clipping.
    pub rho_mean: f32,
    pub rho_max: f32,
    /// Mean V(x) and mean V-trace target v_s.
    pub value_mean: f32,
    pub target_mean: f32,
}

/// What the core reads at each of a batch's steps, which no start state
/// changes: the torso's features through the LSTM's input projection
/// ([`ActorCritic::core_inputs`]), for the burn-in and the learning steps.
/// Computed once per update, the loss's unroll and the staleness
/// measurement's second unroll from zeros share it; the torso (a CNN's
/// convolutions on every frame) is most of a recurrent network's forward.
#[derive(Debug)]
pub struct CoreInputs {
    /// Cut off from the graph: the burn-in gets no gradient.
    burn_in: Option<Tensor>,
    learning: Tensor,
}

impl CoreInputs {
    /// The batch's core inputs; `None` for a feed-forward network.
    pub fn new(network: &ActorCritic, batch: &DeviceBatch) -> Result<Option<Self>> {
        if !network.is_recurrent() {
            return Ok(None);
        }
        let burn_in = match batch.burn_in {
            0 => None,
            _ => Some(network.core_inputs(&batch.burn_in_observations)?.detach()),
        };
        let learning = network.core_inputs(&batch.observations)?;
        Ok(Some(Self { burn_in, learning }))
    }

    /// The same inputs cut off from the graph, for unrolls that take no gradient.
    pub fn detach(&self) -> Self {
        Self {
            burn_in: self.burn_in.clone(),
            learning: self.learning.detach(),
        }
    }
}

/// The core's state at the first learning step: from the stored state (or
/// zeros, when `stored` is off or the batch has none), run over the burn-in
/// steps and cut off from the graph, so the burn-in gets no gradient.
/// `inputs` are the batch's [`CoreInputs`], computed here when not given.
pub fn learning_start_state(
    network: &ActorCritic,
    batch: &DeviceBatch,
    inputs: Option<&CoreInputs>,
    stored: bool,
) -> Result<RecurrentState> {
    let b = batch.batch_size;
    let start = match (&batch.initial_states, network.state_spec()) {
        (Some(states), Some(spec)) if stored => RecurrentState::from_flat(states, spec)?,
        _ => network.initial_state(b)?,
    };
    if batch.burn_in == 0 || !network.is_recurrent() {
        return Ok(start);
    }
    let computed;
    let burn_in = match inputs.and_then(|inputs| inputs.burn_in.as_ref()) {
        Some(burn_in) => burn_in,
        None => {
            computed = network.core_inputs(&batch.burn_in_observations)?;
            &computed
        }
    };
    let (_, warmed) = network.unroll_from(burn_in, &batch.burn_in_is_first, batch.burn_in, &start)?;
    Ok(warmed.detach())
}

/// How much a batch's learning steps still depend on the state the stored
/// state gave them, per sequence: the network runs the burn-in and learning
/// steps once from the stored state and once from zeros, and the values
/// `V` and policies `π` of the learning steps are compared —
/// `mean_t |V_stored − V_zero| / max(mean_t |V_stored|, 1e-6)` and
/// `mean_t TV(π_stored, π_zero)` (for a Gaussian policy, half the L1
/// distance between the two parameter vectors stands in for the total
/// variation). R2D2 compares the stored state with the
/// state recomputed by the current network; the burn-in is that
/// recomputation, and once it is long enough the start no longer shows (both
/// near 0). Large values say the learning steps see a state the current
/// network did not make: lengthen `actor.burn_in`. Empty for feed-forward
/// networks or batches without stored states.
/// `stored` is what [`learning_outputs`] gives from the stored state (the
/// loss has computed it already when it learns from the stored state);
/// `inputs` the batch's [`CoreInputs`], computed here when not given.
pub fn state_staleness(
    network: &ActorCritic,
    batch: &DeviceBatch,
    stored: &PolicyOutput,
    inputs: Option<&CoreInputs>,
) -> Result<Vec<(f32, f32)>> {
    if !network.is_recurrent() || batch.initial_states.is_none() {
        return Ok(Vec::new());
    }
    let (l, b) = (batch.steps, batch.batch_size);
    let t = l - 1;
    let categorical = matches!(network.distribution(), PolicyDistribution::Categorical { .. });
    let host = |out: &PolicyOutput| -> Result<(Vec<f32>, Vec<f32>)> {
        let probs = match categorical {
            true => candle_nn::ops::softmax(&out.logits.detach(), D::Minus1)?,
            false => out.logits.detach(),
        };
        Ok((out.values.detach().to_vec1()?, probs.flatten_all()?.to_vec1()?))
    };
    let (stored_values, stored_probs) = host(stored)?;
    let (zero_values, zero_probs) = host(&learning_outputs(network, batch, inputs, false)?)?;
    let a = stored_probs.len() / (l * b);
    Ok((0..b)
        .map(|j| {
            let rows = (0..t).map(|step| step * b + j);
            let (mut gap, mut size, mut tv) = (0f32, 0f32, 0f32);
            for i in rows {
                gap += (stored_values[i] - zero_values[i]).abs();
                size += stored_values[i].abs();
                tv += 0.5 * (0..a).map(|k| (stored_probs[i * a + k] - zero_probs[i * a + k]).abs()).sum::<f32>();
            }
            (gap / size.max(1e-6), tv / t as f32)
        })
        .collect())
}

/// The network's outputs (`[L·B, …]`) on the steps after the burn-in, with
/// the core started as [`learning_start_state`] says. `inputs` are the
/// batch's [`CoreInputs`], computed here when not given.
pub fn learning_outputs(network: &ActorCritic, batch: &DeviceBatch, inputs: Option<&CoreInputs>, stored: bool) -> Result<PolicyOutput> {
    let start = learning_start_state(network, batch, inputs, stored)?;
    match inputs {
        Some(inputs) => Ok(network.unroll_from(&inputs.learning, &batch.is_first, batch.steps, &start)?.0),
        None => Ok(network.unroll(&batch.observations, &batch.is_first, batch.steps, &start)?.0),
    }
}

/// Each sequence's new replay priority from its `[T, B]` TD errors over
/// the real decisions (`mask`): `η·max|δ| + (1−η)·mean|δ|` (R2D2's mix of
/// the max, which keeps rare large errors visible, and the mean). A
/// sequence without a real decision gets 0.
pub fn sequence_priorities(td_errors: &Tensor, mask: &Tensor, eta: f64) -> Result<Vec<f64>> {
    let abs = (td_errors.abs()? * mask)?;
    let max = abs.max(0)?.to_vec1::<f32>()?;
    let sum = abs.sum(0)?.to_vec1::<f32>()?;
    let count = mask.sum(0)?.to_vec1::<f32>()?;
    Ok((0..max.len())
        .map(|j| {
            if count[j] == 0.0 {
                return 0.0;
            }
            let mean = f64::from(sum[j]) / f64::from(count[j]);
            eta * f64::from(max[j]) + (1.0 - eta) * mean
        })
        .collect())
}

/// Rewards as the loss sees them under `clip`.
pub fn clip_rewards(rewards: &Tensor, clip: RewardClip) -> Result<Tensor> {
    match clip {
        RewardClip::None => Ok(rewards.clone()),
        RewardClip::AbsOne => rewards.clamp(-1f32, 1f32),
        RewardClip::SoftAsymmetric => {
            let squeezed = ((rewards / 5.0)?.tanh()? * 5.0)?;
            let negative = rewards.lt(0f32)?;
            negative.where_cond(&(&squeezed * 0.3)?, &squeezed)
        }
    }
}

/// The targets a loss keeps from each sequence's first draw, and which
/// sequences the batch's columns are.
pub struct KeptFor<'a> {
    pub targets: &'a mut KeptTargets,
    pub keys: &'a [u64],
    pub first_draws: &'a [bool],
}

pub fn impala_loss(
    network: &ActorCritic,
    batch: &DeviceBatch,
    vtrace_params: &VTraceParams,
    weights: LossWeights,
    stored_state: bool,
    kept: Option<KeptFor<'_>>,
) -> Result<LossOutput> {
    let (l, b) = (batch.steps, batch.batch_size);
    let t = l - 1;
    let core_inputs = CoreInputs::new(network, batch)?;
    let out = learning_outputs(network, batch, core_inputs.as_ref(), stored_state)?;
    let width = out.logits.dim(1)?;
    let logits = out.logits.reshape((l, b, width))?;
    let values = out.values.reshape((l, b))?;
    let learning_logits = logits.narrow(0, 0, t)?;
    let learning_values = values.narrow(0, 0, t)?;

    let distribution = network.distribution();
    let targets = step_targets(
        distribution,
        batch,
        &logits.detach(),
        &values.detach(),
        vtrace_params,
        weights,
        kept,
    )?;
    let data = StepData::of_batch(batch, &targets.returns)?;
    let terms = loss_terms(distribution, &learning_logits, &learning_values, &data, weights)?;
    Ok(LossOutput {
        policy: terms.policy,
        baseline: terms.baseline,
        entropy: terms.entropy,
        clip_fraction: terms.clip_fraction,
        clipped_rho_fraction: targets.clipped_rho_fraction,
        mean_abs_advantage: targets.mean_abs_advantage,
        diagnostics: targets.diagnostics,
        td_errors: targets.td_errors,
        total: terms.total,
        outputs: out,
        core_inputs: core_inputs.as_ref().map(CoreInputs::detach),
    })
}

/// A batch's value targets and advantages, and what they say about it,
/// computed from the network's detached outputs on all its steps.
#[derive(Debug)]
pub struct StepTargets {
    pub returns: VTraceReturns,
    /// `[T, B]` target minus value (for priorities).
    pub td_errors: Tensor,
    /// Of the real ratios, whether or not the targets used them.
    pub clipped_rho_fraction: f32,
    /// Mean |policy-gradient advantage| over real decisions.
    pub mean_abs_advantage: f32,
    pub diagnostics: LossDiagnostics,
}

/// The targets of `batch` from the network's detached `[L, B, width]`
/// policy parameters and `[L, B]` values (the last step bootstraps): V-trace
/// or uncorrected λ-returns as `weights` say, replaced by the ones kept
/// from each sequence's first draw when `kept` is given.
pub fn step_targets(
    distribution: PolicyDistribution,
    batch: &DeviceBatch,
    logits: &Tensor,
    values: &Tensor,
    vtrace_params: &VTraceParams,
    weights: LossWeights,
    kept: Option<KeptFor<'_>>,
) -> Result<StepTargets> {
    let t = batch.steps - 1;
    let learning_logits = logits.narrow(0, 0, t)?;
    let learning_values = values.narrow(0, 0, t)?;
    let action_log_probs = distribution.log_prob(&learning_logits, &batch.actions)?;
    let behaviour_log_probs = distribution.log_prob(&batch.behaviour_logits, &batch.actions)?;
    let log_rhos = (action_log_probs - &behaviour_log_probs)?;
    let target_log_rhos = match weights.off_policy_correction {
        OffPolicyCorrection::Vtrace => log_rhos.clone(),
        OffPolicyCorrection::None => log_rhos.zeros_like()?,
    };
    let returns = vtrace(
        &VTraceInputs {
            log_rhos: &target_log_rhos,
            discounts: &batch.discounts,
            rewards: &batch.rewards,
            values: &learning_values,
            bootstrap_value: &values.get(t)?,
            mask: &batch.mask,
        },
        vtrace_params,
    )?;
    let returns = match kept {
        Some(kept) => kept.targets.apply(kept.keys, kept.first_draws, returns)?,
        None => returns,
    };
    let decisions = decisions(&batch.mask)?;
    Ok(StepTargets {
        td_errors: (&returns.vs - &learning_values)?,
        clipped_rho_fraction: match weights.off_policy_correction {
            OffPolicyCorrection::Vtrace => returns.clipped_rho_fraction,
            OffPolicyCorrection::None => clipped_rho_fraction(&log_rhos.exp()?, &batch.mask, vtrace_params.rho_bar)?,
        },
        mean_abs_advantage: ((returns.pg_advantages.abs()? * &batch.mask)?.sum_all()? / decisions)?.to_scalar()?,
        diagnostics: diagnose(&learning_logits, &log_rhos, &learning_values, &returns.vs, &batch.mask, decisions)?,
        returns,
    })
}

/// What the loss reads at each learning step besides the network's
/// outputs: `[T, B, …]` for a whole batch, `[N, …]` for a minibatch of its steps.
#[derive(Debug)]
pub struct StepData {
    /// u32 indices, or f32 values with the action dimensions last.
    pub actions: Tensor,
    /// The behaviour policy's parameters, width last.
    pub behaviour_logits: Tensor,
    /// 1 at real decisions.
    pub mask: Tensor,
    /// The mask times the sequence's importance weight.
    pub step_weights: Tensor,
    pub vs: Tensor,
    pub advantages: Tensor,
    pub pg_rhos: Tensor,
    pub pg_advantages: Tensor,
}

impl StepData {
    pub fn of_batch(batch: &DeviceBatch, returns: &VTraceReturns) -> Result<Self> {
        Ok(Self {
            actions: batch.actions.clone(),
            behaviour_logits: batch.behaviour_logits.clone(),
            mask: batch.mask.clone(),
            step_weights: batch.mask.broadcast_mul(&batch.importance_weights.unsqueeze(0)?)?,
            vs: returns.vs.clone(),
            advantages: returns.advantages.clone(),
            pg_rhos: returns.pg_rhos.clone(),
            pg_advantages: returns.pg_advantages.clone(),
        })
    }

    /// The learning steps `rows` (u32 indices `t·B + b`) of a whole batch's data.
    pub fn rows(&self, rows: &Tensor) -> Result<Self> {
        let pick = |x: &Tensor| x.flatten(0, 1)?.index_select(rows, 0);
        Ok(Self {
            actions: pick(&self.actions)?,
            behaviour_logits: pick(&self.behaviour_logits)?,
            mask: pick(&self.mask)?,
            step_weights: pick(&self.step_weights)?,
            vs: pick(&self.vs)?,
            advantages: pick(&self.advantages)?,
            pg_rhos: pick(&self.pg_rhos)?,
            pg_advantages: pick(&self.pg_advantages)?,
        })
    }
}

/// The differentiable loss and its parts' values.
#[derive(Debug)]
pub struct LossTerms {
    pub total: Tensor,
    pub policy: f32,
    pub baseline: f32,
    pub entropy: f32,
    /// See [`LossOutput::clip_fraction`].
    pub clip_fraction: f32,
}

/// Policy-gradient, baseline and entropy terms over `data`'s steps, from
/// the network's policy parameters `logits` and `values` on those steps
/// (with their gradients), averaged over the real decisions and weighted
/// by the sequences' importance weights.
pub fn loss_terms(
    distribution: PolicyDistribution,
    logits: &Tensor,
    values: &Tensor,
    data: &StepData,
    weights: LossWeights,
) -> Result<LossTerms> {
    let decisions = decisions(&data.mask)?;
    let mean = |x: &Tensor| -> Result<Tensor> { (x * &data.step_weights)?.sum_all()? / decisions };
    let action_log_probs = distribution.log_prob(logits, &data.actions)?;
    let (advantages, pg_advantages) = if weights.normalize_advantages {
        let advantages = standardize(&data.advantages, &data.mask, decisions)?;
        let pg_advantages = (&data.pg_rhos * &advantages)?;
        (advantages, pg_advantages)
    } else {
        (data.advantages.clone(), data.pg_advantages.clone())
    };
    let (policy, clip_fraction) = if weights.ratio_clip > 0.0 {
        // The ratio carries the gradient; the advantage is a constant.
        let behaviour_log_probs = distribution.log_prob(&data.behaviour_logits, &data.actions)?;
        let ratio = (&action_log_probs - &behaviour_log_probs)?.exp()?;
        let clipped = ratio.clamp(1.0 - weights.ratio_clip, 1.0 + weights.ratio_clip)?;
        let surrogate = (&ratio * &advantages)?.minimum(&(clipped * &advantages)?)?;
        let outside = (ratio.detach() - 1.0)?.abs()?.gt(weights.ratio_clip)?.to_dtype(data.mask.dtype())?;
        (mean(&surrogate.neg()?)?, ((outside * &data.mask)?.sum_all()? / decisions)?)
    } else {
        let policy = mean(&(&action_log_probs * &pg_advantages)?.neg()?)?;
        let none = policy.zeros_like()?;
        (policy, none)
    };
    let baseline = (mean(&(&data.vs - values)?.sqr()?)? * 0.5)?;
    let entropy = mean(&distribution.entropy(logits)?)?;
    let total = ((&policy + (&baseline * weights.baseline_cost)?)? - (&entropy * weights.entropy_cost)?)?;
    // One host read for the four reported values.
    let read = Tensor::stack(&[&policy, &baseline, &entropy, &clip_fraction], 0)?
        .detach()
        .to_vec1::<f32>()?;
    Ok(LossTerms {
        policy: read[0],
        baseline: read[1],
        entropy: read[2],
        clip_fraction: read[3],
        total,
    })
}

/// The number of real decisions under `mask`, at least 1 (the losses' divisor).
fn decisions(mask: &Tensor) -> Result<f64> {
    Ok(mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64)
}

/// Values shifted and scaled to zero mean and unit deviation over the
/// `decisions` steps the mask keeps, zero elsewhere.
fn standardize(values: &Tensor, mask: &Tensor, decisions: f64) -> Result<Tensor> {
    let mean = ((values * mask)?.sum_all()? / decisions)?;
    let centred = values.broadcast_sub(&mean)?.mul(mask)?;
    let deviation = (centred.sqr()?.sum_all()? / decisions)?.sqrt()?;
    centred.broadcast_div(&(deviation + 1e-8)?)
}

/// [`LossDiagnostics`] from the detached `[T, B, A]` logits and `[T, B]`
/// log-ratios, values, targets and mask, in one host read.
fn diagnose(
    logits: &Tensor,
    log_rhos: &Tensor,
    values: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    decisions: f64,
) -> Result<LossDiagnostics> {
    let logits = logits.detach();
    let gap = (logits.max(D::Minus1)? - logits.min(D::Minus1)?)?.mul(mask)?;
    let rhos = log_rhos.exp()?.mul(mask)?;
    let mean = |x: &Tensor| -> Result<Tensor> { x.mul(mask)?.sum_all()? / decisions };
    let read = Tensor::stack(
        &[
            gap.sum_all()?.affine(1.0 / decisions, 0.0)?,
            gap.max_all()?,
            rhos.sum_all()?.affine(1.0 / decisions, 0.0)?,
            rhos.max_all()?,
            mean(&values.detach())?,
            mean(&targets.detach())?,
        ],
        0,
    )?
    .to_vec1::<f32>()?;
    Ok(LossDiagnostics {
        logit_gap_mean: read[0],
        logit_gap_max: read[1],
        rho_mean: read[2],
        rho_max: read[3],
        value_mean: read[4],
        target_mean: read[5],
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use fleet_agent::{Core, EnvSpec, NetworkConfig};

    use super::*;
    use crate::batch::HostBatch;

    const SPEC: EnvSpec = EnvSpec::vector(4, 2);
    const STATE: usize = 6;

    fn lstm() -> ActorCritic {
        let config = NetworkConfig {
            hidden: vec![8],
            core: Core::Lstm,
            lstm_size: STATE,
            ..NetworkConfig::default()
        };
        ActorCritic::new(SPEC, &config, 5, &Device::Cpu).unwrap()
    }

    /// A synthetic batch of 4 sequences of 10 steps from the middle of
    /// episodes (no episode starts), with stored states.
    fn batch(seed: u64) -> HostBatch {
        let mut batch = HostBatch::synthetic(SPEC, 10, 4, seed);
        batch.is_first = vec![false; 40];
        batch.terminated = vec![false; 40];
        batch.truncated = vec![false; 40];
        batch.state = Some(fleet_trajectory::StateSpec::Lstm { hidden: STATE });
        batch.initial_states = (0..4 * 2 * STATE).map(|i| ((i % 7) as f32 - 3.0) * 0.2).collect();
        batch
    }

    fn weights() -> LossWeights {
        LossWeights {
            baseline_cost: 0.5,
            entropy_cost: 0.01,
            ratio_clip: 0.0,
            normalize_advantages: false,
            off_policy_correction: OffPolicyCorrection::Vtrace,
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// For a Gaussian policy the importance ratio of each taken action is
    /// `exp(log π(a) − log μ(a))`: computed here in f64 from the network's
    /// means and log deviations and the recorded ones, the mean and the
    /// largest ratio over the real decisions equal the loss's.
    #[test]
    fn continuous_importance_ratios_are_the_gaussian_density_ratios() {
        let dims = 2;
        let spec = EnvSpec {
            observation: fleet_trajectory::ObservationSpec::Vector { size: 3 },
            action: fleet_trajectory::ActionSpec::Continuous { dims },
        };
        let config = NetworkConfig {
            hidden: vec![8],
            log_std: fleet_agent::LogStd::StateDependent,
            initial_log_std: -0.3,
            ..NetworkConfig::default()
        };
        let net = ActorCritic::new(spec, &config, 2, &Device::Cpu).unwrap();
        let host = HostBatch::synthetic(spec, 7, 3, 4);
        let device_batch = DeviceBatch::new(&host, 0.99, 0, &Device::Cpu).unwrap();
        let loss = impala_loss(&net, &device_batch, &VTraceParams::default(), weights(), false, None).unwrap();

        let learning = 6 * 3;
        let params = values(&loss.outputs.logits);
        let log_density = |params: &[f32], action: &[f32]| -> f64 {
            (0..dims)
                .map(|d| {
                    let (mean, log_std) = (f64::from(params[d]), f64::from(params[dims + d]));
                    let z = (f64::from(action[d]) - mean) / log_std.exp();
                    -0.5 * z * z - log_std - 0.5 * (2.0 * std::f64::consts::PI).ln()
                })
                .sum()
        };
        let (mut sum, mut max, mut decisions) = (0f64, 0f64, 0usize);
        for i in 0..learning {
            if !fleet_trajectory::is_decision(host.terminated[i], host.truncated[i]) {
                continue;
            }
            let action = &host.actions[i * dims..(i + 1) * dims];
            let pi = log_density(&params[i * 2 * dims..(i + 1) * 2 * dims], action);
            let mu = log_density(&host.behaviour_logits[i * 2 * dims..(i + 1) * 2 * dims], action);
            let rho = (pi - mu).exp();
            (sum, max, decisions) = (sum + rho, max.max(rho), decisions + 1);
        }
        let ours = loss.diagnostics;
        let mean = sum / decisions as f64;
        assert!((f64::from(ours.rho_mean) - mean).abs() < 1e-4 * mean, "{} vs {mean}", ours.rho_mean);
        assert!((f64::from(ours.rho_max) - max).abs() < 1e-4 * max, "{} vs {max}", ours.rho_max);
        assert!(mean > 0.0 && (mean - 1.0).abs() > 1e-3, "the ratios are not all 1: {mean}");
    }

    /// The burn-in shapes the state the learning steps start from, yet no
    /// gradient reaches a parameter through it: the gradients equal those of
    /// the same loss with the warmed state handed in as a constant.
    #[test]
    fn burn_in_moves_the_state_but_carries_no_gradient() {
        let net = lstm();
        let host = batch(1);
        let device_batch = DeviceBatch::new(&host, 0.99, 4, &Device::Cpu).unwrap();
        let loss = impala_loss(&net, &device_batch, &VTraceParams::default(), weights(), true, None).unwrap();
        let through_burn_in = loss.total.backward().unwrap();

        let warmed = learning_start_state(&net, &device_batch, None, true).unwrap();
        let constant = RecurrentState {
            h: Tensor::from_vec(values(&warmed.h), (4, STATE), &Device::Cpu).unwrap(),
            c: Tensor::from_vec(values(&warmed.c), (4, STATE), &Device::Cpu).unwrap(),
        };
        let (out, _) = net
            .unroll(&device_batch.observations, &device_batch.is_first, device_batch.steps, &constant)
            .unwrap();
        let (again, _) = net
            .unroll(&device_batch.observations, &device_batch.is_first, device_batch.steps, &warmed)
            .unwrap();
        assert_eq!(values(&out.logits), values(&again.logits));
        // Recompute the loss from the constant state by zeroing the burn-in
        // (a zero-step burn-in from the warmed state as the stored one).
        let mut from_warmed = DeviceBatch::new(&host, 0.99, 4, &Device::Cpu).unwrap();
        from_warmed.burn_in = 0;
        from_warmed.initial_states = Some(constant.to_flat().unwrap());
        let direct = impala_loss(&net, &from_warmed, &VTraceParams::default(), weights(), true, None).unwrap();
        assert!((direct.total.to_scalar::<f32>().unwrap() - loss.total.to_scalar::<f32>().unwrap()).abs() < 1e-6);
        let direct = direct.total.backward().unwrap();
        for (name, var) in net.params() {
            let a = values(through_burn_in.get(var.as_tensor()).unwrap());
            let b = values(direct.get(var.as_tensor()).unwrap());
            assert!(
                a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6),
                "{name} got gradient from the burn-in"
            );
        }

        // And the burn-in matters: other burn-in observations, another start.
        let mut other = host.clone();
        for v in other.observations.slice_mut(0..4 * 4 * 4).f32() {
            *v = -*v;
        }
        let other = learning_start_state(&net, &DeviceBatch::new(&other, 0.99, 4, &Device::Cpu).unwrap(), None, true).unwrap();
        assert_ne!(values(&other.h), values(&warmed.h));
    }

    /// An episode start inside the burn-in or inside the learning steps
    /// wipes whatever state came before it.
    #[test]
    fn resets_inside_burn_in_and_unroll_forget_the_stored_state() {
        let net = lstm();
        let mut with_reset = batch(2);
        // Sequence 0 starts an episode at burn-in step 2, sequence 1 at learning step 5 (absolute 8).
        with_reset.is_first[2 * 4] = true;
        with_reset.is_first[8 * 4 + 1] = true;
        let mut other_state = with_reset.clone();
        for v in &mut other_state.initial_states {
            *v += 0.5;
        }
        let run = |host: &HostBatch| {
            let batch = DeviceBatch::new(host, 0.99, 3, &Device::Cpu).unwrap();
            let start = learning_start_state(&net, &batch, None, true).unwrap();
            let (out, _) = net.unroll(&batch.observations, &batch.is_first, batch.steps, &start).unwrap();
            (values(&start.h), values(&out.logits))
        };
        let (start_a, logits_a) = run(&with_reset);
        let (start_b, logits_b) = run(&other_state);
        assert_eq!(start_a[..STATE], start_b[..STATE], "reset in the burn-in");
        assert_ne!(
            start_a[STATE..2 * STATE],
            start_b[STATE..2 * STATE],
            "no reset: the stored state shows"
        );
        // Learning steps are 3..10 (7 of them); sequence 1 resets at learning step 5.
        let row = |logits: &[f32], t: usize, j: usize| logits[(t * 4 + j) * 2..(t * 4 + j) * 2 + 2].to_vec();
        assert_ne!(row(&logits_a, 4, 1), row(&logits_b, 4, 1));
        for t in 5..7 {
            assert_eq!(row(&logits_a, t, 1), row(&logits_b, t, 1), "reset in the unroll, step {t}");
        }
        // Zero instead of stored: the same as a stored state of zeros.
        let batch = DeviceBatch::new(&other_state, 0.99, 3, &Device::Cpu).unwrap();
        let zero = learning_start_state(&net, &batch, None, false).unwrap();
        let mut zeros = other_state.clone();
        zeros.initial_states.iter_mut().for_each(|v| *v = 0.0);
        let stored_zeros = learning_start_state(&net, &DeviceBatch::new(&zeros, 0.99, 3, &Device::Cpu).unwrap(), None, true).unwrap();
        assert_eq!(values(&zero.h), values(&stored_zeros.h));
    }

    /// Outputs and staleness from core inputs computed once are those of
    /// unrolls that compute them each time.
    #[test]
    fn shared_core_inputs_change_nothing() {
        let net = lstm();
        let mut host = batch(4);
        host.is_first[3 * 4 + 2] = true;
        let batch = DeviceBatch::new(&host, 0.99, 3, &Device::Cpu).unwrap();
        let inputs = CoreInputs::new(&net, &batch).unwrap().expect("a recurrent network has core inputs");
        for stored in [true, false] {
            let shared = learning_outputs(&net, &batch, Some(&inputs), stored).unwrap();
            let own = learning_outputs(&net, &batch, None, stored).unwrap();
            assert_eq!(values(&shared.logits), values(&own.logits));
            assert_eq!(values(&shared.values), values(&own.values));
        }
        let stored = learning_outputs(&net, &batch, None, true).unwrap();
        let shared = state_staleness(&net, &batch, &stored, Some(&inputs.detach())).unwrap();
        let own = state_staleness(&net, &batch, &stored, None).unwrap();
        assert!(shared.iter().any(|&(v, _)| v > 0.0), "the stored state should show: {shared:?}");
        assert_eq!(shared, own);
        let mlp = ActorCritic::new(SPEC, &NetworkConfig::default(), 0, &Device::Cpu).unwrap();
        assert!(CoreInputs::new(&mlp, &batch).unwrap().is_none());
    }

    /// Staleness is 0 when the stored state is what a zero start gives, and
    /// shrinks as the burn-in lengthens and washes the start out.
    #[test]
    fn staleness_falls_as_the_burn_in_grows() {
        let net = lstm();
        let host = batch(4);
        let staleness = |burn_in| -> f32 {
            let batch = DeviceBatch::new(&host, 0.99, burn_in, &Device::Cpu).unwrap();
            let s = state_staleness(&net, &batch, &learning_outputs(&net, &batch, None, true).unwrap(), None).unwrap();
            assert_eq!(s.len(), 4);
            s.iter().map(|(v, _)| v).sum::<f32>() / 4.0
        };
        let (none, long) = (staleness(0), staleness(7));
        assert!(none > 0.0 && long < none, "no burn-in {none}, 7 steps {long}");
        let mut zeros = host.clone();
        zeros.initial_states.iter_mut().for_each(|v| *v = 0.0);
        let batch = DeviceBatch::new(&zeros, 0.99, 2, &Device::Cpu).unwrap();
        let s = state_staleness(&net, &batch, &learning_outputs(&net, &batch, None, true).unwrap(), None).unwrap();
        assert!(s.iter().all(|&(v, p)| v == 0.0 && p == 0.0), "{s:?}");
    }

    #[test]
    fn priorities_mix_the_max_and_the_mean_over_real_decisions() {
        // Two sequences of 3 steps; sequence 1's last step is masked out.
        let td = Tensor::new(&[[1f32, -2.0], [-3.0, 4.0], [2.0, 100.0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1f32, 1.0], [1.0, 1.0], [1.0, 0.0]], &Device::Cpu).unwrap();
        let p = sequence_priorities(&td, &mask, 0.9).unwrap();
        assert!((p[0] - (0.9 * 3.0 + 0.1 * 2.0)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - (0.9 * 4.0 + 0.1 * 3.0)).abs() < 1e-6, "{p:?}");
        let none = sequence_priorities(&td, &mask.zeros_like().unwrap(), 0.9).unwrap();
        assert_eq!(none, vec![0.0, 0.0]);
    }

    /// Without the off-policy correction the value targets are the λ-returns
    /// of the rewards and the current values, computed here by their own
    /// recursion, G_t = r_t + γ((1 − λ)V_{t+1} + λG_{t+1}), whatever the
    /// importance ratios; V-trace's targets on the same lagging batch differ.
    #[test]
    fn uncorrected_targets_are_the_lambda_returns_of_the_current_values() {
        let (gamma, lambda) = (0.9f64, 0.8f64);
        let config = NetworkConfig {
            hidden: vec![8],
            ..NetworkConfig::default()
        };
        let net = ActorCritic::new(SPEC, &config, 3, &Device::Cpu).unwrap();
        let (l, b) = (10, 4);
        let mut host = batch(2);
        host.state = None;
        host.initial_states.clear();
        host.rewards = (0..l * b).map(|i| ((i * 7) % 5) as f32 - 1.5).collect();
        let device_batch = DeviceBatch::new(&host, gamma, 0, &Device::Cpu).unwrap();
        let params = VTraceParams {
            lambda: lambda as f32,
            ..VTraceParams::default()
        };
        let uncorrected = LossWeights {
            off_policy_correction: OffPolicyCorrection::None,
            ..weights()
        };
        let loss = impala_loss(&net, &device_batch, &params, uncorrected, false, None).unwrap();
        let corrected = impala_loss(&net, &device_batch, &params, weights(), false, None).unwrap();

        let v: Vec<f64> = values(&loss.outputs.values).into_iter().map(f64::from).collect();
        let td = values(&loss.td_errors);
        let mut g = v[(l - 1) * b..].to_vec();
        for t in (0..l - 1).rev() {
            for (j, g) in g.iter_mut().enumerate() {
                let i = t * b + j;
                *g = f64::from(host.rewards[i]) + gamma * ((1.0 - lambda) * v[i + b] + lambda * *g);
                let expected = *g - v[i];
                assert!(
                    (f64::from(td[i]) - expected).abs() < 1e-4,
                    "step {t}, sequence {j}: {} vs {expected}",
                    td[i]
                );
            }
        }
        let corrected_td = values(&corrected.td_errors);
        let gap = td.iter().zip(&corrected_td).map(|(a, c)| (a - c).abs()).fold(0f32, f32::max);
        assert!(
            gap > 1e-3,
            "V-trace's targets equal the uncorrected ones on a lagging batch (gap {gap})"
        );
        assert!(corrected.diagnostics.rho_mean != 1.0, "the batch's ratios are not all 1");
        assert!(corrected.clipped_rho_fraction > 0.0, "some ratios exceed rho_bar");
        assert_eq!(
            loss.clipped_rho_fraction, corrected.clipped_rho_fraction,
            "the metric reads the real ratios"
        );
    }

    /// PPO's clip fraction: the share of real decisions whose ratio π/μ
    /// lies outside [1 − ε, 1 + ε], counted here on the host from the
    /// logits; none when the behaviour policy is the network's own.
    #[test]
    fn the_clip_fraction_counts_the_decisions_outside_the_trust_region() {
        let net = ActorCritic::new(SPEC, &NetworkConfig::default(), 3, &Device::Cpu).unwrap();
        let (l, b, epsilon) = (10, 4, 0.1);
        let mut host = batch(5);
        host.state = None;
        host.initial_states.clear();
        // A policy that acted long ago: far from the network's.
        host.behaviour_logits.iter_mut().for_each(|x| *x *= 6.0);
        let clipped = LossWeights {
            ratio_clip: epsilon,
            ..weights()
        };
        let params = VTraceParams::default();
        let device_batch = DeviceBatch::new(&host, 0.9, 0, &Device::Cpu).unwrap();
        let lagging = impala_loss(&net, &device_batch, &params, clipped, false, None).unwrap();

        let log_softmax = |row: &[f32]| {
            let max = row.iter().fold(f64::MIN, |m, &x| m.max(f64::from(x)));
            let sum: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
            row.iter().map(|&x| f64::from(x) - max - sum.ln()).collect::<Vec<f64>>()
        };
        let logits = values(&lagging.outputs.logits);
        let width = logits.len() / (l * b);
        let mask = values(&device_batch.mask);
        let (mut outside, mut decisions) = (0f64, 0f64);
        for i in 0..(l - 1) * b {
            let action = host.actions[i] as usize;
            let pi = log_softmax(&logits[i * width..(i + 1) * width])[action];
            let mu = log_softmax(&host.behaviour_logits[i * width..(i + 1) * width])[action];
            if ((pi - mu).exp() - 1.0).abs() > epsilon {
                outside += f64::from(mask[i]);
            }
            decisions += f64::from(mask[i]);
        }
        let expected = outside / decisions;
        assert!(expected > 0.5, "the batch lags: {expected}");
        assert!(
            (f64::from(lagging.clip_fraction) - expected).abs() < 1e-6,
            "clip fraction {} against {expected}",
            lagging.clip_fraction
        );

        host.behaviour_logits = logits;
        let fresh_batch = DeviceBatch::new(&host, 0.9, 0, &Device::Cpu).unwrap();
        let fresh = impala_loss(&net, &fresh_batch, &params, clipped, false, None).unwrap();
        assert_eq!(fresh.clip_fraction, 0.0);
    }

    #[test]
    fn standardized_advantages_have_zero_mean_and_unit_deviation_over_real_decisions() {
        let values = Tensor::new(&[[1f32, 5.0], [3.0, 100.0], [-2.0, 7.0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1f32, 1.0], [1.0, 0.0], [1.0, 1.0]], &Device::Cpu).unwrap();
        let out = standardize(&values, &mask, 5.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(out[3], 0.0, "a masked step stays zero: {out:?}");
        let kept: Vec<f64> = [0, 1, 2, 4, 5].iter().map(|&i| out[i] as f64).collect();
        let mean = kept.iter().sum::<f64>() / 5.0;
        let variance = kept.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 5.0;
        assert!(mean.abs() < 1e-6, "mean {mean}");
        assert!((variance - 1.0).abs() < 1e-5, "variance {variance}");
        // The order is kept: 7 is the largest real value, -2 the smallest.
        assert!(out[5] > out[1] && out[1] > out[2] && out[2] > out[0] && out[0] > out[4], "{out:?}");
    }

    #[test]
    fn reward_clipping_follows_impala() {
        let r = Tensor::new(&[-10f32, -0.5, 0.0, 0.5, 10.0], &Device::Cpu).unwrap();
        let unit = clip_rewards(&r, RewardClip::AbsOne).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(unit, vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        let soft = clip_rewards(&r, RewardClip::SoftAsymmetric).unwrap().to_vec1::<f32>().unwrap();
        let expected: Vec<f32> = [-10f32, -0.5, 0.0, 0.5, 10.0]
            .iter()
            .map(|&x| {
                let s = 5.0 * (x / 5.0).tanh();
                if x < 0.0 { 0.3 * s } else { s }
            })
            .collect();
        assert!(soft.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6), "{soft:?}");
        assert_eq!(
            clip_rewards(&r, RewardClip::None).unwrap().to_vec1::<f32>().unwrap(),
            r.to_vec1::<f32>().unwrap()
        );
    }
}
