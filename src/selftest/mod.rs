//! `routeguard selftest`: measure the running kernel's behaviour in scratch
//! network namespaces instead of trusting a kernel-version table.
//!
//! Each probe builds a small lab of throw-away namespaces (named
//! `rgst-<pid>-<lab>-<role>`, created with iproute2), reproduces one
//! experiment from the design's field notes and tears the lab down again.
//! Nothing in the calling (host) namespace is touched: no link, route, rule
//! or sysctl of it is written; sysctls are only written inside a lab's own
//! namespaces, from a thread that entered them with setns(2). Every lab is
//! removed on every exit path (error, panic), and [`run_all`] first sweeps
//! labs left by selftest processes that were killed outright.
//!
//! Probes:
//! - [`ecmp`]: does replacing a multipath route with an identical one break
//!   established locally-originated TCP flows (field notes, hazard 1)?
//! - [`sit`]: does IPv6 over a sit tunnel whose remote is a local address
//!   get dropped (field notes, hazard 3)? Runs beside the ECMP probes.
//!
//! A probe whose experiment the kernel cannot run (a missing sysctl, a value
//! it rejects, no veth, no multipath routing) is reported as not measurable
//! (`skipped: Some(reason)`) rather than failing the whole selftest; errors
//! of the environment (not root, no `ip`, a lab that does not pass its own
//! sanity check) fail [`run_all`] with a [`SelftestError`] that names what
//! failed.
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2's `ip`.

pub mod ecmp;
pub(crate) mod netns;
pub mod sit;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use netns::{sweep_stale, NETNS_PREFIX, NETNS_RUN_DIR};

/// What the probes do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelftestOptions {
    /// TCP connections each ECMP probe opens (at least 1; default 30).
    pub connections: u32,
    /// How long to wait for a connect or an echo (default 2 s). Broken flows
    /// fail at once with a reset; only lost packets wait this long.
    pub timeout: Duration,
}

impl Default for SelftestOptions {
    fn default() -> Self {
        SelftestOptions { connections: 30, timeout: Duration::from_secs(2) }
    }
}

impl SelftestOptions {
    /// Most connections a probe accepts (each is a socket on both ends, so
    /// a probe holds about twice as many descriptors).
    pub const MAX_CONNECTIONS: u32 = 1000;

    /// Rejects options no probe can run with.
    pub fn validate(&self) -> Result<(), SelftestError> {
        if self.connections == 0 {
            return Err(SelftestError::InvalidOption("connections must be at least 1".into()));
        }
        if self.connections > Self::MAX_CONNECTIONS {
            return Err(SelftestError::InvalidOption(format!(
                "connections must be at most {}, got {}",
                Self::MAX_CONNECTIONS,
                self.connections
            )));
        }
        if self.timeout.is_zero() {
            return Err(SelftestError::InvalidOption("timeout must be positive".into()));
        }
        if self.timeout > Duration::from_secs(60) {
            return Err(SelftestError::InvalidOption(format!("timeout must be at most 60s, got {:?}", self.timeout)));
        }
        Ok(())
    }
}

/// What the selftest measured on this kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelftestReport {
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// One entry per ECMP hash setting, in [`ecmp::host_settings`] order.
    pub ecmp: Vec<ecmp::EcmpProbe>,
    /// The sit local-remote probe; `None` in reports written before it
    /// existed.
    #[serde(default)]
    pub sit: Option<sit::SitProbe>,
    /// Wall time of the whole selftest, in milliseconds.
    pub elapsed_ms: u64,
}

/// Why a selftest could not run.
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    /// The options can't be run with.
    #[error("invalid selftest option: {0}")]
    InvalidOption(String),
    /// An external command (iproute2) failed; `detail` is its stderr.
    #[error("{what}: {detail}")]
    Command {
        /// What was being done, e.g. "creating namespace rgst-12-0-r".
        what: String,
        /// The command's stderr.
        detail: String,
    },
    /// A system call or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A lab was built but does not behave as a lab must (e.g. flows that
    /// do not echo before anything was changed), so nothing it measured
    /// could be trusted.
    #[error("{setting}: lab check failed: {detail}")]
    Lab {
        /// The probe's setting name.
        setting: String,
        /// What was wrong.
        detail: String,
    },
    /// A probe thread panicked (its lab was still removed).
    #[error("{what} panicked: {message}")]
    Panic {
        /// Which probe or helper thread.
        what: String,
        /// The panic message.
        message: String,
    },
}

/// The running kernel's release, as `uname -r` prints it.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Runs every probe and reports what this kernel does.
///
/// The ECMP settings run in parallel, one lab each (four labs of four
/// namespaces), fewer at a time when the descriptor limit is too low for
/// `connections`; the sit probe (one namespace) runs beside them. All labs
/// are removed before this returns, whatever the outcome; the first hard
/// error is returned after every probe has ended.
pub fn run_all(opts: &SelftestOptions) -> Result<SelftestReport, SelftestError> {
    opts.validate()?;
    let start = Instant::now();
    sweep_stale();
    let settings = ecmp::host_settings();
    // Probes run in parallel, as many at once as the descriptor limit allows.
    let parallel = parallel_probes(opts.connections, open_files_limit());
    let mut results: Vec<Result<ecmp::EcmpProbe, SelftestError>> = Vec::with_capacity(settings.len());
    let sit_handle = std::thread::Builder::new().name("rgst-sit".into()).spawn(sit::probe);
    for wave in settings.chunks(parallel) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = wave
                .iter()
                .map(|setting| {
                    let name = setting.name();
                    let h = std::thread::Builder::new()
                        .name(format!("rgst-{name}"))
                        .spawn_scoped(scope, move || ecmp::probe(setting, opts));
                    (name, h)
                })
                .collect();
            results.extend(handles.into_iter().map(|(name, h)| match h {
                Err(source) => Err(SelftestError::Io { what: format!("spawning the {name} probe"), source }),
                Ok(h) => h.join().unwrap_or_else(|p| {
                    Err(SelftestError::Panic { what: format!("probe {name}"), message: netns::panic_message(&p) })
                }),
            }));
        });
    }
    let sit = match sit_handle {
        Err(source) => Err(SelftestError::Io { what: "spawning the sit probe".into(), source }),
        Ok(h) => h.join().unwrap_or_else(|p| {
            Err(SelftestError::Panic { what: "probe sit".into(), message: netns::panic_message(&p) })
        }),
    };
    let ecmp = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let sit = sit?;
    Ok(SelftestReport {
        kernel: kernel_release(),
        ecmp,
        sit: Some(sit),
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}

/// The soft `RLIMIT_NOFILE` from `/proc/self/limits` ("Max open files").
fn open_files_limit() -> Option<u64> {
    parse_open_files_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// How many probes may run at once: each holds about two descriptors per
/// connection plus a few; a quarter of the limit is left to the rest of
/// the process.
fn parallel_probes(connections: u32, open_files: Option<u64>) -> usize {
    let per_probe = 2 * connections as u64 + 32;
    let budget = open_files.unwrap_or(1024).saturating_sub(open_files.unwrap_or(1024) / 4);
    (budget / per_probe).clamp(1, 4) as usize
}

/// [`run_all`] with `connections` connections per probe and the default
/// timeout.
pub fn run(connections: u32) -> Result<SelftestReport, SelftestError> {
    run_all(&SelftestOptions { connections, ..Default::default() })
}

/// Whether a cached report still describes this kernel and these host
/// settings: same kernel release, same settings measured, same connection
/// count, and every probe present (a report from before the sit probe is
/// measured again).
fn cache_fits(report: &SelftestReport, connections: u32) -> bool {
    let wanted: Vec<String> = ecmp::host_settings().iter().map(ecmp::EcmpSetting::name).collect();
    let have: Vec<&str> = report.ecmp.iter().map(|p| p.setting.as_str()).collect();
    report.kernel == kernel_release()
        && have == wanted
        && report.ecmp.iter().all(|p| p.connections == connections)
        && report.sit.is_some()
}

/// The report cached at `cache` (JSON) when it still fits the running
/// kernel and the host's hash settings, else a fresh [`run`], written back
/// to `cache` (atomically; a cache that cannot be written is not an error).
/// For the daemon's start, where the measurement should not repeat on every
/// restart.
pub fn cached_or_run(cache: &std::path::Path, connections: u32) -> Result<SelftestReport, String> {
    if let Some(report) = std::fs::read(cache).ok().and_then(|b| serde_json::from_slice::<SelftestReport>(&b).ok()) {
        if cache_fits(&report, connections) {
            return Ok(report);
        }
    }
    let report = run(connections).map_err(|e| e.to_string())?;
    if let Ok(text) = serde_json::to_vec_pretty(&report) {
        let tmp = cache.with_extension(format!("tmp.{}", std::process::id()));
        if std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, cache)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fitting_cache_is_used_without_running() {
        let probes = ecmp::host_settings()
            .iter()
            .map(|s| ecmp::EcmpProbe {
                setting: s.name(),
                family: s.family,
                policy: s.policy,
                fields: s.fields,
                connections: 7,
                destinations: 7,
                broken: 1,
                affected: true,
                skipped: None,
                note: None,
            })
            .collect();
        let sit = sit::SitProbe { datagrams: 3, sent: 3, tx_carrier_errors: 0, drops: false, skipped: None };
        let report = SelftestReport { kernel: kernel_release(), ecmp: probes, sit: Some(sit), elapsed_ms: 4242 };
        let path = std::env::temp_dir().join(format!("rgst-cache-test-{}.json", std::process::id()));
        std::fs::write(&path, serde_json::to_vec(&report).unwrap()).unwrap();
        // A run would need root and take time; a fitting cache needs neither.
        let got = cached_or_run(&path, 7);
        // A different connection count does not fit.
        assert!(!cache_fits(&report, 8));
        let other_kernel = SelftestReport { kernel: "0.0.0-other".into(), ..report.clone() };
        assert!(!cache_fits(&other_kernel, 7));
        // A report from before the sit probe is measured again.
        let no_sit = SelftestReport { sit: None, ..report.clone() };
        assert!(!cache_fits(&no_sit, 7));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(got, Ok(report));
    }

    #[test]
    fn probes_run_in_parallel_as_descriptors_allow() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        assert_eq!(parse_open_files_limit("Max open files  unlimited unlimited files\n"), Some(u64::MAX));
        assert_eq!(parse_open_files_limit("Max processes 10 10 processes\n"), None);
        assert_eq!(parallel_probes(30, Some(1024)), 4);
        assert_eq!(parallel_probes(200, Some(1024)), 1);
        assert_eq!(parallel_probes(1000, Some(1024)), 1);
        assert_eq!(parallel_probes(1000, Some(20000)), 4);
        assert_eq!(parallel_probes(30, None), 4);
        assert_eq!(parallel_probes(30, Some(u64::MAX)), 4);
    }

    #[test]
    fn default_options_are_valid() {
        let o = SelftestOptions::default();
        assert_eq!(o.connections, 30);
        o.validate().unwrap();
    }

    #[test]
    fn bad_options_are_rejected_before_anything_runs() {
        let zero = SelftestOptions { connections: 0, ..Default::default() };
        assert!(matches!(zero.validate(), Err(SelftestError::InvalidOption(_))));
        assert!(matches!(run_all(&zero), Err(SelftestError::InvalidOption(_))));
        let no_time = SelftestOptions { timeout: Duration::ZERO, ..Default::default() };
        assert!(no_time.validate().is_err());
        let many = SelftestOptions { connections: SelftestOptions::MAX_CONNECTIONS + 1, ..Default::default() };
        assert!(many.validate().is_err());
    }

    #[test]
    fn report_round_trips_through_json() {
        let r = SelftestReport {
            kernel: "6.18.0".into(),
            ecmp: vec![ecmp::EcmpProbe {
                setting: "ipv6 policy 1".into(),
                family: 6,
                policy: 1,
                fields: None,
                connections: 30,
                destinations: 10,
                broken: 20,
                affected: true,
                skipped: None,
                note: None,
            }],
            sit: Some(sit::SitProbe { datagrams: 3, sent: 0, tx_carrier_errors: 3, drops: true, skipped: None }),
            elapsed_ms: 1234,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"setting\":\"ipv6 policy 1\""), "{text}");
        assert!(text.contains("\"sit\":{\"datagrams\":3,\"sent\":0,\"tx_carrier_errors\":3,\"drops\":true}"), "{text}");
        assert_eq!(serde_json::from_str::<SelftestReport>(&text).unwrap(), r);
    }

    #[test]
    fn reports_from_before_the_sit_probe_still_parse() {
        let old = r#"{"kernel":"6.18.0","ecmp":[],"elapsed_ms":5}"#;
        let r: SelftestReport = serde_json::from_str(old).unwrap();
        assert_eq!(r.sit, None);
        assert!(!cache_fits(&r, 30));
    }
}
