//! `routeguard lab`: each hazard reproduced in throw-away network
//! namespaces, first without the guard (the hazard happens), then with the
//! guard enforcing (it does not), with what was measured in both runs.
//!
//! Scenarios (the integration labs are their reference):
//! - [`ecmp`]: a router namespace with three anycast nodes behind a 3-way
//!   IPv6 multipath route and 60 TCP sessions from the router; an identical
//!   `ip route replace` resets some of them; the guard vetoes the replace.
//! - [`anycast`]: Debian's FRR (zebra + bgpd) in a VM and an HV namespace,
//!   HV numbered at `prefix::`; turning IPv6 forwarding on leaves the session
//!   stuck after `clear bgp *`; the guard turns forwarding off on the peering
//!   interface at once and the session comes back.
//! - [`hairpin`]: a bridge port in hairpin mode reflects a guest's DAD
//!   probes and its fresh addresses go `dadfailed`; the guard stages the
//!   change (reflection filter first) and fresh addresses pass DAD.
//!
//! Every number printed is measured in the run that prints it. Namespaces
//! are named like the self-test's (`rgst-<pid>-<lab>-<role>`), so a lab left
//! by a process killed outright is swept by the next lab or self-test. Each
//! namespace, guard daemon, FRR instance and scratch directory is owned by a
//! guard whose `Drop` removes it, on errors and panics too; Ctrl-C sets
//! [`cancel`], which every wait checks, so a run unwinds through those
//! guards; [`emergency_cleanup`] is the last resort when it does not.

pub mod anycast;
pub mod ecmp;
pub mod frr;
mod guard;
pub mod hairpin;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::selftest::netns;
use crate::selftest::SelftestError;

/// One scenario of `routeguard lab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// ECMP re-hash of local TCP flows on a multipath replace.
    Ecmp,
    /// Subnet-Router anycast capturing a BGP peer at `prefix::`.
    Anycast,
    /// Hairpin reflection failing a guest's DAD.
    Hairpin,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 3] = [Scenario::Ecmp, Scenario::Anycast, Scenario::Hairpin];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ecmp => "ecmp",
            Scenario::Anycast => "anycast",
            Scenario::Hairpin => "hairpin",
        }
    }

    /// `ecmp`, `anycast`, `hairpin` or `all`.
    pub fn parse_list(arg: &str) -> Result<Vec<Scenario>, LabError> {
        match arg {
            "all" => Ok(Scenario::ALL.to_vec()),
            _ => Scenario::ALL.into_iter().find(|s| s.name() == arg).map(|s| vec![s]).ok_or_else(|| {
                LabError::InvalidArgument(format!("unknown scenario `{arg}`: give ecmp, anycast, hairpin or all"))
            }),
        }
    }
}

/// One run of a scenario: with or without the guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// Whether the guard ran (in enforce mode).
    pub guard: bool,
    /// Sessions or addresses exposed to the hazard.
    pub total: u32,
    /// How many of them the hazard broke.
    pub broken: u32,
    /// What happened, in one line, numbers included.
    pub summary: String,
    /// The guard's verdict on the change, where it was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Wall time of the phase.
    pub elapsed_ms: u64,
}

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The hazard happened without the guard and not with it.
    Passed,
    /// It ran, but did not behave so.
    Failed,
    /// It could not run here (a missing tool or kernel feature).
    Skipped,
    /// The lab could not be built or run to the end.
    Error,
}

/// What one scenario measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// The scenario.
    pub scenario: Scenario,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, unless it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The lab, in one line.
    pub setup: String,
    /// What `total` and `broken` count: "sessions" or "addresses".
    pub unit: String,
    /// The run without the guard, when it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Phase>,
    /// The run with the guard, when it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Phase>,
    /// Wall time, lab construction and cleanup included.
    pub elapsed_ms: u64,
}

/// What `routeguard lab` measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabReport {
    /// The running kernel's release.
    pub kernel: String,
    /// One entry per scenario run, in order.
    pub scenarios: Vec<ScenarioReport>,
    /// Scenarios that passed.
    pub passed: u32,
    /// Scenarios that failed.
    pub failed: u32,
    /// Scenarios that were skipped or could not be run to the end.
    pub not_run: u32,
    /// The process's exit status: see [`LabReport::exit_code`].
    pub exit_code: u8,
}

impl LabReport {
    /// Builds the report and its counts.
    pub fn new(scenarios: Vec<ScenarioReport>) -> LabReport {
        let count = |f: fn(Outcome) -> bool| scenarios.iter().filter(|s| f(s.outcome)).count() as u32;
        let passed = count(|o| o == Outcome::Passed);
        let failed = count(|o| o == Outcome::Failed);
        let not_run = count(|o| matches!(o, Outcome::Skipped | Outcome::Error));
        let exit_code = if failed > 0 {
            1
        } else if not_run > 0 || scenarios.is_empty() {
            2
        } else {
            0
        };
        LabReport { kernel: crate::kernel_release(), scenarios, passed, failed, not_run, exit_code }
    }

    /// 0: every scenario behaved as expected; 1: one did not (a failure
    /// outranks a skip); 2: one could not run.
    pub fn exit_code(&self) -> u8 {
        self.exit_code
    }

    /// The report for people, one block per scenario and a summary line.
    pub fn render_text(&self) -> String {
        let mut out = format!("routeguard lab on Linux {}\n", self.kernel);
        for s in &self.scenarios {
            out.push_str(&format!("\n{}: {}\n", s.scenario.name(), s.setup));
            for (label, phase) in [("without the guard", &s.before), ("with the guard   ", &s.after)] {
                if let Some(p) = phase {
                    out.push_str(&format!(
                        "  {label}: {}/{} {} broken: {} ({:.2} s)\n",
                        p.broken,
                        p.total,
                        s.unit,
                        p.summary,
                        p.elapsed_ms as f64 / 1000.0
                    ));
                }
            }
            let word = match s.outcome {
                Outcome::Passed => "PASS",
                Outcome::Failed => "FAIL",
                Outcome::Skipped => "SKIPPED",
                Outcome::Error => "ERROR",
            };
            match &s.reason {
                Some(r) => out.push_str(&format!("  {word}: {r}\n")),
                None => out.push_str(&format!("  {word} ({:.1} s)\n", s.elapsed_ms as f64 / 1000.0)),
            }
        }
        let not_run: Vec<String> = self
            .scenarios
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Skipped | Outcome::Error))
            .map(|s| format!("{} ({})", s.scenario.name(), s.reason.as_deref().unwrap_or("")))
            .collect();
        out.push_str(&format!("\n{} passed, {} failed, {} not run", self.passed, self.failed, self.not_run));
        if !not_run.is_empty() {
            out.push_str(&format!(": {}", not_run.join("; ")));
        }
        out.push('\n');
        out
    }
}

/// Why a lab could not run, or could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A bad argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// Not running as root.
    #[error("needs root: it creates network namespaces (try: sudo routeguard lab ...)")]
    NotRoot,
    /// A tool, package or kernel feature the scenario needs is missing.
    #[error("{0}")]
    Missing(String),
    /// Building or driving the lab failed.
    #[error("{what}: {detail}")]
    Setup {
        /// What was being done.
        what: String,
        /// What went wrong.
        detail: String,
    },
    /// The guard did not behave as the scenario needs (did not start, did
    /// not see the flows or peers in time): a failure, not a lab problem.
    #[error("{0}")]
    Guard(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

impl From<SelftestError> for LabError {
    fn from(e: SelftestError) -> Self {
        LabError::Setup { what: "lab".into(), detail: e.to_string() }
    }
}

/// A [`LabError::Setup`] for `what`.
pub(crate) fn setup_err(what: impl Into<String>) -> impl FnOnce(String) -> LabError {
    let what = what.into();
    move |detail| LabError::Setup { what, detail }
}

/// What a scenario's lab measured; [`judge`] turns it into an outcome.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub(crate) before: Phase,
    pub(crate) after: Phase,
    /// Ways the guard's run went other than planned (e.g. not a veto).
    pub(crate) problems: Vec<String>,
}

/// Passed when the hazard broke something without the guard, nothing with
/// it, and the guard's run had no problem; else failed, saying why.
pub(crate) fn judge(m: &Measured) -> (Outcome, Option<String>) {
    let mut why = Vec::new();
    if m.before.broken == 0 {
        why.push(format!("the hazard did not reproduce without the guard (0/{} broken)", m.before.total));
    }
    if m.after.broken > 0 {
        why.push(format!("the guard did not prevent it ({}/{} broken)", m.after.broken, m.after.total));
    }
    why.extend(m.problems.iter().cloned());
    if why.is_empty() {
        (Outcome::Passed, None)
    } else {
        (Outcome::Failed, Some(why.join("; ")))
    }
}

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Asks a running lab to stop: every wait returns [`LabError::Interrupted`]
/// and the lab unwinds, removing what it built.
pub fn cancel() {
    CANCELLED.store(true, Ordering::SeqCst);
}

/// `Err(Interrupted)` once [`cancel`] was called.
pub(crate) fn check_cancel() -> Result<(), LabError> {
    if CANCELLED.load(Ordering::SeqCst) {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps `d`, waking early (with an error) on [`cancel`].
pub(crate) fn sleep(d: Duration) -> Result<(), LabError> {
    let end = Instant::now() + d;
    loop {
        check_cancel()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Polls `f` every `every` until it returns `Some` or `within` passes
/// (`None`); returns the value and how long it took.
pub(crate) fn poll<T>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>, LabError>,
) -> Result<Option<(T, Duration)>, LabError> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(Some((v, start.elapsed())));
        }
        if start.elapsed() >= within {
            return Ok(None);
        }
        sleep(every)?;
    }
}

/// Scratch directories this process made and has not removed yet.
static LIVE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static DIR_SEQ: AtomicU32 = AtomicU32::new(0);

/// A private (0700) scratch directory, removed on drop.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub(crate) fn new(what: &str) -> Result<ScratchDir, LabError> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!(
            "routeguard-lab-{}-{}-{what}",
            std::process::id(),
            DIR_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| LabError::Setup { what: format!("creating {}", path.display()), detail: e.to_string() })?;
        LIVE_DIRS.lock().unwrap_or_else(|p| p.into_inner()).push(path.clone());
        Ok(ScratchDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in the directory.
    pub(crate) fn write(&self, name: &str, text: &str) -> Result<PathBuf, LabError> {
        let p = self.path.join(name);
        std::fs::write(&p, text)
            .map_err(|e| LabError::Setup { what: format!("writing {}", p.display()), detail: e.to_string() })?;
        Ok(p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        LIVE_DIRS.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| p != &self.path);
    }
}

/// The pid in a scratch directory's name (`routeguard-lab-<pid>-<n>-<what>`).
fn scratch_owner(name: &str) -> Option<u32> {
    name.strip_prefix("routeguard-lab-")?.split('-').next()?.parse().ok()
}

/// Removes scratch directories of `routeguard lab` processes that no longer
/// exist (killed outright, so their guards never ran).
fn sweep_stale_dirs() {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = scratch_owner(&name) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Removes, without waiting for their owners to unwind, every namespace
/// (with its processes: guard daemons, FRR), FRR runtime directory and
/// scratch directory this process created. For a second Ctrl-C or a lab
/// that does not stop after [`cancel`].
pub fn emergency_cleanup() {
    for name in netns::remove_all_live() {
        let _ = std::fs::remove_dir_all(Path::new(frr::RUN_BASE).join(name));
    }
    let dirs: Vec<PathBuf> = std::mem::take(&mut *LIVE_DIRS.lock().unwrap_or_else(|p| p.into_inner()));
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Whether the effective user is root (from /proc/self/status).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)) == Some("0")
}

/// Whether `tool` is an executable file in `$PATH`.
pub(crate) fn in_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|d| std::fs::metadata(d.join(tool)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    })
}

/// The first of `tools` missing from `$PATH`, as a [`LabError::Missing`].
pub(crate) fn require_tools(scenario: &str, tools: &[(&str, &str)]) -> Result<(), LabError> {
    match tools.iter().find(|(t, _)| !in_path(t)) {
        Some((tool, package)) => {
            Err(LabError::Missing(format!("{scenario} needs `{tool}` (Debian package {package}), not found in PATH")))
        }
        None => Ok(()),
    }
}

/// Runs `scenarios` one after the other; `progress` gets a line whenever a
/// phase starts or ends. Errors only for what stops every scenario: not
/// root, no `ip`, an interrupt; a scenario that cannot run is reported as
/// skipped or error and the next one runs.
pub fn run(scenarios: &[Scenario], progress: &dyn Fn(&str)) -> Result<LabReport, LabError> {
    if !is_root() {
        return Err(LabError::NotRoot);
    }
    require_tools("routeguard lab", &[("ip", "iproute2")])?;
    // What runs killed outright left: namespaces (with their processes)
    // first, then FRR directories of namespaces that are gone, then scratch
    // directories.
    netns::sweep_stale();
    frr::sweep_stale();
    sweep_stale_dirs();
    let mut reports = Vec::new();
    for &s in scenarios {
        check_cancel()?;
        progress(&format!("{}: building the lab", s.name()));
        let start = Instant::now();
        let (setup, unit, result) = match s {
            Scenario::Ecmp => (ecmp::SETUP, "sessions", ecmp::run(progress)),
            Scenario::Anycast => (anycast::SETUP, "sessions", anycast::run(progress)),
            Scenario::Hairpin => (hairpin::SETUP, "addresses", hairpin::run(progress)),
        };
        let (outcome, reason, before, after) = match result {
            Ok(m) => {
                let (o, r) = judge(&m);
                (o, r, Some(m.before), Some(m.after))
            }
            Err(LabError::Interrupted) => return Err(LabError::Interrupted),
            Err(e @ LabError::Missing(_)) => (Outcome::Skipped, Some(e.to_string()), None, None),
            Err(e @ LabError::Guard(_)) => (Outcome::Failed, Some(e.to_string()), None, None),
            Err(e) => (Outcome::Error, Some(e.to_string()), None, None),
        };
        let report = ScenarioReport {
            scenario: s,
            outcome,
            reason,
            setup: setup.to_string(),
            unit: unit.to_string(),
            before,
            after,
            elapsed_ms: start.elapsed().as_millis() as u64,
        };
        progress(&format!("{}: {:?}", s.name(), report.outcome).to_lowercase());
        reports.push(report);
    }
    Ok(LabReport::new(reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(guard: bool, total: u32, broken: u32) -> Phase {
        Phase { guard, total, broken, summary: "s".into(), verdict: None, elapsed_ms: 1500 }
    }

    fn report(scenario: Scenario, outcome: Outcome) -> ScenarioReport {
        ScenarioReport {
            scenario,
            outcome,
            reason: (outcome != Outcome::Passed).then(|| "why".to_string()),
            setup: "lab".into(),
            unit: "sessions".into(),
            before: Some(phase(false, 60, 44)),
            after: Some(phase(true, 60, 0)),
            elapsed_ms: 2000,
        }
    }

    #[test]
    fn scenario_names_parse_and_bad_ones_are_clear_errors() {
        assert_eq!(Scenario::parse_list("all").unwrap(), Scenario::ALL.to_vec());
        assert_eq!(Scenario::parse_list("hairpin").unwrap(), vec![Scenario::Hairpin]);
        let e = Scenario::parse_list("bogus").unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains("ecmp, anycast, hairpin or all"), "{e}");
    }

    #[test]
    fn judging_needs_the_hazard_without_and_none_with_the_guard() {
        let m =
            |b, a, problems: Vec<String>| Measured { before: phase(false, 60, b), after: phase(true, 60, a), problems };
        assert_eq!(judge(&m(44, 0, vec![])), (Outcome::Passed, None));
        let (o, why) = judge(&m(0, 0, vec![]));
        assert_eq!(o, Outcome::Failed);
        assert!(why.unwrap().contains("did not reproduce"));
        let (o, why) = judge(&m(44, 3, vec![]));
        assert_eq!(o, Outcome::Failed);
        assert!(why.unwrap().contains("3/60"));
        let (o, why) = judge(&m(44, 0, vec!["verdict allow, not veto".into()]));
        assert_eq!((o, why.as_deref()), (Outcome::Failed, Some("verdict allow, not veto")));
    }

    #[test]
    fn exit_codes_rank_failure_over_not_run() {
        let all_pass = LabReport::new(vec![report(Scenario::Ecmp, Outcome::Passed)]);
        assert_eq!(all_pass.exit_code(), 0);
        let skipped =
            LabReport::new(vec![report(Scenario::Ecmp, Outcome::Passed), report(Scenario::Anycast, Outcome::Skipped)]);
        assert_eq!((skipped.exit_code(), skipped.not_run), (2, 1));
        let failed =
            LabReport::new(vec![report(Scenario::Ecmp, Outcome::Failed), report(Scenario::Anycast, Outcome::Skipped)]);
        assert_eq!(failed.exit_code(), 1);
        assert_eq!(LabReport::new(vec![report(Scenario::Hairpin, Outcome::Error)]).exit_code(), 2);
    }

    #[test]
    fn text_shows_the_measured_numbers_and_what_was_skipped() {
        let r =
            LabReport::new(vec![report(Scenario::Ecmp, Outcome::Passed), report(Scenario::Anycast, Outcome::Skipped)]);
        let t = r.render_text();
        assert!(t.contains("without the guard: 44/60 sessions broken"), "{t}");
        assert!(t.contains("with the guard   : 0/60 sessions broken"), "{t}");
        assert!(t.contains("1 passed, 0 failed, 1 not run: anycast (why)"), "{t}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["scenarios"][0]["scenario"], "ecmp");
        assert_eq!(json["scenarios"][0]["before"]["broken"], 44);
        assert_eq!(json["scenarios"][1]["outcome"], "skipped");
        assert_eq!(json["exit_code"], 2);
    }

    #[test]
    fn scratch_directories_name_their_owner() {
        assert_eq!(scratch_owner("routeguard-lab-4242-3-guard"), Some(4242));
        assert_eq!(scratch_owner("routeguard-lab-x-3-guard"), None);
        assert_eq!(scratch_owner("routeguard-audit-4242"), None);
    }

    #[test]
    fn polls_end_with_a_value_or_at_the_timeout() {
        // Cancellation is checked by the Ctrl-C test in integration/lab.rs:
        // the flag is process-wide and other tests run beside this one.
        let r = poll(Duration::from_millis(120), Duration::from_millis(10), || Ok(None::<()>)).unwrap();
        assert!(r.is_none());
        let (v, _) = poll(Duration::from_secs(1), Duration::from_millis(10), || Ok(Some(7))).unwrap().unwrap();
        assert_eq!(v, 7);
    }
}
