//! The core task: the single owner of the [`Model`].
//!
//! ```text
//!  netlink monitor thread ──MonitorMsg──┐
//!  dump (blocking task)   ──DumpMsg─────┤
//!  sock_diag poller       ──Change──────┼──> Core::run ──> ModelEvent (broadcast)
//!  sysctl reader          ──Change──────┤         │
//!  API (Query + oneshot)  ──Query───────┘         └──> ready (watch)
//! ```
//!
//! The core never awaits I/O: dumps, /proc reads and sock_diag polls run on
//! blocking threads and come back as messages. Readers ask questions with
//! [`Query`] messages answered between batches; cloning a million-route
//! model for snapshot readers would cost more than it saves.
//!
//! Staleness: the model is stale until the first dump completes and from a
//! netlink overrun until the re-dump that it triggers completes. During a
//! re-dump the notification queue is not read (the monitor thread keeps
//! draining the kernel into the channel); it is replayed after the dump,
//! which is what makes "subscribe, then dump" gap-free.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::kernel::{dump, monitor, sockdiag, sysctl};
use crate::model::{Applied, Change, Model, Resolved};

/// Capacity of the channel from the monitor thread, in datagrams.
const MONITOR_QUEUE: usize = 4096;

/// A question for the core, answered through its oneshot.
pub enum Query {
    /// Status counters.
    Status {
        /// Whether to compute the (O(model)) digest.
        digest: bool,
        /// Reply.
        reply: oneshot::Sender<StatusInfo>,
    },
    /// Longest-prefix match.
    Lookup {
        /// Address to match.
        addr: IpAddr,
        /// Table id.
        table: u32,
        /// Reply: the route with members and interface names.
        reply: oneshot::Sender<Option<LookupResult>>,
    },
    /// Objects of one kind as JSON.
    Show {
        /// links, addresses, anycast, routes, nexthops, rules, sockets, sysctls.
        kind: String,
        /// At most this many objects.
        limit: usize,
        /// Reply, or an error naming the unknown kind.
        reply: oneshot::Sender<Result<Vec<Value>, String>>,
    },
}

/// The kinds `Show` accepts.
pub const SHOW_KINDS: &[&str] = &["links", "addresses", "anycast", "routes", "nexthops", "rules", "sockets", "sysctls"];

/// Answer to [`Query::Status`].
#[derive(Clone, Debug, Serialize)]
pub struct StatusInfo {
    /// Objects per kind.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Model may be missing changes.
    pub stale: bool,
    /// Netlink overruns seen.
    pub overruns: u64,
    /// Completed re-dumps after the first.
    pub resyncs: u64,
    /// Changes applied.
    pub events_applied: u64,
    /// Model digest, if asked for.
    pub digest: Option<String>,
    /// Tracked sysctls by name.
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// Duration of the last dump.
    pub last_dump: Duration,
}

/// Answer to [`Query::Lookup`].
#[derive(Clone, Debug, Serialize)]
pub struct LookupResult {
    /// Route and resolved members.
    pub resolved: Resolved,
    /// Interface names of the members, in member order.
    pub ifnames: Vec<String>,
}

/// A change applied to the model, as streamed to watchers.
#[derive(Clone, Debug, Serialize)]
pub struct ModelEvent {
    /// Sequence number.
    pub seq: u64,
    /// What changed.
    #[serde(flatten)]
    pub applied: Applied,
}

/// Settings the core needs.
#[derive(Clone, Debug)]
pub struct CoreSettings {
    /// Netlink receive buffer for the monitor and dumps.
    pub netlink_rcvbuf: usize,
    /// sock_diag poll period.
    pub sock_poll_interval: Duration,
    /// /proc/sys poll period.
    pub sysctl_poll_interval: Duration,
    /// Root of the sysctl tree (normally /proc/sys).
    pub proc_sys: PathBuf,
}

/// Handles for talking to a running core.
#[derive(Clone)]
pub struct CoreHandle {
    /// Queries.
    pub query_tx: mpsc::Sender<Query>,
    /// Applied changes.
    pub events_tx: broadcast::Sender<ModelEvent>,
    /// Becomes true after the first complete dump.
    pub ready_rx: watch::Receiver<bool>,
    /// Monitor counters.
    pub monitor_stats: Arc<monitor::MonitorStats>,
}

enum DumpMsg {
    Batch(Vec<Change>),
    Done(std::io::Result<dump::DumpReport>),
}

/// The core's state.
pub struct Core {
    model: Model,
    settings: CoreSettings,
    stale: bool,
    /// The model being built by an ongoing dump.
    building: Option<Model>,
    resyncs: u64,
    overruns: u64,
    events_applied: u64,
    seq: u64,
    last_dump: Duration,
    dump_failures: usize,
    ever_dumped: bool,
    events_tx: broadcast::Sender<ModelEvent>,
    ready_tx: watch::Sender<bool>,
    dump_tx: mpsc::Sender<DumpMsg>,
    poll_tx: mpsc::Sender<Change>,
    scratch: Vec<Applied>,
}

/// Starts the monitor (subscribing before anything is dumped) and the core
/// task. Returns once the monitor socket is open; the first dump runs in
/// the background and `ready_rx` flips when it completes.
pub fn start(settings: CoreSettings) -> std::io::Result<CoreHandle> {
    let (mon_tx, mon_rx) = mpsc::channel(MONITOR_QUEUE);
    let stats = Arc::new(monitor::MonitorStats::default());
    monitor::spawn(settings.netlink_rcvbuf, mon_tx, stats.clone())?;
    let (query_tx, query_rx) = mpsc::channel(256);
    let (events_tx, _) = broadcast::channel(8192);
    let (ready_tx, ready_rx) = watch::channel(false);
    let (dump_tx, dump_rx) = mpsc::channel(64);
    let (poll_tx, poll_rx) = mpsc::channel(16);
    let core = Core {
        model: Model::default(),
        settings,
        stale: true,
        building: None,
        resyncs: 0,
        overruns: 0,
        events_applied: 0,
        seq: 0,
        last_dump: Duration::ZERO,
        dump_failures: 0,
        ever_dumped: false,
        events_tx: events_tx.clone(),
        ready_tx,
        dump_tx,
        poll_tx,
        scratch: Vec::new(),
    };
    tokio::spawn(core.run(mon_rx, dump_rx, query_rx, poll_rx));
    Ok(CoreHandle { query_tx, events_tx, ready_rx, monitor_stats: stats })
}

impl Core {
    async fn run(
        mut self,
        mut mon_rx: mpsc::Receiver<monitor::MonitorMsg>,
        mut dump_rx: mpsc::Receiver<DumpMsg>,
        mut query_rx: mpsc::Receiver<Query>,
        mut poll_rx: mpsc::Receiver<Change>,
    ) {
        self.start_dump();
        let mut sock_tick = tokio::time::interval(self.settings.sock_poll_interval);
        let mut sysctl_tick = tokio::time::interval(self.settings.sysctl_poll_interval);
        sock_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sysctl_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sock_poll_busy = false;
        loop {
            tokio::select! {
                biased;
                q = query_rx.recv() => match q {
                    Some(q) => self.answer(q),
                    None => { info!("query channel closed; core stops"); return; }
                },
                Some(msg) = dump_rx.recv() => self.process_dump(msg),
                msg = mon_rx.recv(), if self.building.is_none() => match msg {
                    Some(monitor::MonitorMsg::Changes(changes)) => self.apply_all(changes),
                    Some(monitor::MonitorMsg::Overrun) => {
                        self.overruns += 1;
                        warn!(overruns = self.overruns, "netlink overrun: notifications lost, model stale until re-dump");
                        self.stale = true;
                        self.start_dump();
                    }
                    None => { warn!("netlink monitor stopped; core stops"); return; }
                },
                Some(change) = poll_rx.recv() => {
                    if matches!(change, Change::Sockets(_)) { sock_poll_busy = false; }
                    self.apply_all(vec![change]);
                }
                _ = sock_tick.tick() => {
                    if !sock_poll_busy {
                        sock_poll_busy = true;
                        self.spawn_sock_poll();
                    }
                }
                _ = sysctl_tick.tick() => self.spawn_sysctl_read(),
            }
        }
    }

    fn start_dump(&mut self) {
        if self.building.is_some() {
            return;
        }
        self.building = Some(Model::default());
        let tx = self.dump_tx.clone();
        let rcvbuf = self.settings.netlink_rcvbuf;
        // Retries back off exponentially after failures; the first attempt
        // and the first retry after a success run at once.
        let delay = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times()
            .build()
            .nth(self.dump_failures.saturating_sub(1))
            .filter(|_| self.dump_failures > 0)
            .unwrap_or(Duration::ZERO);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let batch_tx = tx.clone();
            let result = tokio::task::spawn_blocking(move || {
                dump::dump_all(rcvbuf, |batch| {
                    // A closed channel means the core is gone; nothing to do.
                    let _ = batch_tx.blocking_send(DumpMsg::Batch(batch));
                })
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("dump task failed: {e}"))));
            let _ = tx.send(DumpMsg::Done(result)).await;
        });
    }

    fn process_dump(&mut self, msg: DumpMsg) {
        let Some(building) = self.building.as_mut() else {
            return;
        };
        match msg {
            DumpMsg::Batch(changes) => {
                let mut sink = Vec::new();
                for c in changes {
                    building.apply(c, &mut sink);
                }
            }
            DumpMsg::Done(Ok(report)) => {
                let mut fresh = self.building.take().unwrap_or_default();
                // Not part of a netlink dump: carry over, then refresh.
                fresh.sockets = std::mem::take(&mut self.model.sockets);
                let netconf_fwd = (fresh.sysctls.forwarding_v4.clone(), fresh.sysctls.forwarding_v6.clone());
                fresh.sysctls = self.model.sysctls.clone();
                fresh.sysctls.forwarding_v4 = netconf_fwd.0;
                fresh.sysctls.forwarding_v6 = netconf_fwd.1;
                self.model = fresh;
                self.stale = false;
                self.dump_failures = 0;
                self.last_dump = report.elapsed;
                if self.ever_dumped {
                    self.resyncs += 1;
                }
                self.ever_dumped = true;
                info!(
                    elapsed_ms = report.elapsed.as_millis() as u64,
                    messages = report.messages,
                    routes_v4 = self.model.routes.count_v4(),
                    routes_v6 = self.model.routes.count_v6(),
                    links = self.model.links.len(),
                    decode_errors = report.decode_errors,
                    interrupted = report.interrupted,
                    unsupported = ?report.unsupported,
                    resyncs = self.resyncs,
                    "kernel dump complete"
                );
                self.publish(Applied { kind: "model", op: "resync", key: "full dump".into() });
                self.spawn_sysctl_read();
                self.ready_tx.send_replace(true);
            }
            DumpMsg::Done(Err(e)) => {
                self.building = None;
                self.dump_failures += 1;
                warn!(error = %e, failures = self.dump_failures, "kernel dump failed; retrying");
                self.start_dump();
            }
        }
    }

    fn apply_all(&mut self, changes: Vec<Change>) {
        let mut applied = std::mem::take(&mut self.scratch);
        for c in changes {
            self.model.apply(c, &mut applied);
        }
        self.events_applied += applied.len() as u64;
        for a in applied.drain(..) {
            self.publish(a);
        }
        self.scratch = applied;
    }

    fn publish(&mut self, applied: Applied) {
        self.seq += 1;
        if self.events_tx.receiver_count() > 0 {
            debug!(kind = applied.kind, op = applied.op, key = %applied.key, "model change");
            // A lagging watcher loses events and is told so by broadcast.
            let _ = self.events_tx.send(ModelEvent { seq: self.seq, applied });
        }
    }

    fn spawn_sock_poll(&self) {
        let tx = self.poll_tx.clone();
        tokio::spawn(async move {
            match tokio::task::spawn_blocking(sockdiag::established_tcp).await {
                Ok(Ok(list)) => {
                    let _ = tx.send(Change::Sockets(list)).await;
                }
                Ok(Err(e)) => warn!(error = %e, "sock_diag poll failed"),
                Err(e) => warn!(error = %e, "sock_diag task failed"),
            }
        });
    }

    fn spawn_sysctl_read(&self) {
        let names: HashMap<String, u32> = self.model.links.values().map(|l| (l.name.clone(), l.ifindex)).collect();
        let root = self.settings.proc_sys.clone();
        let tx = self.poll_tx.clone();
        tokio::spawn(async move {
            if let Ok(s) = tokio::task::spawn_blocking(move || sysctl::read(&root, &names)).await {
                let _ = tx.send(Change::Sysctls(s)).await;
            }
        });
    }

    fn answer(&mut self, q: Query) {
        match q {
            Query::Status { digest, reply } => {
                let _ = reply.send(StatusInfo {
                    counts: self.model.counts(),
                    stale: self.stale,
                    overruns: self.overruns,
                    resyncs: self.resyncs,
                    events_applied: self.events_applied,
                    digest: digest.then(|| self.model.digest()),
                    sysctls: self.model.sysctl_map(),
                    last_dump: self.last_dump,
                });
            }
            Query::Lookup { addr, table, reply } => {
                let r = self.model.lookup(table, addr).map(|resolved| {
                    let ifnames = resolved.members.iter().map(|m| self.model.ifname(m.ifindex)).collect();
                    LookupResult { resolved, ifnames }
                });
                let _ = reply.send(r);
            }
            Query::Show { kind, limit, reply } => {
                let _ = reply.send(show(&self.model, &kind, limit));
            }
        }
    }
}

/// Renders model objects of one kind as JSON values.
pub fn show(model: &Model, kind: &str, limit: usize) -> Result<Vec<Value>, String> {
    let out: Vec<Value> = match kind {
        "links" => model.links.values().take(limit).map(to_json).collect(),
        "addresses" => model
            .addresses
            .values()
            .take(limit)
            .map(|a| {
                let mut v = to_json(a);
                v["ifname"] = json!(model.ifname(a.key.ifindex));
                v["tentative"] = json!(a.tentative());
                v["dadfailed"] = json!(a.dad_failed());
                v
            })
            .collect(),
        "anycast" => model
            .anycast
            .iter()
            .take(limit)
            .map(|a| json!({"ifindex": a.ifindex, "ifname": model.ifname(a.ifindex), "address": a.address}))
            .collect(),
        "routes" => model.routes.iter().take(limit).map(|r| to_json(&r)).collect(),
        "nexthops" => model.nexthops.values().take(limit).map(to_json).collect(),
        "rules" => model.rules.iter().take(limit).map(to_json).collect(),
        "sockets" => {
            let mut v: Vec<_> = model.sockets.values().collect();
            v.sort_by_key(|s| s.key());
            v.into_iter().take(limit).map(to_json).collect()
        }
        "sysctls" => model.sysctl_map().into_iter().take(limit).map(|(k, v)| json!({"name": k, "value": v})).collect(),
        other => return Err(format!("unknown kind `{other}`; expected one of {}", SHOW_KINDS.join(", "))),
    };
    Ok(out)
}

fn to_json<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}
