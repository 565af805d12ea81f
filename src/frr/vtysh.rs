//! Running vtysh and decoding its JSON.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::model::peers::{Peer, PeerSource};

/// How the guard reaches FRR's vtysh.
#[derive(Clone, Debug)]
pub struct Vtysh {
    /// The vtysh binary.
    pub binary: PathBuf,
    /// `--vty_socket` directory, when not the default.
    pub socket_dir: Option<PathBuf>,
    /// Longest one call may take.
    pub timeout: Duration,
}

/// A vtysh call that failed.
#[derive(Debug, thiserror::Error)]
pub enum VtyshError {
    /// The binary could not be started.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        source: std::io::Error,
    },
    /// It did not answer in time.
    #[error("vtysh did not answer within {0:?}")]
    Timeout(Duration),
    /// It answered with an error.
    #[error("vtysh failed ({status}): {stderr}")]
    Failed {
        /// Exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// Its output was not the JSON expected.
    #[error("unexpected vtysh output: {0}")]
    Garbage(String),
}

impl Vtysh {
    /// Runs `vtysh -c` for each command in order and returns stdout.
    pub async fn run(&self, commands: &[&str]) -> Result<String, VtyshError> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        if let Some(dir) = &self.socket_dir {
            cmd.arg("--vty_socket").arg(dir);
        }
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let child =
            cmd.spawn().map_err(|source| VtyshError::Spawn { binary: self.binary.display().to_string(), source })?;
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| VtyshError::Timeout(self.timeout))?
            .map_err(|source| VtyshError::Spawn { binary: self.binary.display().to_string(), source })?;
        if !out.status.success() {
            return Err(VtyshError::Failed {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().chars().take(500).collect(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// BGP neighbors of every VRF.
    pub async fn bgp_neighbors(&self) -> Result<Vec<Peer>, VtyshError> {
        let out = self.run(&["show bgp vrf all neighbors json"]).await?;
        parse_neighbors(&out)
    }
}

/// Decodes `show bgp vrf all neighbors json`: an object keyed by VRF name,
/// each holding `vrfId`, `vrfName` and one object per neighbor address.
/// Without bgpd, vtysh prints nothing or `{}`: no peers.
pub fn parse_neighbors(text: &str) -> Result<Vec<Peer>, VtyshError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(text).map_err(|e| VtyshError::Garbage(format!("not JSON: {e}")))?;
    let vrfs = v.as_object().ok_or_else(|| VtyshError::Garbage("top level is not an object".into()))?;
    let mut out = Vec::new();
    for (vrf_key, vrf) in vrfs {
        let Some(vrf_obj) = vrf.as_object() else { continue };
        let vrf_name = vrf_obj.get("vrfName").and_then(Value::as_str).unwrap_or(vrf_key).to_string();
        for (k, n) in vrf_obj {
            let Ok(address) = k.parse::<IpAddr>() else { continue };
            let state = n.get("bgpState").and_then(Value::as_str).unwrap_or("unknown").to_string();
            let local = n.get("hostLocal").and_then(Value::as_str).and_then(|s| s.parse().ok());
            out.push(Peer { address, vrf: vrf_name.clone(), state, local, source: PeerSource::Frr });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from FRR 8.4.4 (Debian bookworm) in the anycast lab.
    const SAMPLE: &str = r#"{"default":{"vrfId":0,"vrfName":"default","fdc0:3489:e0fd::":{"remoteAs":65000,
        "localAs":65000,"bgpState":"Established","hostLocal":"fdc0:3489:e0fd::1","portLocal":179,
        "hostForeign":"fdc0:3489:e0fd::","portForeign":43966}},
        "red":{"vrfId":5,"vrfName":"red","10.0.0.2":{"bgpState":"Connect"}}}"#;

    #[test]
    fn parses_neighbors_of_all_vrfs() {
        let p = parse_neighbors(SAMPLE).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].address, "fdc0:3489:e0fd::".parse::<IpAddr>().unwrap());
        assert_eq!(p[0].state, "Established");
        assert_eq!(p[0].local, Some("fdc0:3489:e0fd::1".parse().unwrap()));
        assert_eq!((p[1].vrf.as_str(), p[1].state.as_str()), ("red", "Connect"));
    }

    #[test]
    fn no_bgpd_means_no_peers_and_garbage_is_an_error() {
        assert!(parse_neighbors("").unwrap().is_empty());
        assert!(parse_neighbors("{}").unwrap().is_empty());
        assert!(parse_neighbors("% Unknown command").is_err());
        assert!(parse_neighbors("[1,2]").is_err());
    }

    #[tokio::test]
    async fn missing_binary_and_timeouts_are_errors() {
        let v = Vtysh { binary: "/nonexistent/vtysh".into(), socket_dir: None, timeout: Duration::from_secs(1) };
        assert!(matches!(v.bgp_neighbors().await, Err(VtyshError::Spawn { .. })));
        let v = Vtysh { binary: "/bin/sleep".into(), socket_dir: None, timeout: Duration::from_millis(100) };
        // `sleep -c ...` fails fast; use a shell that really hangs instead.
        let slow = Vtysh { binary: "/bin/sh".into(), socket_dir: None, timeout: Duration::from_millis(100) };
        assert!(matches!(slow.run(&["sleep 5"]).await, Err(VtyshError::Timeout(_))));
        assert!(matches!(v.run(&["x"]).await, Err(VtyshError::Failed { .. })));
    }
}
