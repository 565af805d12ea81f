//! Change control: the journal under the state directory, held changes
//! that survive SIGTERM and kill -9, and the operator's approve, cancel
//! and history. On the ECMP lab (IPv6, L4 hashing), whose flows make an
//! identical multipath replace risky.

mod common;

use std::time::Duration;

use common::ecmp_lab::EcmpLab;
use common::{eventually, slow, slowdown, Daemon};
use serde_json::Value;

const FLOWS: usize = 10;

/// A guard with `action` for ECMP (no self-test: the kernel is assumed
/// affected, so every flow over the multipath route is at risk).
fn guard(lab: &EcmpLab, action: &str, extra: &[(&str, &str)]) -> Daemon {
    let poll = format!("{}ms", 200 * slowdown());
    let mut env = vec![
        ("ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL", poll.as_str()),
        ("ROUTEGUARD_HAZARDS__ECMP_REHASH__ACTION", action),
        ("ROUTEGUARD_HAZARDS__ECMP_REHASH__MAX_DELAY", "10m"),
    ];
    env.extend_from_slice(extra);
    Daemon::start(&lab.r, &env)
}

/// Waits until the guard lists `n` flows, each with its predicted member,
/// and some of them armed (so the lab's replace is risky).
fn wait_flows(d: &Daemon, n: usize) {
    eventually(slow(Duration::from_secs(10)), || {
        let f = d.json(&["flows"]);
        let list = f["flows"].as_array().unwrap();
        let predicted = list.iter().filter(|x| !x["after"].is_null()).count();
        let armed = list.iter().filter(|x| x["armed"] == true).count();
        (list.len() == n && predicted == n && armed > 0)
            .then_some(())
            .ok_or(format!("{} flows, {predicted} predicted, {armed} armed", list.len()))
    });
}

fn propose(d: &Daemon, spec: &str) -> Value {
    let o = d.cli(&["propose", "--route-replace", spec], true);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
}

fn history(d: &Daemon, id: u64) -> Vec<Value> {
    d.json(&["history", "--id", &id.to_string()])["history"].as_array().unwrap().clone()
}

fn types(h: &[Value]) -> Vec<String> {
    h.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
}

fn pending_ids(d: &Daemon) -> Vec<u64> {
    d.json(&["pending"])["pending"].as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect()
}

/// The lab's route with member 1 weighted 2: a change `ip route` shows.
fn reweighted(lab: &EcmpLab) -> String {
    lab.route_spec().replacen("dev rgr1", "dev rgr1 weight 2", 1)
}

fn route_text(lab: &EcmpLab) -> String {
    lab.r.ip(&["-6", "route", "show", &format!("{}/128", lab.anycast())])
}

#[test]
fn a_held_change_survives_sigterm_and_applies_after_the_restart() {
    let lab = EcmpLab::new("chA", true, 1);
    let mut d = guard(&lab, "delay", &[]);
    let mut h = lab.holder();
    h.open(FLOWS);
    wait_flows(&d, FLOWS);
    let v = propose(&d, &reweighted(&lab));
    assert_eq!((v["verdict"].as_str(), v["outcome"].as_str()), (Some("delay"), Some("pending")), "{v}");
    let id = v["change_id"].as_u64().unwrap();

    let st = d.stop("TERM", slow(Duration::from_secs(10))).expect("no exit within the grace period after SIGTERM");
    assert!(st.success(), "SIGTERM exit status {st}");
    d.restart();
    let p = d.json(&["pending"]);
    assert_eq!(pending_ids(&d), vec![id], "{p}");
    assert!(p["pending"][0]["state"].as_str().unwrap().contains("resumed after a restart"), "{p}");
    assert!(p["pending"][0]["deadline_seconds"].as_u64().unwrap() > 500, "the deadline is kept: {p}");
    // The restarted guard finds the flows again and keeps waiting.
    wait_flows(&d, FLOWS);
    std::thread::sleep(slow(Duration::from_secs(1)));
    assert!(!route_text(&lab).contains("weight 2"), "applied while flows were open: {}", route_text(&lab));
    assert!(h.check().is_empty(), "no connection may break while the change waits");

    h.close();
    eventually(slow(Duration::from_secs(10)), || {
        pending_ids(&d).is_empty().then_some(()).ok_or("still pending".to_string())
    });
    eventually(slow(Duration::from_secs(5)), || {
        route_text(&lab).contains("weight 2").then_some(()).ok_or(route_text(&lab))
    });
    let h = history(&d, id);
    assert_eq!(types(&h), vec!["decision", "held", "applying", "done"], "{h:?}");
    assert_eq!(h[3]["outcome"], "applied", "{h:?}");
    // The ids of later changes continue after the journal's.
    let v = propose(&d, &lab.route_spec());
    assert!(v["change_id"].as_u64().unwrap() > id, "{v}");
}

#[test]
fn kill_9_after_the_first_stage_step_rolls_forward_on_restart() {
    let lab = EcmpLab::new("chB", true, 1);
    let pause = (3000 * slowdown()).to_string();
    let mut d = guard(&lab, "stage", &[("RG_TEST_PAUSE_AFTER_STEP_MS", pause.as_str())]);
    let mut h = lab.holder();
    h.open(FLOWS);
    wait_flows(&d, FLOWS);
    let v = propose(&d, &reweighted(&lab));
    assert_eq!((v["verdict"].as_str(), v["outcome"].as_str()), (Some("stage"), Some("pending")), "{v}");
    let id = v["change_id"].as_u64().unwrap();
    h.close();
    // The first step (the port-free hash) lands, then the guard dies
    // before the route is replaced.
    eventually(slow(Duration::from_secs(10)), || {
        let p = lab.r.exec(&["sysctl", "-n", "net.ipv6.fib_multipath_hash_policy"]);
        (p.trim() == "3").then_some(()).ok_or(p)
    });
    d.stop("KILL", Duration::from_secs(5)).expect("kill -9");
    assert!(!route_text(&lab).contains("weight 2"), "the route changed before the kill: {}", route_text(&lab));
    let journal = std::fs::read_to_string(d.dir().join("state/journal.jsonl")).unwrap();
    let of_id: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["change_id"].as_u64() == Some(id))
        .collect();
    assert_eq!(types(&of_id), vec!["decision", "held", "applying", "step"], "{journal}");

    // Restarted: the change is judged again (no flows now) and completes.
    d.restart();
    eventually(slow(Duration::from_secs(15)), || {
        route_text(&lab).contains("weight 2").then_some(()).ok_or(route_text(&lab))
    });
    eventually(slow(Duration::from_secs(5)), || {
        pending_ids(&d).is_empty().then_some(()).ok_or("still pending".to_string())
    });
    let h = history(&d, id);
    assert_eq!(types(&h), vec!["decision", "held", "applying", "step", "applying", "step", "done"], "{h:?}");
    assert_eq!(h.last().unwrap()["outcome"], "applied", "{h:?}");
    // Journal and kernel agree: the staged hash and the new route.
    assert_eq!(lab.r.exec(&["sysctl", "-n", "net.ipv6.fib_multipath_hash_policy"]).trim(), "3");
}

#[test]
fn a_veto_can_be_approved_with_a_reason_and_the_approval_is_audited() {
    let lab = EcmpLab::new("chC", true, 1);
    let d = guard(&lab, "veto", &[]);
    let mut h = lab.holder();
    h.open(FLOWS);
    wait_flows(&d, FLOWS);
    let v = propose(&d, &reweighted(&lab));
    assert_eq!((v["verdict"].as_str(), v["outcome"].as_str()), (Some("veto"), Some("vetoed")), "{v}");
    let id = v["change_id"].as_u64().unwrap();
    assert!(v["message"].as_str().unwrap().contains(&format!("routeguard approve {id}")), "{v}");

    // No reason, an unknown id: refused, with the reason why.
    let o = d.cli(&["approve", &id.to_string(), "--reason", " "], true);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--reason must not be empty"), "{o:?}");
    let o = d.cli(&["approve", "999999", "--reason", "x"], true);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no held or recently vetoed change 999999"), "{o:?}");
    assert!(!route_text(&lab).contains("weight 2"));

    let v = d.json(&["approve", &id.to_string(), "--reason", "maintenance window 42"]);
    assert_eq!(v["outcome"], "applied", "{v}");
    assert!(route_text(&lab).contains("weight 2"), "{}", route_text(&lab));
    let h = history(&d, id);
    assert_eq!(types(&h), vec!["decision", "approve", "applying", "done"], "{h:?}");
    assert_eq!(h[0]["verdict"], "veto");
    assert_eq!(h[1]["reason"], "maintenance window 42");
    assert!(h[1]["who"].as_str().unwrap().contains("uid 0"), "{h:?}");
    assert!(d.log_text().contains("change approved despite its findings"), "the approval is logged");
    // Approved once: not again.
    let o = d.cli(&["approve", &id.to_string(), "--reason", "again"], true);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

#[test]
fn a_held_change_can_be_cancelled_and_nothing_is_applied() {
    let lab = EcmpLab::new("chD", true, 1);
    let d = guard(&lab, "delay", &[]);
    let mut h = lab.holder();
    h.open(FLOWS);
    wait_flows(&d, FLOWS);
    let id = propose(&d, &reweighted(&lab))["change_id"].as_u64().unwrap();
    // A watcher follows the change until it ends.
    let watcher = std::process::Command::new(common::bin())
        .args(["change", &id.to_string(), "--watch", "--json", "--socket"])
        .arg(&d.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(d.json(&["change", &id.to_string()])["state"], "held");
    let v = d.json(&["cancel", &id.to_string(), "--reason", "wrong route"]);
    assert!(v["message"].as_str().unwrap().contains("cancelled"), "{v}");
    assert!(pending_ids(&d).is_empty());
    let o = d.cli(&["cancel", &id.to_string()], true);
    assert_eq!(o.status.code(), Some(2), "a second cancel is refused: {o:?}");
    // Even once the flows are gone, nothing applies.
    h.close();
    std::thread::sleep(slow(Duration::from_secs(2)));
    assert!(!route_text(&lab).contains("weight 2"), "{}", route_text(&lab));
    let hist = history(&d, id);
    assert_eq!(types(&hist), vec!["decision", "held", "cancel"], "{hist:?}");
    assert_eq!(hist[2]["reason"], "wrong route");
    // The watcher saw every entry once and ended with the cancel.
    let out = watcher.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let seen: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(types(&seen), vec!["decision", "held", "cancel"], "{seen:?}");
    assert_eq!(d.json(&["change", &id.to_string()])["state"], "cancelled");
    let o = d.cli(&["change", "999999"], true);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no change 999999"), "{o:?}");
    // History: a limit, and a bad one named.
    let h = d.json(&["history", "--limit", "1"]);
    assert_eq!(h["history"].as_array().unwrap().len(), 1, "{h}");
    assert_eq!(h["history"][0]["type"], "cancel", "the newest entry: {h}");
    let o = d.cli(&["history", "--limit", "0"], true);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--limit"), "{o:?}");
}

/// A veto stays approvable after a restart (`kill -9`): its decision is
/// in the journal, and `approve` applies it then.
#[test]
fn a_veto_is_still_approvable_after_kill_9() {
    let ns = common::Netns::new("vetoR");
    ns.ip(&["link", "add", "rgV", "type", "veth", "peer", "name", "rgW"]);
    ns.ip(&["link", "set", "rgV", "up"]);
    ns.ip(&["-6", "addr", "add", "fdc0:7::1/64", "dev", "rgV", "nodad"]);
    // The gateway sits at the Subnet-Router anycast of rgV's /64.
    ns.ip(&["-6", "route", "add", "2001:db8::/32", "via", "fdc0:7::", "dev", "rgV"]);
    let mut d = Daemon::start(&ns, &[]);
    let v = d.decision(&["propose", "--sysctl", "net.ipv6.conf.all.forwarding=1"]);
    assert_eq!(v["verdict"], "veto", "{v}");
    let id = v["change_id"].as_u64().unwrap();
    assert!(d.stop("KILL", Duration::from_secs(5)).is_some());
    d.restart();
    let a = d.json(&["approve", &id.to_string(), "--reason", "renumbering tonight"]);
    assert_eq!(a["outcome"], "applied", "{a}");
    assert_eq!(ns.exec(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).trim(), "1");
    assert_eq!(types(&history(&d, id)), vec!["decision", "approve", "applying", "done"]);
    // Approved once: not again, after another restart either.
    d.restart();
    let o = d.cli(&["approve", &id.to_string(), "--reason", "again"], true);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
