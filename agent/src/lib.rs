//! What actor and learner share: the environment spec they agree on, the
//! actor-critic network, and weights as versioned safetensors blobs.
//!
//! Layout: the observation/action spec is the trajectory contract's
//! ([`EnvSpec`], from `fleet-trajectory`),
//! [`network`] (the actor-critic network: MLP or IMPALA CNN torso,
//! feed-forward or with an LSTM core, and its parameters),
//! [`weights`] (serialising parameters for the wire and for checkpoints),
//! [`device`] (choosing a candle device at run time), [`conv`] (a faster
//! CPU conv2d whose backward can skip the input gradient), [`activation`]
//! (vectorised CPU tanh and a fused LSTM cell), [`bias`] (a bias add whose gradient
//! is one contiguous pass), and [`trajectory`] (observations and the recurrent
//! state's flat layout as candle tensors).
//! Nothing here does I/O or knows about gRPC beyond the weight bytes.

pub mod activation;
pub mod bias;
pub mod conv;
mod cpu;
pub mod device;
pub mod network;
pub mod trajectory;
pub mod weights;

pub use device::{DeviceError, select_device};
pub use fleet_trajectory::{EnvSpec, FrameShape, StateSpec};
pub use network::{Activation, ActorCritic, Core, NetworkConfig, PolicyOutput, RecurrentState, Torso};
pub use trajectory::observations_tensor;
pub use weights::{Weights, WeightsError};
