//! A whole desired `frr.conf` as a change: FRR's own `frr-reload.py`
//! computes the difference from the running configuration (`--test`: the
//! lines to delete, already in their `no ...` form, and the lines to add),
//! the guard judges those lines, and the same script applies the file
//! (`--reload`). Using FRR's tool keeps FRR's own notion of what differs
//! (contexts, defaults, ordering) instead of a second, subtly different one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use super::vtysh::Vtysh;

/// Where Debian's `frr` package installs the script.
pub const SCRIPT: &str = "/usr/lib/frr/frr-reload.py";

/// Largest configuration accepted (bytes).
pub const MAX_CONFIG: usize = 1 << 20;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The script's arguments for `vtysh`: its directory, the vty socket
/// directory, and a private directory for its temporary files.
fn common_args(vtysh: &Vtysh, rundir: &Path) -> Vec<String> {
    let bindir = vtysh.binary.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/usr/bin"));
    let mut a = vec![
        "--stdout".into(),
        "--log-level".into(),
        "critical".into(),
        "--bindir".into(),
        bindir.display().to_string(),
        "--rundir".into(),
        rundir.display().to_string(),
    ];
    if let Some(dir) = &vtysh.socket_dir {
        a.push("--vty_socket".into());
        a.push(dir.display().to_string());
    }
    a
}

/// Runs the script in `mode` (`--test` or `--reload`) on `text`.
async fn run(vtysh: &Vtysh, text: &str, mode: &str) -> Result<String, String> {
    if text.len() > MAX_CONFIG {
        return Err(format!("the configuration is {} bytes; at most {MAX_CONFIG} are accepted", text.len()));
    }
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "routeguard-frr-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = dir.join("frr.conf");
    let result = async {
        std::fs::write(&file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(SCRIPT).arg(mode).args(common_args(vtysh, &dir)).arg(&file);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| format!("cannot run {SCRIPT}: {e}"))?;
        // A reload runs vtysh once per changed context: allow more than one call.
        let limit = vtysh.timeout * 6;
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| format!("{SCRIPT} {mode} did not finish within {limit:?}"))?
            .map_err(|e| format!("{SCRIPT}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let said = format!("{}{}", String::from_utf8_lossy(&out.stderr).trim(), stdout.trim());
            return Err(format!(
                "{SCRIPT} {mode} failed ({}): {}",
                out.status,
                said.chars().take(800).collect::<String>()
            ));
        }
        Ok(stdout)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The commands that would turn the running configuration into `text`:
/// deletions (as `no ...`) first, then additions. A command inside a
/// context (`router bgp 65000`) is one entry with its context lines.
pub async fn diff(vtysh: &Vtysh, text: &str) -> Result<Vec<String>, String> {
    parse_test_output(&run(vtysh, text, "--test").await?)
}

/// Applies `text` as the whole configuration.
pub async fn apply(vtysh: &Vtysh, text: &str) -> Result<(), String> {
    run(vtysh, text, "--reload").await.map(|_| ())
}

/// Parses `frr-reload.py --test` output: after a "Lines To Delete" or
/// "Lines To Add" header (and its `===` rule), each unindented line starts
/// a command and indented lines continue it.
pub fn parse_test_output(out: &str) -> Result<Vec<String>, String> {
    let mut cmds: Vec<String> = Vec::new();
    let mut in_section = false;
    for line in out.lines() {
        let t = line.trim_end();
        match t.trim() {
            "Lines To Delete" | "Lines To Add" => {
                in_section = true;
                continue;
            }
            "" => continue,
            s if s.chars().all(|c| c == '=') => continue,
            _ => {}
        }
        if !in_section {
            return Err(format!("unexpected frr-reload.py output before any section: {t:?}"));
        }
        match cmds.last_mut() {
            Some(last) if t.starts_with(' ') => {
                last.push('\n');
                last.push_str(t);
            }
            _ => cmds.push(t.to_string()),
        }
    }
    Ok(cmds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_output_parses_into_commands() {
        let out = "\nLines To Delete\n===============\nno ip forwarding\nrouter bgp 65000\n no neighbor \
                   fdc0::2 remote-as 65000\n\nLines To Add\n============\nipv6 forwarding\nrouter bgp 65000\n \
                   bgp router-id 10.0.0.1\n";
        assert_eq!(
            parse_test_output(out).unwrap(),
            vec![
                "no ip forwarding".to_string(),
                "router bgp 65000\n no neighbor fdc0::2 remote-as 65000".into(),
                "ipv6 forwarding".into(),
                "router bgp 65000\n bgp router-id 10.0.0.1".into(),
            ]
        );
        // Nothing to change: no sections at all.
        assert_eq!(parse_test_output("\n").unwrap(), Vec::<String>::new());
        // Anything else is not what the script prints: an error, not a guess.
        assert!(parse_test_output("Traceback (most recent call last):\n").unwrap_err().contains("unexpected"));
    }

    #[test]
    fn arguments_name_vtysh_and_its_socket() {
        let v = Vtysh {
            binary: "/usr/bin/vtysh".into(),
            socket_dir: Some("/run/frr/ns1".into()),
            timeout: std::time::Duration::from_secs(5),
        };
        let a = common_args(&v, Path::new("/tmp/x"));
        assert!(a.windows(2).any(|w| w == ["--bindir", "/usr/bin"]), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["--vty_socket", "/run/frr/ns1"]), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["--rundir", "/tmp/x"]), "{a:?}");
    }
}
