//! Change intents: what an operator or automation proposes, in domain terms.
//!
//! Parsed from the CLI/gRPC text forms with errors that name the offending
//! token, so a typo never turns into a different change.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// One proposed change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intent {
    /// `ip route replace` of one route.
    RouteReplace(RouteSpec),
    /// A sysctl write (`net.ipv6.fib_multipath_hash_policy=3`).
    Sysctl {
        /// Dotted name.
        key: String,
        /// New value.
        value: String,
    },
    /// One line of FRR configuration, applied with vtysh in config mode.
    FrrCli {
        /// The line, e.g. `ipv6 forwarding`.
        line: String,
    },
    /// Hairpin mode of a bridge port.
    LinkHairpin {
        /// The bridge port.
        dev: String,
        /// On or off.
        on: bool,
    },
    /// `ip addr add ADDR/LEN dev IF [nodad]`.
    AddressAdd {
        /// The address with its prefix length (host bits kept).
        address: IpNetwork,
        /// Interface name.
        dev: String,
        /// IPv6 without duplicate address detection (IFA_F_NODAD).
        #[serde(default)]
        nodad: bool,
    },
    /// Create an IP tunnel, or change an existing one's ends:
    /// `ip link add|set NAME type KIND remote ADDR [local ADDR]`.
    Tunnel {
        /// Interface name.
        name: String,
        /// Link kind: sit, ipip, gre, ip6tnl or ip6gre (`tunnel_kind` in
        /// JSON: `kind` names the intent).
        #[serde(rename = "tunnel_kind")]
        kind: String,
        /// Remote end.
        remote: IpAddr,
        /// Local end, when given.
        local: Option<IpAddr>,
    },
    /// A whole desired FRR configuration: what `frr-reload.py` would change.
    FrrConfig {
        /// The file's text.
        text: String,
        /// The difference from the running configuration, as commands
        /// (deletions as `no ...`, then additions; a command in a context
        /// carries its context lines).
        diff: Vec<String>,
    },
    /// `ip nexthop replace id ID group A[,W]/B[,W]/...`: new members of a
    /// nexthop group, in order.
    NexthopGroup {
        /// The group's id.
        id: u32,
        /// Member nexthop ids with their weights.
        members: Vec<(u32, u16)>,
    },
    /// `ip route add local PREFIX dev IF table local`: makes every address
    /// in PREFIX local to this node.
    LocalRoute {
        /// The prefix (host bits cleared).
        dst: IpNetwork,
        /// Interface name.
        dev: String,
    },
}

impl Intent {
    /// The kernel sysctls this intent sets, as far as the guard knows:
    /// a sysctl intent is itself; FRR's `[no] ip[v6] forwarding` are zebra's
    /// writes of `net.ipv{4,6}.conf.all.forwarding`. Other FRR lines set
    /// nothing the detectors judge through sysctls.
    pub fn effective_sysctls(&self) -> Vec<(String, String)> {
        match self {
            Intent::Sysctl { key, value } => vec![(key.clone(), value.clone())],
            Intent::FrrCli { line } => frr_line_sysctl(line).into_iter().collect(),
            // Top-level commands only: forwarding is not set inside a context.
            Intent::FrrConfig { diff, .. } => diff.iter().filter_map(|c| frr_line_sysctl(c)).collect(),
            Intent::RouteReplace(_)
            | Intent::LinkHairpin { .. }
            | Intent::AddressAdd { .. }
            | Intent::Tunnel { .. }
            | Intent::NexthopGroup { .. }
            | Intent::LocalRoute { .. } => Vec::new(),
        }
    }
}

/// The sysctl a top-level FRR command sets: zebra's `[no] ip[v6]
/// forwarding` write `net.ipv{4,6}.conf.all.forwarding`.
fn frr_line_sysctl(line: &str) -> Option<(String, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (no, rest) = match words.split_first() {
        Some((&"no", rest)) => (true, rest),
        _ => (false, &words[..]),
    };
    let fam = match rest {
        ["ipv6", "forwarding"] => "ipv6",
        ["ip", "forwarding"] => "ipv4",
        _ => return None,
    };
    Some((format!("net.{fam}.conf.all.forwarding"), if no { "0" } else { "1" }.to_string()))
}

/// Parses `IF hairpin on|off` for `--link`.
pub fn parse_link(text: &str) -> Result<Intent, IntentError> {
    const W: &str = "--link";
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [dev, "hairpin", v] => {
            let on = match *v {
                "on" => true,
                "off" => false,
                other => return Err(bad(W, format!("`hairpin {other}`: expected on or off"))),
            };
            if dev.len() > 15 || dev.contains('/') {
                return Err(bad(W, format!("`{dev}` is not an interface name")));
            }
            Ok(Intent::LinkHairpin { dev: dev.to_string(), on })
        }
        _ => Err(bad(W, format!("`{text}`: expected `IF hairpin on|off`"))),
    }
}

/// Checks one FRR configuration line for `--frr-cli`.
pub fn parse_frr_cli(text: &str) -> Result<Intent, IntentError> {
    let line = text.trim();
    if line.is_empty() {
        return Err(bad("--frr-cli", "empty line"));
    }
    if line.contains('\n') || line.chars().any(|c| c.is_control()) {
        return Err(bad("--frr-cli", "one configuration line only (no newlines or control characters)"));
    }
    Ok(Intent::FrrCli { line: line.to_string() })
}

/// A route as the operator writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Table id (default main).
    pub table: u32,
    /// Destination prefix (host bits cleared).
    pub dst: IpNetwork,
    /// Metric, when given.
    pub metric: Option<u32>,
    /// Members in order.
    pub members: Vec<MemberSpec>,
}

/// One member of a proposed route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSpec {
    /// Gateway (`via`).
    pub gateway: Option<IpAddr>,
    /// Interface name (`dev`).
    pub dev: String,
    /// Weight (default 1).
    pub weight: u16,
}

/// A proposal that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct IntentError {
    /// Which input (e.g. "--route-replace").
    pub what: String,
    /// What is wrong, naming the token.
    pub reason: String,
}

fn bad(what: &str, reason: impl Into<String>) -> IntentError {
    IntentError { what: what.into(), reason: reason.into() }
}

/// Parses `PREFIX [table N] [metric N] nexthop via GW dev DEV [weight W] [nexthop ...]`
/// or the single-path form `PREFIX [via GW] dev DEV [table N] [metric N]`.
pub fn parse_route_replace(text: &str) -> Result<RouteSpec, IntentError> {
    const W: &str = "--route-replace";
    let mut toks = text.split_whitespace().peekable();
    let prefix = toks.next().ok_or_else(|| bad(W, "empty; expected `PREFIX nexthop via GW dev DEV ...`"))?;
    let dst: IpNetwork =
        prefix.parse().map_err(|_| bad(W, format!("`{prefix}` is not a prefix (e.g. 2001:db8::/32)")))?;
    let dst = crate::model::routes::normalize(dst);
    let mut spec = RouteSpec { table: crate::model::TABLE_MAIN, dst, metric: None, members: Vec::new() };
    let mut cur: Option<MemberSpec> = None;
    let mut single: Option<MemberSpec> = None;
    let num = |tok: Option<&str>, key: &str| -> Result<u32, IntentError> {
        let t = tok.ok_or_else(|| bad(W, format!("`{key}` needs a value")))?;
        t.parse().map_err(|_| bad(W, format!("`{key} {t}`: `{t}` is not a number")))
    };
    while let Some(tok) = toks.next() {
        match tok {
            "table" => spec.table = num(toks.next(), "table")?,
            "metric" | "priority" | "preference" => spec.metric = Some(num(toks.next(), tok)?),
            "nexthop" => {
                if single.is_some() {
                    return Err(bad(W, "mixes single-path `via/dev` with `nexthop` members"));
                }
                if let Some(m) = cur.take() {
                    spec.members.push(m);
                }
                cur = Some(MemberSpec { gateway: None, dev: String::new(), weight: 1 });
            }
            "via" | "dev" | "weight" => {
                let target = match cur.as_mut() {
                    Some(m) => m,
                    None => single.get_or_insert(MemberSpec { gateway: None, dev: String::new(), weight: 1 }),
                };
                let v = toks.next().ok_or_else(|| bad(W, format!("`{tok}` needs a value")))?;
                match tok {
                    "via" => {
                        let gw: IpAddr =
                            v.parse().map_err(|_| bad(W, format!("`via {v}`: `{v}` is not an address")))?;
                        if gw.is_ipv4() != dst.is_ipv4() {
                            return Err(bad(W, format!("gateway {gw} is not of the family of {dst}")));
                        }
                        target.gateway = Some(gw);
                    }
                    "dev" => target.dev = v.to_string(),
                    _ => {
                        let w: u16 = v.parse().map_err(|_| bad(W, format!("`weight {v}` is not a number")))?;
                        if w == 0 {
                            return Err(bad(W, "weight must be at least 1"));
                        }
                        target.weight = w;
                    }
                }
            }
            other => return Err(bad(W, format!("unexpected `{other}`"))),
        }
    }
    spec.members.extend(cur);
    spec.members.extend(single);
    if spec.members.is_empty() {
        return Err(bad(W, "no nexthop given; expected `nexthop via GW dev DEV` (or `via GW dev DEV`)"));
    }
    if let Some(m) = spec.members.iter().find(|m| m.dev.is_empty()) {
        let via = m.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        return Err(bad(W, format!("member{via} has no `dev`")));
    }
    Ok(spec)
}

/// Parses `ADDR[/LEN] dev IF` for `--address-add` (as `ip addr add`
/// takes it; without `/LEN` the address is a host address, /32 or /128).
pub fn parse_address_add(text: &str) -> Result<Intent, IntentError> {
    const W: &str = "--address-add";
    let mut toks = text.split_whitespace();
    let first = toks.next().ok_or_else(|| bad(W, "empty; expected `ADDR/LEN dev IF`"))?;
    let address: IpNetwork = match first.split_once('/') {
        Some(_) => first.parse().map_err(|_| bad(W, format!("`{first}` is not an address/prefix-length")))?,
        None => {
            let a: IpAddr = first.parse().map_err(|_| bad(W, format!("`{first}` is not an address")))?;
            IpNetwork::from(a)
        }
    };
    if address.ip().is_unspecified() || address.ip().is_multicast() {
        return Err(bad(W, format!("`{first}` cannot be an interface address")));
    }
    let rest: Vec<&str> = toks.collect();
    let nodad = rest.contains(&"nodad");
    if nodad && address.is_ipv4() {
        return Err(bad(W, "`nodad` is for IPv6 addresses"));
    }
    let dev = dev_clause(W, rest.into_iter().filter(|t| *t != "nodad"), "ADDR/LEN dev IF [nodad]")?;
    Ok(Intent::AddressAdd { address, dev, nodad })
}

/// The rest of `--address-add` / `--local-route`: exactly one `dev IF`
/// (`form` is the whole flag's form, for the error).
fn dev_clause<'a>(w: &str, mut toks: impl Iterator<Item = &'a str>, form: &str) -> Result<String, IntentError> {
    let mut dev = None;
    while let Some(tok) = toks.next() {
        match tok {
            "dev" => {
                let v = toks.next().ok_or_else(|| bad(w, "`dev` needs a value"))?;
                if !ifname_ok(v) {
                    return Err(bad(w, format!("`dev {v}`: `{v}` is not an interface name")));
                }
                if dev.replace(v.to_string()).is_some() {
                    return Err(bad(w, format!("`dev {v}`: `dev` given twice")));
                }
            }
            other => return Err(bad(w, format!("unexpected `{other}`"))),
        }
    }
    dev.ok_or_else(|| bad(w, format!("no `dev`; expected `{form}`")))
}

fn ifname_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= 15 && !v.contains('/') && v != "." && v != ".." && !v.contains(char::is_whitespace)
}

/// Tunnel kinds `--tunnel` takes, and whether their ends are IPv6.
const TUNNEL_KINDS: &[(&str, bool)] =
    &[("sit", false), ("ipip", false), ("gre", false), ("ip6tnl", true), ("ip6gre", true)];

/// Parses `NAME type KIND remote ADDR [local ADDR]` for `--tunnel` (create
/// the tunnel, or change the ends of an existing one).
pub fn parse_tunnel(text: &str) -> Result<Intent, IntentError> {
    const W: &str = "--tunnel";
    let mut toks = text.split_whitespace();
    let name = toks.next().ok_or_else(|| bad(W, "empty; expected `NAME type KIND remote ADDR [local ADDR]`"))?;
    if !ifname_ok(name) || ["type", "remote", "local"].contains(&name) {
        return Err(bad(W, format!("`{name}` is not an interface name; expected `NAME type KIND remote ADDR`")));
    }
    let (mut kind, mut remote, mut local) = (None, None, None);
    while let Some(tok) = toks.next() {
        let v = toks.next().ok_or_else(|| bad(W, format!("`{tok}` needs a value")))?;
        let addr = |v: &str| -> Result<IpAddr, IntentError> {
            v.parse().map_err(|_| bad(W, format!("`{tok} {v}`: `{v}` is not an address")))
        };
        let dup = match tok {
            "type" | "mode" => {
                let k = TUNNEL_KINDS
                    .iter()
                    .find(|(k, _)| *k == v)
                    .ok_or_else(|| bad(W, format!("`{tok} {v}`: expected one of sit, ipip, gre, ip6tnl, ip6gre")))?;
                kind.replace(*k).is_some()
            }
            "remote" => remote.replace(addr(v)?).is_some(),
            "local" => local.replace(addr(v)?).is_some(),
            other => return Err(bad(W, format!("unexpected `{other}`"))),
        };
        if dup {
            return Err(bad(W, format!("`{tok}` given twice")));
        }
    }
    let (kind, v6) = kind.ok_or_else(|| bad(W, "no `type KIND`"))?;
    let remote: IpAddr = remote.ok_or_else(|| bad(W, "no `remote ADDR`"))?;
    for (what, a) in [("remote", Some(remote)), ("local", local)] {
        if let Some(a) = a {
            if a.is_ipv6() != v6 {
                return Err(bad(
                    W,
                    format!("`{what} {a}` is not an IPv{} address, as {kind} needs", if v6 { 6 } else { 4 }),
                ));
            }
        }
    }
    if remote.is_unspecified() || remote.is_multicast() {
        return Err(bad(W, format!("`remote {remote}` cannot be a tunnel's remote end")));
    }
    Ok(Intent::Tunnel { name: name.to_string(), kind: kind.to_string(), remote, local })
}

/// Parses `[id] ID group A[,W]/B[,W]/...` for `--nexthop-group` (as `ip
/// nexthop replace` takes it).
pub fn parse_nexthop_group(text: &str) -> Result<Intent, IntentError> {
    const W: &str = "--nexthop-group";
    const FORM: &str = "expected `ID group A[,W]/B[,W]/...`";
    let words: Vec<&str> = text.split_whitespace().collect();
    let words = match words.as_slice() {
        ["id", rest @ ..] => rest,
        all => all,
    };
    let [id, "group", spec] = words else { return Err(bad(W, format!("`{text}`: {FORM}"))) };
    let id: u32 = id.parse().ok().filter(|&i| i > 0).ok_or_else(|| bad(W, format!("`{id}` is not a nexthop id")))?;
    let mut members: Vec<(u32, u16)> = Vec::new();
    for m in spec.split('/') {
        let (nh, weight) = match m.split_once(',') {
            Some((nh, w)) => {
                let w: u16 = w
                    .parse()
                    .ok()
                    .filter(|w| (1..=256).contains(w))
                    .ok_or_else(|| bad(W, format!("`{m}`: weight `{w}` is not 1..256")))?;
                (nh, w)
            }
            None => (m, 1),
        };
        let nh: u32 =
            nh.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad(W, format!("`{m}`: `{nh}` is not a nexthop id")))?;
        if nh == id {
            return Err(bad(W, format!("group {id} cannot contain itself")));
        }
        if members.iter().any(|(n, _)| *n == nh) {
            return Err(bad(W, format!("member {nh} given twice")));
        }
        members.push((nh, weight));
    }
    Ok(Intent::NexthopGroup { id, members })
}

/// Parses `PREFIX dev IF` for `--local-route` (`ip route add local PREFIX
/// dev IF table local`).
pub fn parse_local_route(text: &str) -> Result<Intent, IntentError> {
    const W: &str = "--local-route";
    let mut toks = text.split_whitespace();
    let first = toks.next().ok_or_else(|| bad(W, "empty; expected `PREFIX dev IF`"))?;
    let net: IpNetwork = match first.split_once('/') {
        Some(_) => first.parse().map_err(|_| bad(W, format!("`{first}` is not a prefix")))?,
        None => IpNetwork::from(first.parse::<IpAddr>().map_err(|_| bad(W, format!("`{first}` is not a prefix")))?),
    };
    let dst = IpNetwork::new(net.network(), net.prefix()).map_err(|_| bad(W, format!("`{first}` is not a prefix")))?;
    let dev = dev_clause(W, toks, "PREFIX dev IF")?;
    Ok(Intent::LocalRoute { dst, dev })
}

/// Parses `KEY=VALUE` for `--sysctl`, accepting dotted or slashed names.
pub fn parse_sysctl(text: &str) -> Result<Intent, IntentError> {
    const W: &str = "--sysctl";
    let (k, v) = text.split_once('=').ok_or_else(|| bad(W, format!("`{text}` is not KEY=VALUE")))?;
    let key = k.trim().trim_start_matches("/proc/sys/").replace('/', ".");
    let value = v.trim().to_string();
    if !key.starts_with("net.") || key.split('.').any(str::is_empty) {
        return Err(bad(W, format!("`{k}` is not a net.* sysctl name")));
    }
    if value.is_empty() || value.contains(char::is_whitespace) {
        return Err(bad(W, format!("`{v}` is not a single value")));
    }
    Ok(Intent::Sysctl { key, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_form_and_errors() {
        let t = parse_tunnel("rgsit type sit remote 192.0.2.7 local 10.0.0.1").unwrap();
        assert_eq!(
            t,
            Intent::Tunnel {
                name: "rgsit".into(),
                kind: "sit".into(),
                remote: "192.0.2.7".parse().unwrap(),
                local: Some("10.0.0.1".parse().unwrap())
            }
        );
        // `mode` as `ip tunnel` spells it, no local.
        assert!(matches!(
            parse_tunnel("t6 mode ip6tnl remote 2001:db8::1").unwrap(),
            Intent::Tunnel { local: None, .. }
        ));
        let e = |t: &str| parse_tunnel(t).unwrap_err().to_string();
        assert!(e("").contains("empty"));
        assert!(e("t type vxlan remote 10.0.0.1").contains("`type vxlan`: expected one of"));
        assert!(e("t type sit").contains("no `remote ADDR`"));
        assert!(e("t remote 10.0.0.1").contains("no `type KIND`"));
        assert!(e("t type sit remote 2001:db8::1").contains("not an IPv4 address, as sit needs"));
        assert!(e("t type ip6gre remote 10.0.0.1").contains("not an IPv6 address, as ip6gre needs"));
        assert!(e("t type sit remote nope").contains("`nope` is not an address"));
        assert!(e("t type sit remote 10.0.0.1 remote 10.0.0.2").contains("`remote` given twice"));
        assert!(e("t type sit remote 10.0.0.1 ttl").contains("`ttl` needs a value"));
        assert!(e("t type sit remote 10.0.0.1 ttl 64").contains("unexpected `ttl`"));
        assert!(e("t type sit remote 0.0.0.0").contains("cannot be a tunnel's remote"));
        assert!(e("averyveryverylongname type sit remote 10.0.0.1").contains("not an interface name"));
        assert_eq!(parse_tunnel("t type sit remote 10.0.0.1").unwrap().effective_sysctls(), vec![]);
    }

    #[test]
    fn a_frr_config_sets_what_its_top_level_lines_set() {
        let i = Intent::FrrConfig {
            text: String::new(),
            diff: vec![
                "no ip forwarding".into(),
                "router bgp 1\n bgp router-id 1.1.1.1".into(),
                "ipv6 forwarding".into(),
            ],
        };
        assert_eq!(
            i.effective_sysctls(),
            vec![
                ("net.ipv4.conf.all.forwarding".to_string(), "0".to_string()),
                ("net.ipv6.conf.all.forwarding".to_string(), "1".to_string())
            ]
        );
    }

    #[test]
    fn nexthop_group_form_and_errors() {
        assert_eq!(
            parse_nexthop_group("10 group 1/2,3/4").unwrap(),
            Intent::NexthopGroup { id: 10, members: vec![(1, 1), (2, 3), (4, 1)] }
        );
        assert_eq!(parse_nexthop_group("id 7 group 1").unwrap(), Intent::NexthopGroup { id: 7, members: vec![(1, 1)] });
        let e = |t: &str| parse_nexthop_group(t).unwrap_err().to_string();
        assert!(e("").contains("expected `ID group"));
        assert!(e("x group 1/2").contains("`x` is not a nexthop id"));
        assert!(e("10 group 1/x").contains("`x` is not a nexthop id"));
        assert!(e("10 group 1,0/2").contains("weight `0` is not 1..256"));
        assert!(e("10 group 1,300").contains("weight `300`"));
        assert!(e("10 group 1/10").contains("cannot contain itself"));
        assert!(e("10 group 1/1").contains("given twice"));
        assert!(e("10 group 1/2 type resilient").contains("expected `ID group"));
    }

    #[test]
    fn local_route_form_and_errors() {
        assert_eq!(
            parse_local_route("192.0.2.9/24 dev lo").unwrap(),
            Intent::LocalRoute { dst: "192.0.2.0/24".parse().unwrap(), dev: "lo".into() }
        );
        assert_eq!(
            parse_local_route("2001:db8::1 dev lo").unwrap(),
            Intent::LocalRoute { dst: "2001:db8::1/128".parse().unwrap(), dev: "lo".into() }
        );
        let e = |t: &str| parse_local_route(t).unwrap_err().to_string();
        assert!(e("").contains("empty"));
        assert!(e("nope dev lo").contains("`nope` is not a prefix"));
        assert!(e("10.0.0.0/33 dev lo").contains("not a prefix"));
        assert!(e("10.0.0.0/8").contains("no `dev`"));
        assert!(e("10.0.0.0/8 dev").contains("needs a value"));
        assert!(e("10.0.0.0/8 dev lo via 1.2.3.4").contains("unexpected `via`"));
    }

    #[test]
    fn multipath_form() {
        let s = parse_route_replace(
            "fd00:ecec:f::1/128 nexthop via fd00:1::2 dev r1 nexthop via fd00:2::2 dev r2 weight 3 metric 1024",
        )
        .unwrap();
        assert_eq!(s.dst.to_string(), "fd00:ecec:f::1/128");
        assert_eq!(s.table, 254);
        assert_eq!(s.metric, Some(1024));
        assert_eq!(s.members.len(), 2);
        assert_eq!(s.members[1].dev, "r2");
        assert_eq!(s.members[1].weight, 3);
        assert_eq!(s.members[0].gateway, Some("fd00:1::2".parse().unwrap()));
    }

    #[test]
    fn single_path_form_and_host_bits() {
        let s = parse_route_replace("10.1.2.3/16 via 192.0.2.1 dev eth0 table 100").unwrap();
        assert_eq!(s.dst.to_string(), "10.1.0.0/16");
        assert_eq!(s.table, 100);
        assert_eq!(s.members.len(), 1);
    }

    #[test]
    fn errors_name_the_token() {
        let e = |t: &str| parse_route_replace(t).unwrap_err().to_string();
        assert!(e("").contains("empty"));
        assert!(e("fd00::/129 dev x").contains("`fd00::/129` is not a prefix"));
        assert!(e("fd00::/64 nexthop via nope dev x").contains("`nope` is not an address"));
        assert!(e("fd00::/64 nexthop via 10.0.0.1 dev x").contains("not of the family"));
        assert!(e("fd00::/64 nexthop via fd00::1").contains("has no `dev`"));
        assert!(e("fd00::/64 nexthop via fd00::1 dev x bogus").contains("unexpected `bogus`"));
        assert!(e("fd00::/64 table x nexthop dev y").contains("`table x`"));
        assert!(e("fd00::/64 nexthop dev y weight 0").contains("at least 1"));
        assert!(e("fd00::/64").contains("no nexthop"));
        assert!(e("fd00::/64 via fd00::1 dev a nexthop via fd00::2 dev b").contains("mixes"));
    }

    #[test]
    fn frr_lines_map_to_the_sysctls_zebra_writes() {
        let i = parse_frr_cli(" ipv6 forwarding ").unwrap();
        assert_eq!(i.effective_sysctls(), vec![("net.ipv6.conf.all.forwarding".to_string(), "1".to_string())]);
        let i = parse_frr_cli("no ip forwarding").unwrap();
        assert_eq!(i.effective_sysctls(), vec![("net.ipv4.conf.all.forwarding".to_string(), "0".to_string())]);
        assert!(parse_frr_cli("router bgp 65000").unwrap().effective_sysctls().is_empty());
        assert!(parse_frr_cli("").is_err());
        assert!(parse_frr_cli("ipv6 forwarding\nrouter bgp 1").is_err());
    }

    #[test]
    fn link_hairpin_forms() {
        assert_eq!(parse_link("vnet0 hairpin on").unwrap(), Intent::LinkHairpin { dev: "vnet0".into(), on: true });
        assert_eq!(parse_link(" vnet0  hairpin off ").unwrap(), Intent::LinkHairpin { dev: "vnet0".into(), on: false });
        assert!(parse_link("vnet0 hairpin maybe").unwrap_err().to_string().contains("expected on or off"));
        assert!(parse_link("vnet0 mtu 1500").is_err());
        assert!(parse_link("averyveryverylongname hairpin on").is_err());
    }

    #[test]
    fn address_add_forms() {
        let i = parse_address_add("10.0.0.1/24 dev eth0").unwrap();
        assert_eq!(i, Intent::AddressAdd { address: "10.0.0.1/24".parse().unwrap(), dev: "eth0".into(), nodad: false });
        // Host bits are kept: the address is what matters.
        let Intent::AddressAdd { address, .. } = &i else { unreachable!() };
        assert_eq!(address.ip().to_string(), "10.0.0.1");
        assert_eq!(address.prefix(), 24);
        assert_eq!(
            parse_address_add(" fd00::5  dev lo ").unwrap(),
            Intent::AddressAdd { address: "fd00::5/128".parse().unwrap(), dev: "lo".into(), nodad: false }
        );
        assert!(parse_address_add("10.0.0.1/24 dev eth0").unwrap().effective_sysctls().is_empty());
    }

    #[test]
    fn address_add_errors_name_the_token() {
        let e = |t: &str| parse_address_add(t).unwrap_err().to_string();
        assert!(e("").contains("empty"));
        assert!(e("10.0.0.1/33 dev x").contains("`10.0.0.1/33` is not an address/prefix-length"));
        assert!(e("nope dev x").contains("`nope` is not an address"));
        assert!(e("0.0.0.0/0 dev x").contains("`0.0.0.0/0` cannot be an interface address"));
        assert!(e("ff02::1 dev x").contains("`ff02::1` cannot be"));
        assert!(e("10.0.0.1/24").contains("no `dev`"));
        assert!(e("10.0.0.1/24 dev").contains("`dev` needs a value"));
        assert!(e("10.0.0.1/24 dev averyveryverylongname").contains("`averyveryverylongname` is not an interface"));
        assert!(e("10.0.0.1/24 dev a dev b").contains("given twice"));
        assert!(e("10.0.0.1/24 dev a bogus").contains("unexpected `bogus`"));
        assert!(e("x dev a").starts_with("--address-add: "), "{}", e("x dev a"));
    }

    #[test]
    fn sysctl_forms() {
        assert_eq!(
            parse_sysctl("net.ipv6.conf.all.forwarding=1").unwrap(),
            Intent::Sysctl { key: "net.ipv6.conf.all.forwarding".into(), value: "1".into() }
        );
        assert_eq!(
            parse_sysctl("/proc/sys/net/ipv6/fib_multipath_hash_policy = 3").unwrap(),
            Intent::Sysctl { key: "net.ipv6.fib_multipath_hash_policy".into(), value: "3".into() }
        );
        assert!(parse_sysctl("kernel.panic=1").is_err());
        assert!(parse_sysctl("net.ipv6..x=1").is_err());
        assert!(parse_sysctl("net.ipv6.x").is_err());
    }
}
