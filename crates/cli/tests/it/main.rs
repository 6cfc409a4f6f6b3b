//! Integration tests: the real server on port 0, driven over HTTP by real clients.

// Test helpers outside #[test] functions fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod authz;
mod bad_input;
mod boundary;
mod cli;
mod crash;
mod crash_loop;
mod deploy;
mod egress;
mod faults;
mod host_users;
mod identity;
mod images;
mod issuer;
mod limits;
mod oidc;
mod ops;
mod preflight;
mod pytes;
mod replicas;
mod resources;
mod sandbox;
mod secrets;
mod slurm;
mod storage;
mod support;
mod tes;
mod workflows;
