//! Operations: systemd readiness and watchdog, SIGHUP reload, Prometheus
//! metrics that move with a real scenario.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ecmp_lab::EcmpLab;
use common::{eventually, Daemon, Netns};
use serde_json::Value;

fn cli_json(socket: &std::path::Path, args: &[&str]) -> Option<Value> {
    let o = Command::new(common::bin()).args(args).arg("--socket").arg(socket).arg("--json").output().ok()?;
    serde_json::from_slice(&o.stdout).ok()
}

#[test]
fn ready_is_sent_only_after_the_first_dump_and_the_watchdog_is_fed() {
    let ns = Netns::new("rdy");
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let api = dir.path().join("rg.sock");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, common::bin(), "run", "--socket"])
        .arg(&api)
        .env("ROUTEGUARD_STATE_DIR", dir.path().join("state"))
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no sd_notify message within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "first message: {msg}");
    // At READY the daemon has its first dump and its self-test.
    let s = cli_json(&api, &["status"]).expect("status right after READY");
    assert_eq!(s["ready"], true, "{s}");
    assert_eq!(s["stale"], false, "{s}");
    assert_ne!(s["selftest"], "running", "{s}");
    eprintln!("READY after {:?}", started.elapsed());
    // The watchdog is fed at half the period.
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = sock.recv(&mut buf).expect("no watchdog keep-alive within 2 s");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_one_and_a_valid_one_applies() {
    let ns = Netns::new("hup");
    ns.ip(&["link", "add", "rgA", "type", "veth", "peer", "name", "rgB"]);
    ns.ip(&["link", "set", "rgA", "up"]);
    ns.ip(&["-6", "addr", "add", "fdc0:1::1/64", "dev", "rgA", "nodad"]);
    ns.ip(&["-6", "route", "add", "2001:db8::/32", "via", "fdc0:1::", "dev", "rgA"]);
    let cfgdir = tempfile::tempdir().unwrap();
    let cfg = cfgdir.path().join("rg.toml");
    std::fs::write(&cfg, "[hazards.subnet_anycast]\naction = \"veto\"\n").unwrap();
    let d = Daemon::start_with_args(&ns, &[], &["--config", cfg.to_str().unwrap()]);
    let verdict = || {
        let o = d.cli(&["evaluate", "--sysctl", "net.ipv6.conf.all.forwarding=1"], true);
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["verdict"].as_str().unwrap().to_string()
    };
    assert_eq!(verdict(), "veto");
    std::fs::write(&cfg, "[hazards.subnet_anycast]\naction = \"perhaps\"\n").unwrap();
    Command::new("kill").args(["-HUP", &d.pid().to_string()]).status().unwrap();
    eventually(Duration::from_secs(5), || {
        d.log_text().contains("SIGHUP: invalid configuration").then_some(()).ok_or(d.log_text())
    });
    assert!(d.log_text().contains("perhaps"), "the error names the bad value: {}", d.log_text());
    assert_eq!(verdict(), "veto", "the running configuration is kept");
    std::fs::write(&cfg, "[hazards.subnet_anycast]\naction = \"stage\"\n").unwrap();
    Command::new("kill").args(["-HUP", &d.pid().to_string()]).status().unwrap();
    eventually(Duration::from_secs(5), || (verdict() == "stage").then_some(()).ok_or(d.log_text()));
    // The route's gateway sits at the Subnet-Router anycast of rgA's /64:
    // the remediation's fast path is armed there, and a reload that turns
    // remediation off disarms it (nothing is undone behind the operator).
    let reflex = || d.json(&["status"])["forwarding_reflex"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(2), || (reflex() == "armed: rgA").then_some(()).ok_or(reflex()));
    std::fs::write(&cfg, "[hazards.subnet_anycast]\nremediate = false\n").unwrap();
    Command::new("kill").args(["-HUP", &d.pid().to_string()]).status().unwrap();
    eventually(Duration::from_secs(5), || (reflex() == "off").then_some(()).ok_or(reflex()));
    ns.sysctl("net.ipv6.conf.all.forwarding=1");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ns.exec(&["sysctl", "-n", "net.ipv6.conf.rgA.forwarding"]).trim(), "1", "remediated while off");
    assert_eq!(d.json(&["status"])["remediations"], serde_json::json!([]));
}

fn scrape(ns: &Netns, port: u16) -> String {
    ns.exec(&[
        "/usr/bin/python3",
        "-c",
        &format!(
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
        ),
    ])
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(name) && !l.starts_with('#')).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_move_with_the_ecmp_lab() {
    let lab = EcmpLab::new("met", true, 1);
    let port = 9474;
    let d = Daemon::start(
        &lab.r,
        &[
            ("ROUTEGUARD_METRICS__LISTEN", &format!("127.0.0.1:{port}")),
            ("ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL", "200ms"),
            ("ROUTEGUARD_SELFTEST__ON_START", "true"),
        ],
    );
    let before = scrape(&lab.r, port);
    assert_eq!(sample(&before, "routeguard_armed_flows"), Some(0.0), "{before}");
    assert!(sample(&before, "routeguard_model_objects{kind=\"routes_v6\"}").unwrap_or(0.0) >= 1.0, "{before}");
    let mut h = lab.holder();
    h.open(30);
    let (text, _) = eventually(Duration::from_secs(15), || {
        let t = scrape(&lab.r, port);
        (sample(&t, "routeguard_armed_flows").unwrap_or(0.0) > 0.0).then_some(t.clone()).ok_or(t)
    });
    assert!(sample(&text, "routeguard_findings{hazard=\"ecmp_rehash\",severity=\"warning\"}") == Some(1.0), "{text}");
    let o = d.cli(&["propose", "--route-replace", &lab.route_spec()], true);
    assert_eq!(o.status.code(), Some(1));
    let after = scrape(&lab.r, port);
    assert_eq!(sample(&after, "routeguard_verdicts_total{verdict=\"veto\"}"), Some(1.0), "{after}");
    assert!(sample(&after, "routeguard_kernel_events_total").unwrap_or(0.0) > 0.0, "{after}");
}
