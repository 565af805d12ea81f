//! sit local-remote probe (field notes, hazard 3): does this kernel drop
//! IPv6 sent over a sit (6in4) tunnel whose remote is a local address?
//!
//! Kernels before 5.17 (commit ed6ae5ca437d) refuse to encapsulate towards
//! a remote whose route is not `RTN_UNICAST`: a local remote (`RTN_LOCAL`)
//! makes `ipip6_tunnel_xmit` count `tx_carrier_errors` and send nothing.
//! Later kernels deliver the packets locally.
//!
//! Lab: one namespace with [`REMOTE`] and [`LOCAL`] on `lo` and a sit tunnel
//! `rgsit` from one to the other (`ip link add rgsit type sit remote
//! REMOTE local LOCAL`), up, with [`INNER`]/64 on it (no DAD). A thread inside
//! the namespace sends [`DATAGRAMS`] UDP datagrams to [`TARGET`] (routed over
//! the tunnel by that /64) from one unconnected socket; the tunnel's
//! `tx_packets` and `tx_carrier_errors` are read (`ip -s -j link`) before
//! and after. The kernel drops when the datagrams raised
//! `tx_carrier_errors` instead of `tx_packets`.
//!
//! Measured under `integration/kernels/run`: 5.10.0-46 sent 0 of 3 with 3
//! tx_carrier_errors (drops); 6.1.0-56 sent 3 of 3. The 6.18 host has no sit
//! module: not measurable.
//!
//! `modprobe sit` runs first (failures are ignored: the kernel may autoload
//! it, or have it built in). Loading the module creates the fallback device
//! `sit0` in every namespace, the host's included; nothing else outside the
//! lab changes. A kernel that cannot create the tunnel yields a result with
//! `skipped` set.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::netns::{self, ip, Netns};
use super::SelftestError;

/// Datagrams sent over the tunnel.
pub const DATAGRAMS: u32 = 3;
/// The tunnel's remote: an address on the lab's `lo`.
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 117, 1);
/// The tunnel's local end: another address on the lab's `lo`.
pub const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 117, 2);
/// The tunnel's own IPv6 address (a /64 on the tunnel).
pub const INNER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5117, 0, 0, 0, 0, 0, 1);
/// Where the datagrams go: in the tunnel's /64, so routed over it.
pub const TARGET: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5117, 0, 0, 0, 0, 0, 2);
/// UDP port of the datagrams (discard).
const PORT: u16 = 9;
/// The tunnel's name inside the lab.
const DEV: &str = "rgsit";
/// How long the counters may take to account for every datagram.
const SETTLE: Duration = Duration::from_secs(2);

/// What the probe measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SitProbe {
    /// Datagrams sent into the tunnel.
    pub datagrams: u32,
    /// How many the tunnel transmitted (its `tx_packets` delta).
    pub sent: u64,
    /// Its `tx_carrier_errors` delta.
    pub tx_carrier_errors: u64,
    /// The kernel drops IPv6 over a sit tunnel to a local remote.
    /// Meaningless when `skipped` is set.
    pub drops: bool,
    /// Why this kernel could not be measured; `None` when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl SitProbe {
    fn skipped(reason: String) -> SitProbe {
        SitProbe { datagrams: DATAGRAMS, sent: 0, tx_carrier_errors: 0, drops: false, skipped: Some(reason) }
    }

    /// The verdict: `Some(drops)` when measured, `None` when skipped.
    pub fn drops(&self) -> Option<bool> {
        self.skipped.is_none().then_some(self.drops)
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match &self.skipped {
            Some(why) => format!("sit to a local remote: {why}"),
            None => format!(
                "sit to a local remote: {}, {} of {} IPv6 datagrams sent, {} tx_carrier_errors",
                if self.drops { "drops" } else { "does not drop" },
                self.sent,
                self.datagrams,
                self.tx_carrier_errors
            ),
        }
    }
}

/// The verdict from counter deltas: `Ok(drops)`, or why the deltas do not
/// tell (the datagrams reached neither counter).
fn verdict(datagrams: u32, sent: u64, carrier: u64) -> Result<bool, String> {
    if carrier > 0 && sent < u64::from(datagrams) {
        Ok(true)
    } else if sent >= u64::from(datagrams) {
        Ok(false)
    } else {
        Err(format!(
            "of {datagrams} datagrams the tunnel sent {sent} and counted {carrier} tx_carrier_errors: the rest \
             never reached it"
        ))
    }
}

/// `tx_packets` and `tx_carrier_errors` of `dev` from `ip -s -j link show`.
fn parse_counters(json: &str) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let tx = &v.as_array()?.first()?["stats64"]["tx"];
    Some((tx["packets"].as_u64()?, tx["carrier_errors"].as_u64()?))
}

fn counters(ns: &str) -> Result<(u64, u64), SelftestError> {
    let out = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", DEV], None)
        .map_err(|detail| SelftestError::Command { what: format!("reading the counters of {DEV} in {ns}"), detail })?;
    parse_counters(&out).ok_or_else(|| SelftestError::Lab {
        setting: "sit".into(),
        detail: format!("no tx counters for {DEV} in `ip -s -j link` output: {out}"),
    })
}

/// The lab's batches: before the tunnel (endpoints on `lo`) and after it.
fn endpoints_batch() -> String {
    format!("addr add {REMOTE}/32 dev lo\naddr add {LOCAL}/32 dev lo\n")
}

fn tunnel_batch() -> String {
    format!("addr add {INNER}/64 dev {DEV} nodad\nlink set {DEV} up\n")
}

/// Quiet IPv6 on new interfaces (no router solicitations, no DAD), so only
/// the probe's datagrams move the counters. Best effort.
fn quiet_ipv6(ns: &str) -> Result<(), SelftestError> {
    netns::run_in(ns, "sit-sysctl", || {
        for (k, v) in [("router_solicitations", "0"), ("dad_transmits", "0"), ("accept_dad", "0")] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/default/{k}"), v);
        }
        Ok(())
    })
}

/// Measures this kernel in a fresh namespace, removed before this returns
/// (or unwinds).
pub fn probe() -> Result<SitProbe, SelftestError> {
    let _ = Command::new("modprobe").arg("sit").stdout(Stdio::null()).stderr(Stdio::null()).status();
    let name = netns::ns_name(std::process::id(), netns::next_lab_id(), "sit");
    let ns = Netns::create(&name)?;
    let lab = |detail: String| SelftestError::Lab { setting: "sit".into(), detail };
    quiet_ipv6(&name)?;
    ip(&["-n", &name, "-batch", "-"], Some(&endpoints_batch()))
        .map_err(|detail| SelftestError::Command { what: format!("adding the tunnel endpoints in {name}"), detail })?;
    let (remote, local) = (REMOTE.to_string(), LOCAL.to_string());
    let add = ["-n", &name, "link", "add", DEV, "type", "sit", "remote", &remote, "local", &local, "ttl", "64"];
    if let Err(detail) = ip(&add, None) {
        return Ok(SitProbe::skipped(format!("not measurable: no sit support ({detail})")));
    }
    ip(&["-n", &name, "-batch", "-"], Some(&tunnel_batch()))
        .map_err(|detail| SelftestError::Command { what: format!("configuring {DEV} in {name}"), detail })?;

    let (tx0, ce0) = counters(&name)?;
    let target = SocketAddr::new(TARGET.into(), PORT);
    netns::run_in(ns.name(), "sit-send", move || {
        let s = UdpSocket::bind("[::]:0")
            .map_err(|source| SelftestError::Io { what: "binding a UDP socket in the sit lab".into(), source })?;
        for k in 0..DATAGRAMS {
            // An unconnected socket: an ICMP error from a drop cannot fail
            // the next send.
            s.send_to(format!("routeguard selftest sit {k}\n").as_bytes(), target).map_err(|source| {
                SelftestError::Io { what: format!("sending datagram {} to {target}", k + 1), source }
            })?;
        }
        Ok(())
    })?;
    // The tunnel transmits (or drops) synchronously on send; poll briefly
    // in case the counters lag.
    let deadline = Instant::now() + SETTLE;
    loop {
        let (tx1, ce1) = counters(&name)?;
        let (sent, carrier) = (tx1.saturating_sub(tx0), ce1.saturating_sub(ce0));
        match verdict(DATAGRAMS, sent, carrier) {
            Ok(drops) => {
                return Ok(SitProbe { datagrams: DATAGRAMS, sent, tx_carrier_errors: carrier, drops, skipped: None })
            }
            Err(e) if Instant::now() >= deadline => return Err(lab(e)),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_from_deltas() {
        // 5.10: nothing sent, every datagram a carrier error.
        assert_eq!(verdict(3, 0, 3), Ok(true));
        // 6.1: all sent.
        assert_eq!(verdict(3, 3, 0), Ok(false));
        // Extra traffic (e.g. an MLD report) does not change the verdict.
        assert_eq!(verdict(3, 4, 0), Ok(false));
        assert_eq!(verdict(3, 0, 4), Ok(true));
        // Nothing reached the tunnel: no verdict.
        assert!(verdict(3, 0, 0).unwrap_err().contains("never reached it"));
        assert!(verdict(3, 2, 0).is_err());
    }

    #[test]
    fn counters_from_ip_json() {
        let json = r#"[{"ifindex":9,"ifname":"rgsit","stats64":{"rx":{"bytes":0,"packets":0},
            "tx":{"bytes":0,"packets":1,"errors":3,"dropped":0,"carrier_errors":3,"collisions":0}}}]"#;
        assert_eq!(parse_counters(json), Some((1, 3)));
        assert_eq!(parse_counters("[]"), None);
        assert_eq!(parse_counters("not json"), None);
    }

    #[test]
    fn batches_and_descriptions() {
        assert_eq!(endpoints_batch(), "addr add 198.18.117.1/32 dev lo\naddr add 198.18.117.2/32 dev lo\n");
        assert_eq!(tunnel_batch(), "addr add fd00:5117::1/64 dev rgsit nodad\nlink set rgsit up\n");
        let p = SitProbe { datagrams: 3, sent: 0, tx_carrier_errors: 3, drops: true, skipped: None };
        assert_eq!(p.drops(), Some(true));
        assert_eq!(p.describe(), "sit to a local remote: drops, 0 of 3 IPv6 datagrams sent, 3 tx_carrier_errors");
        let s = SitProbe::skipped("not measurable: no sit support".into());
        assert_eq!(s.drops(), None);
        assert_eq!(s.describe(), "sit to a local remote: not measurable: no sit support");
        let text = serde_json::to_string(&p).unwrap();
        assert!(!text.contains("skipped"), "{text}");
        assert_eq!(serde_json::from_str::<SitProbe>(&text).unwrap(), p);
    }
}
