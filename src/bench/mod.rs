//! `fleet bench`: measurements that print a table of numbers.
//!
//! - [`replay`]: the replay service under concurrent gRPC load.
//! - [`compression`]: the replay codecs on vector and image steps.

pub mod compression;
pub mod replay;
