//! Foundation labs: the real daemon in a fresh namespace must see every
//! kernel change within a second, and recover from a netlink overrun to
//! exactly what a fresh dump shows.

mod common;

use std::time::Duration;

use common::{eventually, first_line, Daemon, Netns};
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(1);

fn find(list: &Value, pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    list.as_array()?.iter().find(|v| pred(v))
}

#[test]
fn each_kernel_change_appears_within_one_second() {
    let ns = Netns::new("found");
    // Sockets are polled; poll faster than the 1 s budget (this also
    // exercises an environment override).
    let d = Daemon::start(&ns, &[("ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL", "200ms")]);
    let base = d.json(&["status"]);
    assert_eq!(base["stale"], false);
    // No FRR in this namespace: kernel-only mode, and status says why.
    let frr = base["frr_state"].as_str().unwrap_or_default().to_string();
    assert!(frr == "connecting" || frr.starts_with("unavailable"), "frr_state {frr}");

    // veth links.
    ns.ip(&["link", "add", "rgA", "type", "veth", "peer", "name", "rgB"]);
    ns.ip(&["link", "set", "rgA", "up"]);
    ns.ip(&["link", "set", "rgB", "up"]);
    let (_, t) = eventually(WITHIN, || {
        let links = d.json(&["show", "links"]);
        let a = find(&links, |l| l["name"] == "rgA").ok_or("rgA missing")?;
        find(&links, |l| l["name"] == "rgB").ok_or("rgB missing")?;
        (a["kind"] == "veth").then_some(()).ok_or(format!("rgA kind {}", a["kind"]))
    });
    eprintln!("links seen after {t:?}");

    // An IPv6 3-way multipath route.
    ns.ip(&["-6", "addr", "add", "fd00:1::1/64", "dev", "rgA", "nodad"]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "fd00:ecec:f::1/128",
        "nexthop",
        "via",
        "fd00:1::2",
        "dev",
        "rgA",
        "nexthop",
        "via",
        "fd00:1::3",
        "dev",
        "rgA",
        "nexthop",
        "via",
        "fd00:1::4",
        "dev",
        "rgA",
    ]);
    let (r, t) = eventually(WITHIN, || {
        let r = d.json(&["lookup", "fd00:ecec:f::1"]);
        (r["members"].as_array().map(|m| m.len()) == Some(3)).then_some(r.clone()).ok_or(format!("{r}"))
    });
    eprintln!("multipath route seen after {t:?}");
    assert_eq!(r["prefix"], "fd00:ecec:f::1/128");
    assert_eq!(r["table"], 254);
    assert_eq!(r["multipath"], true);
    let gws: Vec<&str> = r["members"].as_array().unwrap().iter().map(|m| m["gateway"].as_str().unwrap()).collect();
    assert_eq!(gws, ["fd00:1::2", "fd00:1::3", "fd00:1::4"]);
    assert!(r["members"].as_array().unwrap().iter().all(|m| m["ifname"] == "rgA"));

    // A nexthop-object group and a route using it.
    for (id, gw) in [("1", "fd00:1::2"), ("2", "fd00:1::3"), ("3", "fd00:1::4")] {
        ns.ip(&["nexthop", "add", "id", id, "via", gw, "dev", "rgA"]);
    }
    ns.ip(&["nexthop", "add", "id", "10", "group", "1/2,3/3"]);
    ns.ip(&["-6", "route", "add", "fd00:ecec:e::/64", "nhid", "10"]);
    let (r, t) = eventually(WITHIN, || {
        let r = d.json(&["lookup", "fd00:ecec:e::99"]);
        (r["nhid"] == 10 && r["members"].as_array().map(|m| m.len()) == Some(3))
            .then_some(r.clone())
            .ok_or(format!("{r}"))
    });
    eprintln!("nexthop group route seen after {t:?}");
    let m = r["members"].as_array().unwrap();
    assert_eq!(m[1]["gateway"], "fd00:1::3");
    assert_eq!(m[1]["weight"], 3, "group member weight");
    assert_eq!(m[2]["nhid"], 3);

    // Forwarding toggles, seen through netconf, and the Subnet-Router
    // anycast address the kernel joins because of it.
    ns.sysctl("net.ipv6.conf.all.forwarding=1");
    let (_, t) = eventually(WITHIN, || {
        let s = d.json(&["status"]);
        let f = &s["sysctls"]["net.ipv6.conf.rgA.forwarding"];
        (s["sysctls"]["net.ipv6.conf.all.forwarding"] == "1" && f == "1")
            .then_some(())
            .ok_or(format!("{}", s["sysctls"]))
    });
    eprintln!("forwarding=1 seen after {t:?}");
    let (_, t) = eventually(WITHIN, || {
        let a = d.json(&["show", "anycast"]);
        find(&a, |x| x["address"] == "fd00:1::" && x["ifname"] == "rgA").map(|_| ()).ok_or(format!("{a}"))
    });
    eprintln!("subnet-router anycast seen after {t:?}");
    ns.sysctl("net.ipv6.conf.rgA.forwarding=0");
    eventually(WITHIN, || {
        let s = d.json(&["status"]);
        (s["sysctls"]["net.ipv6.conf.rgA.forwarding"] == "0").then_some(()).ok_or(format!("{}", s["sysctls"]))
    });

    // A bridge port with hairpin on, and an address on it.
    ns.ip(&["link", "add", "rgbr0", "type", "bridge"]);
    ns.ip(&["link", "set", "rgbr0", "up"]);
    ns.ip(&["link", "set", "rgB", "master", "rgbr0"]);
    ns.exec(&["bridge", "link", "set", "dev", "rgB", "hairpin", "on"]);
    ns.ip(&["-6", "addr", "add", "fd00:2::5/64", "dev", "rgB", "nodad"]);
    let (_, t) = eventually(WITHIN, || {
        let links = d.json(&["show", "links"]);
        let b = find(&links, |l| l["name"] == "rgB").ok_or("rgB missing")?;
        let br = find(&links, |l| l["name"] == "rgbr0").ok_or("bridge missing")?;
        if b["master"] != br["ifindex"] || b["bridge_port"]["hairpin"] != true {
            return Err(format!("rgB: {b}"));
        }
        let addrs = d.json(&["show", "addresses"]);
        find(&addrs, |a| a["address"] == "fd00:2::5" && a["ifname"] == "rgB" && a["prefix_len"] == 64)
            .ok_or(format!("address missing: {addrs}"))?;
        let s = d.json(&["status"]);
        (s["counts"]["hairpin_ports"] == 1).then_some(()).ok_or(format!("{}", s["counts"]))
    });
    eprintln!("hairpin port + address seen after {t:?}");
    ns.exec(&["bridge", "link", "set", "dev", "rgB", "hairpin", "off"]);
    eventually(WITHIN, || {
        let s = d.json(&["status"]);
        (s["counts"]["hairpin_ports"] == 0).then_some(()).ok_or(format!("{}", s["counts"]))
    });

    // A TCP connection.
    let mut conn = ns.spawn(&[
        "python3",
        "-c",
        "import socket,time\n\
         s=socket.socket(socket.AF_INET6); s.bind(('fd00:1::1',0)); s.listen()\n\
         c=socket.create_connection(('fd00:1::1',s.getsockname()[1])); a,_=s.accept()\n\
         print(s.getsockname()[1], c.getsockname()[1], flush=True); time.sleep(60)",
    ]);
    let line = first_line(&mut conn);
    let ports: Vec<u16> = line.split_whitespace().map(|p| p.parse().unwrap()).collect();
    let (_, t) = eventually(WITHIN, || {
        let socks = d.json(&["show", "sockets"]);
        find(&socks, |s| {
            s["local"] == format!("[fd00:1::1]:{}", ports[1]) && s["remote"] == format!("[fd00:1::1]:{}", ports[0])
        })
        .map(|_| ())
        .ok_or(format!("{socks}"))
    });
    eprintln!("tcp connection seen after {t:?}");
    let _ = conn.kill();
    let _ = conn.wait();
    eventually(Duration::from_secs(2), || {
        let s = d.json(&["status"]);
        (s["counts"]["sockets"] == 0).then_some(()).ok_or(format!("{}", s["counts"]))
    });

    // Removals are tracked too.
    ns.ip(&["-6", "route", "del", "fd00:ecec:f::1/128"]);
    eventually(WITHIN, || {
        let r = d.json(&["lookup", "fd00:ecec:f::1"]);
        (r["found"] == false || r["prefix"] != "fd00:ecec:f::1/128").then_some(()).ok_or(format!("{r}"))
    });
    ns.ip(&["link", "del", "rgA"]);
    eventually(WITHIN, || {
        let links = d.json(&["show", "links"]);
        find(&links, |l| l["name"] == "rgA").is_none().then_some(()).ok_or("rgA still there".to_string())
    });

    // After all that the live model equals a fresh dump.
    assert_model_matches_fresh_dump(&ns, &d, Duration::from_secs(5));
}

/// Polls until the daemon's digest equals a one-shot dump's digest.
fn assert_model_matches_fresh_dump(ns: &Netns, d: &Daemon, timeout: Duration) {
    eventually(timeout, || {
        let live = d.json(&["status", "--digest"]);
        let o = ns.exec_output(&[common::bin(), "debug-digest"]);
        let fresh: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("debug-digest: {e}"))?;
        if live["model_digest"] == fresh["model_digest"] {
            Ok(())
        } else {
            Err(format!("live {} vs fresh {}", live["counts"], fresh["counts"]))
        }
    });
}

#[test]
fn model_survives_an_overrun_and_ends_identical_to_a_fresh_dump() {
    let ns = Netns::new("ovr");
    ns.ip(&["link", "add", "rgA", "type", "veth", "peer", "name", "rgB"]);
    ns.ip(&["link", "set", "rgA", "up"]);
    ns.ip(&["-6", "addr", "add", "fd00:1::1/64", "dev", "rgA", "nodad"]);
    // A tiny receive buffer guarantees ENOBUFS under a burst.
    let d = Daemon::start(&ns, &[("ROUTEGUARD_KERNEL__NETLINK_RCVBUF", "4096")]);
    let batch: String = (0..100_000u32)
        .map(|i| format!("route add fd00:aa:{:x}:{:x}::/64 via fd00:1::2 dev rgA\n", i >> 16, i & 0xffff))
        .collect();
    let file = d.dir().join("burst.batch");
    std::fs::write(&file, batch).unwrap();
    ns.exec(&["ip", "-batch", file.to_str().unwrap()]);
    let (s, t) = eventually(Duration::from_secs(120), || {
        let s = d.json(&["status"]);
        let v6 = s["counts"]["routes_v6"].as_u64().unwrap_or(0);
        if s["overruns"].as_u64() >= Some(1) && s["resyncs"].as_u64() >= Some(1) && s["stale"] == false && v6 >= 100_000
        {
            Ok(s)
        } else {
            Err(format!("{s}"))
        }
    });
    eprintln!("converged after {t:?}: overruns {} resyncs {}", s["overruns"], s["resyncs"]);
    let kernel_v6 = ns.exec(&["ip", "-6", "route", "show", "table", "all"]).lines().count() as u64;
    // `ip -6 route show table all` prints one line per route (multipath
    // continuation lines start with whitespace; there are none here).
    assert_eq!(s["counts"]["routes_v6"].as_u64(), Some(kernel_v6));
    assert_model_matches_fresh_dump(&ns, &d, Duration::from_secs(30));
}

#[test]
fn watch_events_streams_model_changes() {
    let ns = Netns::new("watch");
    let d = Daemon::start(&ns, &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = routeguard::client::connect(&d.socket).await.expect("connect");
        let mut stream = c.watch_events(routeguard::proto::guard::WatchEventsRequest {}).await.unwrap().into_inner();
        ns.ip(&["link", "add", "rgW1", "type", "veth", "peer", "name", "rgW2"]);
        ns.ip(&["link", "set", "rgW1", "up"]);
        ns.ip(&["-6", "addr", "add", "fd00:77::1/64", "dev", "rgW1", "nodad"]);
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let done = |seen: &[(String, String, String)]| {
            seen.iter().any(|e| e.0 == "route" && e.1 == "add" && e.2.contains("fd00:77::/64"))
                && seen.iter().any(|e| e.0 == "address" && e.1 == "add" && e.2.contains("fd00:77::1/64"))
        };
        while !done(&seen) {
            let ev = tokio::time::timeout_at(deadline, stream.message())
                .await
                .unwrap_or_else(|_| panic!("no route event within 3 s; saw {seen:?}"))
                .expect("stream error")
                .expect("stream ended");
            seen.push((ev.kind, ev.op, ev.key));
        }
        assert!(seen.iter().any(|e| e.0 == "link" && e.1 == "add" && e.2.contains("rgW1")), "{seen:?}");
        assert!(seen.iter().any(|e| e.0 == "address" && e.1 == "add" && e.2.contains("fd00:77::1/64")), "{seen:?}");
    });
}

#[test]
fn bad_input_gets_clear_errors_and_the_daemon_keeps_serving() {
    let ns = Netns::new("badin");
    let d = Daemon::start(&ns, &[]);
    let o = d.cli(&["lookup", "not-an-address"], true);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`not-an-address` is not an IPv4 or IPv6 address"));
    let o = d.cli(&["show", "bogus"], true);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown kind `bogus`") && err.contains("links"), "{err}");
    // The daemon is still there.
    assert_eq!(d.json(&["status"])["ready"], true);

    // A second daemon on the same socket refuses to start.
    let o = ns.exec_output(&[common::bin(), "run", "--socket", d.socket.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already serving"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(d.json(&["status"])["ready"], true);

    // The socket is 0660.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    // Clients name the socket they could not reach.
    let o = std::process::Command::new(common::bin())
        .args(["status", "--socket", "/nonexistent/rg.sock"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/rg.sock"));
}

#[test]
fn bad_config_is_rejected_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rg.toml");
    std::fs::write(&cfg, "[kernel]\nsock_poll_intervall = \"1s\"\n").unwrap();
    let o = std::process::Command::new(common::bin())
        .args(["run", "--socket"])
        .arg(dir.path().join("s.sock"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown key `kernel.sock_poll_intervall`") && err.contains(cfg.to_str().unwrap()), "{err}");
    assert!(!dir.path().join("s.sock").exists(), "nothing is bound when the config is bad");

    let o = std::process::Command::new(common::bin())
        .args(["run", "--socket"])
        .arg(dir.path().join("s.sock"))
        .env("ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL", "often")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL") && err.contains("sock_poll_interval"), "{err}");
}
