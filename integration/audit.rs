//! `routeguard audit`: one-shot, no daemon. A clean namespace reports
//! nothing and exits 0; each hazard present is reported and fails the audit
//! at or above --fail-on.

mod common;

use common::ecmp_lab::EcmpLab;
use common::Netns;
use serde_json::Value;

fn audit(ns: &Netns, args: &[&str]) -> (i32, Value) {
    let mut cmd = vec![common::bin(), "audit", "--json"];
    cmd.extend_from_slice(args);
    let o = ns.exec_output(&cmd);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("audit printed no JSON ({e}): {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code().unwrap_or(-1), v)
}

fn hazards(v: &Value) -> Vec<(String, String)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["hazard"].as_str().unwrap().to_string(), f["severity"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn a_clean_namespace_has_no_findings_and_exits_0() {
    let ns = Netns::new("audc");
    ns.ip(&["link", "add", "rgA", "type", "veth", "peer", "name", "rgB"]);
    ns.ip(&["link", "set", "rgA", "up"]);
    ns.ip(&["-6", "addr", "add", "fdc0:1::1/64", "dev", "rgA", "nodad"]);
    ns.ip(&["-6", "route", "add", "2001:db8::/32", "via", "fdc0:1::2", "dev", "rgA"]);
    let (code, v) = audit(&ns, &[]);
    assert_eq!(code, 0, "{v}");
    assert!(hazards(&v).is_empty(), "{v}");
    assert_eq!(v["selftest"], "done", "the audit runs the self-test");
}

#[test]
fn a_gateway_at_the_subnet_router_anycast_is_reported() {
    let ns = Netns::new("auda");
    ns.ip(&["link", "add", "rgA", "type", "veth", "peer", "name", "rgB"]);
    ns.ip(&["link", "set", "rgA", "up"]);
    ns.ip(&["-6", "addr", "add", "fdc0:1::1/64", "dev", "rgA", "nodad"]);
    ns.ip(&["-6", "route", "add", "2001:db8::/32", "via", "fdc0:1::", "dev", "rgA"]);
    let (code, v) = audit(&ns, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(hazards(&v), vec![("subnet_anycast".to_string(), "warning".to_string())]);
    assert!(v["findings"][0]["evidence"][0].as_str().unwrap().contains("fdc0:1::/64 on rgA"), "{v}");
    // A latent warning does not fail an audit that only fails on critical.
    let (code, _) = audit(&ns, &["--fail-on", "critical"]);
    assert_eq!(code, 0);
    // With forwarding on it is critical.
    ns.sysctl("net.ipv6.conf.all.forwarding=1");
    let (code, v) = audit(&ns, &["--fail-on", "critical"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(hazards(&v), vec![("subnet_anycast".to_string(), "critical".to_string())]);
    // The audit reports; it does not remediate (the daemon would turn
    // forwarding off on rgA).
    let fwd = ns.exec_output(&["cat", "/proc/sys/net/ipv6/conf/rgA/forwarding"]);
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1", "the audit changed the router");
}

#[test]
fn established_flows_over_an_affected_multipath_route_are_reported() {
    let lab = EcmpLab::new("audE", true, 1);
    let mut h = lab.holder();
    h.open(20);
    let (code, v) = audit(&lab.r, &[]);
    assert_eq!(code, 1, "{v}");
    let f: Vec<&Value> = v["findings"].as_array().unwrap().iter().filter(|f| f["hazard"] == "ecmp_rehash").collect();
    assert_eq!(f.len(), 1, "{v}");
    // The audit cannot have seen these flows' SYNs, and the self-test finds
    // policy 1 affected: every one of them is at risk.
    assert_eq!(f[0]["breaks"], 20, "{v}");
}

#[test]
fn a_hairpin_bridge_port_is_reported_and_left_alone() {
    let ns = Netns::new("audh");
    ns.ip(&["link", "add", "rgbr0", "type", "bridge"]);
    ns.ip(&["link", "set", "rgbr0", "up"]);
    ns.ip(&["link", "add", "vnet0", "type", "veth", "peer", "name", "rgB"]);
    ns.ip(&["link", "set", "vnet0", "master", "rgbr0", "up"]);
    ns.exec(&["bridge", "link", "set", "dev", "vnet0", "hairpin", "on"]);
    let (code, v) = audit(&ns, &[]);
    assert_eq!(code, 1, "{v}");
    let f: Vec<&Value> = v["findings"].as_array().unwrap().iter().filter(|f| f["hazard"] == "hairpin_dad").collect();
    assert_eq!(f.len(), 1, "{v}");
    assert!(f[0]["evidence"].to_string().contains("vnet0"), "{v}");
    // Reported, not remediated: no reflection filter was installed.
    let t = ns.exec_output(&["nft", "list", "tables"]);
    assert!(!String::from_utf8_lossy(&t.stdout).contains("routeguard"), "the audit installed a filter");
}

#[test]
fn a_bad_config_means_the_audit_could_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[hazards.ecmp_rehash]\naction = \"maybe\"\n").unwrap();
    let o = std::process::Command::new(common::bin()).args(["audit", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("action"), "{}", String::from_utf8_lossy(&o.stderr));
}
