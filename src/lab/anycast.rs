//! Subnet-Router anycast scenario (hazard 2), the lab of
//! `integration/common/bgp_lab.rs`: namespaces VM and HV joined by a veth,
//! Debian's FRR (zebra + bgpd) in each, an iBGP session over
//! `fdc0:3489:e0fd::/64` with HV numbered at `prefix::` and VM at `::1`.
//!
//! Without the guard: `net.ipv6.conf.all.forwarding=1` in VM makes the
//! kernel join the Subnet-Router anycast `prefix::`, i.e. the peer's
//! address; the established session survives until its next reset, so
//! `clear bgp *` follows, and the session does not come back. The lab then
//! turns forwarding off again and waits for the session. With the guard
//! (the daemon in VM, knowing the peer from FRR, `subnet_anycast` enforcing
//! with remediation on): the same toggle behind the guard's back, which
//! turns forwarding off on the peering interface at once; `clear bgp *`,
//! and the session is back within [`BACK_WITHIN`].

use std::time::{Duration, Instant};

use super::frr::{self, FrrNs, Instance};
use super::guard::Guard;
use super::{poll, setup_err, LabError, Measured, Phase};
use crate::selftest::netns::{self, ip, Netns};

/// The /64 shared by VM and HV; HV is at its `::`.
pub const PREFIX: &str = "fdc0:3489:e0fd::";
/// VM's address.
pub const VM_ADDR: &str = "fdc0:3489:e0fd::1";
/// iBGP AS of both sides.
pub const AS: u32 = 65000;

/// The lab, in one line.
pub const SETUP: &str = "namespaces VM and HV with Debian's FRR (zebra, bgpd), iBGP to HV at fdc0:3489:e0fd:: \
                         (the /64's Subnet-Router anycast address), IPv6 forwarding turned on in VM, then `clear bgp *`";

/// How long a session gets to come back after `clear bgp *` before it
/// counts as broken.
pub const BACK_WITHIN: Duration = Duration::from_secs(10);
/// How long the run without the guard waits before calling the session
/// stuck (longer than [`BACK_WITHIN`], so that "stuck" is not slowness).
const STUCK_AFTER: Duration = Duration::from_secs(15);

const VM_IF: &str = "rgvm0";
const HV_IF: &str = "rghv0";

/// Writes `net.KEY=VALUE` (dots as in sysctl(8)) inside namespace `ns`.
pub(crate) fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let text = format!("{value}\n");
    let what = format!("{key}={value} in {ns}");
    netns::run_in(ns, "sysctl", move || {
        std::fs::write(&path, text).map_err(|source| crate::selftest::SelftestError::Io { what, source })
    })
    .map_err(LabError::from)
}

/// Builds the lab, measures both runs, removes the lab.
pub(crate) fn run(progress: &dyn Fn(&str)) -> Result<Measured, LabError> {
    if let Some(why) = frr::missing() {
        return Err(LabError::Missing(why));
    }
    let lab_id = netns::next_lab_id();
    let pid = std::process::id();
    let vm_ns = Netns::create(&netns::ns_name(pid, lab_id, "vm"))?;
    let hv_ns = Netns::create(&netns::ns_name(pid, lab_id, "hv"))?;
    let (vm, hv) = (vm_ns.name().to_string(), hv_ns.name().to_string());
    {
        ip(&["-n", &vm, "link", "add", VM_IF, "type", "veth", "peer", "name", HV_IF, "netns", &hv], None)
            .map_err(setup_err(format!("creating the veth between {vm} and {hv}")))?;
        // A host-like VM; no DAD, so bgpd finds usable addresses at once.
        sysctl(&vm, "net.ipv6.conf.all.forwarding", "0")?;
        sysctl(&vm, &format!("net.ipv6.conf.{VM_IF}.accept_dad"), "0")?;
        sysctl(&hv, &format!("net.ipv6.conf.{HV_IF}.accept_dad"), "0")?;
        for (ns, dev, addr) in [(&vm, VM_IF, VM_ADDR), (&hv, HV_IF, PREFIX)] {
            ip(&["-n", ns, "-6", "addr", "add", &format!("{addr}/64"), "dev", dev, "nodad"], None)
                .map_err(setup_err(format!("addressing {dev} in {ns}")))?;
            ip(&["-n", ns, "link", "set", dev, "up"], None).map_err(setup_err(format!("{dev} up in {ns}")))?;
        }
    }
    let frr_ns = FrrNs::new()?;
    progress("anycast: starting FRR in VM and HV");
    let instances = frr_ns.start(&[
        (vm.as_str(), frr::bgp_conf(AS, "10.255.0.1", PREFIX, false)),
        (hv.as_str(), frr::bgp_conf(AS, "10.255.0.2", VM_ADDR, true)),
    ])?;
    let vm_frr = &instances[0];
    if wait_established(vm_frr, 0, Duration::from_secs(60))?.is_none() {
        return Err(LabError::Setup {
            what: "the lab's BGP session".into(),
            detail: format!("not Established within 60 s (state {})", state(vm_frr)),
        });
    }

    // Without the guard.
    progress("anycast: without the guard: forwarding on, clear bgp *");
    let t0 = Instant::now();
    sysctl(&vm, "net.ipv6.conf.all.forwarding", "1")?;
    let route = route_to_peer(&vm)?;
    let back = reset_and_wait(vm_frr, STUCK_AFTER)?;
    let before = Phase {
        guard: false,
        total: 1,
        broken: u32::from(back.is_none()),
        summary: match back {
            None => format!(
                "the route to the peer became `{}`; after `clear bgp *` the session stayed {} for {} s",
                route.trim(),
                state(vm_frr),
                STUCK_AFTER.as_secs()
            ),
            Some(t) => format!(
                "after `clear bgp *` the session came back in {:.1} s (route `{}`)",
                t.as_secs_f64(),
                route.trim()
            ),
        },
        verdict: None,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    };
    progress(&format!("anycast: without the guard: {}/1 sessions broken", before.broken));

    // Back to the starting point: forwarding off, the session up again.
    sysctl(&vm, "net.ipv6.conf.all.forwarding", "0")?;
    if wait_established(vm_frr, 0, Duration::from_secs(30))?.is_none() {
        return Err(LabError::Setup {
            what: "restoring the lab".into(),
            detail: format!("the session did not come back within 30 s of forwarding=0 (state {})", state(vm_frr)),
        });
    }

    // With the guard.
    progress("anycast: with the guard: starting it, forwarding on behind its back, clear bgp *");
    let t0 = Instant::now();
    let dir = vm_frr.dir().to_string_lossy().into_owned();
    let guard = Guard::start(
        &vm,
        &[
            ("ROUTEGUARD_FRR__VTYSH", frr::VTYSH),
            ("ROUTEGUARD_FRR__VTY_SOCKET_DIR", &dir),
            ("ROUTEGUARD_FRR__POLL_INTERVAL", "300ms"),
            ("ROUTEGUARD_HAZARDS__SUBNET_ANYCAST__MODE", "enforce"),
            ("ROUTEGUARD_HAZARDS__SUBNET_ANYCAST__REMEDIATE", "true"),
        ],
    )?;
    let knows_peer = poll(Duration::from_secs(20), Duration::from_millis(200), || {
        let p = guard.json(&["peers"])?;
        let found =
            p["peers"].as_array().is_some_and(|l| l.iter().any(|x| x["address"] == PREFIX && x["source"] == "frr"));
        Ok((p["frr_state"] == "up" && found).then_some(()))
    })?;
    if knows_peer.is_none() {
        return Err(LabError::Guard(format!(
            "the guard did not learn the peer {PREFIX} from FRR within 20 s: {}",
            guard.log_tail()
        )));
    }
    sysctl(&vm, "net.ipv6.conf.all.forwarding", "1")?;
    let remediated = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let s = guard.json(&["status"])?;
        Ok(s["remediations"].as_array().and_then(|r| r.first()).and_then(|r| r.as_str()).map(str::to_string))
    })?
    .map(|(line, _)| line);
    let mut problems = Vec::new();
    if remediated.is_none() {
        problems.push("the guard reported no remediation within 5 s of forwarding=1".to_string());
    }
    let back = reset_and_wait(vm_frr, BACK_WITHIN)?;
    let after = Phase {
        guard: true,
        total: 1,
        broken: u32::from(back.is_none()),
        summary: match (&back, &remediated) {
            (Some(t), Some(r)) => {
                format!(
                    "the guard remediated ({r}); after `clear bgp *` the session was back in {:.1} s",
                    t.as_secs_f64()
                )
            }
            (Some(t), None) => format!("after `clear bgp *` the session was back in {:.1} s", t.as_secs_f64()),
            (None, _) => format!(
                "after `clear bgp *` the session stayed {} for {} s (route `{}`)",
                state(vm_frr),
                BACK_WITHIN.as_secs(),
                route_to_peer(&vm).unwrap_or_default().trim()
            ),
        },
        verdict: remediated.map(|_| "remediated".to_string()),
        elapsed_ms: t0.elapsed().as_millis() as u64,
    };
    progress(&format!("anycast: with the guard: {}/1 sessions broken", after.broken));
    // FRR stops before its namespaces go (locals drop in reverse order).
    drop(guard);
    drop(instances);
    Ok(Measured { before, after, problems })
}

fn state(frr: &Instance<'_>) -> String {
    frr.neighbor(PREFIX).map_or_else(|| "unknown".into(), |(s, _)| s)
}

/// `ip -6 route get PEER` in `vm`, up to its protocol (the rest is noise
/// for a report).
fn route_to_peer(vm: &str) -> Result<String, LabError> {
    let out = ip(&["-n", vm, "-6", "route", "get", PREFIX], None)
        .map_err(setup_err(format!("ip -6 route get {PREFIX} in {vm}")))?;
    Ok(out.split_whitespace().take_while(|w| *w != "proto").collect::<Vec<_>>().join(" "))
}

/// Waits until the session is Established with more than `after`
/// connections established so far; how long it took, or `None`.
fn wait_established(frr: &Instance<'_>, after: u64, within: Duration) -> Result<Option<Duration>, LabError> {
    Ok(poll(within, Duration::from_millis(100), || {
        Ok(frr.neighbor(PREFIX).filter(|(s, n)| s == "Established" && *n > after).map(|_| ()))
    })?
    .map(|(_, t)| t))
}

/// `clear bgp *`, then waits up to `within` for a new Established session
/// (a stale "Established" read right after the clear does not count).
fn reset_and_wait(frr: &Instance<'_>, within: Duration) -> Result<Option<Duration>, LabError> {
    let before = frr.neighbor(PREFIX).map_or(0, |(_, n)| n);
    let t0 = Instant::now();
    frr.vtysh("clear bgp *").map_err(setup_err("clear bgp *"))?;
    Ok(wait_established(frr, before, within.saturating_sub(t0.elapsed()))?.map(|_| t0.elapsed()))
}
