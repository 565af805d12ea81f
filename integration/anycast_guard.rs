//! Subnet-Router anycast labs with the guard and real FRR (Debian's bgpd
//! and zebra): VM peers over iBGP with HV numbered at `prefix::`. Every
//! "session survives" check forces a reset (`clear bgp *`): an established
//! session survives the toggle itself (its cached route stays valid) and
//! only dies at its next reset (field-notes, Hazard 2). The control run
//! without the guard is in `integration/anycast.rs`.

mod common;

use std::time::Duration;

use common::bgp_lab::BgpLab;
use common::{eventually, Daemon};
use serde_json::Value;

const RESET_WITHIN: Duration = Duration::from_secs(10);
const PREFIX: &str = "fdc0:3489:e0fd::";

fn guard(lab: &BgpLab, extra: &[(&str, &str)]) -> Daemon {
    let (vtysh, dir) = lab.vtysh_settings();
    let mut env = vec![
        ("ROUTEGUARD_FRR__VTYSH", vtysh.as_str()),
        ("ROUTEGUARD_FRR__VTY_SOCKET_DIR", dir.as_str()),
        ("ROUTEGUARD_FRR__POLL_INTERVAL", "300ms"),
    ];
    env.extend_from_slice(extra);
    let d = Daemon::start(&lab.vm, &env);
    // The guard knows the peer from FRR before anything is judged.
    eventually(Duration::from_secs(10), || {
        let p = d.json(&["peers"]);
        let ok = p["frr_state"] == "up"
            && p["peers"].as_array().unwrap().iter().any(|x| x["address"] == lab.peer.as_str() && x["source"] == "frr");
        ok.then_some(()).ok_or(format!("{p}"))
    });
    d
}

fn sysctl(lab: &BgpLab, key: &str) -> String {
    lab.vm.exec(&["sysctl", "-n", key]).trim().to_string()
}

fn anycast_on_vm_if(lab: &BgpLab) -> bool {
    let t = lab.vm.exec(&["cat", "/proc/net/anycast6"]);
    t.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[1] == lab.vm_if && f[2] == "fdc03489e0fd00000000000000000000"
    })
}

fn findings(d: &Daemon) -> Vec<Value> {
    d.json(&["findings"])["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["hazard"] == "subnet_anycast")
        .cloned()
        .collect()
}

#[test]
fn peer_is_listed_and_the_latent_conflict_flagged_while_forwarding_is_off() {
    let lab = BgpLab::new("saA", true);
    let d = guard(&lab, &[]);
    let p = d.json(&["peers"]);
    let peer = p["peers"].as_array().unwrap().iter().find(|x| x["address"] == PREFIX).unwrap().clone();
    assert_eq!(peer["state"], "Established", "{peer}");
    assert_eq!(peer["ifname"], lab.vm_if.as_str(), "{peer}");
    assert_eq!(peer["prefix"], "fdc0:3489:e0fd::/64", "{peer}");
    assert_eq!(peer["route_type"], "unicast", "{peer}");
    let f = findings(&d);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["severity"], "warning");
    assert_eq!(d.json(&["status"])["findings"]["subnet_anycast/warning"], 1);
    assert!(f[0]["evidence"][0].as_str().unwrap().contains("forwarding off"), "{f:?}");
}

#[test]
fn veto_keeps_forwarding_off_and_the_session_survives_a_reset() {
    let lab = BgpLab::new("saB", true);
    let d = guard(&lab, &[]);
    let o = d.cli(&["propose", "--sysctl", "net.ipv6.conf.all.forwarding=1"], true);
    assert_eq!(o.status.code(), Some(1), "a veto exits 1");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "veto", "{v}");
    assert!(v["fixes"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("renumber")), "{v}");
    // FRR's own knob is judged the same way.
    let o = d.cli(&["evaluate", "--frr-cli", "ipv6 forwarding"], true);
    assert_eq!(o.status.code(), Some(1), "a veto exits 1");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "veto", "{v}");
    assert_eq!(sysctl(&lab, "net.ipv6.conf.all.forwarding"), "0");
    assert_eq!(d.json(&["status"])["verdicts"]["veto"], 2, "both judgements are counted");
    assert!(lab.reset_and_wait(RESET_WITHIN).is_some(), "session did not come back: {}", lab.state());
    // Approved anyway: forwarding goes on, and remediation (on by default)
    // takes the peering interface back out, as the stage plan would.
    let id = v_id(&d);
    let a = d.json(&["approve", &id.to_string(), "--reason", "maintenance window"]);
    assert_eq!(a["outcome"], "applied", "{a}");
    assert_eq!(sysctl(&lab, "net.ipv6.conf.all.forwarding"), "1");
    eventually(Duration::from_secs(1), || {
        let f = sysctl(&lab, &format!("net.ipv6.conf.{}.forwarding", lab.vm_if));
        (f == "0").then_some(()).ok_or(f)
    });
    assert!(!anycast_on_vm_if(&lab));
    let s = d.json(&["status"]);
    let r = s["remediations"].as_array().unwrap();
    assert!(r.len() == 1 && r[0].as_str().unwrap().ends_with("(core)"), "one remediation, after the change: {s}");
    assert!(lab.reset_and_wait(RESET_WITHIN).is_some(), "session did not come back: {}", lab.state());
}

/// The id of the newest vetoed proposal in the history.
fn v_id(d: &Daemon) -> u64 {
    let h = d.json(&["history"]);
    h["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["type"] == "decision" && e["verdict"] == "veto")
        .and_then(|e| e["change_id"].as_u64())
        .unwrap_or_else(|| panic!("no vetoed proposal in {h}"))
}

#[test]
fn stage_turns_forwarding_on_without_capturing_the_peer() {
    let lab = BgpLab::new("saC", true);
    let d = guard(&lab, &[("ROUTEGUARD_HAZARDS__SUBNET_ANYCAST__ACTION", "stage")]);
    let v = d.json(&["propose", "--sysctl", "net.ipv6.conf.all.forwarding=1"]);
    assert_eq!((v["verdict"].as_str(), v["outcome"].as_str()), (Some("stage"), Some("applied")), "{v}");
    assert!(v["side_effects"][0].as_str().unwrap().contains(&lab.vm_if), "{v}");
    assert_eq!(sysctl(&lab, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(sysctl(&lab, &format!("net.ipv6.conf.{}.forwarding", lab.vm_if)), "0");
    assert!(!anycast_on_vm_if(&lab), "the anycast must not be joined on the peering interface");
    assert!(!lab.route_to_peer().contains("anycast"), "{}", lab.route_to_peer());
    // The guard's own staged toggle is not reported as a remediation.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.json(&["status"])["remediations"], serde_json::json!([]));
    let t = lab.reset_and_wait(RESET_WITHIN);
    assert!(t.is_some(), "session did not come back: {}", lab.state());
    eprintln!("re-established {t:?} after reset");
}

#[test]
fn forwarding_turned_on_behind_the_guards_back_is_undone_and_the_session_survives() {
    let lab = BgpLab::new("saD", true);
    let d = guard(&lab, &[]);
    // The fast path knows the peering interface before the toggle.
    eventually(Duration::from_secs(2), || {
        let s = d.json(&["status"]);
        (s["forwarding_reflex"] == format!("armed: {}", lab.vm_if)).then_some(()).ok_or(format!("{s}"))
    });
    lab.vm_sysctl("net.ipv6.conf.all.forwarding=1");
    let (s, t) = eventually(Duration::from_secs(1), || {
        let s = d.json(&["status"]);
        (!s["remediations"].as_array().unwrap().is_empty()).then_some(s.clone()).ok_or(format!("{s}"))
    });
    let line = s["remediations"][0].as_str().unwrap().to_string();
    eprintln!("remediation seen after {t:?}: {line}");
    assert!(line.contains(&lab.vm_if) && line.ends_with("(reflex)"), "{line}");
    assert_eq!(sysctl(&lab, &format!("net.ipv6.conf.{}.forwarding", lab.vm_if)), "0");
    assert_eq!(sysctl(&lab, "net.ipv6.conf.all.forwarding"), "1", "forwarding itself stays on");
    assert!(!anycast_on_vm_if(&lab));
    assert!(lab.reset_and_wait(RESET_WITHIN).is_some(), "session did not come back: {}", lab.state());
    // One write for one toggle: the core left the reflex's interface alone.
    std::thread::sleep(Duration::from_millis(500));
    let s = d.json(&["status"]);
    assert_eq!(s["remediations"].as_array().unwrap().len(), 1, "{s}");
}

/// A conflict already there when the guard starts (forwarding turned on
/// while it was down) is the core's: no notification for the fast path
/// will come. It is remediated after the first dump.
#[test]
fn a_conflict_present_at_start_is_remediated_by_the_core() {
    let lab = BgpLab::new("saS", true);
    lab.vm_sysctl("net.ipv6.conf.all.forwarding=1");
    assert!(anycast_on_vm_if(&lab), "the kernel did not join the anycast");
    let d = guard(&lab, &[]);
    let (s, _) = eventually(Duration::from_secs(5), || {
        let s = d.json(&["status"]);
        (!s["remediations"].as_array().unwrap().is_empty()).then_some(s.clone()).ok_or(format!("{s}"))
    });
    let line = s["remediations"][0].as_str().unwrap();
    assert!(line.contains(&lab.vm_if) && line.ends_with("(core)"), "{line}");
    assert_eq!(sysctl(&lab, &format!("net.ipv6.conf.{}.forwarding", lab.vm_if)), "0");
    assert!(!anycast_on_vm_if(&lab));
    assert!(lab.reset_and_wait(RESET_WITHIN).is_some(), "session did not come back: {}", lab.state());
}

#[test]
fn without_remediation_the_conflict_is_reported_within_a_second() {
    let lab = BgpLab::new("saE", true);
    let d = guard(&lab, &[("ROUTEGUARD_HAZARDS__SUBNET_ANYCAST__REMEDIATE", "false")]);
    lab.vm_sysctl("net.ipv6.conf.all.forwarding=1");
    let (_, t) = eventually(Duration::from_secs(1), || {
        let f = findings(&d);
        f.iter().any(|x| x["severity"] == "critical").then_some(()).ok_or(format!("{f:?}"))
    });
    eprintln!("critical finding after {t:?}");
    assert_eq!(sysctl(&lab, &format!("net.ipv6.conf.{}.forwarding", lab.vm_if)), "1", "nothing remediated");
    assert!(lab.route_to_peer().contains("anycast"), "{}", lab.route_to_peer());
}

#[test]
fn a_peer_at_two_is_never_flagged() {
    let lab = BgpLab::new("saF", false);
    let d = guard(&lab, &[]);
    assert!(findings(&d).is_empty());
    let v = d.json(&["propose", "--sysctl", "net.ipv6.conf.all.forwarding=1"]);
    assert_eq!((v["verdict"].as_str(), v["outcome"].as_str()), (Some("allow"), Some("applied")), "{v}");
    assert!(findings(&d).is_empty());
    assert!(lab.reset_and_wait(RESET_WITHIN).is_some());
}

#[test]
fn a_whole_frr_config_is_judged_by_its_difference_then_applied() {
    let lab = BgpLab::new("saG", true);
    let d = guard(&lab, &[]);
    // `show running-config` minus vtysh's banner: a valid frr.conf.
    let running: String = lab
        .vm_vtysh("show running-config")
        .lines()
        .filter(|l| !l.starts_with("Building configuration") && !l.starts_with("Current configuration"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // The running configuration plus `ipv6 forwarding`: captures the peer.
    let risky = dir.path().join("risky.conf");
    std::fs::write(&risky, format!("{running}\nipv6 forwarding\n")).unwrap();
    let o = d.cli(&["propose", "--frr-config", risky.to_str().unwrap()], true);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    assert_eq!((v["verdict"].as_str(), o.status.code()), (Some("veto"), Some(1)), "{v}");
    assert_eq!(sysctl(&lab, "net.ipv6.conf.all.forwarding"), "0");
    // Evaluate shows the difference it judged.
    let o = d.cli(&["evaluate", "--frr-config", risky.to_str().unwrap()], true);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["message"].as_str().unwrap().contains("ipv6 forwarding"), "{v}");
    // A harmless difference is applied through FRR's own reload.
    let fine = dir.path().join("fine.conf");
    std::fs::write(&fine, format!("{running}\nip prefix-list routeguard-test seq 5 permit 192.0.2.0/24\n")).unwrap();
    let v = d.json(&["propose", "--frr-config", fine.to_str().unwrap()]);
    assert_eq!((v["verdict"].as_str(), v["outcome"].as_str()), (Some("allow"), Some("applied")), "{v}");
    assert!(lab.vm_vtysh("show running-config").contains("ip prefix-list routeguard-test seq 5 permit 192.0.2.0/24"));
    // The session is untouched.
    assert_eq!(lab.state(), "Established");
    // A file that does not exist: a clear error naming it.
    let o = d.cli(&["evaluate", "--frr-config", "/nonexistent/frr.conf"], true);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/frr.conf"), "{o:?}");
}
