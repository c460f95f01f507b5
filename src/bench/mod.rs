//! `fleet bench`: measurements that print a table of numbers.
//!
//! - [`replay`]: the replay service under concurrent gRPC load.
//! - [`compression`]: the replay codecs on vector and image steps.
//! - [`learner`]: learner updates on synthetic batches, per model.

pub mod compression;
pub mod learner;
pub mod replay;
