//! BGP peers: configured neighbors and their state from FRR, and live BGP
//! TCP sessions from sock_diag, so the guard still knows its peers when
//! FRR cannot be asked.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Model;

/// Where the guard learned about a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerSource {
    /// FRR's bgpd (vtysh `show bgp vrf all neighbors json`).
    Frr,
    /// An established TCP session on port 179.
    Socket,
}

/// A BGP neighbor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The neighbor's address.
    pub address: IpAddr,
    /// VRF name (`default` for the main instance).
    pub vrf: String,
    /// BGP state as FRR reports it (`Established`, `Connect`, ...), or
    /// `Established` for a live socket.
    pub state: String,
    /// Local address of the session, when known.
    pub local: Option<IpAddr>,
    /// Where it came from.
    pub source: PeerSource,
}

/// A peer with where the kernel reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerView {
    /// The peer.
    #[serde(flatten)]
    pub peer: Peer,
    /// Interface the peer is reached through (connected route), if any.
    pub ifname: Option<String>,
    /// That interface's index.
    pub ifindex: Option<u32>,
    /// The local prefix the peer sits in, if directly connected.
    pub prefix: Option<String>,
    /// Route type the kernel uses for the peer now (`unicast`, `local`,
    /// `anycast`: the hazard).
    pub route_type: Option<String>,
}

/// BGP's TCP port.
pub const BGP_PORT: u16 = 179;

/// Merges FRR's neighbors with BGP sessions seen in the socket table; FRR
/// wins where both know a peer (it has the configured-but-down ones too).
pub fn merge(frr: &[Peer], model: &Model) -> Vec<Peer> {
    let mut out: BTreeMap<(String, IpAddr), Peer> = BTreeMap::new();
    for s in model.sockets.values() {
        if s.local.port() == BGP_PORT || s.remote.port() == BGP_PORT {
            let p = Peer {
                address: s.remote.ip(),
                vrf: "default".into(),
                state: "Established".into(),
                local: Some(s.local.ip()),
                source: PeerSource::Socket,
            };
            out.insert((p.vrf.clone(), p.address), p);
        }
    }
    for p in frr {
        out.insert((p.vrf.clone(), p.address), p.clone());
    }
    out.into_values().collect()
}

/// Where the kernel reaches `peer`: the connected prefix and interface it
/// sits in (from the addresses), and the route type a lookup gives now.
pub fn view(model: &Model, peer: &Peer) -> PeerView {
    let mut v = PeerView { peer: peer.clone(), ifname: None, ifindex: None, prefix: None, route_type: None };
    let best = model
        .addresses
        .values()
        .filter(|a| a.key.address.is_ipv4() == peer.address.is_ipv4())
        .filter_map(|a| {
            let net = ipnetwork::IpNetwork::new(a.key.address, a.key.prefix_len).ok()?;
            net.contains(peer.address).then_some((a.key.prefix_len, a.key.ifindex, net))
        })
        .max_by_key(|(len, _, _)| *len);
    if let Some((_, ifindex, net)) = best {
        v.ifindex = Some(ifindex);
        v.ifname = Some(model.ifname(ifindex));
        v.prefix = Some(super::routes::normalize(net).to_string());
    }
    // The local table is consulted first, as the kernel does.
    let r = model.lookup(super::TABLE_LOCAL, peer.address).filter(|r| r.route.dst.prefix() == max_len(peer.address));
    let r = r.or_else(|| model.lookup(super::TABLE_MAIN, peer.address));
    v.route_type = r.map(|r| route_type(r.route.kind).to_string());
    v
}

fn max_len(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

fn route_type(kind: u8) -> &'static str {
    match kind {
        1 => "unicast",
        2 => "local",
        4 => "anycast",
        6 => "blackhole",
        7 => "unreachable",
        _ => "other",
    }
}
