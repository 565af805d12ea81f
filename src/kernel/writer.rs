//! Kernel writes the guard performs on behalf of an approved or staged
//! change: route replacement (rtnetlink) and sysctl writes (/proc/sys).
//!
//! None of these is ever issued while the guard judges it would break
//! flows; the core decides, this module only executes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteNextHop, RouteNextHopFlags, RouteProtocol};
use rtnetlink::RouteMessageBuilder;

use crate::policy::intent::RouteSpec;

/// A write that failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// An interface named in the change does not exist.
    #[error("no interface named `{0}`")]
    NoSuchInterface(String),
    /// The kernel refused the route.
    #[error("kernel refused route {dst}: {reason}")]
    Route {
        /// The route.
        dst: String,
        /// The kernel's answer.
        reason: String,
    },
    /// An `ip` command the change needed failed.
    #[error("{what}: {reason}")]
    Command {
        /// What was being changed (`tunnel rgsit2`).
        what: String,
        /// What `ip` said.
        reason: String,
    },
    /// nftables refused.
    #[error("nftables: {reason}")]
    Nft {
        /// What nft said.
        reason: String,
    },
    /// The sysctl could not be read or written.
    #[error("sysctl {key}: {source}")]
    Sysctl {
        /// Dotted name.
        key: String,
        /// I/O error.
        source: std::io::Error,
    },
}

/// Replaces (or creates) the route `spec` describes, like `ip route replace`.
pub async fn route_replace(spec: &RouteSpec, ifindex_of: &HashMap<String, u32>) -> Result<(), WriteError> {
    let idx = |dev: &str| ifindex_of.get(dev).copied().ok_or_else(|| WriteError::NoSuchInterface(dev.to_string()));
    let fail = |reason: String| WriteError::Route { dst: spec.dst.to_string(), reason };
    let mut msg = match spec.dst {
        IpNetwork::V4(n) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(n.network(), n.prefix())
            .table_id(spec.table)
            .protocol(RouteProtocol::Boot)
            .build(),
        IpNetwork::V6(n) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(n.network(), n.prefix())
            .table_id(spec.table)
            .protocol(RouteProtocol::Boot)
            .build(),
    };
    if let Some(m) = spec.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    let gw_attr = |g: IpAddr| match g {
        IpAddr::V4(a) => RouteAttribute::Gateway(RouteAddress::Inet(a)),
        IpAddr::V6(a) => RouteAttribute::Gateway(RouteAddress::Inet6(a)),
    };
    if spec.members.len() == 1 {
        let m = &spec.members[0];
        msg.attributes.push(RouteAttribute::Oif(idx(&m.dev)?));
        if let Some(g) = m.gateway {
            msg.attributes.push(gw_attr(g));
        }
    } else {
        let mut hops = Vec::new();
        for m in &spec.members {
            let mut nh = RouteNextHop::default();
            nh.flags = RouteNextHopFlags::empty();
            nh.hops =
                u8::try_from(m.weight.saturating_sub(1)).map_err(|_| fail(format!("weight {} > 256", m.weight)))?;
            nh.interface_index = idx(&m.dev)?;
            if let Some(g) = m.gateway {
                nh.attributes.push(gw_attr(g));
            }
            hops.push(nh);
        }
        msg.attributes.push(RouteAttribute::MultiPath(hops));
    }
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| fail(e.to_string()))?;
    let task = tokio::spawn(conn);
    let result = handle.route().add(msg).replace().execute().await.map_err(|e| fail(e.to_string()));
    task.abort();
    result
}

/// Adds an address to an interface, like `ip addr add ADDR/LEN dev IF
/// [nodad]`.
pub async fn address_add(
    address: IpNetwork,
    dev: &str,
    nodad: bool,
    ifindex_of: &HashMap<String, u32>,
) -> Result<(), WriteError> {
    let index = ifindex_of.get(dev).copied().ok_or_else(|| WriteError::NoSuchInterface(dev.to_string()))?;
    let fail = |reason: String| WriteError::Route { dst: address.to_string(), reason };
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| fail(e.to_string()))?;
    let task = tokio::spawn(conn);
    let mut req = handle.address().add(index, address.ip(), address.prefix());
    if nodad {
        use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
        req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    let r = req.execute().await.map_err(|e| fail(e.to_string()));
    task.abort();
    r
}

/// Runs `ip ARGS`, naming `what` in the error.
fn ip_cmd(what: &str, args: &[&str]) -> Result<(), WriteError> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| WriteError::Command { what: what.into(), reason: format!("cannot run ip: {e}") })?;
    if !out.status.success() {
        return Err(WriteError::Command {
            what: what.into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(())
}

/// Creates IP tunnel `name` of `kind` (`ip link add NAME type KIND remote R
/// [local L]`), or, when `exists`, changes its ends (`ip link set NAME type
/// KIND remote R [local L]`).
pub fn tunnel_set(
    name: &str,
    kind: &str,
    remote: IpAddr,
    local: Option<IpAddr>,
    exists: bool,
) -> Result<(), WriteError> {
    valid_ifname(name)?;
    let (r, l) = (remote.to_string(), local.map(|l| l.to_string()));
    let mut args = vec!["link", if exists { "set" } else { "add" }, name, "type", kind];
    args.extend(["remote", r.as_str()]);
    if let Some(l) = &l {
        args.extend(["local", l.as_str()]);
    }
    ip_cmd(&format!("tunnel {name}"), &args)
}

/// Buckets of the resilient groups the guard creates.
const RESILIENT_BUCKETS: u32 = 128;

/// Installs `spec` as a resilient nexthop group: one nexthop object per
/// member, a `type resilient` group of them, then the route pointed at the
/// group (`ip route replace DST [table T] [metric M] nhid G`), and verifies
/// the route uses it. Ids are the lowest free ones above those in use.
/// Returns the group id.
pub fn route_replace_resilient(spec: &RouteSpec) -> Result<u32, WriteError> {
    let dst = spec.dst.to_string();
    let fam = if spec.dst.is_ipv6() { "-6" } else { "-4" };
    let used: Vec<u32> = {
        let out = std::process::Command::new("ip")
            .args(["-j", "nexthop", "show"])
            .output()
            .map_err(|e| WriteError::Command { what: "nexthop ids".into(), reason: e.to_string() })?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        v.as_array().into_iter().flatten().filter_map(|n| n["id"].as_u64()).map(|i| i as u32).collect()
    };
    let mut next = used.iter().copied().max().unwrap_or(0).max(1000) + 1;
    let mut members = Vec::new();
    for m in &spec.members {
        valid_ifname(&m.dev)?;
        let id = next;
        next += 1;
        let id_s = id.to_string();
        let mut args = vec![fam, "nexthop", "add", "id", id_s.as_str()];
        let gw = m.gateway.map(|g| g.to_string());
        if let Some(g) = &gw {
            args.extend(["via", g.as_str()]);
        }
        args.extend(["dev", m.dev.as_str()]);
        ip_cmd(&format!("nexthop {id}"), &args)?;
        members.push(format!("{id},{}", m.weight));
    }
    let group = next;
    let (g_s, spec_s, buckets) = (group.to_string(), members.join("/"), RESILIENT_BUCKETS.to_string());
    ip_cmd(
        &format!("nexthop group {group}"),
        &["nexthop", "add", "id", &g_s, "group", &spec_s, "type", "resilient", "buckets", &buckets],
    )?;
    let (table, metric) = (spec.table.to_string(), spec.metric.map(|m| m.to_string()));
    let mut args = vec![fam, "route", "replace", dst.as_str(), "table", table.as_str()];
    if let Some(m) = &metric {
        args.extend(["metric", m.as_str()]);
    }
    args.extend(["nhid", g_s.as_str()]);
    ip_cmd(&format!("route {dst}"), &args)?;
    let out = std::process::Command::new("ip")
        .args([fam, "route", "show", &dst, "table", &table])
        .output()
        .map_err(|e| WriteError::Command { what: format!("route {dst}"), reason: e.to_string() })?;
    if !String::from_utf8_lossy(&out.stdout).contains(&format!("nhid {group}")) {
        return Err(WriteError::Command {
            what: format!("route {dst}"),
            reason: format!("not on nexthop group {group} after the replace"),
        });
    }
    Ok(group)
}

/// Replaces nexthop group `id`'s members, like `ip nexthop replace id ID
/// group A,W/B,W`.
pub fn nexthop_group_replace(id: u32, members: &[(u32, u16)]) -> Result<(), WriteError> {
    let spec: Vec<String> = members.iter().map(|(n, w)| format!("{n},{w}")).collect();
    let (id_s, spec) = (id.to_string(), spec.join("/"));
    ip_cmd(&format!("nexthop group {id}"), &["nexthop", "replace", "id", &id_s, "group", &spec])
}

/// Adds `local DST dev DEV table local`, like `ip route add local`.
pub fn local_route_add(dst: IpNetwork, dev: &str) -> Result<(), WriteError> {
    valid_ifname(dev)?;
    let d = dst.to_string();
    let fam = if dst.is_ipv6() { "-6" } else { "-4" };
    ip_cmd(&format!("local route {d}"), &[fam, "route", "add", "local", &d, "dev", dev, "table", "local"])
}

/// Path of a dotted sysctl name under `root` (normally /proc/sys).
pub fn sysctl_path(root: &Path, key: &str) -> std::path::PathBuf {
    root.join(key.replace('.', "/"))
}

/// `net/ipv6/conf/<if>/forwarding` under `root`, joined as a path: an
/// interface name may hold dots (VLANs), which a dotted key cannot.
pub fn v6_forwarding_path(root: &Path, ifname: &str) -> std::path::PathBuf {
    root.join("net/ipv6/conf").join(ifname).join("forwarding")
}

/// Whether IPv6 forwarding reads 1 on `ifname`.
pub fn v6_forwarding_on(root: &Path, ifname: &str) -> bool {
    std::fs::read_to_string(v6_forwarding_path(root, ifname)).is_ok_and(|v| v.trim() == "1")
}

/// Writes 0 to IPv6 forwarding on every one of `ifaces` (all are tried);
/// the first error, naming its key.
pub fn v6_forwarding_off(root: &Path, ifaces: &[String]) -> Result<(), String> {
    let mut first = Ok(());
    for i in ifaces {
        if let Err(e) = std::fs::write(v6_forwarding_path(root, i), "0") {
            if first.is_ok() {
                first = Err(format!("net.ipv6.conf.{i}.forwarding: {e}"));
            }
        }
    }
    first
}

/// Reads a sysctl.
pub fn read_sysctl(root: &Path, key: &str) -> Result<String, WriteError> {
    std::fs::read_to_string(sysctl_path(root, key))
        .map(|s| s.trim().to_string())
        .map_err(|source| WriteError::Sysctl { key: key.into(), source })
}

/// Writes a sysctl and returns its previous value (for the journal and
/// for rollback).
pub fn write_sysctl(root: &Path, key: &str, value: &str) -> Result<String, WriteError> {
    let previous = read_sysctl(root, key)?;
    std::fs::write(sysctl_path(root, key), value).map_err(|source| WriteError::Sysctl { key: key.into(), source })?;
    Ok(previous)
}

/// The guard's nftables table (bridge family) and chain for hairpin
/// reflection filters; the guard owns both and nothing else.
const NFT_TABLE: &str = "routeguard";
const NFT_CHAIN: &str = "hairpin_nd";

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, WriteError> {
    use std::io::Write;
    let fail = |reason: String| WriteError::Nft { reason };
    let mut cmd = std::process::Command::new("nft");
    cmd.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    let mut child = cmd.spawn().map_err(|e| fail(format!("cannot run nft: {e}")))?;
    if let (Some(text), Some(mut si)) = (stdin, child.stdin.take()) {
        si.write_all(text.as_bytes()).map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn filter_comment(port: &str) -> String {
    format!("routeguard hairpin {port}")
}

/// Bridge ports that have the guard's reflection filter, read from the
/// kernel (the table may survive a restart of the guard).
pub fn hairpin_filters() -> Result<std::collections::BTreeSet<String>, WriteError> {
    let out = match nft(&["-j", "list", "chain", "bridge", NFT_TABLE, NFT_CHAIN], None) {
        Ok(o) => o,
        // No table yet: no filters.
        Err(WriteError::Nft { reason }) if reason.contains("No such file") => return Ok(Default::default()),
        Err(e) => return Err(e),
    };
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| WriteError::Nft { reason: e.to_string() })?;
    let rules = v["nftables"].as_array().cloned().unwrap_or_default();
    Ok(rules
        .iter()
        .filter_map(|r| r["rule"]["comment"].as_str()?.strip_prefix("routeguard hairpin ").map(str::to_string))
        .collect())
}

/// Installs the reflection filter for `port`: drop IPv6 multicast frames
/// (destination 33:33:*) leaving `port` after entering on it. One nft run;
/// the caller checks it is not installed yet (the core keeps the set).
pub fn install_hairpin_filter(port: &str) -> Result<(), WriteError> {
    valid_ifname(port)?;
    let script = format!(
        "add table bridge {NFT_TABLE}\n\
         add chain bridge {NFT_TABLE} {NFT_CHAIN} {{ type filter hook forward priority 0; policy accept; }}\n\
         add rule bridge {NFT_TABLE} {NFT_CHAIN} iifname \"{port}\" oifname \"{port}\" \
         ether daddr 33:33:00:00:00:00/16 counter drop comment \"{}\"\n",
        filter_comment(port)
    );
    nft(&["-f", "-"], Some(&script)).map(|_| ())
}

/// Removes the reflection filter for `port`; removes the table when it was
/// the last one. Idempotent.
pub fn remove_hairpin_filter(port: &str) -> Result<(), WriteError> {
    let out = match nft(&["-j", "list", "chain", "bridge", NFT_TABLE, NFT_CHAIN], None) {
        Ok(o) => o,
        Err(WriteError::Nft { reason }) if reason.contains("No such file") => return Ok(()),
        Err(e) => return Err(e),
    };
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| WriteError::Nft { reason: e.to_string() })?;
    let rules: Vec<serde_json::Value> = v["nftables"].as_array().cloned().unwrap_or_default();
    let ours: Vec<(u64, String)> = rules
        .iter()
        .filter_map(|r| Some((r["rule"]["handle"].as_u64()?, r["rule"]["comment"].as_str()?.to_string())))
        .collect();
    // Something else may remove the same rule meanwhile: gone is gone.
    let gone_ok = |r: Result<String, WriteError>| match r {
        Err(WriteError::Nft { reason }) if reason.contains("No such file") => Ok(()),
        r => r.map(|_| ()),
    };
    for (handle, comment) in &ours {
        if *comment == filter_comment(port) {
            gone_ok(nft(&["delete", "rule", "bridge", NFT_TABLE, NFT_CHAIN, "handle", &handle.to_string()], None))?;
        }
    }
    if ours.iter().all(|(_, c)| *c == filter_comment(port)) {
        gone_ok(nft(&["delete", "table", "bridge", NFT_TABLE], None))?;
    }
    Ok(())
}

fn valid_ifname(name: &str) -> Result<(), WriteError> {
    let ok =
        !name.is_empty() && name.len() <= 15 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(WriteError::NoSuchInterface(name.to_string()))
    }
}

/// Sets hairpin mode of a bridge port (`bridge link set dev PORT hairpin on|off`).
pub fn set_hairpin(port: &str, on: bool) -> Result<(), WriteError> {
    valid_ifname(port)?;
    let out = std::process::Command::new("bridge")
        .args(["link", "set", "dev", port, "hairpin", if on { "on" } else { "off" }])
        .output()
        .map_err(|e| WriteError::Route { dst: port.into(), reason: format!("cannot run bridge: {e}") })?;
    if !out.status.success() {
        return Err(WriteError::Route { dst: port.into(), reason: String::from_utf8_lossy(&out.stderr).trim().into() });
    }
    Ok(())
}

/// Anycast addresses joined on the given interfaces, from
/// /proc/net/anycast6 (`ifindex ifname address refcount` per line), as
/// `ifname address`.
pub fn anycast_joined(ifaces: &[String]) -> std::io::Result<Vec<String>> {
    let text = std::fs::read_to_string("/proc/net/anycast6")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && ifaces.iter().any(|i| i == f[1])).then(|| format!("{} {}", f[1], f[2]))
        })
        .collect())
}

/// Lists the kernel's links by name (for resolving `dev` in a change).
pub async fn link_names() -> Result<HashMap<String, u32>, WriteError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| WriteError::Route { dst: String::new(), reason: e.to_string() })?;
    let task = tokio::spawn(conn);
    let mut out = HashMap::new();
    let mut links = handle.link().get().execute();
    while let Ok(Some(l)) = links.try_next().await {
        for a in &l.attributes {
            if let netlink_packet_route::link::LinkAttribute::IfName(n) = a {
                out.insert(n.clone(), l.header.index);
            }
        }
    }
    task.abort();
    Ok(out)
}
