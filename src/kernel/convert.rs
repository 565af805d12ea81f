//! Netlink messages to model [`Change`]s.
//!
//! Link, address, route and rule messages are parsed with
//! netlink-packet-route; nexthop objects, netconf and anycast with our own
//! decoders in [`super::decode`]. Nothing here panics on bad input: a
//! message that does not parse is reported as an error and skipped by the
//! caller, the rest of the datagram is still used.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{Nla, ParseableParametrized};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoGre, InfoGre6, InfoIpTunnel, InfoPortData, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteNextHop};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::decode;
use crate::model::{
    Address, AddressKey, Anycast, BridgePort, Change, ConfScope, GroupMember, Link, NextHop, Nexthop, Resilient, Route,
    RouteAttrs, Rule, TunnelEnds,
};

/// RTM_* message types handled here.
pub mod rtm {
    /// RTM_NEWLINK.
    pub const NEWLINK: u16 = 16;
    /// RTM_DELLINK.
    pub const DELLINK: u16 = 17;
    /// RTM_GETLINK.
    pub const GETLINK: u16 = 18;
    /// RTM_NEWADDR.
    pub const NEWADDR: u16 = 20;
    /// RTM_DELADDR.
    pub const DELADDR: u16 = 21;
    /// RTM_GETADDR.
    pub const GETADDR: u16 = 22;
    /// RTM_NEWROUTE.
    pub const NEWROUTE: u16 = 24;
    /// RTM_DELROUTE.
    pub const DELROUTE: u16 = 25;
    /// RTM_GETROUTE.
    pub const GETROUTE: u16 = 26;
    /// RTM_NEWRULE.
    pub const NEWRULE: u16 = 32;
    /// RTM_DELRULE.
    pub const DELRULE: u16 = 33;
    /// RTM_GETRULE.
    pub const GETRULE: u16 = 34;
    /// RTM_NEWANYCAST.
    pub const NEWANYCAST: u16 = 60;
    /// RTM_DELANYCAST.
    pub const DELANYCAST: u16 = 61;
    /// RTM_GETANYCAST.
    pub const GETANYCAST: u16 = 62;
    /// RTM_NEWNETCONF.
    pub const NEWNETCONF: u16 = 80;
    /// RTM_DELNETCONF.
    pub const DELNETCONF: u16 = 81;
    /// RTM_GETNETCONF.
    pub const GETNETCONF: u16 = 82;
    /// RTM_NEWNEXTHOP.
    pub const NEWNEXTHOP: u16 = 104;
    /// RTM_DELNEXTHOP.
    pub const DELNEXTHOP: u16 = 105;
    /// RTM_GETNEXTHOP.
    pub const GETNEXTHOP: u16 = 106;
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const AF_BRIDGE: u8 = 7;
/// RTM_F_CLONED: a cached route (exception), not a FIB entry.
const RTM_F_CLONED: u32 = 0x200;
/// Nexthop flags that are configuration (RTNH_F_PERVASIVE, RTNH_F_ONLINK);
/// the others (dead, linkdown, offload, trap) are liveness state the kernel
/// changes without notifications, derivable from link state instead.
const RTNH_F_CONFIG: u8 = 0x2 | 0x4;
/// IFLA_BRPORT_MODE inside AF_BRIDGE IFLA_PROTINFO: hairpin.
const IFLA_BRPORT_MODE: u16 = 4;

/// Why one message could not be converted.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode rtnetlink message type {msg_type}: {reason}")]
pub struct ConvertError {
    /// The RTM_* type of the message.
    pub msg_type: u16,
    /// What went wrong.
    pub reason: String,
}

fn err(msg_type: u16, reason: impl ToString) -> ConvertError {
    ConvertError { msg_type, reason: reason.to_string() }
}

/// Converts one message payload (after the 16-byte header) into zero or
/// more changes appended to `out`. Types this module does not model are
/// ignored.
pub fn convert(msg_type: u16, payload: &[u8], out: &mut Vec<Change>) -> Result<(), ConvertError> {
    use rtm::*;
    match msg_type {
        NEWLINK | DELLINK | NEWADDR | DELADDR | NEWROUTE | DELROUTE | NEWRULE | DELRULE => {
            let msg = RouteNetlinkMessage::parse_with_param(payload, msg_type).map_err(|e| err(msg_type, e))?;
            match msg {
                RouteNetlinkMessage::NewLink(m) => link_changes(m, false, out),
                RouteNetlinkMessage::DelLink(m) => link_changes(m, true, out),
                RouteNetlinkMessage::NewAddress(m) => out.extend(address(m, false)),
                RouteNetlinkMessage::DelAddress(m) => out.extend(address(m, true)),
                RouteNetlinkMessage::NewRoute(m) => out.extend(route(m).map(Change::Route)),
                RouteNetlinkMessage::DelRoute(m) => out.extend(route(m).map(Change::RouteGone)),
                RouteNetlinkMessage::NewRule(m) => out.extend(rule(m).map(Change::Rule)),
                RouteNetlinkMessage::DelRule(m) => out.extend(rule(m).map(Change::RuleGone)),
                _ => {}
            }
        }
        NEWNEXTHOP | DELNEXTHOP => {
            let n = decode::nexthop::parse_nexthop(payload).map_err(|e| err(msg_type, e))?;
            if msg_type == DELNEXTHOP {
                out.push(Change::NexthopGone(n.id));
            } else if !n.fdb {
                out.push(Change::Nexthop(nexthop(n)));
            }
        }
        NEWNETCONF => {
            let n = decode::netconf::parse_netconf(payload).map_err(|e| err(msg_type, e))?;
            if let Some(value) = n.forwarding {
                let v6 = match n.family {
                    AF_INET6 => true,
                    AF_INET => false,
                    _ => return Ok(()),
                };
                let scope = match n.ifindex {
                    decode::netconf::NetconfScope::All => ConfScope::All,
                    decode::netconf::NetconfScope::Default => ConfScope::Default,
                    decode::netconf::NetconfScope::Index(i) => ConfScope::Iface(i),
                };
                out.push(Change::Forwarding { v6, scope, value });
            }
        }
        // Replies to an anycast dump carry the request's type (GETANYCAST).
        NEWANYCAST | GETANYCAST | DELANYCAST => {
            let a = decode::anycast::parse_anycast(payload).map_err(|e| err(msg_type, e))?;
            let a = Anycast { ifindex: a.ifindex, address: a.address };
            out.push(if msg_type == DELANYCAST { Change::AnycastGone(a) } else { Change::Anycast(a) });
        }
        _ => {}
    }
    Ok(())
}

fn link_changes(m: LinkMessage, gone: bool, out: &mut Vec<Change>) {
    let ifindex = m.header.index;
    if u8::from(m.header.interface_family) == AF_BRIDGE {
        // AF_BRIDGE messages describe a link's bridge-port side. RTM_DELLINK
        // here means "no longer a bridge port", not "link removed".
        if gone {
            out.push(Change::BridgePort(ifindex, None));
            return;
        }
        let mut hairpin = None;
        for a in &m.attributes {
            if let LinkAttribute::ProtoInfoBridge(infos) = a {
                for i in infos {
                    if let netlink_packet_route::link::LinkProtoInfoBridge::Other(nla) = i {
                        if nla.kind() == IFLA_BRPORT_MODE {
                            let mut v = vec![0u8; nla.value_len()];
                            nla.emit_value(&mut v);
                            hairpin = v.first().map(|b| *b != 0);
                        }
                    }
                }
            }
        }
        if let Some(h) = hairpin {
            out.push(Change::BridgePort(ifindex, Some(BridgePort { hairpin: h })));
        }
        return;
    }
    if gone {
        out.push(Change::LinkGone(ifindex));
        return;
    }
    let mut link = Link {
        ifindex,
        name: String::new(),
        kind: None,
        master: None,
        flags: m.header.flags.bits(),
        mtu: 0,
        bridge_port: None,
        tunnel: None,
        tx_packets: 0,
        tx_carrier_errors: 0,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(v) => link.mtu = v,
            LinkAttribute::Controller(v) => link.master = Some(v),
            LinkAttribute::Stats64(s) => {
                link.tx_packets = s.tx_packets;
                link.tx_carrier_errors = s.tx_carrier_errors;
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::PortData(InfoPortData::BridgePort(attrs)) => {
                            let hairpin = attrs.iter().any(|a| matches!(a, InfoBridgePort::HairpinMode(true)));
                            link.bridge_port = Some(BridgePort { hairpin });
                        }
                        LinkInfo::Data(InfoData::IpTunnel(attrs)) => {
                            let mut ends = TunnelEnds { local: None, remote: None };
                            for t in attrs {
                                match t {
                                    InfoIpTunnel::Local(ip) => ends.local = nonzero(ip),
                                    InfoIpTunnel::Remote(ip) => ends.remote = nonzero(ip),
                                    _ => {}
                                }
                            }
                            link.tunnel = Some(ends);
                        }
                        // gre and ip6gre carry IFLA_GRE_LOCAL/REMOTE, which
                        // netlink-packet-route parses into its own types.
                        LinkInfo::Data(InfoData::GreTun(attrs)) => {
                            let mut ends = TunnelEnds { local: None, remote: None };
                            for t in attrs {
                                match t {
                                    InfoGre::Local(ip) => ends.local = nonzero(ip.into()),
                                    InfoGre::Remote(ip) => ends.remote = nonzero(ip.into()),
                                    _ => {}
                                }
                            }
                            link.tunnel = Some(ends);
                        }
                        LinkInfo::Data(InfoData::GreTun6(attrs)) => {
                            let mut ends = TunnelEnds { local: None, remote: None };
                            for t in attrs {
                                match t {
                                    InfoGre6::Local(ip) => ends.local = nonzero(ip.into()),
                                    InfoGre6::Remote(ip) => ends.remote = nonzero(ip.into()),
                                    _ => {}
                                }
                            }
                            link.tunnel = Some(ends);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out.push(Change::Link(link));
}

fn nonzero(ip: IpAddr) -> Option<IpAddr> {
    (!ip.is_unspecified()).then_some(ip)
}

fn address(m: AddressMessage, gone: bool) -> Option<Change> {
    let mut addr = None;
    let mut local = None;
    let mut flags = u32::from(m.header.flags.bits());
    for a in m.attributes {
        match a {
            AddressAttribute::Address(ip) => addr = Some(ip),
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    // For IPv4 point-to-point links IFA_ADDRESS is the peer and IFA_LOCAL
    // the interface's own address; IFA_LOCAL is the one that identifies it.
    let address = local.or(addr)?;
    let key = AddressKey { ifindex: m.header.index, address, prefix_len: m.header.prefix_len };
    Some(if gone {
        Change::AddressGone(key)
    } else {
        Change::Address(Address { key, flags, scope: u8::from(m.header.scope) })
    })
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn route(m: RouteMessage) -> Option<Route> {
    let family = u8::from(m.header.address_family);
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    if m.header.flags.bits() & RTM_F_CLONED != 0 {
        return None;
    }
    let mut table = u32::from(m.header.table);
    let mut dst = None;
    let mut src = None;
    let mut metric = 0;
    let mut gateway = None;
    let mut oif = 0;
    let mut attrs = RouteAttrs::default();
    let mut multipath: Option<Vec<RouteNextHop>> = None;
    for a in m.attributes {
        match a {
            RouteAttribute::Table(t) => table = t,
            RouteAttribute::Destination(d) => dst = route_addr(&d),
            RouteAttribute::Source(s) => src = route_addr(&s),
            RouteAttribute::Priority(p) => metric = p,
            RouteAttribute::Gateway(g) => gateway = route_addr(&g),
            RouteAttribute::Via(_) => {}
            RouteAttribute::Oif(i) => oif = i,
            RouteAttribute::PrefSource(p) => attrs.prefsrc = route_addr(&p),
            RouteAttribute::NhId(id) => attrs.nhid = Some(id),
            RouteAttribute::MultiPath(nhs) => multipath = Some(nhs),
            _ => {}
        }
    }
    let zero = if family == AF_INET { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u8; 16]) };
    let dst = IpNetwork::new(dst.unwrap_or(zero), m.header.destination_prefix_length).ok()?;
    if let Some(s) = src {
        attrs.src = IpNetwork::new(s, m.header.source_prefix_length).ok();
    }
    match multipath {
        Some(nhs) => {
            for nh in nhs {
                let gw = nh.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => route_addr(g),
                    _ => None,
                });
                attrs.nexthops.push(NextHop {
                    gateway: gw,
                    ifindex: nh.interface_index,
                    weight: u16::from(nh.hops) + 1,
                    flags: nh.flags.bits() & RTNH_F_CONFIG,
                });
            }
        }
        None => {
            if gateway.is_some() || oif != 0 {
                attrs.nexthops.push(NextHop { gateway, ifindex: oif, weight: 1, flags: 0 });
            }
        }
    }
    Some(Route {
        table,
        dst: crate::model::routes::normalize(dst),
        tos: m.header.tos,
        metric,
        kind: u8::from(m.header.kind),
        protocol: u8::from(m.header.protocol),
        scope: u8::from(m.header.scope),
        attrs,
    })
}

fn rule(m: RuleMessage) -> Option<Rule> {
    let family = match u8::from(m.header.family) {
        AF_INET => 4,
        AF_INET6 => 6,
        _ => return None,
    };
    let mut r = Rule {
        family,
        priority: 0,
        table: u32::from(m.header.table),
        action: u8::from(m.header.action),
        src: None,
        dst: None,
        fwmark: None,
        fwmask: None,
        iif: None,
        oif: None,
        ipproto: None,
        sport: None,
        dport: None,
        // FIB_RULE_INVERT
        invert: m.header.flags.bits() & 0x2 != 0,
    };
    for a in m.attributes {
        match a {
            RuleAttribute::Priority(p) => r.priority = p,
            RuleAttribute::Table(t) => r.table = t,
            RuleAttribute::Source(s) => r.src = Some(format!("{s}/{}", m.header.src_len)),
            RuleAttribute::Destination(d) => r.dst = Some(format!("{d}/{}", m.header.dst_len)),
            RuleAttribute::FwMark(v) => r.fwmark = Some(v),
            RuleAttribute::FwMask(v) => r.fwmask = Some(v),
            RuleAttribute::Iifname(n) => r.iif = Some(n),
            RuleAttribute::Oifname(n) => r.oif = Some(n),
            RuleAttribute::IpProtocol(p) => r.ipproto = Some(u8::from(p)),
            RuleAttribute::SourcePortRange(p) => r.sport = Some((p.start, p.end)),
            RuleAttribute::DestinationPortRange(p) => r.dport = Some((p.start, p.end)),
            _ => {}
        }
    }
    Some(r)
}

fn nexthop(n: decode::nexthop::NexthopMsg) -> Nexthop {
    Nexthop {
        id: n.id,
        family: n.family,
        protocol: n.protocol,
        oif: n.oif,
        gateway: n.gateway,
        blackhole: n.blackhole,
        group: n.group.iter().map(|g| GroupMember { id: g.id, weight: g.weight }).collect(),
        // The kernel reports the timers in clock_t (1/100 s).
        resilient: n.resilient.map(|r| Resilient {
            buckets: r.buckets,
            idle_timer: r.idle_timer / decode::nexthop::CLOCK_T_PER_SEC,
            unbalanced_timer: r.unbalanced_timer / decode::nexthop::CLOCK_T_PER_SEC,
        }),
    }
}
