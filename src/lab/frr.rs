//! Debian's FRR (zebra + bgpd) per lab namespace, run by the same
//! `frr-ns` script the integration labs use (`integration/frr/frr-ns`,
//! embedded here so an installed binary has it): every path an instance
//! uses lives in its runtime directory under [`RUN_BASE`], nothing of the
//! host's FRR (`/etc/frr`, the frr service) is read or touched.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{check_cancel, sleep, LabError, ScratchDir};

/// The instance script, as the integration labs run it.
const FRR_NS: &str = include_str!("../../integration/frr/frr-ns");

/// Where the lab's FRR instances keep their runtime directories.
pub const RUN_BASE: &str = "/run/routeguard-lab/frr";

/// Debian's FRR daemons.
pub const SBIN: &str = "/usr/lib/frr";

/// Debian's vtysh.
pub const VTYSH: &str = "/usr/bin/vtysh";

/// How long starting one instance may take (the script's own limit is 30 s
/// per daemon).
const START_WITHIN: Duration = Duration::from_secs(90);

/// Why Debian's FRR cannot be run here, if it cannot.
pub fn missing() -> Option<String> {
    missing_in(Path::new(SBIN), Path::new(VTYSH))
}

fn missing_in(sbin: &Path, vtysh: &Path) -> Option<String> {
    for daemon in ["zebra", "bgpd"] {
        if !sbin.join(daemon).is_file() {
            return Some(format!("FRR is not installed ({} missing; Debian package frr)", sbin.join(daemon).display()));
        }
    }
    if !vtysh.is_file() {
        return Some(format!("FRR's {} is missing (Debian package frr)", vtysh.display()));
    }
    if !super::in_path("bash") {
        return Some("frr-ns needs bash".into());
    }
    let known = |db: &str, name: &str| {
        Command::new("getent")
            .args([db, name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !known("passwd", "frr") || !known("group", "frrvty") {
        return Some("user frr or group frrvty missing (the Debian frr package creates them)".into());
    }
    None
}

/// `frr.conf` of one side of an iBGP session: IPv6 unicast only, connect
/// retry 1 s (default 120 s); `passive` never opens the TCP connection.
/// Shared with the integration labs (`integration/common/bgp_lab.rs`).
pub fn bgp_conf(asn: u32, router_id: &str, neighbor: &str, passive: bool) -> String {
    let mut lines = vec![
        "frr defaults traditional".to_string(),
        format!("router bgp {asn}"),
        format!(" bgp router-id {router_id}"),
        " bgp log-neighbor-changes".to_string(),
        " no bgp default ipv4-unicast".to_string(),
        format!(" neighbor {neighbor} remote-as {asn}"),
        format!(" neighbor {neighbor} timers connect 1"),
        if passive { format!(" neighbor {neighbor} passive") } else { String::new() },
        " address-family ipv6 unicast".to_string(),
        format!("  neighbor {neighbor} activate"),
        " exit-address-family".to_string(),
        "exit".to_string(),
    ];
    lines.retain(|l| !l.is_empty());
    lines.join("\n") + "\n"
}

/// The embedded `frr-ns`, written to a scratch directory.
pub(crate) struct FrrNs {
    script: PathBuf,
    dir: ScratchDir,
}

impl FrrNs {
    pub(crate) fn new() -> Result<FrrNs, LabError> {
        let dir = ScratchDir::new("frr")?;
        let script = dir.write("frr-ns", FRR_NS)?;
        Ok(FrrNs { script, dir })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(&self.script).args(args).env("RG_FRR_RUN", RUN_BASE);
        // Not the terminal's Ctrl-C: the lab stops its instances itself.
        c.process_group(0).stdin(Stdio::null());
        c
    }

    fn output(&self, args: &[&str]) -> Result<Output, LabError> {
        self.command(args)
            .output()
            .map_err(|e| LabError::Setup { what: format!("running frr-ns {}", args.join(" ")), detail: e.to_string() })
    }

    /// Writes `conf` and starts zebra and bgpd in every `(ns, conf)` at
    /// once; an [`Instance`] per namespace stops them again on drop (also
    /// when a start fails half-way).
    pub(crate) fn start(&self, labs: &[(&str, String)]) -> Result<Vec<Instance<'_>>, LabError> {
        let mut instances = Vec::new();
        let mut children: Vec<(String, Child)> = Vec::new();
        for (ns, conf) in labs {
            instances.push(Instance { frr: self, ns: ns.to_string(), dir: Path::new(RUN_BASE).join(ns) });
            let path = self.dir.write(&format!("{ns}.conf"), conf)?;
            let child = self
                .command(&["start", ns, "--flavor", "debian", "--daemons", "zebra,bgpd", "--config"])
                .arg(&path)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| LabError::Setup { what: format!("starting FRR in {ns}"), detail: e.to_string() })?;
            children.push((ns.to_string(), child));
        }
        let started = std::time::Instant::now();
        for (ns, mut child) in children {
            loop {
                if let Err(e) = check_cancel() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if started.elapsed() < START_WITHIN => sleep(Duration::from_millis(100))?,
                    _ => {
                        let _ = child.kill();
                        break;
                    }
                }
            }
            let o = child
                .wait_with_output()
                .map_err(|e| LabError::Setup { what: format!("starting FRR in {ns}"), detail: e.to_string() })?;
            if !o.status.success() {
                return Err(LabError::Setup {
                    what: format!("starting FRR (zebra, bgpd) in {ns}"),
                    detail: format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
                        .trim()
                        .to_string(),
                });
            }
        }
        Ok(instances)
    }
}

/// zebra and bgpd running in one lab namespace; stopped on drop.
pub(crate) struct Instance<'a> {
    frr: &'a FrrNs,
    ns: String,
    dir: PathBuf,
}

impl Instance<'_> {
    /// The instance's runtime directory (its vty sockets), for the guard's
    /// `frr.vty_socket_dir`.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `vtysh -c CMD` against this instance; stdout, or why it failed.
    pub(crate) fn vtysh(&self, cmd: &str) -> Result<String, String> {
        let o = self.frr.output(&["vtysh", &self.ns, "-c", cmd]).map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!("vtysh -c '{cmd}' in {}: {}", self.ns, String::from_utf8_lossy(&o.stderr).trim()))
        }
    }

    /// The session to `peer` as bgpd reports it: `bgpState` and
    /// `connectionsEstablished`; `None` when it cannot be read (yet).
    pub(crate) fn neighbor(&self, peer: &str) -> Option<(String, u64)> {
        let out = self.vtysh(&format!("show bgp neighbors {peer} json")).ok()?;
        parse_neighbor(&out, peer)
    }
}

/// `bgpState` and `connectionsEstablished` of `peer` in `show bgp
/// neighbors PEER json`.
pub(crate) fn parse_neighbor(json: &str, peer: &str) -> Option<(String, u64)> {
    let v: Value = serde_json::from_str(json).ok()?;
    let n = v.get(peer)?;
    Some((
        n.get("bgpState")?.as_str()?.to_string(),
        n.get("connectionsEstablished").and_then(Value::as_u64).unwrap_or(0),
    ))
}

impl Drop for Instance<'_> {
    fn drop(&mut self) {
        // Stops every daemon of the instance and removes its directory; a
        // no-op when nothing runs.
        let _ = self.frr.command(&["stop", &self.ns]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Removes runtime directories of instances whose namespace no longer
/// exists (their lab was killed outright; its daemons died with the
/// namespace's processes).
pub(crate) fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir(RUN_BASE) else { return };
    for e in dir.flatten() {
        let name = e.file_name();
        if !Path::new(crate::selftest::NETNS_RUN_DIR).join(&name).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_script_is_frr_ns() {
        assert!(FRR_NS.starts_with("#!/usr/bin/env bash"));
        assert!(FRR_NS.contains("RG_FRR_RUN"), "the lab points frr-ns at its own run directory");
    }

    #[test]
    fn bgp_conf_is_an_ibgp_session_with_a_fast_retry() {
        let c = bgp_conf(65000, "10.255.0.2", "fdc0:3489:e0fd::1", true);
        assert!(c.contains("router bgp 65000\n bgp router-id 10.255.0.2\n"), "{c}");
        assert!(
            c.contains(" neighbor fdc0:3489:e0fd::1 timers connect 1\n neighbor fdc0:3489:e0fd::1 passive\n"),
            "{c}"
        );
        assert!(!bgp_conf(65000, "10.255.0.1", "fdc0::", false).contains("passive"));
        assert!(!c.contains("\n\n"));
    }

    #[test]
    fn missing_frr_is_named() {
        let why = missing_in(Path::new("/nonexistent/frr"), Path::new(VTYSH)).unwrap();
        assert_eq!(why, "FRR is not installed (/nonexistent/frr/zebra missing; Debian package frr)");
        let why = missing_in(Path::new("/"), Path::new("/nonexistent/vtysh"));
        assert!(why.unwrap_or_default().contains("not installed"), "/ has no zebra");
    }

    #[test]
    fn neighbor_state_is_read_from_vtysh_json() {
        let j = r#"{"fdc0:3489:e0fd::":{"bgpState":"Established","connectionsEstablished":2}}"#;
        assert_eq!(parse_neighbor(j, "fdc0:3489:e0fd::"), Some(("Established".into(), 2)));
        assert_eq!(parse_neighbor(j, "fdc0:3489:e0fd::2"), None);
        assert_eq!(parse_neighbor("% no such neighbor", "x"), None);
    }
}
