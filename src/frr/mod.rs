//! The FRR edge. FRR 8.4's northbound does not expose bgpd's neighbors, so
//! they come from vtysh (`show bgp vrf all neighbors json`); every call has
//! a timeout, and FRR being down is a state, never a crash.

pub mod reload;
pub mod vtysh;
