//! End-to-end tests of the `fleet` binary and of its roles as library
//! functions: real processes (or in-process roles) on loopback ports, real
//! gRPC clients, real `/metrics` scrapes.

mod support;

mod cli;
mod deploy;
mod k8s;
mod learning;
mod library;
mod protocol;
mod roles;
