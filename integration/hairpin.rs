//! Hairpin DAD labs on the host kernel (field-notes, Hazard 4): bridge
//! `rgbr0` in namespace H with port `vnet0` in hairpin mode, and a guest
//! namespace G on the other end with enhanced DAD off.

mod common;

use std::time::Duration;

use common::{eventually, Daemon, Netns};
use serde_json::Value;

/// Enough for one DAD probe (1 transmit, 1 s retransmit timer) and its
/// random start delay.
const DAD_TIME: Duration = Duration::from_millis(2500);

struct Lab {
    h: Netns,
    g: Netns,
}

fn lab(tag: &str) -> Lab {
    let h = Netns::new(&format!("{tag}h"));
    let g = Netns::new(&format!("{tag}g"));
    h.ip(&["link", "add", "rgbr0", "type", "bridge"]);
    h.ip(&["link", "set", "rgbr0", "up"]);
    h.ip(&["link", "add", "vnet0", "type", "veth", "peer", "name", "gif", "netns", &g.name]);
    h.ip(&["link", "set", "vnet0", "master", "rgbr0"]);
    h.ip(&["link", "set", "vnet0", "up"]);
    // A guest without RFC 7527 nonces: `all` and the interface are OR-ed.
    g.sysctl("net.ipv6.conf.all.enhanced_dad=0");
    g.sysctl("net.ipv6.conf.default.enhanced_dad=0");
    // gif was created in G before the defaults changed: set it too.
    g.sysctl("net.ipv6.conf.gif.enhanced_dad=0");
    g.ip(&["link", "set", "gif", "up"]);
    Lab { h, g }
}

/// Adds a fresh address in the guest and returns its flags after DAD.
fn fresh_address_flags(g: &Netns, addr: &str) -> String {
    g.ip(&["-6", "addr", "add", addr, "dev", "gif"]);
    std::thread::sleep(DAD_TIME);
    let out = g.ip(&["-6", "addr", "show", "dev", "gif"]);
    let ip = addr.split('/').next().unwrap();
    out.lines().find(|l| l.contains(&format!("inet6 {ip}/"))).unwrap_or("missing").to_string()
}

fn filter_present(h: &Netns) -> bool {
    let o = h.exec_output(&["nft", "list", "chain", "bridge", "routeguard", "hairpin_nd"]);
    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("iifname \"vnet0\" oifname \"vnet0\"")
}

#[test]
fn control_without_the_guard_guest_addresses_fail_dad() {
    let l = lab("hpA");
    l.h.exec(&["bridge", "link", "set", "dev", "vnet0", "hairpin", "on"]);
    let flags = fresh_address_flags(&l.g, "fd00:99::5/64");
    assert!(flags.contains("dadfailed"), "the hazard must reproduce: {flags}");
}

#[test]
fn stage_installs_the_filter_before_hairpin_and_removes_it_after() {
    let l = lab("hpB");
    let d = Daemon::start(&l.h, &[]);
    let v = d.json(&["propose", "--link", "vnet0 hairpin on"]);
    assert_eq!((v["verdict"].as_str(), v["outcome"].as_str()), (Some("stage"), Some("applied")), "{v}");
    assert!(v["steps"][0].as_str().unwrap().contains("reflection filter"), "{v}");
    assert!(filter_present(&l.h));
    let bl = l.h.exec(&["bridge", "-d", "link", "show", "dev", "vnet0"]);
    assert!(bl.contains("hairpin on"), "{bl}");
    let flags = fresh_address_flags(&l.g, "fd00:99::6/64");
    assert!(!flags.contains("dadfailed") && !flags.contains("tentative"), "{flags}");
    // The finding is now informational: the filter mitigates it.
    let f = d.json(&["findings"]);
    let hp: Vec<&Value> = f["findings"].as_array().unwrap().iter().filter(|x| x["hazard"] == "hairpin_dad").collect();
    assert_eq!(hp.len(), 1, "{f}");
    assert_eq!(hp[0]["severity"], "info", "{f}");
    let v = d.json(&["propose", "--link", "vnet0 hairpin off"]);
    assert_eq!((v["verdict"].as_str(), v["outcome"].as_str()), (Some("allow"), Some("applied")), "{v}");
    eventually(Duration::from_secs(2), || {
        (!filter_present(&l.h)).then_some(()).ok_or("filter still there".to_string())
    });
}

#[test]
fn hairpin_behind_the_guards_back_gets_the_filter_at_once() {
    let l = lab("hpC");
    let d = Daemon::start(&l.h, &[]);
    l.h.exec(&["bridge", "link", "set", "dev", "vnet0", "hairpin", "on"]);
    let (s, _) = eventually(Duration::from_secs(2), || {
        let s = d.json(&["status"]);
        let hit = s["remediations"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("installed"));
        hit.then_some(s.clone()).ok_or(format!("{s}"))
    });
    let line = s["remediations"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|r| r.as_str().filter(|r| r.contains("installed")))
        .unwrap();
    let ms: f64 = line.split(" ms").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    // The 50 ms goal is a benchmark figure (BENCHMARKS.md), not a timed
    // test; here "at once" means well within a second.
    eprintln!("{line}");
    assert!(ms < 1000.0, "remediation took {ms} ms");
    assert!(filter_present(&l.h));
    let flags = fresh_address_flags(&l.g, "fd00:99::7/64");
    assert!(!flags.contains("dadfailed") && !flags.contains("tentative"), "{flags}");
    l.h.exec(&["bridge", "link", "set", "dev", "vnet0", "hairpin", "off"]);
    eventually(Duration::from_secs(2), || {
        (!filter_present(&l.h)).then_some(()).ok_or("filter still there".to_string())
    });
}

/// The real purpose of hairpin: two endpoints behind one port (VEPA,
/// emulated with a guest-side bridge whose ports are isolated, so their
/// traffic must go up to rgbr0 and come back) reach each other through the
/// reflection, with the filter in place. IPv4 is used: the filter drops
/// reflected IPv6 multicast, so IPv6 ND between them no longer resolves
/// (a documented side effect).
#[test]
fn endpoints_behind_a_hairpin_port_still_reach_each_other_with_the_filter() {
    let l = lab("hpD");
    let a = Netns::new("hpDa");
    let b = Netns::new("hpDb");
    l.g.ip(&["link", "add", "gbr", "type", "bridge"]);
    l.g.ip(&["link", "set", "gbr", "up"]);
    l.g.ip(&["link", "set", "gif", "master", "gbr"]);
    // Without learning every frame between A and B is flooded up to rgbr0
    // and comes back by the reflection, as behind a VEPA port; with it, the
    // guest bridge would learn A on gif from the reflected copy.
    l.g.exec(&["bridge", "link", "set", "dev", "gif", "learning", "off"]);
    for (ns, port, addr) in [(&a, "gpa", "10.9.0.1/24"), (&b, "gpb", "10.9.0.2/24")] {
        l.g.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
        l.g.ip(&["link", "set", port, "master", "gbr"]);
        l.g.ip(&["link", "set", port, "up"]);
        l.g.exec(&["bridge", "link", "set", "dev", port, "isolated", "on", "learning", "off"]);
        ns.ip(&["addr", "add", addr, "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
    // A TCP service on B; A connects through the reflection.
    let mut srv = b.spawn(&[
        "/usr/bin/python3",
        "-c",
        "import socket\ns=socket.socket(); s.bind(('10.9.0.2',8080)); s.listen(); print('ready', flush=True)\n\
         while True:\n    c,_=s.accept(); c.sendall(b'hello via hairpin'); c.close()",
    ]);
    assert_eq!(common::first_line(&mut srv), "ready");
    let reach = || {
        let o = a.exec_output(&[
            "/usr/bin/python3",
            "-c",
            "import socket\nc=socket.create_connection(('10.9.0.2',8080),timeout=1); print(c.recv(100).decode())",
        ]);
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "hello via hairpin"
    };
    let d = Daemon::start(&l.h, &[]);
    assert!(!reach(), "without hairpin the isolated endpoints must not reach each other");
    let v = d.json(&["propose", "--link", "vnet0 hairpin on"]);
    assert_eq!(v["outcome"], "applied", "{v}");
    assert!(filter_present(&l.h));
    eventually(Duration::from_secs(5), || reach().then_some(()).ok_or("A cannot reach B via hairpin".to_string()));
    let _ = srv.kill();
}
