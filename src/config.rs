//! Daemon configuration: TOML file, every key optional, `ROUTEGUARD_*`
//! environment overrides, unknown keys rejected with the key's name and
//! where it came from.
//!
//! Environment variables map to keys by dropping the `ROUTEGUARD_` prefix,
//! lower-casing, and reading `__` as the section separator:
//! `ROUTEGUARD_STATE_DIR` is `state_dir`, `ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL`
//! is `kernel.sock_poll_interval`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "ROUTEGUARD";
/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/routeguard/routeguard.sock";

/// A configuration problem, naming the key and its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed as TOML.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A key that routeguard does not know.
    #[error("{source_desc}: unknown key `{key}`")]
    UnknownKey {
        /// The dotted key path.
        key: String,
        /// "config file PATH" or "environment variable NAME".
        source_desc: String,
    },
    /// A key with a value of the wrong type or out of range.
    #[error("{source_desc}: {reason}")]
    BadValue {
        /// "config file PATH", "environment" or both.
        source_desc: String,
        /// What went wrong, naming the key.
        reason: String,
    },
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colours on a TTY).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unix socket of the gRPC API (mode 0660).
    pub socket: PathBuf,
    /// Where the journal and owned-object records live.
    pub state_dir: PathBuf,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// tracing filter, e.g. `info` or `routeguard=debug`; `RUST_LOG` wins.
    pub log_level: String,
    /// Kernel observation.
    pub kernel: KernelConfig,
    /// Network API (off unless `listen` is set).
    pub api: ApiConfig,
    /// Kernel self-test.
    pub selftest: SelftestConfig,
    /// FRR.
    pub frr: FrrConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// The `frr.Northbound` proxy (off unless `listen` is set).
    pub proxy: ProxyConfig,
    /// Hazard policies.
    pub hazards: crate::policy::HazardsConfig,
}

/// `[frr]`: how the guard reaches FRR. Without FRR (vtysh missing or
/// failing) the guard runs in kernel-only mode and says so in `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrrConfig {
    /// The vtysh binary.
    pub vtysh: PathBuf,
    /// Passed as `--vty_socket` when not empty.
    pub vty_socket_dir: PathBuf,
    /// How often BGP neighbors are read.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest one vtysh call may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// gRPC northbound endpoints, one per daemon.
    pub northbound: NorthboundConfig,
}

impl Default for FrrConfig {
    fn default() -> Self {
        FrrConfig {
            vtysh: PathBuf::from("vtysh"),
            vty_socket_dir: PathBuf::from("/var/run/frr"),
            poll_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            northbound: NorthboundConfig::default(),
        }
    }
}

/// The FRR daemons that can load the gRPC module (`-M grpc:PORT`), i.e.
/// the keys `[frr.northbound]` accepts besides its timings.
pub const FRR_DAEMONS: &[&str] = &[
    "zebra", "staticd", "bgpd", "ospfd", "ospf6d", "ripd", "ripngd", "isisd", "fabricd", "pimd", "pim6d", "ldpd",
    "nhrpd", "eigrpd", "babeld", "sharpd", "pbrd", "bfdd", "vrrpd", "pathd",
];

/// `[frr.northbound]`: the gRPC endpoint of each FRR daemon loaded with
/// `-M grpc:PORT` (FRR serves one `frr.Northbound` per daemon). A daemon
/// without an endpoint is not watched and the proxy cannot reach it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NorthboundConfig {
    /// zebra's endpoint, e.g. "http://[::1]:50051".
    pub zebra: Option<String>,
    /// staticd's endpoint, e.g. "http://[::1]:50052".
    pub staticd: Option<String>,
    /// bgpd's endpoint.
    pub bgpd: Option<String>,
    /// ospfd's endpoint.
    pub ospfd: Option<String>,
    /// ospf6d's endpoint.
    pub ospf6d: Option<String>,
    /// ripd's endpoint.
    pub ripd: Option<String>,
    /// ripngd's endpoint.
    pub ripngd: Option<String>,
    /// isisd's endpoint.
    pub isisd: Option<String>,
    /// fabricd's endpoint.
    pub fabricd: Option<String>,
    /// pimd's endpoint.
    pub pimd: Option<String>,
    /// pim6d's endpoint.
    pub pim6d: Option<String>,
    /// ldpd's endpoint.
    pub ldpd: Option<String>,
    /// nhrpd's endpoint.
    pub nhrpd: Option<String>,
    /// eigrpd's endpoint.
    pub eigrpd: Option<String>,
    /// babeld's endpoint.
    pub babeld: Option<String>,
    /// sharpd's endpoint.
    pub sharpd: Option<String>,
    /// pbrd's endpoint.
    pub pbrd: Option<String>,
    /// bfdd's endpoint.
    pub bfdd: Option<String>,
    /// vrrpd's endpoint.
    pub vrrpd: Option<String>,
    /// pathd's endpoint.
    pub pathd: Option<String>,
    /// How often each daemon's configuration is read (`Get`) and diffed:
    /// FRR 8.4 has no working `Subscribe`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest one northbound call may take (connect included); the proxy
    /// uses it for every upstream call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for NorthboundConfig {
    fn default() -> Self {
        NorthboundConfig {
            zebra: None,
            staticd: None,
            bgpd: None,
            ospfd: None,
            ospf6d: None,
            ripd: None,
            ripngd: None,
            isisd: None,
            fabricd: None,
            pimd: None,
            pim6d: None,
            ldpd: None,
            nhrpd: None,
            eigrpd: None,
            babeld: None,
            sharpd: None,
            pbrd: None,
            bfdd: None,
            vrrpd: None,
            pathd: None,
            poll_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

impl NorthboundConfig {
    /// The configured endpoints, `(daemon, url)`, in [`FRR_DAEMONS`] order.
    pub fn endpoints(&self) -> Vec<(&'static str, &str)> {
        let all = [
            &self.zebra,
            &self.staticd,
            &self.bgpd,
            &self.ospfd,
            &self.ospf6d,
            &self.ripd,
            &self.ripngd,
            &self.isisd,
            &self.fabricd,
            &self.pimd,
            &self.pim6d,
            &self.ldpd,
            &self.nhrpd,
            &self.eigrpd,
            &self.babeld,
            &self.sharpd,
            &self.pbrd,
            &self.bfdd,
            &self.vrrpd,
            &self.pathd,
        ];
        FRR_DAEMONS.iter().zip(all).filter_map(|(d, u)| u.as_deref().map(|u| (*d, u))).collect()
    }
}

/// Checks one northbound endpoint: `http://HOST:PORT` (FRR's gRPC module
/// is plaintext, so no `https`), nothing after the port.
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    let uri: tonic::transport::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(format!("`{url}`: FRR's gRPC module serves plaintext only; use http://")),
        _ => return Err(format!("`{url}` must start with http://, e.g. http://[::1]:50052")),
    }
    if uri.host().unwrap_or_default().is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if uri.port_u16().is_none() {
        return Err(format!("`{url}` has no port (FRR listens on the port given to -M grpc:PORT)"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(format!("`{url}` must not have a path"));
    }
    Ok(())
}

/// `[proxy]`: routeguard serves `frr.Northbound` on `listen` and forwards
/// to the daemon that owns each path, judging every commit first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address of the proxy, e.g. "[::1]:50100"; absent = proxy off.
    pub listen: Option<SocketAddr>,
    /// Allow a non-loopback `listen` address (the proxy is plaintext and
    /// changes routing: keep it on loopback unless the network is trusted).
    pub allow_remote: bool,
}

/// `[metrics]`: Prometheus text exposition over HTTP. Off unless `listen`
/// is set; an address other than loopback needs `allow_remote = true`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the /metrics listener, e.g. "127.0.0.1:9474".
    pub listen: Option<SocketAddr>,
    /// Allow a non-loopback `listen` address.
    pub allow_remote: bool,
}

/// `[selftest]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelftestConfig {
    /// Run the kernel self-test at start (the result is cached per boot
    /// and kernel in the state directory). Without it, detectors assume
    /// the kernel is affected.
    pub on_start: bool,
    /// Connections per ECMP probe.
    pub connections: u32,
}

impl Default for SelftestConfig {
    fn default() -> Self {
        SelftestConfig { on_start: true, connections: 30 }
    }
}

/// `[kernel]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KernelConfig {
    /// How often established TCP sockets are polled through sock_diag.
    #[serde(with = "humantime_serde")]
    pub sock_poll_interval: Duration,
    /// How often sysctls without netlink notifications are re-read.
    #[serde(with = "humantime_serde")]
    pub sysctl_poll_interval: Duration,
    /// Receive buffer of the netlink monitor socket, in bytes. Large enough
    /// to absorb a full-table BGP convergence burst; an overrun costs a
    /// re-dump.
    pub netlink_rcvbuf: usize,
    /// Watch outgoing TCP SYNs (AF_PACKET) to learn which multipath member
    /// each new local flow uses.
    pub observe_syns: bool,
}

/// `[api]`: the optional TCP listener. TCP is TLS-only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address for the gRPC API; requires `tls`.
    pub listen: Option<SocketAddr>,
    /// TLS for the TCP listener.
    pub tls: Option<TlsConfig>,
}

/// `[api.tls]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from(DEFAULT_SOCKET),
            state_dir: PathBuf::from("/var/lib/routeguard"),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            kernel: KernelConfig::default(),
            api: ApiConfig::default(),
            selftest: SelftestConfig::default(),
            frr: FrrConfig::default(),
            metrics: MetricsConfig::default(),
            proxy: ProxyConfig::default(),
            hazards: crate::policy::HazardsConfig::default(),
        }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            sock_poll_interval: Duration::from_secs(1),
            sysctl_poll_interval: Duration::from_secs(2),
            netlink_rcvbuf: 64 << 20,
            observe_syns: true,
        }
    }
}

/// Every valid dotted key path, derived from the defaults so it can never
/// drift from the structs. Optional sections appear with their sub-keys.
fn known_keys() -> BTreeSet<String> {
    let mut v = serde_json::to_value(Config::default()).unwrap_or_default();
    // Optional tables are `null` by default; expand them so their keys count.
    if let Some(api) = v.get_mut("api") {
        api["tls"] = serde_json::to_value(TlsConfig::default()).unwrap_or_default();
    }
    let mut out = BTreeSet::new();
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(path.clone());
                walk(&path, v, out);
            }
        }
    }
    walk("", &v, &mut out);
    out
}

fn check_keys(
    value: &config::Value,
    prefix: &str,
    known: &BTreeSet<String>,
    desc: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if let Ok(table) = value.clone().into_table() {
        for (k, v) in table {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            if !known.contains(&path) {
                return Err(ConfigError::UnknownKey { key: path.clone(), source_desc: desc(&path) });
            }
            check_keys(&v, &path, known, desc)?;
        }
    }
    Ok(())
}

/// Maps `ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL` to `kernel.sock_poll_interval`.
pub fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?.strip_prefix('_')?;
    Some(rest.to_lowercase().replace("__", "."))
}

impl Config {
    /// Loads the configuration: defaults, then `file` (if any), then the
    /// `ROUTEGUARD_*` variables in `env`.
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let known = known_keys();
        let mut builder = config::Config::builder();
        let file_desc = file.map(|p| format!("config file {}", p.display()));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::File { path: path.to_path_buf(), reason: e.to_string() })?;
            let parsed = config::Config::builder()
                .add_source(config::File::from_str(&text, config::FileFormat::Toml))
                .build()
                .map_err(|e| ConfigError::File { path: path.to_path_buf(), reason: e.to_string() })?;
            let root = parsed.cache.clone();
            let d = file_desc.clone().unwrap_or_default();
            check_keys(&root, "", &known, &|_| d.clone())?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let mut env_map = config::Map::new();
        for (name, value) in env {
            let Some(key) = env_key(name) else { continue };
            if !known.contains(&key) {
                return Err(ConfigError::UnknownKey { key, source_desc: format!("environment variable {name}") });
            }
            env_map.insert(key, value.clone());
        }
        let env_names: Vec<&str> = env.iter().filter(|(n, _)| env_key(n).is_some()).map(|(n, _)| n.as_str()).collect();
        for (key, value) in &env_map {
            builder = builder
                .set_override(key.as_str(), value.as_str())
                .map_err(|e| ConfigError::BadValue { source_desc: "environment".into(), reason: e.to_string() })?;
        }
        let source_desc = match (&file_desc, env_names.is_empty()) {
            (Some(f), true) => f.clone(),
            (Some(f), false) => format!("{f} with environment overrides {}", env_names.join(", ")),
            (None, false) => format!("environment overrides {}", env_names.join(", ")),
            (None, true) => "built-in defaults".into(),
        };
        let bad = |reason: String| ConfigError::BadValue { source_desc: source_desc.clone(), reason };
        let cfg: Config = builder.build().and_then(|c| c.try_deserialize()).map_err(|e| bad(e.to_string()))?;
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Loads with the process environment.
    pub fn load_from_process(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Config::load(file, &env)
    }

    /// Checks relations between keys that types alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.api.listen.is_some() && self.api.tls.is_none() {
            return Err("key `api.listen` requires `api.tls` (cert and key): the TCP API is TLS-only".into());
        }
        if let Some(tls) = &self.api.tls {
            if tls.cert.as_os_str().is_empty() || tls.key.as_os_str().is_empty() {
                return Err("keys `api.tls.cert` and `api.tls.key` must both be set".into());
            }
        }
        if self.kernel.sock_poll_interval < Duration::from_millis(10) {
            return Err("key `kernel.sock_poll_interval` must be at least 10ms".into());
        }
        if self.kernel.sysctl_poll_interval < Duration::from_millis(10) {
            return Err("key `kernel.sysctl_poll_interval` must be at least 10ms".into());
        }
        if self.kernel.netlink_rcvbuf < 4096 {
            return Err("key `kernel.netlink_rcvbuf` must be at least 4096 bytes".into());
        }
        self.hazards.validate()?;
        if let Some(a) = self.metrics.listen {
            if !a.ip().is_loopback() && !self.metrics.allow_remote {
                return Err(format!(
                    "key `metrics.listen` = {a} is not a loopback address; set `metrics.allow_remote = true` to \
                     expose metrics off the host"
                ));
            }
        }
        if self.frr.poll_interval < Duration::from_millis(100) {
            return Err("key `frr.poll_interval` must be at least 100ms".into());
        }
        if self.frr.timeout.is_zero() {
            return Err("key `frr.timeout` must be more than 0".into());
        }
        for (daemon, url) in self.frr.northbound.endpoints() {
            check_endpoint_url(url).map_err(|e| format!("key `frr.northbound.{daemon}`: {e}"))?;
        }
        if self.frr.northbound.poll_interval < Duration::from_millis(100) {
            return Err("key `frr.northbound.poll_interval` must be at least 100ms".into());
        }
        if self.frr.northbound.timeout < Duration::from_millis(10) {
            return Err("key `frr.northbound.timeout` must be at least 10ms".into());
        }
        if let Some(a) = self.proxy.listen {
            if self.frr.northbound.endpoints().is_empty() {
                return Err("key `proxy.listen` needs at least one daemon endpoint in [frr.northbound]".into());
            }
            if !a.ip().is_loopback() && !self.proxy.allow_remote {
                return Err(format!(
                    "key `proxy.listen` = {a} is not a loopback address; set `proxy.allow_remote = true` to serve \
                     the (plaintext) proxy off the host"
                ));
            }
        }
        if self.selftest.connections == 0 || self.selftest.connections > 1000 {
            return Err("key `selftest.connections` must be between 1 and 1000".into());
        }
        if self.socket.as_os_str().is_empty() {
            return Err("key `socket` must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let c = Config::load(None, &env(&[("PATH", "/bin"), ("ROUTEGUARDX", "1")])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.socket, PathBuf::from("/run/routeguard/routeguard.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/routeguard"));
        assert_eq!(c.kernel.sock_poll_interval, Duration::from_secs(1));
    }

    #[test]
    fn file_values_and_env_overrides() {
        let f = write("state_dir = \"/tmp/x\"\nlog_format = \"json\"\n[kernel]\nsock_poll_interval = \"250ms\"\n");
        let c = Config::load(Some(f.path()), &[]).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.kernel.sock_poll_interval, Duration::from_millis(250));
        let c = Config::load(
            Some(f.path()),
            &env(&[("ROUTEGUARD_STATE_DIR", "/srv/rg"), ("ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL", "3s")]),
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/rg"));
        assert_eq!(c.kernel.sock_poll_interval, Duration::from_secs(3));
        assert_eq!(c.log_format, LogFormat::Json, "file values not overridden stay");
    }

    #[test]
    fn unknown_keys_are_named_with_their_source() {
        let f = write("[kernel]\nsock_pol_interval = \"1s\"\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key `kernel.sock_pol_interval`"), "{e}");
        assert!(e.contains(&f.path().display().to_string()), "{e}");

        let f = write("bogus = 1\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key `bogus`"), "{e}");

        let e = Config::load(None, &env(&[("ROUTEGUARD_STATEDIR", "/x")])).unwrap_err().to_string();
        assert!(e.contains("environment variable ROUTEGUARD_STATEDIR"), "{e}");
        assert!(e.contains("unknown key `statedir`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let f = write("[kernel]\nsock_poll_interval = \"soon\"\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("sock_poll_interval"), "{e}");
        assert!(e.contains(&f.path().display().to_string()), "{e}");

        let e = Config::load(None, &env(&[("ROUTEGUARD_LOG_FORMAT", "xml")])).unwrap_err().to_string();
        assert!(e.contains("log_format"), "{e}");
        assert!(e.contains("ROUTEGUARD_LOG_FORMAT"), "{e}");

        let f = write("[api]\nlisten = \"127.0.0.1:9000\"\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("api.listen") && e.contains("TLS"), "{e}");

        let f = write("socket = [1, 2]\n");
        assert!(Config::load(Some(f.path()), &[]).is_err());

        let f = write("[hazards.subnet_anycast]\nrealtime_priority = 100\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("hazards.subnet_anycast.realtime_priority") && e.contains("1-99"), "{e}");
        let e = Config::load(None, &env(&[("ROUTEGUARD_HAZARDS__SUBNET_ANYCAST__REALTIME_PRIORITY", "-1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("realtime_priority"), "{e}");
        let c = Config::load(None, &env(&[("ROUTEGUARD_HAZARDS__SUBNET_ANYCAST__REALTIME_PRIORITY", "10")])).unwrap();
        assert_eq!(c.hazards.subnet_anycast.realtime_priority, 10);
    }

    #[test]
    fn toml_syntax_errors_name_the_file() {
        let f = write("[kernel\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.starts_with(&format!("config file {}", f.path().display())), "{e}");
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let e = Config::load(Some(Path::new("/nonexistent/rg.toml")), &[]).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/rg.toml"), "{e}");
    }

    /// Every scenario config in examples/ loads as it is.
    #[test]
    fn every_example_config_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Config::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 5, "examples/ has {n} configs");
        let edge = Config::load(Some(&dir.join("anycast-edge.toml")), &[]).unwrap();
        assert_eq!(edge.hazards.ecmp_rehash.action, crate::policy::Action::Stage);
    }

    /// examples/routeguard.toml documents every key with its default: with
    /// every setting uncommented it must parse, and (apart from the
    /// optional listeners, whose values are examples) equal the defaults.
    #[test]
    fn example_config_documents_every_key_with_its_default() {
        let text = include_str!("../examples/routeguard.toml");
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let f = write(&uncommented);
        let c = Config::load(Some(f.path()), &[]).unwrap();
        // Optional listeners show example values, not defaults.
        let mut expected =
            Config { api: c.api.clone(), metrics: c.metrics.clone(), proxy: c.proxy.clone(), ..Config::default() };
        expected.frr.northbound = NorthboundConfig {
            poll_interval: expected.frr.northbound.poll_interval,
            timeout: expected.frr.northbound.timeout,
            ..c.frr.northbound.clone()
        };
        assert_eq!(c, expected);
        assert!(c.proxy.listen.is_some() && c.frr.northbound.staticd.is_some());
        assert!(c.api.listen.is_some() && c.api.tls.as_ref().is_some_and(|t| t.client_ca.is_some()));
        // Every known key appears in the example.
        for key in known_keys() {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                uncommented.contains(&format!("{leaf} ="))
                    || uncommented.contains(&format!("[{key}]"))
                    || uncommented.contains(&format!("[{key}.")),
                "examples/routeguard.toml does not document `{key}`"
            );
        }
    }

    #[test]
    fn northbound_endpoints_and_proxy() {
        let f = write(
            "[frr.northbound]\nzebra = \"http://[::1]:50051\"\nstaticd = \"http://127.0.0.1:50052\"\n\
             [proxy]\nlisten = \"[::1]:50100\"\n",
        );
        let c = Config::load(Some(f.path()), &[]).unwrap();
        assert_eq!(
            c.frr.northbound.endpoints(),
            vec![("zebra", "http://[::1]:50051"), ("staticd", "http://127.0.0.1:50052")]
        );
        assert_eq!(c.proxy.listen, Some("[::1]:50100".parse().unwrap()));

        let f = write("[frr.northbound]\nospf7d = \"http://[::1]:1\"\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key `frr.northbound.ospf7d`"), "{e}");

        for (bad, why) in [
            ("[::1]:50052", "must start with http://"),
            ("https://[::1]:50052", "plaintext"),
            ("http://[::1]", "no port"),
            ("http://[::1]:50052/frr", "path"),
            ("http://exa mple:1", "not a URL"),
        ] {
            let f = write(&format!("[frr.northbound]\nstaticd = \"{bad}\"\n"));
            let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
            assert!(e.contains("key `frr.northbound.staticd`") && e.contains(why), "{bad}: {e}");
        }
        let e =
            Config::load(None, &env(&[("ROUTEGUARD_FRR__NORTHBOUND__ZEBRA", "ftp://x:1")])).unwrap_err().to_string();
        assert!(e.contains("frr.northbound.zebra") && e.contains("ROUTEGUARD_FRR__NORTHBOUND__ZEBRA"), "{e}");

        let f = write("[proxy]\nlisten = \"[::1]:50100\"\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("proxy.listen") && e.contains("[frr.northbound]"), "{e}");
        let f = write("[frr.northbound]\nstaticd = \"http://[::1]:50052\"\n[proxy]\nlisten = \"0.0.0.0:50100\"\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("proxy.allow_remote"), "{e}");
        let f = write("[proxy]\nlisen = \"[::1]:50100\"\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key `proxy.lisen`"), "{e}");
    }

    #[test]
    fn env_key_mapping() {
        assert_eq!(env_key("ROUTEGUARD_STATE_DIR").as_deref(), Some("state_dir"));
        assert_eq!(env_key("ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL").as_deref(), Some("kernel.sock_poll_interval"));
        assert_eq!(env_key("ROUTEGUARDX"), None);
        assert_eq!(env_key("OTHER_STATE_DIR"), None);
    }
}
