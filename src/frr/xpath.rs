//! FRR northbound xpaths: parsing (with errors that name the problem) and
//! which daemon owns a path.
//!
//! FRR serves one `frr.Northbound` per daemon and each daemon only knows
//! its own YANG modules, so the proxy must pick the daemon from the path:
//! a daemon-specific module anywhere in it (a step such as
//! `frr-staticd:staticd`, or a key value such as
//! `type='frr-staticd:staticd'`) decides; otherwise a shared module
//! (`frr-interface`, `frr-vrf`, `frr-routing`, ...) goes to the one
//! configured daemon that lists it in its capabilities, zebra when several
//! do and zebra is one of them (zebra owns interfaces and VRFs).

use std::collections::BTreeMap;

/// Longest xpath accepted (FRR's own limit, XPATH_MAXLEN, is 1024; a
/// little slack for clients that send longer keys).
pub const MAX_XPATH_LEN: usize = 4096;

/// One step: `name[key='value']...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The node name with its module prefix when given (`frr-staticd:staticd`).
    pub name: String,
    /// Key predicates in order.
    pub keys: Vec<(String, String)>,
}

impl Step {
    /// The name without its module prefix.
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }

    /// The value of key `k`.
    pub fn key(&self, k: &str) -> Option<&str> {
        self.keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

/// A malformed xpath.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed xpath `{shown}`: {reason}")]
pub struct XpathError {
    /// The path (truncated when long).
    pub shown: String,
    /// What is wrong.
    pub reason: String,
}

fn err(path: &str, reason: impl Into<String>) -> XpathError {
    let shown =
        if path.len() > 120 { format!("{}...", &path[..path.floor_char_boundary_compat(120)]) } else { path.into() };
    XpathError { shown, reason: reason.into() }
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// Reads a node or key name (possibly module-prefixed).
fn take_name(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> String {
    let mut name = String::new();
    while let Some(&(_, c)) = chars.peek().filter(|(_, c)| name_char(*c)) {
        name.push(c);
        chars.next();
    }
    name
}

/// Parses an absolute schema/data path such as
/// `/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-staticd:staticd'][name='staticd']`.
pub fn parse(path: &str) -> Result<Vec<Step>, XpathError> {
    if path.is_empty() {
        return Err(err(path, "empty"));
    }
    if path.len() > MAX_XPATH_LEN {
        return Err(err(path, format!("{} bytes, longer than {MAX_XPATH_LEN}", path.len())));
    }
    if path.chars().any(char::is_control) {
        return Err(err(path, "contains control characters"));
    }
    let mut chars = path.char_indices().peekable();
    let mut steps = Vec::new();
    while let Some((i, c)) = chars.next() {
        if c != '/' {
            return Err(err(path, format!("expected `/` at byte {i}, found `{c}`")));
        }
        let name = take_name(&mut chars);
        if name.is_empty() || name.starts_with(':') || name.ends_with(':') || name.matches(':').count() > 1 {
            return Err(err(path, format!("step {} has no valid node name", steps.len() + 1)));
        }
        let mut keys = Vec::new();
        while let Some(&(_, '[')) = chars.peek() {
            chars.next();
            let key = take_name(&mut chars);
            if key.is_empty() {
                return Err(err(path, format!("empty key name in `{name}[...]`")));
            }
            if chars.next().map(|(_, c)| c) != Some('=') {
                return Err(err(path, format!("key `{key}` in `{name}` has no `=`")));
            }
            let quote = match chars.next() {
                Some((_, q @ ('\'' | '"'))) => q,
                _ => return Err(err(path, format!("value of key `{key}` in `{name}` is not quoted"))),
            };
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, c)) if c == quote => break,
                    Some((_, c)) => value.push(c),
                    None => return Err(err(path, format!("unterminated value of key `{key}` in `{name}`"))),
                }
            }
            if chars.next().map(|(_, c)| c) != Some(']') {
                return Err(err(path, format!("key `{key}` in `{name}` is not closed with `]`")));
            }
            keys.push((key, value));
        }
        if let Some(&(j, c)) = chars.peek() {
            if c != '/' {
                return Err(err(path, format!("unexpected `{c}` at byte {j}")));
            }
        }
        steps.push(Step { name, keys });
    }
    Ok(steps)
}

/// Writes `steps` back as a path [`parse`] reads again: `/name[key='value']...`,
/// each value in single quotes unless it holds one (then double quotes;
/// `parse` accepts no value with both).
pub fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for s in steps {
        out.push('/');
        out.push_str(&s.name);
        for (k, v) in &s.keys {
            let q = if v.contains('\'') { '"' } else { '\'' };
            out.push('[');
            out.push_str(k);
            out.push('=');
            out.push(q);
            out.push_str(v);
            out.push(q);
            out.push(']');
        }
    }
    out
}

/// Every module prefix a path mentions: in step names and in key values
/// that are identities (`frr-staticd:staticd`, `frr-routing:ipv6-unicast`).
pub fn modules(steps: &[Step]) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |m: &str| {
        if !m.is_empty() && !out.iter().any(|x: &String| x == m) {
            out.push(m.to_string());
        }
    };
    for s in steps {
        if let Some((m, _)) = s.name.split_once(':') {
            push(m);
        }
        for (_, v) in &s.keys {
            if let Some((m, rest)) = v.split_once(':') {
                if m.starts_with("frr-") && !rest.is_empty() && m.chars().all(name_char) {
                    push(m);
                }
            }
        }
    }
    out
}

/// The daemon a module belongs to when only one daemon implements it.
pub fn daemon_of_module(module: &str) -> Option<&'static str> {
    let fixed = [
        ("frr-staticd", "staticd"),
        ("frr-bgp", "bgpd"),
        ("frr-bgp-route-map", "bgpd"),
        ("frr-bgp-filter", "bgpd"),
        ("frr-zebra", "zebra"),
        ("frr-zebra-route-map", "zebra"),
        ("frr-pim", "pimd"),
        ("frr-igmp", "pimd"),
        ("frr-pbr", "pbrd"),
        ("frr-ospf-route-map", "ospfd"),
        ("frr-ospf6-route-map", "ospf6d"),
        ("frr-isisd", "isisd"),
    ];
    if let Some((_, d)) = fixed.iter().find(|(m, _)| *m == module) {
        return Some(d);
    }
    let base = module.strip_prefix("frr-")?;
    crate::config::FRR_DAEMONS.iter().copied().find(|d| *d == base || d.strip_suffix('d') == Some(base))
}

/// Why a path has no owner among the configured daemons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path belongs to a daemon without an endpoint.
    #[error("`{path}` belongs to {daemon}, which has no endpoint in [frr.northbound] (configured: {configured})")]
    NotConfigured {
        /// The path.
        path: String,
        /// Its daemon.
        daemon: String,
        /// The configured daemons.
        configured: String,
    },
    /// The path mentions modules of several daemons.
    #[error("`{path}` names modules of several daemons ({daemons}); one request goes to one daemon")]
    Mixed {
        /// The path.
        path: String,
        /// The daemons.
        daemons: String,
    },
    /// No configured daemon serves the path's modules, or several do.
    #[error("cannot tell which daemon serves `{path}`: {reason}")]
    Unknown {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The daemon that serves `steps` (the parsed `path`), given the configured
/// daemons and the modules each reported in `GetCapabilities`.
pub fn owner(
    path: &str,
    steps: &[Step],
    configured: &[String],
    caps: &BTreeMap<String, Vec<String>>,
) -> Result<String, RouteError> {
    let mods = modules(steps);
    let mut specific: Vec<&str> = mods.iter().filter_map(|m| daemon_of_module(m)).collect();
    specific.dedup();
    specific.sort_unstable();
    specific.dedup();
    let configured_list = configured.join(", ");
    match specific.as_slice() {
        [d] => {
            return if configured.iter().any(|c| c == d) {
                Ok(d.to_string())
            } else {
                Err(RouteError::NotConfigured { path: path.into(), daemon: d.to_string(), configured: configured_list })
            };
        }
        [] => {}
        many => return Err(RouteError::Mixed { path: path.into(), daemons: many.join(", ") }),
    }
    let Some(top) = mods.first() else {
        return Err(RouteError::Unknown { path: path.into(), reason: "the first step has no module prefix".into() });
    };
    let serving: Vec<&String> = configured.iter().filter(|d| caps.get(*d).is_some_and(|m| m.contains(top))).collect();
    match serving.as_slice() {
        [d] => Ok(d.to_string()),
        [] if configured.iter().any(|c| c == "zebra") && matches!(top.as_str(), "frr-interface" | "frr-vrf") => {
            Ok("zebra".into())
        }
        [] => Err(RouteError::Unknown {
            path: path.into(),
            reason: format!("no configured daemon that answered reported module {top} (configured: {configured_list})"),
        }),
        many if many.iter().any(|d| *d == "zebra") => Ok("zebra".into()),
        many => Err(RouteError::Unknown {
            path: path.into(),
            reason: format!(
                "module {top} is served by {}; name the daemon's own module in the path",
                many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// One northbound edit as the CLI takes it: `update PATH VALUE` or
/// `delete PATH`. The path ends at the first blank outside its `[...]`
/// predicates (whose quoted keys may hold blanks); the value is the rest.
/// Returns (is_update, path, value).
pub fn parse_cli_edit(s: &str) -> Result<(bool, String, String), XpathError> {
    let bad = |reason: &str| err(s, reason);
    let s_trim = s.trim_start();
    let (update, rest) = if let Some(r) = s_trim.strip_prefix("update ") {
        (true, r)
    } else if let Some(r) = s_trim.strip_prefix("delete ") {
        (false, r)
    } else {
        return Err(bad("expected `update PATH VALUE` or `delete PATH`"));
    };
    let rest = rest.trim_start();
    let (mut depth, mut quote) = (0usize, None::<char>);
    let mut end = rest.len();
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') if depth > 0 => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => depth = depth.saturating_sub(1),
            (None, c) if c.is_whitespace() && depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let (path, value) = (&rest[..end], rest[end..].trim());
    parse(path)?;
    match (update, value.is_empty()) {
        (false, false) => Err(bad("`delete PATH` takes no value")),
        _ => Ok((update, path.to_string(), value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_edits_split_path_and_value() {
        let p = "/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-staticd:staticd'][name='a b'][vrf='default']/frr-staticd:staticd/route-list[prefix='2001:db8::/32'][afi-safi='frr-routing:ipv6-unicast']/path-list[table-id='0'][distance='1']/frr-nexthops/nexthop[nh-type='ip6-ifindex'][vrf='default'][gateway='fd00:1::2'][interface='eth0']";
        let (u, path, value) = parse_cli_edit(&format!("update {p}")).unwrap();
        assert!(u && path == p && value.is_empty());
        let (u, path, value) = parse_cli_edit(&format!("delete  {p}")).unwrap();
        assert!(!u && path == p && value.is_empty());
        let (_, path, value) =
            parse_cli_edit("update /frr-interface:lib/interface[name='x']/description two words").unwrap();
        assert_eq!(
            (path.as_str(), value.as_str()),
            ("/frr-interface:lib/interface[name='x']/description", "two words")
        );
        for bad in ["replace /a:b", "delete /frr-interface:lib/interface[name='x'] v", "update", "update not-a-path"] {
            assert!(parse_cli_edit(bad).is_err(), "{bad}");
        }
    }

    const NH: &str = "/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-staticd:staticd'][name='staticd'][vrf='default']/frr-staticd:staticd/route-list[prefix='2001:db8:77::/64'][afi-safi='frr-routing:ipv6-unicast']/path-list[table-id='0'][distance='1']/frr-nexthops/nexthop[nh-type='ip6'][vrf='default'][gateway='fd00:1::2'][interface='nb1a']";

    #[test]
    fn rendered_paths_parse_back_to_the_same_steps() {
        let s = parse(NH).unwrap();
        assert_eq!(render(&s), NH);
        let odd = r#"/a:b[k="it's"][j='x"y']/c"#;
        let steps = parse(odd).unwrap();
        assert_eq!(steps[0].key("k"), Some("it's"));
        assert_eq!(parse(&render(&steps)).unwrap(), steps);
        assert_eq!(render(&steps), odd);
    }

    #[test]
    fn parses_staticd_nexthop_path() {
        let s = parse(NH).unwrap();
        assert_eq!(s.len(), 8);
        assert_eq!(s[2].key("type"), Some("frr-staticd:staticd"));
        assert_eq!(s[3].name, "frr-staticd:staticd");
        assert_eq!(s[4].local_name(), "route-list");
        assert_eq!(s[4].key("prefix"), Some("2001:db8:77::/64"));
        assert_eq!(s[7].key("gateway"), Some("fd00:1::2"));
        assert_eq!(modules(&s), vec!["frr-routing", "frr-staticd"]);
        let p = parse("/a:b[k=\"x]y\"]/c").unwrap();
        assert_eq!(p[0].key("k"), Some("x]y"));
    }

    #[test]
    fn malformed_paths_name_the_problem() {
        for (p, why) in [
            ("", "empty"),
            ("frr-interface:lib", "expected `/`"),
            ("/", "no valid node name"),
            ("/a//b", "no valid node name"),
            ("/a[k='v'", "not closed"),
            ("/a[k='v]", "unterminated"),
            ("/a[k=v]", "not quoted"),
            ("/a[='v']", "empty key name"),
            ("/a b", "unexpected ` `"),
            ("/a\n", "control"),
            ("/:a", "no valid node name"),
        ] {
            let e = parse(p).unwrap_err().to_string();
            assert!(e.contains(why), "{p:?}: {e}");
        }
        let long = format!("/a:{}", "b".repeat(MAX_XPATH_LEN));
        assert!(parse(&long).unwrap_err().to_string().contains("longer than"));
    }

    #[test]
    fn routes_to_the_owning_daemon() {
        let configured = vec!["zebra".to_string(), "staticd".to_string()];
        let mut caps = BTreeMap::new();
        caps.insert("zebra".to_string(), vec!["frr-interface".into(), "frr-routing".into(), "frr-vrf".into()]);
        caps.insert("staticd".to_string(), vec!["frr-interface".into(), "frr-routing".into(), "frr-staticd".into()]);
        let own = |p: &str| owner(p, &parse(p).unwrap(), &configured, &caps);
        assert_eq!(own(NH).unwrap(), "staticd");
        assert_eq!(own("/frr-interface:lib").unwrap(), "zebra");
        assert_eq!(own("/frr-interface:lib/interface[name='x']/frr-zebra:zebra").unwrap(), "zebra");
        // Shared module served by both: zebra.
        assert_eq!(own("/frr-routing:routing").unwrap(), "zebra");
        let e = own("/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-bgp:bgp']")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bgpd") && e.contains("configured: zebra, staticd"), "{e}");
        let e = own("/frr-staticd:x/frr-bgp:y").unwrap_err().to_string();
        assert!(e.contains("several daemons"), "{e}");
        let e = own("/nomodule").unwrap_err().to_string();
        assert!(e.contains("no module prefix"), "{e}");
        let e = own("/frr-foo:bar").unwrap_err().to_string();
        assert!(e.contains("frr-foo"), "{e}");
        assert_eq!(daemon_of_module("frr-ospfd"), Some("ospfd"));
        assert_eq!(daemon_of_module("frr-ripngd"), Some("ripngd"));
        assert_eq!(daemon_of_module("frr-routing"), None);
    }
}
