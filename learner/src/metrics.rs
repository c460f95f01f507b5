//! The learner's metric names, in one place, and their descriptions.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub const UPDATES: &str = "fleet_learner_updates_total";
pub const SKIPPED_UPDATES: &str = "fleet_learner_skipped_updates_total";
pub const LOSS: &str = "fleet_learner_loss";
pub const ENTROPY: &str = "fleet_learner_policy_entropy";
pub const GRAD_NORM: &str = "fleet_learner_grad_norm";
pub const CLIPPED_RHO: &str = "fleet_learner_clipped_rho_fraction";
pub const CLIP_FRACTION: &str = "fleet_learner_clip_fraction";
pub const WEIGHTS_VERSION: &str = "fleet_learner_weights_version";
pub const POLICY_LAG: &str = "fleet_learner_policy_lag_versions";
/// Per sampled fresh sequence: versions between the learner and the oldest
/// policy that made one of its learning decisions.
pub const SEQUENCE_AGE: &str = "fleet_learner_sequence_age_versions";
pub const STALE_DROPPED: &str = "fleet_learner_stale_sequences_dropped_total";
pub const LOGIT_GAP: &str = "fleet_learner_logit_gap";
pub const RHO: &str = "fleet_learner_importance_ratio";
pub const VALUE_MEAN: &str = "fleet_learner_value_mean";
pub const RELATIVE_STEP: &str = "fleet_learner_relative_step";
pub const LAYER_GRAD_NORM: &str = "fleet_learner_layer_grad_norm";
pub const BATCH_WAIT: &str = "fleet_learner_batch_wait_seconds";
pub const FRAMES: &str = "fleet_learner_frames_total";
pub const BAD_BATCHES: &str = "fleet_learner_bad_batches_total";
pub const MEAN_ABS_ADVANTAGE: &str = "fleet_learner_mean_abs_advantage";
pub const LEARNING_RATE: &str = "fleet_learner_learning_rate";
pub const CHECKPOINTS: &str = "fleet_learner_checkpoints_total";
pub const CHECKPOINT_TIME: &str = "fleet_learner_last_checkpoint_timestamp_seconds";
/// Sequences taken into batches, by `source` = online | replay.
pub const SAMPLED_SEQUENCES: &str = "fleet_learner_sampled_sequences_total";
/// Per replayed sequence: the sampler's normalised importance weight.
pub const IMPORTANCE_WEIGHTS: &str = "fleet_learner_importance_weights";
pub const BETA: &str = "fleet_learner_importance_beta";
pub const PRIORITY_UPDATES: &str = "fleet_learner_priority_updates_total";
pub const PRIORITY_UPDATES_DROPPED: &str = "fleet_learner_priority_updates_dropped_total";
pub const IMPORTANCE_WEIGHT_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0];

/// Per sampled sequence of a recurrent agent: how far the values of its
/// learning steps move when the burn-in starts from zeros instead of the
/// stored state, relative to their size (see `loss::state_staleness`).
pub const STATE_STALENESS: &str = "fleet_learner_state_staleness";
/// The same for the policy: mean total-variation distance.
pub const POLICY_STALENESS: &str = "fleet_learner_policy_staleness";
pub const STALENESS_BUCKETS: &[f64] = &[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0];
pub const POLICY_LAG_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];
pub const BATCH_WAIT_BUCKETS: &[f64] = &[0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

pub fn describe() {
    describe_counter!(UPDATES, "Optimiser updates applied");
    describe_counter!(SKIPPED_UPDATES, "Optimiser steps skipped because the gradient was not finite");
    describe_gauge!(LOSS, "Loss terms of the latest update (label kind = policy|baseline|entropy|total)");
    describe_gauge!(ENTROPY, "Mean policy entropy over the latest batch");
    describe_gauge!(GRAD_NORM, "Global gradient norm of the latest update, before clipping");
    describe_gauge!(
        CLIPPED_RHO,
        "Share of the latest batch's steps whose importance ratio exceeded rho_bar"
    );
    describe_gauge!(
        CLIP_FRACTION,
        "Share of the latest update's steps whose surrogate ratio lay outside the trust region of ratio_clip"
    );
    describe_gauge!(WEIGHTS_VERSION, "Version of the newest published weights");
    describe_histogram!(
        POLICY_LAG,
        "Per learning step: learner version minus the behaviour policy's version"
    );
    describe_histogram!(
        SEQUENCE_AGE,
        "Per sampled sequence from the fresh-sequence table: learner version minus the oldest behaviour version among its learning decisions"
    );
    describe_counter!(
        STALE_DROPPED,
        "Fresh sequences dropped unlearnt because their age exceeded learner.max_policy_lag"
    );
    describe_gauge!(
        LOGIT_GAP,
        "Highest minus lowest logit of the latest batch's decisions (label stat = mean|max); above ~12 the policy is deterministic"
    );
    describe_gauge!(
        RHO,
        "Importance ratio pi/mu of the latest batch's taken actions before clipping (label stat = mean|max)"
    );
    describe_gauge!(VALUE_MEAN, "Mean value estimate over the latest batch's decisions");
    describe_gauge!(
        RELATIVE_STEP,
        "Norm of the latest update's parameter change over the parameters' norm"
    );
    describe_gauge!(
        LAYER_GRAD_NORM,
        "Gradient norm of each parameter tensor in the latest update, before clipping (label layer)"
    );
    describe_histogram!(BATCH_WAIT, "Time the update loop waited for its next batch");
    describe_histogram!(
        STATE_STALENESS,
        "Per sampled sequence (recurrent core): relative change of the learning steps' values when the burn-in starts from zeros instead of the stored state; near 0 means the burn-in is long enough"
    );
    describe_histogram!(
        POLICY_STALENESS,
        "Per sampled sequence (recurrent core): mean total-variation distance of the learning steps' policies between the stored-state and zero-state burn-in"
    );
    describe_counter!(FRAMES, "Environment steps consumed by updates");
    describe_counter!(BAD_BATCHES, "Sampled batches refused as inconsistent");
    describe_gauge!(MEAN_ABS_ADVANTAGE, "Mean absolute policy-gradient advantage over the latest batch");
    describe_gauge!(LEARNING_RATE, "Learning rate of the latest update");
    describe_counter!(CHECKPOINTS, "Checkpoints written");
    describe_counter!(
        SAMPLED_SEQUENCES,
        "Sequences taken into batches (label source = online: the fresh-sequence queue, replay: the prioritised table)"
    );
    describe_histogram!(
        IMPORTANCE_WEIGHTS,
        "Per replayed sequence: importance weight (N·P)^-β normalised by its batch's maximum; it scales the sequence's loss"
    );
    describe_gauge!(BETA, "Importance-sampling exponent β of the latest replay sample request");
    describe_counter!(PRIORITY_UPDATES, "Priority updates accepted by the replay table");
    describe_counter!(
        PRIORITY_UPDATES_DROPPED,
        "Priority updates not delivered (sender behind, replay unreachable or refusing)"
    );
    describe_gauge!(
        CHECKPOINT_TIME,
        "Unix time of the newest checkpoint (checkpoint age = time() minus this)"
    );
}
