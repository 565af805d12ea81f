//! The flow inventory: established locally-originated TCP flows whose
//! destination resolves to a multipath route, with the member each uses now
//! and the member it will use after the next invalidation of its cached
//! route.
//!
//! Why two members: IPv6 `tcp_v6_connect()` looks the route up before the
//! source port is chosen and caches that dst; once the cache is invalidated
//! the socket looks up again with its real port, and the multipath hash may
//! pick another member (field-notes, Hazard 1). *Now* is observed from the
//! flow's SYN leaving the box; *after* is the kernel's own answer to an
//! RTM_GETROUTE with the flow's real keys. A flow is *armed* when they
//! differ, or when *now* is unknown on a kernel the self-test found affected.
//!
//! Pure: observations and predictions arrive as data from the kernel edge.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::{Model, ResolvedMember, TcpSocket};

/// A flow's 4-tuple: (local, remote).
pub type FlowKey = (SocketAddr, SocketAddr);

/// Which member of a route a flow uses, as far as it is known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberId {
    /// Gateway, when known.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface.
    pub ifindex: u32,
}

/// One flow in the inventory.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// Socket mark, if any (part of the route lookup).
    pub mark: Option<u32>,
    /// Bound interface, 0 if none (part of the route lookup).
    pub bound_ifindex: u32,
    /// Table and prefix of the multipath route the destination resolves to.
    pub table: u32,
    /// Matched prefix.
    pub prefix: IpNetwork,
    /// Members of that route.
    pub members: Vec<ResolvedMember>,
    /// The member in use now, when observed.
    pub current: Option<MemberId>,
    /// The member the kernel selects for the real keys (after the next
    /// invalidation), when predicted.
    pub after: Option<MemberId>,
}

impl Flow {
    /// Identity.
    pub fn key(&self) -> FlowKey {
        (self.local, self.remote)
    }

    /// IPv6 flow.
    pub fn is_v6(&self) -> bool {
        self.remote.is_ipv6()
    }

    /// Whether the next invalidation of its cached route would move this
    /// flow to another member. `kernel_affected` is the self-test's verdict
    /// for this flow's family and hash setting; with the current member
    /// unknown, an affected kernel makes the flow armed (we cannot show it
    /// safe) and an unaffected one does not.
    pub fn armed(&self, kernel_affected: bool) -> bool {
        match (&self.current, &self.after) {
            (Some(c), Some(a)) => !same_member(c, a),
            (None, _) => kernel_affected,
            (Some(_), None) => kernel_affected,
        }
    }
}

fn same_member(a: &MemberId, b: &MemberId) -> bool {
    a.ifindex == b.ifindex && (a.gateway.is_none() || b.gateway.is_none() || a.gateway == b.gateway)
}

/// An outgoing SYN seen on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Local end.
    pub local: SocketAddr,
    /// Remote end.
    pub remote: SocketAddr,
    /// Interface the SYN left by.
    pub ifindex: u32,
}

/// All flows, plus observations waiting for their socket to show up.
#[derive(Default, Debug)]
pub struct FlowTable {
    flows: BTreeMap<FlowKey, Flow>,
    /// SYNs seen before the socket poll found the flow (or for flows that
    /// never ride a multipath route); bounded.
    pending_obs: HashMap<FlowKey, u32>,
}

/// Most SYN observations kept for flows not (yet) in the inventory.
const MAX_PENDING_OBS: usize = 65_536;

impl FlowTable {
    /// All flows in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.flows.values()
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Looks up one flow.
    pub fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.flows.get(key)
    }

    /// Records an outgoing SYN.
    pub fn observe(&mut self, obs: Observation) {
        let key = (obs.local, obs.remote);
        if let Some(f) = self.flows.get_mut(&key) {
            f.current = member_for_ifindex(&f.members, obs.ifindex);
            return;
        }
        if self.pending_obs.len() >= MAX_PENDING_OBS {
            self.pending_obs.clear();
        }
        self.pending_obs.insert(key, obs.ifindex);
    }

    /// Rebuilds the flow set from the model's sockets and routes, keeping
    /// what is known about flows that persist. `listening` holds the local
    /// ports with a listening socket: sockets on them were accepted, not
    /// originated here, and their route was looked up with real keys.
    pub fn sync(&mut self, model: &Model, listening: &BTreeSet<u16>) {
        let mut fresh = BTreeMap::new();
        for s in model.sockets.values() {
            if listening.contains(&s.local.port()) {
                continue;
            }
            let Some(flow) = self.flow_for(model, s) else { continue };
            fresh.insert(flow.key(), flow);
        }
        for (k, f) in fresh.iter_mut() {
            if let Some(old) = self.flows.get(k) {
                if old.prefix == f.prefix && old.table == f.table && old.members == f.members {
                    f.current = old.current.clone();
                    f.after = old.after.clone();
                }
            } else if let Some(ifindex) = self.pending_obs.remove(k) {
                f.current = member_for_ifindex(&f.members, ifindex);
            }
        }
        self.flows = fresh;
    }

    fn flow_for(&self, model: &Model, s: &TcpSocket) -> Option<Flow> {
        let table = super::TABLE_MAIN;
        let r = model.lookup(table, s.remote.ip())?;
        if r.members.len() < 2 {
            return None;
        }
        Some(Flow {
            local: s.local,
            remote: s.remote,
            mark: s.mark.filter(|m| *m != 0),
            bound_ifindex: s.bound_ifindex,
            table,
            prefix: r.route.dst,
            members: r.members,
            current: None,
            after: None,
        })
    }

    /// Stores the kernel's real-keys answer for a flow.
    pub fn predict(&mut self, key: &FlowKey, after: MemberId) {
        if let Some(f) = self.flows.get_mut(key) {
            f.after = Some(after);
        }
    }

    /// Applies an invalidation: every flow for which `hits` is true re-looks
    /// its route up with real keys at its next packet, so from now on it
    /// uses (or, if that moved it, died on) its predicted member. Returns the
    /// flows that were armed when it happened (the ones exposed).
    pub fn invalidate(&mut self, kernel_affected: impl Fn(&Flow) -> bool, hits: impl Fn(&Flow) -> bool) -> Vec<Flow> {
        let mut exposed = Vec::new();
        for f in self.flows.values_mut().filter(|f| hits(f)) {
            if f.armed(kernel_affected(f)) {
                exposed.push(f.clone());
            }
            if f.after.is_some() {
                f.current = f.after.clone();
            }
        }
        exposed
    }
}

fn member_for_ifindex(members: &[ResolvedMember], ifindex: u32) -> Option<MemberId> {
    let mut on_if = members.iter().filter(|m| m.ifindex == ifindex);
    let first = on_if.next()?;
    // Several members on one interface (gateways on a shared LAN) cannot be
    // told apart by interface alone: the member stays unknown.
    if on_if.next().is_some() {
        return Some(MemberId { gateway: None, ifindex });
    }
    Some(MemberId { gateway: first.gateway, ifindex })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, NextHop, Route, RouteAttrs, TABLE_MAIN};

    fn model_with_ecmp() -> Model {
        let mut m = Model::default();
        let mut ev = vec![];
        let nhs = (2..5)
            .map(|i| NextHop {
                gateway: Some(format!("fd00:{i}::2").parse().unwrap()),
                ifindex: i,
                weight: 1,
                flags: 0,
            })
            .collect();
        m.apply(
            Change::Route(Route {
                table: TABLE_MAIN,
                dst: "fd00:ecec:f::1/128".parse().unwrap(),
                tos: 0,
                metric: 1024,
                kind: 1,
                protocol: 3,
                scope: 0,
                attrs: RouteAttrs { nexthops: nhs, ..Default::default() },
            }),
            &mut ev,
        );
        let sock = |lp: u16, dst: &str| TcpSocket {
            local: format!("[fd00:2::1]:{lp}").parse().unwrap(),
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
                sock(40002, "fd00:9::1"),
                sock(7, "fd00:ecec:f::1"),
            ]),
            &mut ev,
        );
        m
    }

    #[test]
    fn only_local_flows_over_multipath_routes_are_inventoried() {
        let m = model_with_ecmp();
        let mut t = FlowTable::default();
        t.sync(&m, &BTreeSet::from([7]));
        let ports: Vec<u16> = t.iter().map(|f| f.local.port()).collect();
        assert_eq!(ports, vec![40000, 40001], "no route for fd00:9::1; port 7 is a listener's");
        assert!(t.iter().all(|f| f.members.len() == 3 && f.prefix.to_string() == "fd00:ecec:f::1/128"));
    }

    #[test]
    fn armed_means_now_differs_from_after_or_unknown_on_affected_kernels() {
        let m = model_with_ecmp();
        let mut t = FlowTable::default();
        let obs = |lp: u16, ifindex| Observation {
            local: format!("[fd00:2::1]:{lp}").parse().unwrap(),
            remote: "[fd00:ecec:f::1]:7".parse().unwrap(),
            ifindex,
        };
        // The SYN of 40000 is seen before the poll finds the socket.
        t.observe(obs(40000, 2));
        t.sync(&m, &BTreeSet::from([7]));
        let k0 = t.iter().next().unwrap().key();
        let k1 = t.iter().nth(1).unwrap().key();
        assert_eq!(t.get(&k0).unwrap().current.as_ref().unwrap().ifindex, 2);
        t.predict(&k0, MemberId { gateway: Some("fd00:3::2".parse().unwrap()), ifindex: 3 });
        t.predict(&k1, MemberId { gateway: Some("fd00:4::2".parse().unwrap()), ifindex: 4 });
        assert!(t.get(&k0).unwrap().armed(false), "uses 2 now, 3 after");
        assert!(t.get(&k1).unwrap().armed(true), "unknown now on an affected kernel");
        assert!(!t.get(&k1).unwrap().armed(false), "unknown now on an unaffected kernel");
        t.observe(obs(40001, 4));
        assert!(!t.get(&k1).unwrap().armed(true), "observed on its predicted member");
        // An invalidation exposes the armed flow and leaves survivors on
        // their real-keys member.
        let exposed = t.invalidate(|_| true, |_| true);
        assert_eq!(exposed.iter().map(|f| f.local.port()).collect::<Vec<_>>(), vec![40000]);
        assert!(!t.get(&k0).unwrap().armed(true));
        // Flows persist across polls with what is known about them.
        t.sync(&m, &BTreeSet::from([7]));
        assert_eq!(t.get(&k0).unwrap().current.as_ref().unwrap().ifindex, 3);
    }
}
