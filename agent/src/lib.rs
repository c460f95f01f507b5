//! What actor and learner share: the environment spec they agree on, the
//! actor-critic network, and weights as versioned safetensors blobs.
//!
//! Layout: the observation/action spec is the trajectory contract's
//! ([`EnvSpec`], from `fleet-trajectory`),
//! [`network`] (the actor-critic network: MLP or IMPALA CNN torso,
//! feed-forward or with an LSTM core, and its parameters; one file per
//! part under `network/`: its config, the MLP, the CNN torsos, the LSTM
//! core, the heads), [`distribution`] (the policy's distribution over
//! actions: categorical or Gaussian, sampled on the host, its
//! log-probabilities and entropy on tensors),
//! [`weights`] (serialising parameters for the wire and for checkpoints),
//! [`device`] (choosing a candle device at run time), and [`trajectory`]
//! (observations and the recurrent state's flat layout as candle tensors).
//! The network's CPU kernels (convolution, tanh, the LSTM cell, bias add)
//! live in the `fleet-kernels` crate.
//! Nothing here does I/O or knows about gRPC beyond the weight bytes.

#![forbid(unsafe_code)]

pub mod device;
pub mod distribution;
pub mod network;
pub mod trajectory;
pub mod weights;

pub use device::{DeviceError, select_device};
pub use distribution::PolicyDistribution;
pub use fleet_trajectory::{ActionSpec, Actions, EnvSpec, FrameShape, StateSpec};
pub use network::{Activation, ActorCritic, Core, FRAME_SCALE, LogStd, NetworkConfig, PolicyOutput, RecurrentState, Torso, WeightInit};
pub use trajectory::observations_tensor;
pub use weights::{Weights, WeightsError};
