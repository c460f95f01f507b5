//! `fleet bench`: measurements that print a table of numbers.
//!
//! - [`replay`]: the replay service under concurrent gRPC load.
//! - [`compression`]: the replay codecs on vector and image steps.
//! - [`learner`]: learner updates on synthetic batches, per model.
//! - [`env`]: the configured environment vector (native or bridged) alone.
//! - [`e2e`]: the whole system as `fleet run` starts it, per actor count and core.

pub mod compression;
pub mod e2e;
pub mod env;
pub mod learner;
pub mod replay;
