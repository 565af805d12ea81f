//! ECMP flow inventory labs (root; they create their own namespaces).
//!
//! Topology (field notes, "Hazard 1"): a router namespace R with one veth to
//! each of three node namespaces N1..N3; every node holds the same anycast
//! address (`fd00:ecec:f::1/128`, `10.99.0.1/32`) on `lo` with a TCP echo
//! listener that records which peers it accepted; R reaches the anycast
//! through a 3-way multipath route (IPv6 and IPv4) under
//! `fib_multipath_hash_policy=1`.
//!
//! - `route_get::RouteProber` answers like `ip route get ... ipproto tcp
//!   sport X dport Y`, spreads sports over all members, reports per-key
//!   errors, follows fwmark rules, survives receive-buffer overruns.
//! - Its answer for an established flow is the member the flow moves to at
//!   the next invalidation: after an identical route replace, exactly the
//!   flows whose answer differs from the member they use now break. And
//!   1000+ lookups for live flows invalidate nothing (every flow still
//!   echoes before the replace).
//! - `syn_observer` sees each new flow's SYN on the interface of the node
//!   that accepted it, and nothing else (no SYN-ACKs, no incoming frames).
//!
//! The test process stays in the host namespace; everything that must
//! happen inside a lab namespace (opening sockets) runs on a thread that
//! entered it with setns(2). Namespaces are removed on every exit, panics
//! included (`common::Netns`).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Netns;
use routeguard::kernel::route_get::{FlowKey, ProbeError, RouteProber, Selected};
use routeguard::kernel::syn_observer::{self, ObservedSyn};

const ANY6: &str = "fd00:ecec:f::1";
const ANY4: &str = "10.99.0.1";
const R_LO6: &str = "fd00:fe::1";
const ECHO_PORT: u16 = 7;
const NODES: usize = 3;

/// Runs `f` on a thread inside network namespace `ns`. Sockets it opens stay
/// in that namespace whichever thread uses them later.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn enter_netns(path: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns(2) on a descriptor we hold open for the call; it changes
    // only the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Who accepted which peer, per node.
type Accepted = Arc<Mutex<Vec<(SocketAddr, usize)>>>;

struct Lab {
    r: Netns,
    nodes: Vec<Netns>,
    /// ifindex (in R) of the veth towards node i.
    r_if: Vec<u32>,
    /// MAC of node i's veth.
    node_mac: Vec<[u8; 6]>,
    accepted: Accepted,
    stop: Arc<AtomicBool>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let r = Netns::new(&format!("{tag}r"));
        let nodes: Vec<Netns> = (1..=NODES).map(|i| Netns::new(&format!("{tag}n{i}"))).collect();
        for ns in std::iter::once(&r).chain(&nodes) {
            ns.sysctl("net.ipv6.conf.all.accept_dad=0");
            ns.sysctl("net.ipv6.conf.default.accept_dad=0");
        }
        r.sysctl("net.ipv6.fib_multipath_hash_policy=1");
        r.sysctl("net.ipv4.fib_multipath_hash_policy=1");
        r.ip(&["addr", "add", &format!("{R_LO6}/128"), "dev", "lo"]);
        r.ip(&["addr", "add", "10.254.0.1/32", "dev", "lo"]);
        let mut r_if = Vec::new();
        let mut node_mac = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let k = i + 1;
            let (rv, nv) = (format!("fpr{k}"), format!("fpn{k}"));
            r.ip(&["link", "add", &rv, "type", "veth", "peer", "name", &nv, "netns", &n.name]);
            r.ip(&["link", "set", &rv, "up"]);
            n.ip(&["link", "set", &nv, "up"]);
            r.ip(&["addr", "add", &format!("fd00:f{k}::1/64"), "dev", &rv, "nodad"]);
            n.ip(&["addr", "add", &format!("fd00:f{k}::2/64"), "dev", &nv, "nodad"]);
            r.ip(&["addr", "add", &format!("10.200.{k}.1/24"), "dev", &rv]);
            n.ip(&["addr", "add", &format!("10.200.{k}.2/24"), "dev", &nv]);
            n.ip(&["addr", "add", &format!("{ANY6}/128"), "dev", "lo"]);
            n.ip(&["addr", "add", &format!("{ANY4}/32"), "dev", "lo"]);
            // Default routes back, so a node that receives a flow it has no
            // socket for answers with a RST whatever R's source address.
            n.ip(&["-6", "route", "add", "default", "via", &format!("fd00:f{k}::1")]);
            n.ip(&["route", "add", "default", "via", &format!("10.200.{k}.1")]);
            r_if.push(ifindex(&r, &rv));
            node_mac.push(mac(n, &nv));
        }
        let lab = Lab { r, nodes, r_if, node_mac, accepted: Arc::default(), stop: Arc::default() };
        lab.route(false);
        lab.route(true);
        for i in 0..NODES {
            lab.start_echo(i);
        }
        lab
    }

    /// Adds (or, with the same nexthops, replaces) the multipath route.
    fn route(&self, v4: bool) {
        self.route_cmd(v4, "add");
    }

    fn route_cmd(&self, v4: bool, verb: &str) {
        let mut args: Vec<String> = if v4 {
            vec!["route".into(), verb.into(), format!("{ANY4}/32")]
        } else {
            vec!["-6".into(), "route".into(), verb.into(), format!("{ANY6}/128")]
        };
        for k in 1..=NODES {
            let gw = if v4 { format!("10.200.{k}.2") } else { format!("fd00:f{k}::2") };
            args.extend(["nexthop".into(), "via".into(), gw, "dev".into(), format!("fpr{k}")]);
        }
        self.r.ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// A dual-stack echo listener on node i that records accepted peers.
    fn start_echo(&self, i: usize) {
        let (accepted, stop) = (self.accepted.clone(), self.stop.clone());
        let path = format!("/var/run/netns/{}", self.nodes[i].name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter_netns(&path);
            let l = TcpListener::bind(("::", ECHO_PORT)).expect("bind echo listener");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        s.set_nonblocking(false).unwrap();
                        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                        accepted.lock().unwrap().push((peer, i));
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 512];
                            while let Ok(n @ 1..) = s.read(&mut buf) {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("echo listener ready");
    }

    /// Opens `n` connections from R to the anycast echo service, unbound
    /// unless `device` names a device to bind to.
    fn connect(&self, n: usize, v4: bool, device: Option<&str>) -> Vec<TcpStream> {
        let dst: SocketAddr =
            if v4 { (ANY4.parse::<IpAddr>().unwrap(), ECHO_PORT) } else { (ANY6.parse().unwrap(), ECHO_PORT) }.into();
        let device = device.map(|d| d.as_bytes().to_vec());
        in_netns(&self.r.name, move || {
            (0..n)
                .map(|_| {
                    let domain = if v4 { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
                    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
                    if let Some(d) = &device {
                        s.bind_device(Some(d)).unwrap();
                    }
                    s.connect_timeout(&dst.into(), Duration::from_secs(3))
                        .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
                    TcpStream::from(s)
                })
                .collect()
        })
    }

    /// Which node accepted each connection (waits until all are recorded).
    fn accepting_nodes(&self, conns: &[TcpStream]) -> Vec<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let acc: HashMap<SocketAddr, usize> = self.accepted.lock().unwrap().iter().copied().collect();
            let got: Option<Vec<usize>> =
                conns.iter().map(|c| acc.get(&canonical(c.local_addr().unwrap())).copied()).collect();
            if let Some(g) = got {
                return g;
            }
            assert!(Instant::now() < deadline, "not every connection was accepted by a node");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The node behind R's interface `oif`.
    fn node_of(&self, oif: u32) -> usize {
        self.r_if.iter().position(|&i| i == oif).unwrap_or_else(|| panic!("oif {oif} is not a member veth"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn ifindex(ns: &Netns, dev: &str) -> u32 {
    let out = ns.ip(&["-o", "link", "show", "dev", dev]);
    out.split(':').next().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| panic!("ifindex of {dev}: {out}"))
}

fn mac(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns.ip(&["-o", "link", "show", "dev", dev]);
    let m = out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("link/ether");
    let v: Vec<u8> = m.split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
    v.try_into().unwrap()
}

fn key_of(c: &TcpStream) -> FlowKey {
    let (l, r) = (canonical(c.local_addr().unwrap()), canonical(c.peer_addr().unwrap()));
    FlowKey { src: l.ip(), dst: r.ip(), sport: l.port(), dport: r.port(), mark: None, oif: None }
}

/// Sends one line on every connection, then reads the echoes: true where
/// the flow still works.
fn echo_all(conns: &mut [TcpStream]) -> Vec<bool> {
    let sent: Vec<bool> = conns
        .iter_mut()
        .map(|c| {
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            c.write_all(b"ping\n").is_ok()
        })
        .collect();
    conns
        .iter_mut()
        .zip(sent)
        .map(|(c, ok)| {
            let mut buf = [0u8; 5];
            ok && c.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
        })
        .collect()
}

/// `ip route get` for one key, as (gateway, dev).
fn ip_route_get(r: &Netns, k: &FlowKey) -> (String, String) {
    let fam = if k.dst.is_ipv4() { "-4" } else { "-6" };
    let (dst, src, sport, dport) = (k.dst.to_string(), k.src.to_string(), k.sport.to_string(), k.dport.to_string());
    let out = r.ip(&[fam, "route", "get", &dst, "from", &src, "ipproto", "tcp", "sport", &sport, "dport", &dport]);
    let word_after = |w: &str| out.split_whitespace().skip_while(|x| *x != w).nth(1).unwrap_or("").to_string();
    (word_after("via"), word_after("dev"))
}

fn sweep_keys(v4: bool, n: u16) -> Vec<FlowKey> {
    let (src, dst): (IpAddr, IpAddr) = if v4 {
        ("10.254.0.1".parse().unwrap(), ANY4.parse().unwrap())
    } else {
        (R_LO6.parse().unwrap(), ANY6.parse().unwrap())
    };
    (0..n).map(|i| FlowKey { src, dst, sport: 20000 + i, dport: ECHO_PORT, mark: None, oif: None }).collect()
}

#[test]
fn route_get_answers_like_ip_route_get() {
    let lab = Lab::new("fpa");
    let r_name = lab.r.name.clone();
    let mut probe = in_netns(&r_name, RouteProber::new).expect("open prober");

    for v4 in [false, true] {
        let keys = sweep_keys(v4, 300);
        let answers: Vec<Selected> = probe.select_many(&keys).into_iter().map(|a| a.expect("answer")).collect();
        let mut per_member = [0usize; NODES];
        for (k, a) in keys.iter().zip(&answers) {
            let n = lab.node_of(a.oif);
            per_member[n] += 1;
            let gw: IpAddr =
                if v4 { format!("10.200.{}.2", n + 1) } else { format!("fd00:f{}::2", n + 1) }.parse().unwrap();
            assert_eq!(a.gateway, Some(gw), "{k}");
            assert_eq!(a.table, 254, "{k}");
        }
        eprintln!("{} sport sweep over 300 ports: per member {per_member:?}", if v4 { "IPv4" } else { "IPv6" });
        assert!(per_member.iter().all(|&c| c > 50), "the hash uses the source port: {per_member:?}");
        for (k, a) in keys.iter().zip(&answers).step_by(10) {
            let (via, dev) = ip_route_get(&lab.r, k);
            assert_eq!((via, dev), (a.gateway.unwrap().to_string(), format!("fpr{}", lab.node_of(a.oif) + 1)), "{k}");
        }
    }

    // Per-key errors, in order, between good keys.
    let good = sweep_keys(false, 1)[0];
    let unroutable = FlowKey { dst: "2001:db8::1".parse().unwrap(), ..good };
    let mixed = FlowKey { src: "10.254.0.1".parse().unwrap(), ..good };
    let got = probe.select_many(&[good, unroutable, mixed, good]);
    assert!(got[0].is_ok() && got[3].is_ok());
    assert_eq!(got[0].as_ref().unwrap(), got[3].as_ref().unwrap());
    match &got[1] {
        Err(e @ ProbeError::Kernel { key, source }) => {
            assert_eq!(key, &unroutable);
            assert_eq!(source.raw_os_error(), Some(libc::ENETUNREACH), "{e}");
            assert!(e.to_string().contains("2001:db8::1"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&got[2], Err(ProbeError::InvalidKey { key, .. }) if key == &mixed));

    // The mark steers policy routing: table 100 sends everything to node 2.
    lab.r.ip(&["-6", "route", "add", &format!("{ANY6}/128"), "via", "fd00:f2::2", "dev", "fpr2", "table", "100"]);
    lab.r.ip(&["-6", "rule", "add", "fwmark", "0x77", "lookup", "100"]);
    let marked: Vec<FlowKey> = sweep_keys(false, 30).into_iter().map(|k| FlowKey { mark: Some(0x77), ..k }).collect();
    for a in probe.select_many(&marked) {
        let a = a.unwrap();
        assert_eq!((a.table, a.oif), (100, lab.r_if[1]));
    }

    // Overruns: a tiny receive buffer and a huge window lose answers, which
    // are asked again; the answers are the same.
    let keys = sweep_keys(false, 5000);
    let want: Vec<Selected> = probe.select_many(&keys).into_iter().map(Result::unwrap).collect();
    let mut small = in_netns(&r_name, || RouteProber::with_limits(4096, 16 << 10)).unwrap();
    let got: Vec<Selected> = small.select_many(&keys).into_iter().map(Result::unwrap).collect();
    assert_eq!(got, want);
    eprintln!("tiny buffer: {} overruns, all 5000 answers identical", small.overruns());
    assert!(small.overruns() > 0, "the overrun path was exercised");

    // Throughput: 100k lookups (distinct sports) on the multipath route.
    let keys: Vec<FlowKey> = (0..100_000u32)
        .map(|i| FlowKey { sport: (1024 + i % 64000) as u16, dport: (1 + i / 64000) as u16, ..good })
        .collect();
    let t = Instant::now();
    let answers = probe.select_many(&keys);
    let dt = t.elapsed();
    assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|s| lab.r_if.contains(&s.oif))));
    eprintln!(
        "100000 lookups in {dt:?}: {:.0} lookups/s ({} overruns)",
        100_000.0 / dt.as_secs_f64(),
        probe.overruns()
    );
}

#[test]
fn route_get_predicts_rehash_without_invalidating() {
    let lab = Lab::new("fpb");
    let mut probe = in_netns(&lab.r.name, RouteProber::new).expect("open prober");

    // IPv6: 60 unbound flows.
    let mut conns = lab.connect(60, false, None);
    let now = lab.accepting_nodes(&conns);
    let keys: Vec<FlowKey> = conns.iter().map(key_of).collect();
    let predicted: Vec<usize> = probe.select_many(&keys).into_iter().map(|a| lab.node_of(a.unwrap().oif)).collect();
    let moving = now.iter().zip(&predicted).filter(|(n, p)| n != p).count();
    eprintln!("IPv6: {moving}/60 flows are predicted to move at the next invalidation");
    assert!(moving > 0, "the lab must have flows that would move, or it proves nothing");

    // 1020 lookups for the live flows' keys change nothing ...
    let many: Vec<FlowKey> = keys.iter().cycle().take(1020).copied().collect();
    let again = probe.select_many(&many);
    for (k, a) in many.iter().zip(again) {
        let i = keys.iter().position(|x| x == k).unwrap();
        assert_eq!(lab.node_of(a.unwrap().oif), predicted[i], "answers are stable");
    }
    // ... every flow still works, including the ones that would move.
    let alive = echo_all(&mut conns);
    assert!(alive.iter().all(|&a| a), "lookups must not invalidate cached routes: {alive:?}");

    // An identical replace invalidates: exactly the flows predicted to move break.
    lab.route_cmd(false, "replace");
    let alive = echo_all(&mut conns);
    let (mut pred_broke, mut pred_survived, mut broke_unpred, mut stayed) = (0, 0, 0, 0);
    for i in 0..conns.len() {
        match (now[i] != predicted[i], alive[i]) {
            (true, false) => pred_broke += 1,
            (true, true) => pred_survived += 1,
            (false, false) => broke_unpred += 1,
            (false, true) => stayed += 1,
        }
    }
    eprintln!(
        "IPv6 after identical replace: predicted-and-broke {pred_broke}, predicted-but-survived {pred_survived}, \
         broke-unpredicted {broke_unpred}, predicted-to-stay-and-stayed {stayed}"
    );
    assert_eq!((pred_survived, broke_unpred), (0, 0));
    assert_eq!(pred_broke, moving);

    // IPv4 re-looks-up once the port is chosen: the prediction is the
    // member in use, and a replace breaks nothing.
    let mut conns4 = lab.connect(30, true, None);
    let now4 = lab.accepting_nodes(&conns4);
    let keys4: Vec<FlowKey> = conns4.iter().map(key_of).collect();
    let pred4: Vec<usize> = probe.select_many(&keys4).into_iter().map(|a| lab.node_of(a.unwrap().oif)).collect();
    assert_eq!(pred4, now4, "IPv4 prediction equals the member in use");
    lab.route_cmd(true, "replace");
    assert!(echo_all(&mut conns4).iter().all(|&a| a));
    eprintln!("IPv4: 30/30 predictions equal the member in use; 0/30 broken by an identical replace");
}

#[test]
fn syn_observer_sees_the_member_each_new_flow_uses() {
    let lab = Lab::new("fpc");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ObservedSyn>(1024);
    let handle = in_netns(&lab.r.name, move || syn_observer::spawn(tx)).expect("spawn observer");

    // Noise that must not be reported: a node connects to a listener on R,
    // so R receives a SYN and sends a SYN-ACK.
    let r_listener = in_netns(&lab.r.name, || TcpListener::bind(("::", 8)).unwrap());
    let node_conn = in_netns(&lab.nodes[0].name, || TcpStream::connect((R_LO6, 8)).unwrap());
    let (_r_side, _) = r_listener.accept().unwrap();

    let mut conns = lab.connect(30, false, None);
    conns.extend(lab.connect(30, true, None));
    let now = lab.accepting_nodes(&conns);

    // Collect until every connection's SYN is in (or 5 s pass).
    let mut seen: Vec<ObservedSyn> = Vec::new();
    let want: Vec<(SocketAddr, SocketAddr)> =
        conns.iter().map(|c| (canonical(c.local_addr().unwrap()), canonical(c.peer_addr().unwrap()))).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !want.iter().all(|w| seen.iter().any(|s| (s.local, s.remote) == *w)) {
        match rx.try_recv() {
            Ok(s) => seen.push(s),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    while let Ok(s) = rx.try_recv() {
        seen.push(s);
    }

    let mut matched = [0usize; 2];
    for (i, w) in want.iter().enumerate() {
        let syns: Vec<&ObservedSyn> = seen.iter().filter(|s| (s.local, s.remote) == *w).collect();
        assert!(!syns.is_empty(), "no SYN observed for {w:?}");
        let s = syns[0];
        assert_eq!(
            lab.node_of(s.ifindex),
            now[i],
            "flow {w:?}: SYN left by ifindex {}, node {} accepted",
            s.ifindex,
            now[i] + 1
        );
        assert_eq!(s.dst_mac, lab.node_mac[now[i]], "the SYN went to the accepting node's MAC");
        matched[usize::from(w.0.is_ipv4())] += 1;
    }
    eprintln!(
        "SYN observer: IPv6 {}/30 and IPv4 {}/30 flows seen on the accepting node's interface; {} SYNs seen in all",
        matched[0],
        matched[1],
        seen.len()
    );
    // Nothing but these flows' SYNs (a retransmitted SYN would be reported
    // again): no SYN-ACK from R's listener, no incoming SYN.
    let strays: Vec<&ObservedSyn> = seen.iter().filter(|s| !want.contains(&(s.local, s.remote))).collect();
    assert!(strays.is_empty(), "reported frames that are not our flows' SYNs: {strays:#?}");
    let stats = handle.stats();
    assert_eq!(stats.sent, seen.len() as u64);
    assert_eq!((stats.channel_full, stats.unparsed, stats.kernel_drops), (0, 0, 0), "{stats:?}");
    drop(node_conn);

    // The thread ends once the receiver is gone.
    drop(rx);
    let t = Instant::now();
    while handle.is_running() {
        assert!(t.elapsed() < Duration::from_secs(2), "observer did not stop after the channel closed");
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.join().expect("observer ended cleanly");
}

#[test]
fn device_bound_ipv6_flows_are_predicted_on_their_device() {
    let lab = Lab::new("fpd");
    let mut probe = in_netns(&lab.r.name, RouteProber::new).expect("open prober");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ObservedSyn>(1024);
    let handle = in_netns(&lab.r.name, move || syn_observer::spawn(tx)).expect("spawn observer");

    // 10 flows bound to each member device.
    let mut conns = Vec::new();
    let mut bound = Vec::new();
    for k in 1..=NODES {
        conns.extend(lab.connect(10, false, Some(&format!("fpr{k}"))));
        bound.extend(std::iter::repeat_n(k - 1, 10));
    }
    let now = lab.accepting_nodes(&conns);
    assert_eq!(now, bound, "a bound flow uses the member on its device");

    let keys: Vec<FlowKey> =
        conns.iter().zip(&bound).map(|(c, &b)| FlowKey { oif: Some(lab.r_if[b]), ..key_of(c) }).collect();
    let plain: Vec<FlowKey> = keys.iter().map(|k| FlowKey { oif: None, ..*k }).collect();
    let without_oif: Vec<usize> = probe.select_many(&plain).into_iter().map(|a| lab.node_of(a.unwrap().oif)).collect();
    let elsewhere = without_oif.iter().zip(&bound).filter(|(a, b)| a != b).count();
    let predicted: Vec<usize> = probe.select_many(&keys).into_iter().map(|a| lab.node_of(a.unwrap().oif)).collect();
    eprintln!("bound IPv6 flows: {elsewhere}/30 hash to another device; prediction with oif: {predicted:?}");
    assert_eq!(predicted, bound);

    // The observer agrees, and an invalidation breaks none of them.
    std::thread::sleep(Duration::from_millis(200));
    let mut seen = Vec::new();
    while let Ok(s) = rx.try_recv() {
        seen.push(s);
    }
    for (c, &b) in conns.iter().zip(&bound) {
        let l = canonical(c.local_addr().unwrap());
        let s = seen.iter().find(|s| s.local == l).expect("SYN seen");
        assert_eq!(s.ifindex, lab.r_if[b]);
    }
    lab.route_cmd(false, "replace");
    assert!(echo_all(&mut conns).iter().all(|&a| a), "bound flows survive an identical replace");
    drop(handle);
}
