//! Subnet-Router anycast labs (field-notes, Hazard 2) with real FRR: the
//! control experiments, without routeguard, that show what the kernel and
//! bgpd do.

mod common;

use std::time::Duration;

use common::bgp_lab::BgpLab;
use common::eventually;

/// Peer at `prefix::`: `all.forwarding=1` on the VM turns the route to the
/// peer into a local anycast; the session survives until its next reset,
/// then cannot come back until `<vm_if>.forwarding=0` drops the anycast.
#[test]
fn control_forwarding_on_kills_the_session_at_its_next_reset() {
    let lab = BgpLab::new("ac0", true);
    assert_eq!(lab.state(), "Established");

    lab.vm_sysctl("net.ipv6.conf.all.forwarding=1");
    let (route, _) = eventually(Duration::from_secs(2), || {
        let r = lab.route_to_peer();
        r.contains("anycast").then_some(r.clone()).ok_or(r)
    });
    assert!(route.contains("table local"), "route to the peer: {route}");
    // The established session itself is not hit (its cached route stays).
    assert_eq!(lab.state(), "Established");

    let stuck = lab.reset_and_wait(Duration::from_secs(15));
    assert_eq!(stuck, None, "session came back although {} is a local anycast", lab.peer);
    let last = lab.state();
    assert_ne!(last, "Established");
    eprintln!("after reset with the anycast: still {last} after 15 s");

    lab.vm_sysctl(&format!("net.ipv6.conf.{}.forwarding=0", lab.vm_if));
    let route = lab.route_to_peer();
    assert!(!route.contains("anycast"), "anycast still there: {route}");
    let back = lab.wait_established(Duration::from_secs(10));
    assert!(back.is_some(), "not Established within 10 s of {}.forwarding=0 (state {})", lab.vm_if, lab.state());
    eprintln!("Established {:.1?} after {}.forwarding=0", back.unwrap(), lab.vm_if);
}

/// Peer at `prefix::2` (VM `::1`): forwarding adds the anycast for `prefix::`
/// but the peer is not behind it, so a reset re-establishes normally.
#[test]
fn peer_at_one_is_unaffected() {
    let lab = BgpLab::new("ac1", false);
    assert_eq!(lab.state(), "Established");
    lab.vm_sysctl("net.ipv6.conf.all.forwarding=1");
    let route = lab.route_to_peer();
    assert!(!route.contains("anycast"), "route to the peer: {route}");
    let took = lab.reset_and_wait(Duration::from_secs(10));
    assert!(took.is_some(), "not Established within 10 s of clear bgp * (state {})", lab.state());
    eprintln!("reset with forwarding=1, peer at ::2: Established again after {:.1?}", took.unwrap());
}
