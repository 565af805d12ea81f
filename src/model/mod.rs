//! The live model of the router's kernel state.
//!
//! Pure data: no tokio, no netlink, no clock. The core task owns the one
//! [`Model`] and feeds it [`Change`]s produced by the kernel edge; every
//! `apply` reports what it did so the core can publish events.

pub mod flows;
pub mod objects;
pub mod peers;
pub mod routes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

pub use objects::*;
pub use routes::{NextHop, Route, RouteAttrs, RouteOp, RouteTables, TABLE_LOCAL, TABLE_MAIN};

/// One change to the model, in domain terms.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A link appeared or changed (AF_UNSPEC RTM_NEWLINK).
    Link(Link),
    /// A link went away.
    LinkGone(u32),
    /// Bridge-port state of a link from an AF_BRIDGE link message. `None`
    /// means the port left its bridge.
    BridgePort(u32, Option<BridgePort>),
    /// An address appeared or changed.
    Address(Address),
    /// An address went away.
    AddressGone(AddressKey),
    /// An IPv6 anycast address was joined.
    Anycast(Anycast),
    /// An IPv6 anycast address was left.
    AnycastGone(Anycast),
    /// A route appeared or was replaced.
    Route(Route),
    /// A route (or one IPv6 multipath member) went away.
    RouteGone(Route),
    /// A nexthop object appeared or changed.
    Nexthop(Nexthop),
    /// A nexthop object went away.
    NexthopGone(u32),
    /// A rule appeared.
    Rule(Rule),
    /// A rule went away.
    RuleGone(Rule),
    /// A netconf forwarding value (IPv4 when `v6` is false).
    Forwarding {
        /// IPv6 (true) or IPv4.
        v6: bool,
        /// Which conf entry.
        scope: ConfScope,
        /// New value.
        value: u32,
    },
    /// A fresh read of the sysctls from /proc/sys.
    Sysctls(Sysctls),
    /// A fresh poll of the established TCP sockets (the whole set).
    Sockets(Vec<TcpSocket>),
    /// What changed in the established TCP sockets since the previous
    /// change of them (see [`SocketPolls`]).
    SocketDelta {
        /// New sockets, or sockets whose attributes changed.
        upserts: Vec<TcpSocket>,
        /// Sockets that closed.
        gone: Vec<(SocketAddr, SocketAddr)>,
    },
}

/// Kind of model object an [`Applied`] refers to.
pub type Kind = &'static str;

/// What an applied change did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Object kind: link, address, anycast, route, nexthop, rule, sysctl, socket.
    pub kind: Kind,
    /// add, update or remove.
    pub op: &'static str,
    /// Human-readable identity.
    pub key: String,
}

/// The model of one network namespace.
#[derive(Default)]
pub struct Model {
    /// Links by ifindex.
    pub links: BTreeMap<u32, Link>,
    /// Addresses by identity.
    pub addresses: BTreeMap<AddressKey, Address>,
    /// Joined IPv6 anycast addresses.
    pub anycast: BTreeSet<Anycast>,
    /// Routing tables.
    pub routes: RouteTables,
    /// Nexthop objects by id.
    pub nexthops: BTreeMap<u32, Nexthop>,
    /// Policy rules.
    pub rules: BTreeSet<Rule>,
    /// Sysctls that matter.
    pub sysctls: Sysctls,
    /// Established TCP sockets by 4-tuple.
    pub sockets: HashMap<(SocketAddr, SocketAddr), TcpSocket>,
    /// Recent changes that matter to the flow inventory, so that
    /// [`flows::FlowTable::sync`] can work on what changed only.
    pub changelog: ChangeLog,
}

/// Most route changes a [`ChangeLog`] keeps; a reader that falls further
/// behind starts over (resolves every destination again).
const CHANGELOG_ROUTES: usize = if cfg!(test) { 16 } else { 4096 };

/// Most socket changes a [`ChangeLog`] keeps; a reader that falls further
/// behind walks every socket.
const CHANGELOG_SOCKETS: usize = if cfg!(test) { 32 } else { 16_384 };

/// Changes that move where a destination resolves (route changes, by
/// prefix), what the kernel answers for a flow (rules, addresses, links,
/// nexthop objects, sysctls) and which sockets exist, recorded by
/// [`Model::apply`] for readers that keep derived state, so that they need
/// not walk everything on every poll.
#[derive(Debug)]
pub struct ChangeLog {
    /// Identity of the model: a fresh one (a re-dump) is another.
    id: u64,
    /// Route changes.
    routes: Log<(u32, ipnetwork::IpNetwork)>,
    /// Bumped by every change that can change the kernel's route lookup
    /// answer for flows whose route stays the same.
    kernel: u64,
    /// Sockets added, changed or removed.
    sockets: Log<(SocketAddr, SocketAddr)>,
}

/// A bounded log of changed keys.
#[derive(Debug)]
struct Log<T> {
    /// Sequence number of the latest entry.
    seq: u64,
    /// The latest entries: (seq, key).
    recent: std::collections::VecDeque<(u64, T)>,
    /// Entries up to this sequence number are not (all) in `recent`:
    /// dropped for space, or not tied to a key (for routes: nexthop
    /// objects, routes a link took with it).
    horizon: u64,
    cap: usize,
}

impl<T: Copy> Log<T> {
    fn new(cap: usize) -> Self {
        Log { seq: 0, recent: Default::default(), horizon: 0, cap }
    }

    fn push(&mut self, key: T) {
        self.seq += 1;
        if self.recent.len() >= self.cap {
            if let Some((s, _)) = self.recent.pop_front() {
                self.horizon = s;
            }
        }
        self.recent.push_back((self.seq, key));
    }

    fn everything(&mut self) {
        self.seq += 1;
        self.horizon = self.seq;
        self.recent.clear();
    }

    fn since(&self, seq: u64) -> Since<T> {
        if seq == self.seq {
            Since::Nothing
        } else if seq < self.horizon {
            Since::Everything
        } else {
            let newer = self.recent.iter().rev().take_while(|(s, _)| *s > seq);
            Since::These(newer.map(|(_, k)| *k).collect())
        }
    }
}

static CHANGELOG_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog {
            id: CHANGELOG_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            routes: Log::new(CHANGELOG_ROUTES),
            kernel: 0,
            sockets: Log::new(CHANGELOG_SOCKETS),
        }
    }
}

/// Where a reader of a [`ChangeLog`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeLogMark {
    id: u64,
    routes: u64,
    kernel: u64,
    sockets: u64,
}

/// What changed since a [`ChangeLogMark`].
#[derive(Debug, PartialEq, Eq)]
pub enum Since<T> {
    /// Nothing.
    Nothing,
    /// These keys changed (newest first, maybe more than once each).
    These(Vec<T>),
    /// Too much or unknown: anything may have changed.
    Everything,
}

enum Noted {
    None,
    Route(u32, ipnetwork::IpNetwork),
    /// Routes changed in ways not tied to one prefix; lookups may differ too.
    RoutesAndKernel,
    Kernel,
}

impl ChangeLog {
    /// Where the changelog stands now.
    pub fn mark(&self) -> ChangeLogMark {
        ChangeLogMark { id: self.id, routes: self.routes.seq, kernel: self.kernel, sockets: self.sockets.seq }
    }

    /// Route changes (table, prefix) after `since` (`None`: a reader that
    /// has seen nothing).
    pub fn routes_since(&self, since: Option<ChangeLogMark>) -> Since<(u32, ipnetwork::IpNetwork)> {
        match since.filter(|m| m.id == self.id) {
            Some(m) => self.routes.since(m.routes),
            None => Since::Everything,
        }
    }

    /// Sockets added, changed or removed after `since`.
    pub fn sockets_since(&self, since: Option<ChangeLogMark>) -> Since<(SocketAddr, SocketAddr)> {
        match since.filter(|m| m.id == self.id) {
            Some(m) => self.sockets.since(m.sockets),
            None => Since::Everything,
        }
    }

    /// Whether something other than a route changed after `since` that can
    /// change the kernel's lookup answers (a fresh model counts as changed).
    pub fn kernel_changed_since(&self, since: Option<ChangeLogMark>) -> bool {
        since.is_none_or(|m| m.id != self.id || m.kernel != self.kernel)
    }

    fn note(&mut self, what: Noted) {
        match what {
            Noted::None => {}
            Noted::Route(table, dst) => self.routes.push((table, dst)),
            Noted::RoutesAndKernel => {
                self.routes.everything();
                self.kernel += 1;
            }
            Noted::Kernel => self.kernel += 1,
        }
    }
}

impl Noted {
    fn of(c: &Change) -> Noted {
        match c {
            Change::Route(r) | Change::RouteGone(r) => Noted::Route(r.table, r.dst),
            // A link going down or away takes routes with it; nexthop
            // objects change the members of every route using them.
            Change::Link(_) | Change::LinkGone(_) | Change::Nexthop(_) | Change::NexthopGone(_) => {
                Noted::RoutesAndKernel
            }
            // Rules pick tables, addresses the source, forwarding whether
            // the lookup avoids unreachable neighbours, sysctls the hash.
            Change::Rule(_)
            | Change::RuleGone(_)
            | Change::Address(_)
            | Change::AddressGone(_)
            | Change::Forwarding { .. }
            | Change::Sysctls(_) => Noted::Kernel,
            // Sockets are noted one by one as they are applied.
            Change::BridgePort(..)
            | Change::Anycast(_)
            | Change::AnycastGone(_)
            | Change::Sockets(_)
            | Change::SocketDelta { .. } => Noted::None,
        }
    }
}

/// Turns full socket polls into [`Change::SocketDelta`]s, off the core
/// task: it keeps its own copy of the socket set, so that the core applies
/// only what changed.
///
/// A sock_diag dump walks the kernel's global TCP hash bucket by bucket;
/// sockets created or closed meanwhile (in any namespace) can make it skip
/// one of ours. A socket therefore counts as closed only when two
/// consecutive polls miss it, so a skipped flow keeps what is known about
/// it (its observed member above all).
#[derive(Default, Debug)]
pub struct SocketPolls {
    known: HashMap<(SocketAddr, SocketAddr), TcpSocket>,
    missed_last: std::collections::HashSet<(SocketAddr, SocketAddr)>,
}

impl SocketPolls {
    /// What a fresh poll changes (`None` when nothing did).
    pub fn delta(&mut self, polled: Vec<TcpSocket>) -> Option<Change> {
        let mut seen = std::collections::HashSet::with_capacity(polled.len());
        let mut upserts = Vec::new();
        for s in polled {
            let k = s.key();
            seen.insert(k);
            if self.known.get(&k) != Some(&s) {
                self.known.insert(k, s.clone());
                upserts.push(s);
            }
        }
        let mut missed_now = std::collections::HashSet::new();
        let mut gone = Vec::new();
        for k in self.known.keys().filter(|k| !seen.contains(*k)) {
            if self.missed_last.contains(k) {
                gone.push(*k);
            } else {
                missed_now.insert(*k);
            }
        }
        for k in &gone {
            self.known.remove(k);
        }
        self.missed_last = missed_now;
        (!upserts.is_empty() || !gone.is_empty()).then_some(Change::SocketDelta { upserts, gone })
    }
}

/// Result of a longest-prefix-match query with nexthop objects resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resolved {
    /// The matched route.
    pub route: Route,
    /// Its members: the route's own nexthops, or the members of its nexthop
    /// object (a group's members each resolved to gateway and interface).
    pub members: Vec<ResolvedMember>,
}

/// One resolved member of a route.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResolvedMember {
    /// Gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface index.
    pub ifindex: u32,
    /// Weight.
    pub weight: u16,
    /// Nexthop object id of the member when the route uses a group.
    pub nhid: Option<u32>,
}

fn applied(kind: Kind, op: &'static str, key: String) -> Option<Applied> {
    Some(Applied { kind, op, key })
}

impl Change {
    /// A [`Change::SocketDelta`] in pieces of at most `max` sockets each;
    /// any other change as it is. Applied in order, the pieces do what the
    /// whole does.
    pub fn split_sockets(self, max: usize) -> Vec<Change> {
        let max = max.max(1);
        match self {
            Change::SocketDelta { upserts, gone } if upserts.len() + gone.len() > max => {
                let mut out: Vec<Change> = upserts
                    .chunks(max)
                    .map(|c| Change::SocketDelta { upserts: c.to_vec(), gone: Vec::new() })
                    .collect();
                out.extend(gone.chunks(max).map(|c| Change::SocketDelta { upserts: Vec::new(), gone: c.to_vec() }));
                out
            }
            other => vec![other],
        }
    }
}

impl Model {
    /// Applies one change and reports what it did (`None` when nothing
    /// changed). `events` receives one entry per changed object.
    pub fn apply(&mut self, change: Change, events: &mut Vec<Applied>) {
        let before = events.len();
        let noted = Noted::of(&change);
        self.apply_change(change, events);
        if events.len() > before {
            self.changelog.note(noted);
        }
    }

    fn apply_change(&mut self, change: Change, events: &mut Vec<Applied>) {
        match change {
            Change::Link(mut link) => {
                let went_down = self.links.get(&link.ifindex).is_some_and(|o| o.is_up()) && !link.is_up();
                // AF_BRIDGE messages carry the bridge-port state separately;
                // an AF_UNSPEC link message without slave data must not erase
                // what they told us.
                let key = format!("link {} ({})", link.name, link.ifindex);
                let old = self.links.get(&link.ifindex);
                if link.bridge_port.is_none() && link.master.is_some() {
                    if let Some(o) = old {
                        link.bridge_port = o.bridge_port.clone();
                    }
                }
                let op = match old {
                    None => "add",
                    Some(o) if *o == link => return,
                    Some(o) if same_link_but_counters(o, &link) => {
                        self.links.insert(link.ifindex, link);
                        return;
                    }
                    Some(_) => "update",
                };
                let ifindex = link.ifindex;
                self.links.insert(ifindex, link);
                events.extend(applied("link", op, key));
                if went_down {
                    self.flush_link(ifindex, false, events);
                }
            }
            Change::LinkGone(ifindex) => {
                self.flush_link(ifindex, true, events);
                if let Some(l) = self.links.remove(&ifindex) {
                    // The kernel removes a link's addresses, anycast, routes
                    // and per-interface conf with it, and sends notifications
                    // for addresses and routes; conf entries it drops
                    // silently, so forget them here.
                    self.sysctls.forwarding_v4.per_if.remove(&ifindex);
                    self.sysctls.forwarding_v6.per_if.remove(&ifindex);
                    self.sysctls.enhanced_dad.per_if.remove(&ifindex);
                    self.anycast.retain(|a| a.ifindex != ifindex);
                    events.extend(applied("link", "remove", format!("link {} ({})", l.name, ifindex)));
                }
            }
            Change::BridgePort(ifindex, port) => {
                if let Some(l) = self.links.get_mut(&ifindex) {
                    if l.bridge_port != port {
                        l.bridge_port = port;
                        let key = format!("link {} ({}) bridge-port", l.name, ifindex);
                        events.extend(applied("link", "update", key));
                    }
                }
            }
            Change::Address(a) => {
                let key = format!("address {}/{} dev {}", a.key.address, a.key.prefix_len, a.key.ifindex);
                let op = match self.addresses.get(&a.key) {
                    None => "add",
                    Some(o) if *o == a => return,
                    Some(_) => "update",
                };
                self.addresses.insert(a.key, a);
                events.extend(applied("address", op, key));
            }
            Change::AddressGone(k) => {
                if self.addresses.remove(&k).is_some() {
                    let key = format!("address {}/{} dev {}", k.address, k.prefix_len, k.ifindex);
                    events.extend(applied("address", "remove", key));
                }
            }
            Change::Anycast(a) => {
                if self.anycast.insert(a) {
                    events.extend(applied("anycast", "add", format!("anycast {} dev {}", a.address, a.ifindex)));
                }
            }
            Change::AnycastGone(a) => {
                if self.anycast.remove(&a) {
                    events.extend(applied("anycast", "remove", format!("anycast {} dev {}", a.address, a.ifindex)));
                }
            }
            Change::Route(r) => {
                let key = r.key_string();
                match self.routes.upsert(r) {
                    RouteOp::Added => events.extend(applied("route", "add", key)),
                    RouteOp::Updated => events.extend(applied("route", "update", key)),
                    _ => {}
                }
            }
            Change::RouteGone(r) => {
                let key = r.key_string();
                match self.routes.remove(&r) {
                    RouteOp::Removed => events.extend(applied("route", "remove", key)),
                    RouteOp::MemberRemoved => events.extend(applied("route", "update", key)),
                    _ => {}
                }
            }
            Change::Nexthop(n) => {
                let op = match self.nexthops.get(&n.id) {
                    None => "add",
                    Some(o) if *o == n => return,
                    Some(_) => "update",
                };
                let key = format!("nexthop id {}", n.id);
                self.nexthops.insert(n.id, n);
                events.extend(applied("nexthop", op, key));
            }
            Change::NexthopGone(id) => {
                if self.nexthops.remove(&id).is_some() {
                    events.extend(applied("nexthop", "remove", format!("nexthop id {id}")));
                }
            }
            Change::Rule(r) => {
                let key = format!("rule v{} pref {} table {}", r.family, r.priority, r.table);
                if self.rules.insert(r) {
                    events.extend(applied("rule", "add", key));
                }
            }
            Change::RuleGone(r) => {
                let key = format!("rule v{} pref {} table {}", r.family, r.priority, r.table);
                if self.rules.remove(&r) {
                    events.extend(applied("rule", "remove", key));
                }
            }
            Change::Forwarding { v6, scope, value } => {
                let s = if v6 { &mut self.sysctls.forwarding_v6 } else { &mut self.sysctls.forwarding_v4 };
                if s.get(scope) != Some(value) {
                    s.set(scope, value);
                    let name = sysctl_name(v6, "forwarding", scope, &self.links);
                    events.extend(applied("sysctl", "update", format!("{name} = {value}")));
                }
            }
            Change::Sysctls(mut fresh) => {
                // Forwarding arrives through netconf, in order with every
                // other notification; a /proc read may have been taken
                // before the latest of them. So a read only fills in
                // forwarding values netconf has not reported.
                for (have, read) in [
                    (&self.sysctls.forwarding_v4, &mut fresh.forwarding_v4),
                    (&self.sysctls.forwarding_v6, &mut fresh.forwarding_v6),
                ] {
                    read.all = have.all.or(read.all);
                    read.default = have.default.or(read.default);
                    for (i, v) in &have.per_if {
                        read.per_if.insert(*i, *v);
                    }
                }
                if fresh != self.sysctls {
                    // Names of interfaces whose values changed, for the event.
                    let before = self.sysctl_map();
                    std::mem::swap(&mut self.sysctls, &mut fresh);
                    let after = self.sysctl_map();
                    for (k, v) in &after {
                        if before.get(k) != Some(v) {
                            events.extend(applied("sysctl", "update", format!("{k} = {v}")));
                        }
                    }
                }
            }
            Change::Sockets(list) => {
                let mut fresh: HashMap<_, _> = list.into_iter().map(|s| (s.key(), s)).collect();
                for (k, _) in self.sockets.iter().filter(|(k, _)| !fresh.contains_key(*k)) {
                    events.extend(applied("socket", "remove", format!("tcp {} -> {}", k.0, k.1)));
                    self.changelog.sockets.push(*k);
                }
                for (k, s) in fresh.iter() {
                    match self.sockets.get(k) {
                        None => events.extend(applied("socket", "add", format!("tcp {} -> {}", k.0, k.1))),
                        Some(o) if o != s => {
                            events.extend(applied("socket", "update", format!("tcp {} -> {}", k.0, k.1)))
                        }
                        _ => continue,
                    }
                    self.changelog.sockets.push(*k);
                }
                std::mem::swap(&mut self.sockets, &mut fresh);
            }
            Change::SocketDelta { upserts, gone } => {
                for s in upserts {
                    let k = s.key();
                    match self.sockets.insert(k, s) {
                        None => events.extend(applied("socket", "add", format!("tcp {} -> {}", k.0, k.1))),
                        Some(o) if self.sockets.get(&k) != Some(&o) => {
                            events.extend(applied("socket", "update", format!("tcp {} -> {}", k.0, k.1)))
                        }
                        _ => continue,
                    }
                    self.changelog.sockets.push(k);
                }
                for k in gone {
                    if self.sockets.remove(&k).is_some() {
                        events.extend(applied("socket", "remove", format!("tcp {} -> {}", k.0, k.1)));
                        self.changelog.sockets.push(k);
                    }
                }
            }
        }
    }

    /// Applies what the kernel removes *without notifications* when a link
    /// goes administratively down (`unregister == false`) or away:
    /// - nexthop objects bound to it (`nexthop_flush_dev`), their entries in
    ///   groups, groups left empty, and routes using any removed object;
    /// - IPv4 routes through it (`fib_sync_down_dev` + `fib_flush`): on
    ///   unregister every route with a member on the link, on down only
    ///   routes whose members are all on it (multipath survivors keep their
    ///   other members; the dead member's flag is not modelled).
    ///
    /// IPv6 routes are left alone: the kernel notifies their removal.
    fn flush_link(&mut self, ifindex: u32, unregister: bool, events: &mut Vec<Applied>) {
        let mut dead: BTreeSet<u32> = self.nexthops.values().filter(|n| n.oif == Some(ifindex)).map(|n| n.id).collect();
        if !dead.is_empty() {
            let mut emptied = Vec::new();
            for n in self.nexthops.values_mut().filter(|n| !n.group.is_empty()) {
                let before = n.group.len();
                n.group.retain(|m| !dead.contains(&m.id));
                if n.group.is_empty() {
                    emptied.push(n.id);
                } else if n.group.len() != before {
                    events.extend(applied("nexthop", "update", format!("nexthop id {}", n.id)));
                }
            }
            dead.extend(emptied);
            for id in &dead {
                if self.nexthops.remove(id).is_some() {
                    events.extend(applied("nexthop", "remove", format!("nexthop id {id}")));
                }
            }
        }
        let doomed: Vec<Route> = self
            .routes
            .iter()
            .filter(|r| match r.attrs.nhid {
                Some(id) => dead.contains(&id),
                None if r.dst.is_ipv4() && !r.attrs.nexthops.is_empty() => {
                    let on = |n: &NextHop| n.ifindex == ifindex;
                    if unregister {
                        r.attrs.nexthops.iter().any(on)
                    } else {
                        r.attrs.nexthops.iter().all(on)
                    }
                }
                None => false,
            })
            .collect();
        for r in doomed {
            let key = r.key_string();
            if self.routes.remove(&r) == RouteOp::Removed {
                events.extend(applied("route", "remove", key));
            }
        }
    }

    /// Interface name for an ifindex, or the index as text.
    pub fn ifname(&self, ifindex: u32) -> String {
        self.links.get(&ifindex).map(|l| l.name.clone()).unwrap_or_else(|| format!("if{ifindex}"))
    }

    /// Longest-prefix match in `table`, with nexthop objects resolved to
    /// their members.
    pub fn lookup(&self, table: u32, addr: IpAddr) -> Option<Resolved> {
        let route = self.routes.lookup(table, addr)?;
        let members = self.members_of(&route);
        Some(Resolved { route, members })
    }

    /// The members traffic matching `route` is spread over.
    pub fn members_of(&self, route: &Route) -> Vec<ResolvedMember> {
        if let Some(id) = route.attrs.nhid {
            if let Some(nh) = self.nexthops.get(&id) {
                if nh.group.is_empty() {
                    return vec![ResolvedMember {
                        gateway: nh.gateway,
                        ifindex: nh.oif.unwrap_or(0),
                        weight: 1,
                        nhid: Some(id),
                    }];
                }
                return nh
                    .group
                    .iter()
                    .map(|m| {
                        let single = self.nexthops.get(&m.id);
                        ResolvedMember {
                            gateway: single.and_then(|s| s.gateway),
                            ifindex: single.and_then(|s| s.oif).unwrap_or(0),
                            weight: m.weight,
                            nhid: Some(m.id),
                        }
                    })
                    .collect();
            }
        }
        route
            .attrs
            .nexthops
            .iter()
            .map(|n| ResolvedMember { gateway: n.gateway, ifindex: n.ifindex, weight: n.weight, nhid: None })
            .collect()
    }

    /// Object counts per kind, as reported by `GetStatus`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut c = BTreeMap::new();
        c.insert("links".into(), self.links.len() as u64);
        c.insert("addresses".into(), self.addresses.len() as u64);
        c.insert("anycast".into(), self.anycast.len() as u64);
        c.insert("routes_v4".into(), self.routes.count_v4() as u64);
        c.insert("routes_v6".into(), self.routes.count_v6() as u64);
        c.insert("nexthops".into(), self.nexthops.len() as u64);
        c.insert("rules_v4".into(), self.rules.iter().filter(|r| r.family == 4).count() as u64);
        c.insert("rules_v6".into(), self.rules.iter().filter(|r| r.family == 6).count() as u64);
        c.insert("sockets".into(), self.sockets.len() as u64);
        c.insert(
            "hairpin_ports".into(),
            self.links.values().filter(|l| l.bridge_port.as_ref().is_some_and(|b| b.hairpin)).count() as u64,
        );
        c
    }

    /// The sysctls as `sysctl -a` names to values, interfaces by name.
    pub fn sysctl_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let s = &self.sysctls;
        for (v6, what, scoped) in [
            (false, "forwarding", &s.forwarding_v4),
            (true, "forwarding", &s.forwarding_v6),
            (true, "enhanced_dad", &s.enhanced_dad),
        ] {
            for (scope, v) in [(ConfScope::All, scoped.all), (ConfScope::Default, scoped.default)] {
                if let Some(v) = v {
                    m.insert(sysctl_name(v6, what, scope, &self.links), v.to_string());
                }
            }
            for (&i, v) in &scoped.per_if {
                m.insert(sysctl_name(v6, what, ConfScope::Iface(i), &self.links), v.to_string());
            }
        }
        for (name, v) in [
            ("net.ipv4.fib_multipath_hash_policy", s.hash_policy_v4),
            ("net.ipv6.fib_multipath_hash_policy", s.hash_policy_v6),
            ("net.ipv4.fib_multipath_hash_fields", s.hash_fields_v4),
            ("net.ipv6.fib_multipath_hash_fields", s.hash_fields_v6),
            ("net.ipv4.nexthop_compat_mode", s.nexthop_compat_mode),
        ] {
            if let Some(v) = v {
                let shown = if name.ends_with("fields") { format!("0x{v:04x}") } else { v.to_string() };
                m.insert(name.to_string(), shown);
            }
        }
        m
    }

    /// An order-independent digest of the kernel-derived contents (links
    /// without their counters, addresses, anycast, routes, nexthops, rules
    /// and forwarding). Sockets and polled sysctls are left out: they are
    /// not part of a netlink dump. Two models built from the same kernel
    /// state, in any order, have the same digest.
    pub fn digest(&self) -> String {
        let mut sum: u64 = 0;
        let mut add = |h: u64| sum = sum.wrapping_add(h);
        for l in self.links.values() {
            let mut l = l.clone();
            l.tx_packets = 0;
            l.tx_carrier_errors = 0;
            add(hash_of(&("link", serde_json::to_string(&l).unwrap_or_default())));
        }
        for a in self.addresses.values() {
            add(hash_of(&("addr", a.key, a.flags, a.scope)));
        }
        for a in &self.anycast {
            add(hash_of(&("anycast", a)));
        }
        self.routes.for_each_raw(|table, dst, metric, tos, kind, proto, scope, attrs| {
            add(hash_of(&("route", table, dst, metric, tos, kind, proto, scope, attrs)));
        });
        for n in self.nexthops.values() {
            add(hash_of(&("nh", serde_json::to_string(n).unwrap_or_default())));
        }
        for r in &self.rules {
            add(hash_of(&("rule", r)));
        }
        for (v6, s) in [(false, &self.sysctls.forwarding_v4), (true, &self.sysctls.forwarding_v6)] {
            add(hash_of(&("fwd", v6, s.all, s.default, &s.per_if)));
        }
        format!("{sum:016x}")
    }
}

fn same_link_but_counters(a: &Link, b: &Link) -> bool {
    let mut a = a.clone();
    a.tx_packets = b.tx_packets;
    a.tx_carrier_errors = b.tx_carrier_errors;
    a == *b
}

fn hash_of<T: Hash>(t: &T) -> u64 {
    // DefaultHasher::new() uses fixed keys, so digests agree between the
    // daemon and a one-shot dump run by the same binary.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// `net.ipv{4,6}.conf.{all,default,IFNAME}.{what}`.
pub fn sysctl_name(v6: bool, what: &str, scope: ConfScope, links: &BTreeMap<u32, Link>) -> String {
    let fam = if v6 { "ipv6" } else { "ipv4" };
    let s = match scope {
        ConfScope::All => "all".to_string(),
        ConfScope::Default => "default".to_string(),
        ConfScope::Iface(i) => links.get(&i).map(|l| l.name.clone()).unwrap_or_else(|| format!("if{i}")),
    };
    format!("net.{fam}.conf.{s}.{what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind: Some("veth".into()),
            master: None,
            flags: IFF_UP,
            mtu: 1500,
            bridge_port: None,
            tunnel: None,
            tx_packets: 0,
            tx_carrier_errors: 0,
        }
    }

    #[test]
    fn nexthop_group_members_resolve_through_objects() {
        let mut m = Model::default();
        let mut ev = vec![];
        for (id, gw, oif) in [(1, "fe80::1", 2), (2, "fe80::2", 3)] {
            m.apply(
                Change::Nexthop(Nexthop {
                    id,
                    family: 10,
                    protocol: 4,
                    oif: Some(oif),
                    gateway: Some(gw.parse().unwrap()),
                    blackhole: false,
                    group: vec![],
                    resilient: None,
                }),
                &mut ev,
            );
        }
        m.apply(
            Change::Nexthop(Nexthop {
                id: 10,
                family: 0,
                protocol: 4,
                oif: None,
                gateway: None,
                blackhole: false,
                group: vec![GroupMember { id: 1, weight: 1 }, GroupMember { id: 2, weight: 3 }],
                resilient: None,
            }),
            &mut ev,
        );
        m.apply(
            Change::Route(Route {
                table: TABLE_MAIN,
                dst: "fd00::/64".parse().unwrap(),
                tos: 0,
                metric: 1024,
                kind: 1,
                protocol: 4,
                scope: 0,
                attrs: RouteAttrs { nhid: Some(10), ..Default::default() },
            }),
            &mut ev,
        );
        let r = m.lookup(TABLE_MAIN, "fd00::5".parse().unwrap()).unwrap();
        assert_eq!(r.members.len(), 2);
        assert_eq!(r.members[1].gateway, Some("fe80::2".parse().unwrap()));
        assert_eq!(r.members[1].ifindex, 3);
        assert_eq!(r.members[1].weight, 3);
        assert_eq!(ev.len(), 4);
        assert!(ev.iter().all(|e| e.op == "add"));
    }

    #[test]
    fn bridge_port_state_survives_plain_link_updates_and_link_removal_cleans_up() {
        let mut m = Model::default();
        let mut ev = vec![];
        let mut l = link(5, "vnet0");
        l.master = Some(4);
        m.apply(Change::Link(l.clone()), &mut ev);
        m.apply(Change::BridgePort(5, Some(BridgePort { hairpin: true })), &mut ev);
        assert_eq!(m.counts()["hairpin_ports"], 1);
        // A later AF_UNSPEC message without slave data keeps the port state.
        l.mtu = 9000;
        m.apply(Change::Link(l), &mut ev);
        assert_eq!(m.counts()["hairpin_ports"], 1);
        assert_eq!(m.links[&5].mtu, 9000);
        m.apply(Change::Forwarding { v6: true, scope: ConfScope::Iface(5), value: 1 }, &mut ev);
        assert_eq!(m.sysctl_map()["net.ipv6.conf.vnet0.forwarding"], "1");
        m.apply(Change::LinkGone(5), &mut ev);
        assert!(m.links.is_empty());
        assert!(m.sysctls.forwarding_v6.per_if.is_empty());
        let ops: Vec<_> = ev.iter().map(|e| (e.kind, e.op)).collect();
        assert_eq!(
            ops,
            vec![("link", "add"), ("link", "update"), ("link", "update"), ("sysctl", "update"), ("link", "remove")]
        );
    }

    fn nh_obj(id: u32, oif: Option<u32>, group: &[u32]) -> Nexthop {
        Nexthop {
            id,
            family: if group.is_empty() { 10 } else { 0 },
            protocol: 4,
            oif,
            gateway: oif.map(|o| format!("fe80::{o}").parse().unwrap()),
            blackhole: false,
            group: group.iter().map(|&id| GroupMember { id, weight: 1 }).collect(),
            resilient: None,
        }
    }

    fn route_via(dst: &str, nhid: Option<u32>, members: &[u32]) -> Route {
        Route {
            table: TABLE_MAIN,
            dst: dst.parse().unwrap(),
            tos: 0,
            metric: 0,
            kind: 1,
            protocol: 4,
            scope: 0,
            attrs: RouteAttrs {
                nhid,
                nexthops: members
                    .iter()
                    .map(|&i| NextHop { gateway: Some("192.0.2.1".parse().unwrap()), ifindex: i, weight: 1, flags: 0 })
                    .collect(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn link_down_and_removal_apply_the_kernels_silent_flushes() {
        let mut m = Model::default();
        let mut ev = vec![];
        m.apply(Change::Link(link(2, "a")), &mut ev);
        m.apply(Change::Link(link(3, "b")), &mut ev);
        for n in [nh_obj(1, Some(2), &[]), nh_obj(2, Some(3), &[]), nh_obj(10, None, &[1, 2]), nh_obj(11, None, &[1])] {
            m.apply(Change::Nexthop(n), &mut ev);
        }
        m.apply(Change::Route(route_via("fd00:a::/64", Some(10), &[])), &mut ev);
        m.apply(Change::Route(route_via("fd00:b::/64", Some(11), &[])), &mut ev);
        m.apply(Change::Route(route_via("10.1.0.0/16", None, &[2])), &mut ev);
        m.apply(Change::Route(route_via("10.2.0.0/16", None, &[2, 3])), &mut ev);
        // Admin down of link 2: its nexthop object goes, group 10 keeps
        // member 2, group 11 is emptied and goes with its route; the IPv4
        // route wholly on link 2 goes, the multipath one stays.
        let mut down = link(2, "a");
        down.flags = 0;
        ev.clear();
        m.apply(Change::Link(down), &mut ev);
        assert_eq!(m.nexthops.keys().copied().collect::<Vec<_>>(), vec![2, 10]);
        assert_eq!(m.nexthops[&10].group, vec![GroupMember { id: 2, weight: 1 }]);
        assert!(m.lookup(TABLE_MAIN, "fd00:b::1".parse().unwrap()).is_none());
        assert_eq!(m.lookup(TABLE_MAIN, "fd00:a::1".parse().unwrap()).unwrap().members.len(), 1);
        assert!(m.lookup(TABLE_MAIN, "10.1.0.1".parse().unwrap()).is_none());
        assert!(m.lookup(TABLE_MAIN, "10.2.0.1".parse().unwrap()).is_some());
        assert!(ev.iter().any(|e| e.kind == "route" && e.op == "remove" && e.key.starts_with("10.1.0.0/16")));
        // Unregister of link 3 takes the multipath IPv4 route too.
        m.apply(Change::LinkGone(3), &mut ev);
        assert!(m.lookup(TABLE_MAIN, "10.2.0.1".parse().unwrap()).is_none());
        assert!(m.nexthops.is_empty(), "{:?}", m.nexthops);
        assert!(m.lookup(TABLE_MAIN, "fd00:a::1".parse().unwrap()).is_none());
    }

    #[test]
    fn a_stale_proc_read_never_overrides_netconf_forwarding() {
        let mut m = Model::default();
        let mut ev = vec![];
        m.apply(Change::Link(link(2, "rgA")), &mut ev);
        m.apply(Change::Forwarding { v6: true, scope: ConfScope::Iface(2), value: 1 }, &mut ev);
        m.apply(Change::Forwarding { v6: true, scope: ConfScope::All, value: 1 }, &mut ev);
        // A read taken before the toggle (or before the interface existed).
        let mut stale = Sysctls::default();
        stale.forwarding_v6.all = Some(0);
        stale.hash_policy_v6 = Some(1);
        m.apply(Change::Sysctls(stale), &mut ev);
        assert_eq!(m.sysctls.forwarding_v6.per_if.get(&2), Some(&1));
        assert_eq!(m.sysctls.forwarding_v6.all, Some(1));
        assert_eq!(m.sysctls.hash_policy_v6, Some(1), "values without netconf come from the read");
    }

    #[test]
    fn counter_only_link_updates_are_silent() {
        let mut m = Model::default();
        let mut ev = vec![];
        let mut l = link(2, "eth0");
        m.apply(Change::Link(l.clone()), &mut ev);
        l.tx_packets = 99;
        m.apply(Change::Link(l), &mut ev);
        assert_eq!(ev.len(), 1);
        assert_eq!(m.links[&2].tx_packets, 99);
    }

    #[test]
    fn socket_polls_are_diffed() {
        let mut m = Model::default();
        let mut ev = vec![];
        let s = |lp: u16| TcpSocket {
            local: format!("[fd00::1]:{lp}").parse().unwrap(),
            remote: "[fd00::2]:80".parse().unwrap(),
            bound_ifindex: 0,
            mark: None,
            inode: lp as u32,
            uid: 0,
        };
        m.apply(Change::Sockets(vec![s(1000), s(1001)]), &mut ev);
        assert_eq!(ev.len(), 2);
        ev.clear();
        m.apply(Change::Sockets(vec![s(1001), s(1002)]), &mut ev);
        let mut ops: Vec<_> = ev.iter().map(|e| e.op).collect();
        ops.sort();
        assert_eq!(ops, vec!["add", "remove"]);
        assert_eq!(m.sockets.len(), 2);
    }

    #[test]
    fn digest_is_order_independent_and_content_sensitive() {
        let mk = |order: &[u32]| {
            let mut m = Model::default();
            let mut ev = vec![];
            for &i in order {
                m.apply(Change::Link(link(i, &format!("v{i}"))), &mut ev);
                m.apply(
                    Change::Route(Route {
                        table: TABLE_MAIN,
                        dst: format!("10.{i}.0.0/16").parse().unwrap(),
                        tos: 0,
                        metric: 0,
                        kind: 1,
                        protocol: 4,
                        scope: 0,
                        attrs: RouteAttrs {
                            nexthops: vec![NextHop { gateway: None, ifindex: i, weight: 1, flags: 0 }],
                            ..Default::default()
                        },
                    }),
                    &mut ev,
                );
            }
            m
        };
        let a = mk(&[1, 2, 3]);
        let b = mk(&[3, 1, 2]);
        assert_eq!(a.digest(), b.digest());
        let c = mk(&[1, 2]);
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn the_changelog_names_route_changes_until_it_overflows() {
        let mut m = Model::default();
        let mut ev = vec![];
        let start = m.changelog.mark();
        assert_eq!(m.changelog.routes_since(None), Since::Everything);
        assert_eq!(m.changelog.routes_since(Some(start)), Since::Nothing);
        m.apply(Change::Route(route_via("2001:db8::/32", None, &[2, 3])), &mut ev);
        // Identical again: nothing changed, nothing noted.
        m.apply(Change::Route(route_via("2001:db8::/32", None, &[2, 3])), &mut ev);
        let one = Since::These(vec![(TABLE_MAIN, "2001:db8::/32".parse().unwrap())]);
        assert_eq!(m.changelog.routes_since(Some(start)), one);
        assert!(!m.changelog.kernel_changed_since(Some(start)));
        m.apply(Change::Forwarding { v6: true, scope: ConfScope::All, value: 1 }, &mut ev);
        assert!(m.changelog.kernel_changed_since(Some(start)));
        let mid = m.changelog.mark();
        for i in 0..CHANGELOG_ROUTES as u32 {
            m.apply(Change::Route(route_via(&format!("2001:db8:{i:x}::/48"), None, &[2])), &mut ev);
        }
        assert_eq!(m.changelog.routes_since(Some(start)), Since::Everything, "fell behind");
        assert!(matches!(m.changelog.routes_since(Some(mid)), Since::These(v) if v.len() == CHANGELOG_ROUTES));
        // Nexthop objects move members of routes not named: everything.
        let late = m.changelog.mark();
        m.apply(Change::NexthopGone(7), &mut ev);
        assert_eq!(m.changelog.routes_since(Some(late)), Since::Nothing, "no such object: nothing changed");
        let nh = Nexthop {
            id: 7,
            family: 10,
            protocol: 11,
            oif: Some(2),
            gateway: None,
            blackhole: false,
            group: vec![],
            resilient: None,
        };
        m.apply(Change::Nexthop(nh), &mut ev);
        assert_eq!(m.changelog.routes_since(Some(late)), Since::Everything, "members of routes not named");
        // Another model (a re-dump) is everything, whatever its counters.
        assert_eq!(Model::default().changelog.routes_since(Some(late)), Since::Everything);
    }

    #[test]
    fn socket_polls_become_deltas_and_a_socket_goes_when_missed_twice() {
        let s = |port: u16, mark: Option<u32>| TcpSocket {
            local: format!("[fd00::1]:{port}").parse().unwrap(),
            remote: "[fd00::2]:179".parse().unwrap(),
            bound_ifindex: 0,
            mark,
            inode: 1,
            uid: 0,
        };
        let mut polls = SocketPolls::default();
        let mut m = Model::default();
        let mut ev = vec![];
        let mut poll = |list: Vec<TcpSocket>, m: &mut Model| {
            let mark = m.changelog.mark();
            if let Some(c) = polls.delta(list) {
                m.apply(c, &mut ev);
            }
            let mut ports: Vec<u16> = m.sockets.keys().map(|k| k.0.port()).collect();
            ports.sort();
            let changed = match m.changelog.sockets_since(Some(mark)) {
                Since::These(v) => v.len(),
                Since::Nothing => 0,
                Since::Everything => usize::MAX,
            };
            (ports, changed)
        };
        assert_eq!(poll(vec![s(1, None), s(2, None)], &mut m), (vec![1, 2], 2));
        assert_eq!(poll(vec![s(1, None), s(2, None)], &mut m), (vec![1, 2], 0), "nothing changed");
        assert_eq!(poll(vec![s(1, Some(5))], &mut m), (vec![1, 2], 1), "2 missed once: kept; 1 changed");
        assert_eq!(poll(vec![s(1, Some(5)), s(2, None)], &mut m), (vec![1, 2], 0), "2 is back");
        assert_eq!(poll(vec![s(1, Some(5))], &mut m), (vec![1, 2], 0));
        assert_eq!(poll(vec![s(1, Some(5))], &mut m), (vec![1], 1), "missed twice: gone");
        // Big deltas are applied in pieces; together they do the same.
        let mut one = SocketPolls::default();
        let whole = one.delta((10..17).map(|p| s(p, None)).collect()).unwrap();
        let pieces = whole.clone().split_sockets(3);
        assert_eq!(pieces.len(), 3);
        let (mut a, mut b) = (Model::default(), Model::default());
        a.apply(whole, &mut ev);
        for p in pieces {
            b.apply(p, &mut ev);
        }
        let keys = |m: &Model| m.sockets.keys().copied().collect::<BTreeSet<_>>();
        assert_eq!(keys(&a), keys(&b));
    }
}
