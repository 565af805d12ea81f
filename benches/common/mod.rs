//! Helpers shared by the benchmark binaries (`benches/*.rs`), each of which
//! includes this file with `#[path = "common/mod.rs"] mod common;`.
//!
//! Only what was identical in the benches (or identical up to the bench's
//! name in messages) lives here. Each bench keeps its own cleanup registry
//! and `cleanup()`, because what they register and the order in which they
//! tear it down differ.
//!
//! Not every bench uses every helper.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Cleanup building blocks.

/// Sends `sig` to `pid`, never to this process or to pid 0 (which would be
/// our whole process group).
pub fn kill(pid: u32, sig: i32) {
    if pid == std::process::id() || pid == 0 {
        return;
    }
    // SAFETY: kill(2) on a pid we started or found inside our namespace.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The pids `ip netns pids` lists for namespace `ns` (none if it fails).
pub fn ns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILLs everything inside namespace `ns` but this process, in up to 50
/// rounds 100 ms apart, until `ip netns pids` lists nothing else.
pub fn reap_ns(ns: &str) {
    for _ in 0..50 {
        let pids: Vec<u32> = ns_pids(ns).into_iter().filter(|&p| p != std::process::id()).collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            kill(p, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ip netns del ns`; on failure warns on stderr as `{bench}: WARNING: ...`.
pub fn delete_ns(bench: &str, ns: &str) {
    let del = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
    if !matches!(del, Ok(s) if s.success()) {
        eprintln!("{bench}: WARNING: could not delete namespace {ns}; run `ip netns del {ns}`");
    }
}

/// Runs the bench's cleanup when dropped.
pub struct Guard(pub fn());

impl Drop for Guard {
    fn drop(&mut self) {
        (self.0)();
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// `signals` set a flag; a watcher thread then prints
/// `{bench}: interrupted; cleaning up`, runs `cleanup` and exits with 130.
pub fn install_signal_watcher(bench: &'static str, signals: &[libc::c_int], cleanup: fn()) {
    for &sig in signals {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    std::thread::spawn(move || loop {
        if SIGNALLED.load(Ordering::SeqCst) {
            eprintln!("{bench}: interrupted; cleaning up");
            cleanup();
            std::process::exit(130);
        }
        std::thread::sleep(Duration::from_millis(100));
    });
}

/// Children die with us even if we are SIGKILLed (set before exec; `ip
/// netns exec` keeps it across its own exec).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------
// Small helpers.

pub fn run_ok(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog).args(args).output().with_context(|| format!("spawn {prog}"))?;
    if !out.status.success() {
        bail!("`{prog} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    run_ok("ip", &a)
}

pub fn ns_sysctl(ns: &str, kv: &str) -> Result<()> {
    run_ok("ip", &["netns", "exec", ns, "sysctl", "-qw", kv]).map(|_| ())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

pub fn daemon_bin() -> Result<PathBuf> {
    let p = match std::env::var_os("RGBENCH_DAEMON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_routeguard")),
    };
    if !p.is_file() {
        bail!("daemon binary {} not found", p.display());
    }
    Ok(p)
}

/// Runs `f` on a new thread (named `name`, which shows up as `comm` in perf
/// and /proc) that has joined network namespace `ns`; sockets it creates
/// stay in `ns`. The calling thread's namespace is untouched.
pub fn in_ns_named<T: Send>(ns: &str, name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn_scoped(s, move || {
                let fd = File::open(&path).with_context(|| format!("open {path}"))?;
                // SAFETY: setns(2) on a namespace fd we hold; affects this thread only.
                #[allow(unsafe_code)]
                let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(anyhow!("setns({path}): {}", std::io::Error::last_os_error()));
                }
                f()
            })?
            .join()
            .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// utime + stime of a process in seconds (0 if it cannot be read).
pub fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(close) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / hz
}

/// Summary statistics, in the unit the caller scales to; percentiles are
/// nearest-rank on the sorted samples (index round((n-1)·p)).
#[derive(Clone, Debug)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    pub fn of(v: &[f64]) -> Stats {
        if v.is_empty() {
            return Stats { n: 0, min: 0.0, p50: 0.0, p90: 0.0, p99: 0.0, max: 0.0, mean: 0.0 };
        }
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| s[((s.len() as f64 - 1.0) * p).round() as usize];
        Stats {
            n: s.len(),
            min: s[0],
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        }
    }

    pub fn json(&self) -> Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({"n": self.n, "min": r(self.min), "p50": r(self.p50), "p90": r(self.p90), "p99": r(self.p99),
               "max": r(self.max), "mean": r(self.mean)})
    }

    pub fn line(&self, unit: &str) -> String {
        format!(
            "p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} {unit} (n {}, min {:.3}, mean {:.3})",
            self.p50, self.p90, self.p99, self.max, self.n, self.min, self.mean
        )
    }
}

/// xorshift64*: deterministic prefixes and gaps, no extra dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

// ---------------------------------------------------------------------------
// The daemon under test.

/// How long a daemon may take to its first complete dump.
pub const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// A `routeguard run` under test: its log goes to a file, and the time of
/// its first "kernel dump complete" is noted.
pub struct Daemon {
    pub child: Child,
    /// Its API socket.
    pub sock: PathBuf,
    started: Instant,
    dumped: Arc<Mutex<Option<Instant>>>,
}

impl Daemon {
    /// `routeguard run --config` in `ns` (files `<tag>.*` under `dir`);
    /// `extra` (top-level keys first, then tables) goes into its config
    /// before `[selftest]`. `register` gets its pid (the bench's cleanup).
    pub fn spawn(
        bin: &Path,
        ns: &str,
        dir: &Path,
        tag: &str,
        extra: &str,
        register: impl FnOnce(u32),
    ) -> Result<Daemon> {
        let sock = dir.join(format!("{tag}.sock"));
        let state = dir.join(format!("{tag}-state"));
        std::fs::create_dir_all(&state)?;
        let cfg = dir.join(format!("{tag}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "socket = \"{}\"\nstate_dir = \"{}\"\n{extra}\n[selftest]\non_start = false\n",
                sock.display(),
                state.display()
            ),
        )?;
        let log = dir.join(format!("{tag}.log"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(bin).args(["run", "--config"]).arg(&cfg);
        for (k, _) in std::env::vars() {
            if k.starts_with("ROUTEGUARD_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let started = Instant::now();
        let mut child = cmd.spawn().context("spawn routeguard")?;
        register(child.id());
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let dumped = Arc::new(Mutex::new(None));
        let d2 = dumped.clone();
        let mut logf = BufWriter::new(File::create(&log)?);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if line.contains("kernel dump complete") {
                    let mut g = d2.lock().unwrap_or_else(|e| e.into_inner());
                    if g.is_none() {
                        *g = Some(Instant::now());
                    }
                }
                let _ = writeln!(logf, "{line}");
                let _ = logf.flush();
            }
        });
        Ok(Daemon { child, sock, started, dumped })
    }

    /// Its pid, checked to still be routeguard.
    pub fn pid(&self) -> Result<u32> {
        let pid = self.child.id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "routeguard" {
            Ok(pid)
        } else {
            bail!("pid {pid} is `{}`, not routeguard", comm.trim())
        }
    }

    /// Seconds from spawn to its first complete dump.
    pub fn wait_dump(&mut self) -> Result<f64> {
        let deadline = Instant::now() + DAEMON_READY_TIMEOUT;
        loop {
            if let Some(t) = *self.dumped.lock().unwrap_or_else(|e| e.into_inner()) {
                return Ok((t - self.started).as_secs_f64());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("routeguard exited ({st}) before its first dump; see its log");
            }
            if Instant::now() > deadline {
                bail!("routeguard not ready after {DAEMON_READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after 10 s (an error then).
    pub fn stop(mut self) -> Result<()> {
        kill(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                bail!("routeguard did not stop on SIGTERM within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
