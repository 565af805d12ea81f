//! `subnet_anycast`: IPv6 forwarding makes the kernel claim the
//! Subnet-Router anycast address (`prefix::`) of every local prefix shorter
//! than /127 on each interface where forwarding is on
//! (`addrconf_join_anycast`; no sysctl disables it). A BGP peer (or any
//! neighbor, static-route gateway or next hop) numbered at `prefix::`
//! becomes a local anycast destination: the route to it turns into
//! `anycast prefix:: dev lo table local`.
//!
//! **What breaks.** Measured with real FRR (field-notes, Hazard 2): an
//! established session survives the toggle while its cached route stays
//! valid (the local table is a separate tree), and dies at its next reset
//! or invalidation, after which it cannot re-establish. With VRFs the
//! local and main routes share a table, so the toggle itself invalidates.
//!
//! **Kernels.** All: the join is unconditional. `force_forwarding`
//! (per-interface, 6.17+) is another way out.
//!
//! **Evidence.** The peer, its source (FRR or a live port-179 session), the
//! interface and prefix, whether forwarding is on there, whether the
//! anycast is joined now.
//!
//! **Mitigations.** Renumber the peer to `::1`/`::2` or a /127 (durable);
//! set `<if>.forwarding=0` right after the global toggle: packet
//! forwarding is governed by `all.forwarding`, so forwarding stays on and
//! the anycast leaves that interface (side effect: the interface acts as a
//! host for RA and the NA router flag).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use ipnetwork::Ipv6Network;

use super::{Context, Detector, Finding, Mitigation, Severity, StagePlan};
use crate::model::Model;
use crate::policy::intent::Intent;

/// The detector.
pub struct SubnetAnycast;

/// The hazard's name.
pub const NAME: &str = "subnet_anycast";

/// One address that equals the Subnet-Router anycast of a local prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Conflict {
    target: Ipv6Addr,
    what: String,
    ifindex: u32,
    prefix: Ipv6Network,
}

fn conflicts(ctx: &Context<'_>) -> Vec<Conflict> {
    let m = ctx.model;
    // Everything the router talks to by address: peers, gateways of routes
    // and nexthop objects.
    let mut targets: Vec<(Ipv6Addr, String)> = Vec::new();
    for p in ctx.peers {
        if let IpAddr::V6(a) = p.address {
            targets.push((a, format!("BGP peer {a} (vrf {}, {}, from {:?})", p.vrf, p.state, p.source).to_lowercase()));
        }
    }
    // The route tables index their gateways, and keep the routes of a
    // gateway once asked about it: naming the routes via a candidate does
    // not walk every route (except at the first question). The remediation
    // path does not name routes at all (`remediation_ifaces`).
    let candidates: BTreeSet<IpAddr> = local_anycasts(ctx).map(|(_, anycast, _)| IpAddr::V6(anycast)).collect();
    for (g, routes) in m.routes.routes_via(&candidates) {
        let IpAddr::V6(g) = g else { continue };
        for (table, dst) in routes {
            targets.push((g, format!("gateway of route {dst} (table {table})")));
        }
    }
    for n in m.nexthops.values() {
        if let Some(IpAddr::V6(g)) = n.gateway {
            targets.push((g, format!("gateway of nexthop id {}", n.id)));
        }
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for a in m.addresses.values() {
        let IpAddr::V6(addr) = a.key.address else { continue };
        if a.key.prefix_len >= 127 {
            continue;
        }
        let Ok(net) = Ipv6Network::new(addr, a.key.prefix_len) else { continue };
        let anycast = net.network();
        for (t, what) in &targets {
            if *t == anycast && seen.insert((anycast, a.key.ifindex, what.clone())) {
                out.push(Conflict {
                    target: anycast,
                    what: what.clone(),
                    ifindex: a.key.ifindex,
                    prefix: Ipv6Network::new(anycast, a.key.prefix_len).unwrap_or(net),
                });
            }
        }
    }
    out
}

/// `(ifindex, prefix::, prefix)` for every local IPv6 prefix shorter than
/// /127: the addresses the kernel joins as Subnet-Router anycast where
/// forwarding is on.
fn local_anycasts<'a>(ctx: &'a Context<'_>) -> impl Iterator<Item = (u32, Ipv6Addr, Ipv6Network)> + 'a {
    ctx.model.addresses.values().filter_map(|a| match a.key.address {
        IpAddr::V6(addr) if a.key.prefix_len < 127 => {
            let net = Ipv6Network::new(addr, a.key.prefix_len).ok()?;
            Some((a.key.ifindex, net.network(), Ipv6Network::new(net.network(), a.key.prefix_len).unwrap_or(net)))
        }
        _ => None,
    })
}

/// The interfaces remediation turns IPv6 forwarding off on: those with
/// forwarding on where a peer, a route's gateway or a nexthop object's
/// gateway sits at the Subnet-Router anycast of a local prefix. Sorted
/// names, the same set as the critical finding's stage plan from
/// [`Detector::current`], but decided from the interfaces, their prefixes,
/// the forwarding state, the peers, the nexthop objects and the route
/// tables' gateway index: no route is walked or named, so the cost does not
/// grow with the routing table. The findings name the routes afterwards.
pub fn remediation_ifaces(ctx: &Context<'_>) -> Vec<String> {
    forwarding_on_among(ctx.model, &armed_ifaces(ctx))
}

/// The names (sorted, deduplicated) of those of `ifaces` where IPv6
/// forwarding is on: from [`armed_ifaces`], what remediation turns off.
pub fn forwarding_on_among(m: &Model, ifaces: &BTreeMap<u32, String>) -> Vec<String> {
    let mut out: Vec<String> = ifaces.iter().filter(|(&i, _)| v6_forwarding(m, i)).map(|(_, n)| n.clone()).collect();
    out.sort();
    out.dedup();
    out
}

/// The interfaces where turning IPv6 forwarding on would create a
/// conflict (or has: forwarding is not looked at), by ifindex: those
/// claiming a Subnet-Router anycast that a peer, a nexthop object or a
/// route's gateway uses. What the forwarding reflex
/// ([`crate::kernel::reflex`]) is armed with.
pub fn armed_ifaces(ctx: &Context<'_>) -> BTreeMap<u32, String> {
    let m = ctx.model;
    // Anycast address -> interfaces that claim it (or would).
    let mut claimed: BTreeMap<Ipv6Addr, Vec<u32>> = BTreeMap::new();
    for (ifindex, anycast, _) in local_anycasts(ctx) {
        claimed.entry(anycast).or_default().push(ifindex);
    }
    if claimed.is_empty() {
        return BTreeMap::new();
    }
    let v6 = |a: Option<IpAddr>| match a {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    };
    let mut hit: BTreeSet<Ipv6Addr> = ctx
        .peers
        .iter()
        .filter_map(|p| v6(Some(p.address)))
        .chain(m.nexthops.values().filter_map(|n| v6(n.gateway)))
        .filter(|a| claimed.contains_key(a))
        .collect();
    hit.extend(claimed.keys().filter(|a| m.routes.uses_gateway(IpAddr::V6(**a))));
    hit.iter().flat_map(|a| claimed[a].iter()).map(|&ifindex| (ifindex, m.ifname(ifindex))).collect()
}

fn forwarding_on(ctx: &Context<'_>, ifindex: u32) -> bool {
    v6_forwarding(ctx.model, ifindex)
}

fn v6_forwarding(m: &Model, ifindex: u32) -> bool {
    m.sysctls.forwarding_v6.per_if.get(&ifindex) == Some(&1)
}

fn mitigations(ifaces: &[String]) -> Vec<Mitigation> {
    vec![
        Mitigation {
            name: "renumber",
            description: "number the peer at ::1/::2 of the prefix, or use a /127, so no peer sits at prefix::".into(),
            side_effects: "needs a coordinated change on both ends".into(),
        },
        Mitigation {
            name: "per_interface_forwarding_off",
            description: format!(
                "right after enabling forwarding, set net.ipv6.conf.{{{}}}.forwarding=0: packets are still \
                 forwarded (all.forwarding governs that) and the anycast leaves the interface",
                ifaces.join(",")
            ),
            side_effects: "the interface acts as a host for RA (accept_ra) and the NA router flag".into(),
        },
    ]
}

/// Interfaces whose IPv6 forwarding `intent` would turn on.
fn forwarding_turned_on(ctx: &Context<'_>, intent: &Intent) -> Vec<u32> {
    let mut out = Vec::new();
    for (key, value) in intent.effective_sysctls() {
        let Some(scope) = key.strip_prefix("net.ipv6.conf.").and_then(|k| k.strip_suffix(".forwarding")) else {
            continue;
        };
        if value.trim() == "0" {
            continue;
        }
        match scope {
            // `all` propagates to every interface.
            "all" => out.extend(ctx.model.links.keys().copied()),
            // `default` only applies to interfaces created later.
            "default" => {}
            ifname => out.extend(ctx.model.links.values().filter(|l| l.name == ifname).map(|l| l.ifindex)),
        }
    }
    out
}

fn finding(ctx: &Context<'_>, severity: Severity, summary: String, cs: &[&Conflict]) -> Finding {
    let mut ifaces: Vec<String> = cs.iter().map(|c| ctx.model.ifname(c.ifindex)).collect();
    ifaces.sort();
    ifaces.dedup();
    let evidence = cs
        .iter()
        .map(|c| {
            let joined = ctx.model.anycast.iter().any(|a| a.ifindex == c.ifindex && a.address == c.target);
            format!(
                "{} is the Subnet-Router anycast of {} on {} (forwarding {}, anycast {})",
                c.what,
                c.prefix,
                ctx.model.ifname(c.ifindex),
                if forwarding_on(ctx, c.ifindex) { "on" } else { "off" },
                if joined { "joined" } else { "not joined" }
            )
        })
        .collect();
    Finding {
        hazard: NAME,
        severity,
        summary,
        breaks: cs.len(),
        evidence,
        mitigations: mitigations(&ifaces),
        stage: (severity == Severity::Critical).then_some(StagePlan::DisableForwardingOn { ifaces }),
    }
}

impl Detector for SubnetAnycast {
    fn name(&self) -> &'static str {
        NAME
    }

    fn current(&self, ctx: &Context<'_>) -> Vec<Finding> {
        let all = conflicts(ctx);
        let (on, off): (Vec<&Conflict>, Vec<&Conflict>) = all.iter().partition(|c| forwarding_on(ctx, c.ifindex));
        let mut out = Vec::new();
        if !on.is_empty() {
            out.push(finding(
                ctx,
                Severity::Critical,
                format!(
                    "{} neighbor(s) sit at the Subnet-Router anycast address of a prefix on an interface with \
                     forwarding on: the kernel claims the address, and their sessions die at the next reset and \
                     cannot re-establish",
                    on.len()
                ),
                &on,
            ));
        }
        if !off.is_empty() {
            out.push(finding(
                ctx,
                Severity::Warning,
                format!(
                    "latent: {} neighbor(s) sit at the Subnet-Router anycast address of a local prefix; turning \
                     IPv6 forwarding on would capture them",
                    off.len()
                ),
                &off,
            ));
        }
        out
    }

    fn evaluate(&self, ctx: &Context<'_>, intent: &Intent) -> Vec<Finding> {
        let on: BTreeSet<u32> = forwarding_turned_on(ctx, intent).into_iter().collect();
        if on.is_empty() {
            return Vec::new();
        }
        let all = conflicts(ctx);
        let hit: Vec<&Conflict> =
            all.iter().filter(|c| on.contains(&c.ifindex) && !forwarding_on(ctx, c.ifindex)).collect();
        if hit.is_empty() {
            return Vec::new();
        }
        vec![finding(
            ctx,
            Severity::Critical,
            format!(
                "turning IPv6 forwarding on makes the kernel claim the Subnet-Router anycast address of {} \
                 neighbor(s); their sessions die at the next reset and cannot re-establish",
                hit.len()
            ),
            &hit,
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hazards::KernelFacts;
    use crate::model::flows::FlowTable;
    use crate::model::peers::{Peer, PeerSource};
    use crate::model::{Address, AddressKey, Change, ConfScope, Link, Model, IFF_UP};
    use crate::policy::intent::parse_sysctl;

    fn lab(peer: &str) -> (Model, Vec<Peer>) {
        let mut m = Model::default();
        let mut ev = vec![];
        for (i, n) in [(2, "vmif"), (3, "other")] {
            m.apply(
                Change::Link(Link {
                    ifindex: i,
                    name: n.into(),
                    kind: Some("veth".into()),
                    master: None,
                    flags: IFF_UP,
                    mtu: 1500,
                    bridge_port: None,
                    tunnel: None,
                    tx_packets: 0,
                    tx_carrier_errors: 0,
                }),
                &mut ev,
            );
        }
        m.apply(
            Change::Address(Address {
                key: AddressKey { ifindex: 2, address: "fdc0:3489:e0fd::1".parse().unwrap(), prefix_len: 64 },
                flags: 0,
                scope: 0,
            }),
            &mut ev,
        );
        for i in [2, 3] {
            m.apply(Change::Forwarding { v6: true, scope: ConfScope::Iface(i), value: 0 }, &mut ev);
        }
        let peers = vec![Peer {
            address: peer.parse().unwrap(),
            vrf: "default".into(),
            state: "Established".into(),
            local: None,
            source: PeerSource::Frr,
        }];
        (m, peers)
    }

    const FACTS: KernelFacts = KernelFacts {
        ecmp_v6_affected: None,
        ecmp_v4_affected: None,
        sit_local_remote_drops: None,
        kernel_version: None,
    };

    #[test]
    fn latent_conflict_is_a_warning_and_the_toggle_is_critical_with_a_stage_plan() {
        let (m, peers) = lab("fdc0:3489:e0fd::");
        let flows = FlowTable::default();
        let ctx =
            Context { model: &m, flows: &flows, kernel: &FACTS, peers: &peers, hairpin_filters: &Default::default() };
        let f = SubnetAnycast.current(&ctx);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].evidence[0].contains("vmif") && f[0].evidence[0].contains("fdc0:3489:e0fd::/64"));
        let toggle = parse_sysctl("net.ipv6.conf.all.forwarding=1").unwrap();
        let f = SubnetAnycast.evaluate(&ctx, &toggle);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].stage, Some(StagePlan::DisableForwardingOn { ifaces: vec!["vmif".into()] }));
        // Only the peering interface matters.
        let other = parse_sysctl("net.ipv6.conf.other.forwarding=1").unwrap();
        assert!(SubnetAnycast.evaluate(&ctx, &other).is_empty());
        let default = parse_sysctl("net.ipv6.conf.default.forwarding=1").unwrap();
        assert!(SubnetAnycast.evaluate(&ctx, &default).is_empty());
        let off = parse_sysctl("net.ipv6.conf.all.forwarding=0").unwrap();
        assert!(SubnetAnycast.evaluate(&ctx, &off).is_empty());
        // FRR's `ipv6 forwarding` is the same toggle.
        let frr = Intent::FrrCli { line: "ipv6 forwarding".into() };
        assert_eq!(SubnetAnycast.evaluate(&ctx, &frr).len(), 1);
    }

    fn stage_ifaces(ctx: &Context<'_>) -> Vec<String> {
        SubnetAnycast
            .current(ctx)
            .into_iter()
            .filter_map(|f| f.stage)
            .flat_map(|p| match p {
                StagePlan::DisableForwardingOn { ifaces } => ifaces,
                StagePlan::ReflectionFilter { .. } => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn remediation_decides_like_the_critical_finding_without_naming_routes() {
        use crate::model::objects::Nexthop;
        use crate::model::routes::{NextHop, Route};
        let route = |dst: &str, gw: &str| {
            let nh = NextHop { gateway: Some(gw.parse().unwrap()), ifindex: 2, weight: 1, flags: 0 };
            Change::Route(Route::test_unicast(dst, vec![nh]))
        };
        let flows = FlowTable::default();
        // No BGP peer: only a route's gateway sits at prefix::.
        let (mut m, _) = lab("fdc0:3489:e0fd::2");
        let peers = Vec::new();
        m.apply(route("2001:db8::/32", "fdc0:3489:e0fd::"), &mut vec![]);
        for i in 0..1000u32 {
            m.apply(route(&format!("2001:db9:{i:x}::/64"), "fdc0:3489:e0fd::2"), &mut vec![]);
        }
        let ctx =
            Context { model: &m, flows: &flows, kernel: &FACTS, peers: &peers, hairpin_filters: &Default::default() };
        assert!(remediation_ifaces(&ctx).is_empty(), "forwarding is off");
        let f = SubnetAnycast.current(&ctx);
        assert_eq!(
            f[0].evidence,
            vec![
                "gateway of route 2001:db8::/32 (table 254) is the Subnet-Router anycast of fdc0:3489:e0fd::/64 on \
                  vmif (forwarding off, anycast not joined)"
            ]
        );
        // Routes added after the first question are named too, in table
        // and prefix order.
        m.apply(route("2001:db8:1::/48", "fdc0:3489:e0fd::"), &mut vec![]);
        m.apply(route("2001::/16", "fdc0:3489:e0fd::"), &mut vec![]);
        let ctx =
            Context { model: &m, flows: &flows, kernel: &FACTS, peers: &peers, hairpin_filters: &Default::default() };
        let f = SubnetAnycast.current(&ctx);
        let named: Vec<&str> = f[0].evidence.iter().map(|e| e.split(" is the ").next().unwrap()).collect();
        assert_eq!(
            named,
            vec![
                "gateway of route 2001::/16 (table 254)",
                "gateway of route 2001:db8::/32 (table 254)",
                "gateway of route 2001:db8:1::/48 (table 254)"
            ]
        );
        for dst in ["2001:db8:1::/48", "2001::/16"] {
            let Change::Route(r) = route(dst, "fdc0:3489:e0fd::") else { unreachable!() };
            m.apply(Change::RouteGone(r), &mut vec![]);
        }
        m.apply(Change::Forwarding { v6: true, scope: ConfScope::Iface(2), value: 1 }, &mut vec![]);
        m.apply(Change::Forwarding { v6: true, scope: ConfScope::Iface(3), value: 1 }, &mut vec![]);
        let ctx =
            Context { model: &m, flows: &flows, kernel: &FACTS, peers: &peers, hairpin_filters: &Default::default() };
        assert_eq!(remediation_ifaces(&ctx), vec!["vmif".to_string()]);
        assert_eq!(remediation_ifaces(&ctx), stage_ifaces(&ctx));
        // The route goes: nothing left to remediate.
        let Change::Route(r) = route("2001:db8::/32", "fdc0:3489:e0fd::") else { unreachable!() };
        m.apply(Change::RouteGone(r), &mut vec![]);
        let ctx =
            Context { model: &m, flows: &flows, kernel: &FACTS, peers: &peers, hairpin_filters: &Default::default() };
        assert!(remediation_ifaces(&ctx).is_empty());
        assert!(stage_ifaces(&ctx).is_empty());
        // A nexthop object's gateway, and a peer, count the same way; an
        // address on `other` adds `other`.
        m.apply(
            Change::Nexthop(Nexthop {
                id: 7,
                family: 10,
                protocol: 11,
                oif: Some(2),
                gateway: Some("fdc0:3489:e0fd::".parse().unwrap()),
                blackhole: false,
                group: vec![],
                resilient: None,
            }),
            &mut vec![],
        );
        m.apply(
            Change::Address(Address {
                key: AddressKey { ifindex: 3, address: "fdc0:1::9".parse().unwrap(), prefix_len: 64 },
                flags: 0,
                scope: 0,
            }),
            &mut vec![],
        );
        let (_, peers) = lab("fdc0:1::");
        let ctx =
            Context { model: &m, flows: &flows, kernel: &FACTS, peers: &peers, hairpin_filters: &Default::default() };
        assert_eq!(remediation_ifaces(&ctx), vec!["other".to_string(), "vmif".to_string()]);
        assert_eq!(remediation_ifaces(&ctx), stage_ifaces(&ctx));
    }

    #[test]
    fn forwarding_on_makes_it_critical_and_a_peer_at_one_is_never_flagged() {
        let (mut m, peers) = lab("fdc0:3489:e0fd::");
        m.apply(Change::Forwarding { v6: true, scope: ConfScope::Iface(2), value: 1 }, &mut vec![]);
        let flows = FlowTable::default();
        let ctx =
            Context { model: &m, flows: &flows, kernel: &FACTS, peers: &peers, hairpin_filters: &Default::default() };
        let f = SubnetAnycast.current(&ctx);
        assert_eq!(f[0].severity, Severity::Critical);
        let (m, peers) = lab("fdc0:3489:e0fd::2");
        let ctx =
            Context { model: &m, flows: &flows, kernel: &FACTS, peers: &peers, hairpin_filters: &Default::default() };
        assert!(SubnetAnycast.current(&ctx).is_empty());
        let toggle = parse_sysctl("net.ipv6.conf.all.forwarding=1").unwrap();
        assert!(SubnetAnycast.evaluate(&ctx, &toggle).is_empty());
    }
}
