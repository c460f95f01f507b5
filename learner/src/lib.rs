//! fleet's learner: pulls batches of sequences from replay, computes V-trace
//! targets and the IMPALA loss on candle tensors, steps the optimiser, and
//! publishes versioned weights through the `Parameters` service.
//!
//! Layout: [`vtrace`] (targets and advantages), [`batch`] (sampled items to
//! time-major tensors), [`loss`], [`optim`] (gradient clipping, Adam/AdamW and RMSProp),
//! [`checkpoint`] (what a checkpoint holds; `fleet_checkpoint` writes it),
//! [`learner`] (state and one update, no I/O), [`parameters`] (the weights
//! service), [`prefetch`] (sampling the queue and the prioritised table
//! into batches), [`priorities`] (new priorities back to replay, in the
//! background), [`targets`] (targets kept from a sequence's first draw),
//! [`runtime`] (the process), [`config`], [`metrics`].

#![forbid(unsafe_code)]

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod learner;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod parameters;
pub mod prefetch;
pub mod priorities;
pub mod runtime;
pub mod stats_log;
pub mod targets;
pub mod vtrace;

pub use config::{InitialState, LearnerConfig};
pub use learner::{Learner, UpdateError, UpdateStats};
pub use runtime::{LearnerError, LearnerSettings, run};
