//! End-to-end tests of the `fleet` binary: real processes on loopback ports,
//! real gRPC clients, real `/metrics` scrapes.

mod support;

mod cli;
mod deploy;
mod k8s;
mod learning;
mod protocol;
mod roles;
