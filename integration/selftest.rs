//! Selftest labs (root only): `routeguard selftest` must measure the ECMP
//! re-hash hazard on this kernel, stay within its time budget, leave no
//! namespace behind on any exit path (success, error, panic, a kernel that
//! rejects a setting) and never touch the host's sysctls.
//!
//! What Linux 6.18 does, measured here (30 connections over 10 anycast
//! destinations, fixed hash seed): an identical replace of the multipath
//! route breaks local IPv6 flows whenever the hash covers the source port
//! (policy 1; the first route lookup hashes a random port) or the source
//! address (policy 0, policy 3 with field 0x01; the first lookup hashes
//! `::`), and none under policy 3 without both (0x0026, 0x000E). IPv4 never
//! breaks. The field notes' "policy 0: 0/60" and "0x000F: 0/60" were single
//! destinations that happened to hash alike with `::` and with the real
//! source: with one destination that is a 1-in-3 chance.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use routeguard::selftest::ecmp::{self, EcmpProbe, EcmpSetting, Fault, FIELD_SRC_IP, FIELD_SRC_PORT};
use routeguard::selftest::{run_all, sweep_stale, SelftestError, SelftestOptions, NETNS_PREFIX, NETNS_RUN_DIR};

/// The tests share one check ("no namespace of this process remains"), so
/// they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2));
    assert_eq!(euid, Some("0"), "selftest integration tests need root (they create network namespaces)");
}

/// Selftest namespaces whose name starts with `prefix`.
fn namespaces(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| n.starts_with(prefix));
    v
}

/// This process's selftest namespaces (other processes may run selftests
/// at the same time).
fn own_namespaces() -> Vec<String> {
    namespaces(&format!("{NETNS_PREFIX}{}-", std::process::id()))
}

fn assert_no_namespace_left(when: &str) {
    let left = own_namespaces();
    assert!(left.is_empty(), "{when}: namespaces left behind: {left:?}");
}

fn host_sysctls() -> Vec<(String, Option<String>)> {
    ["ipv6/fib_multipath_hash_policy", "ipv6/fib_multipath_hash_fields", "ipv4/fib_multipath_hash_policy"]
        .iter()
        .map(|p| (p.to_string(), std::fs::read_to_string(format!("/proc/sys/net/{p}")).ok()))
        .collect()
}

fn find<'a>(probes: &'a [EcmpProbe], setting: &str) -> &'a EcmpProbe {
    probes.iter().find(|p| p.setting == setting).unwrap_or_else(|| panic!("no probe {setting:?} in {probes:?}"))
}

fn measured(p: &EcmpProbe) {
    assert!(p.measured(), "{} was not measured: {:?}", p.setting, p.skipped);
    assert_eq!(p.affected, p.broken > 0, "{p:?}");
}

#[test]
fn run_all_reproduces_the_field_notes_on_this_kernel() {
    require_root();
    let _s = serial();
    let host_before = host_sysctls();
    let opts = SelftestOptions::default();
    let t = Instant::now();
    let report = run_all(&opts).expect("selftest");
    let wall = t.elapsed();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    eprintln!("wall time {wall:?}");

    assert!(!report.kernel.is_empty());
    assert_eq!(report.ecmp.len(), 4, "{report:?}");
    assert!(wall < Duration::from_secs(15), "selftest took {wall:?}");
    assert!(report.elapsed_ms <= wall.as_millis() as u64);

    for p in &report.ecmp {
        measured(p);
        assert_eq!((p.connections, p.destinations), (opts.connections, 10), "{p:?}");
    }

    // Policy 0 hashes the source address, which is `::` at the first
    // lookup: all flows to a destination move, or none; over 10
    // destinations some do. (The field notes expected 0 here.)
    let p0 = find(&report.ecmp, "ipv6 policy 0");
    assert!(p0.broken > 0, "{p0:?}");

    let p1 = find(&report.ecmp, "ipv6 policy 1");
    assert!(p1.broken * 3 >= p1.connections, "policy 1 should break at least a third of the flows: {p1:?}");

    let v4 = find(&report.ecmp, "ipv4 policy 1");
    assert_eq!((v4.family, v4.broken), (4, 0), "{v4:?}");

    // Policy 3 with the host's fields: breaks exactly when the fields hash
    // the source port or the source address.
    let p3 = report.ecmp.iter().find(|p| p.family == 6 && p.policy == 3).expect("policy 3 probe");
    let host_fields = std::fs::read_to_string("/proc/sys/net/ipv6/fib_multipath_hash_fields").ok();
    assert_eq!(p3.fields, host_fields.as_deref().and_then(ecmp::parse_sysctl_u32), "{p3:?}");
    assert!(p3.note.is_some(), "{p3:?}");
    let fields = p3.fields.expect("this kernel has fib_multipath_hash_fields");
    assert_eq!(p3.affected, fields & (FIELD_SRC_IP | FIELD_SRC_PORT) != 0, "{p3:?}");

    // JSON round trip, as `routeguard selftest --json` would print it.
    let text = serde_json::to_string(&report).unwrap();
    assert_eq!(serde_json::from_str::<routeguard::selftest::SelftestReport>(&text).unwrap(), report);

    assert_no_namespace_left("after run_all");
    assert_eq!(host_sysctls(), host_before, "the selftest changed the host's sysctls");
}

#[test]
fn policy_3_breaks_exactly_when_a_source_field_is_hashed() {
    require_root();
    let _s = serial();
    let opts = SelftestOptions::default();
    // (fields, at least this many of 30 broken, at most this many)
    for (fields, min, max) in [
        (0x0037, 10, 30), // src, dst, proto, sport, dport: the field notes' "39/60"
        (0x000F, 1, 30),  // src, dst, proto, flowlabel: the field notes' "safe" one
        (0x0026, 0, 0),   // dst, proto, dport
        (0x000E, 0, 0),   // dst, proto, flowlabel
    ] {
        let p = ecmp::probe(&EcmpSetting::custom(6, fields), &opts).expect("probe");
        eprintln!("{p:?}");
        measured(&p);
        assert!((min..=max).contains(&p.broken), "{fields:#06x}: expected {min}..={max} broken: {p:?}");
    }
    assert_no_namespace_left("after the policy 3 probes");
}

#[test]
fn the_daemon_reuses_a_cached_report() {
    require_root();
    let _s = serial();
    let path = std::env::temp_dir().join(format!("rgst-cache-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let first = routeguard::selftest::cached_or_run(&path, 6).expect("self-test");
    assert!(path.exists(), "the report was not cached");
    let second = routeguard::selftest::cached_or_run(&path, 6).expect("cached");
    assert_eq!(first, second, "the cached report was not reused");
    let third = routeguard::selftest::cached_or_run(&path, 7).expect("self-test");
    assert!(third.ecmp.iter().all(|p| p.connections == 7), "a cache for another connection count was reused");
    std::fs::remove_file(&path).unwrap();
    assert_no_namespace_left("after the cached runs");
}

#[test]
fn invalid_options_fail_before_any_namespace_exists() {
    require_root();
    let _s = serial();
    let zero = SelftestOptions { connections: 0, ..Default::default() };
    assert!(matches!(run_all(&zero), Err(SelftestError::InvalidOption(_))));
    assert!(matches!(ecmp::probe(&EcmpSetting::new(6, 1), &zero), Err(SelftestError::InvalidOption(_))));
    assert_no_namespace_left("after invalid options");
}

#[test]
fn a_probe_failing_half_way_leaves_no_namespace() {
    require_root();
    let _s = serial();
    let opts = SelftestOptions { connections: 5, ..Default::default() };

    // An error once links and routes exist.
    let err = ecmp::probe_with_fault(&EcmpSetting::new(6, 1), &opts, Fault::ErrorAfterLinks).unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert_no_namespace_left("after an error half way");

    // A panic on the probe's thread with connections open and servers running.
    eprintln!("(the panic message that follows is the injected one)");
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        ecmp::probe_with_fault(&EcmpSetting::new(4, 1), &opts, Fault::PanicAfterConnect)
    }));
    assert!(panicked.is_err(), "the injected panic did not happen");
    assert_no_namespace_left("after a panic half way");

    // A setting the kernel rejects (policy 99) after the namespaces exist:
    // not measurable, not an error.
    let p = ecmp::probe(&EcmpSetting::new(6, 99), &opts).expect("a rejected setting is a skip");
    let why = p.skipped.as_deref().expect("skipped");
    assert!(why.contains("fib_multipath_hash_policy=99"), "{why}");
    assert!(!p.affected && p.broken == 0);
    assert_no_namespace_left("after a rejected setting");
}

#[test]
fn sweep_removes_the_namespaces_of_dead_selftests_only() {
    require_root();
    let _s = serial();
    // A pid that just exited: its process is gone.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("{NETNS_PREFIX}{dead}-0-r");
    let mine = format!("{NETNS_PREFIX}{}-999999-r", std::process::id());
    for n in [&stale, &mine] {
        assert!(Command::new("ip").args(["netns", "add", n]).status().unwrap().success());
    }
    let removed = sweep_stale();
    let left_stale = namespaces(&stale);
    let left_mine = namespaces(&mine);
    for n in [&mine, &stale] {
        let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
    }
    assert!(removed.contains(&stale), "{removed:?}");
    assert!(left_stale.is_empty(), "{left_stale:?}");
    assert_eq!(left_mine, std::slice::from_ref(&mine), "a live process's namespace was swept");
    assert_no_namespace_left("after the sweep test");
}
