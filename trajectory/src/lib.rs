//! The one trajectory contract: what a step and a sequence of steps hold,
//! from the environment that produces them to the loss that consumes them.
//! Actor, replay and learner all describe data with these types, so a new
//! kind of observation or action changes this crate and the few places that
//! match on it, not every stage of the path.
//!
//! Layout: [`spec`] (element types, observation and action spaces: an
//! environment's [`EnvSpec`]), [`actions`] (actions on their way from the
//! policy to the environments), [`state`] (the recurrent state a sequence
//! starts from and its flat layout), [`signature`] (what every item of one
//! replay table agrees on, and which steps are real decisions),
//! [`observations`] (buffers of observations in the element type they
//! travel in).
//!
//! Nothing here knows about gRPC, tensors of a framework or I/O: the wire
//! format (`fleet-proto`) and the networks (`fleet-agent`) build on it.

#![forbid(unsafe_code)]

pub mod actions;
pub mod observations;
pub mod signature;
pub mod spec;
pub mod state;

pub use actions::{Action, ActionBounds, Actions};
pub use observations::{Observations, ObservationsMut, ObservationsRef};
pub use signature::{Signature, is_decision};
pub use spec::{ActionSpec, Dtype, EnvSpec, FrameShape, ObservationSpec};
pub use state::StateSpec;
