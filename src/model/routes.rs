//! Routing tables: one prefix trie per (table, family), compact entries.
//!
//! A router can hold a million routes, and the design budget is at most
//! 100 bytes of resident memory per route. Most routes share their nexthop
//! set (a BGP full table has a handful of distinct sets), so each entry keeps
//! only a 4-byte id of an interned [`RouteAttrs`] plus the fields that make
//! it unique. The trie itself (prefix-trie's tree bitmap) costs ~12 bytes per
//! prefix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use prefix_trie::PrefixMap;
use serde::Serialize;

/// The main routing table's id.
pub const TABLE_MAIN: u32 = 254;
/// The local routing table's id.
pub const TABLE_LOCAL: u32 = 255;

/// One member of a route's nexthop set, as the kernel resolves it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NextHop {
    /// Gateway address; `None` for directly connected members.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface index (0 when the kernel did not report one).
    pub ifindex: u32,
    /// Multipath weight (rtnh_hops + 1); 1 for a plain route.
    pub weight: u16,
    /// RTNH_F_* flags (dead, pervasive, onlink, offload, linkdown, ...).
    pub flags: u8,
}

/// Everything about a route that many routes tend to share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct RouteAttrs {
    /// Members in kernel order. For a route using a nexthop object this is
    /// what the kernel reported expanded (nexthop_compat_mode=1); the model
    /// resolves the object's group at lookup time either way.
    pub nexthops: Vec<NextHop>,
    /// Nexthop object id (`nhid`), if the route uses one.
    pub nhid: Option<u32>,
    /// Preferred source address (`src` in `ip route`).
    pub prefsrc: Option<IpAddr>,
    /// Source prefix of an IPv6 source-specific route.
    pub src: Option<IpNetwork>,
}

/// A route as the kernel reports it, in domain terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Routing table id (RTA_TABLE, which carries ids above 255).
    pub table: u32,
    /// Destination prefix with host bits cleared.
    pub dst: IpNetwork,
    /// IPv4 type of service; part of the route's identity.
    pub tos: u8,
    /// Route priority (`metric`); part of the route's identity.
    pub metric: u32,
    /// RTN_* route type (1 unicast, 2 local, 4 anycast, 6 blackhole, ...).
    pub kind: u8,
    /// RTPROT_* protocol that installed the route.
    pub protocol: u8,
    /// RT_SCOPE_* scope.
    pub scope: u8,
    /// Nexthops and the other shared attributes.
    pub attrs: RouteAttrs,
}

#[cfg(test)]
impl Route {
    /// A main-table unicast route (metric 1024, proto boot) for tests.
    pub(crate) fn test_unicast(dst: &str, nexthops: Vec<NextHop>) -> Route {
        Route {
            table: TABLE_MAIN,
            dst: dst.parse().unwrap(),
            tos: 0,
            metric: 1024,
            kind: 1,
            protocol: 3,
            scope: 0,
            attrs: RouteAttrs { nexthops, ..Default::default() },
        }
    }
}

impl Route {
    /// A short human description used in events and logs.
    pub fn key_string(&self) -> String {
        format!("{} table {} metric {}", self.dst, self.table, self.metric)
    }
}

/// A stored route: 16 bytes; the shared attributes live in the intern pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    metric: u32,
    attrs: u32,
    kind: u8,
    protocol: u8,
    scope: u8,
    tos: u8,
}

/// The routes stored under one prefix. Almost always exactly one, so that
/// case stays inline; several routes for one prefix (different metrics or
/// TOS) spill into a boxed vector.
#[derive(Clone, Debug)]
enum Slot {
    One(Entry),
    // Boxed so a slot stays 20 bytes (a bare Vec would make every slot 32).
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Entry>>),
}

impl Slot {
    fn entries(&self) -> &[Entry] {
        match self {
            Slot::One(e) => std::slice::from_ref(e),
            Slot::Many(v) => v,
        }
    }
}

/// Interned [`RouteAttrs`] with reference counts, so identical nexthop sets
/// are stored once and freed when the last route using them goes.
#[derive(Debug, Default)]
struct AttrPool {
    slots: Vec<Option<(Arc<RouteAttrs>, u32)>>,
    index: HashMap<Arc<RouteAttrs>, u32>,
    free: Vec<u32>,
    /// Gateway address -> number of member entries naming it, over the
    /// live sets. Kept in step as sets are created and freed, so "does any
    /// route use gateway X" costs one hash lookup, whatever the number of
    /// routes or sets.
    gateways: HashMap<IpAddr, u32>,
}

impl AttrPool {
    fn intern(&mut self, attrs: RouteAttrs) -> u32 {
        if let Some(&id) = self.index.get(&attrs) {
            if let Some((_, rc)) = self.slots[id as usize].as_mut() {
                *rc += 1;
            }
            return id;
        }
        for g in attrs.nexthops.iter().filter_map(|n| n.gateway) {
            *self.gateways.entry(g).or_default() += 1;
        }
        let attrs = Arc::new(attrs);
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some((attrs.clone(), 1));
                id
            }
            None => {
                self.slots.push(Some((attrs.clone(), 1)));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(attrs, id);
        id
    }

    fn release(&mut self, id: u32) {
        let slot = &mut self.slots[id as usize];
        let drop_it = match slot.as_mut() {
            Some((_, rc)) => {
                *rc -= 1;
                *rc == 0
            }
            None => false,
        };
        if drop_it {
            if let Some((attrs, _)) = slot.take() {
                self.index.remove(&attrs);
                for g in attrs.nexthops.iter().filter_map(|n| n.gateway) {
                    if let Some(n) = self.gateways.get_mut(&g) {
                        *n -= 1;
                        if *n == 0 {
                            self.gateways.remove(&g);
                        }
                    }
                }
            }
            self.free.push(id);
        }
    }

    fn get(&self, id: u32) -> &RouteAttrs {
        match &self.slots[id as usize] {
            Some((a, _)) => a,
            // Entries only ever hold ids of live slots; an empty slot here
            // would be a bookkeeping bug, and an empty set is the safe answer.
            None => &EMPTY_ATTRS,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

static EMPTY_ATTRS: RouteAttrs = RouteAttrs { nexthops: Vec::new(), nhid: None, prefsrc: None, src: None };

/// One routing table, both families.
#[derive(Default)]
struct Table {
    v4: PrefixMap<Ipv4Network, Slot>,
    v6: PrefixMap<Ipv6Network, Slot>,
}

/// All routing tables of the namespace.
#[derive(Default)]
pub struct RouteTables {
    tables: BTreeMap<u32, Table>,
    pool: AttrPool,
    count_v4: usize,
    count_v6: usize,
    /// The routes of each gateway asked about with
    /// [`RouteTables::routes_via`]: filled by one walk at the first
    /// question, then kept in step by every upsert and remove. Only a few
    /// gateways are ever asked about (Subnet-Router anycast addresses that
    /// routes use), so this stays small. Behind a lock because a question
    /// (`&self`) may fill it.
    via: Mutex<HashMap<IpAddr, RoutesVia>>,
}

/// The routes naming one gateway: (table, prefix) -> number of members
/// naming it (several routes can share a prefix, with other metrics).
type RoutesVia = BTreeMap<(u32, IpNetwork), u32>;

/// Beyond this many watched gateways, those without routes are forgotten.
const MAX_WATCHED_GATEWAYS: usize = 256;

/// Counts (`up`) or uncounts the route `(table, dst)` with `attrs` for each
/// of its gateways that is watched.
fn track(via: &mut HashMap<IpAddr, RoutesVia>, table: u32, dst: IpNetwork, attrs: &RouteAttrs, up: bool) {
    if via.is_empty() {
        return;
    }
    for g in attrs.nexthops.iter().filter_map(|n| n.gateway) {
        let Some(routes) = via.get_mut(&g) else { continue };
        if up {
            *routes.entry((table, dst)).or_default() += 1;
        } else if let Some(n) = routes.get_mut(&(table, dst)) {
            *n -= 1;
            if *n == 0 {
                routes.remove(&(table, dst));
            }
        }
    }
}

/// What an upsert or remove did, for change events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    /// The route was not there before.
    Added,
    /// A route with the same identity was replaced by a different one.
    Updated,
    /// The same route was already there; nothing changed.
    Unchanged,
    /// The route was removed.
    Removed,
    /// One member of a multipath route was removed; the rest stays.
    MemberRemoved,
    /// Nothing matched the removal.
    Missing,
}

/// RTPROT_RA: routes learned from router advertisements.
const RTPROT_RA: u8 = 9;

/// The device part of a route's identity. Routes without a gateway can
/// exist once per device at the same prefix and metric: connected routes
/// (`fe80::/64` on every interface; an IPv4 /24 whose addresses sit on two
/// links, added by the kernel with NLM_F_APPEND). IPv6 merges routes with a
/// gateway into one multipath route (`rt6_qualify_for_ecmp`), except
/// RA-learned defaults, which stay one per device. So: gateway routes are
/// identified without their device (IPv6 RA routes and device routes with
/// it).
fn device_key(is_v6: bool, protocol: u8, attrs: &RouteAttrs) -> Option<u32> {
    if attrs.nhid.is_some() {
        return None;
    }
    let ra = is_v6 && protocol == RTPROT_RA;
    let ecmp = !ra && attrs.nexthops.iter().any(|n| n.gateway.is_some());
    if ecmp {
        None
    } else {
        Some(attrs.nexthops.first().map_or(0, |n| n.ifindex))
    }
}

fn same_identity(e: &Entry, pool: &AttrPool, r: &Route) -> bool {
    if e.metric != r.metric || e.tos != r.tos {
        return false;
    }
    let stored = pool.get(e.attrs);
    let v6 = r.dst.is_ipv6();
    stored.src == r.attrs.src && device_key(v6, e.protocol, stored) == device_key(v6, r.protocol, &r.attrs)
}

/// Clears host bits so equal prefixes compare equal.
pub fn normalize(net: IpNetwork) -> IpNetwork {
    match net {
        IpNetwork::V4(n) => IpNetwork::V4(Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n)),
        IpNetwork::V6(n) => IpNetwork::V6(Ipv6Network::new(n.network(), n.prefix()).unwrap_or(n)),
    }
}

impl RouteTables {
    /// Number of IPv4 routes in all tables.
    pub fn count_v4(&self) -> usize {
        self.count_v4
    }

    /// Number of IPv6 routes in all tables.
    pub fn count_v6(&self) -> usize {
        self.count_v6
    }

    /// Number of distinct interned attribute sets (for memory diagnostics).
    pub fn distinct_attr_sets(&self) -> usize {
        self.pool.len()
    }

    /// Inserts or replaces the route with the same identity (table, prefix,
    /// tos, metric, source prefix).
    pub fn upsert(&mut self, mut route: Route) -> RouteOp {
        route.dst = normalize(route.dst);
        let table = self.tables.entry(route.table).or_default();
        let pool = &mut self.pool;
        let via = self.via.get_mut().unwrap_or_else(|e| e.into_inner());
        let (tid, dst) = (route.table, route.dst);
        let slot = match route.dst {
            IpNetwork::V4(n) => table.v4.get_mut(&n),
            IpNetwork::V6(n) => table.v6.get_mut(&n),
        };
        if let Some(slot) = slot {
            let pos = slot.entries().iter().position(|e| same_identity(e, pool, &route));
            if let Some(pos) = pos {
                let old = slot.entries()[pos];
                if old.kind == route.kind
                    && old.protocol == route.protocol
                    && old.scope == route.scope
                    && *pool.get(old.attrs) == route.attrs
                {
                    return RouteOp::Unchanged;
                }
                track(via, tid, dst, &route.attrs, true);
                track(via, tid, dst, pool.get(old.attrs), false);
                let entry = Self::entry(pool, route);
                pool.release(old.attrs);
                match slot {
                    Slot::One(e) => *e = entry,
                    Slot::Many(v) => v[pos] = entry,
                }
                return RouteOp::Updated;
            }
            let is_v4 = route.dst.is_ipv4();
            track(via, tid, dst, &route.attrs, true);
            let entry = Self::entry(pool, route);
            match slot {
                Slot::One(e) => *slot = Slot::Many(Box::new(vec![*e, entry])),
                Slot::Many(v) => v.push(entry),
            }
            self.bump(is_v4, true);
            return RouteOp::Added;
        }
        track(via, tid, dst, &route.attrs, true);
        let entry = Self::entry(pool, route);
        match dst {
            IpNetwork::V4(n) => {
                table.v4.insert(n, Slot::One(entry));
            }
            IpNetwork::V6(n) => {
                table.v6.insert(n, Slot::One(entry));
            }
        }
        self.bump(dst.is_ipv4(), true);
        RouteOp::Added
    }

    fn entry(pool: &mut AttrPool, r: Route) -> Entry {
        Entry {
            metric: r.metric,
            tos: r.tos,
            kind: r.kind,
            protocol: r.protocol,
            scope: r.scope,
            attrs: pool.intern(r.attrs),
        }
    }

    fn bump(&mut self, v4: bool, up: bool) {
        let c = if v4 { &mut self.count_v4 } else { &mut self.count_v6 };
        if up {
            *c += 1;
        } else {
            *c = c.saturating_sub(1);
        }
    }

    /// Removes the route with the same identity. For an IPv6 multipath
    /// route, a removal naming a single member that the stored route has
    /// among several removes only that member: the kernel reports the
    /// deletion of one sibling that way (`ip -6 route del P nexthop via G`).
    pub fn remove(&mut self, route: &Route) -> RouteOp {
        let dst = normalize(route.dst);
        let Some(table) = self.tables.get_mut(&route.table) else {
            return RouteOp::Missing;
        };
        let pool = &mut self.pool;
        let via = self.via.get_mut().unwrap_or_else(|e| e.into_inner());
        let slot = match dst {
            IpNetwork::V4(n) => table.v4.get_mut(&n),
            IpNetwork::V6(n) => table.v6.get_mut(&n),
        };
        let Some(slot) = slot else {
            return RouteOp::Missing;
        };
        let Some(pos) = slot.entries().iter().position(|e| same_identity(e, pool, route)) else {
            return RouteOp::Missing;
        };
        let old = slot.entries()[pos];
        let stored = pool.get(old.attrs);
        if dst.is_ipv6() && route.attrs.nexthops.len() == 1 && stored.nexthops.len() > 1 {
            let gone = &route.attrs.nexthops[0];
            let rest: Vec<NextHop> = stored
                .nexthops
                .iter()
                .filter(|m| !(m.gateway == gone.gateway && m.ifindex == gone.ifindex))
                .cloned()
                .collect();
            if rest.len() < stored.nexthops.len() && !rest.is_empty() {
                let mut attrs = stored.clone();
                attrs.nexthops = rest;
                track(via, route.table, dst, &attrs, true);
                track(via, route.table, dst, stored, false);
                let id = pool.intern(attrs);
                pool.release(old.attrs);
                let e = Entry { attrs: id, ..old };
                match slot {
                    Slot::One(x) => *x = e,
                    Slot::Many(v) => v[pos] = e,
                }
                return RouteOp::MemberRemoved;
            }
        }
        track(via, route.table, dst, stored, false);
        pool.release(old.attrs);
        let now_empty = match slot {
            Slot::One(_) => true,
            Slot::Many(v) => {
                v.remove(pos);
                if v.len() == 1 {
                    *slot = Slot::One(v[0]);
                }
                false
            }
        };
        if now_empty {
            match dst {
                IpNetwork::V4(n) => {
                    table.v4.remove(&n);
                }
                IpNetwork::V6(n) => {
                    table.v6.remove(&n);
                }
            }
        }
        self.bump(dst.is_ipv4(), false);
        RouteOp::Removed
    }

    /// Removes every route (used before a re-dump replaces the tables).
    pub fn clear(&mut self) {
        *self = RouteTables::default();
    }

    /// Longest-prefix match of `addr` in `table`. Among several routes for
    /// the matched prefix the kernel prefers the lowest metric; so does this.
    pub fn lookup(&self, table: u32, addr: IpAddr) -> Option<Route> {
        let t = self.tables.get(&table)?;
        let (net, slot) = match addr {
            IpAddr::V4(a) => {
                let (n, s) = t.v4.get_lpm(&Ipv4Network::from(a))?;
                (IpNetwork::V4(n), s)
            }
            IpAddr::V6(a) => {
                let (n, s) = t.v6.get_lpm(&Ipv6Network::from(a))?;
                (IpNetwork::V6(n), s)
            }
        };
        let best = slot.entries().iter().min_by_key(|e| (e.metric, e.tos))?;
        Some(self.materialize(table, net, best))
    }

    fn materialize(&self, table: u32, dst: IpNetwork, e: &Entry) -> Route {
        Route {
            table,
            dst,
            tos: e.tos,
            metric: e.metric,
            kind: e.kind,
            protocol: e.protocol,
            scope: e.scope,
            attrs: self.pool.get(e.attrs).clone(),
        }
    }

    /// Every route, table by table, IPv4 before IPv6, prefixes in trie order.
    pub fn iter(&self) -> impl Iterator<Item = Route> + '_ {
        self.tables.iter().flat_map(move |(&table, t)| {
            let v4 = t
                .v4
                .iter()
                .flat_map(move |(n, s)| s.entries().iter().map(move |e| self.materialize(table, IpNetwork::V4(n), e)));
            let v6 = t
                .v6
                .iter()
                .flat_map(move |(n, s)| s.entries().iter().map(move |e| self.materialize(table, IpNetwork::V6(n), e)));
            v4.chain(v6)
        })
    }

    /// Calls `f` for every stored route without cloning its attributes; used
    /// by the digest, which must stay cheap on a million routes.
    pub fn for_each_raw(&self, mut f: impl FnMut(u32, IpNetwork, u32, u8, u8, u8, u8, &RouteAttrs)) {
        for (&table, t) in &self.tables {
            for (n, s) in t.v4.iter() {
                for e in s.entries() {
                    f(table, IpNetwork::V4(n), e.metric, e.tos, e.kind, e.protocol, e.scope, self.pool.get(e.attrs));
                }
            }
            for (n, s) in t.v6.iter() {
                for e in s.entries() {
                    f(table, IpNetwork::V6(n), e.metric, e.tos, e.kind, e.protocol, e.scope, self.pool.get(e.attrs));
                }
            }
        }
    }

    /// Every distinct attribute set in use (each shared by one or more
    /// routes). A router has few, so scanning them is how to ask "does any
    /// route use gateway X" without walking a million routes.
    pub fn attr_sets(&self) -> impl Iterator<Item = &RouteAttrs> {
        self.pool.slots.iter().filter_map(|s| s.as_ref().map(|(a, _)| a.as_ref()))
    }

    /// Whether any route (in any table) has a member with gateway `gw`.
    /// One hash lookup: the pool keeps a gateway index in step with its
    /// sets, so this does not depend on the number of routes.
    pub fn uses_gateway(&self, gw: IpAddr) -> bool {
        self.pool.gateways.contains_key(&gw)
    }

    /// For each of `gws`, the routes `(table, prefix)` with a member via it,
    /// in [`RouteTables::for_each_raw`] order (table, IPv4 before IPv6,
    /// prefix). The first question about a gateway that routes use walks
    /// the routes once; from then on upsert and remove keep the answer in
    /// step, so asking again does not depend on the number of routes.
    pub fn routes_via(&self, gws: &BTreeSet<IpAddr>) -> BTreeMap<IpAddr, Vec<(u32, IpNetwork)>> {
        let mut via = self.via.lock().unwrap_or_else(|e| e.into_inner());
        let mut fill: HashMap<IpAddr, RoutesVia> = gws
            .iter()
            .filter(|g| self.uses_gateway(**g) && !via.contains_key(*g))
            .map(|g| (*g, RoutesVia::new()))
            .collect();
        if !fill.is_empty() {
            if via.len() + fill.len() > MAX_WATCHED_GATEWAYS {
                via.retain(|_, routes| !routes.is_empty());
            }
            self.for_each_raw(|table, dst, _, _, _, _, _, attrs| track(&mut fill, table, dst, attrs, true));
            via.extend(fill);
        }
        gws.iter().map(|g| (*g, via.get(g).map(|r| r.keys().copied().collect()).unwrap_or_default())).collect()
    }

    /// Ids of the tables that hold at least one route.
    pub fn table_ids(&self) -> Vec<u32> {
        self.tables.keys().copied().collect()
    }
}

/// The unspecified address of the family of `net`, handy for defaults.
pub fn unspecified_of(net: &IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nh(gw: &str, ifindex: u32) -> NextHop {
        NextHop { gateway: Some(gw.parse().unwrap()), ifindex, weight: 1, flags: 0 }
    }

    fn route(dst: &str, metric: u32, nhs: Vec<NextHop>) -> Route {
        Route {
            table: TABLE_MAIN,
            dst: dst.parse().unwrap(),
            tos: 0,
            metric,
            kind: 1,
            protocol: 3,
            scope: 0,
            attrs: RouteAttrs { nexthops: nhs, ..Default::default() },
        }
    }

    #[test]
    fn longest_prefix_match_picks_most_specific_then_lowest_metric() {
        let mut t = RouteTables::default();
        t.upsert(route("10.0.0.0/8", 100, vec![nh("192.0.2.1", 2)]));
        t.upsert(route("10.1.0.0/16", 200, vec![nh("192.0.2.2", 2)]));
        t.upsert(route("10.1.0.0/16", 50, vec![nh("192.0.2.3", 3)]));
        let r = t.lookup(TABLE_MAIN, "10.1.2.3".parse().unwrap()).unwrap();
        assert_eq!(r.dst.to_string(), "10.1.0.0/16");
        assert_eq!(r.metric, 50);
        assert_eq!(r.attrs.nexthops[0].ifindex, 3);
        let r = t.lookup(TABLE_MAIN, "10.9.9.9".parse().unwrap()).unwrap();
        assert_eq!(r.dst.to_string(), "10.0.0.0/8");
        assert!(t.lookup(TABLE_MAIN, "11.0.0.1".parse().unwrap()).is_none());
        assert!(t.lookup(100, "10.0.0.1".parse().unwrap()).is_none());
        assert_eq!(t.count_v4(), 3);
    }

    #[test]
    fn host_bits_are_cleared_so_replace_matches() {
        let mut t = RouteTables::default();
        assert_eq!(t.upsert(route("10.1.2.3/16", 0, vec![nh("192.0.2.1", 2)])), RouteOp::Added);
        assert_eq!(t.upsert(route("10.1.0.0/16", 0, vec![nh("192.0.2.9", 2)])), RouteOp::Updated);
        assert_eq!(t.count_v4(), 1);
        assert_eq!(t.upsert(route("10.1.0.0/16", 0, vec![nh("192.0.2.9", 2)])), RouteOp::Unchanged);
    }

    #[test]
    fn attribute_sets_are_shared_and_freed() {
        let mut t = RouteTables::default();
        for i in 0..100u32 {
            let dst = format!("2001:db8:{:x}::/48", i);
            t.upsert(route(&dst, 1024, vec![nh("fe80::1", 2), nh("fe80::2", 3)]));
        }
        assert_eq!(t.distinct_attr_sets(), 1);
        t.upsert(route("2001:db8:ffff::/48", 1024, vec![nh("fe80::3", 4)]));
        assert_eq!(t.distinct_attr_sets(), 2);
        assert_eq!(t.remove(&route("2001:db8:ffff::/48", 1024, vec![nh("fe80::3", 4)])), RouteOp::Removed);
        assert_eq!(t.distinct_attr_sets(), 1);
        for i in 0..100u32 {
            let dst = format!("2001:db8:{:x}::/48", i);
            assert_eq!(t.remove(&route(&dst, 1024, vec![nh("fe80::1", 2), nh("fe80::2", 3)])), RouteOp::Removed);
        }
        assert_eq!(t.distinct_attr_sets(), 0);
        assert_eq!(t.count_v6(), 0);
        assert_eq!(t.iter().count(), 0);
    }

    #[test]
    fn the_gateway_index_follows_adds_replaces_member_removals_and_removes() {
        let mut t = RouteTables::default();
        let g = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!t.uses_gateway(g("fe80::1")));
        for i in 0..10u32 {
            t.upsert(route(&format!("2001:db8:{i:x}::/48"), 1024, vec![nh("fe80::1", 2), nh("fe80::2", 3)]));
        }
        assert!(t.uses_gateway(g("fe80::1")) && t.uses_gateway(g("fe80::2")));
        // One sibling leaves one route: the other routes still use it.
        assert_eq!(t.remove(&route("2001:db8::/48", 1024, vec![nh("fe80::2", 3)])), RouteOp::MemberRemoved);
        assert!(t.uses_gateway(g("fe80::2")));
        // A replace moves the route to another gateway.
        t.upsert(route("2001:db8::/48", 1024, vec![nh("fe80::9", 2)]));
        assert!(t.uses_gateway(g("fe80::9")));
        t.upsert(route("2001:db8::/48", 1024, vec![nh("fe80::1", 2)]));
        assert!(!t.uses_gateway(g("fe80::9")), "freed with its last set");
        for i in 1..10u32 {
            t.remove(&route(&format!("2001:db8:{i:x}::/48"), 1024, vec![nh("fe80::1", 2), nh("fe80::2", 3)]));
        }
        assert!(t.uses_gateway(g("fe80::1")) && !t.uses_gateway(g("fe80::2")));
        t.remove(&route("2001:db8::/48", 1024, vec![nh("fe80::1", 2)]));
        assert!(!t.uses_gateway(g("fe80::1")));
        assert_eq!(t.distinct_attr_sets(), 0);
        t.upsert(route("10.0.0.0/8", 0, vec![nh("192.0.2.1", 2)]));
        assert!(t.uses_gateway(g("192.0.2.1")));
        t.clear();
        assert!(!t.uses_gateway(g("192.0.2.1")));
    }

    #[test]
    fn routes_via_a_gateway_match_a_walk_and_follow_changes_after_the_first_question() {
        let mut t = RouteTables::default();
        let g: IpAddr = "fdc0:1::".parse().unwrap();
        let ask = |t: &RouteTables| -> Vec<String> {
            t.routes_via(&BTreeSet::from([g]))[&g].iter().map(|(tb, d)| format!("{d} {tb}")).collect()
        };
        let walk = |t: &RouteTables| -> Vec<String> {
            let mut out = Vec::new();
            t.for_each_raw(|tb, d, _, _, _, _, _, a| {
                if a.nexthops.iter().any(|n| n.gateway == Some(g)) && out.last() != Some(&format!("{d} {tb}")) {
                    out.push(format!("{d} {tb}"));
                }
            });
            out
        };
        assert!(ask(&t).is_empty());
        for i in 0..50u32 {
            t.upsert(route(&format!("2001:db9:{i:x}::/64"), 1024, vec![nh("fdc0:1::2", 2)]));
        }
        t.upsert(route("2001:db8::/32", 1024, vec![nh("fdc0:1::", 2)]));
        t.upsert(route("2001:db8::/48", 1024, vec![nh("fdc0:1::", 2), nh("fe80::1", 3)]));
        assert_eq!(ask(&t), vec!["2001:db8::/32 254", "2001:db8::/48 254"]);
        // Kept in step from here on, in walk order.
        t.upsert(route("2001:db8::/16", 1024, vec![nh("fdc0:1::", 2)]));
        let mut other = route("2001:db8::/32", 1024, vec![nh("fdc0:1::", 2)]);
        other.table = 100;
        t.upsert(other);
        let mut v4 = route("10.0.0.0/8", 0, vec![nh("fdc0:1::", 2)]);
        v4.table = 100;
        t.upsert(v4);
        // A second route at the same prefix (another metric).
        t.upsert(route("2001:db8::/32", 10, vec![nh("fdc0:1::", 2)]));
        assert_eq!(ask(&t), walk(&t));
        assert_eq!(
            ask(&t),
            vec!["10.0.0.0/8 100", "2001:db8::/32 100", "2001::/16 254", "2001:db8::/32 254", "2001:db8::/48 254"]
        );
        t.remove(&route("2001:db8::/32", 10, vec![nh("fdc0:1::", 2)]));
        assert!(ask(&t).contains(&"2001:db8::/32 254".to_string()), "the other metric is still there");
        t.remove(&route("2001:db8::/32", 1024, vec![nh("fdc0:1::", 2)]));
        // One member leaves, then the route moves to another gateway.
        assert_eq!(t.remove(&route("2001:db8::/48", 1024, vec![nh("fdc0:1::", 2)])), RouteOp::MemberRemoved);
        t.upsert(route("2001:db8::/16", 1024, vec![nh("fdc0:1::2", 2)]));
        assert_eq!(ask(&t), walk(&t));
        assert_eq!(ask(&t), vec!["10.0.0.0/8 100", "2001:db8::/32 100"]);
        t.clear();
        assert!(ask(&t).is_empty());
    }

    #[test]
    fn removing_one_ipv6_sibling_keeps_the_others() {
        let mut t = RouteTables::default();
        let full = route("fd00::1/128", 1024, vec![nh("fe80::1", 2), nh("fe80::2", 3), nh("fe80::3", 4)]);
        t.upsert(full);
        let one = route("fd00::1/128", 1024, vec![nh("fe80::2", 3)]);
        assert_eq!(t.remove(&one), RouteOp::MemberRemoved);
        let r = t.lookup(TABLE_MAIN, "fd00::1".parse().unwrap()).unwrap();
        let gws: Vec<String> = r.attrs.nexthops.iter().map(|n| n.gateway.unwrap().to_string()).collect();
        assert_eq!(gws, vec!["fe80::1", "fe80::3"]);
        assert_eq!(t.count_v6(), 1);
    }

    #[test]
    fn ipv6_connected_routes_on_different_devices_are_distinct() {
        let mut t = RouteTables::default();
        let dev = |ifindex| NextHop { gateway: None, ifindex, weight: 1, flags: 0 };
        assert_eq!(t.upsert(route("fe80::/64", 256, vec![dev(2)])), RouteOp::Added);
        assert_eq!(t.upsert(route("fe80::/64", 256, vec![dev(3)])), RouteOp::Added);
        assert_eq!(t.count_v6(), 2);
        assert_eq!(t.remove(&route("fe80::/64", 256, vec![dev(3)])), RouteOp::Removed);
        let r = t.lookup(TABLE_MAIN, "fe80::1".parse().unwrap()).unwrap();
        assert_eq!(r.attrs.nexthops[0].ifindex, 2);
        // Gateway routes at the same metric are one (multipath) route.
        assert_eq!(t.upsert(route("2001:db8::/32", 1024, vec![nh("fe80::1", 2)])), RouteOp::Added);
        assert_eq!(t.upsert(route("2001:db8::/32", 1024, vec![nh("fe80::1", 2), nh("fe80::2", 3)])), RouteOp::Updated);
        // RA-learned defaults on two interfaces stay separate.
        let mut ra = route("::/0", 1024, vec![nh("fe80::1", 2)]);
        ra.protocol = 9;
        let mut ra2 = route("::/0", 1024, vec![nh("fe80::1", 3)]);
        ra2.protocol = 9;
        assert_eq!(t.upsert(ra), RouteOp::Added);
        assert_eq!(t.upsert(ra2), RouteOp::Added);
    }

    #[test]
    fn ipv4_connected_routes_on_two_devices_are_distinct() {
        let mut t = RouteTables::default();
        let dev = |ifindex| NextHop { gateway: None, ifindex, weight: 1, flags: 0 };
        assert_eq!(t.upsert(route("10.0.0.0/24", 0, vec![dev(2)])), RouteOp::Added);
        assert_eq!(t.upsert(route("10.0.0.0/24", 0, vec![dev(3)])), RouteOp::Added);
        assert_eq!(t.count_v4(), 2);
        assert_eq!(t.remove(&route("10.0.0.0/24", 0, vec![dev(2)])), RouteOp::Removed);
        assert_eq!(t.count_v4(), 1);
    }

    #[test]
    fn several_routes_per_prefix_spill_and_collapse() {
        let mut t = RouteTables::default();
        t.upsert(route("10.0.0.0/24", 10, vec![nh("192.0.2.1", 2)]));
        t.upsert(route("10.0.0.0/24", 20, vec![nh("192.0.2.2", 2)]));
        t.upsert(route("10.0.0.0/24", 30, vec![nh("192.0.2.3", 2)]));
        assert_eq!(t.count_v4(), 3);
        assert_eq!(t.remove(&route("10.0.0.0/24", 10, vec![nh("192.0.2.1", 2)])), RouteOp::Removed);
        let r = t.lookup(TABLE_MAIN, "10.0.0.5".parse().unwrap()).unwrap();
        assert_eq!(r.metric, 20);
        assert_eq!(t.remove(&route("10.0.0.0/24", 99, vec![nh("192.0.2.1", 2)])), RouteOp::Missing);
        assert_eq!(t.remove(&route("10.0.0.0/24", 20, vec![nh("192.0.2.2", 2)])), RouteOp::Removed);
        assert_eq!(t.remove(&route("10.0.0.0/24", 30, vec![nh("192.0.2.3", 2)])), RouteOp::Removed);
        assert_eq!(t.count_v4(), 0);
        assert!(t.lookup(TABLE_MAIN, "10.0.0.5".parse().unwrap()).is_none());
    }
}
