//! staticd's static routes as the proxy sees them: read from staticd's
//! running configuration (JSON from `Get`), edited by a candidate's
//! `EditCandidate`/`LoadToCandidate` requests, and compared before and
//! after so that a commit becomes route-replace intents the detectors
//! judge: for every prefix whose installed member set changes, the
//! resulting set.
//!
//! The YANG shape (FRR 8.4, verified against staticd over gRPC):
//! `control-plane-protocol[type='frr-staticd:staticd'][name][vrf]/frr-staticd:staticd/
//! route-list[prefix][afi-safi]/path-list[table-id][distance]/frr-nexthops/
//! nexthop[nh-type][vrf][gateway][interface]`. zebra installs the path with
//! the lowest distance, so that path's nexthops are the kernel members.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;

use super::xpath::Step;
use crate::policy::intent::{Intent, MemberSpec, RouteSpec};

/// Identity of a static route: VRF, prefix, address family.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// VRF name.
    pub vrf: String,
    /// Destination.
    pub prefix: IpNetwork,
    /// `frr-routing:ipv6-unicast` or `frr-routing:ipv4-unicast`.
    pub afi_safi: String,
}

/// One nexthop of a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nexthop {
    /// `ip4`, `ip6`, `ip4-ifindex`, `ip6-ifindex`, `ifindex`, `blackhole`.
    pub nh_type: String,
    /// Nexthop VRF.
    pub vrf: String,
    /// Gateway, when any.
    pub gateway: Option<IpAddr>,
    /// Interface name (empty when not given).
    pub interface: String,
}

/// Paths of one route: `(table-id, distance)` -> nexthops.
pub type Paths = BTreeMap<(u32, u32), BTreeSet<Nexthop>>;

/// The static routes of one staticd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticRoutes {
    /// Every route and its paths.
    pub routes: BTreeMap<RouteKey, Paths>,
}

/// A request the proxy cannot turn into routes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RoutesError(pub String);

fn bad(s: impl Into<String>) -> RoutesError {
    RoutesError(s.into())
}

fn num(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn text<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Parses a route-list prefix, checking it against the address family.
pub fn parse_prefix(prefix: &str, afi_safi: &str) -> Result<IpNetwork, RoutesError> {
    let p: IpNetwork =
        prefix.parse().map_err(|_| bad(format!("invalid prefix `{prefix}` in route-list (e.g. 2001:db8::/64)")))?;
    let v6 = afi_safi.ends_with("ipv6-unicast");
    let v4 = afi_safi.ends_with("ipv4-unicast");
    if (v6 && !p.is_ipv6()) || (v4 && !p.is_ipv4()) {
        return Err(bad(format!("prefix `{prefix}` does not match afi-safi `{afi_safi}`")));
    }
    Ok(p)
}

fn parse_nexthop(keys: impl Fn(&str) -> Option<String>) -> Result<Nexthop, RoutesError> {
    let gateway = match keys("gateway").filter(|g| !g.is_empty()) {
        Some(g) => Some(g.parse().map_err(|_| bad(format!("invalid nexthop gateway `{g}`")))?),
        None => None,
    };
    Ok(Nexthop {
        nh_type: keys("nh-type").unwrap_or_default(),
        vrf: keys("vrf").unwrap_or_else(|| "default".into()),
        gateway,
        interface: keys("interface").unwrap_or_default(),
    })
}

/// What one edit path addresses among staticd's routes.
enum Target<'a> {
    /// Nothing of the routes (another container, a leaf elsewhere).
    Outside,
    /// Every route of `vrf` (every VRF when `None`): a delete of
    /// `/frr-routing:routing`, a protocol entry or the staticd container.
    Every { vrf: Option<String> },
    /// One route; `rest` are the steps below its `route-list` entry.
    Route { key: RouteKey, rest: &'a [Step] },
}

fn locate(steps: &[Step]) -> Result<Target<'_>, RoutesError> {
    let Some(sd) = steps.iter().position(|s| s.name == "frr-staticd:staticd" || s.local_name() == "staticd") else {
        // `/frr-routing:routing` or the protocol list (entry): a delete of
        // it removes every static route (of the entry's VRF).
        if steps.len() <= 3 && steps.first().is_some_and(|s| s.name == "frr-routing:routing") {
            return Ok(Target::Every { vrf: steps.get(2).and_then(|s| s.key("vrf")).map(str::to_string) });
        }
        return Ok(Target::Outside);
    };
    let vrf = steps[..sd].iter().rev().find_map(|s| s.key("vrf")).unwrap_or("default").to_string();
    let rest = &steps[sd + 1..];
    let Some(rl) = rest.first() else {
        return Ok(Target::Every { vrf: Some(vrf) });
    };
    if rl.local_name() != "route-list" {
        return Ok(Target::Outside);
    }
    let (Some(prefix), Some(afi)) = (rl.key("prefix"), rl.key("afi-safi")) else {
        return Err(bad("route-list step needs keys prefix and afi-safi"));
    };
    let key = RouteKey { vrf, prefix: parse_prefix(prefix, afi)?, afi_safi: afi.to_string() };
    Ok(Target::Route { key, rest: &rest[1..] })
}

/// Which routes of staticd's running configuration a commit's judgement
/// depends on, worked out from the candidate's edits alone (fed in the
/// order FRR applies them: per request its updates, then its deletes).
///
/// A route the edits remove last (its `route-list` entry, or everything
/// around it) is gone after the commit whatever it was before: a removal,
/// which [`RouteChange::intent`] never judges. Routes the edits never
/// touch keep their members (or go with a removal of everything). Routes
/// outside the default VRF are never judged. Only the other touched
/// routes need reading: the resulting member set of each is its running
/// one with the edits applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// Touched routes: whether the outcome depends on the running state
    /// (false: removed last), and the `route-list` path to read it at.
    touched: BTreeMap<RouteKey, (bool, Vec<Step>)>,
    /// A load: the whole configuration is needed.
    everything: bool,
}

impl ReadPlan {
    /// Notes one update (`delete = false`) or delete path.
    pub fn note(&mut self, steps: &[Step], delete: bool) -> Result<(), RoutesError> {
        match locate(steps)? {
            Target::Outside => {}
            Target::Every { vrf } => {
                if delete {
                    for (k, (depends, _)) in self.touched.iter_mut() {
                        if vrf.as_ref().is_none_or(|v| *v == k.vrf) {
                            *depends = false;
                        }
                    }
                }
            }
            Target::Route { key, rest } => {
                let removed = delete && rest.is_empty();
                let at = steps.len() - rest.len();
                let entry = self.touched.entry(key).or_insert_with(|| (false, steps[..at].to_vec()));
                entry.0 = !removed;
            }
        }
        Ok(())
    }

    /// Notes a `LoadToCandidate`: everything must be read.
    pub fn note_load(&mut self) {
        self.everything = true;
    }

    /// Whether the whole configuration must be read.
    pub fn needs_everything(&self) -> bool {
        self.everything
    }

    /// The routes to read, each with the `route-list` entry's path steps.
    pub fn routes(&self) -> impl Iterator<Item = (&RouteKey, &[Step])> {
        self.touched
            .iter()
            .filter(|(k, (depends, _))| *depends && k.vrf == "default")
            .map(|(k, (_, steps))| (k, steps.as_slice()))
    }
}

/// A member of a JSON object by its name with or without the module
/// prefix FRR puts on top-level nodes (`frr-staticd:path-list`).
fn member<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let m = v.as_object()?;
    m.get(name).or_else(|| m.iter().find(|(k, _)| k.rsplit(':').next() == Some(name)).map(|(_, v)| v))
}

/// Merges the `path-list` entries of one route-list entry `r` into `paths`.
fn merge_paths(r: &Value, prefix: &str, paths: &mut Paths) -> Result<(), RoutesError> {
    for p in member(r, "path-list").and_then(Value::as_array).into_iter().flatten() {
        let (Some(table), Some(distance)) = (num(p.get("table-id")), num(p.get("distance"))) else {
            return Err(bad(format!("path-list of {prefix} without table-id or distance")));
        };
        let nhs = paths.entry((table, distance)).or_default();
        let list = p.get("frr-nexthops").and_then(|n| n.get("nexthop")).and_then(Value::as_array);
        for nh in list.into_iter().flatten() {
            nhs.insert(parse_nexthop(|k| text(nh, k).map(str::to_string))?);
        }
    }
    Ok(())
}

impl StaticRoutes {
    /// Reads the routes out of a JSON data tree (a `Get` answer, or the
    /// config of a `LoadToCandidate`), wherever in the tree staticd's
    /// container sits.
    pub fn from_json(text_in: &str) -> Result<StaticRoutes, RoutesError> {
        let mut out = StaticRoutes::default();
        if text_in.trim().is_empty() {
            return Ok(out);
        }
        let v: Value = serde_json::from_str(text_in).map_err(|e| bad(format!("not a JSON data tree: {e}")))?;
        out.merge_json(&v, "default")?;
        Ok(out)
    }

    fn merge_json(&mut self, v: &Value, vrf: &str) -> Result<(), RoutesError> {
        match v {
            Value::Object(m) => {
                let vrf = m.get("vrf").and_then(Value::as_str).unwrap_or(vrf).to_string();
                for (k, child) in m {
                    if k == "frr-staticd:staticd" || k == "staticd" {
                        self.merge_staticd(child, &vrf)?;
                    } else {
                        self.merge_json(child, &vrf)?;
                    }
                }
            }
            Value::Array(a) => {
                for child in a {
                    self.merge_json(child, vrf)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn merge_staticd(&mut self, v: &Value, vrf: &str) -> Result<(), RoutesError> {
        for r in member(v, "route-list").and_then(Value::as_array).into_iter().flatten() {
            let (Some(prefix), Some(afi)) = (text(r, "prefix"), text(r, "afi-safi")) else {
                return Err(bad("route-list entry without prefix or afi-safi"));
            };
            let key = RouteKey { vrf: vrf.to_string(), prefix: parse_prefix(prefix, afi)?, afi_safi: afi.to_string() };
            merge_paths(r, prefix, self.routes.entry(key).or_default())?;
        }
        Ok(())
    }

    /// Reads one route out of the answer to a `Get` of its `route-list`
    /// entry and merges it in as `key`. FRR 8.4 answers a `Get` of
    /// `route-list[...]/prefix` with that leaf and its following siblings,
    /// i.e. the entry's members (`frr-staticd:prefix`, `frr-staticd:path-list`,
    /// ...); a tree that holds the entry (a `route-list` list, or a whole
    /// configuration) is read too, keeping only `key`. An empty answer is
    /// no route.
    pub fn merge_route_json(&mut self, text_in: &str, key: &RouteKey) -> Result<(), RoutesError> {
        if text_in.trim().is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(text_in).map_err(|e| bad(format!("not a JSON data tree: {e}")))?;
        let mut found = StaticRoutes::default();
        if member(&v, "path-list").is_some() || member(&v, "prefix").is_some() {
            // The entry's members: check they are the entry asked for.
            if let (Some(prefix), Some(afi)) = (member(&v, "prefix"), member(&v, "afi-safi")) {
                let (prefix, afi) = (prefix.as_str().unwrap_or_default(), afi.as_str().unwrap_or_default());
                if parse_prefix(prefix, afi)? != key.prefix || afi != key.afi_safi {
                    return Err(bad(format!("asked for route {} and got {prefix} ({afi})", key.prefix)));
                }
            }
            let mut paths = Paths::new();
            merge_paths(&v, &key.prefix.to_string(), &mut paths)?;
            found.routes.insert(key.clone(), paths);
        } else if member(&v, "route-list").is_some() {
            found.merge_staticd(&v, &key.vrf)?;
        } else {
            found.merge_json(&v, "default")?;
        }
        if let Some(paths) = found.routes.remove(key) {
            self.routes.entry(key.clone()).or_default().extend(paths);
        }
        Ok(())
    }

    /// Applies one `EditCandidate` update (`delete = false`) or delete of
    /// `steps`. Paths outside staticd's routes change nothing here.
    pub fn edit(&mut self, steps: &[Step], delete: bool) -> Result<(), RoutesError> {
        let (key, rest) = match locate(steps)? {
            Target::Outside => return Ok(()),
            Target::Every { vrf } => {
                if delete {
                    self.routes.retain(|k, _| vrf.as_ref().is_some_and(|v| *v != k.vrf));
                }
                return Ok(());
            }
            Target::Route { key, rest } => (key, rest),
        };
        let Some(pl) = rest.first() else {
            if delete {
                self.routes.remove(&key);
            } else {
                self.routes.entry(key).or_default();
            }
            return Ok(());
        };
        if pl.local_name() != "path-list" {
            // src-list (source-specific routes) and leaves: not judged.
            return Ok(());
        }
        let table = pl.key("table-id").and_then(|t| t.parse().ok());
        let distance = pl.key("distance").and_then(|d| d.parse().ok());
        let (Some(table), Some(distance)) = (table, distance) else {
            return Err(bad("path-list step needs numeric keys table-id and distance"));
        };
        let path = (table, distance);
        match (rest.get(1).map(Step::local_name), rest.get(2)) {
            (None, _) if delete => {
                if let Some(paths) = self.routes.get_mut(&key) {
                    paths.remove(&path);
                }
            }
            (Some("frr-nexthops"), None) if delete => {
                if let Some(nhs) = self.routes.get_mut(&key).and_then(|p| p.get_mut(&path)) {
                    nhs.clear();
                }
            }
            (Some("frr-nexthops"), Some(nh)) if nh.local_name() == "nexthop" => {
                let nexthop = parse_nexthop(|k| nh.key(k).map(str::to_string))?;
                let leaf = rest.len() > 3;
                if delete && !leaf {
                    if let Some(nhs) = self.routes.get_mut(&key).and_then(|p| p.get_mut(&path)) {
                        nhs.remove(&nexthop);
                    }
                } else if !delete {
                    self.routes.entry(key).or_default().entry(path).or_default().insert(nexthop);
                }
            }
            _ if !delete => {
                self.routes.entry(key).or_default().entry(path).or_default();
            }
            _ => {}
        }
        Ok(())
    }

    /// The members zebra installs for `key`: the nexthops of the path with
    /// the lowest distance that has any, with its table.
    pub fn installed(&self, key: &RouteKey) -> Option<(u32, &BTreeSet<Nexthop>)> {
        let paths = self.routes.get(key)?;
        paths.iter().filter(|(_, n)| !n.is_empty()).min_by_key(|((_, d), _)| *d).map(|((t, _), n)| (*t, n))
    }
}

/// One route whose installed members a commit changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteChange {
    /// The route.
    pub key: RouteKey,
    /// Kernel table (0 in staticd means main).
    pub table: u32,
    /// Members before (empty: no route).
    pub before: BTreeSet<Nexthop>,
    /// Members after (empty: the route goes away).
    pub after: BTreeSet<Nexthop>,
}

impl RouteChange {
    /// The route-replace intent for the detectors: the resulting member
    /// set. `None` when the route goes away, is a blackhole, or lives in
    /// another VRF (the guard judges the default VRF's tables only).
    pub fn intent(&self) -> Option<Intent> {
        if self.after.is_empty() || self.key.vrf != "default" {
            return None;
        }
        if self.after.iter().any(|n| n.nh_type == "blackhole") {
            return None;
        }
        let table = if self.table == 0 { crate::model::TABLE_MAIN } else { self.table };
        let members =
            self.after.iter().map(|n| MemberSpec { gateway: n.gateway, dev: n.interface.clone(), weight: 1 }).collect();
        Some(Intent::RouteReplace(RouteSpec {
            table,
            dst: crate::model::routes::normalize(self.key.prefix),
            metric: None,
            members,
        }))
    }
}

/// Routes whose installed members differ between `before` and `after`.
pub fn changes(before: &StaticRoutes, after: &StaticRoutes) -> Vec<RouteChange> {
    let keys: BTreeSet<&RouteKey> = before.routes.keys().chain(after.routes.keys()).collect();
    let empty = BTreeSet::new();
    let mut out = Vec::new();
    for key in keys {
        let (tb, b) = before.installed(key).unwrap_or((0, &empty));
        let (ta, a) = after.installed(key).unwrap_or((tb, &empty));
        if a != b || (ta != tb && !a.is_empty() && !b.is_empty()) {
            out.push(RouteChange { key: key.clone(), table: ta, before: b.clone(), after: a.clone() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frr::xpath::parse;

    const RUNNING: &str = r#"{"frr-routing:routing":{"control-plane-protocols":{"control-plane-protocol":[
        {"type":"frr-staticd:staticd","name":"staticd","vrf":"default","frr-staticd:staticd":{"route-list":[
          {"prefix":"fd00:ecec:f::1/128","afi-safi":"frr-routing:ipv6-unicast","path-list":[
            {"table-id":0,"distance":1,"frr-nexthops":{"nexthop":[
              {"nh-type":"ip6","vrf":"default","gateway":"fd00:1::2","interface":"rgr1"},
              {"nh-type":"ip6","vrf":"default","gateway":"fd00:2::2","interface":"rgr2"}]}}]}]}}]}}}"#;

    const BASE: &str = "/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-staticd:staticd'][name='staticd'][vrf='default']/frr-staticd:staticd";

    fn rl(prefix: &str) -> String {
        format!("{BASE}/route-list[prefix='{prefix}'][afi-safi='frr-routing:ipv6-unicast']")
    }

    fn nh(prefix: &str, i: u32) -> String {
        format!(
            "{}/path-list[table-id='0'][distance='1']/frr-nexthops/nexthop[nh-type='ip6'][vrf='default'][gateway='fd00:{i}::2'][interface='rgr{i}']",
            rl(prefix)
        )
    }

    #[test]
    fn reads_running_config_and_judges_the_resulting_member_set() {
        let before = StaticRoutes::from_json(RUNNING).unwrap();
        assert_eq!(before.routes.len(), 1);
        let mut after = before.clone();
        after.edit(&parse(&nh("fd00:ecec:f::1/128", 3)).unwrap(), false).unwrap();
        let ch = changes(&before, &after);
        assert_eq!(ch.len(), 1);
        let Some(Intent::RouteReplace(spec)) = ch[0].intent() else { panic!("{ch:?}") };
        assert_eq!(spec.table, 254);
        assert_eq!(spec.dst.to_string(), "fd00:ecec:f::1/128");
        let devs: Vec<_> = spec.members.iter().map(|m| m.dev.as_str()).collect();
        assert_eq!(devs, vec!["rgr1", "rgr2", "rgr3"], "running members plus the candidate's");
    }

    #[test]
    fn identical_edits_change_nothing_and_deletes_remove() {
        let before = StaticRoutes::from_json(RUNNING).unwrap();
        let mut same = before.clone();
        same.edit(&parse(&nh("fd00:ecec:f::1/128", 1)).unwrap(), false).unwrap();
        assert!(changes(&before, &same).is_empty());
        let mut del = before.clone();
        del.edit(&parse(&nh("fd00:ecec:f::1/128", 2)).unwrap(), true).unwrap();
        let ch = changes(&before, &del);
        assert_eq!(ch[0].after.len(), 1);
        let mut gone = before.clone();
        gone.edit(&parse(&rl("fd00:ecec:f::1/128")).unwrap(), true).unwrap();
        let ch = changes(&before, &gone);
        assert!(ch[0].after.is_empty() && ch[0].intent().is_none());
        // A leaf under a nexthop is no membership change.
        let mut leaf = before.clone();
        leaf.edit(&parse(&format!("{}/onlink", nh("fd00:ecec:f::1/128", 1))).unwrap(), true).unwrap();
        assert!(changes(&before, &leaf).is_empty());
        let mut all = before.clone();
        all.edit(&parse(BASE).unwrap(), true).unwrap();
        assert!(all.routes.is_empty());
    }

    #[test]
    fn new_route_and_bad_input() {
        let mut c = StaticRoutes::default();
        c.edit(&parse(&nh("2001:db8:77::/64", 1)).unwrap(), false).unwrap();
        let ch = changes(&StaticRoutes::default(), &c);
        assert_eq!(ch.len(), 1);
        assert!(ch[0].before.is_empty());
        let e = c.edit(&parse(&nh("2001:db8:zz::/64", 1)).unwrap(), false).unwrap_err();
        assert!(e.to_string().contains("invalid prefix `2001:db8:zz::/64`"), "{e}");
        let e = c.edit(&parse(&nh("10.0.0.0/8", 1)).unwrap(), false).unwrap_err();
        assert!(e.to_string().contains("does not match afi-safi"), "{e}");
        assert!(StaticRoutes::from_json("{not json").is_err());
        assert!(StaticRoutes::from_json("").unwrap().routes.is_empty());
    }

    /// FRR 8.4.4 staticd's answer to `Get(CONFIG, JSON)` of
    /// `.../route-list[prefix='2001:db8:1::/64'][afi-safi='frr-routing:ipv6-unicast']/prefix`
    /// (captured from the test cache's gRPC build): the entry's members.
    const ROUTE_ANSWER: &str = r#"{
  "frr-staticd:prefix": "2001:db8:1::/64",
  "frr-staticd:afi-safi": "frr-routing:ipv6-unicast",
  "frr-staticd:path-list": [
    {"table-id": 0, "distance": 1, "frr-nexthops": {"nexthop": [
      {"nh-type": "ip6-ifindex", "vrf": "default", "gateway": "fd00:1::2", "interface": "px0"},
      {"nh-type": "ip6-ifindex", "vrf": "default", "gateway": "fd00:2::2", "interface": "px1"}]}},
    {"table-id": 0, "distance": 10, "frr-nexthops": {"nexthop": [
      {"nh-type": "ip6-ifindex", "vrf": "default", "gateway": "fd00:1::3", "interface": "px0"}]}}
  ]
}"#;

    fn key(prefix: &str) -> RouteKey {
        RouteKey {
            vrf: "default".into(),
            prefix: parse_prefix(prefix, "frr-routing:ipv6-unicast").unwrap(),
            afi_safi: "frr-routing:ipv6-unicast".into(),
        }
    }

    #[test]
    fn reads_one_route_from_frrs_answer_and_from_whole_trees() {
        let k = key("2001:db8:1::/64");
        let mut r = StaticRoutes::default();
        r.merge_route_json(ROUTE_ANSWER, &k).unwrap();
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[&k].len(), 2, "both paths");
        let (_, nhs) = r.installed(&k).unwrap();
        assert_eq!(nhs.len(), 2, "distance 1 is installed");
        // Another route's answer is an error, not a silent mix-up.
        let e = StaticRoutes::default().merge_route_json(ROUTE_ANSWER, &key("2001:db8:2::/64")).unwrap_err();
        assert!(e.to_string().contains("asked for route 2001:db8:2::/64"), "{e}");
        // A whole configuration (or a route-list with siblings): only `k`.
        let mut w = StaticRoutes::default();
        w.merge_route_json(RUNNING, &key("fd00:ecec:f::1/128")).unwrap();
        assert_eq!(w, StaticRoutes::from_json(RUNNING).unwrap());
        let mut none = StaticRoutes::default();
        none.merge_route_json(RUNNING, &k).unwrap();
        assert!(none.routes.is_empty());
        let list = r#"{"frr-staticd:route-list":[{"prefix":"2001:db8:9::/64","afi-safi":"frr-routing:ipv6-unicast"},
            {"prefix":"2001:db8:1::/64","afi-safi":"frr-routing:ipv6-unicast","path-list":[{"table-id":0,"distance":1}]}]}"#;
        let mut l = StaticRoutes::default();
        l.merge_route_json(list, &k).unwrap();
        assert_eq!(l.routes.keys().collect::<Vec<_>>(), vec![&k]);
        assert!(StaticRoutes::default().merge_route_json("{bad", &k).is_err());
        let mut blank = StaticRoutes::default();
        blank.merge_route_json(" ", &k).unwrap();
        assert!(blank.routes.is_empty());
    }

    fn plan(edits: &[(&str, bool)]) -> ReadPlan {
        let mut p = ReadPlan::default();
        for (path, delete) in edits {
            p.note(&parse(path).unwrap(), *delete).unwrap();
        }
        p
    }

    fn read(p: &ReadPlan) -> Vec<String> {
        p.routes().map(|(k, steps)| format!("{} {}", k.prefix, crate::frr::xpath::render(steps))).collect()
    }

    #[test]
    fn reads_only_routes_whose_outcome_depends_on_the_running_config() {
        let a = "2001:db8:77::/64";
        // An added nexthop: the route's running members matter.
        let p = plan(&[(&nh(a, 1), false)]);
        assert_eq!(read(&p), vec![format!("{a} {}", rl(a))], "read at the route-list entry");
        // The route removed: gone whatever it was.
        assert!(read(&plan(&[(&rl(a), true)])).is_empty());
        assert!(read(&plan(&[(&nh(a, 1), false), (&rl(a), true)])).is_empty());
        // Removed, then added again: compared with the running route.
        assert_eq!(read(&plan(&[(&rl(a), true), (&nh(a, 2), false)])).len(), 1);
        // A nexthop or path removed: the rest of the route matters.
        assert_eq!(read(&plan(&[(&nh(a, 1), true)])).len(), 1);
        // Everything removed after an add; a VRF-scoped removal keeps other VRFs' routes.
        assert!(read(&plan(&[(&nh(a, 1), false), (BASE, true)])).is_empty());
        assert!(read(&plan(&[(&nh(a, 1), false), ("/frr-routing:routing", true)])).is_empty());
        let other_vrf = "/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-staticd:staticd'][name='staticd'][vrf='red']";
        assert_eq!(read(&plan(&[(&nh(a, 1), false), (other_vrf, true)])).len(), 1);
        // Routes of other VRFs are never judged; paths outside routes touch none.
        assert!(read(&plan(&[(&nh(a, 1).replace("[vrf='default']/frr-staticd", "[vrf='red']/frr-staticd"), false)]))
            .is_empty());
        assert!(read(&plan(&[("/frr-interface:lib/interface[name='x']/description", false)])).is_empty());
        // Two routes: each read once.
        let b = "2001:db8:78::/64";
        assert_eq!(read(&plan(&[(&nh(a, 1), false), (&nh(a, 2), false), (&nh(b, 1), false)])).len(), 2);
        let mut p = plan(&[(&rl(a), true)]);
        assert!(!p.needs_everything());
        p.note_load();
        assert!(p.needs_everything());
        assert!(ReadPlan::default().note(&parse(&rl("2001:db8:zz::/64")).unwrap(), false).is_err());
    }

    #[test]
    fn judging_with_the_routes_read_equals_judging_with_everything() {
        // Running: fd00:ecec:f::1/128 with two members, plus an unrelated route.
        let mut running = StaticRoutes::from_json(RUNNING).unwrap();
        running.edit(&parse(&nh("2001:db8:99::/64", 3)).unwrap(), false).unwrap();
        let cases: Vec<Vec<(String, bool)>> = vec![
            vec![(nh("fd00:ecec:f::1/128", 3), false)],
            vec![(nh("fd00:ecec:f::1/128", 2), true)],
            vec![(rl("fd00:ecec:f::1/128"), true), (nh("fd00:ecec:f::1/128", 1), false)],
            vec![(nh("2001:db8:77::/64", 1), false), (rl("fd00:ecec:f::1/128"), true)],
            vec![(BASE.to_string(), true), (nh("2001:db8:99::/64", 3), false)],
        ];
        let intents = |before: &StaticRoutes, edits: &[(String, bool)]| {
            let mut after = before.clone();
            for (p, d) in edits {
                after.edit(&parse(p).unwrap(), *d).unwrap();
            }
            changes(before, &after).iter().filter_map(RouteChange::intent).collect::<Vec<_>>()
        };
        for edits in &cases {
            let mut p = ReadPlan::default();
            for (path, d) in edits {
                p.note(&parse(path).unwrap(), *d).unwrap();
            }
            let mut partial = StaticRoutes::default();
            for (k, _) in p.routes() {
                if let Some(paths) = running.routes.get(k) {
                    partial.routes.insert(k.clone(), paths.clone());
                }
            }
            assert_eq!(intents(&partial, edits), intents(&running, edits), "{edits:?}");
        }
    }

    #[test]
    fn lowest_distance_path_is_installed() {
        let mut c = StaticRoutes::default();
        c.edit(&parse(&nh("2001:db8:77::/64", 1)).unwrap(), false).unwrap();
        let far = nh("2001:db8:77::/64", 2).replace("[distance='1']", "[distance='10']");
        c.edit(&parse(&far).unwrap(), false).unwrap();
        let key = c.routes.keys().next().unwrap().clone();
        let (_, nhs) = c.installed(&key).unwrap();
        assert_eq!(nhs.iter().next().unwrap().interface, "rgr1");
    }
}
