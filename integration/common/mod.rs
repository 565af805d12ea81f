//! Test harness for netns labs: uniquely named namespaces that are removed
//! (with every process inside) even when a test fails, the real daemon
//! started inside one, and the CLI driven with `--json`.
#![allow(dead_code)]

pub mod bgp_lab;
pub mod ecmp_lab;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Path of the routeguard binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_routeguard")
}

/// Fails the test early, with a clear reason, when not root.
pub fn require_root() {
    // SAFETY-free check: /proc/self/status has the effective uid.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2));
    assert_eq!(euid, Some("0"), "netns integration tests need root (they create network namespaces)");
}

/// A throw-away network namespace.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `rg<tag>-<pid>-<n>` with loopback up.
    pub fn new(tag: &str) -> Netns {
        require_root();
        let name = format!("rg{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        run_ok("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n NS ARGS...`, panicking with stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        run_ok("ip", &a)
    }

    /// Runs a command inside the namespace, panicking on failure.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut a = vec!["netns", "exec", &self.name];
        a.extend_from_slice(cmd);
        run_ok("ip", &a)
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec_output(&self, cmd: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", &self.name];
        a.extend_from_slice(cmd);
        Command::new("ip").args(&a).output().expect("spawn ip netns exec")
    }

    /// Spawns a long-running command inside the namespace.
    pub fn spawn(&self, cmd: &[&str]) -> Child {
        let mut a = vec!["netns", "exec", &self.name];
        a.extend_from_slice(cmd);
        Command::new("ip").args(&a).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, kv: &str) {
        self.exec(&["sysctl", "-qw", kv]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill everything inside, then remove the namespace.
        if let Ok(o) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs a host command, panicking with its stderr when it fails.
pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A routeguard daemon running inside a namespace.
pub struct Daemon {
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
    ns: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl Daemon {
    /// Starts `routeguard run` in `ns` with `env` and waits until it is
    /// ready (first dump complete).
    pub fn start(ns: &Netns, env: &[(&str, &str)]) -> Daemon {
        Self::start_with_args(ns, env, &[])
    }

    /// Like [`Daemon::start`] with extra `run` arguments.
    pub fn start_with_args(ns: &Netns, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("rg.sock");
        let log = dir.path().join("daemon.log");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = Self::spawn(&ns.name, &socket, &log, dir.path(), &env, &args);
        let d = Daemon { socket, log, child, dir, ns: ns.name.clone(), env, args };
        d.wait_ready(slow(Duration::from_secs(20)));
        d
    }

    fn spawn(ns: &str, socket: &Path, log: &Path, dir: &Path, env: &[(String, String)], args: &[String]) -> Child {
        // Appends: a restarted daemon's log follows the first one's.
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, bin(), "run", "--socket"]).arg(socket).args(args);
        cmd.env("ROUTEGUARD_STATE_DIR", dir.join("state"));
        // Labs that need the kernel self-test turn it on explicitly.
        cmd.env("ROUTEGUARD_SELFTEST__ON_START", "false");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(logf.try_clone().expect("dup")).stderr(logf);
        cmd.spawn().expect("spawn daemon")
    }

    /// Sends `signal` (`TERM`, `KILL`) and waits up to `grace` for the
    /// daemon to exit; returns its exit status, or `None` if it did not.
    pub fn stop(&mut self, signal: &str, grace: Duration) -> Option<std::process::ExitStatus> {
        run_ok("kill", &[&format!("-{signal}"), &self.child.id().to_string()]);
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the daemon again with the same settings and state directory
    /// (after [`Daemon::stop`]) and waits until it is ready.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.ns, &self.socket, &self.log, self.dir.path(), &self.env, &self.args);
        self.wait_ready(slow(Duration::from_secs(20)));
    }

    fn wait_ready(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(v) = self.try_json(&["status"]) {
                if v["ready"] == Value::Bool(true) {
                    return;
                }
            }
            assert!(start.elapsed() < timeout, "daemon not ready after {timeout:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `routeguard ARGS --socket S --json` and parses its stdout.
    pub fn try_json(&self, args: &[&str]) -> Result<Value, String> {
        let o = self.cli(args, true);
        if !o.status.success() {
            return Err(format!("routeguard {} failed: {}", args.join(" "), String::from_utf8_lossy(&o.stderr)));
        }
        serde_json::from_slice(&o.stdout).map_err(|e| {
            format!("bad JSON from routeguard {}: {e}: {}", args.join(" "), String::from_utf8_lossy(&o.stdout))
        })
    }

    /// Like [`Daemon::try_json`], panicking on failure.
    pub fn json(&self, args: &[&str]) -> Value {
        self.try_json(args).unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", self.log_text()))
    }

    /// Runs `evaluate`/`propose`-like ARGS with `--json` and returns the
    /// decision, checking the exit status the verdict implies (1 for a
    /// veto, 0 otherwise).
    pub fn decision(&self, args: &[&str]) -> Value {
        let o = self.cli(args, true);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!("routeguard {}: {e}: {}\n{}", args.join(" "), String::from_utf8_lossy(&o.stderr), self.log_text())
        });
        let want = if v["verdict"] == "veto" { 1 } else { 0 };
        assert_eq!(o.status.code(), Some(want), "exit code of routeguard {}: {v}", args.join(" "));
        v
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str], json: bool) -> Output {
        let mut c = Command::new(bin());
        c.args(args).arg("--socket").arg(&self.socket);
        if json {
            c.arg("--json");
        }
        c.output().expect("run routeguard CLI")
    }

    /// The daemon's pid (of the `ip netns exec` wrapper, which execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Directory holding the socket, log and state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- routeguard log ---\n{}", self.log_text());
        }
    }
}

/// Polls `f` every 20 ms until it returns `Ok` or `timeout` passes; then
/// panics with the last error. Returns the value and how long it took.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return (v, start.elapsed()),
            Err(e) => {
                if start.elapsed() > timeout {
                    panic!("condition not met within {timeout:?}: {e}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `RG_TEST_SLOWDOWN=N` (default 1) multiplies the labs' waits (and, where a
/// lab sets one, the daemon's socket poll interval), for machines N times
/// slower than a host: integration/kernels/matrix runs labs under qemu/TCG
/// with 20. Scaling the poll interval keeps the number of polls per wait the
/// same.
pub fn slowdown() -> u32 {
    std::env::var("RG_TEST_SLOWDOWN").ok().and_then(|v| v.parse().ok()).filter(|&n| n >= 1).unwrap_or(1)
}

/// `d` stretched by [`slowdown`].
pub fn slow(d: Duration) -> Duration {
    d * slowdown()
}

/// The MAC address of `dev` in `ns`.
fn mac_of(ns: &Netns, dev: &str) -> String {
    let out = ns.ip(&["-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j link show {dev}: {e}: {out}"));
    v[0]["address"].as_str().unwrap_or_else(|| panic!("{dev} in {} has no MAC: {out}", ns.name)).to_string()
}

/// Permanent neighbour entries both ways between `a`'s `a_if` (at `a_ip`)
/// and `b`'s `b_if` (at `b_ip`): neighbour discovery under a slow guest
/// (the kernel-matrix lane) can fail a probe, and a failed neighbour drops
/// a flow on its own, which is not the hazard under test.
pub fn pin_neighbours(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_if: &str, b_ip: &str) {
    let (am, bm) = (mac_of(a, a_if), mac_of(b, b_if));
    a.ip(&["neigh", "replace", b_ip, "lladdr", &bm, "dev", a_if, "nud", "permanent"]);
    b.ip(&["neigh", "replace", a_ip, "lladdr", &am, "dev", b_if, "nud", "permanent"]);
}

/// Spawns a process and returns the first line of its stdout.
pub fn first_line(child: &mut Child) -> String {
    let out = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("read line");
    line.trim().to_string()
}
