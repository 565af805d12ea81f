//! The FRR edge. FRR 8.4's northbound does not expose bgpd's neighbors, so
//! they come from vtysh (`show bgp vrf all neighbors json`); every call has
//! a timeout, and FRR being down is a state, never a crash. The gRPC
//! northbound client watches each daemon's configuration, and the
//! northbound proxy judges commits before forwarding them.

pub mod northbound;
pub mod proxy;
pub mod reload;
pub mod static_routes;
pub mod vtysh;
pub mod xpath;
