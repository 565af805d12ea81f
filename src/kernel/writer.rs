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

/// Path of a dotted sysctl name under `root` (normally /proc/sys).
pub fn sysctl_path(root: &Path, key: &str) -> std::path::PathBuf {
    root.join(key.replace('.', "/"))
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
