//! FRR northbound client: one gRPC channel per configured daemon
//! (`[frr.northbound]`), `GetCapabilities`, then `Get` of the daemon's
//! configuration every `poll_interval`, diffed against the previous poll
//! so that changes made elsewhere (vtysh, another client) are noticed:
//! logged and sent as [`NorthboundEvent`]s.
//!
//! FRR 8.4 has no working `Subscribe` (field-notes): each session tries it
//! once and, on `UNIMPLEMENTED`, polls. A daemon that is down or restarting
//! is a state (`connecting`, `up`, `down: REASON`, shown by `routeguard
//! status` as `frr_northbound`), retried with exponential backoff
//! (`backon`), never a crash. Every call has a timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::config::NorthboundConfig;
use crate::proto::frr as pb;
use crate::proto::frr::northbound_client::NorthboundClient;

/// A gRPC client of one daemon.
pub type NbClient = NorthboundClient<Channel>;

/// Daemon name -> `up`, `connecting` or `down: REASON`.
pub type StateMap = BTreeMap<String, String>;

/// Most configuration lines one change event lists.
const MAX_EVENT_LINES: usize = 50;

/// A configuration change seen between two polls.
#[derive(Clone, Debug, Serialize)]
pub struct NorthboundEvent {
    /// The daemon.
    pub daemon: String,
    /// The polled path.
    pub path: String,
    /// Lines (`path = value`) that appeared.
    pub added: Vec<String>,
    /// Lines that disappeared.
    pub removed: Vec<String>,
    /// Whether the proxy committed to this daemon since the last poll (the
    /// change may be its own); false means it was made elsewhere.
    pub via_proxy: bool,
}

impl NorthboundEvent {
    /// As a `WatchEvents` event: kind `frr_config`, op `committed` (the
    /// proxy committed meanwhile) or `changed_elsewhere`, and a key naming
    /// the daemon, the path and the lines (`+` added, `-` removed).
    pub fn applied(&self) -> crate::model::Applied {
        let lines: Vec<String> =
            self.added.iter().map(|l| format!("+{l}")).chain(self.removed.iter().map(|l| format!("-{l}"))).collect();
        crate::model::Applied {
            kind: "frr_config",
            op: if self.via_proxy { "committed" } else { "changed_elsewhere" },
            key: format!("{} {}: {}", self.daemon, self.path, lines.join("; ")),
        }
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("key `frr.northbound.{daemon}`: {reason}")]
pub struct NorthboundError {
    /// The daemon.
    pub daemon: String,
    /// What is wrong.
    pub reason: String,
}

/// One daemon's endpoint.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Daemon name.
    pub daemon: String,
    /// Its URL.
    pub url: String,
    /// The client (the channel connects lazily and reconnects by itself).
    pub client: NbClient,
}

struct Inner {
    upstreams: BTreeMap<String, Upstream>,
    timeout: Duration,
    poll_interval: Duration,
    state_tx: watch::Sender<StateMap>,
    events_tx: broadcast::Sender<NorthboundEvent>,
    modules: Mutex<BTreeMap<String, Vec<String>>>,
    commits: Mutex<BTreeMap<String, u64>>,
}

/// The northbound client of every configured daemon. Cheap to clone.
#[derive(Clone)]
pub struct Northbound {
    inner: Arc<Inner>,
}

/// Maps a failed call to a one-line reason.
pub fn reason(s: &Status) -> String {
    let msg = s.message().trim();
    let code = format!("{:?}", s.code());
    if msg.is_empty() {
        code
    } else {
        format!("{code}: {}", msg.chars().take(200).collect::<String>())
    }
}

/// Runs one upstream call with the configured timeout.
pub async fn with_timeout<T>(
    timeout: Duration,
    daemon: &str,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!("{daemon} did not answer {what} within {timeout:?}"))),
    }
}

impl Northbound {
    /// Builds lazy channels for every endpoint in `cfg` (nothing connects
    /// until the first call).
    pub fn new(cfg: &NorthboundConfig) -> Result<Northbound, NorthboundError> {
        let mut upstreams = BTreeMap::new();
        let mut states = StateMap::new();
        for (daemon, url) in cfg.endpoints() {
            let endpoint = Endpoint::from_shared(url.to_string())
                .map_err(|e| NorthboundError { daemon: daemon.into(), reason: e.to_string() })?
                // Calls are bounded by `with_timeout`, which names the call.
                .connect_timeout(cfg.timeout)
                .tcp_nodelay(true);
            let client = NorthboundClient::new(endpoint.connect_lazy());
            upstreams.insert(daemon.to_string(), Upstream { daemon: daemon.into(), url: url.into(), client });
            states.insert(daemon.to_string(), "connecting".into());
        }
        let (state_tx, _) = watch::channel(states);
        let (events_tx, _) = broadcast::channel(256);
        Ok(Northbound {
            inner: Arc::new(Inner {
                upstreams,
                timeout: cfg.timeout,
                poll_interval: cfg.poll_interval,
                state_tx,
                events_tx,
                modules: Mutex::new(BTreeMap::new()),
                commits: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// Daemon states, updated as they change.
    pub fn states(&self) -> watch::Receiver<StateMap> {
        self.inner.state_tx.subscribe()
    }

    /// Configuration changes seen by the pollers.
    pub fn events(&self) -> broadcast::Receiver<NorthboundEvent> {
        self.inner.events_tx.subscribe()
    }

    /// Records a daemon's state, logging transitions.
    pub fn set_state(&self, daemon: &str, state: String) {
        self.inner.state_tx.send_if_modified(|m| {
            let old = m.insert(daemon.to_string(), state.clone());
            let changed = old.as_deref() != Some(state.as_str());
            if changed {
                if state == "up" {
                    info!(daemon, "FRR northbound up");
                } else {
                    warn!(daemon, state = %state, "FRR northbound state changed");
                }
            }
            changed
        });
    }

    /// The configured daemons.
    pub fn daemons(&self) -> Vec<String> {
        self.inner.upstreams.keys().cloned().collect()
    }

    /// One daemon's endpoint.
    pub fn upstream(&self, daemon: &str) -> Option<&Upstream> {
        self.inner.upstreams.get(daemon)
    }

    /// The longest one call may take.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Modules each daemon reported in its last `GetCapabilities`.
    pub fn modules(&self) -> BTreeMap<String, Vec<String>> {
        self.inner.modules.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Notes that the proxy committed to `daemon` (so the next diff is
    /// attributed to it).
    pub fn note_commit(&self, daemon: &str) {
        if let Ok(mut c) = self.inner.commits.lock() {
            *c.entry(daemon.to_string()).or_default() += 1;
        }
    }

    fn commits(&self, daemon: &str) -> u64 {
        self.inner.commits.lock().map(|c| c.get(daemon).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// `GetCapabilities` of `daemon`, recording its modules.
    pub async fn capabilities(&self, daemon: &str) -> Result<pb::GetCapabilitiesResponse, Status> {
        let up = self.upstream(daemon).ok_or_else(|| Status::not_found(format!("no endpoint for {daemon}")))?;
        let mut c = up.client.clone();
        let caps = with_timeout(self.inner.timeout, daemon, "GetCapabilities", async {
            c.get_capabilities(pb::GetCapabilitiesRequest {}).await.map(|r| r.into_inner())
        })
        .await?;
        if let Ok(mut m) = self.inner.modules.lock() {
            m.insert(daemon.to_string(), caps.supported_modules.iter().map(|m| m.name.clone()).collect());
        }
        Ok(caps)
    }

    /// `Get` of `paths` (JSON); the data of every streamed response, in
    /// order. The timeout covers the whole stream.
    pub async fn get(
        &self,
        daemon: &str,
        kind: pb::get_request::DataType,
        paths: Vec<String>,
    ) -> Result<Vec<String>, Status> {
        let up = self.upstream(daemon).ok_or_else(|| Status::not_found(format!("no endpoint for {daemon}")))?;
        let mut c = up.client.clone();
        let req = pb::GetRequest {
            r#type: kind as i32,
            encoding: pb::Encoding::Json as i32,
            with_defaults: false,
            path: paths,
        };
        with_timeout(self.inner.timeout, daemon, "Get", async move {
            let mut stream = c.get(req).await?.into_inner();
            let mut out = Vec::new();
            while let Some(r) = stream.message().await? {
                out.push(r.data.map(|d| d.data).unwrap_or_default());
            }
            Ok(out)
        })
        .await
    }

    /// Starts one poller task per daemon; they run until the process ends.
    pub fn spawn_pollers(&self) {
        for daemon in self.daemons() {
            let nb = self.clone();
            tokio::spawn(async move { nb.poll_forever(daemon).await });
        }
    }

    async fn poll_forever(self, daemon: String) {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times();
        let mut backoff = builder.build();
        let mut last: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        loop {
            let (was_up, why) = self.session(&daemon, &mut last).await;
            if was_up {
                // A session that got going resets the backoff.
                backoff = builder.build();
            }
            self.set_state(&daemon, format!("down: {why}"));
            let delay = backoff.next().unwrap_or(Duration::from_secs(30));
            debug!(daemon = %daemon, ?delay, "FRR northbound: retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection's life: capabilities, a Subscribe attempt, then polls
    /// until something fails. Returns whether it got up, and why it ended.
    async fn session(&self, daemon: &str, last: &mut BTreeMap<String, BTreeSet<String>>) -> (bool, String) {
        let caps = match self.capabilities(daemon).await {
            Ok(c) => c,
            Err(e) => return (false, reason(&e)),
        };
        info!(
            daemon,
            frr_version = %caps.frr_version,
            modules = caps.supported_modules.len(),
            "FRR northbound: capabilities"
        );
        let mut paths = poll_paths(&caps.supported_modules.iter().map(|m| m.name.clone()).collect::<Vec<_>>());
        self.try_subscribe(daemon, &paths).await;
        self.set_state(daemon, "up".into());
        let mut seen_commits = self.commits(daemon);
        loop {
            // FRR 8.4 answers a path without configuration with the whole
            // tree, so the paths' lines are merged and diffed once.
            let mut lines = BTreeSet::new();
            let mut failed = None;
            let mut dropped = Vec::new();
            for path in &paths {
                match self.get(daemon, pb::get_request::DataType::Config, vec![path.clone()]).await {
                    Ok(data) => match flatten_all(&data) {
                        Ok(l) => lines.extend(l),
                        Err(e) => {
                            failed = Some(format!("Get {path}: {e}"));
                            break;
                        }
                    },
                    // A module the daemon lists but cannot answer for.
                    Err(e) if matches!(e.code(), Code::InvalidArgument | Code::NotFound) => {
                        warn!(daemon, path = %path, error = %reason(&e), "FRR northbound: path not pollable; dropped");
                        dropped.push(path.clone());
                    }
                    Err(e) => {
                        failed = Some(format!("Get {path}: {}", reason(&e)));
                        break;
                    }
                }
            }
            paths.retain(|p| !dropped.contains(p));
            if let Some(why) = failed {
                return (true, why);
            }
            let commits = self.commits(daemon);
            if let Some(prev) = last.get(daemon) {
                self.report_diff(daemon, &paths.join(" "), prev, &lines, commits != seen_commits);
            }
            seen_commits = commits;
            last.insert(daemon.to_string(), lines);
            // The proxy may have marked it down meanwhile; it answers again.
            self.set_state(daemon, "up".into());
            if paths.is_empty() {
                // Nothing to poll: stay alive on capabilities alone.
                if let Err(e) = self.capabilities(daemon).await {
                    return (true, reason(&e));
                }
            }
            tokio::time::sleep(self.inner.poll_interval).await;
        }
    }

    async fn try_subscribe(&self, daemon: &str, paths: &[String]) {
        let Some(up) = self.upstream(daemon) else { return };
        let mut c = up.client.clone();
        let req = pb::SubscribeRequest {
            request: Some(pb::subscribe_request::Request::Subscribe(pb::SubscriptionList {
                subscriptions: paths
                    .iter()
                    .map(|p| pb::Subscription {
                        path: p.clone(),
                        action: "subscribe".into(),
                        stream_mode: "on_change".into(),
                        sample_interval: 0,
                    })
                    .collect(),
            })),
        };
        match with_timeout(self.inner.timeout, daemon, "Subscribe", async { c.subscribe(req).await }).await {
            Err(e) if e.code() == Code::Unimplemented => {
                info!(daemon, interval = ?self.inner.poll_interval, "FRR northbound: no Subscribe; polling Get")
            }
            Err(e) => debug!(daemon, error = %reason(&e), "FRR northbound: Subscribe failed; polling Get"),
            Ok(_) => {
                info!(daemon, "FRR northbound: Subscribe accepted (no update stream in this contract); polling Get")
            }
        }
    }

    fn report_diff(&self, daemon: &str, path: &str, prev: &BTreeSet<String>, now: &BTreeSet<String>, via_proxy: bool) {
        if prev == now {
            return;
        }
        let added: Vec<String> = now.difference(prev).take(MAX_EVENT_LINES).cloned().collect();
        let removed: Vec<String> = prev.difference(now).take(MAX_EVENT_LINES).cloned().collect();
        if via_proxy {
            info!(daemon, path, ?added, ?removed, "FRR configuration changed (the proxy committed meanwhile)");
        } else {
            warn!(daemon, path, ?added, ?removed, "FRR configuration changed outside routeguard");
        }
        let _ = self.inner.events_tx.send(NorthboundEvent {
            daemon: daemon.into(),
            path: path.into(),
            added,
            removed,
            via_proxy,
        });
    }
}

/// Top-level configuration containers of the modules a daemon lists.
pub fn poll_paths(modules: &[String]) -> Vec<String> {
    let known = [
        ("frr-interface", "/frr-interface:lib"),
        ("frr-vrf", "/frr-vrf:lib"),
        ("frr-routing", "/frr-routing:routing"),
        ("frr-route-map", "/frr-route-map:lib"),
        ("frr-filter", "/frr-filter:lib"),
    ];
    known.iter().filter(|(m, _)| modules.iter().any(|x| x == m)).map(|(_, p)| p.to_string()).collect()
}

/// Every response's JSON flattened into `path = value` lines.
pub fn flatten_all(data: &[String]) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    for d in data {
        if d.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(d).map_err(|e| format!("answer is not JSON: {e}"))?;
        flatten("", &v, &mut out);
    }
    Ok(out)
}

/// Flattens a JSON data tree. List entries are named by their scalar
/// members (close to YANG list keys) instead of their index, so inserting
/// one entry does not show every later entry as changed.
pub fn flatten(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                flatten(&format!("{prefix}/{k}"), child, out);
            }
        }
        Value::Array(a) => {
            for child in a {
                let label = match child {
                    Value::Object(m) => m
                        .iter()
                        .filter(|(_, v)| !v.is_object() && !v.is_array())
                        .map(|(k, v)| {
                            format!("[{k}={}]", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                        })
                        .collect::<String>(),
                    other => format!("[{}]", other),
                };
                flatten(&format!("{prefix}{label}"), child, out);
            }
        }
        other => {
            out.insert(format!("{prefix} = {}", other));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_changes_become_watch_events() {
        let e = NorthboundEvent {
            daemon: "staticd".into(),
            path: "/frr-routing:routing".into(),
            added: vec!["/a = 1".into()],
            removed: vec!["/b = 2".into()],
            via_proxy: false,
        };
        let a = e.applied();
        assert_eq!((a.kind, a.op), ("frr_config", "changed_elsewhere"));
        assert_eq!(a.key, "staticd /frr-routing:routing: +/a = 1; -/b = 2");
        assert_eq!(NorthboundEvent { via_proxy: true, ..e }.applied().op, "committed");
    }

    #[test]
    fn flattening_names_list_entries_by_their_keys() {
        let a = r#"{"r":{"route-list":[{"prefix":"p1","nh":{"gw":"g1"}}]}}"#;
        let b = r#"{"r":{"route-list":[{"prefix":"p0","nh":{"gw":"g0"}},{"prefix":"p1","nh":{"gw":"g1"}}]}}"#;
        let la = flatten_all(&[a.into()]).unwrap();
        let lb = flatten_all(&[b.into()]).unwrap();
        let added: Vec<_> = lb.difference(&la).collect();
        assert_eq!(
            added,
            vec![r#"/r/route-list[prefix=p0]/nh/gw = "g0""#, r#"/r/route-list[prefix=p0]/prefix = "p0""#]
        );
        assert!(la.is_subset(&lb));
        assert!(flatten_all(&["garbage".into()]).is_err());
    }

    #[test]
    fn poll_paths_follow_the_modules() {
        let m: Vec<String> = ["frr-staticd", "frr-routing", "frr-interface"].iter().map(|s| s.to_string()).collect();
        assert_eq!(poll_paths(&m), vec!["/frr-interface:lib", "/frr-routing:routing"]);
    }

    #[tokio::test]
    async fn unreachable_daemon_is_a_state_not_a_crash() {
        let cfg = NorthboundConfig {
            staticd: Some("http://127.0.0.1:9".into()),
            timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let nb = Northbound::new(&cfg).unwrap();
        let mut rx = nb.states();
        assert_eq!(rx.borrow().get("staticd").map(String::as_str), Some("connecting"));
        nb.spawn_pollers();
        let state = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                rx.changed().await.unwrap();
                let s = rx.borrow().get("staticd").cloned().unwrap_or_default();
                if s.starts_with("down: ") {
                    return s;
                }
            }
        })
        .await
        .expect("state turns down");
        assert!(state.starts_with("down: "), "{state}");
    }
}
