//! The guard of a lab's "with the guard" run: this very binary's daemon
//! (`routeguard run`) inside a lab namespace, driven through its own CLI
//! (`--socket ... --json`), as an operator would.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{poll, LabError, ScratchDir};

/// How long the daemon may take to finish its first dump (the machine may
/// be loaded).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A `routeguard run` in a namespace; killed on drop.
pub(crate) struct Guard {
    exe: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Child,
    /// Socket, log and state; held for its `Drop`, which runs after the
    /// daemon is gone (fields drop after `Drop::drop`).
    _dir: ScratchDir,
}

impl Guard {
    /// Starts the daemon in namespace `ns` with the built-in defaults plus
    /// `env` (`ROUTEGUARD_*` overrides; the caller's own `ROUTEGUARD_*`
    /// variables are not passed on, so the lab runs the same everywhere) and
    /// waits until it has its first dump.
    pub(crate) fn start(ns: &str, env: &[(&str, &str)]) -> Result<Guard, LabError> {
        let exe = std::env::current_exe()
            .map_err(|e| LabError::Setup { what: "finding the routeguard binary".into(), detail: e.to_string() })?;
        let dir = ScratchDir::new("guard")?;
        let socket = dir.path().join("routeguard.sock");
        let log = dir.path().join("daemon.log");
        let logf = std::fs::File::create(&log)
            .map_err(|e| LabError::Setup { what: format!("creating {}", log.display()), detail: e.to_string() })?;
        let logf2 = logf
            .try_clone()
            .map_err(|e| LabError::Setup { what: "duplicating the log descriptor".into(), detail: e.to_string() })?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(&exe).arg("run").arg("--socket").arg(&socket);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ROUTEGUARD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ROUTEGUARD_STATE_DIR", dir.path().join("state"));
        // The lab measures the kernel itself; the daemon's self-test would
        // only add time (flows whose member is known are judged without it).
        cmd.env("ROUTEGUARD_SELFTEST__ON_START", "false");
        cmd.envs(env.iter().copied());
        // Its own process group: a Ctrl-C at the terminal is for `routeguard
        // lab`, which stops the daemon itself while it cleans up.
        cmd.process_group(0).stdin(Stdio::null()).stdout(logf).stderr(logf2);
        let child = cmd
            .spawn()
            .map_err(|e| LabError::Setup { what: format!("starting the guard in {ns}"), detail: e.to_string() })?;
        let mut guard = Guard { exe, socket, log, child, _dir: dir };
        let ready = poll(READY_WITHIN, Duration::from_millis(100), || {
            if let Ok(Some(status)) = guard.child.try_wait() {
                return Err(LabError::Guard(format!(
                    "the guard exited ({status}) before it was ready: {}",
                    guard.log_tail()
                )));
            }
            Ok(guard.json(&["status"]).ok().filter(|v| v["ready"] == Value::Bool(true)))
        })?;
        if ready.is_none() {
            return Err(LabError::Guard(format!(
                "the guard was not ready within {READY_WITHIN:?}: {}",
                guard.log_tail()
            )));
        }
        Ok(guard)
    }

    /// Runs `routeguard ARGS --socket S --json`; returns its exit status and
    /// its JSON output.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<(Option<i32>, Value), LabError> {
        let o = Command::new(&self.exe)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LabError::Setup {
                what: format!("running routeguard {}", args.join(" ")),
                detail: e.to_string(),
            })?;
        let v = serde_json::from_slice(&o.stdout).map_err(|e| {
            LabError::Guard(format!(
                "routeguard {} printed no JSON ({e}): {}{}",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        })?;
        Ok((o.status.code(), v))
    }

    /// [`Guard::cli`] for a command that must succeed.
    pub(crate) fn json(&self, args: &[&str]) -> Result<Value, LabError> {
        match self.cli(args)? {
            (Some(0), v) => Ok(v),
            (code, v) => Err(LabError::Guard(format!("routeguard {} exited {code:?}: {v}", args.join(" ")))),
        }
    }

    /// The last lines of the daemon's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        if tail.is_empty() {
            "(the daemon logged nothing)".into()
        } else {
            format!("last lines of the daemon's log:\n{tail}")
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // `ip netns exec` execs the daemon, so this is the daemon itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
