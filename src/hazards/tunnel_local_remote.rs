//! `tunnel_local_remote`: an IP tunnel whose remote endpoint is an address
//! of this node. What the kernel does with the tunnel's traffic depends on
//! the tunnel kind and, for sit, on the kernel.
//!
//! **What breaks.** sit (6in4): kernels before 5.17 (commit ed6ae5ca437d,
//! not backported everywhere) refuse to encapsulate towards a remote whose
//! route is not `RTN_UNICAST`; a local remote (`RTN_LOCAL`: an address of
//! any interface, or a `local` route in table local) makes every IPv6
//! packet sent over the tunnel vanish, counted only in the tunnel's
//! `tx_carrier_errors` (field notes, hazard 3). ip6tnl and ip6gre refuse a
//! remote that is an address of this node on every kernel
//! (`ip6_tnl_xmit_ctl`: "Routing loop! Remote address found on this node!",
//! `tx_errors`/`tx_dropped`) unless the tunnel has `allow-localremote`.
//! ipip and gre deliver the traffic locally.
//!
//! **Kernels.** Measured under `integration/kernels/run` (3 datagrams over
//! each tunnel kind to a local remote): 5.10.0-46 sit 0 sent / 3
//! tx_carrier_errors, ip6tnl and ip6gre 0 sent / 3 tx_errors, ipip and gre
//! (IPv4 and IPv6 inside) 3 sent; 6.1.0-56 the same except sit, 3 sent. The
//! sit verdict for the running kernel comes from the self-test
//! ([`KernelFacts::sit_local_remote_drops`](super::KernelFacts)): dropped
//! there is critical, delivered is info, not measured (no sit support in
//! the self-test's namespace) is a warning. The model does not carry
//! `IFLA_IPTUN_FLAGS`, so an ip6tnl/ip6gre tunnel created with
//! `allow-localremote` is still reported.
//!
//! **Evidence.** The tunnel (name, kind, ends), why its remote is local
//! (an address and where, a joined anycast, the `local` route of table
//! local that covers it, or the proposed address), the tunnel's
//! `tx_packets` and `tx_carrier_errors` as of the last link message, and
//! what the self-test measured.
//!
//! **Mitigations.** Point the remote at the far end (or do not put its
//! address on this node); for sit, a kernel with ed6ae5ca437d (5.17+); for
//! ip6tnl/ip6gre, `allow-localremote`.
//!
//! `evaluate` judges the proposals that can make a tunnel's remote local: an
//! address add (`Intent::AddressAdd`), a local route (`Intent::LocalRoute`),
//! and a tunnel created or changed to a remote that is already local
//! (`Intent::Tunnel`). Each gets the severity the tunnel would have.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{Context, Detector, Finding, Mitigation, Severity};
use crate::model::{Link, Model, TunnelEnds, TABLE_LOCAL};
use crate::policy::intent::Intent;

/// The detector.
pub struct TunnelLocalRemote;

/// The hazard's name.
pub const NAME: &str = "tunnel_local_remote";

/// Tunnel kinds judged.
pub const KINDS: &[&str] = &["sit", "ipip", "ip6tnl", "gre", "ip6gre"];

/// RTN_LOCAL.
const RTN_LOCAL: u8 = 2;

/// How a tunnel kind treats a remote that is local.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// sit: dropped before 5.17; the self-test measures the running kernel.
    Sit,
    /// ip6tnl, ip6gre: a remote that is an address of this node is refused
    /// on every kernel (unless allow-localremote).
    RefusesOwnAddress,
    /// ipip, gre: delivered locally.
    Delivers,
}

fn behaviour(kind: &str) -> Option<Behaviour> {
    match kind {
        "sit" => Some(Behaviour::Sit),
        "ip6tnl" | "ip6gre" => Some(Behaviour::RefusesOwnAddress),
        "ipip" | "gre" => Some(Behaviour::Delivers),
        _ => None,
    }
}

/// Why an address is local.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Why {
    /// It is an address of an interface.
    Address { ifindex: u32, prefix_len: u8 },
    /// It is an IPv6 anycast address joined on an interface.
    Anycast { ifindex: u32 },
    /// A `local` route of table local covers it.
    LocalRoute { dst: IpNetwork, ifindex: Option<u32> },
    /// A proposed `ip addr add` would make it an address of `dev`.
    Proposed { address: IpNetwork, dev: String },
    /// A proposed `ip route add local DST dev DEV table local` would cover it.
    ProposedLocalRoute { dst: IpNetwork, dev: String },
}

impl Why {
    /// ip6_tunnel's loop check looks at the node's addresses only.
    fn is_own_address(&self) -> bool {
        matches!(self, Why::Address { .. } | Why::Proposed { .. })
    }

    fn describe(&self, m: &Model, remote: IpAddr) -> String {
        match self {
            Why::Address { ifindex, prefix_len } => {
                format!("{remote} is an address of {} ({remote}/{prefix_len})", m.ifname(*ifindex))
            }
            Why::Anycast { ifindex } => format!("{remote} is an anycast address joined on {}", m.ifname(*ifindex)),
            Why::LocalRoute { dst, ifindex } => format!(
                "{remote} is covered by `local {dst}{}` in table local",
                ifindex.map(|i| format!(" dev {}", m.ifname(i))).unwrap_or_default()
            ),
            Why::Proposed { address, dev } => {
                format!("`ip addr add {address} dev {dev}` would make {remote} an address of this node")
            }
            Why::ProposedLocalRoute { dst, dev } => {
                format!("`ip route add local {dst} dev {dev} table local` would make {remote} local to this node")
            }
        }
    }
}

/// Why `addr` is local in `m`, if it is: an interface address first, then a
/// joined anycast, then the longest match in table local being a `local`
/// route (the route type the kernel's lookup returns).
fn why_local(m: &Model, addr: IpAddr) -> Option<Why> {
    if let Some(a) = m.addresses.values().find(|a| a.key.address == addr) {
        return Some(Why::Address { ifindex: a.key.ifindex, prefix_len: a.key.prefix_len });
    }
    if let IpAddr::V6(v6) = addr {
        if let Some(a) = m.anycast.iter().find(|a| a.address == v6) {
            return Some(Why::Anycast { ifindex: a.ifindex });
        }
    }
    let r = m.lookup(TABLE_LOCAL, addr)?;
    (r.route.kind == RTN_LOCAL)
        .then(|| Why::LocalRoute { dst: r.route.dst, ifindex: r.members.first().map(|n| n.ifindex) })
}

/// Tunnels of the judged kinds that have a remote.
fn tunnels(m: &Model) -> impl Iterator<Item = (&Link, Behaviour, IpAddr)> {
    m.links.values().filter_map(|l| {
        let b = behaviour(l.kind.as_deref()?)?;
        let remote = l.tunnel.as_ref()?.remote?;
        Some((l, b, remote))
    })
}

fn mitigations(link: &Link, b: Behaviour, remote: IpAddr) -> Vec<Mitigation> {
    let mut v = vec![Mitigation {
        name: "remote_not_local",
        description: format!(
            "point {}'s remote at the far end's address, or keep {remote} off this node (addresses, anycast, \
             local routes)",
            link.name
        ),
        side_effects: "the tunnel's traffic goes to the real peer instead of back into this node".into(),
    }];
    match b {
        Behaviour::Sit => v.push(Mitigation {
            name: "kernel_5_17",
            description: "run a kernel with commit ed6ae5ca437d (5.17 or later, or a stable kernel carrying the \
                          backport): it delivers IPv6 over a sit tunnel to a local remote"
                .into(),
            side_effects: "a kernel upgrade and reboot".into(),
        }),
        Behaviour::RefusesOwnAddress => v.push(Mitigation {
            name: "allow_localremote",
            description: format!(
                "`ip -6 tunnel change {} allow-localremote`: ip6_tunnel then sends to a remote that is an \
                 address of this node",
                link.name
            ),
            side_effects: "a real routing loop over the tunnel is no longer caught".into(),
        }),
        Behaviour::Delivers => {}
    }
    v
}

/// Severity and the verdict half of the summary for a tunnel whose remote
/// is (or would be) local for reason `why`.
/// The first kernel that delivers IPv6 over a sit tunnel to a local remote
/// (commit ed6ae5ca437d). Stable kernels may carry a backport: the self-test's
/// measurement, when there is one, takes precedence.
const FIXED_IN: (u32, u32) = (5, 17);

fn judge(ctx: &Context<'_>, link: &Link, b: Behaviour, why: &Why) -> (Severity, String) {
    let kind = link.kind.as_deref().unwrap_or("?");
    match b {
        Behaviour::Sit => match ctx.kernel.sit_local_remote_drops {
            Some(true) => (
                Severity::Critical,
                format!("IPv6 over {} is silently dropped (this kernel drops it: measured)", link.name),
            ),
            Some(false) => (
                Severity::Info,
                format!(
                    "this kernel delivers IPv6 over {} locally (measured); kernels before 5.17 drop it silently",
                    link.name
                ),
            ),
            // Not measured (yet, or no sit in the self-test's namespace):
            // judge by the version, and say that is what it is.
            None => match ctx.kernel.kernel_version {
                Some(v) if v < FIXED_IN => (
                    Severity::Critical,
                    format!(
                        "IPv6 over {} is silently dropped by kernels before 5.17 and this is {}.{} (predicted from \
                         the version: the self-test has not measured sit yet)",
                        link.name, v.0, v.1
                    ),
                ),
                _ => (
                    Severity::Warning,
                    format!(
                        "kernels before 5.17 silently drop IPv6 over {}; this kernel was not measured (the \
                         self-test has no sit result)",
                        link.name
                    ),
                ),
            },
        },
        Behaviour::RefusesOwnAddress if why.is_own_address() => (
            Severity::Critical,
            format!(
                "traffic over {} ({kind}) is dropped: ip6_tunnel refuses a remote that is an address of this node \
                 (measured on 5.10 and 6.1) unless the tunnel has allow-localremote",
                link.name
            ),
        ),
        Behaviour::RefusesOwnAddress => (
            Severity::Warning,
            format!(
                "{} ({kind}) sends to a local remote that is not an address of this node; what the kernel does with \
                 it was not measured",
                link.name
            ),
        ),
        Behaviour::Delivers => (
            Severity::Info,
            format!("the kernel delivers traffic over {} ({kind}) locally (measured on 5.10 and 6.1)", link.name),
        ),
    }
}

fn evidence(ctx: &Context<'_>, link: &Link, b: Behaviour, remote: IpAddr, why: &Why) -> Vec<String> {
    let t = link.tunnel.as_ref();
    let local = t.and_then(|t| t.local).map(|a| a.to_string()).unwrap_or_else(|| "any".into());
    // A tunnel that does not exist yet (a proposed create) has no index
    // and no counters.
    let proposed = link.ifindex == 0;
    let mut v = vec![if proposed {
        format!(
            "proposed tunnel {} (kind {}): local {local}, remote {remote}",
            link.name,
            link.kind.as_deref().unwrap_or("?")
        )
    } else {
        format!(
            "tunnel {} (ifindex {}, kind {}, {}): local {local}, remote {remote}",
            link.name,
            link.ifindex,
            link.kind.as_deref().unwrap_or("?"),
            if link.is_up() { "up" } else { "down" }
        )
    }];
    v.push(why.describe(ctx.model, remote));
    if !proposed {
        v.push(format!(
            "{}: tx_packets {}, tx_carrier_errors {} (as of the last link message)",
            link.name, link.tx_packets, link.tx_carrier_errors
        ));
    }
    if b == Behaviour::Sit {
        v.push(
            match ctx.kernel.sit_local_remote_drops {
                Some(true) => "self-test: IPv6 over a sit tunnel to a local remote is dropped on this kernel",
                Some(false) => "self-test: IPv6 over a sit tunnel to a local remote is delivered on this kernel",
                None => "self-test: not measured (no sit result): judged by the kernel version",
            }
            .into(),
        );
    }
    v
}

/// A finding for `link`, whose remote is local for reason `why`; `lead`
/// names the proposed change that makes it so (none: it already is).
fn finding(ctx: &Context<'_>, link: &Link, b: Behaviour, remote: IpAddr, why: &Why, lead: Option<String>) -> Finding {
    let (severity, verdict) = judge(ctx, link, b, why);
    let summary = match lead {
        Some(lead) => format!("{lead}: {verdict}"),
        None => format!("remote {remote} of tunnel {} is local: {verdict}", link.name),
    };
    Finding {
        hazard: NAME,
        severity,
        summary,
        breaks: usize::from(severity != Severity::Info),
        evidence: evidence(ctx, link, b, remote, why),
        mitigations: mitigations(link, b, remote),
        stage: None,
    }
}

impl Detector for TunnelLocalRemote {
    fn name(&self) -> &'static str {
        NAME
    }

    fn current(&self, ctx: &Context<'_>) -> Vec<Finding> {
        tunnels(ctx.model)
            .filter_map(|(l, b, remote)| {
                let why = why_local(ctx.model, remote)?;
                Some(finding(ctx, l, b, remote, &why, None))
            })
            .collect()
    }

    fn evaluate(&self, ctx: &Context<'_>, intent: &Intent) -> Vec<Finding> {
        match intent {
            Intent::AddressAdd { address, dev, .. } => {
                let added = address.ip();
                tunnels(ctx.model)
                    .filter(|(_, _, remote)| *remote == added && why_local(ctx.model, *remote).is_none())
                    .map(|(l, b, remote)| {
                        let why = Why::Proposed { address: *address, dev: dev.clone() };
                        let lead =
                            format!("adding {address} to {dev} makes the remote {remote} of tunnel {} local", l.name);
                        finding(ctx, l, b, remote, &why, Some(lead))
                    })
                    .collect()
            }
            Intent::LocalRoute { dst, dev } => tunnels(ctx.model)
                .filter(|(_, _, remote)| dst.contains(*remote) && why_local(ctx.model, *remote).is_none())
                .map(|(l, b, remote)| {
                    let why = Why::ProposedLocalRoute { dst: *dst, dev: dev.clone() };
                    let lead =
                        format!("a local route {dst} on {dev} makes the remote {remote} of tunnel {} local", l.name);
                    finding(ctx, l, b, remote, &why, Some(lead))
                })
                .collect(),
            Intent::Tunnel { name, kind, remote, local } => {
                let (Some(b), Some(why)) = (behaviour(kind), why_local(ctx.model, *remote)) else { return Vec::new() };
                // The tunnel as it would be: the existing link with new ends,
                // or a new one (index 0: no counters yet).
                let existing = ctx.model.links.values().find(|l| l.name == *name);
                let mut link = existing.cloned().unwrap_or_else(|| Link {
                    ifindex: 0,
                    name: name.clone(),
                    kind: None,
                    master: None,
                    flags: 0,
                    mtu: 0,
                    bridge_port: None,
                    tunnel: None,
                    tx_packets: 0,
                    tx_carrier_errors: 0,
                });
                link.kind = Some(kind.clone());
                link.tunnel = Some(TunnelEnds { local: *local, remote: Some(*remote) });
                let verb = if existing.is_some() { "changing" } else { "creating" };
                let lead = format!("{verb} tunnel {name} ({kind}) with the local remote {remote}");
                vec![finding(ctx, &link, b, *remote, &why, Some(lead))]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::hazards::KernelFacts;
    use crate::kernel::convert::convert;
    use crate::model::flows::FlowTable;
    use crate::model::{Address, AddressKey, Anycast, Change, NextHop, Route, RouteAttrs, TunnelEnds};
    use crate::policy::intent::parse_address_add;

    // Fixtures: src/kernel/decode/testdata/README.md ("IP tunnels").
    const SIT_LOCAL_5_10: &[u8] = include_bytes!("../kernel/decode/testdata/link_sit_local_remote_5.10.bin");
    const SIT_LOCAL_6_1: &[u8] = include_bytes!("../kernel/decode/testdata/link_sit_local_remote_6.1.bin");
    const SIT_REMOTE_5_10: &[u8] = include_bytes!("../kernel/decode/testdata/link_sit_remote_5.10.bin");
    const IPIP_5_10: &[u8] = include_bytes!("../kernel/decode/testdata/link_ipip_5.10.bin");
    const GRE_5_10: &[u8] = include_bytes!("../kernel/decode/testdata/link_gre_local_remote_5.10.bin");
    const IP6TNL_5_10: &[u8] = include_bytes!("../kernel/decode/testdata/link_ip6tnl_local_remote_5.10.bin");
    const IP6GRE_5_10: &[u8] = include_bytes!("../kernel/decode/testdata/link_ip6gre_5.10.bin");

    const AFFECTED: KernelFacts = KernelFacts {
        ecmp_v6_affected: None,
        ecmp_v4_affected: None,
        sit_local_remote_drops: Some(true),
        kernel_version: None,
    };
    const UNAFFECTED: KernelFacts = KernelFacts {
        ecmp_v6_affected: None,
        ecmp_v4_affected: None,
        sit_local_remote_drops: Some(false),
        kernel_version: None,
    };
    const OLD_UNMEASURED: KernelFacts = KernelFacts {
        ecmp_v6_affected: None,
        ecmp_v4_affected: None,
        sit_local_remote_drops: None,
        kernel_version: Some((5, 10)),
    };
    const NEW_UNMEASURED: KernelFacts = KernelFacts {
        ecmp_v6_affected: None,
        ecmp_v4_affected: None,
        sit_local_remote_drops: None,
        kernel_version: Some((6, 1)),
    };
    const UNKNOWN: KernelFacts = KernelFacts {
        ecmp_v6_affected: None,
        ecmp_v4_affected: None,
        sit_local_remote_drops: None,
        kernel_version: None,
    };

    /// The one `Change::Link` a whole captured message (nlmsghdr included)
    /// converts to.
    fn link_of(msg: &[u8]) -> Link {
        let ty = u16::from_ne_bytes([msg[4], msg[5]]);
        assert_eq!(ty, 16, "RTM_NEWLINK");
        let mut out = Vec::new();
        convert(ty, &msg[16..], &mut out).unwrap();
        match out.as_slice() {
            [Change::Link(l)] => l.clone(),
            other => panic!("expected one link, got {other:?}"),
        }
    }

    fn ends(local: &str, remote: &str) -> Option<TunnelEnds> {
        Some(TunnelEnds { local: Some(local.parse().unwrap()), remote: Some(remote.parse().unwrap()) })
    }

    #[test]
    fn sit_fixtures_decode_with_their_ends_and_counters() {
        let l = link_of(SIT_LOCAL_5_10);
        assert_eq!((l.ifindex, l.name.as_str(), l.kind.as_deref()), (9, "rgsitlocal", Some("sit")));
        assert_eq!(l.tunnel, ends("10.0.0.2", "10.0.0.1"));
        assert!(l.is_up());
        // 5.10 dropped the 3 datagrams: nothing sent, 3 carrier errors.
        assert_eq!((l.tx_packets, l.tx_carrier_errors), (0, 3));

        let l = link_of(SIT_LOCAL_6_1);
        assert_eq!((l.name.as_str(), l.kind.as_deref()), ("rgsitlocal", Some("sit")));
        assert_eq!(l.tunnel, ends("10.0.0.2", "10.0.0.1"));
        // 6.1 sent them.
        assert_eq!((l.tx_packets, l.tx_carrier_errors), (3, 0));

        let l = link_of(SIT_REMOTE_5_10);
        assert_eq!((l.ifindex, l.name.as_str(), l.kind.as_deref()), (10, "rgsitremote", Some("sit")));
        assert_eq!(l.tunnel, ends("10.0.0.2", "192.0.2.1"));
        assert!(!l.is_up());
    }

    #[test]
    fn other_tunnel_kinds_decode_with_their_ends() {
        let l = link_of(IPIP_5_10);
        assert_eq!((l.name.as_str(), l.kind.as_deref()), ("rgipip", Some("ipip")));
        assert_eq!(l.tunnel, ends("10.0.0.2", "198.51.100.1"));
        let l = link_of(GRE_5_10);
        assert_eq!((l.name.as_str(), l.kind.as_deref()), ("rggre", Some("gre")));
        assert_eq!(l.tunnel, ends("10.0.0.2", "10.0.0.1"));
        let l = link_of(IP6TNL_5_10);
        assert_eq!((l.name.as_str(), l.kind.as_deref()), ("rgip6tnl", Some("ip6tnl")));
        assert_eq!(l.tunnel, ends("fd00:5117:ffff::2", "fd00:5117:ffff::1"));
        let l = link_of(IP6GRE_5_10);
        assert_eq!((l.name.as_str(), l.kind.as_deref()), ("rgip6gre", Some("ip6gre")));
        assert_eq!(l.tunnel, ends("fd00:5117:ffff::2", "2001:db8::1"));
    }

    fn addr(m: &mut Model, ifindex: u32, a: &str, len: u8) {
        let key = AddressKey { ifindex, address: a.parse().unwrap(), prefix_len: len };
        m.apply(Change::Address(Address { key, flags: 0x80, scope: 254 }), &mut vec![]);
    }

    fn local_route(m: &mut Model, dst: &str, ifindex: u32) {
        let r = Route {
            table: TABLE_LOCAL,
            dst: dst.parse().unwrap(),
            tos: 0,
            metric: 0,
            kind: RTN_LOCAL,
            protocol: 2,
            scope: 254,
            attrs: RouteAttrs {
                nexthops: vec![NextHop { gateway: None, ifindex, weight: 1, flags: 0 }],
                ..Default::default()
            },
        };
        m.apply(Change::Route(r), &mut vec![]);
    }

    /// The 5.10 capture's namespace: lo (1) with 10.0.0.1/32, 10.0.0.2/32,
    /// fd00:5117:ffff::1/128 and ::2/128, and the captured tunnels.
    fn lab() -> Model {
        let mut m = Model::default();
        let lo = Link {
            ifindex: 1,
            name: "lo".into(),
            kind: None,
            master: None,
            flags: crate::model::IFF_UP,
            mtu: 65536,
            bridge_port: None,
            tunnel: None,
            tx_packets: 0,
            tx_carrier_errors: 0,
        };
        m.apply(Change::Link(lo), &mut vec![]);
        for a in ["10.0.0.1", "10.0.0.2"] {
            addr(&mut m, 1, a, 32);
            local_route(&mut m, &format!("{a}/32"), 1);
        }
        for a in ["fd00:5117:ffff::1", "fd00:5117:ffff::2"] {
            addr(&mut m, 1, a, 128);
        }
        for msg in [SIT_LOCAL_5_10, SIT_REMOTE_5_10, IPIP_5_10, GRE_5_10, IP6TNL_5_10, IP6GRE_5_10] {
            m.apply(Change::Link(link_of(msg)), &mut vec![]);
        }
        m
    }

    fn run<T>(m: &Model, k: &KernelFacts, f: impl FnOnce(&Context<'_>) -> T) -> T {
        let flows = FlowTable::default();
        let filters = BTreeSet::new();
        let ctx = Context { model: m, flows: &flows, kernel: k, peers: &[], hairpin_filters: &filters };
        f(&ctx)
    }

    fn by_tunnel(fs: &[Finding], name: &str) -> Vec<Finding> {
        fs.iter().filter(|f| f.evidence[0].starts_with(&format!("tunnel {name} "))).cloned().collect()
    }

    #[test]
    fn sit_to_a_local_remote_follows_the_self_test() {
        let m = lab();
        let f = run(&m, &AFFECTED, |c| TunnelLocalRemote.current(c));
        let sit = by_tunnel(&f, "rgsitlocal");
        assert_eq!(sit.len(), 1, "{f:#?}");
        let s = &sit[0];
        assert_eq!(s.severity, Severity::Critical);
        assert!(s.summary.contains("IPv6 over rgsitlocal is silently dropped"), "{}", s.summary);
        assert!(s.summary.contains("remote 10.0.0.1"), "{}", s.summary);
        assert_eq!(s.evidence[1], "10.0.0.1 is an address of lo (10.0.0.1/32)");
        assert_eq!(s.evidence[2], "rgsitlocal: tx_packets 0, tx_carrier_errors 3 (as of the last link message)");
        assert!(s.evidence[3].contains("dropped on this kernel"));
        assert_eq!(s.breaks, 1);
        assert!(s.mitigations.iter().any(|m| m.name == "kernel_5_17"));
        // The sit tunnel to TEST-NET-1 is not local: nothing to say.
        assert!(by_tunnel(&f, "rgsitremote").is_empty());

        let f = run(&m, &UNAFFECTED, |c| TunnelLocalRemote.current(c));
        let s = &by_tunnel(&f, "rgsitlocal")[0];
        assert_eq!((s.severity, s.breaks), (Severity::Info, 0));
        assert!(s.summary.contains("delivers IPv6 over rgsitlocal locally"), "{}", s.summary);

        let f = run(&m, &UNKNOWN, |c| TunnelLocalRemote.current(c));
        let s = &by_tunnel(&f, "rgsitlocal")[0];
        assert_eq!(s.severity, Severity::Warning);
        assert!(s.summary.contains("not measured"), "{}", s.summary);
    }

    #[test]
    fn other_kinds_are_judged_by_what_they_do() {
        let m = lab();
        let f = run(&m, &AFFECTED, |c| TunnelLocalRemote.current(c));
        // gre to 10.0.0.1 is delivered locally on every measured kernel.
        let g = &by_tunnel(&f, "rggre")[0];
        assert_eq!(g.severity, Severity::Info);
        // ip6tnl to an address of this node is refused on every kernel.
        let t = &by_tunnel(&f, "rgip6tnl")[0];
        assert_eq!(t.severity, Severity::Critical);
        assert!(t.summary.contains("allow-localremote"), "{}", t.summary);
        assert_eq!(t.evidence[1], "fd00:5117:ffff::1 is an address of lo (fd00:5117:ffff::1/128)");
        assert!(t.mitigations.iter().any(|m| m.name == "allow_localremote"));
        // ipip and ip6gre point at non-local remotes.
        assert!(by_tunnel(&f, "rgipip").is_empty());
        assert!(by_tunnel(&f, "rgip6gre").is_empty());
        assert_eq!(f.len(), 3, "{f:#?}");
    }

    #[test]
    fn a_local_route_or_anycast_makes_a_remote_local() {
        let mut m = lab();
        // AnyIP: `ip route add local 192.0.2.0/24 dev lo table local`.
        local_route(&mut m, "192.0.2.0/24", 1);
        m.apply(Change::Anycast(Anycast { ifindex: 1, address: "2001:db8::1".parse().unwrap() }), &mut vec![]);
        let f = run(&m, &AFFECTED, |c| TunnelLocalRemote.current(c));
        let s = &by_tunnel(&f, "rgsitremote")[0];
        assert_eq!(s.severity, Severity::Critical);
        assert_eq!(s.evidence[1], "192.0.2.1 is covered by `local 192.0.2.0/24 dev lo` in table local");
        // ip6tnl's loop check looks at addresses only: a joined anycast is
        // local, but not measured.
        let g = &by_tunnel(&f, "rgip6gre")[0];
        assert_eq!(g.severity, Severity::Warning);
        assert_eq!(g.evidence[1], "2001:db8::1 is an anycast address joined on lo");
    }

    #[test]
    fn a_local_route_over_a_remote_is_flagged_like_an_address() {
        let m = lab();
        let add = crate::policy::intent::parse_local_route("192.0.2.0/24 dev lo").unwrap();
        let f = run(&m, &AFFECTED, |c| TunnelLocalRemote.evaluate(c, &add));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(
            f[0].summary
                .starts_with("a local route 192.0.2.0/24 on lo makes the remote 192.0.2.1 of tunnel rgsitremote local"),
            "{}",
            f[0].summary
        );
        assert_eq!(
            f[0].evidence[1],
            "`ip route add local 192.0.2.0/24 dev lo table local` would make 192.0.2.1 local to this node"
        );
        assert_eq!(run(&m, &UNAFFECTED, |c| TunnelLocalRemote.evaluate(c, &add))[0].severity, Severity::Info);
        // A prefix that covers no remote says nothing.
        let other = crate::policy::intent::parse_local_route("203.0.113.0/24 dev lo").unwrap();
        assert!(run(&m, &AFFECTED, |c| TunnelLocalRemote.evaluate(c, &other)).is_empty());
    }

    #[test]
    fn a_tunnel_created_or_changed_to_a_local_remote_is_flagged() {
        let m = lab();
        let new = crate::policy::intent::parse_tunnel("t9 type sit remote 10.0.0.1 local 10.0.0.2").unwrap();
        let f = run(&m, &AFFECTED, |c| TunnelLocalRemote.evaluate(c, &new));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(
            f[0].summary.starts_with("creating tunnel t9 (sit) with the local remote 10.0.0.1: "),
            "{}",
            f[0].summary
        );
        assert_eq!(f[0].evidence[0], "proposed tunnel t9 (kind sit): local 10.0.0.2, remote 10.0.0.1");
        assert_eq!(f[0].evidence[1], "10.0.0.1 is an address of lo (10.0.0.1/32)");
        assert!(!f[0].evidence.iter().any(|e| e.contains("tx_packets")), "a new tunnel has no counters");
        assert_eq!(run(&m, &UNAFFECTED, |c| TunnelLocalRemote.evaluate(c, &new))[0].severity, Severity::Info);
        // Changing an existing tunnel's remote to a local address.
        let change = crate::policy::intent::parse_tunnel("rgsitremote type sit remote 10.0.0.2").unwrap();
        let f = run(&m, &AFFECTED, |c| TunnelLocalRemote.evaluate(c, &change));
        assert!(f[0].summary.starts_with("changing tunnel rgsitremote (sit)"), "{}", f[0].summary);
        assert!(f[0].evidence[0].starts_with("tunnel rgsitremote (ifindex "), "{:?}", f[0].evidence);
        // ip6gre to an address of this node: refused on every kernel.
        let g = crate::policy::intent::parse_tunnel("g6 type ip6gre remote fd00:5117:ffff::1").unwrap();
        let f = run(&m, &UNAFFECTED, |c| TunnelLocalRemote.evaluate(c, &g));
        assert_eq!(f[0].severity, Severity::Critical);
        // A remote that is not local: nothing.
        let far = crate::policy::intent::parse_tunnel("t9 type sit remote 198.18.0.1").unwrap();
        assert!(run(&m, &AFFECTED, |c| TunnelLocalRemote.evaluate(c, &far)).is_empty());
    }

    #[test]
    fn an_address_add_that_makes_a_remote_local_is_flagged() {
        let m = lab();
        let add = parse_address_add("192.0.2.1/24 dev lo").unwrap();
        let f = run(&m, &AFFECTED, |c| TunnelLocalRemote.evaluate(c, &add));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(
            f[0].summary
                .starts_with("adding 192.0.2.1/24 to lo makes the remote 192.0.2.1 of tunnel rgsitremote local"),
            "{}",
            f[0].summary
        );
        assert!(f[0].summary.contains("silently dropped"));
        assert_eq!(f[0].evidence[1], "`ip addr add 192.0.2.1/24 dev lo` would make 192.0.2.1 an address of this node");
        let f = run(&m, &UNAFFECTED, |c| TunnelLocalRemote.evaluate(c, &add));
        assert_eq!(f[0].severity, Severity::Info);
        let f = run(&m, &UNKNOWN, |c| TunnelLocalRemote.evaluate(c, &add));
        assert_eq!(f[0].severity, Severity::Warning);
        // Not measured: an old kernel is judged by its version, and the
        // summary says so; a new one stays a warning.
        let f = run(&m, &OLD_UNMEASURED, |c| TunnelLocalRemote.evaluate(c, &add));
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(f[0].summary.contains("this is 5.10 (predicted from the version"), "{}", f[0].summary);
        let f = run(&m, &NEW_UNMEASURED, |c| TunnelLocalRemote.evaluate(c, &add));
        assert_eq!(f[0].severity, Severity::Warning);

        // ip6gre's remote becoming an address of this node: critical anywhere.
        let add6 = parse_address_add("2001:db8::1/64 dev lo").unwrap();
        let f = run(&m, &UNAFFECTED, |c| TunnelLocalRemote.evaluate(c, &add6));
        assert_eq!((f.len(), f[0].severity), (1, Severity::Critical));
        // ipip's remote: delivered locally, info.
        let f =
            run(&m, &AFFECTED, |c| TunnelLocalRemote.evaluate(c, &parse_address_add("198.51.100.1 dev lo").unwrap()));
        assert_eq!(f[0].severity, Severity::Info);

        // Already local, unrelated addresses, other intents: nothing new.
        let again = parse_address_add("10.0.0.1/32 dev lo").unwrap();
        assert!(run(&m, &AFFECTED, |c| TunnelLocalRemote.evaluate(c, &again)).is_empty());
        let other = parse_address_add("192.0.2.2/24 dev lo").unwrap();
        assert!(run(&m, &AFFECTED, |c| TunnelLocalRemote.evaluate(c, &other)).is_empty());
        let sysctl = Intent::Sysctl { key: "net.ipv6.conf.all.forwarding".into(), value: "1".into() };
        assert!(run(&m, &AFFECTED, |c| TunnelLocalRemote.evaluate(c, &sysctl)).is_empty());
    }

    #[test]
    fn tunnels_without_a_remote_and_other_kinds_are_ignored() {
        let mut m = lab();
        let mut sit0 = link_of(SIT_REMOTE_5_10);
        sit0.ifindex = 40;
        sit0.name = "sit0".into();
        sit0.tunnel = Some(TunnelEnds { local: None, remote: None });
        m.apply(Change::Link(sit0), &mut vec![]);
        let mut vti = link_of(SIT_LOCAL_5_10);
        vti.ifindex = 41;
        vti.name = "vti9".into();
        vti.kind = Some("vti".into());
        m.apply(Change::Link(vti), &mut vec![]);
        let f = run(&m, &AFFECTED, |c| TunnelLocalRemote.current(c));
        assert!(by_tunnel(&f, "sit0").is_empty() && by_tunnel(&f, "vti9").is_empty());
        assert_eq!(f.len(), 3);
    }
}
