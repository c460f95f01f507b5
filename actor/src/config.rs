//! Actor settings: what the `[actor]` section of the config holds, plus the
//! per-process wiring (id, addresses) the CLI fills in.

use serde::{Deserialize, Serialize};

/// The `[actor]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorConfig {
    /// Environments stepped together, one batched forward pass per step.
    pub num_envs: usize,
    /// Learning steps per sequence; sequences hold `burn_in + unroll_length
    /// + 1` steps.
    pub unroll_length: usize,
    /// Leading steps of each sequence that a recurrent learner only runs its
    /// core over (no gradient) to warm the stored state up (R2D2's burn-in).
    pub burn_in: usize,
    /// Steps between the starts of consecutive sequences of one environment,
    /// `1..=unroll_length`; 0 means `unroll_length` (learning steps tile the
    /// stream). Consecutive sequences share `burn_in + unroll_length + 1 −
    /// period` steps, which replay stores once.
    pub period: usize,
    /// Replay table the sequences go to.
    pub table: String,
    /// Further tables that get each sequence too, its steps stored once
    /// (e.g. a prioritised table beside the queue, for LASER's mix).
    pub also_tables: Vec<String>,
    /// Sequences sent but not yet acknowledged by replay; beyond this the
    /// actor waits (backpressure instead of a growing buffer).
    pub max_in_flight: usize,
    /// Episodes in the moving mean reported as `fleet_actor_episode_return_recent`.
    pub return_window: usize,
    /// Env steps whose episodes make up the step-weighted mean reported as
    /// `fleet_actor_episode_return_step_weighted`.
    pub return_window_steps: u64,
    /// Divide the rewards sent to replay by the running deviation of each
    /// environment's discounted return (at the learner's discount), as
    /// Gymnasium's `NormalizeReward` does; reported returns stay raw.
    pub normalize_rewards: bool,
}

impl Default for ActorConfig {
    fn default() -> Self {
        Self {
            num_envs: 128,
            unroll_length: 20,
            burn_in: 0,
            period: 0,
            table: "queue".into(),
            also_tables: Vec::new(),
            max_in_flight: 8,
            return_window: 100,
            return_window_steps: 50_000,
            normalize_rewards: false,
        }
    }
}

impl ActorConfig {
    /// Steps per sequence.
    pub fn sequence_length(&self) -> usize {
        self.burn_in + self.unroll_length + 1
    }

    /// Steps between sequence starts, with 0 resolved.
    pub fn sequence_period(&self) -> usize {
        if self.period == 0 { self.unroll_length } else { self.period }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.num_envs == 0 {
            return Err("actor.num_envs must be at least 1".into());
        }
        if self.unroll_length == 0 {
            return Err("actor.unroll_length must be at least 1".into());
        }
        if self.period > self.unroll_length {
            return Err(format!(
                "actor.period is {}; it must be at most unroll_length {} (0: unroll_length), or some steps are never learnt from",
                self.period, self.unroll_length
            ));
        }
        if self.max_in_flight == 0 {
            return Err("actor.max_in_flight must be at least 1".into());
        }
        if self.return_window == 0 {
            return Err("actor.return_window must be at least 1".into());
        }
        if self.return_window_steps == 0 {
            return Err("actor.return_window_steps must be at least 1".into());
        }
        if self.table.is_empty() {
            return Err("actor.table must not be empty".into());
        }
        if let Some(name) = self.also_tables.iter().find(|n| n.is_empty() || **n == self.table) {
            return Err(format!(
                "actor.also_tables names `{name}`: each must be a non-empty table other than actor.table (`{}`)",
                self.table
            ));
        }
        Ok(())
    }
}
