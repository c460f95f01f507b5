//! fleet: distributed actor–learner reinforcement learning. This library is
//! the application layer over the member crates (`fleet-replay`,
//! `fleet-learner`, `fleet-actor`): each role is a function that takes its
//! config, already-bound listeners and a shutdown future, and returns once
//! the role has stopped, so the `fleet` binary, the tests and the benchmarks
//! all run the same code. It holds no algorithms (those live in the member
//! crates) and installs no signal handlers of its own except in [`cli`],
//! which only the binary calls. Errors are `anyhow` with context, as the
//! binary reports them.
//!
//! # Layout
//!
//! - [`replay`], [`learner`], [`actor`]: the roles, each a
//!   `run(config, …, listener(s), shutdown)`; `role` is what they share
//!   (the `/metrics` server and the shutdown token).
//! - [`config`]: the layered TOML config (default, file, environment, flags).
//! - [`export`]: `fleet export`, a run's policy as a PyTorch module.
//! - [`telemetry`]: the Prometheus recorder and the `/metrics` endpoint.
//! - [`launcher`]: `fleet run`, every role as a child process on one machine,
//!   and `fleet record`, the same run folder for a fleet started elsewhere.
//! - [`runs`]: the run folder `fleet run` writes (config, progress, summary,
//!   checkpoints, final policy).
//! - [`plot`]: `fleet plot`, learning curves of run folders as a PNG.
//! - [`eval`]: `fleet eval`, a run's policy played for whole episodes in
//!   this process, with its returns and optionally a GIF of it ([`render`]
//!   draws the pictures).
//! - [`progress`]: how `fleet run` shows progress: a live bar in a
//!   terminal, plain lines elsewhere.
//! - [`tensorboard`]: the progress rows as TensorBoard event files.
//! - [`process`]: spawning a `fleet` child, its ready line, killing it on drop.
//! - [`scrape`]: reading and parsing a process's `/metrics`.
//! - [`health`]: `fleet health`, for container health checks.
//! - [`cli`]: what the binary does around a role: logging, binding, signals,
//!   the ready line.
//! - [`bench`]: `fleet bench`, measurements that print tables.

#![forbid(unsafe_code)]

pub mod actor;
pub mod bench;
pub mod cli;
pub mod config;
pub mod eval;
pub mod export;
pub mod health;
pub mod launcher;
pub mod learner;
pub mod plot;
pub mod process;
pub mod progress;
pub mod render;
pub mod replay;
mod role;
pub mod runs;
pub mod scrape;
pub mod telemetry;
pub mod tensorboard;
