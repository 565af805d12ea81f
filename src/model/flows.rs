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

use super::{ChangeLogMark, Model, ResolvedMember, Since, TcpSocket};

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

    /// Whether a change of route `dst` in `table` invalidates this flow's
    /// cached route (field-notes): an IPv6 flow whose route sits on the path
    /// from the root to `dst`, or that `dst` captures, in the same table;
    /// every IPv4 flow for an IPv4 change.
    pub fn hit_by_route_change(&self, table: u32, dst: IpNetwork) -> bool {
        if dst.is_ipv6() != self.is_v6() {
            return false;
        }
        if !self.is_v6() {
            return true;
        }
        let on_path = self.prefix.prefix() <= dst.prefix() && self.prefix.contains(dst.network());
        self.table == table && (on_path || dst.contains(self.remote.ip()))
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
///
/// Everything here is kept incrementally, so that a socket poll, a
/// prediction pass or an invalidation costs what changed, not what exists:
/// - a destination's route is looked up once and again only when the
///   model's [`ChangeLog`](super::ChangeLog) names a route change covering it;
/// - `unsettled` indexes the only flows an invalidation can change (and the
///   only ones that can be armed);
/// - `unpredicted` holds the flows that need the kernel's answer (again).
#[derive(Default, Debug)]
pub struct FlowTable {
    flows: BTreeMap<FlowKey, Flow>,
    /// SYNs seen before the socket poll found the flow (or for flows that
    /// never ride a multipath route); bounded.
    pending_obs: HashMap<FlowKey, u32>,
    /// Flows whose current member is unknown or not exactly the predicted
    /// one (or whose prediction is missing). Every other flow is settled:
    /// an invalidation leaves it where it is, and it is not armed.
    unsettled: BTreeSet<FlowKey>,
    /// Flows that need a (fresh) prediction: new ones, ones whose route
    /// or keys changed, all after a change that can move the kernel's
    /// answers (rules, addresses, links, nexthop objects, sysctls).
    unpredicted: BTreeSet<FlowKey>,
    /// Destinations of the candidate sockets (those on local ports without
    /// a listener): where each resolves, and the sockets to it. A candidate
    /// is a flow exactly when its destination has a multipath route.
    dsts: BTreeMap<IpAddr, Dst>,
    /// The listening ports as of the last sync.
    listening: BTreeSet<u16>,
    /// Where the model's changelog stood at the last sync.
    synced: Option<ChangeLogMark>,
    /// Where the rolling re-prediction ([`FlowTable::take_unpredicted`])
    /// continues.
    refresh_after: Option<FlowKey>,
}

/// A destination's multipath route, as the flows to it carry it.
#[derive(Clone, Debug, PartialEq)]
struct DstRoute {
    table: u32,
    prefix: IpNetwork,
    members: Vec<ResolvedMember>,
}

#[derive(Debug)]
struct Dst {
    /// `None`: no multipath route (no flow).
    route: Option<DstRoute>,
    /// Candidate sockets to this destination.
    sockets: BTreeSet<FlowKey>,
    /// How many of its flows are unsettled.
    unsettled: usize,
}

/// Most SYN observations kept for flows not (yet) in the inventory.
const MAX_PENDING_OBS: usize = 65_536;

/// The table flows are looked up in.
const TABLE: u32 = super::TABLE_MAIN;

/// Settled: known to use its predicted member exactly. An invalidation
/// changes nothing for it, and it is not armed.
fn settled(f: &Flow) -> bool {
    f.current.is_some() && f.current == f.after
}

/// Where `addr` resolves: `None` without a multipath route.
fn resolve(model: &Model, addr: IpAddr) -> Option<DstRoute> {
    let r = model.lookup(TABLE, addr)?;
    (r.members.len() >= 2).then_some(DstRoute { table: TABLE, prefix: r.route.dst, members: r.members })
}

impl FlowTable {
    /// All flows in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.flows.values()
    }

    /// The flows that may be armed, in key order: all but the settled ones
    /// (whose current member is known to be the predicted one). Every
    /// flow for which [`Flow::armed`] can be true is among them.
    pub fn maybe_armed(&self) -> Box<dyn Iterator<Item = &Flow> + '_> {
        if self.unsettled.len() * 4 > self.flows.len() {
            // Most are: one ordered walk is cheaper than a lookup each.
            Box::new(self.flows.values().filter(|f| !settled(f)))
        } else {
            Box::new(self.unsettled.iter().filter_map(|k| self.flows.get(k)))
        }
    }

    /// The flows whose destination lies in `net`: in key order when they
    /// are many, else grouped by destination.
    pub fn flows_to(&self, net: IpNetwork) -> Box<dyn Iterator<Item = &Flow> + '_> {
        let range = net.network()..=net.broadcast();
        let inside: usize = self.dsts.range(range.clone()).map(|(_, d)| d.sockets.len()).sum();
        if inside * 4 > self.flows.len() {
            Box::new(self.flows.values().filter(move |f| net.contains(f.remote.ip())))
        } else {
            Box::new(self.dsts.range(range).flat_map(|(_, d)| d.sockets.iter()).filter_map(|k| self.flows.get(k)))
        }
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

    /// Keeps `unsettled` in step with one flow.
    fn recheck(&mut self, key: &FlowKey) {
        let yes = self.flows.get(key).is_some_and(|f| !settled(f));
        self.set_unsettled(key, yes);
    }

    /// Adds a flow to `unsettled` or takes it out, counting per destination.
    fn set_unsettled(&mut self, key: &FlowKey, yes: bool) {
        let changed = if yes { self.unsettled.insert(*key) } else { self.unsettled.remove(key) };
        if changed {
            if let Some(d) = self.dsts.get_mut(&key.1.ip()) {
                if yes {
                    d.unsettled += 1;
                } else {
                    d.unsettled -= 1;
                }
            }
        }
    }

    /// The unsettled flows to the destinations `group` accepts, in key
    /// order. `group` sees one flow per destination (with unsettled flows)
    /// and must judge only what all flows to one destination share: family,
    /// address, table, route and members. Costs a look at each destination
    /// plus a visit of the accepted ones' flows.
    pub fn maybe_armed_where(&self, mut group: impl FnMut(&Flow) -> bool) -> Vec<&Flow> {
        let mut accepted: BTreeSet<IpAddr> = BTreeSet::new();
        let mut count = 0;
        for (addr, d) in self.dsts.iter().filter(|(_, d)| d.unsettled > 0) {
            let first = d.sockets.iter().filter_map(|k| self.flows.get(k)).find(|f| !settled(f));
            if first.is_some_and(&mut group) {
                accepted.insert(*addr);
                count += d.unsettled;
            }
        }
        if count * 4 > self.flows.len() {
            // Most flows: one ordered walk is cheaper than a lookup each.
            return self.flows.values().filter(|f| !settled(f) && accepted.contains(&f.remote.ip())).collect();
        }
        let mut out: Vec<&Flow> = accepted
            .iter()
            .filter_map(|a| self.dsts.get(a))
            .flat_map(|d| d.sockets.iter())
            .filter_map(|k| self.flows.get(k))
            .filter(|f| !settled(f))
            .collect();
        out.sort_by_key(|f| f.key());
        out
    }

    /// Brings the flow set up to date with the model's sockets and routes,
    /// keeping what is known about flows that persist on the same route.
    /// `listening` holds the local ports with a listening socket: sockets
    /// on them were accepted, not originated here, and their route was
    /// looked up with real keys.
    ///
    /// Works on what the model's [`ChangeLog`](super::ChangeLog) says changed
    /// since the previous sync: the sockets added, changed or closed, and
    /// the destinations under a route change (looked up again, once per
    /// destination). A fresh model, a changed listening set or a changelog
    /// that overflowed make it walk everything once.
    pub fn sync(&mut self, model: &Model, listening: &BTreeSet<u16>) {
        let since = self.synced;
        self.synced = Some(model.changelog.mark());
        if model.changelog.kernel_changed_since(since) {
            self.unpredicted.extend(self.flows.keys().copied());
        }
        let relisten = *listening != self.listening;
        if relisten {
            self.listening.clone_from(listening);
        }
        // Destinations a route change may have moved.
        let moved: Vec<IpAddr> = match model.changelog.routes_since(since) {
            Since::Nothing => Vec::new(),
            Since::Everything => self.dsts.keys().copied().collect(),
            Since::These(list) => {
                let mut v: BTreeSet<IpAddr> = BTreeSet::new();
                for (_, p) in list.into_iter().filter(|(t, _)| *t == TABLE) {
                    v.extend(self.dsts.range(p.network()..=p.broadcast()).map(|(a, _)| *a));
                }
                v.into_iter().collect()
            }
        };
        for addr in moved {
            self.reresolve(model, addr);
        }
        match (relisten, model.changelog.sockets_since(since)) {
            (false, Since::Nothing) => {}
            (false, Since::These(keys)) => {
                for k in keys {
                    match model.sockets.get(&k).filter(|s| !listening.contains(&s.local.port())) {
                        Some(s) => self.socket_present(model, s),
                        None => self.socket_gone(&k),
                    }
                }
            }
            _ => {
                for s in model.sockets.values().filter(|s| !listening.contains(&s.local.port())) {
                    self.socket_present(model, s);
                }
                let gone: Vec<FlowKey> = self
                    .dsts
                    .values()
                    .flat_map(|d| d.sockets.iter())
                    .filter(|k| listening.contains(&k.0.port()) || !model.sockets.contains_key(k))
                    .copied()
                    .collect();
                for k in gone {
                    self.socket_gone(&k);
                }
            }
        }
    }

    /// A destination's route may have changed: look it up again and carry
    /// its sockets over.
    fn reresolve(&mut self, model: &Model, addr: IpAddr) {
        let route = resolve(model, addr);
        let Some(d) = self.dsts.get_mut(&addr) else { return };
        if d.route == route {
            return;
        }
        d.route = route.clone();
        let keys: Vec<FlowKey> = d.sockets.iter().copied().collect();
        for k in keys {
            match &route {
                None => self.forget(&k),
                Some(r) => match self.flows.get_mut(&k) {
                    Some(f) => {
                        // Another route or member set: what was known
                        // about the flow no longer holds.
                        f.table = r.table;
                        f.prefix = r.prefix;
                        f.members = r.members.clone();
                        f.current = None;
                        f.after = None;
                        self.set_unsettled(&k, true);
                        self.unpredicted.insert(k);
                    }
                    None => {
                        // Closed or listening now: the socket pass drops it.
                        if let Some(s) = model.sockets.get(&k).filter(|s| !self.listening.contains(&s.local.port())) {
                            self.add_flow(s, r);
                        }
                    }
                },
            }
        }
    }

    /// A candidate socket exists (maybe new, maybe with new keys).
    fn socket_present(&mut self, model: &Model, s: &TcpSocket) {
        let key = s.key();
        let mark = s.mark.filter(|m| *m != 0);
        if let Some(f) = self.flows.get_mut(&key) {
            if f.mark != mark || f.bound_ifindex != s.bound_ifindex {
                f.mark = mark;
                f.bound_ifindex = s.bound_ifindex;
                self.unpredicted.insert(key);
            }
            return;
        }
        let addr = s.remote.ip();
        let d = self.dsts.entry(addr).or_insert_with(|| Dst {
            route: resolve(model, addr),
            sockets: BTreeSet::new(),
            unsettled: 0,
        });
        d.sockets.insert(key);
        if let Some(r) = d.route.clone() {
            self.add_flow(s, &r);
        }
    }

    /// A candidate socket closed (or its port listens now).
    fn socket_gone(&mut self, key: &FlowKey) {
        self.forget(key);
        let addr = key.1.ip();
        if let Some(d) = self.dsts.get_mut(&addr) {
            d.sockets.remove(key);
            if d.sockets.is_empty() {
                self.dsts.remove(&addr);
            }
        }
    }

    fn add_flow(&mut self, s: &TcpSocket, r: &DstRoute) {
        let key = s.key();
        let current = self.pending_obs.remove(&key).and_then(|i| member_for_ifindex(&r.members, i));
        self.flows.insert(
            key,
            Flow {
                local: s.local,
                remote: s.remote,
                mark: s.mark.filter(|m| *m != 0),
                bound_ifindex: s.bound_ifindex,
                table: r.table,
                prefix: r.prefix,
                members: r.members.clone(),
                current,
                after: None,
            },
        );
        self.set_unsettled(&key, true);
        self.unpredicted.insert(key);
    }

    /// Drops a flow (its socket stays a candidate, if it is one).
    fn forget(&mut self, key: &FlowKey) {
        self.flows.remove(key);
        self.set_unsettled(key, false);
        self.unpredicted.remove(key);
    }

    /// Records an outgoing SYN.
    pub fn observe(&mut self, obs: Observation) {
        let key = (obs.local, obs.remote);
        if let Some(f) = self.flows.get_mut(&key) {
            f.current = member_for_ifindex(&f.members, obs.ifindex);
            self.recheck(&key);
            return;
        }
        if self.pending_obs.len() >= MAX_PENDING_OBS {
            self.pending_obs.clear();
        }
        self.pending_obs.insert(key, obs.ifindex);
    }

    /// Stores the kernel's real-keys answer for a flow.
    pub fn predict(&mut self, key: &FlowKey, after: MemberId) {
        if let Some(f) = self.flows.get_mut(key) {
            f.after = Some(after);
            self.recheck(key);
        }
    }

    /// The flows to ask the kernel about now, taken out of the to-do set:
    /// up to `max` of those that need a prediction, plus up to `refresh`
    /// more (within `max`) in a rolling order, so that answers that changed
    /// without a change the model sees (neighbour reachability) are caught
    /// within a few rounds. Hand the answers to [`FlowTable::predicted`].
    pub fn take_unpredicted(&mut self, refresh: usize, max: usize) -> Vec<&Flow> {
        use std::ops::Bound;
        let mut keys = match self.unpredicted.iter().nth(max).copied() {
            // The rest waits for the next round.
            Some(first_left) => {
                let rest = self.unpredicted.split_off(&first_left);
                std::mem::replace(&mut self.unpredicted, rest)
            }
            None => std::mem::take(&mut self.unpredicted),
        };
        let refresh = refresh.min(max.saturating_sub(keys.len()));
        let from = self.refresh_after.map_or(Bound::Unbounded, Bound::Excluded);
        let (mut added, mut walked) = (0, 0);
        // On from where the previous round stopped, wrapping around once.
        for k in self.flows.range((from, Bound::Unbounded)).chain(self.flows.iter()).map(|(k, _)| *k) {
            if added >= refresh || walked >= self.flows.len() {
                break;
            }
            walked += 1;
            self.refresh_after = Some(k);
            if keys.insert(k) {
                added += 1;
            }
        }
        keys.iter().filter_map(|k| self.flows.get(k)).collect()
    }

    /// Stores the answers to a [`FlowTable::take_unpredicted`] round.
    /// Flows that needed a prediction again meanwhile (their route or keys
    /// changed while the kernel was asked) keep waiting for the next round;
    /// flows the kernel did not answer for are asked again then.
    pub fn predicted(&mut self, answers: Vec<(FlowKey, Option<MemberId>)>) {
        for (key, answer) in answers {
            if self.unpredicted.contains(&key) || !self.flows.contains_key(&key) {
                continue;
            }
            match answer {
                Some(m) => self.predict(&key, m),
                None => {
                    self.unpredicted.insert(key);
                }
            }
        }
    }

    /// Whether some flow needs a prediction.
    pub fn has_unpredicted(&self) -> bool {
        !self.unpredicted.is_empty()
    }

    /// Whether some flow waits for its first prediction.
    pub fn awaiting_prediction(&self) -> bool {
        self.maybe_armed().any(|f| f.after.is_none())
    }

    /// Applies an invalidation: every flow for which `hits` is true re-looks
    /// its route up with real keys at its next packet, so from now on it
    /// uses (or, if that moved it, died on) its predicted member. Returns the
    /// flows that were armed when it happened (the ones exposed), in key
    /// order.
    ///
    /// Like [`FlowTable::maybe_armed_where`], `hits` must judge only what
    /// all flows to one destination share (family, address, table, route,
    /// members): it is asked once per destination with unsettled flows,
    /// and settled flows are not visited (it changes nothing for them).
    pub fn invalidate(
        &mut self,
        kernel_affected: impl Fn(&Flow) -> bool,
        hits: impl Fn(&Flow) -> bool,
    ) -> Vec<FlowKey> {
        let keys: Vec<FlowKey> = self.maybe_armed_where(hits).into_iter().map(|f| f.key()).collect();
        let mut exposed = Vec::new();
        for k in keys {
            let Some(f) = self.flows.get_mut(&k) else { continue };
            if f.armed(kernel_affected(f)) {
                exposed.push(k);
            }
            if f.after.is_some() {
                f.current = f.after.clone();
                self.set_unsettled(&k, false);
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
    use crate::model::{Change, NextHop, Route, RouteAttrs, TcpSocket, TABLE_MAIN};

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
        assert_eq!(exposed.iter().map(|k| k.0.port()).collect::<Vec<_>>(), vec![40000]);
        assert!(!t.get(&k0).unwrap().armed(true));
        // Flows persist across polls with what is known about them.
        t.sync(&m, &BTreeSet::from([7]));
        assert_eq!(t.get(&k0).unwrap().current.as_ref().unwrap().ifindex, 3);
    }

    fn route(dst: &str, members: &[u32]) -> Route {
        let nexthops = members
            .iter()
            .map(|&i| NextHop {
                gateway: Some(format!("fd00:{i}::2").parse().unwrap()),
                ifindex: i,
                weight: 1,
                flags: 0,
            })
            .collect();
        Route::test_unicast(dst, nexthops)
    }

    fn keys(t: &FlowTable) -> Vec<u16> {
        t.iter().map(|f| f.local.port()).collect()
    }

    #[test]
    fn route_changes_reach_exactly_the_flows_under_them() {
        let mut m = model_with_ecmp();
        let mut ev = vec![];
        m.apply(Change::Route(route("::/0", &[2, 3])), &mut ev);
        let mut t = FlowTable::default();
        let none = BTreeSet::new();
        t.sync(&m, &none);
        assert_eq!(keys(&t), vec![7, 40000, 40001, 40002], "fd00:9::1 rides the default now");
        for f in t.take_unpredicted(0, usize::MAX).iter().map(|f| f.key()).collect::<Vec<_>>() {
            t.predict(&f, MemberId { gateway: None, ifindex: 2 });
        }
        assert!(t.take_unpredicted(0, usize::MAX).is_empty(), "nothing changed: nothing to ask");
        let k = |lp: u16| t.iter().find(|f| f.local.port() == lp).unwrap().key();
        let (k0, k2) = (k(40000), k(40002));
        // A route elsewhere changes nothing.
        m.apply(Change::Route(route("2001:db8::/32", &[2, 3])), &mut ev);
        t.sync(&m, &none);
        assert!(t.take_unpredicted(0, usize::MAX).is_empty());
        assert!(t.get(&k2).unwrap().after.is_some());
        // A more specific multipath route captures fd00:9::1: its flow is on
        // another route now, with nothing known.
        m.apply(Change::Route(route("fd00:9::/64", &[3, 4])), &mut ev);
        t.sync(&m, &none);
        let f2 = t.get(&k2).unwrap();
        assert_eq!((f2.prefix.to_string().as_str(), f2.members.len(), f2.after.is_none()), ("fd00:9::/64", 2, true));
        assert!(t.get(&k0).unwrap().after.is_some(), "the /128's flows are untouched");
        assert_eq!(t.take_unpredicted(0, usize::MAX).iter().map(|f| f.key()).collect::<Vec<_>>(), vec![k2]);
        // Single-path: no flow; multipath again: a flow again.
        m.apply(Change::Route(route("fd00:9::/64", &[3])), &mut ev);
        t.sync(&m, &none);
        assert!(t.get(&k2).is_none());
        m.apply(Change::Route(route("fd00:9::/64", &[3, 4])), &mut ev);
        t.sync(&m, &none);
        assert!(t.get(&k2).is_some());
        // A member leaves the /128: its flows start over.
        m.apply(Change::RouteGone(route("fd00:ecec:f::1/128", &[4])), &mut ev);
        t.sync(&m, &none);
        assert_eq!(t.get(&k0).unwrap().members.len(), 2);
        assert!(t.get(&k0).unwrap().after.is_none());
        // Forwarding (or a rule, address, link, sysctl) can move the
        // kernel's answers: every flow is asked again.
        let _ = t.take_unpredicted(0, usize::MAX);
        m.apply(Change::Forwarding { v6: true, scope: crate::model::ConfScope::All, value: 1 }, &mut ev);
        t.sync(&m, &none);
        assert_eq!(t.take_unpredicted(0, usize::MAX).len(), t.len());
    }

    #[test]
    fn predictions_are_asked_once_and_refreshed_in_rounds() {
        let m = model_with_ecmp();
        let mut t = FlowTable::default();
        t.sync(&m, &BTreeSet::new());
        // Rounds are capped; the rest waits for the next one.
        let mut all: Vec<FlowKey> = t.take_unpredicted(5, 2).iter().map(|f| f.key()).collect();
        assert_eq!(all.len(), 2);
        all.extend(t.take_unpredicted(0, usize::MAX).iter().map(|f| f.key()));
        assert_eq!(all.len(), 3);
        assert!(!t.has_unpredicted());
        // An answer that arrives after its flow needed asking again (here:
        // its keys changed) is stale: dropped. A missing answer is asked
        // again.
        t.unpredicted.insert(all[0]);
        let gw = |i: u32| MemberId { gateway: None, ifindex: i };
        t.predicted(vec![(all[0], Some(gw(2))), (all[1], None), (all[2], Some(gw(3)))]);
        assert!(t.get(&all[0]).unwrap().after.is_none());
        assert_eq!(t.get(&all[2]).unwrap().after, Some(gw(3)));
        let again: Vec<FlowKey> = t.take_unpredicted(0, usize::MAX).iter().map(|f| f.key()).collect();
        assert_eq!(again, vec![all[0], all[1]]);
        // Rolling refresh: one more flow per round, round-robin.
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.extend(t.take_unpredicted(1, usize::MAX).iter().map(|f| f.key()));
        }
        assert_eq!(seen, vec![all[0], all[1], all[2], all[0]]);
    }

    /// The flow table as it was before it became incremental (rebuilt on
    /// every sync, every flow visited by every invalidation): the reference
    /// the incremental one must agree with.
    #[derive(Default)]
    struct Reference {
        flows: BTreeMap<FlowKey, Flow>,
        pending_obs: HashMap<FlowKey, u32>,
    }

    impl Reference {
        fn sync(&mut self, model: &Model, listening: &BTreeSet<u16>) {
            let mut fresh = BTreeMap::new();
            for s in model.sockets.values() {
                if listening.contains(&s.local.port()) {
                    continue;
                }
                let Some(r) = model.lookup(TABLE_MAIN, s.remote.ip()).filter(|r| r.members.len() >= 2) else {
                    continue;
                };
                let f = Flow {
                    local: s.local,
                    remote: s.remote,
                    mark: s.mark.filter(|m| *m != 0),
                    bound_ifindex: s.bound_ifindex,
                    table: TABLE_MAIN,
                    prefix: r.route.dst,
                    members: r.members,
                    current: None,
                    after: None,
                };
                fresh.insert(f.key(), f);
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

        fn observe(&mut self, obs: Observation) {
            let key = (obs.local, obs.remote);
            if let Some(f) = self.flows.get_mut(&key) {
                f.current = member_for_ifindex(&f.members, obs.ifindex);
                return;
            }
            self.pending_obs.insert(key, obs.ifindex);
        }

        fn invalidate(&mut self, affected: bool, hits: impl Fn(&Flow) -> bool) -> Vec<FlowKey> {
            let mut exposed = Vec::new();
            for f in self.flows.values_mut().filter(|f| hits(f)) {
                if f.armed(affected) {
                    exposed.push(f.key());
                }
                if f.after.is_some() {
                    f.current = f.after.clone();
                }
            }
            exposed
        }
    }

    #[test]
    fn incremental_table_agrees_with_a_full_rebuild() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let dsts = ["fd00:ecec:f::1", "fd00:ecec:f::2", "fd00:ecec:e::1", "2001:db8::1", "2001:db8:1::1", "fd00:9::1"];
        let routes = [
            ("::/0", vec![2, 3, 4]),
            ("::/0", vec![2, 3]),
            ("fd00:ecec::/32", vec![2, 3, 4]),
            ("fd00:ecec:f::/120", vec![3, 4]),
            ("fd00:ecec:f::1/128", vec![2, 3, 4]),
            ("fd00:ecec:f::1/128", vec![2]),
            ("2001:db8::/32", vec![2, 4]),
            ("2001:db8:1::/48", vec![3]),
        ];
        let mut m = Model::default();
        let mut ev = vec![];
        let mut sockets: BTreeMap<FlowKey, TcpSocket> = BTreeMap::new();
        let mut listening: BTreeSet<u16> = BTreeSet::new();
        let (mut t, mut r) = (FlowTable::default(), Reference::default());
        let mut polls = crate::model::SocketPolls::default();
        let mut checked = 0;
        for step in 0..6_000 {
            match rnd(12) {
                0 | 1 => {
                    // Now and then a burst (more than the changelog holds).
                    for _ in 0..if rnd(20) == 0 { 40 } else { 1 } {
                        let s = TcpSocket {
                            local: format!("[fd00:1::1]:{}", 40000 + rnd(64)).parse().unwrap(),
                            remote: format!("[{}]:{}", dsts[rnd(dsts.len() as u64) as usize], 7 + rnd(2))
                                .parse()
                                .unwrap(),
                            bound_ifindex: 0,
                            mark: Some(rnd(2) as u32),
                            inode: 1,
                            uid: 0,
                        };
                        sockets.insert(s.key(), s);
                    }
                }
                2 => {
                    for _ in 0..if rnd(20) == 0 { 40 } else { 1 } {
                        let k = sockets.keys().nth(rnd(sockets.len() as u64 + 1) as usize).copied();
                        if let Some(k) = k {
                            sockets.remove(&k);
                        }
                    }
                }
                3 | 4 => {
                    for _ in 0..if rnd(20) == 0 { 20 } else { 1 } {
                        let (dst, members) = &routes[rnd(routes.len() as u64) as usize];
                        let c = match rnd(3) {
                            0 => Change::RouteGone(route(dst, members)),
                            1 => Change::RouteGone(route(dst, &members[..1])),
                            _ => Change::Route(route(dst, members)),
                        };
                        m.apply(c, &mut ev);
                    }
                }
                5 if rnd(5) == 0 => {
                    let port = 40000 + rnd(64) as u16;
                    if !listening.remove(&port) {
                        listening.insert(port);
                    }
                }
                6 | 7 => {
                    let k = if rnd(4) == 0 {
                        sockets.keys().nth(rnd(sockets.len() as u64 + 1) as usize).copied()
                    } else {
                        t.iter().nth(rnd(t.len() as u64 + 1) as usize).map(|f| f.key())
                    };
                    if let Some((local, remote)) = k {
                        // Mostly the member predictions name too: many settle.
                        let obs = Observation { local, remote, ifindex: 2 + rnd(8).saturating_sub(5) as u32 };
                        t.observe(obs.clone());
                        r.observe(obs);
                    }
                }
                8 | 9 => {
                    let keys: Vec<FlowKey> =
                        t.take_unpredicted(rnd(3) as usize, 1 + rnd(40) as usize).iter().map(|f| f.key()).collect();
                    let answers: Vec<_> = keys
                        .iter()
                        .map(|k| {
                            let m = MemberId { gateway: None, ifindex: 2 + rnd(8).saturating_sub(5) as u32 };
                            (*k, (rnd(8) != 0).then_some(m))
                        })
                        .collect();
                    for (k, a) in &answers {
                        if let (Some(a), Some(f)) = (a, r.flows.get_mut(k)) {
                            f.after = Some(a.clone());
                        }
                    }
                    t.predicted(answers);
                }
                10 => {
                    // What flows to one destination share: its address and route.
                    let (affected, parity) = (rnd(2) == 0, rnd(4));
                    let hits = |f: &Flow| match parity {
                        0 | 1 => f.remote.ip().to_string().len() as u64 % 2 == parity,
                        2 => f.prefix.prefix() >= 64,
                        _ => true,
                    };
                    assert_eq!(t.invalidate(|_| affected, hits), r.invalidate(affected, hits), "step {step}");
                }
                _ => {
                    // The daemon's way (deltas, debounced) or the whole set.
                    if rnd(2) == 0 {
                        if let Some(c) = polls.delta(sockets.values().cloned().collect()) {
                            m.apply(c, &mut ev);
                        }
                    } else {
                        m.apply(Change::Sockets(sockets.values().cloned().collect()), &mut ev);
                        polls = crate::model::SocketPolls::default();
                        polls.delta(m.sockets.values().cloned().collect());
                    }
                    t.sync(&m, &listening);
                    r.sync(&m, &listening);
                    let a: Vec<_> = t.iter().map(|f| format!("{f:?}")).collect();
                    let b: Vec<_> = r.flows.values().map(|f| format!("{f:?}")).collect();
                    assert_eq!(a, b, "step {step}");
                    let unsettled: Vec<FlowKey> = t.maybe_armed().map(|f| f.key()).collect();
                    let want: Vec<FlowKey> = r.flows.values().filter(|f| !settled(f)).map(|f| f.key()).collect();
                    assert_eq!(unsettled, want, "step {step}");
                    for (addr, d) in &t.dsts {
                        let n = d.sockets.iter().filter(|k| t.unsettled.contains(k)).count();
                        assert_eq!((d.unsettled, d.sockets.is_empty()), (n, false), "{addr} step {step}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 300);
    }
}
