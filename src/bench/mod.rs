//! `fleet bench`: measurements that print a table of numbers.
//!
//! - [`replay`]: the replay service under concurrent gRPC load.
//! - [`compression`]: the replay codecs on vector and image steps.
//! - [`learner`]: learner updates on synthetic batches, per model.
//! - [`env`]: the configured environment vector (native or bridged) alone.

pub mod compression;
pub mod env;
pub mod learner;
pub mod replay;
