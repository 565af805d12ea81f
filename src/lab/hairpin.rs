//! Hairpin DAD scenario (hazard 4), the lab of `integration/hairpin.rs`:
//! namespace H with bridge `rgbr0` and port `vnet0`, whose veth peer `gif`
//! is a guest namespace G with enhanced DAD off (a guest without RFC 7527
//! nonces).
//!
//! Without the guard: hairpin on for `vnet0` (`ip link set vnet0 type
//! bridge_slave hairpin on`), then [`ADDRESSES`] fresh addresses in G: the
//! bridge reflects each address's own DAD probe back to G, which takes it
//! for another node and marks the address `dadfailed`. The lab then turns
//! hairpin off and removes the addresses. With the guard (the daemon in H,
//! `hairpin_dad` enforcing with `action = "stage"`): `routeguard propose
//! --link 'vnet0 hairpin on'` installs the nftables filter for reflected ND
//! multicast first, then hairpin; fresh addresses pass DAD.

use std::time::{Duration, Instant};

use super::guard::Guard;
use super::{poll, require_tools, setup_err, LabError, Measured, Phase};
use crate::selftest::netns::{self, ip, Netns};

/// Fresh guest addresses per run.
pub const ADDRESSES: u32 = 4;

/// The lab, in one line.
pub const SETUP: &str = "bridge rgbr0 with port vnet0 in namespace H, guest namespace G behind it \
                         (enhanced_dad=0), hairpin on for vnet0, fresh IPv6 addresses in G";

/// How long DAD may take: one probe, a 1 s retransmit timer, a random
/// start delay, on a loaded machine.
const DAD_WITHIN: Duration = Duration::from_secs(15);

/// Adds [`ADDRESSES`] addresses `fd00:99::{base}+k/64` to `gif` in `g`,
/// waits until DAD has ended for all of them, and returns how many failed.
fn fresh_addresses_failed(g: &str, base: u16) -> Result<u32, LabError> {
    let addrs: Vec<String> = (0..ADDRESSES as u16).map(|k| format!("fd00:99::{:x}", base + k)).collect();
    for a in &addrs {
        ip(&["-n", g, "-6", "addr", "add", &format!("{a}/64"), "dev", "gif"], None)
            .map_err(setup_err(format!("adding {a} in {g}")))?;
    }
    let flags = |out: &str, a: &str| -> Option<String> {
        out.lines().find(|l| l.trim_start().starts_with(&format!("inet6 {a}/"))).map(str::to_string)
    };
    let done = poll(DAD_WITHIN, Duration::from_millis(200), || {
        let out = ip(&["-n", g, "-6", "addr", "show", "dev", "gif"], None)
            .map_err(setup_err(format!("listing addresses in {g}")))?;
        let lines: Vec<Option<String>> = addrs.iter().map(|a| flags(&out, a)).collect();
        // A failed address stays "tentative dadfailed"; others end DAD
        // by losing "tentative".
        let ended =
            lines.iter().all(|l| l.as_ref().is_some_and(|l| l.contains("dadfailed") || !l.contains("tentative")));
        Ok(ended.then(|| lines.iter().filter(|l| l.as_ref().is_some_and(|l| l.contains("dadfailed"))).count() as u32))
    })?;
    match done {
        Some((failed, _)) => Ok(failed),
        None => Err(LabError::Setup {
            what: format!("DAD in {g}"),
            detail: format!("still tentative after {DAD_WITHIN:?}"),
        }),
    }
}

fn hairpin_on(h: &str) -> Result<bool, LabError> {
    let out = ip(&["-n", h, "-d", "link", "show", "dev", "vnet0"], None)
        .map_err(setup_err(format!("showing vnet0 in {h}")))?;
    Ok(out.contains("hairpin on"))
}

/// Builds the lab, measures both runs, removes the lab.
pub(crate) fn run(progress: &dyn Fn(&str)) -> Result<Measured, LabError> {
    // The guard's staging plan runs both.
    require_tools("the hairpin lab", &[("nft", "nftables"), ("bridge", "iproute2")])?;
    let lab_id = netns::next_lab_id();
    let pid = std::process::id();
    let h_ns = Netns::create(&netns::ns_name(pid, lab_id, "h"))?;
    let g_ns = Netns::create(&netns::ns_name(pid, lab_id, "g"))?;
    let (h, g) = (h_ns.name().to_string(), g_ns.name().to_string());
    let batch = format!(
        "link add rgbr0 type bridge\nlink set rgbr0 up\n\
         link add vnet0 type veth peer name gif netns {g}\nlink set vnet0 master rgbr0\nlink set vnet0 up\n"
    );
    ip(&["-n", &h, "-batch", "-"], Some(&batch)).map_err(setup_err(format!("building the bridge in {h}")))?;
    // A guest without RFC 7527 nonces: `all` and the interface are OR-ed,
    // and gif existed before `default` changed.
    for key in ["all", "default", "gif"] {
        super::anycast::sysctl(&g, &format!("net.ipv6.conf.{key}.enhanced_dad"), "0")?;
    }
    ip(&["-n", &g, "link", "set", "gif", "up"], None).map_err(setup_err(format!("gif up in {g}")))?;

    // Without the guard.
    progress("hairpin: without the guard: hairpin on, fresh guest addresses");
    let t0 = Instant::now();
    ip(&["-n", &h, "link", "set", "vnet0", "type", "bridge_slave", "hairpin", "on"], None)
        .map_err(setup_err(format!("hairpin on for vnet0 in {h}")))?;
    let broken = fresh_addresses_failed(&g, 0x10)?;
    let before = Phase {
        guard: false,
        total: ADDRESSES,
        broken,
        summary: "guest addresses marked dadfailed: the port reflected their own DAD probes".into(),
        verdict: None,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    };
    progress(&format!("hairpin: without the guard: {broken}/{ADDRESSES} addresses broken"));
    ip(&["-n", &h, "link", "set", "vnet0", "type", "bridge_slave", "hairpin", "off"], None)
        .map_err(setup_err(format!("hairpin off for vnet0 in {h}")))?;
    ip(&["-n", &g, "-6", "addr", "flush", "dev", "gif", "scope", "global"], None)
        .map_err(setup_err(format!("removing the guest addresses in {g}")))?;

    // With the guard.
    progress("hairpin: with the guard: proposing hairpin on, fresh guest addresses");
    let t0 = Instant::now();
    let guard = Guard::start(
        &h,
        &[("ROUTEGUARD_HAZARDS__HAIRPIN_DAD__MODE", "enforce"), ("ROUTEGUARD_HAZARDS__HAIRPIN_DAD__ACTION", "stage")],
    )?;
    let (code, v) = guard.cli(&["propose", "--link", "vnet0 hairpin on"])?;
    let verdict = v["verdict"].as_str().unwrap_or("none").to_string();
    let outcome = v["outcome"].as_str().unwrap_or("none").to_string();
    let mut problems = Vec::new();
    if (verdict.as_str(), outcome.as_str(), code) != ("stage", "applied", Some(0)) {
        problems.push(format!(
            "the guard answered hairpin on with {verdict} ({outcome}, exit {code:?}), not an applied stage"
        ));
    }
    let on = hairpin_on(&h)?;
    if !on {
        problems.push("hairpin is not on for vnet0 after the staged change".into());
    }
    let broken = fresh_addresses_failed(&g, 0x20)?;
    // "install routeguard's reflection filter for vnet0 (table ...)": the
    // part before the details.
    let first_step = v["steps"][0].as_str().unwrap_or("no steps").split(" (").next().unwrap_or_default();
    let after = Phase {
        guard: true,
        total: ADDRESSES,
        broken,
        summary: format!(
            "`routeguard propose --link 'vnet0 hairpin on'` {verdict}, {outcome} (first step: {first_step}); hairpin {}",
            if on { "on" } else { "off" }
        ),
        verdict: Some(verdict),
        elapsed_ms: t0.elapsed().as_millis() as u64,
    };
    progress(&format!("hairpin: with the guard: {broken}/{ADDRESSES} addresses broken"));
    drop(guard);
    Ok(Measured { before, after, problems })
}
