//! End-to-end tests of the `fleet` binary and of its roles as library
//! functions: real processes (or in-process roles) on loopback ports, real
//! gRPC clients, real `/metrics` scrapes.

// Test helpers outside `#[test]` functions (servers, clients, fixtures) may
// unwrap too: clippy.toml's test allowances do not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod auth;
mod bad_input;
mod bench;
mod cli;
mod deploy;
mod env_bridge;
mod eval;
mod export;
mod faults;
mod k8s;
mod keepalive;
mod learning;
mod library;
mod protocol;
mod roles;
mod runs;
mod soak;
mod tls;
