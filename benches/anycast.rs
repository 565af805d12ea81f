//! Subnet-Router anycast remediation benchmark (issue 4): how fast the
//! daemon turns IPv6 forwarding off again on an interface where a neighbor
//! sits at `prefix::` after someone turned forwarding on behind its back.
//! Goal: p99 <= 5 ms over 50 toggles.
//!
//! Run as root: `cargo bench --bench anycast`. Without `--bench` (e.g.
//! under `cargo test --benches`) it prints "skipped" and exits 0.
//!
//! The lab: namespace `rgbany-<pid>` with `lo` and a veth pair
//! `rgbv0`/`rgbv1` (both up); `rgbv0` carries `fdc0:3489:e0fd::1/64`
//! (nodad) and the route `2001:db8::/32 via fdc0:3489:e0fd:: dev rgbv0`,
//! whose gateway is the Subnet-Router anycast address of the /64. No FRR:
//! the neighbor is the static route's gateway. The bench checks that
//! `routeguard findings --json` reports a `subnet_anycast` finding naming
//! that gateway before it measures anything.
//!
//! The daemon: `ip netns exec NS routeguard run --socket S` (the release
//! binary cargo builds for benches, `CARGO_BIN_EXE_routeguard`;
//! `RGBENCH_DAEMON=PATH` overrides), with `ROUTEGUARD_SELFTEST__ON_START=false`
//! and `ROUTEGUARD_LOG_FORMAT=json`; every other `ROUTEGUARD_*` variable and
//! `RUST_LOG` are removed from its environment. Its stderr is parsed for
//! the `remediation` events (`latency_us`, `outcome`).
//!
//! One toggle: write `1` to `net.ipv6.conf.all.forwarding` (the kernel
//! propagates it to every interface, so `rgbv0` gets forwarding on and the
//! conflict exists), wait until `rgbv0.forwarding` reads `0` again, wait for
//! the daemon's `remediation` log event, write `0` to `all.forwarding`,
//! pause (`RGBENCH_ANYCAST_PAUSE_MS`, default 150). Per toggle it records
//!   (a) the daemon's own latency: `latency_us` of its event (the
//!       forwarding reflex's, or the monitor thread's, receive of the
//!       notification -> sysctl write done);
//!   (b) an external latency: from just before the bench's `all.forwarding`
//!       write to the moment the bench sees `rgbv0.forwarding == 0`. This
//!       includes the write syscall itself (the kernel rewrites every
//!       interface and sends the netconf notifications inside it), the
//!       notification's delivery and the monitor thread's wake-up.
//!
//! Two passes of `RGBENCH_ANYCAST_TOGGLES` (default 50) toggles each:
//!   * `spin` (the issue's method, the one the goal is judged on): the bench
//!     busy-polls `/proc/sys/net/ipv6/conf/rgbv0/forwarding` (pread on an
//!     open fd, no sleep) until it reads 0 or the timeout passes;
//!   * `netlink` (control): the bench blocks on its own rtnetlink socket
//!     subscribed to RTNLGRP_IPV6_NETCONF and stops the clock at the
//!     netconf message "rgbv0 forwarding 0" (then confirms it in /proc). It
//!     burns no CPU, so it shows how much the spinning observer, which takes
//!     one of a 2-vCPU machine's CPUs, slows the daemon down.
//!     `RGBENCH_ANYCAST_NETLINK=0` skips it.
//!
//! Other knobs: `RGBENCH_ANYCAST_LOG=PATH` keeps a copy of the daemon's JSON
//! log; `RGBENCH_ANYCAST_ROUTES=N` loads N extra IPv6 /64 routes (via
//! `fdc0:3489:e0fd::2`, no conflict) before the daemon starts, to see how
//! the latency grows with the routing table; `RGBENCH_ANYCAST_TIMEOUT_MS`
//! (default 2000) is the per-toggle timeout; `RGBENCH_ANYCAST_DAEMON_WRAP`
//! (e.g. `chrt -f 10`) runs the daemon under a wrapper that execs in place,
//! to see what a scheduling priority does to the tail;
//! `RGBENCH_ANYCAST_REALTIME_PRIORITY=N` sets the daemon's
//! `hazards.subnet_anycast.realtime_priority` (the forwarding reflex thread
//! alone runs SCHED_FIFO).
//!
//! Percentiles are nearest-rank over the samples of one pass: p50 is the
//! 25th of 50 sorted samples, p99 the 50th, i.e. the maximum. A toggle the
//! daemon did not remediate within the timeout counts as a miss and fails
//! the goal.
//!
//! Isolation and cleanup: everything happens in the namespace; every `ip`
//! command carries `-n NS` or runs under `ip netns exec NS`, and only one
//! thread of this process `setns`es into the namespace (checked by comparing
//! `/proc/thread-self/ns/net` with `/run/netns/NS` before its first write);
//! the main thread stays in the host namespace. The namespace and
//! `/tmp/rgbany-<pid>/` are removed on every exit path (Drop guard,
//! SIGINT/SIGTERM watcher, `PR_SET_PDEATHSIG` on the daemon), with every
//! process in the namespace killed first.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use routeguard::kernel::decode::netconf::{parse_netconf, NetconfScope, RTM_NEWNETCONF, RTNLGRP_IPV6_NETCONF};
use routeguard::kernel::decode::split_messages;
use routeguard::kernel::nl;

#[path = "common/mod.rs"]
mod common;
use common::{cpu_seconds, die_with_parent, ip, loadavg, ns_pids, run_ok, Guard};

const IFACE: &str = "rgbv0";
const PEER_IFACE: &str = "rgbv1";
const ADDR: &str = "fdc0:3489:e0fd::1/64";
const GATEWAY: &str = "fdc0:3489:e0fd::";
const ROUTE: &str = "2001:db8::/32";
/// The goal of issue 4.
const GOAL: Duration = Duration::from_millis(5);
/// Gateway of the optional extra routes: on-link, not an anycast address.
const OTHER_GATEWAY: &str = "fdc0:3489:e0fd::2";
/// How long the daemon may take to start and finish its first dump.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Cleanup: one registry, used by the Drop guard and the signal watcher.

struct Cleanup {
    ns: String,
    dir: PathBuf,
    pids: Vec<u32>,
    ns_created: bool,
}

static CLEANUP: Mutex<Option<Cleanup>> = Mutex::new(None);

fn with_registry(f: impl FnOnce(&mut Cleanup)) {
    if let Some(c) = CLEANUP.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        f(c);
    }
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we started or found in our namespace.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Kills what we started and everything in the namespace, deletes the
/// namespace and the scratch directory. Idempotent; the lock is held to the
/// end, so a second caller returns only once the first has finished.
fn cleanup() {
    let mut registry = CLEANUP.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = registry.take() else {
        return;
    };
    for &p in &c.pids {
        kill(p, libc::SIGKILL);
    }
    if c.ns_created {
        for _ in 0..50 {
            let pids = ns_pids(&c.ns);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                kill(p, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        common::delete_ns("anycast", &c.ns);
    }
    let _ = std::fs::remove_dir_all(&c.dir);
}

// ---------------------------------------------------------------------------
// Helpers.

fn uptime() -> String {
    run_ok("uptime", &[]).map(|s| s.trim().to_string()).unwrap_or_else(|_| format!("loadavg {}", loadavg()))
}

fn env_num(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// Nanoseconds the threads of `pid` have spent waiting on a run queue
/// (second field of /proc/PID/task/TID/schedstat), summed. The daemon is
/// idle between toggles, so the delta over one toggle is how long its
/// threads were runnable but not running while it remediated.
fn runq_wait_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// The same for the calling thread.
fn own_runq_wait_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The daemon.

/// A `remediation` event from the daemon's JSON log.
#[derive(Debug, Clone)]
struct Event {
    seen: Instant,
    latency_us: u64,
    outcome: String,
}

struct Daemon {
    child: Child,
    sock: PathBuf,
    bin: PathBuf,
    dumped: mpsc::Receiver<()>,
}

impl Daemon {
    fn spawn(bin: &Path, ns: &str, dir: &Path, events: mpsc::Sender<Event>) -> Result<Daemon> {
        let sock = dir.join("rg.sock");
        let log = dir.join("rg.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        // An optional wrapper that execs in place (`chrt -f 10`, `nice -n -10`).
        if let Ok(wrap) = std::env::var("RGBENCH_ANYCAST_DAEMON_WRAP") {
            cmd.args(wrap.split_whitespace());
        }
        cmd.arg(bin).args(["run", "--socket"]).arg(&sock);
        for (k, _) in std::env::vars() {
            if k.starts_with("ROUTEGUARD_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        // The forwarding reflex's SCHED_FIFO priority (config
        // `hazards.subnet_anycast.realtime_priority`), when asked for.
        if let Ok(p) = std::env::var("RGBENCH_ANYCAST_REALTIME_PRIORITY") {
            cmd.env("ROUTEGUARD_HAZARDS__SUBNET_ANYCAST__REALTIME_PRIORITY", p);
        }
        cmd.env("ROUTEGUARD_STATE_DIR", dir)
            .env("ROUTEGUARD_SELFTEST__ON_START", "false")
            .env("ROUTEGUARD_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("spawn routeguard")?;
        with_registry(|c| c.pids.push(child.id()));
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (dump_tx, dumped) = mpsc::channel();
        let mut logf = BufWriter::new(File::create(&log)?);
        std::thread::Builder::new().name("rg-log".into()).spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                let seen = Instant::now();
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    match v["message"].as_str() {
                        Some("remediation") => {
                            let _ = events.send(Event {
                                seen,
                                latency_us: v["latency_us"].as_u64().unwrap_or(u64::MAX),
                                outcome: v["outcome"].as_str().unwrap_or("").to_string(),
                            });
                        }
                        Some("kernel dump complete") => {
                            let _ = dump_tx.send(());
                        }
                        _ => {}
                    }
                }
                let _ = writeln!(logf, "{line}");
                let _ = logf.flush();
            }
        })?;
        Ok(Daemon { child, sock, bin: bin.to_path_buf(), dumped })
    }

    /// `ip netns exec` execs in place, so the child is the daemon; checked.
    fn pid(&self) -> Result<u32> {
        let pid = self.child.id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "routeguard" {
            Ok(pid)
        } else {
            bail!("pid {pid} is `{}`, not routeguard", comm.trim())
        }
    }

    fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--json")
            .arg("--socket")
            .arg(&self.sock)
            .env_remove("ROUTEGUARD_SOCKET")
            .output()
            .context("spawn routeguard CLI")?;
        if !out.status.success() {
            bail!("`routeguard {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("`routeguard {}`: not JSON", args.join(" ")))
    }

    fn wait_ready(&mut self) -> Result<Value> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("routeguard exited during start-up ({st}); see its log");
            }
            if self.dumped.try_recv().is_ok() || start.elapsed() > Duration::from_secs(1) {
                if let Ok(s) = self.cli_json(&["status"]) {
                    if s["stale"] == json!(false) {
                        return Ok(s);
                    }
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!("routeguard not ready after {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------
// The measuring thread (the only one in the namespace).

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Spin,
    Netlink,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Spin => "spin",
            Mode::Netlink => "netlink",
        }
    }
}

#[derive(Debug, Clone)]
struct Sample {
    /// External latency: before the all.forwarding write -> rgbv0 reads 0.
    external_us: Option<f64>,
    /// Duration of the all.forwarding=1 write syscall.
    write_us: f64,
    /// The daemon's latency_us.
    daemon_us: Option<u64>,
    /// How many remediation events this toggle produced (1 expected).
    events: usize,
    outcome: String,
    /// /proc reads during the spin (spin mode).
    polls: u64,
    /// Run-queue wait of the daemon's threads from before the write to the
    /// event (all threads summed).
    daemon_runq_us: f64,
    /// Run-queue wait of the measuring thread over the same window.
    observer_runq_us: f64,
}

struct Lab {
    all: File,
    iface: File,
    ifindex: u32,
}

fn enter_namespace(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns(2) on a namespace fd we just opened; affects this thread only.
    #[allow(unsafe_code)]
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    let want = std::fs::metadata(&path)?;
    let have = std::fs::metadata("/proc/thread-self/ns/net")?;
    if (want.dev(), want.ino()) != (have.dev(), have.ino()) {
        bail!("setns did not move this thread into {ns}; refusing to write sysctls");
    }
    Ok(())
}

fn read_flag(f: &File) -> Result<u8> {
    let mut b = [0u8; 8];
    let n = f.read_at(&mut b, 0)?;
    if n == 0 {
        bail!("empty sysctl read");
    }
    Ok(b[0])
}

fn write_flag(f: &File, v: &[u8]) -> Result<()> {
    let n = f.write_at(v, 0)?;
    if n != v.len() {
        bail!("short sysctl write");
    }
    Ok(())
}

impl Lab {
    /// Opens the two sysctl files. Must run on the thread that entered the
    /// namespace: /proc/sys/net resolves against the opener's namespace.
    fn open(ifindex: u32) -> Result<Lab> {
        let base = Path::new("/proc/sys/net/ipv6/conf");
        let all =
            OpenOptions::new().read(true).write(true).open(base.join("all/forwarding")).context("all.forwarding")?;
        let iface = File::open(base.join(IFACE).join("forwarding")).with_context(|| format!("{IFACE}.forwarding"))?;
        Ok(Lab { all, iface, ifindex })
    }
}

/// A netconf listener for the control pass.
struct NetconfWatch {
    sock: netlink_sys::Socket,
    buf: Vec<u8>,
}

impl NetconfWatch {
    fn open() -> Result<NetconfWatch> {
        let (sock, _) = nl::open_route_socket(&[RTNLGRP_IPV6_NETCONF], 4 << 20)?;
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        // SAFETY: setsockopt(2) with a valid fd and a timeval of the right size.
        #[allow(unsafe_code)]
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        }
        Ok(NetconfWatch { sock, buf: Vec::with_capacity(1 << 16) })
    }

    fn drain(&mut self) {
        loop {
            self.buf.clear();
            if self.sock.recv(&mut self.buf, libc::MSG_DONTWAIT).is_err() {
                return;
            }
        }
    }

    /// Blocks until a netconf message says `ifindex` has IPv6 forwarding 0;
    /// false on timeout.
    fn wait_off(&mut self, ifindex: u32, deadline: Instant) -> Result<bool> {
        while Instant::now() < deadline {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {
                    continue
                }
                Err(e) if nl::is_overrun(&e) => bail!("netconf watcher overran"),
                Err(e) => return Err(e.into()),
            }
            for m in split_messages(&self.buf) {
                let Ok((hdr, payload)) = m else { continue };
                if hdr.msg_type != RTM_NEWNETCONF {
                    continue;
                }
                let Ok(msg) = parse_netconf(payload) else { continue };
                if msg.family == libc::AF_INET6 as u8
                    && msg.ifindex == NetconfScope::Index(ifindex)
                    && msg.forwarding == Some(0)
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

fn run_pass(
    lab: &Lab,
    mode: Mode,
    toggles: usize,
    pause: Duration,
    events: &mpsc::Receiver<Event>,
    daemon_pid: u32,
    timeout: Duration,
) -> Result<Vec<Sample>> {
    let mut watch = if mode == Mode::Netlink { Some(NetconfWatch::open()?) } else { None };
    let mut out = Vec::with_capacity(toggles);
    for i in 0..toggles {
        if read_flag(&lab.all)? != b'0' || read_flag(&lab.iface)? != b'0' {
            bail!("toggle {i}: forwarding is not off before the toggle");
        }
        let mut stray = 0;
        while events.try_recv().is_ok() {
            stray += 1;
        }
        if let Some(w) = watch.as_mut() {
            w.drain();
        }
        let rq0 = runq_wait_ns(daemon_pid);
        let own0 = own_runq_wait_ns();
        let t0 = Instant::now();
        write_flag(&lab.all, b"1\n")?;
        let written = t0.elapsed();
        let deadline = t0 + timeout;
        let mut polls = 0u64;
        let observed = match watch.as_mut() {
            None => loop {
                let v = read_flag(&lab.iface)?;
                polls += 1;
                if v == b'0' {
                    break Some(t0.elapsed());
                }
                if polls.is_multiple_of(64) && Instant::now() > deadline {
                    break None;
                }
            },
            Some(w) => {
                if w.wait_off(lab.ifindex, deadline)? {
                    let at = t0.elapsed();
                    if read_flag(&lab.iface)? != b'0' {
                        bail!("toggle {i}: netconf said {IFACE} forwarding 0 but /proc disagrees");
                    }
                    Some(at)
                } else {
                    None
                }
            }
        };
        // The daemon logs after the write completed; wait for its event
        // before resetting, so the next toggle cannot overtake it.
        let mut evs: Vec<Event> = Vec::new();
        let ev_deadline = Instant::now() + timeout;
        while evs.is_empty() {
            let left = ev_deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(e) => evs.push(e),
                Err(_) => break,
            }
        }
        let daemon_runq_us = runq_wait_ns(daemon_pid).saturating_sub(rq0) as f64 / 1000.0;
        let observer_runq_us = own_runq_wait_ns().saturating_sub(own0) as f64 / 1000.0;
        write_flag(&lab.all, b"0\n")?;
        if observed.is_none() {
            // Put rgbv0 back by hand only through `all` (already done above).
            eprintln!("anycast: toggle {i} ({}): {IFACE} still forwarding after {timeout:?}", mode.name());
        }
        std::thread::sleep(pause);
        // Late or duplicate events belong to this toggle.
        while let Ok(e) = events.try_recv() {
            evs.push(e);
        }
        if stray > 0 {
            eprintln!("anycast: toggle {i} ({}): {stray} remediation event(s) before the toggle", mode.name());
        }
        let first = evs.first();
        if let Some(e) = first {
            if e.seen < t0 {
                bail!("toggle {i}: event older than the toggle");
            }
        }
        out.push(Sample {
            external_us: observed.map(us),
            write_us: us(written),
            daemon_us: first.map(|e| e.latency_us),
            events: evs.len(),
            outcome: first.map(|e| e.outcome.clone()).unwrap_or_default(),
            polls,
            daemon_runq_us,
            observer_runq_us,
        });
    }
    Ok(out)
}

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    json!({
        "n": s.len(),
        "min_us": s.first().copied(),
        "p50_us": pct(&s, 50.0),
        "p99_us": pct(&s, 99.0),
        "max_us": s.last().copied(),
        "mean_us": if s.is_empty() { f64::NAN } else { s.iter().sum::<f64>() / s.len() as f64 },
    })
}

fn ms(v: &Value, k: &str) -> String {
    v[k].as_f64().map(|x| format!("{:.3}", x / 1000.0)).unwrap_or_else(|| "-".into())
}

fn summarize(mode: Mode, samples: &[Sample], toggles: usize) -> Value {
    let daemon: Vec<f64> = samples.iter().filter_map(|s| s.daemon_us.map(|u| u as f64)).collect();
    let external: Vec<f64> = samples.iter().filter_map(|s| s.external_us).collect();
    let writes: Vec<f64> = samples.iter().map(|s| s.write_us).collect();
    let misses = samples.iter().filter(|s| s.external_us.is_none() || s.daemon_us.is_none()).count();
    let dup = samples.iter().filter(|s| s.events > 1).count();
    let failed = samples.iter().filter(|s| !s.outcome.starts_with("turned IPv6 forwarding off")).count();
    let d = stats(&daemon);
    let e = stats(&external);
    let w = stats(&writes);
    let goal_us = us(GOAL);
    let pass_daemon = misses == 0 && daemon.len() == toggles && d["p99_us"].as_f64().is_some_and(|x| x <= goal_us);
    let pass_ext = misses == 0 && external.len() == toggles && e["p99_us"].as_f64().is_some_and(|x| x <= goal_us);
    println!(
        "anycast [{}]: daemon latency p50 {} ms, p99 {} ms, max {} ms ({} of {toggles} toggles) -> {}",
        mode.name(),
        ms(&d, "p50_us"),
        ms(&d, "p99_us"),
        ms(&d, "max_us"),
        daemon.len(),
        if pass_daemon { "PASS" } else { "FAIL" }
    );
    println!(
        "anycast [{}]: external latency p50 {} ms, p99 {} ms, max {} ms ({} of {toggles}) -> {}; all.forwarding=1 write itself p50 {} ms, max {} ms",
        mode.name(),
        ms(&e, "p50_us"),
        ms(&e, "p99_us"),
        ms(&e, "max_us"),
        external.len(),
        if pass_ext { "PASS" } else { "FAIL" },
        ms(&w, "p50_us"),
        ms(&w, "max_us"),
    );
    println!(
        "anycast [{}]: misses {misses}, toggles with more than one remediation event {dup}, events not 'turned ... off' {failed}",
        mode.name()
    );
    // What the slow toggles waited for.
    let slow: Vec<&Sample> = samples.iter().filter(|s| s.daemon_us.is_some_and(|u| u > 1000)).collect();
    let rq: Vec<f64> = samples.iter().map(|s| s.daemon_runq_us).collect();
    let r = stats(&rq);
    println!(
        "anycast [{}]: daemon threads' run-queue wait per toggle p50 {} ms, max {} ms; {} toggle(s) with daemon latency > 1 ms: {}",
        mode.name(),
        ms(&r, "p50_us"),
        ms(&r, "max_us"),
        slow.len(),
        slow.iter()
            .map(|s| format!(
                "{:.2} ms (run-queue wait {:.2} ms, external {:.2} ms)",
                s.daemon_us.unwrap_or(0) as f64 / 1000.0,
                s.daemon_runq_us / 1000.0,
                s.external_us.unwrap_or(f64::NAN) / 1000.0
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let slow_ext: Vec<&Sample> = samples.iter().filter(|s| s.external_us.is_some_and(|u| u > 5000.0)).collect();
    if !slow_ext.is_empty() {
        println!(
            "anycast [{}]: external > 5 ms: {}",
            mode.name(),
            slow_ext
                .iter()
                .map(|s| format!(
                    "{:.2} ms (write {:.2} ms, daemon {:.2} ms, daemon run-queue wait {:.2} ms, observer run-queue wait {:.2} ms)",
                    s.external_us.unwrap_or(f64::NAN) / 1000.0,
                    s.write_us / 1000.0,
                    s.daemon_us.unwrap_or(0) as f64 / 1000.0,
                    s.daemon_runq_us / 1000.0,
                    s.observer_runq_us / 1000.0
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    json!({
        "mode": mode.name(),
        "toggles": toggles,
        "daemon": d,
        "external": e,
        "write": w,
        "misses": misses,
        "duplicate_events": dup,
        "failed_outcomes": failed,
        "pass_daemon": pass_daemon,
        "pass_external": pass_ext,
        "samples": samples.iter().map(|s| json!({
            "daemon_us": s.daemon_us,
            "external_us": s.external_us.map(|x| x.round()),
            "write_us": s.write_us.round(),
            "events": s.events,
            "polls": s.polls,
            "daemon_runq_us": s.daemon_runq_us.round(),
            "observer_runq_us": s.observer_runq_us.round(),
        })).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------

struct Params {
    toggles: usize,
    pause: Duration,
    netlink: bool,
    /// How long one toggle may take before it counts as a miss.
    timeout: Duration,
    /// Extra IPv6 routes (not conflicting) loaded before the daemon starts.
    routes: u64,
}

fn bench(ns: &str, dir: &Path, p: &Params) -> Result<Value> {
    let bin = std::env::var_os("RGBENCH_DAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_routeguard")));
    let kernel = run_ok("uname", &["-r"]).unwrap_or_default().trim().to_string();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let up_start = uptime();
    println!("anycast: machine: {nproc} CPUs ({}), kernel {kernel}", cpu_model());
    println!("anycast: load at start: {up_start}");
    println!(
        "anycast: daemon {}{}",
        std::env::var("RGBENCH_ANYCAST_DAEMON_WRAP").map(|w| format!("{w} ")).unwrap_or_default(),
        bin.display()
    );

    // The lab.
    run_ok("ip", &["netns", "add", ns])?;
    with_registry(|c| c.ns_created = true);
    ip(ns, &["link", "set", "lo", "up"])?;
    ip(ns, &["link", "add", IFACE, "type", "veth", "peer", "name", PEER_IFACE])?;
    ip(ns, &["link", "set", IFACE, "up"])?;
    ip(ns, &["link", "set", PEER_IFACE, "up"])?;
    ip(ns, &["-6", "addr", "add", ADDR, "dev", IFACE, "nodad"])?;
    ip(ns, &["-6", "route", "add", ROUTE, "via", GATEWAY, "dev", IFACE])?;
    if p.routes > 0 {
        // A routing table's worth of ordinary IPv6 routes: the detector
        // looks at every gateway, so its cost grows with the table.
        let file = dir.join("routes.batch");
        let mut w = BufWriter::new(File::create(&file)?);
        for i in 0..p.routes {
            writeln!(w, "route add 2001:db9:{:x}:{:x}::/64 via {OTHER_GATEWAY} dev {IFACE}", i >> 16, i & 0xffff)?;
        }
        w.flush()?;
        drop(w);
        let t = Instant::now();
        ip(ns, &["-6", "-batch", &file.to_string_lossy()])?;
        println!(
            "anycast: loaded {} extra IPv6 routes via {OTHER_GATEWAY} in {:.1} s",
            p.routes,
            t.elapsed().as_secs_f64()
        );
    }
    // Link-local DAD finishes a second or two after link-up and sends
    // notifications; let it settle so it cannot land inside a toggle.
    let settle = Instant::now();
    while !ip(ns, &["-6", "addr", "show", "tentative"])?.trim().is_empty() {
        if settle.elapsed() > Duration::from_secs(10) {
            bail!("addresses still tentative after 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ifindex: u32 = ip(ns, &["-o", "link", "show", "dev", IFACE])?
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow!("no ifindex for {IFACE}"))?;

    // The measuring thread: enters the namespace, opens the sysctls, then
    // waits for the go (the daemon must be ready first).
    let (go_tx, go_rx) = mpsc::channel::<(mpsc::Receiver<Event>, u32)>();
    let (opened_tx, opened_rx) = mpsc::channel::<Result<()>>();
    let ns2 = ns.to_string();
    let toggles = p.toggles;
    let pause = p.pause;
    let netlink = p.netlink;
    let timeout = p.timeout;
    let measurer =
        std::thread::Builder::new().name("rg-bench-ns".into()).spawn(move || -> Result<Vec<(Mode, Vec<Sample>)>> {
            let lab = (|| -> Result<Lab> {
                enter_namespace(&ns2)?;
                let lab = Lab::open(ifindex)?;
                write_flag(&lab.all, b"0\n")?;
                Ok(lab)
            })();
            let lab = match lab {
                Ok(l) => {
                    let _ = opened_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let Ok((events, daemon_pid)) = go_rx.recv() else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            let mut modes = vec![Mode::Spin];
            if netlink {
                modes.push(Mode::Netlink);
            }
            for m in modes {
                out.push((m, run_pass(&lab, m, toggles, pause, &events, daemon_pid, timeout)?));
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok(out)
        })?;
    opened_rx.recv().map_err(|_| anyhow!("measuring thread died"))??;

    // The daemon.
    let (ev_tx, ev_rx) = mpsc::channel();
    let mut d = Daemon::spawn(&bin, ns, dir, ev_tx)?;
    let status = d.wait_ready()?;
    let pid = d.pid()?;
    println!(
        "anycast: daemon ready (pid {pid}, version {}, frr {})",
        status["version"].as_str().unwrap_or("?"),
        status["frr_state"].as_str().or(status["frr"].as_str()).unwrap_or("?")
    );

    // The detector must flag the gateway before anything is measured.
    let start = Instant::now();
    let finding = loop {
        let f = d.cli_json(&["findings"])?;
        let hit = f
            .as_array()
            .or(f["findings"].as_array())
            .and_then(|a| a.iter().find(|x| x["hazard"] == json!("subnet_anycast")).cloned());
        if let Some(h) = hit {
            break h;
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("no subnet_anycast finding after 10 s: {f}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let evidence = finding["evidence"].to_string();
    if !evidence.contains(&format!("gateway of route {ROUTE}")) || !evidence.contains(IFACE) {
        bail!("the subnet_anycast finding does not name the gateway on {IFACE}: {finding}");
    }
    println!(
        "anycast: detector flags it: {} / {}",
        finding["severity"].as_str().unwrap_or("?"),
        finding["evidence"][0].as_str().unwrap_or("?")
    );

    let cpu0 = cpu_seconds(pid);
    let load_before = loadavg();
    go_tx.send((ev_rx, pid)).map_err(|_| anyhow!("measuring thread died"))?;
    let passes = measurer.join().map_err(|_| anyhow!("measuring thread panicked"))??;
    let cpu = cpu_seconds(pid) - cpu0;
    let load_after = loadavg();
    let up_end = uptime();

    let status = d.cli_json(&["status"])?;
    let rems = status["remediations"].as_array().cloned().unwrap_or_default();
    println!(
        "anycast: status.remediations holds {} line(s); last: {}",
        rems.len(),
        rems.last().map(|v| v.to_string()).unwrap_or_default()
    );
    if let Some(st) = d.child.try_wait()? {
        bail!("routeguard exited during the run ({st})");
    }

    let mut results = Vec::new();
    for (m, samples) in &passes {
        results.push(summarize(*m, samples, p.toggles));
    }
    println!("anycast: load during the passes: {load_before} -> {load_after}; at end: {up_end}");
    println!("anycast: daemon CPU during the passes: {cpu:.2} s");
    let spin = &results[0];
    Ok(json!({
        "goal_p99_us": us(GOAL),
        "pass": spin["pass_daemon"].as_bool().unwrap_or(false) && spin["pass_external"].as_bool().unwrap_or(false),
        "machine": { "cpus": nproc, "cpu": cpu_model(), "kernel": kernel },
        "load": { "uptime_start": up_start, "before": load_before, "after": load_after, "uptime_end": up_end },
        "pause_ms": p.pause.as_millis() as u64,
        "extra_routes": p.routes,
        "realtime_priority": std::env::var("RGBENCH_ANYCAST_REALTIME_PRIORITY").ok(),
        "daemon_wrap": std::env::var("RGBENCH_ANYCAST_DAEMON_WRAP").ok(),
        "daemon_cpu_s": (cpu * 100.0).round() / 100.0,
        "remediations_in_status": rems.len(),
        "overruns": status["overruns"],
        "stale": status["stale"],
        "passes": results,
    }))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs bench targets without `--bench`: this is a
    // root-only measurement, not a test.
    if !args.iter().any(|a| a == "--bench") {
        println!("anycast: skipped (not a test; run `cargo bench --bench anycast` as root)");
        return;
    }
    // SAFETY: geteuid(2) has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("anycast: needs root (it creates a network namespace and writes sysctls in it)");
        std::process::exit(1);
    }
    let params = (|| -> Result<Params> {
        Ok(Params {
            toggles: env_num("RGBENCH_ANYCAST_TOGGLES", 50)?.max(1) as usize,
            pause: Duration::from_millis(env_num("RGBENCH_ANYCAST_PAUSE_MS", 150)?),
            netlink: env_num("RGBENCH_ANYCAST_NETLINK", 1)? != 0,
            timeout: Duration::from_millis(env_num("RGBENCH_ANYCAST_TIMEOUT_MS", 2000)?),
            routes: env_num("RGBENCH_ANYCAST_ROUTES", 0)?,
        })
    })();
    let params = match params {
        Ok(p) => p,
        Err(e) => {
            eprintln!("anycast: {e:#}");
            std::process::exit(2);
        }
    };
    let pid = std::process::id();
    let ns = format!("rgbany-{pid}");
    let dir = PathBuf::from(format!("/tmp/rgbany-{pid}"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("anycast: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    *CLEANUP.lock().unwrap() = Some(Cleanup { ns: ns.clone(), dir: dir.clone(), pids: Vec::new(), ns_created: false });
    common::install_signal_watcher("anycast", &[libc::SIGINT, libc::SIGTERM], cleanup);
    let result = {
        let _guard = Guard(cleanup);
        let r = bench(&ns, &dir, &params);
        // Keep the daemon's log when asked (the scratch directory goes).
        if let Some(keep) = std::env::var_os("RGBENCH_ANYCAST_LOG") {
            if let Err(e) = std::fs::copy(dir.join("rg.log"), &keep) {
                eprintln!("anycast: could not keep the daemon log: {e}");
            }
        }
        r
    };
    match result {
        Ok(summary) => {
            println!("anycast summary: {summary}");
        }
        Err(e) => {
            eprintln!("anycast: FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}
