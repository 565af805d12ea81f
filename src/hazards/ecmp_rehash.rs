//! `ecmp_rehash`: locally-originated TCP flows over multipath routes that a
//! change (or any invalidation of their cached route) moves to another
//! member.
//!
//! **What breaks.** IPv6 `tcp_v6_connect()` looks the route up before the
//! source port is chosen and caches it; the next invalidation makes the
//! socket look up again with its real port and the multipath hash may pick
//! another member. If the destination is anycast (or behind stateful
//! devices per path) the flow dies with RST. IPv4 re-looks-up once the port
//! is known, so it is not affected.
//!
//! **Kernels.** The connect-time lookup hashes neither the socket's real
//! source port nor (measured on 6.18 and 5.10) its real source address, so
//! every IPv6 hash that includes either is affected: L4 (policy 1), L3
//! (policy 0: with one destination all flows break or none, per boot; the
//! self-test spreads flows over 10 destinations and measured 24/30 broken
//! on 6.18) and policy 3 with fields containing 0x01 or 0x10. Fields
//! without both (0x000e: dst, proto, flowlabel) measured 0/30. The daemon
//! does not trust this list: the self-test measures the running kernel and
//! [`KernelFacts`] carries it.
//!
//! **Evidence.** Per flow: its route and members, the member it uses now
//! (observed from its SYN leaving the box) and the member the kernel
//! selects for its real keys (RTM_GETROUTE with src, dst, proto, ports,
//! mark, oif: field-notes verified 79/79 predicted-and-broke, 0 false).
//!
//! **What a change does to flows** (IPv6, same table):
//! - replacing a flow's own route with the same members: the flow moves iff
//!   it is armed (now != after) — exact;
//! - replacing a route on the path from the tree root to the flow's route
//!   (the flow's prefix contains the changed one), e.g. anything while the
//!   flow rides an ECMP default route: the same, since only the invalidation
//!   happens;
//! - changing the flow's own route's members or weights, or adding a more
//!   specific route that captures the flow: the hash-to-member mapping
//!   changes; which flows move cannot be computed without the kernel's hash,
//!   so every flow on it counts as at risk (a limit, stated in the finding);
//! - anything in another table: nothing (separate tree).
//!
//! For IPv4 any route change invalidates every cached route, but flows
//! already use their real-keys member, so only observed mismatches count.
//! A hash-policy or hash-fields sysctl change re-maps every IPv6 flow at its
//! next invalidation.
//!
//! **Mitigations.** Wait until armed flows drain (delay); switch the
//! namespace to a hash without source address and port (policy 3, fields 0x000e:
//! namespace-wide, forwarded traffic too) at a moment with no flows to
//! move; resilient nexthop groups (limit re-mapping when members change; do
//! not fix the source-port problem); bind source address and port before
//! connect (application change).

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;

use super::{Context, Detector, Finding, Mitigation, Severity};
use crate::model::flows::Flow;
use crate::model::ResolvedMember;
use crate::policy::intent::{Intent, RouteSpec};

/// The detector.
pub struct EcmpRehash;

/// The hazard's name.
pub const NAME: &str = "ecmp_rehash";
/// Most flows listed as evidence in one finding.
pub const MAX_EVIDENCE: usize = 50;

fn mitigations() -> Vec<Mitigation> {
    vec![
        Mitigation {
            name: "delay",
            description: "hold the change until the exposed flows have closed".into(),
            side_effects: "the change waits (up to max_delay)".into(),
        },
        Mitigation {
            name: "hash_fields",
            description: "net.ipv6.fib_multipath_hash_policy=3 with fib_multipath_hash_fields=0x000e \
                          (dst, proto, flowlabel: no source address, no source port), set while no flow can move"
                .into(),
            side_effects: "namespace-wide: forwarded IPv6 traffic is hashed on destination and flow label".into(),
        },
        Mitigation {
            name: "resilient",
            description: "use a resilient nexthop group so member changes remap few buckets".into(),
            side_effects: "needs nexthop objects (kernel >= 5.13, FRR >= 8.5); does not fix identical replaces".into(),
        },
        Mitigation {
            name: "bind_source",
            description: "applications bind source address and port before connect()".into(),
            side_effects: "application change".into(),
        },
    ]
}

fn describe(f: &Flow, ctx: &Context<'_>) -> String {
    let m = |id: &Option<crate::model::flows::MemberId>| match id {
        Some(id) => {
            let gw = id.gateway.map(|g| format!("{g} ")).unwrap_or_default();
            format!("{gw}dev {}", ctx.model.ifname(id.ifindex))
        }
        None => "unknown".into(),
    };
    format!("tcp {} -> {} route {} now {} after {}", f.local, f.remote, f.prefix, m(&f.current), m(&f.after))
}

fn affected(ctx: &Context<'_>, f: &Flow) -> bool {
    // Not measured: assume the worst rather than show an unknown flow safe.
    let fact = if f.is_v6() { ctx.kernel.ecmp_v6_affected } else { ctx.kernel.ecmp_v4_affected };
    fact.unwrap_or(true)
}

/// True when `outer` is `inner` or one of its ancestors.
fn covers(outer: &IpNetwork, inner: &IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4() && outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}

/// Whether a flow's members are the spec's, memoized: flows on one route
/// share one member set, so the comparison runs once per distinct set
/// rather than once per flow.
struct SameMembers<'a> {
    ctx: &'a Context<'a>,
    want: Vec<(Option<std::net::IpAddr>, String, u16)>,
    last: Option<(Vec<ResolvedMember>, bool)>,
}

impl<'a> SameMembers<'a> {
    fn new(ctx: &'a Context<'a>, spec: &RouteSpec) -> Self {
        let mut want: Vec<_> = spec.members.iter().map(|m| (m.gateway, m.dev.clone(), m.weight)).collect();
        want.sort();
        SameMembers { ctx, want, last: None }
    }

    fn check(&mut self, f: &Flow) -> bool {
        if let Some((members, same)) = &self.last {
            if *members == f.members {
                return *same;
            }
        }
        let mut have: Vec<_> =
            f.members.iter().map(|m| (m.gateway, self.ctx.model.ifname(m.ifindex), m.weight)).collect();
        have.sort();
        let same = have == self.want;
        self.last = Some((f.members.clone(), same));
        same
    }
}

/// How a proposed route change touches one flow.
enum Touch {
    /// Not at all.
    None,
    /// Its cached route is invalidated; it moves iff armed.
    Invalidated,
    /// Its hash-to-member mapping changes: at risk whatever it is now.
    Remapped,
}

/// Depends only on what all flows to one destination share (family,
/// address, table, route, members).
fn touch(same: &mut SameMembers<'_>, f: &Flow, spec: &RouteSpec) -> Touch {
    if f.is_v6() != spec.dst.is_ipv6() {
        return Touch::None;
    }
    if !f.is_v6() {
        // IPv4: any route change flushes every cached route of the family.
        return Touch::Invalidated;
    }
    if f.table != spec.table {
        return Touch::None;
    }
    if f.prefix == spec.dst {
        return if same.check(f) { Touch::Invalidated } else { Touch::Remapped };
    }
    if covers(&f.prefix, &spec.dst) {
        // A more specific route: captures the flow if it covers its
        // destination, else only invalidates on the way up to the root.
        return if spec.dst.contains(f.remote.ip()) { Touch::Remapped } else { Touch::Invalidated };
    }
    Touch::None
}

impl Detector for EcmpRehash {
    fn name(&self) -> &'static str {
        NAME
    }

    fn current(&self, ctx: &Context<'_>) -> Vec<Finding> {
        // Only unsettled flows can be armed; routes are formatted once each.
        let mut armed = 0usize;
        let mut evidence = Vec::new();
        let mut by_route: BTreeMap<IpNetwork, usize> = BTreeMap::new();
        for f in ctx.flows.maybe_armed().filter(|f| f.armed(affected(ctx, f))) {
            armed += 1;
            *by_route.entry(f.prefix).or_default() += 1;
            if evidence.len() < MAX_EVIDENCE {
                evidence.push(describe(f, ctx));
            }
        }
        if armed == 0 {
            return Vec::new();
        }
        let routes: Vec<String> = by_route.iter().map(|(p, n)| format!("{p} ({n})")).collect();
        vec![Finding {
            hazard: NAME,
            severity: Severity::Warning,
            summary: format!(
                "{} established flow(s) would move to another member at the next invalidation of their cached \
                 route (any route change on their path, rule change or address change): {}",
                armed,
                routes.join(", ")
            ),
            breaks: armed,
            evidence,
            mitigations: mitigations(),
            stage: None,
        }]
    }

    fn evaluate(&self, ctx: &Context<'_>, intent: &Intent) -> Vec<Finding> {
        match intent {
            Intent::RouteReplace(spec) => {
                let mut same = SameMembers::new(ctx, spec);
                // A flow moves when the change invalidates its cached route
                // and it is armed; only unsettled flows can be, and the
                // change touches all flows to one destination alike.
                let moved: Vec<&Flow> = ctx
                    .flows
                    .maybe_armed_where(|f| matches!(touch(&mut same, f, spec), Touch::Invalidated))
                    .into_iter()
                    .filter(|f| f.armed(affected(ctx, f)))
                    .collect();
                // A remapped flow rides the changed prefix or is captured by
                // it: either way its destination lies inside it.
                let mut remapped: Vec<&Flow> = ctx
                    .flows
                    .flows_to(spec.dst)
                    .filter(|f| matches!(touch(&mut same, f, spec), Touch::Remapped))
                    .collect();
                remapped.sort_by_key(|f| f.key());
                let mut out = Vec::new();
                if !moved.is_empty() {
                    out.push(Finding {
                        hazard: NAME,
                        severity: Severity::Critical,
                        summary: format!(
                            "replacing {} (table {}) invalidates cached routes and moves {} established flow(s) to \
                             another member; flows to anycast destinations die with RST",
                            spec.dst,
                            spec.table,
                            moved.len()
                        ),
                        breaks: moved.len(),
                        evidence: moved.iter().take(MAX_EVIDENCE).map(|f| describe(f, ctx)).collect(),
                        mitigations: mitigations(),
                        stage: None,
                    });
                }
                if !remapped.is_empty() {
                    out.push(Finding {
                        hazard: NAME,
                        severity: Severity::Critical,
                        summary: format!(
                            "replacing {} (table {}) changes the member set {} flow(s) are hashed over; which of \
                             them move cannot be computed without the kernel's hash, so all are at risk",
                            spec.dst,
                            spec.table,
                            remapped.len()
                        ),
                        breaks: remapped.len(),
                        evidence: remapped.iter().take(MAX_EVIDENCE).map(|f| describe(f, ctx)).collect(),
                        mitigations: mitigations(),
                        stage: None,
                    });
                }
                out
            }
            // A nexthop group replaced: the flows whose route uses it. The
            // same members (ids, weights, order) only invalidate; other
            // members re-map every IPv6 flow on it.
            Intent::NexthopGroup { id, members } => {
                let Some(group) = ctx.model.nexthops.get(id) else { return Vec::new() };
                let same = group.group.len() == members.len()
                    && group.group.iter().zip(members).all(|(g, (m, w))| g.id == *m && g.weight == *w);
                let riding: Vec<&Flow> = ctx
                    .flows
                    .iter()
                    .filter(|f| {
                        ctx.model.lookup(f.table, f.remote.ip()).is_some_and(|r| r.route.attrs.nhid == Some(*id))
                    })
                    .collect();
                let hit: Vec<&Flow> = if same {
                    riding.into_iter().filter(|f| f.armed(affected(ctx, f))).collect()
                } else {
                    riding.into_iter().filter(|f| f.is_v6()).collect()
                };
                if hit.is_empty() {
                    return Vec::new();
                }
                let summary = if same {
                    format!(
                        "replacing nexthop group {id} with the same members invalidates cached routes and moves {} \
                         established flow(s) to another member; flows to anycast destinations die with RST",
                        hit.len()
                    )
                } else {
                    format!(
                        "replacing nexthop group {id} changes the member set {} IPv6 flow(s) are hashed over; which of \
                         them move cannot be computed without the kernel's hash, so all are at risk",
                        hit.len()
                    )
                };
                vec![Finding {
                    hazard: NAME,
                    severity: Severity::Critical,
                    summary,
                    breaks: hit.len(),
                    evidence: hit.iter().take(MAX_EVIDENCE).map(|f| describe(f, ctx)).collect(),
                    mitigations: mitigations(),
                    stage: None,
                }]
            }
            // field-notes: an IPv6 address added anywhere invalidates every
            // cached IPv6 route (22 of 60 flows moved when one was added on
            // a member interface). Measured here (integration/ecmp.rs): the
            // flows move when duplicate address detection completes; added
            // with `nodad`, none moved. The guard must not be the trigger.
            Intent::AddressAdd { address, dev, nodad: false } if address.is_ipv6() => {
                let moved: Vec<&Flow> = ctx
                    .flows
                    .maybe_armed_where(|f| f.is_v6())
                    .into_iter()
                    .filter(|f| f.armed(affected(ctx, f)))
                    .collect();
                if moved.is_empty() {
                    return Vec::new();
                }
                vec![Finding {
                    hazard: NAME,
                    severity: Severity::Critical,
                    summary: format!(
                        "adding {address} to {dev} invalidates every cached IPv6 route and moves {} established \
                         flow(s) to another member; flows to anycast destinations die with RST",
                        moved.len()
                    ),
                    breaks: moved.len(),
                    evidence: moved.iter().take(MAX_EVIDENCE).map(|f| describe(f, ctx)).collect(),
                    mitigations: mitigations(),
                    stage: None,
                }]
            }
            other => {
                let mut out = Vec::new();
                for (key, value) in other.effective_sysctls() {
                    let hash_key =
                        key == "net.ipv6.fib_multipath_hash_policy" || key == "net.ipv6.fib_multipath_hash_fields";
                    let s = &ctx.model.sysctls;
                    let current = if key.ends_with("policy") { s.hash_policy_v6 } else { s.hash_fields_v6 };
                    let unchanged = parse_int(&value).is_some_and(|v| Some(v) == current);
                    if !hash_key || unchanged {
                        continue;
                    }
                    let v6: Vec<&Flow> = ctx.flows.iter().filter(|f| f.is_v6()).collect();
                    if v6.is_empty() {
                        continue;
                    }
                    out.push(Finding {
                        hazard: NAME,
                        severity: Severity::Warning,
                        summary: format!(
                            "{key}={value} re-maps all {} IPv6 flow(s) on multipath routes at their next invalidation",
                            v6.len()
                        ),
                        breaks: v6.len(),
                        evidence: v6.iter().take(MAX_EVIDENCE).map(|f| describe(f, ctx)).collect(),
                        mitigations: mitigations(),
                        stage: None,
                    });
                }
                out
            }
        }
    }
}

/// Parses a sysctl integer in decimal or 0x-hex.
pub fn parse_int(v: &str) -> Option<u32> {
    let v = v.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::hazards::KernelFacts;
    use crate::model::flows::{FlowTable, MemberId, Observation};
    use crate::model::{Change, Link, Model, NextHop, Route, TcpSocket, IFF_UP};
    use crate::policy::intent::parse_route_replace;

    /// R with links r1..r3 (ifindex 2..4), an ECMP /128 and an ECMP default,
    /// and four flows: two to the /128 (one armed, one not), one behind the
    /// default (armed), one with unknown current member.
    fn lab() -> (Model, FlowTable) {
        let mut m = Model::default();
        let mut ev = vec![];
        for i in 2..5u32 {
            m.apply(
                Change::Link(Link {
                    ifindex: i,
                    name: format!("r{}", i - 1),
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
        let ecmp = |dst: &str| {
            Route::test_unicast(
                dst,
                (2..5).map(|i| NextHop { gateway: Some(gw(i)), ifindex: i, weight: 1, flags: 0 }).collect(),
            )
        };
        m.apply(Change::Route(ecmp("fd00:ecec:f::1/128")), &mut ev);
        m.apply(Change::Route(ecmp("::/0")), &mut ev);
        let sock = |lp: u16, dst: &str| TcpSocket {
            local: format!("[fd00:1::1]:{lp}").parse().unwrap(),
            remote: format!("[{dst}]:7").parse().unwrap(),
            bound_ifindex: 0,
            mark: None,
            inode: 1,
            uid: 0,
        };
        m.apply(
            Change::Sockets(vec![
                sock(40000, "fd00:ecec:f::1"),
                sock(40001, "fd00:ecec:f::1"),
                sock(40002, "2001:db8::9"),
                sock(40003, "fd00:ecec:f::1"),
            ]),
            &mut ev,
        );
        let mut t = FlowTable::default();
        t.sync(&m, &BTreeSet::new());
        let key = |lp: u16, dst: &str| -> (std::net::SocketAddr, std::net::SocketAddr) {
            (format!("[fd00:1::1]:{lp}").parse().unwrap(), format!("[{dst}]:7").parse().unwrap())
        };
        let obs = |lp: u16, dst: &str, ifindex| {
            let (local, remote) = key(lp, dst);
            Observation { local, remote, ifindex }
        };
        t.observe(obs(40000, "fd00:ecec:f::1", 2));
        t.predict(&key(40000, "fd00:ecec:f::1"), MemberId { gateway: Some(gw(3)), ifindex: 3 });
        t.observe(obs(40001, "fd00:ecec:f::1", 4));
        t.predict(&key(40001, "fd00:ecec:f::1"), MemberId { gateway: Some(gw(4)), ifindex: 4 });
        t.observe(obs(40002, "2001:db8::9", 2));
        t.predict(&key(40002, "2001:db8::9"), MemberId { gateway: Some(gw(4)), ifindex: 4 });
        t.predict(&key(40003, "fd00:ecec:f::1"), MemberId { gateway: Some(gw(2)), ifindex: 2 });
        (m, t)
    }

    fn gw(i: u32) -> std::net::IpAddr {
        format!("fd00:{i}::2").parse().unwrap()
    }

    fn ports(f: &Finding) -> Vec<String> {
        f.evidence
            .iter()
            .map(|e| e.split_whitespace().nth(1).unwrap().rsplit(':').next().unwrap().to_string())
            .collect()
    }

    const AFFECTED: KernelFacts = KernelFacts {
        ecmp_v6_affected: Some(true),
        ecmp_v4_affected: Some(false),
        sit_local_remote_drops: None,
        kernel_version: None,
    };
    const UNAFFECTED: KernelFacts = KernelFacts {
        ecmp_v6_affected: Some(false),
        ecmp_v4_affected: Some(false),
        sit_local_remote_drops: None,
        kernel_version: None,
    };

    #[test]
    fn identical_replace_moves_exactly_the_armed_flows_on_and_below_it() {
        let (m, t) = lab();
        let ctx = Context { model: &m, flows: &t, kernel: &AFFECTED, peers: &[], hairpin_filters: &Default::default() };
        let spec = parse_route_replace(
            "fd00:ecec:f::1/128 nexthop via fd00:2::2 dev r1 nexthop via fd00:3::2 dev r2 nexthop via fd00:4::2 dev r3",
        )
        .unwrap();
        let f = EcmpRehash.evaluate(&ctx, &Intent::RouteReplace(spec));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Critical);
        // 40000 (2 -> 3), 40003 (unknown on an affected kernel) and 40002
        // (its route, the ECMP default, sits above the changed /128 on the
        // path to the root, so its cached route is invalidated too); not
        // 40001 (stays on 4).
        assert_eq!(ports(&f[0]), vec!["40000", "40002", "40003"]);
        assert_eq!(f[0].breaks, 3);
    }

    #[test]
    fn any_change_under_an_ecmp_default_invalidates_its_flows() {
        let (m, t) = lab();
        let ctx = Context { model: &m, flows: &t, kernel: &AFFECTED, peers: &[], hairpin_filters: &Default::default() };
        let spec = parse_route_replace("2001:db8:99::/64 via fd00:2::2 dev r1").unwrap();
        let f = EcmpRehash.evaluate(&ctx, &Intent::RouteReplace(spec));
        assert_eq!(f.len(), 1);
        assert_eq!(ports(&f[0]), vec!["40002"]);
    }

    #[test]
    fn member_changes_put_every_flow_on_the_route_at_risk() {
        let (m, t) = lab();
        let ctx = Context { model: &m, flows: &t, kernel: &AFFECTED, peers: &[], hairpin_filters: &Default::default() };
        let spec = parse_route_replace("fd00:ecec:f::1/128 nexthop via fd00:2::2 dev r1 nexthop via fd00:3::2 dev r2")
            .unwrap();
        let f = EcmpRehash.evaluate(&ctx, &Intent::RouteReplace(spec));
        assert_eq!(f.len(), 2);
        assert_eq!(ports(&f[0]), vec!["40002"], "invalidated behind the default");
        assert!(f[1].summary.contains("cannot be computed"));
        assert_eq!(ports(&f[1]), vec!["40000", "40001", "40003"]);
    }

    #[test]
    fn other_tables_and_unaffected_kernels_are_quiet() {
        let (m, t) = lab();
        let ctx = Context { model: &m, flows: &t, kernel: &AFFECTED, peers: &[], hairpin_filters: &Default::default() };
        let other = parse_route_replace("fd00:ecec:f::1/128 table 100 via fd00:2::2 dev r1").unwrap();
        assert!(EcmpRehash.evaluate(&ctx, &Intent::RouteReplace(other)).is_empty());
        // On an unaffected kernel, unknown flows are not armed, and a flow
        // observed on its predicted member never is.
        let ctx =
            Context { model: &m, flows: &t, kernel: &UNAFFECTED, peers: &[], hairpin_filters: &Default::default() };
        let spec = parse_route_replace(
            "fd00:ecec:f::1/128 nexthop via fd00:2::2 dev r1 nexthop via fd00:3::2 dev r2 nexthop via fd00:4::2 dev r3",
        )
        .unwrap();
        let f = EcmpRehash.evaluate(&ctx, &Intent::RouteReplace(spec));
        assert_eq!(ports(&f[0]), vec!["40000", "40002"], "observed mismatches still count");
    }

    #[test]
    fn current_findings_list_armed_flows_and_hash_sysctls_are_judged() {
        let (m, t) = lab();
        let ctx = Context { model: &m, flows: &t, kernel: &AFFECTED, peers: &[], hairpin_filters: &Default::default() };
        let f = EcmpRehash.current(&ctx);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].breaks, 3);
        assert_eq!(f[0].severity, Severity::Warning);
        let s = Intent::Sysctl { key: "net.ipv6.fib_multipath_hash_policy".into(), value: "3".into() };
        assert_eq!(EcmpRehash.evaluate(&ctx, &s)[0].breaks, 4);
        let other = Intent::Sysctl { key: "net.ipv6.conf.all.forwarding".into(), value: "1".into() };
        assert!(EcmpRehash.evaluate(&ctx, &other).is_empty());
        assert_eq!(parse_int("0x000F"), Some(15));
    }
}
