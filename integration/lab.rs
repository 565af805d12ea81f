//! `routeguard lab`, the demonstration: run as an operator would, it must
//! reproduce every hazard without the guard, prevent it with the guard, and
//! leave nothing behind, also when interrupted.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, require_root};
use serde_json::Value;

/// Entries of `dir` that belong to `routeguard lab` process `pid`: it names
/// its namespaces (and so its FRR runtime directories)
/// `rgst-<pid>-<lab>-<role>`, like the self-test.
fn entries_of(dir: &str, pid: u32) -> Vec<String> {
    let prefix = format!("rgst-{pid}-");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

const NETNS_DIR: &str = "/var/run/netns";
const FRR_RUN: &str = "/run/routeguard-lab/frr";

fn namespaces_of(pid: u32) -> Vec<String> {
    entries_of(NETNS_DIR, pid)
}

fn frr_dirs_of(pid: u32) -> Vec<String> {
    entries_of(FRR_RUN, pid)
}

/// A `routeguard lab` child. Dropping it (also when an assertion fails)
/// kills it if it still runs and removes whatever it left, so a failing
/// test does not leak namespaces; the test asserts beforehand that there was
/// nothing to remove.
struct LabRun {
    child: Option<Child>,
    pid: u32,
}

impl LabRun {
    fn spawn(args: &[&str]) -> LabRun {
        let child = Command::new(bin())
            .arg("lab")
            .args(args)
            .env_remove("ROUTEGUARD_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn routeguard lab");
        LabRun { pid: child.id(), child: Some(child) }
    }

    /// Waits for the exit, at most `within`.
    fn wait(&mut self, within: Duration) -> Output {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        while child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < within, "routeguard lab still running after {within:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.child.take().unwrap().wait_with_output().unwrap()
    }

    /// Asserts the lab removed every namespace and FRR instance it made.
    fn assert_clean(&self) {
        assert_eq!(namespaces_of(self.pid), Vec::<String>::new(), "namespaces left behind");
        assert_eq!(frr_dirs_of(self.pid), Vec::<String>::new(), "FRR runtime directories left behind");
    }
}

impl Drop for LabRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in namespaces_of(self.pid) {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        for d in frr_dirs_of(self.pid) {
            let _ = std::fs::remove_dir_all(Path::new(FRR_RUN).join(d));
        }
    }
}

#[test]
fn lab_all_shows_every_hazard_without_the_guard_and_none_with_it() {
    require_root();
    common::bgp_lab::install_frr();
    let mut run = LabRun::spawn(&["all", "--json"]);
    let o = run.wait(Duration::from_secs(600));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}\n{stderr}", String::from_utf8_lossy(&o.stdout)));
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert_eq!(v["exit_code"], 0);
    let scenarios = v["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["scenario"].as_str().unwrap()).collect();
    assert_eq!(names, ["ecmp", "anycast", "hairpin"]);
    for s in scenarios {
        let name = s["scenario"].as_str().unwrap();
        assert_eq!(s["outcome"], "passed", "{name}: {s}");
        let (before, after) = (&s["before"], &s["after"]);
        assert_eq!((before["guard"].as_bool(), after["guard"].as_bool()), (Some(false), Some(true)), "{name}");
        let total = before["total"].as_u64().unwrap();
        assert!(total > 0, "{name}: {s}");
        assert_eq!(after["total"].as_u64(), Some(total), "{name}: both runs expose the same number: {s}");
        let broken = before["broken"].as_u64().unwrap();
        assert!(broken > 0 && broken <= total, "{name}: the hazard must break something without the guard: {s}");
        assert_eq!(after["broken"].as_u64(), Some(0), "{name}: nothing may break with the guard: {s}");
        assert!(s["reason"].is_null(), "{name}: {s}");
    }
    assert_eq!(scenarios[0]["before"]["total"], 60);
    assert_eq!(scenarios[0]["after"]["verdict"], "veto");
    assert_eq!(scenarios[1]["after"]["verdict"], "remediated");
    assert_eq!(scenarios[2]["after"]["verdict"], "stage");
    assert_eq!((v["passed"].as_u64(), v["failed"].as_u64(), v["not_run"].as_u64()), (Some(3), Some(0), Some(0)));
    run.assert_clean();
}

#[test]
fn ctrl_c_removes_the_lab() {
    require_root();
    let mut run = LabRun::spawn(&["ecmp"]);
    // Interrupt once the lab exists.
    let start = Instant::now();
    while namespaces_of(run.pid).len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(60), "the ECMP lab's namespaces never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-INT", &run.pid.to_string()]).status().unwrap();
    assert!(status.success());
    let o = run.wait(Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    run.assert_clean();
}

#[test]
fn bad_input_and_no_root_are_clear_errors_with_exit_2() {
    let o = Command::new(bin()).args(["lab", "bogus"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bogus") && err.contains("ecmp"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Not root: setpriv drops to nobody (skipped where setpriv is missing).
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", bin(), "lab", "ecmp", "--json"])
        .output();
    if let Ok(o) = o {
        let err = String::from_utf8_lossy(&o.stderr);
        if !err.contains("Permission denied") {
            assert_eq!(o.status.code(), Some(2), "{err}");
            assert!(err.contains("needs root"), "{err}");
            assert!(o.stdout.is_empty());
        }
    }
}
