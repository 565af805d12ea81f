//! ECMP re-hash guard benchmark (issue "ECMP guard"): flow-prediction
//! throughput against real established flows, and the cost of evaluating a
//! route change against a large flow table and a 1M-route model.
//!
//! Run as root: `cargo bench --bench ecmp`. Without `--bench` (e.g. under
//! `cargo test --benches`) it prints "skipped" and exits 0.
//!
//! The lab (field notes, "Hazard 1", scaled up):
//! * router namespace `rgbecmp-<pid>` (R) with veths `rgr1..3` to node
//!   namespaces `rgbecmp-<pid>-n1..3`; every node holds the same eight
//!   anycast /128s on `lo` and listens on `[::]:7001` and `[::]:7002`;
//! * R reaches `fd00:ecec:f::1..4` over a 3-way multipath /120 and
//!   `fd00:ecec:d::1..4` over a 3-way multipath *default* route, with
//!   `fib_multipath_hash_policy=1` (L4) and `ip_local_port_range` 1024-65535;
//! * listeners are created by this process in the nodes (a thread that
//!   `setns`es) on `[::]:7001..7004`, backlog 65535 (`somaxconn` 65535 in
//!   the nodes); connections are never accepted: the server ends stay
//!   established in the accept queues;
//! * the client ends are unbound sockets opened with blocking `connect()`s,
//!   round-robin over the 32 (address, port) pairs, by holder processes
//!   (this binary in a hidden `--hold-flows` mode under `ip netns exec R`,
//!   at most 18000 sockets each: the container lacks CAP_SYS_RESOURCE, so
//!   RLIMIT_NOFILE cannot be raised past its hard limit of 20000);
//! * sock_diag in each node tells which node holds the server end of each
//!   flow: the member the flow uses *now* (ground truth, no SYN capture).
//!
//! Phases (one result line each, then one `ecmp summary: {json}` line):
//!   1. prediction throughput: `sock_diag` inventory of R, then
//!      `RouteProber::select_many` over every real flow key (one socket,
//!      pipelined), several runs; the same with synthetic keys (real
//!      addresses, made-up ports, no sockets). Measured with the lab routes
//!      only, and again after 1M routes are loaded into R.
//!   2. evaluation end to end, in process: R is dumped into a `Model`
//!      (1M + lab routes), the flow table is synced from `sock_diag`,
//!      predicted (phase 1 answers) and observed (accepting node); then
//!      parse + Context + every detector's `evaluate` + `policy::decide`
//!      for three intents. Then through the daemon: `routeguard run` in R,
//!      gRPC `Evaluate` over its unix socket, client-side wall time.
//!   3. detector pass per changed prefix: `EcmpRehash::evaluate` of a
//!      single-prefix replace, for many prefixes sampled from the 1M-route
//!      model, with 1k flows (half of them behind the ECMP default, and
//!      none behind it) and, for scale, the full flow set (every 10th
//!      sampled prefix). 3b: `FlowTable::invalidate` with the core's
//!      route-change predicate, i.e. what each route notification costs.
//!
//! Cleanup: the namespaces and `/tmp/rgbecmp-<pid>/` are removed on every
//! exit path (Drop guard, SIGINT/SIGTERM watcher, `PR_SET_PDEATHSIG` on the
//! daemon); processes inside the namespaces are killed first. Every `ip`
//! command carries `-n NS` or runs under `ip netns exec NS`; only threads of
//! this process ever `setns`, never the main thread; host routes are never
//! touched.
//!
//! Knobs: `RGBENCH_ECMP_FLOWS` (default 100000), `RGBENCH_ECMP_ROUTES`
//! (default 1000000, 80 % IPv4 / 20 % IPv6), `RGBENCH_ECMP_RUNS` (default 5),
//! `RGBENCH_ECMP_NO_DAEMON=1` skips the gRPC part, `RGBENCH_DAEMON=PATH`
//! picks another daemon binary.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::hint::black_box;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use ipnetwork::IpNetwork;
use serde_json::{json, Value};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use routeguard::hazards::ecmp_rehash::EcmpRehash;
use routeguard::hazards::{self, Context, Detector, Finding, KernelFacts};
use routeguard::kernel::route_get::{self, RouteProber};
use routeguard::kernel::{dump, sockdiag, sysctl};
use routeguard::model::flows::{FlowTable, MemberId, Observation};
use routeguard::model::{Applied, Change, Model, SocketPolls, TcpSocket, TABLE_MAIN};
use routeguard::policy::intent::{parse_route_replace, Intent, MemberSpec, RouteSpec};
use routeguard::policy::{self, HazardsConfig};
use routeguard::proto::guard as pb;

#[path = "common/mod.rs"]
mod common;
use common::{
    cpu_seconds, daemon_bin, die_with_parent, env_u64, in_ns_named, ip, kill, loadavg, ns_sysctl, run_ok, Daemon,
    Guard, Rng, Stats,
};

/// Destination ports of the flows (one listener per port per node).
const PORTS: [u16; 4] = [7001, 7002, 7003, 7004];
/// Accept backlog of each listener (node namespaces get somaxconn 65535).
/// Connections are never accepted: they stay established in the queue.
const BACKLOG: i32 = 65535;
/// Client sockets per holder process. This container lacks
/// CAP_SYS_RESOURCE, so RLIMIT_NOFILE cannot be raised above its hard limit
/// (20000 here); the flows are spread over several processes instead.
const PER_HOLDER: usize = 18_000;
/// Evaluate requests per intent through gRPC.
const GRPC_REQUESTS: usize = 40;
/// Prefixes sampled for phase 3.
const SAMPLED_PREFIXES: usize = 20_000;
/// Runs of each in-process evaluation in phase 2.
const EVAL_RUNS: usize = 21;

// ---------------------------------------------------------------------------
// Cleanup: one registry, used by the Drop guard and the signal watcher.

struct Cleanup {
    namespaces: Vec<String>,
    dir: PathBuf,
    pids: Vec<u32>,
}

static CLEANUP: Mutex<Option<Cleanup>> = Mutex::new(None);

fn registry() -> std::sync::MutexGuard<'static, Option<Cleanup>> {
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner())
}

fn track_pid(pid: u32) {
    if let Some(c) = registry().as_mut() {
        c.pids.push(pid);
    }
}

fn track_ns(ns: &str) {
    if let Some(c) = registry().as_mut() {
        c.namespaces.push(ns.to_string());
    }
}

/// Kills what we started and everything inside our namespaces (never this
/// process), deletes the namespaces and the scratch directory. Idempotent.
fn cleanup() {
    let mut reg = registry();
    let Some(c) = reg.take() else { return };
    for &p in &c.pids {
        kill(p, libc::SIGKILL);
    }
    for ns in &c.namespaces {
        common::reap_ns(ns);
    }
    // Router first: its veths go with it.
    for ns in &c.namespaces {
        common::delete_ns("ecmp", ns);
    }
    let _ = std::fs::remove_dir_all(&c.dir);
}

// ---------------------------------------------------------------------------
// Small helpers.

/// Runs `f` on a new thread that has joined network namespace `ns`; sockets
/// it creates stay in `ns`. The calling thread's namespace is untouched.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    in_ns_named(ns, "rgb-ns", f)
}

/// User and system CPU seconds of the calling thread.
fn thread_cpu() -> (f64, f64) {
    // SAFETY: getrusage(2) fills the zeroed struct we pass.
    #[allow(unsafe_code)]
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

/// Packets dropped at the per-CPU input backlog since boot (all CPUs, all
/// namespaces: /proc/net/softnet_stat, second column).
fn softnet_dropped() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).and_then(|v| u64::from_str_radix(v, 16).ok()))
        .sum()
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

fn canon(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip(), a.port())
}

// ---------------------------------------------------------------------------
// The lab.

struct Lab {
    r: String,
    nodes: Vec<String>,
    /// ifindex of rgr1..3 in R.
    member_ifindex: Vec<u32>,
    /// Node index (the member the flow uses now) of every flow, keyed by
    /// the client's 4-tuple, from sock_diag in the nodes.
    node_of: HashMap<(SocketAddr, SocketAddr), usize>,
    /// Processes in R holding the client sockets; closing their stdin ends
    /// them and the flows.
    holders: Vec<Child>,
    /// Listeners in the nodes (the server ends wait in their accept queues).
    listeners: Vec<Socket>,
    established: usize,
    connect_secs: f64,
    connect_errors: BTreeMap<String, u64>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &mut self.holders {
            drop(h.stdin.take());
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

fn destinations() -> Vec<SocketAddr> {
    let mut v = Vec::new();
    for base in ["fd00:ecec:f::", "fd00:ecec:d::"] {
        for i in 1..=4 {
            let a: Ipv6Addr = format!("{base}{i}").parse().expect("address");
            for p in PORTS {
                v.push(SocketAddr::new(IpAddr::V6(a), p));
            }
        }
    }
    v
}

fn route_members_v6() -> String {
    (1..=3).map(|i| format!(" nexthop via fd00:{i}::2 dev rgr{i}")).collect()
}

fn build_lab(r: &str, pid: u32) -> Result<Lab> {
    run_ok("ip", &["netns", "add", r])?;
    track_ns(r);
    ip(r, &["link", "set", "lo", "up"])?;
    let mut nodes = Vec::new();
    for i in 1..=3u32 {
        let n = format!("rgbecmp-{pid}-n{i}");
        run_ok("ip", &["netns", "add", &n])?;
        track_ns(&n);
        ip(&n, &["link", "set", "lo", "up"])?;
        let (rif, nif) = (format!("rgr{i}"), format!("rgn{i}"));
        ip(r, &["link", "add", &rif, "type", "veth", "peer", "name", &nif, "netns", &n])?;
        // No link-local autoconfiguration: its late address/route changes
        // would invalidate cached routes while flows are open.
        ip(r, &["link", "set", &rif, "addrgenmode", "none"])?;
        ip(&n, &["link", "set", &nif, "addrgenmode", "none"])?;
        ip(r, &["link", "set", &rif, "up"])?;
        ip(&n, &["link", "set", &nif, "up"])?;
        ip(r, &["-6", "addr", "add", &format!("fd00:{i}::1/64"), "dev", &rif, "nodad"])?;
        ip(&n, &["-6", "addr", "add", &format!("fd00:{i}::2/64"), "dev", &nif, "nodad"])?;
        // IPv4 only as on-link gateways for the loaded IPv4 routes.
        ip(r, &["addr", "add", &format!("10.{i}.0.1/24"), "dev", &rif])?;
        ip(&n, &["addr", "add", &format!("10.{i}.0.2/24"), "dev", &nif])?;
        for d in destinations().iter().map(|d| d.ip()).collect::<HashSet<_>>() {
            ip(&n, &["-6", "addr", "add", &format!("{d}/128"), "dev", "lo"])?;
        }
        ip(&n, &["-6", "route", "add", "default", "via", &format!("fd00:{i}::1"), "dev", &nif])?;
        ns_sysctl(&n, "net.core.somaxconn=65535")?;
        ns_sysctl(&n, "net.ipv4.tcp_max_syn_backlog=65535")?;
        nodes.push(n);
    }
    // Permanent neighbour entries both ways. R does not forward, so its
    // lookups avoid multipath members whose neighbour failed
    // (RT6_LOOKUP_F_REACHABLE); NDP timing out under load would collapse
    // every flow onto one member and skew the lab.
    let lladdr = |ns: &str, dev: &str| -> Result<String> {
        let out = ip(ns, &["-o", "link", "show", dev])?;
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(String::from)
            .ok_or_else(|| anyhow!("no lladdr for {dev} in {ns}"))
    };
    for (i, n) in nodes.iter().enumerate() {
        let i = i + 1;
        let (rif, nif) = (format!("rgr{i}"), format!("rgn{i}"));
        let (rmac, nmac) = (lladdr(r, &rif)?, lladdr(n, &nif)?);
        ip(r, &["-6", "neigh", "replace", &format!("fd00:{i}::2"), "lladdr", &nmac, "dev", &rif, "nud", "permanent"])?;
        ip(n, &["-6", "neigh", "replace", &format!("fd00:{i}::1"), "lladdr", &rmac, "dev", &nif, "nud", "permanent"])?;
    }
    ns_sysctl(r, "net.ipv6.fib_multipath_hash_policy=1")?;
    ns_sysctl(r, "net.ipv4.ip_local_port_range=1024 65535")?;
    let members = route_members_v6();
    let mut a: Vec<&str> = vec!["-6", "route", "add", "fd00:ecec:f::/120"];
    a.extend(members.split_whitespace());
    ip(r, &a)?;
    let mut a: Vec<&str> = vec!["-6", "route", "add", "default"];
    a.extend(members.split_whitespace());
    ip(r, &a)?;
    let mut member_ifindex = Vec::new();
    for i in 1..=3 {
        let out = ip(r, &["-o", "link", "show", &format!("rgr{i}")])?;
        let idx: u32 = out.split(':').next().unwrap_or("").trim().parse().context("ifindex of rgr")?;
        member_ifindex.push(idx);
    }
    Ok(Lab {
        r: r.to_string(),
        nodes,
        member_ifindex,
        node_of: HashMap::new(),
        holders: Vec::new(),
        listeners: Vec::new(),
        established: 0,
        connect_secs: 0.0,
        connect_errors: BTreeMap::new(),
    })
}

impl Lab {
    fn listen(&mut self) -> Result<()> {
        for (i, n) in self.nodes.clone().iter().enumerate() {
            let ls = in_ns(n, || {
                let mut v = Vec::new();
                for p in PORTS {
                    let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
                    s.set_reuse_address(true)?;
                    s.bind(&SockAddr::from(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), p)))?;
                    s.listen(BACKLOG)?;
                    v.push(s);
                }
                Ok(v)
            })?;
            let _ = i;
            self.listeners.extend(ls);
        }
        Ok(())
    }

    /// Opens up to `want` flows from R through holder processes (blocking
    /// connects, round-robin over the destinations), then learns from
    /// sock_diag in each node which node holds the server end of each.
    fn connect(&mut self, want: usize) -> Result<()> {
        let exe = std::env::current_exe()?;
        let t = Instant::now();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut established = 0usize;
        let mut start = 0usize;
        // One holder connects at a time: parallel bursts overflow the
        // per-CPU backlog (netdev_max_backlog, shared with the host) on this
        // loaded 2-vCPU box and make connects time out.
        while start < want {
            let count = PER_HOLDER.min(want - start);
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.r])
                .arg(&exe)
                .args(["--hold-flows", &start.to_string(), &count.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            die_with_parent(&mut cmd);
            let mut h = cmd.spawn().context("spawn flow holder")?;
            track_pid(h.id());
            let out = h.stdout.take().ok_or_else(|| anyhow!("holder without stdout"))?;
            self.holders.push(h);
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line)?;
            let v: Value = serde_json::from_str(line.trim()).with_context(|| format!("flow holder said {line:?}"))?;
            established += v["ok"].as_u64().unwrap_or(0) as usize;
            if let Some(m) = v["errors"].as_object() {
                for (k, n) in m {
                    *errors.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
            }
            start += count;
        }
        self.connect_secs = t.elapsed().as_secs_f64();
        self.established = established;
        self.connect_errors = errors;
        for (i, n) in self.nodes.clone().iter().enumerate() {
            let poll = in_ns(n, || Ok(sockdiag::poll_tcp()?))?;
            for s in poll.established {
                self.node_of.insert((canon(s.remote), canon(s.local)), i);
            }
        }
        Ok(())
    }
}

/// Hidden mode `--hold-flows START COUNT`, run under `ip netns exec R`:
/// opens COUNT flows, prints one JSON line, holds them until stdin closes.
fn hold_flows(start: usize, count: usize) -> Result<()> {
    let dsts = destinations();
    let mut socks = Vec::with_capacity(count);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for k in start..start + count {
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
        // Close with RST: a FIN would leave 100k orphans in FIN_WAIT for
        // minutes once the namespaces are gone, and the orphan count is
        // global ("TCP: too many orphaned sockets" stalls new connects).
        s.set_linger(Some(Duration::ZERO))?;
        match s.connect_timeout(&SockAddr::from(dsts[k % dsts.len()]), Duration::from_secs(5)) {
            Ok(()) => socks.push(s),
            Err(e) => {
                *errors.entry(e.to_string()).or_default() += 1;
                if errors.values().sum::<u64>() >= 200 {
                    break;
                }
            }
        }
    }
    println!("{}", json!({"ok": socks.len(), "errors": errors}));
    std::io::stdout().flush()?;
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(socks);
    Ok(())
}

// ---------------------------------------------------------------------------
// Route table generation (BGP-like shapes, deterministic).

struct Generated {
    v4: usize,
    v6: usize,
    /// A few IPv6 and IPv4 prefixes with their `--route-replace` text (for
    /// the gRPC phase).
    sample_v6: String,
    sample_v4: String,
}

fn write_route_batches(dir: &Path, total: usize) -> Result<(PathBuf, PathBuf, Generated)> {
    let n4 = total * 4 / 5;
    let n6 = total - n4;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let v4p = dir.join("v4.batch");
    let v6p = dir.join("v6.batch");
    let mut seen4: HashSet<(u32, u8)> = HashSet::with_capacity(n4);
    let mut w = BufWriter::new(File::create(&v4p)?);
    let mut sample_v4 = String::new();
    while seen4.len() < n4 {
        let x = rng.next();
        let first = (x % 223 + 1) as u32;
        if first == 10 || first == 127 || first == 100 || first == 169 || first == 172 || first == 192 {
            continue;
        }
        let len: u8 = if (x >> 8) % 10 < 6 { 24 } else { 16 + ((x >> 16) % 8) as u8 };
        let addr = ((first << 24) | ((x >> 24) as u32 & 0x00ff_ffff)) & (u32::MAX << (32 - len));
        if !seen4.insert((addr, len)) {
            continue;
        }
        let p = format!("{}/{len}", Ipv4Addr::from(addr));
        let k = (x >> 40) % 3 + 1;
        let line = if (x >> 48).is_multiple_of(10) {
            format!("{p}{}", (1..=3).map(|i| format!(" nexthop via 10.{i}.0.2 dev rgr{i}")).collect::<String>())
        } else {
            format!("{p} via 10.{k}.0.2 dev rgr{k}")
        };
        if sample_v4.is_empty() {
            sample_v4 = line.clone();
        }
        writeln!(w, "route add {line}")?;
    }
    w.flush()?;
    let mut seen6: HashSet<(u128, u8)> = HashSet::with_capacity(n6);
    let mut w = BufWriter::new(File::create(&v6p)?);
    let mut sample_v6 = String::new();
    while seen6.len() < n6 {
        let x = rng.next();
        let y = rng.next();
        let len: u8 = if x.is_multiple_of(2) { 48 } else { 32 + ((x >> 8) % 16) as u8 };
        // 2000::/3.
        let hi = (0x2000u128 | ((y >> 48) as u128 & 0x1fff)) << 112;
        let addr = (hi | ((y as u128 & 0xffff_ffff_ffff) << 64)) & (u128::MAX << (128 - len as u32));
        if !seen6.insert((addr, len)) {
            continue;
        }
        let p = format!("{}/{len}", Ipv6Addr::from(addr));
        let k = (x >> 40) % 3 + 1;
        let line = if (x >> 48).is_multiple_of(10) {
            format!("{p}{}", route_members_v6())
        } else {
            format!("{p} via fd00:{k}::2 dev rgr{k}")
        };
        if sample_v6.is_empty() {
            sample_v6 = line.clone();
        }
        writeln!(w, "route add {line}")?;
    }
    w.flush()?;
    Ok((v4p, v6p, Generated { v4: n4, v6: n6, sample_v6, sample_v4 }))
}

// ---------------------------------------------------------------------------
// Phase 1: prediction throughput.

fn keys_of(sockets: &[TcpSocket]) -> Vec<route_get::FlowKey> {
    sockets
        .iter()
        .map(|s| route_get::FlowKey {
            src: s.local.ip(),
            dst: s.remote.ip(),
            sport: s.local.port(),
            dport: s.remote.port(),
            mark: s.mark.filter(|m| *m != 0),
            oif: (s.bound_ifindex != 0).then_some(s.bound_ifindex),
        })
        .collect()
}

fn synthetic_keys(n: usize) -> Vec<route_get::FlowKey> {
    let dsts = destinations();
    (0..n)
        .map(|i| {
            let d = dsts[i % dsts.len()];
            route_get::FlowKey {
                src: IpAddr::V6(format!("fd00:{}::1", i % 3 + 1).parse().expect("src")),
                dst: d.ip(),
                sport: 1024 + (i / dsts.len() % 64_000) as u16,
                dport: d.port(),
                mark: None,
                oif: None,
            }
        })
        .collect()
}

struct PredictRun {
    flows_per_sec: Vec<f64>,
    secs: Vec<f64>,
    /// CPU of the probing thread over all timed runs: user, system.
    cpu_user: f64,
    cpu_sys: f64,
    errors: usize,
    overruns: u64,
    answers: Vec<Option<(Option<IpAddr>, u32)>>,
}

fn predict_runs(ns: &str, keys: &[route_get::FlowKey], runs: usize) -> Result<PredictRun> {
    in_ns_named(ns, "rgb-predict", || {
        let mut prober = RouteProber::new().context("open route prober")?;
        // Warm-up: page in the code paths and the kernel's per-CPU routes.
        black_box(prober.select_many(&keys[..keys.len().min(2000)]));
        let mut out = PredictRun {
            flows_per_sec: vec![],
            secs: vec![],
            cpu_user: 0.0,
            cpu_sys: 0.0,
            errors: 0,
            overruns: 0,
            answers: vec![],
        };
        let (u0, s0) = thread_cpu();
        for run in 0..runs {
            let t = Instant::now();
            let ans = prober.select_many(keys);
            let d = t.elapsed().as_secs_f64();
            out.secs.push(d);
            out.flows_per_sec.push(keys.len() as f64 / d);
            if run == runs - 1 {
                out.errors = ans.iter().filter(|a| a.is_err()).count();
                out.answers = ans.into_iter().map(|a| a.ok().map(|s| (s.gateway, s.oif))).collect();
            }
        }
        let (u1, s1) = thread_cpu();
        (out.cpu_user, out.cpu_sys) = (u1 - u0, s1 - s0);
        out.overruns = prober.overruns();
        Ok(out)
    })
}

// ---------------------------------------------------------------------------
// Phase 2/3: in-process evaluation.

/// The detectors' context. The one place that names its fields.
fn ctx<'a>(model: &'a Model, flows: &'a FlowTable, kernel: &'a KernelFacts) -> Context<'a> {
    Context { model, flows, kernel, peers: &[], hairpin_filters: &NO_FILTERS }
}

static NO_FILTERS: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();

fn facts() -> KernelFacts {
    // What the self-test measured on this kernel for IPv6 policy 1.
    KernelFacts {
        ecmp_v6_affected: Some(true),
        ecmp_v4_affected: Some(false),
        sit_local_remote_drops: None,
        ..KernelFacts::default()
    }
}

/// What the core does for `Query::Evaluate` (`Core::decide`), minus the
/// stale check: every detector's findings, then the policy.
fn decide(
    model: &Model,
    flows: &FlowTable,
    kernel: &KernelFacts,
    dets: &[Box<dyn Detector>],
    intent: &Intent,
    cfg: &HazardsConfig,
) -> policy::Decision {
    let ctx = ctx(model, flows, kernel);
    let findings: Vec<Finding> = dets.iter().flat_map(|d| d.evaluate(&ctx, intent)).collect();
    policy::decide(findings, cfg)
}

fn kf_affected(k: &KernelFacts, f: &routeguard::model::flows::Flow) -> bool {
    (if f.is_v6() { k.ecmp_v6_affected } else { k.ecmp_v4_affected }).unwrap_or(true)
}

fn spec_of(model: &Model, dst: IpNetwork, nexthops: &[routeguard::model::NextHop]) -> RouteSpec {
    RouteSpec {
        table: TABLE_MAIN,
        dst,
        metric: None,
        members: nexthops
            .iter()
            .map(|n| MemberSpec { gateway: n.gateway, dev: model.ifname(n.ifindex), weight: n.weight })
            .collect(),
    }
}

fn sync_flows(
    model: &Model,
    listening: &std::collections::BTreeSet<u16>,
    lab: &Lab,
    answers: &HashMap<(SocketAddr, SocketAddr), (Option<IpAddr>, u32)>,
) -> (FlowTable, f64) {
    let mut t = FlowTable::default();
    let start = Instant::now();
    t.sync(model, listening);
    let sync_secs = start.elapsed().as_secs_f64();
    let keys: Vec<_> = t.iter().map(|f| f.key()).collect();
    for k in keys {
        if let Some((gw, oif)) = answers.get(&k) {
            t.predict(&k, MemberId { gateway: *gw, ifindex: *oif });
        }
        if let Some(&node) = lab.node_of.get(&k) {
            t.observe(Observation { local: k.0, remote: k.1, ifindex: lab.member_ifindex[node] });
        }
    }
    (t, sync_secs)
}

// ---------------------------------------------------------------------------
// The daemon.

fn grpc_phase(bin: &Path, lab: &Lab, dir: &Path, intents: &[(&'static str, String)], n_flows: usize) -> Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut d = Daemon::spawn(bin, &lab.r, dir, "rg", "", track_pid)?;
    let dump_secs = d.wait_dump()?;
    let pid = d.pid()?;
    println!("ecmp: daemon: first dump complete {dump_secs:.2} s after spawn; waiting for the flow inventory");
    let mut client = rt.block_on(routeguard::client::connect(&d.sock))?;
    // Wait until every flow is in the model, then let a few polls and
    // prediction passes happen.
    let t = Instant::now();
    let sockets = loop {
        let s = rt.block_on(client.get_status(pb::GetStatusRequest { digest: false }))?.into_inner();
        let n = s.counts.get("sockets").copied().unwrap_or(0);
        if n as usize >= n_flows {
            break n;
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("daemon lists {n} sockets after 120 s, expected {n_flows}");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let inventory_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5));
    // Steady-state cost with this flow count: CPU over 10 s of doing nothing
    // but its periodic socket polls and prediction passes.
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let idle_cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    let status = rt.block_on(client.get_status(pb::GetStatusRequest { digest: false }))?.into_inner();
    let rss_kb = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    println!(
        "ecmp: daemon: {sockets} sockets after {inventory_secs:.1} s, armed_flows {}, routes {}+{}, RSS {} MB, \
         steady-state CPU {:.0} % of one core (load {})",
        status.armed_flows,
        status.counts.get("routes_v4").copied().unwrap_or(0),
        status.counts.get("routes_v6").copied().unwrap_or(0),
        rss_kb / 1024,
        idle_cpu * 100.0,
        loadavg()
    );
    // Evaluate requests at pseudo-random moments of the 1 s poll cycle.
    let mut rng = Rng(42);
    let mut lat: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut verdicts: BTreeMap<&str, (String, u64)> = BTreeMap::new();
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    for i in 0..GRPC_REQUESTS * intents.len() {
        let (name, text) = &intents[i % intents.len()];
        std::thread::sleep(Duration::from_millis(rng.next() % 250));
        let req = pb::ChangeRequest {
            intent: Some(pb::change_request::Intent::RouteReplace(text.clone())),
            requester: "bench".into(),
        };
        let t = Instant::now();
        let dec = rt.block_on(client.evaluate(req))?.into_inner();
        lat.entry(name).or_default().push(t.elapsed().as_secs_f64() * 1000.0);
        verdicts.insert(name, (dec.verdict.clone(), dec.findings.iter().map(|f| f.breaks).sum()));
    }
    let busy_cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    // ListFlows with the CLI's client (default 4 MiB message limit).
    let t = Instant::now();
    let list = rt.block_on(client.list_flows(pb::ListFlowsRequest { at_risk: false }));
    let list_flows = match list {
        Ok(r) => json!({"ok": true, "flows": r.into_inner().flows.len(), "secs": t.elapsed().as_secs_f64()}),
        Err(e) => json!({"ok": false, "error": e.message(), "secs": t.elapsed().as_secs_f64()}),
    };
    let all: Vec<f64> = lat.values().flatten().copied().collect();
    let over_1s = all.iter().filter(|&&ms| ms > 1000.0).count();
    println!("ecmp: 2b. gRPC Evaluate: {over_1s} of {} requests took more than 1 s", all.len());
    let mut per = serde_json::Map::new();
    for (name, v) in &lat {
        let s = Stats::of(v);
        let (verdict, breaks) = verdicts.get(name).cloned().unwrap_or_default();
        println!(
            "ecmp: 2b. gRPC Evaluate [{name}]: {} requests, latency ms p50 {:.1} p90 {:.1} max {:.1} (verdict {verdict}, \
             breaks {breaks})",
            s.n, s.p50, s.p90, s.max
        );
        per.insert(name.to_string(), json!({"latency_ms": s.json(), "verdict": verdict, "breaks": breaks}));
    }
    println!("ecmp: daemon: ListFlows (default client limits) -> {list_flows}");
    drop(client);
    // The server's graceful shutdown waits for open connections; a runtime
    // that is no longer driven would keep ours open.
    drop(rt);
    d.stop()?;
    let all_s = Stats::of(&all);
    Ok(json!({
        "first_dump_secs": dump_secs,
        "inventory_secs": inventory_secs,
        "sockets": sockets,
        "armed_flows": status.armed_flows,
        "routes_v4": status.counts.get("routes_v4"),
        "routes_v6": status.counts.get("routes_v6"),
        "rss_kb": rss_kb,
        "steady_cpu_fraction": (idle_cpu * 1000.0).round() / 1000.0,
        "cpu_fraction_during_evaluates": (busy_cpu * 1000.0).round() / 1000.0,
        "evaluate": per,
        "evaluate_all_ms": all_s.json(),
        "evaluate_over_1s": over_1s,
        "list_flows": list_flows,
        "selftest": "off (on_start=false): KernelFacts unknown, unknown flows count as armed",
    }))
}

// ---------------------------------------------------------------------------

struct Params {
    flows: usize,
    routes: usize,
    runs: usize,
    daemon: bool,
}

fn inventory(ns: &str) -> Result<(sockdiag::TcpPoll, f64)> {
    in_ns(ns, || {
        let t = Instant::now();
        let p = sockdiag::poll_tcp()?;
        Ok((p, t.elapsed().as_secs_f64()))
    })
}

fn report_predict(tag: &str, n: usize, r: &PredictRun) -> Value {
    let s = Stats::of(&r.flows_per_sec);
    let wall: f64 = r.secs.iter().sum();
    let keys_total = (n * r.secs.len()) as f64;
    println!(
        "ecmp: 1. predictions [{tag}]: {n} keys, {:.0} flows/s median ({:.0} min, {:.0} max over {} runs; {:.3} s \
         median per pass), {} errors, {} overruns; thread CPU per key {:.2} µs user + {:.2} µs system, on CPU {:.0} % \
         of the wall time",
        s.p50,
        s.min,
        s.max,
        s.n,
        Stats::of(&r.secs).p50,
        r.errors,
        r.overruns,
        r.cpu_user / keys_total * 1e6,
        r.cpu_sys / keys_total * 1e6,
        (r.cpu_user + r.cpu_sys) / wall * 100.0
    );
    json!({"keys": n, "flows_per_sec": s.json(), "secs": Stats::of(&r.secs).json(), "errors": r.errors,
           "overruns": r.overruns, "cpu_user_us_per_key": r.cpu_user / keys_total * 1e6,
           "cpu_sys_us_per_key": r.cpu_sys / keys_total * 1e6, "on_cpu_fraction": (r.cpu_user + r.cpu_sys) / wall})
}

fn bench(p: &Params, r: &str, dir: &Path, pid: u32) -> Result<Value> {
    let mut out = serde_json::Map::new();
    let machine = json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": routeguard::kernel_release(),
        "load_start": loadavg(),
    });
    out.insert("machine".into(), machine);
    out.insert("params".into(), json!({"flows": p.flows, "routes": p.routes, "runs": p.runs}));
    println!("ecmp: building the lab (load {})", loadavg());
    let mut lab = build_lab(r, pid)?;
    lab.listen()?;
    let drops0 = softnet_dropped();
    lab.connect(p.flows)?;
    let softnet_drops = softnet_dropped().saturating_sub(drops0);
    let n_flows = lab.established;
    println!(
        "ecmp: 0. opened {n_flows} of {} flows in {:.1} s ({:.0}/s) from {} holder processes; {} server ends seen \
         established in the nodes; errors {:?}; softnet backlog drops meanwhile (all namespaces) {} (load {})",
        p.flows,
        lab.connect_secs,
        n_flows as f64 / lab.connect_secs,
        lab.holders.len(),
        lab.node_of.len(),
        lab.connect_errors,
        softnet_drops,
        loadavg()
    );
    out.insert(
        "flows".into(),
        json!({"wanted": p.flows, "established": n_flows, "server_ends_established": lab.node_of.len(),
               "holders": lab.holders.len(), "connect_secs": lab.connect_secs, "errors": lab.connect_errors,
               "softnet_drops_during_connect": softnet_drops}),
    );
    if n_flows == 0 {
        bail!("no flow could be opened");
    }

    // ---- Phase 1, lab routes only.
    let (poll, poll_secs) = inventory(r)?;
    let sockets: Vec<TcpSocket> =
        poll.established.iter().filter(|s| !poll.listening.contains(&s.local.port())).cloned().collect();
    println!("ecmp: 1. sock_diag inventory of R: {} established sockets in {:.3} s", sockets.len(), poll_secs);
    let keys = keys_of(&sockets);
    let synth = synthetic_keys(p.flows.max(100_000));
    let real_lab = predict_runs(r, &keys, p.runs)?;
    let synth_lab = predict_runs(r, &synth, p.runs)?;
    let mut p1 = serde_json::Map::new();
    p1.insert("inventory_secs_lab".into(), json!(poll_secs));
    p1.insert("real_lab_routes".into(), report_predict("real flows, lab routes only", keys.len(), &real_lab));
    p1.insert(
        "synthetic_lab_routes".into(),
        report_predict("synthetic keys, lab routes only", synth.len(), &synth_lab),
    );
    // Sanity: answers are members; now (accepting node) vs after (answer).
    let mut per_member: BTreeMap<u32, usize> = BTreeMap::new();
    let (mut moved, mut known) = (0usize, 0usize);
    let mut answers: HashMap<(SocketAddr, SocketAddr), (Option<IpAddr>, u32)> = HashMap::new();
    for (s, a) in sockets.iter().zip(&real_lab.answers) {
        let Some((gw, oif)) = a else { continue };
        *per_member.entry(*oif).or_default() += 1;
        answers.insert((s.local, s.remote), (*gw, *oif));
        if let Some(&node) = lab.node_of.get(&(s.local, s.remote)) {
            known += 1;
            if lab.member_ifindex[node] != *oif {
                moved += 1;
            }
        }
    }
    let not_member = per_member.iter().filter(|(k, _)| !lab.member_ifindex.contains(k)).map(|(_, v)| v).sum::<usize>();
    println!(
        "ecmp: 1. answers per member ifindex {per_member:?} ({not_member} not a member); {moved} of {known} flows \
         would move at the next invalidation (now = accepting node, after = answer)"
    );
    let biggest = per_member.values().copied().max().unwrap_or(0);
    if known > 0 && biggest * 10 > known * 6 {
        println!("ecmp: WARNING: answers concentrate on one member ({biggest} of {known}); neighbour failures?");
    }
    p1.insert(
        "answers".into(),
        json!({"per_member_ifindex": per_member, "not_member": not_member, "would_move": moved, "known_now": known}),
    );

    // ---- Load the routes.
    let (v4b, v6b, gen) = write_route_batches(dir, p.routes)?;
    println!("ecmp: loading {} IPv4 + {} IPv6 routes into R (load {})", gen.v4, gen.v6, loadavg());
    let t = Instant::now();
    for f in [&v4b, &v6b] {
        let st = Command::new("ip").args(["-n", r, "-batch"]).arg(f).stdout(Stdio::null()).status()?;
        if !st.success() {
            bail!("ip -batch {} failed", f.display());
        }
    }
    let load_secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&v4b);
    let _ = std::fs::remove_file(&v6b);
    println!(
        "ecmp: loaded {} routes in {load_secs:.1} s ({:.0}/s) (load {})",
        p.routes,
        p.routes as f64 / load_secs,
        loadavg()
    );
    out.insert("route_load".into(), json!({"v4": gen.v4, "v6": gen.v6, "secs": load_secs}));

    // ---- Phase 1 again, with 1M routes in the kernel.
    let (poll, poll_secs) = inventory(r)?;
    let sockets: Vec<TcpSocket> =
        poll.established.iter().filter(|s| !poll.listening.contains(&s.local.port())).cloned().collect();
    println!("ecmp: 1. sock_diag inventory of R (routes loaded): {} sockets in {:.3} s", sockets.len(), poll_secs);
    let keys = keys_of(&sockets);
    let real_full = predict_runs(r, &keys, p.runs)?;
    let synth_full = predict_runs(r, &synth, p.runs)?;
    p1.insert("inventory_secs_full".into(), json!(poll_secs));
    p1.insert("real_full_table".into(), report_predict("real flows, 1M routes", keys.len(), &real_full));
    p1.insert("synthetic_full_table".into(), report_predict("synthetic keys, 1M routes", synth.len(), &synth_full));
    // Inventory + predictions, as one daemon prediction pass does it.
    let e2e_pass = poll_secs + Stats::of(&real_full.secs).p50;
    p1.insert("inventory_plus_predict_secs".into(), json!(e2e_pass));
    println!(
        "ecmp: 1. inventory + predictions of {} flows: {:.3} s ({:.0} flows/s)",
        keys.len(),
        e2e_pass,
        keys.len() as f64 / e2e_pass
    );
    let answers_full: HashMap<(SocketAddr, SocketAddr), (Option<IpAddr>, u32)> =
        sockets.iter().zip(&real_full.answers).filter_map(|(s, a)| a.map(|a| ((s.local, s.remote), a))).collect();
    let changed = answers_full.iter().filter(|(k, v)| answers.get(*k) != Some(*v)).count();
    p1.insert("answers_changed_by_route_load".into(), json!(changed));
    let t1_real = Stats::of(&real_full.flows_per_sec).p50.min(Stats::of(&real_lab.flows_per_sec).p50);
    out.insert("phase1".into(), Value::Object(p1));

    // ---- Phase 2, in process.
    println!("ecmp: dumping R into a model (load {})", loadavg());
    let (mut model, dump_secs) = in_ns(r, || {
        let mut m = Model::default();
        let mut sink: Vec<Applied> = Vec::new();
        let t = Instant::now();
        dump::dump_all(64 << 20, |batch| {
            for c in batch {
                m.apply(c, &mut sink);
            }
            sink.clear();
        })?;
        let names: HashMap<String, u32> = m.links.values().map(|l| (l.name.clone(), l.ifindex)).collect();
        let s = sysctl::read(Path::new("/proc/sys"), &names);
        m.apply(Change::Sysctls(s), &mut sink);
        Ok((m, t.elapsed().as_secs_f64()))
    })?;
    let mut sink = Vec::new();
    model.apply(Change::Sockets(poll.established.clone()), &mut sink);
    drop(sink);
    let (mut flows, sync_secs) = sync_flows(&model, &poll.listening, &lab, &answers_full);
    let kf = facts();
    let armed = flows.iter().filter(|f| f.armed(kf.ecmp_v6_affected.unwrap_or(true))).count();
    let behind_default = flows.iter().filter(|f| f.prefix.prefix() == 0).count();
    println!(
        "ecmp: 2. model: {} IPv4 + {} IPv6 routes (dump {:.2} s); flow table {} flows ({} behind the ECMP default, {} \
         armed), FlowTable::sync {:.3} s",
        model.routes.count_v4(),
        model.routes.count_v6(),
        dump_secs,
        flows.len(),
        behind_default,
        armed,
        sync_secs
    );
    let dets = hazards::all();
    let cfg = HazardsConfig::default();
    let own_route = format!("fd00:ecec:f::/120{}", route_members_v6());
    let intents: Vec<(&'static str, String)> = vec![
        ("identical replace of the flows' /120", own_route),
        ("replace of a 1M-table IPv6 prefix (under the ECMP default)", gen.sample_v6.clone()),
        ("replace of a 1M-table IPv4 prefix", gen.sample_v4.clone()),
    ];
    let mut p2 = serde_json::Map::new();
    p2.insert(
        "model".into(),
        json!({"routes_v4": model.routes.count_v4(), "routes_v6": model.routes.count_v6(), "dump_secs": dump_secs,
               "flows": flows.len(), "behind_default": behind_default, "armed": armed, "sync_secs": sync_secs}),
    );
    let mut worst_inproc_ms = 0.0f64;
    let mut inproc = serde_json::Map::new();
    for (name, text) in &intents {
        let mut e2e = Vec::new();
        let mut eval_only = Vec::new();
        let mut last = None;
        for _ in 0..EVAL_RUNS {
            let t = Instant::now();
            let intent = Intent::RouteReplace(parse_route_replace(text).map_err(|e| anyhow!("{e}"))?);
            let d = decide(&model, &flows, &kf, &dets, &intent, &cfg);
            e2e.push(t.elapsed().as_secs_f64() * 1000.0);
            let ctx = ctx(&model, &flows, &kf);
            let t = Instant::now();
            black_box(EcmpRehash.evaluate(&ctx, &intent));
            eval_only.push(t.elapsed().as_secs_f64() * 1000.0);
            last = Some(d);
        }
        let d = last.ok_or_else(|| anyhow!("no run"))?;
        let breaks: usize = d.findings.iter().map(|f| f.breaks).sum();
        let s = Stats::of(&e2e);
        let se = Stats::of(&eval_only);
        worst_inproc_ms = worst_inproc_ms.max(s.max);
        println!(
            "ecmp: 2a. in-process evaluate [{name}]: parse+evaluate+decide ms p50 {:.2} max {:.2} (evaluate alone p50 \
             {:.2}); verdict {}, {} finding(s), breaks {breaks}",
            s.p50,
            s.max,
            se.p50,
            d.verdict.kind(),
            d.findings.len()
        );
        inproc.insert(
            name.to_string(),
            json!({"text": text, "e2e_ms": s.json(), "evaluate_ms": se.json(), "verdict": d.verdict.kind(),
                   "findings": d.findings.len(), "breaks": breaks}),
        );
    }
    // What a socket poll costs with this many flows when nothing changed
    // (the steady state the gRPC phase measures in). On the polling thread:
    // `SocketPolls::delta` diffs the poll against the previous one. On the
    // core (Core::process_input for Input::Tcp): apply the delta, if any,
    // sync the flow table, then publish_findings -> every detector's
    // current(). An Evaluate that arrives meanwhile waits for the core part.
    let mut polls = SocketPolls::default();
    black_box(polls.delta(poll.established.clone()));
    let (mut t_diff, mut t_apply, mut t_sync, mut t_current) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut sink = Vec::new();
        let established = poll.established.clone();
        let t = Instant::now();
        let delta = polls.delta(established);
        t_diff.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        if let Some(d) = delta {
            model.apply(d, &mut sink);
        }
        t_apply.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        flows.sync(&model, &poll.listening);
        t_sync.push(t.elapsed().as_secs_f64() * 1000.0);
        let c = ctx(&model, &flows, &kf);
        let t = Instant::now();
        black_box(dets.iter().flat_map(|d| d.current(&c)).collect::<Vec<_>>());
        t_current.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (sd, sa, ss, sc) = (Stats::of(&t_diff), Stats::of(&t_apply), Stats::of(&t_sync), Stats::of(&t_current));
    println!(
        "ecmp: 2c. a socket poll with {} flows and nothing changed, median of 3: diff on the polling thread {:.1} ms; \
         on the core: apply the delta {:.2} ms, FlowTable::sync {:.2} ms, detectors' current() {:.1} ms (core total \
         {:.1} ms; publish_findings runs current() again when the predictions come back)",
        flows.len(),
        sd.p50,
        sa.p50,
        ss.p50,
        sc.p50,
        sa.p50 + ss.p50 + sc.p50
    );
    // The same with every socket new, as at the daemon's start: a fresh
    // flow table over the whole model.
    let t = Instant::now();
    let mut fresh = FlowTable::default();
    fresh.sync(&model, &poll.listening);
    let first_sync_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(fresh);
    println!("ecmp: 2c. FlowTable::sync of {} new flows (a fresh table): {first_sync_ms:.1} ms", flows.len());
    p2.insert("inproc".into(), Value::Object(inproc));
    p2.insert(
        "per_poll_ms".into(),
        json!({"diff_off_core": sd.json(), "apply_delta": sa.json(), "sync": ss.json(), "current": sc.json(),
               "first_sync_all_new": first_sync_ms}),
    );

    // ---- Phase 3: per changed prefix, 1k flows (and the full set).
    let mut sampled: Vec<(IpNetwork, Vec<routeguard::model::NextHop>)> = Vec::new();
    let total = model.routes.count_v4() + model.routes.count_v6();
    let stride = (total / SAMPLED_PREFIXES).max(1);
    let mut i = 0usize;
    model.routes.for_each_raw(|table, dst, _, _, _, _, _, attrs| {
        if table == TABLE_MAIN && i.is_multiple_of(stride) && !attrs.nexthops.is_empty() {
            sampled.push((dst, attrs.nexthops.clone()));
        }
        i += 1;
    });
    let prefix_intents: Vec<(bool, Intent)> =
        sampled.iter().map(|(d, n)| (d.is_ipv6(), Intent::RouteReplace(spec_of(&model, *d, n)))).collect();
    // 1k flows as the lab mixes them (about half ride the ECMP default), and
    // 1k flows that all ride the /120 (no flow behind a default route).
    let slash120: IpNetwork = "fd00:ecec:f::/120".parse()?;
    let mix: Vec<TcpSocket> = sockets
        .iter()
        .filter(|s| slash120.contains(s.remote.ip()))
        .take(500)
        .chain(sockets.iter().filter(|s| !slash120.contains(s.remote.ip())).take(500))
        .cloned()
        .collect();
    let specific: Vec<TcpSocket> =
        sockets.iter().filter(|s| slash120.contains(s.remote.ip())).take(1000).cloned().collect();
    let mut sink = Vec::new();
    model.apply(Change::Sockets(mix), &mut sink);
    let (mut flows_mix, _) = sync_flows(&model, &poll.listening, &lab, &answers_full);
    model.apply(Change::Sockets(specific), &mut sink);
    let (mut flows_specific, _) = sync_flows(&model, &poll.listening, &lab, &answers_full);
    drop(sink);
    let mut p3 = serde_json::Map::new();
    let mut t3_mean_us = 0.0;
    let mut t3_parts = json!(null);
    let mut tables: Vec<(&str, &mut FlowTable)> = vec![
        ("1k flows, lab mix", &mut flows_mix),
        ("1k flows, none behind a default", &mut flows_specific),
        ("all flows", &mut flows),
    ];
    let every_tenth: Vec<(bool, Intent)> = prefix_intents.iter().step_by(10).cloned().collect();
    for (tag, table) in tables.iter_mut() {
        let table: &mut FlowTable = table;
        let prefix_intents = if *tag == "all flows" { &every_tenth } else { &prefix_intents };
        let n6 = prefix_intents.iter().filter(|(v6, _)| *v6).count();
        let behind = table.iter().filter(|f| f.prefix.prefix() == 0).count();
        let c = ctx(&model, table, &kf);
        for (_, it) in prefix_intents.iter().take(1000) {
            black_box(EcmpRehash.evaluate(&c, it));
        }
        let mut per = Vec::with_capacity(prefix_intents.len());
        let (mut per4, mut per6, mut touched, mut quiet) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let t_all = Instant::now();
        for (v6, it) in prefix_intents.iter() {
            let t = Instant::now();
            let f = EcmpRehash.evaluate(&c, it);
            let us = t.elapsed().as_secs_f64() * 1e6;
            if f.is_empty() {
                quiet.push(us)
            } else {
                touched.push(us)
            }
            black_box(f);
            per.push(us);
            if *v6 {
                per6.push(us)
            } else {
                per4.push(us)
            }
        }
        let loop_mean = t_all.elapsed().as_secs_f64() * 1e6 / prefix_intents.len() as f64;
        // The core's whole path per proposed change: all detectors + policy.
        let t_all = Instant::now();
        for (_, it) in prefix_intents.iter() {
            black_box(decide(&model, table, &kf, &dets, it, &cfg));
        }
        let decide_mean = t_all.elapsed().as_secs_f64() * 1e6 / prefix_intents.len() as f64;
        let (s, s4, s6, st, sq) =
            (Stats::of(&per), Stats::of(&per4), Stats::of(&per6), Stats::of(&touched), Stats::of(&quiet));
        println!(
            "ecmp: 3. detector pass [{tag}: {} flows ({behind} behind the ECMP default), {} prefixes ({n6} IPv6) of a \
             {total}-route model]: evaluate mean {loop_mean:.2} µs/prefix (p50 {:.2}, p99 {:.2}, max {:.1}); IPv4 mean \
             {:.2}, IPv6 mean {:.2}; {} prefixes touched flows (mean {:.2} µs), {} touched none (mean {:.2} µs); with \
             all detectors + decide {decide_mean:.2} µs",
            table.len(),
            prefix_intents.len(),
            s.p50,
            s.p99,
            s.max,
            s4.mean,
            s6.mean,
            st.n,
            st.mean,
            sq.n,
            sq.mean
        );
        let mut entry = json!({"flows": table.len(), "behind_default": behind, "prefixes": prefix_intents.len(),
            "prefixes_v6": n6, "evaluate_mean_us": loop_mean, "evaluate_us": s.json(), "v4_us": s4.json(),
            "v6_us": s6.json(), "touching_flows_us": st.json(), "touching_none_us": sq.json(),
            "with_decide_mean_us": decide_mean});
        if *tag == "1k flows, lab mix" {
            t3_mean_us = loop_mean;
            t3_parts = json!({"v4_mean_us": s4.mean, "v6_mean_us": s6.mean, "touching_mean_us": st.mean,
                              "touching_none_mean_us": sq.mean});
        }
        // The unplanned-change path (Core::apply_all -> invalidate): what
        // every route notification costs with this flow table. The first
        // call exposes the armed flows; later calls find none armed (their
        // current member became the predicted one) and visit only the flows
        // that are still unsettled.
        let mut first = None;
        let mut steady = Vec::new();
        for (_, it) in prefix_intents.iter() {
            let Intent::RouteReplace(spec) = it else { continue };
            let (tb, dst) = (spec.table, spec.dst);
            let t = Instant::now();
            let exposed = table.invalidate(|f| kf_affected(&kf, f), |f| f.hit_by_route_change(tb, dst));
            let us = t.elapsed().as_secs_f64() * 1e6;
            if first.is_none() && !exposed.is_empty() {
                first = Some((us, exposed.len()));
            } else {
                steady.push(us);
            }
            black_box(exposed);
        }
        let ss = Stats::of(&steady);
        // Once settled, no flow is armed: the same IPv6 evaluations then
        // build no finding, which isolates the cost of building one.
        let c = ctx(&model, table, &kf);
        let t_all = Instant::now();
        let mut n = 0usize;
        for (v6, it) in prefix_intents {
            if *v6 {
                black_box(EcmpRehash.evaluate(&c, it));
                n += 1;
            }
        }
        let settled_v6 = t_all.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
        println!(
            "ecmp: 3b. FlowTable::invalidate per route notification [{tag}]: mean {:.2} µs (p99 {:.2}) when nothing \
             is armed; first exposing call {:?} (µs, flows exposed). IPv6 evaluate mean once no flow is armed: \
             {settled_v6:.2} µs",
            ss.mean, ss.p99, first
        );
        entry["invalidate_steady_us"] = ss.json();
        entry["invalidate_first"] = json!(first);
        entry["v6_mean_us_settled"] = json!(settled_v6);
        p3.insert(tag.to_string(), entry);
    }
    drop(tables);
    drop(flows_mix);
    drop(flows_specific);
    out.insert("phase3".into(), Value::Object(p3));
    drop(flows);
    drop(model);

    // ---- Phase 2b: through the daemon.
    let mut worst_grpc_ms = None;
    if p.daemon {
        println!("ecmp: starting the daemon in R (load {})", loadavg());
        let g = grpc_phase(&daemon_bin()?, &lab, dir, &intents, n_flows)?;
        worst_grpc_ms = g["evaluate_all_ms"]["max"].as_f64();
        p2.insert("grpc".into(), g);
    }
    out.insert("phase2".into(), Value::Object(p2));

    let targets = json!({
        "predict_100k_flows_per_sec": {
            "target": ">= 100000 flows/s",
            "measured_median_real_flows_per_sec": t1_real.round(),
            "flows": n_flows,
            "pass": t1_real >= 100_000.0 && n_flows >= 100_000,
            "note": if n_flows >= 100_000 { "real established flows" } else { "fewer real flows than 100k" },
        },
        "evaluate_1m_routes_100k_flows": {
            "target": "<= 1000 ms",
            "inproc_worst_ms": (worst_inproc_ms * 1000.0).round() / 1000.0,
            "grpc_worst_ms": worst_grpc_ms,
            "pass": worst_inproc_ms <= 1000.0 && worst_grpc_ms.is_none_or(|w| w <= 1000.0),
        },
        "detector_per_prefix_1k_flows": {
            "target": "<= 50 us",
            "measured_mean_us": (t3_mean_us * 1000.0).round() / 1000.0,
            "parts": t3_parts,
            "pass": t3_mean_us <= 50.0,
        },
    });
    out.insert("targets".into(), targets);
    out.insert("load_end".into(), json!(loadavg()));
    drop(lab);
    Ok(Value::Object(out))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--hold-flows") {
        let n = |j: usize| args.get(i + j).and_then(|v| v.parse::<usize>().ok());
        let (Some(start), Some(count)) = (n(1), n(2)) else {
            eprintln!("usage: ecmp --hold-flows START COUNT");
            std::process::exit(2);
        };
        if let Err(e) = hold_flows(start, count) {
            println!("{}", json!({"ok": 0, "errors": {format!("{e:#}"): 1}}));
            std::process::exit(1);
        }
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("ecmp: skipped (not a test; run `cargo bench --bench ecmp` as root)");
        return;
    }
    // SAFETY: geteuid(2) has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("ecmp: needs root (it creates network namespaces, opens 100k flows and loads 1M routes in them)");
        std::process::exit(1);
    }
    let params = (|| -> Result<Params> {
        Ok(Params {
            flows: env_u64("RGBENCH_ECMP_FLOWS", 100_000)? as usize,
            routes: env_u64("RGBENCH_ECMP_ROUTES", 1_000_000)? as usize,
            runs: env_u64("RGBENCH_ECMP_RUNS", 5)?.max(1) as usize,
            daemon: std::env::var("RGBENCH_ECMP_NO_DAEMON").map_or(true, |v| v.is_empty() || v == "0"),
        })
    })();
    let params = match params {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ecmp: {e:#}");
            std::process::exit(2);
        }
    };
    let pid = std::process::id();
    let r = format!("rgbecmp-{pid}");
    let dir = PathBuf::from(format!("/tmp/rgbecmp-{pid}"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("ecmp: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    *registry() = Some(Cleanup { namespaces: Vec::new(), dir: dir.clone(), pids: Vec::new() });
    common::install_signal_watcher("ecmp", &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP], cleanup);
    let result = {
        let _guard = Guard(cleanup);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bench(&params, &r, &dir, pid)));
        match r {
            Ok(r) => r,
            Err(_) => Err(anyhow!("panicked")),
        }
    };
    match result {
        Ok(summary) => {
            println!("ecmp summary: {summary}");
        }
        Err(e) => {
            eprintln!("ecmp: FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}
