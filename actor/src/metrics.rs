//! The actor's metric names, in one place, and their descriptions.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub const ENV_STEPS: &str = "fleet_actor_env_steps_total";
pub const EPISODES: &str = "fleet_actor_episodes_total";
pub const EPISODE_RETURN: &str = "fleet_actor_episode_return";
pub const EPISODE_RETURN_RECENT: &str = "fleet_actor_episode_return_recent";
pub const EPISODE_RETURN_RECENT_MIN: &str = "fleet_actor_episode_return_recent_min";
pub const EPISODE_RETURN_RECENT_MEDIAN: &str = "fleet_actor_episode_return_recent_median";
pub const EPISODE_RETURN_RECENT_MAX: &str = "fleet_actor_episode_return_recent_max";
pub const EPISODE_RETURN_STEP_WEIGHTED: &str = "fleet_actor_episode_return_step_weighted";
pub const RETURN_WINDOW_STEPS: &str = "fleet_actor_episode_return_window_steps";
pub const POLICY_LAG: &str = "fleet_actor_policy_lag_versions";
pub const SEQUENCES_SENT: &str = "fleet_actor_sequences_sent_total";
pub const SEQUENCES_ACKED: &str = "fleet_actor_sequences_acked_total";
pub const SEQUENCES_REJECTED: &str = "fleet_actor_sequences_rejected_total";
pub const SEQUENCES_PENDING: &str = "fleet_actor_sequences_pending";
pub const WEIGHTS_VERSION: &str = "fleet_actor_weights_version";
pub const RECONNECTS: &str = "fleet_actor_reconnects_total";
pub const ENV_BRIDGE_RESTARTS: &str = "fleet_actor_env_bridge_restarts_total";

/// Histogram buckets, so histograms aggregate across actors.
pub const EPISODE_RETURN_BUCKETS: &[f64] = &[10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 400.0, 450.0, 475.0, 500.0, 1000.0];
pub const POLICY_LAG_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0];

pub fn describe() {
    describe_counter!(ENV_STEPS, "Environment steps taken (resets are not steps)");
    describe_counter!(EPISODES, "Episodes finished");
    describe_histogram!(EPISODE_RETURN, "Undiscounted return of each finished episode");
    describe_gauge!(
        EPISODE_RETURN_RECENT,
        "Mean return of this actor's most recent episodes (actor.return_window)"
    );
    describe_gauge!(
        EPISODE_RETURN_RECENT_MIN,
        "Lowest return of this actor's most recent episodes (actor.return_window)"
    );
    describe_gauge!(
        EPISODE_RETURN_RECENT_MEDIAN,
        "Median return of this actor's most recent episodes (actor.return_window)"
    );
    describe_gauge!(
        EPISODE_RETURN_RECENT_MAX,
        "Highest return of this actor's most recent episodes (actor.return_window)"
    );
    describe_gauge!(
        EPISODE_RETURN_STEP_WEIGHTED,
        "Mean return of this actor's episodes that fill its last actor.return_window_steps env steps, each weighted by its length"
    );
    describe_gauge!(
        RETURN_WINDOW_STEPS,
        "Env steps in the episodes behind fleet_actor_episode_return_step_weighted (to weight it across actors)"
    );
    describe_histogram!(
        POLICY_LAG,
        "Per sequence sent: newest weights version known minus the oldest behaviour version in it"
    );
    describe_counter!(SEQUENCES_SENT, "Sequences sent to replay (including resends after a reconnect)");
    describe_counter!(SEQUENCES_ACKED, "Sequences replay acknowledged");
    describe_counter!(SEQUENCES_REJECTED, "Sequences replay refused as invalid");
    describe_gauge!(
        SEQUENCES_PENDING,
        "Sequences finished and neither acknowledged nor refused by replay: queued for the insert stream or in flight (at most 2 × actor.max_in_flight + 1)"
    );
    describe_gauge!(WEIGHTS_VERSION, "Version of the weights the policy acts with");
    describe_counter!(RECONNECTS, "Connections (re)established to replay or the learner");
    describe_counter!(
        ENV_BRIDGE_RESTARTS,
        "Attempts to reopen a bridged environment vector after its server was lost"
    );
}
