//! Throw-away network namespaces for the selftest labs.
//!
//! Namespaces are created and deleted with iproute2 (`ip netns add/del`), so
//! they are ordinary named namespaces under `/var/run/netns` that an operator
//! can inspect (and that `ip netns list` shows while a lab runs). Every
//! namespace is owned by a [`Netns`] guard whose `Drop` kills any process
//! inside and deletes it, so a lab is removed on every exit path, errors and
//! panics included. A process killed outright (SIGKILL) cannot run its
//! guards; [`sweep_stale`] removes what such a process left behind.
//!
//! Work inside a namespace is done by a thread that has entered it with
//! setns(2) ([`spawn_in`], [`run_in`]): setns changes only the calling
//! thread's namespace, and a socket stays in the namespace it was created in
//! whichever thread later uses it. That setns call is this module's only
//! `unsafe` code.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread::{self, JoinHandle};

use super::SelftestError;

/// Every namespace a selftest creates is named `rgst-<pid>-<lab>-<role>`.
pub const NETNS_PREFIX: &str = "rgst-";

/// Where iproute2 keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// Serializes `ip netns add/del`: the first `ip netns add` on a machine sets
/// up the shared `/var/run/netns` mount, and concurrent first calls can
/// stack mounts. Creation takes a few milliseconds, so this costs nothing.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Names of the namespaces this process created and has not removed yet,
/// for [`remove_all_live`].
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// A fresh lab number, unique within this process.
pub(crate) fn next_lab_id() -> u32 {
    LAB_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The name of namespace `role` of lab `lab` of process `pid`.
pub(crate) fn ns_name(pid: u32, lab: u32, role: &str) -> String {
    format!("{NETNS_PREFIX}{pid}-{lab}-{role}")
}

/// The pid encoded in a selftest namespace name, if `name` is one.
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (lab, role) = rest.split_once('-')?;
    if lab.is_empty() || !lab.bytes().all(|b| b.is_ascii_digit()) || role.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Runs `ip ARGS...`, feeding `stdin` when given (for `-batch -`).
/// Returns stdout, or `ip`'s stderr (trimmed) on failure.
pub(crate) fn ip(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("ip");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(|e| format!("running ip: {e}"))?;
    if let Some(text) = stdin {
        // Dropping the handle at the end of this block closes ip's stdin.
        let mut pipe = child.stdin.take().expect("stdin was piped");
        if let Err(e) = pipe.write_all(text.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("writing ip's batch input: {e}"));
        }
    }
    let out = child.wait_with_output().map_err(|e| format!("waiting for ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if err.is_empty() { format!("ip exited with {}", out.status) } else { err })
    }
}

/// A named network namespace that is deleted, with every process inside
/// killed, when the guard is dropped.
#[derive(Debug)]
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up.
    pub(crate) fn create(name: &str) -> Result<Netns, SelftestError> {
        {
            let _g = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            ip(&["netns", "add", name], None)
                .map_err(|detail| SelftestError::Command { what: format!("creating namespace {name}"), detail })?;
        }
        LIVE.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string());
        // From here on the guard owns it: any error below removes it.
        let ns = Netns { name: name.to_string() };
        ip(&["-n", name, "link", "set", "lo", "up"], None)
            .map_err(|detail| SelftestError::Command { what: format!("setting lo up in namespace {name}"), detail })?;
        Ok(ns)
    }

    /// The namespace's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

fn ns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Kills every process inside namespace `name` (never this process) and
/// deletes the namespace. Best effort, silent: it runs from `Drop`.
pub(crate) fn remove(name: &str) {
    let me = std::process::id();
    if let Ok(pids) = ip(&["netns", "pids", name], None) {
        let pids: Vec<&str> = pids.split_whitespace().filter(|p| p.parse::<u32>().is_ok_and(|p| p != me)).collect();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&pids).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
    let _g = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..3 {
        if ip(&["netns", "del", name], None).is_ok() || !ns_path(name).exists() {
            LIVE.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
            return;
        }
        thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Removes every namespace this process created that is still there, with
/// the processes inside: for a process that must exit before its guards
/// can run (a second Ctrl-C during `routeguard lab`). Returns the names.
pub(crate) fn remove_all_live() -> Vec<String> {
    let names: Vec<String> = LIVE.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
    for name in &names {
        remove(name);
    }
    names
}

/// Names of the selftest namespaces (`rgst-*`) that currently exist.
pub(crate) fn list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .collect();
    names.sort();
    names
}

/// Deletes the selftest namespaces left behind by processes that no longer
/// exist (a selftest killed with SIGKILL cannot run its cleanup). Namespaces
/// of live processes, this one included, are left alone. Returns the names
/// removed.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in list() {
        let Some(pid) = owner_pid(&name) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove(&name);
        removed.push(name);
    }
    removed
}

/// Moves the calling thread into the network namespace open at `ns`.
fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns(2) takes a file descriptor and a flag and touches no
    // memory of ours. The descriptor is valid: `ns` is borrowed for the whole
    // call. CLONE_NEWNET changes only the calling thread's network namespace,
    // which every caller here owns (a thread spawned for the purpose).
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Spawns a thread named `thread_name` that enters namespace `ns` and runs
/// `f` there. The thread's result carries setns failures as errors.
pub(crate) fn spawn_in<T, F>(
    ns: &str,
    thread_name: String,
    f: F,
) -> Result<JoinHandle<Result<T, SelftestError>>, SelftestError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, SelftestError> + Send + 'static,
{
    let ns = ns.to_string();
    thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let file = File::open(ns_path(&ns))
                .map_err(|source| SelftestError::Io { what: format!("opening namespace {ns}"), source })?;
            enter(&file).map_err(|source| SelftestError::Io { what: format!("entering namespace {ns}"), source })?;
            drop(file);
            f()
        })
        .map_err(|source| SelftestError::Io { what: "spawning a thread".into(), source })
}

/// Runs `f` on a thread inside namespace `ns` and waits for it.
pub(crate) fn run_in<T, F>(ns: &str, what: &str, f: F) -> Result<T, SelftestError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, SelftestError> + Send + 'static,
{
    let handle = spawn_in(ns, format!("rgst-{what}"), f)?;
    join(handle, what)
}

/// Joins a thread, turning a panic into an error naming `what`.
pub(crate) fn join<T>(handle: JoinHandle<Result<T, SelftestError>>, what: &str) -> Result<T, SelftestError> {
    handle.join().unwrap_or_else(|payload| {
        Err(SelftestError::Panic { what: what.to_string(), message: panic_message(&payload) })
    })
}

/// The message of a panic payload, when it is a string.
pub(crate) fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_to_their_owner() {
        let n = ns_name(4242, 7, "n2");
        assert_eq!(n, "rgst-4242-7-n2");
        assert_eq!(owner_pid(&n), Some(4242));
        assert_eq!(owner_pid("rgst-1-0-r"), Some(1));
    }

    #[test]
    fn foreign_names_have_no_owner() {
        for n in
            ["rgfound-12-0", "rgst-", "rgst-x-1-r", "rgst-12-1", "rgst-12--r", "rgst-12-a-r", "rgst-12-1-", "other"]
        {
            assert_eq!(owner_pid(n), None, "{n}");
        }
    }
}
