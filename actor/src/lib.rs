//! fleet's actor: steps a vector of environments with one batched forward
//! pass of the policy per step, cuts each environment's steps into
//! overlapping sequences, streams them to replay with bounded in-flight items,
//! and swaps in newer weights from the learner between steps.
//!
//! Layout: [`env`] (native environments and the vector of them),
//! [`sequence`] (the sequence writer), [`returns`] (recent episode returns),
//! [`rewards`] (reward normalisation),
//! [`runtime`] (the process: compute thread plus gRPC tasks), [`config`],
//! [`metrics`].

#![forbid(unsafe_code)]

pub mod config;
pub mod env;
pub mod metrics;
pub mod returns;
pub mod rewards;
pub mod runtime;
pub mod sequence;

pub use config::ActorConfig;
pub use runtime::{ActorError, ActorSettings, run};
