//! routeguard: a sidecar beside FRR that stops routing changes from
//! silently breaking traffic.
//!
//! Layout follows `architecture.md`: I/O lives at the edges (`kernel`,
//! `api`, `client`), the `model` is pure, and the `core` task is its single
//! owner.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod config;
pub mod core;
pub mod frr;
pub mod hazards;
pub mod journal;
pub mod kernel;
pub mod lab;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod selftest;

/// Generated protobuf and gRPC code.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    /// `routeguard.v1`.
    pub mod guard {
        tonic::include_proto!("routeguard.v1");
    }
    /// FRR's `frr` northbound package.
    pub mod frr {
        tonic::include_proto!("frr");
    }
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
