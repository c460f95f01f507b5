//! fleet's replay service: tables of trajectory sequences that actors insert
//! into and the learner samples from, served over gRPC (`fleet.v1.Replay`).
//!
//! # Layout
//!
//! - [`config`]: what tables exist and the service-wide bounds; parsed with
//!   serde, checked by [`ReplayConfig::validate`].
//! - [`validate`]: the pure check of one incoming sequence, yielding the
//!   [`Signature`] that all items of a table share.
//! - [`chunk`]: step data stored once — reference-counted chunks that
//!   overlapping items and several tables share, optionally compressed.
//! - [`sum_tree`]: the sum tree behind prioritised sampling (plain data
//!   structure).
//! - [`sampler`]: the sampling rules — fifo, lifo, uniform, prioritised.
//! - [`rate_limiter`]: Reverb's rate limiter — when inserts and samples may
//!   proceed given the table's counters (a pure decision).
//! - [`table`]: one table — items, sampler, remover, `max_times_sampled`,
//!   importance weights, and the waiting that makes inserts and samples block
//!   (never poll).
//! - [`checkpoint`]: what a checkpoint of the tables holds and how it
//!   decodes (`fleet_checkpoint` writes and checks the files).
//! - [`wal`]: the write-ahead log (`replay.durability = "wal"`): every
//!   table change appended under the table's lock, synced in groups, and
//!   applied again on top of the newest checkpoint at start.
//! - [`share`]: a fair share of the server, by bytes, between insert and
//!   sample streams when both have work waiting.
//! - [`service`]: the gRPC service over the tables, and [`serve`], which runs
//!   it with the health service until shutdown.
//! - [`metrics`]: metric names, descriptions and per-table handles.
//! - [`error`]: the crate's error type and its one mapping to gRPC statuses.
//!
//! Not here: the exporter for metrics and signal handling (the binary's job),
//! and anything the learner or actors compute.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod chunk;
pub mod config;
pub mod error;
pub mod metrics;
pub mod rate_limiter;
pub mod sampler;
pub mod service;
pub mod share;
pub mod sum_tree;
pub mod table;
pub mod validate;
pub mod wal;

pub use config::{Codec, Compression, Durability, Preset, ReplayConfig, SamplerKind, TableConfig};
pub use error::Error;
pub use service::{ReplayService, Restore, serve, serve_announcing};
pub use table::Table;
pub use validate::{Signature, ValidationError, validate_sequence};
