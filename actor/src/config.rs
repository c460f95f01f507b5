//! Actor settings: what the `[actor]` section of the config holds, plus the
//! per-process wiring (id, addresses) the CLI fills in.

use serde::{Deserialize, Serialize};

/// The `[actor]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorConfig {
    /// Environments stepped together, one batched forward pass per step.
    pub num_envs: usize,
    /// Learning steps per sequence; sequences hold `unroll_length + 1` steps.
    pub unroll_length: usize,
    /// Replay table the sequences go to.
    pub table: String,
    /// Sequences sent but not yet acknowledged by replay; beyond this the
    /// actor waits (backpressure instead of a growing buffer).
    pub max_in_flight: usize,
    /// Episodes in the moving mean reported as `fleet_actor_episode_return_recent`.
    pub return_window: usize,
}

impl Default for ActorConfig {
    fn default() -> Self {
        Self {
            num_envs: 16,
            unroll_length: 20,
            table: "queue".into(),
            max_in_flight: 8,
            return_window: 100,
        }
    }
}

impl ActorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.num_envs == 0 {
            return Err("actor.num_envs must be at least 1".into());
        }
        if self.unroll_length == 0 {
            return Err("actor.unroll_length must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return Err("actor.max_in_flight must be at least 1".into());
        }
        if self.return_window == 0 {
            return Err("actor.return_window must be at least 1".into());
        }
        if self.table.is_empty() {
            return Err("actor.table must not be empty".into());
        }
        Ok(())
    }
}
