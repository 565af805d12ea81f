//! The kernel edge: everything that talks rtnetlink, sock_diag or /proc.
//!
//! Converts wire formats into model [`crate::model::Change`]s. Netlink types
//! never leave this module.

pub mod convert;
pub mod decode;
pub mod dump;
pub mod monitor;
pub mod nl;
pub mod reflex;
pub mod route_get;
pub mod sockdiag;
mod sockopt;
pub mod syn_observer;
pub mod sysctl;
pub mod writer;
