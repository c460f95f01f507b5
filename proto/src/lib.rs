//! fleet's wire protocol: the generated `fleet.v1` messages and services (in
//! [`pb`]), plus the small conversions every side needs — typed slices to and
//! from [`pb::Tensor`], and cutting weight blobs into bounded chunks and
//! joining them again, and the trajectory contract's types on the wire
//! ([`trajectory`]), and the optional bearer token clients send and
//! servers check ([`auth`]) and the optional TLS they connect with
//! ([`tls`]), and the codec the services encode with ([`codec`]). No
//! validation of whole messages lives here; each service validates what it
//! receives.

#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod connect;
pub mod sequence;
pub mod tensor;
pub mod tls;
pub mod trajectory;
pub mod weights;

/// Generated code for package `fleet.v1`.
pub mod pb {
    tonic::include_proto!("fleet.v1");
}

pub use tensor::TensorError;
pub use trajectory::{SignatureError, signature};
pub use weights::{MAX_CHUNK_BYTES, WeightsAssembler, WeightsError, chunk_weights};

/// Default bound on one gRPC message, both directions (4 MiB, tonic's default).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
