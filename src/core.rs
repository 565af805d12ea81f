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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use backon::BackoffBuilder;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::frr::vtysh::Vtysh;
use crate::hazards::{self, Context, Detector, Finding, KernelFacts, Severity};
use crate::journal::{Journal, Record};
use crate::kernel::{dump, monitor, route_get, sockdiag, syn_observer, sysctl, writer};
use crate::metrics::{FindingLabel, KindLabel, Metrics, VerdictLabel};
use crate::model::flows::{Flow, FlowKey, FlowTable, MemberId, Observation};
use crate::model::peers::{self, Peer, PeerView};
use crate::model::{Applied, Change, Model, Resolved, SocketPolls};
use crate::policy::intent::Intent;
use crate::policy::Staging;
use crate::policy::{self, Decision, HazardsConfig, OnTimeout, Verdict};
use crate::selftest::{self, SelftestReport};

/// Capacity of the channel from the monitor thread, in datagrams.
const MONITOR_QUEUE: usize = 4096;

/// A question for the core, answered through its oneshot.
pub enum Query {
    /// An event from outside the kernel model for `WatchEvents` (FRR
    /// configuration changes the northbound poller saw); no reply.
    Publish {
        /// The event.
        applied: Applied,
    },
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
    /// Current findings.
    Findings {
        /// Reply: findings and whether the model is stale.
        reply: oneshot::Sender<(Vec<Finding>, bool)>,
    },
    /// The flow inventory.
    Flows {
        /// Only armed flows.
        at_risk: bool,
        /// Reply: flows and the kernel facts they were judged with.
        reply: oneshot::Sender<(Vec<FlowView>, KernelFacts)>,
    },
    /// Dry run.
    Evaluate {
        /// The change.
        intent: Intent,
        /// Reply.
        reply: oneshot::Sender<Decision>,
    },
    /// Judge and act.
    Propose {
        /// The change.
        ask: ChangeAsk,
        /// Reply, sent once the change was applied, held or refused.
        reply: oneshot::Sender<ProposeOutcome>,
    },
    /// How the guard reaches vtysh (for diffing a whole FRR configuration).
    FrrAccess {
        /// Reply.
        reply: oneshot::Sender<Vtysh>,
    },
    /// Held changes.
    Pending {
        /// Reply.
        reply: oneshot::Sender<Vec<PendingView>>,
    },
    /// Apply a held or vetoed change now, despite its findings.
    Approve {
        /// Change id.
        id: u64,
        /// Who (audit log).
        who: String,
        /// Why (required, audit log).
        reason: String,
        /// Reply once applied (or refused): the outcome.
        reply: oneshot::Sender<Result<ProposeOutcome, String>>,
    },
    /// Drop a held change.
    Cancel {
        /// Change id.
        id: u64,
        /// Who (audit log).
        who: String,
        /// Why (may be empty).
        reason: String,
        /// Reply: what was cancelled, or why not.
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The journal's entries (decisions, approvals, cancels, outcomes),
    /// optionally of one change only.
    History {
        /// Only this change.
        id: Option<u64>,
        /// Without `id`: at most this many (the newest) entries.
        limit: usize,
        /// Reply.
        reply: oneshot::Sender<Result<Vec<crate::journal::Entry>, String>>,
    },
    /// New hazard policies and FRR access (SIGHUP reload).
    Reconfigure {
        /// Hazard policies.
        hazards: HazardsConfig,
        /// vtysh access.
        vtysh: Vtysh,
        /// Reply once applied.
        reply: oneshot::Sender<()>,
    },
    /// BGP peers and where the kernel reaches them.
    Peers {
        /// Reply: peers and FRR's state.
        reply: oneshot::Sender<(Vec<PeerView>, String)>,
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

/// A proposed change: what is asked and who asks.
pub struct ChangeAsk {
    /// The change.
    pub intent: Intent,
    /// Who asks (audit log).
    pub requester: String,
    /// Applies the change instead of the kernel writer (the FRR northbound
    /// proxy forwards the commit it judged); `None` for the writer.
    pub apply_via: Option<ApplyVia>,
    /// How to apply it after a restart, journaled with a held change
    /// (`apply_via` lives in memory only).
    pub recipe: Option<crate::frr::proxy::HeldCommit>,
}

/// Applies a change some other way than the kernel writer. Called with
/// `true` when the change was held and is now released, `false` when it is
/// applied at once; returns what was done, or why it failed.
pub type ApplyVia = Arc<
    dyn Fn(bool) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>> + Send + Sync,
>;

/// What `Propose` did.
#[derive(Clone, Debug, Serialize)]
pub struct ProposeOutcome {
    /// The decision.
    pub decision: Decision,
    /// Change id (0 when nothing was recorded, i.e. a veto).
    pub change_id: u64,
    /// applied, pending, vetoed or failed.
    pub outcome: &'static str,
    /// Details (errors, what a pending change waits for).
    pub message: String,
}

/// One flow as listed, with its verdict.
#[derive(Clone, Debug, Serialize)]
pub struct FlowView {
    /// The flow.
    #[serde(flatten)]
    pub flow: Flow,
    /// Whether the next invalidation moves it.
    pub armed: bool,
    /// Interface names of the members, in member order.
    pub ifnames: Vec<String>,
}

/// A change held by a delay or a stage plan.
#[derive(Clone, Debug, Serialize)]
pub struct PendingView {
    /// Id.
    pub id: u64,
    /// The change.
    pub intent: Intent,
    /// delay or stage.
    pub verdict: &'static str,
    /// What it waits for now.
    pub state: String,
    /// Seconds since it was proposed.
    pub age_seconds: u64,
    /// Seconds left before `max_delay` passes.
    pub deadline_seconds: u64,
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
    /// Self-test state: disabled, running, done, failed: ...
    pub selftest: String,
    /// Held changes.
    pub pending: usize,
    /// Flows the next invalidation would move.
    pub armed_flows: usize,
    /// FRR: up, or why not.
    pub frr_state: String,
    /// Latest remediations (newest last).
    pub remediations: Vec<String>,
    /// The forwarding reflex: off, idle, armed: IF, ..., or stopped.
    pub forwarding_reflex: String,
    /// Current findings per `hazard/severity`.
    pub findings: BTreeMap<String, u64>,
    /// Verdicts issued since start, per kind.
    pub verdicts: BTreeMap<String, u64>,
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
    /// Hazard policies.
    pub hazards: HazardsConfig,
    /// Self-test at start, and where its result is cached.
    pub selftest: Option<SelftestSettings>,
    /// Watch outgoing SYNs to learn which member new flows use.
    pub observe_syns: bool,
    /// How to reach FRR's vtysh.
    pub vtysh: Vtysh,
    /// How often FRR's BGP neighbors are read.
    pub frr_poll_interval: Duration,
    /// Directory of the change journal (`state_dir`); `None` keeps no
    /// journal (the one-shot audit, which changes nothing).
    pub journal_dir: Option<PathBuf>,
    /// Where to record metrics.
    pub metrics: Arc<Metrics>,
    /// FRR's northbound daemons, when configured: how commits the proxy
    /// held before a restart are committed once released.
    pub northbound: Option<crate::frr::proxy::Upstreams>,
}

/// How the daemon runs its self-test.
#[derive(Clone, Debug)]
pub struct SelftestSettings {
    /// Connections per probe.
    pub connections: u32,
    /// Cache file (per boot and kernel).
    pub cache: PathBuf,
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
    /// The current findings, republished when they change.
    pub findings_rx: watch::Receiver<Vec<Finding>>,
    /// Every change-journal entry as it is written (`WatchChange`).
    pub changes_tx: broadcast::Sender<crate::journal::Entry>,
}

/// The core has stopped (the daemon is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("routeguard core is shutting down")]
pub struct CoreGone;

impl CoreHandle {
    /// Sends a query built around a fresh reply channel and awaits the answer.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, CoreGone> {
        let (tx, rx) = oneshot::channel();
        self.query_tx.send(make(tx)).await.map_err(|_| CoreGone)?;
        rx.await.map_err(|_| CoreGone)
    }
}

/// Inputs from the blocking helpers and writer tasks.
enum Input {
    Change(Change),
    Tcp(SockPoll),
    /// More of the socket backlog to apply (sent by the core to itself, so
    /// that queries are answered between the chunks).
    Continue,
    Predictions(Vec<(FlowKey, Option<MemberId>)>),
    Syn(Observation),
    Selftest(Result<SelftestReport, String>),
    /// A writer task finished applying change `id`.
    Done {
        id: u64,
        result: Result<String, String>,
        /// Whether the apply could have touched the hairpin reflection
        /// filters (a hairpin change, or a reflection-filter stage).
        touched_filters: bool,
    },
    /// FRR's BGP neighbors, or why they could not be read, and how long
    /// the poll took.
    FrrPeers(Result<Vec<Peer>, String>, Duration),
    /// The guard's hairpin reflection filters as nftables has them.
    HairpinFilters(Result<BTreeSet<String>, String>),
    /// A hairpin filter was installed (or removed) after the fact.
    HairpinRemediated {
        port: String,
        install: bool,
        latency: Duration,
        result: Result<(), String>,
    },
    /// A remediation finished.
    Remediated {
        ifaces: Vec<String>,
        latency: Duration,
        result: Result<(), String>,
        /// `reflex` (the fast path) or `core`.
        by: &'static str,
    },
}

/// A socket poll as the core receives it.
#[derive(Default)]
struct SockPoll {
    /// Local ports with a listener (`None`: the poll failed).
    listening: Option<BTreeSet<u16>>,
    /// What changed since the previous poll (`None`: nothing, or failed).
    delta: Option<Change>,
}

/// Vetoed proposals kept for `approve` (also across restarts).
use crate::journal::MAX_VETOED;

/// The journal record of a change about to be held.
fn held_record(id: u64, ask: &ChangeAsk, plan: Plan, deadline_ms: u64, on_timeout: OnTimeout) -> Record {
    let (plan, fields) = match plan {
        Plan::Delay => ("delay", None),
        Plan::StageHashFields(f) => ("stage_hash_fields", Some(f)),
        Plan::StageResilient => ("stage_resilient", None),
    };
    Record::Held {
        change_id: id,
        intent: ask.intent.clone(),
        plan: plan.into(),
        fields,
        deadline_ms,
        on_timeout: match on_timeout {
            OnTimeout::Apply => "apply".into(),
            OnTimeout::Expire => "expire".into(),
        },
        requester: ask.requester.clone(),
        northbound: ask.recipe.clone(),
    }
}

/// Held changes to resume from a replayed journal. A change whose apply
/// had begun rolls forward: it is held again and judged again before it
/// applies (every apply replaces or writes a value, so repeating it is
/// harmless).
///
/// A commit held by the northbound proxy is applied the way the proxy
/// would have: its journaled edits are replayed into a fresh candidate on
/// the daemon and committed ([`crate::frr::proxy::resumed_apply`]), never
/// through the kernel writer, which would bypass FRR.
fn resume_pending(
    r: &crate::journal::Replay,
    default_timeout: OnTimeout,
    northbound: Option<&crate::frr::proxy::Upstreams>,
) -> Vec<Pending> {
    let now = Instant::now();
    r.resume
        .iter()
        .filter_map(|(&id, res)| {
            let Record::Held { intent, plan, fields, on_timeout, requester, northbound: recipe, .. } = &res.held else {
                return None;
            };
            let apply_via = match recipe {
                Some(held) => Some(crate::frr::proxy::resumed_apply(northbound.cloned(), held.clone())),
                None if requester.starts_with(crate::frr::proxy::REQUESTER) => {
                    // Held by a routeguard that did not journal the edits yet.
                    let msg = format!(
                        "change {id} was held by a routeguard that did not journal the northbound edits; \
                         commit them again"
                    );
                    Some(Arc::new(move |_| {
                        let msg = msg.clone();
                        Box::pin(async move { Err(msg) })
                            as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
                    }) as ApplyVia)
                }
                None => None,
            };
            let plan = match (plan.as_str(), fields) {
                ("stage_hash_fields", Some(f)) => Plan::StageHashFields(*f),
                ("stage_resilient", _) if matches!(intent, Intent::RouteReplace(_)) => Plan::StageResilient,
                _ => Plan::Delay,
            };
            let on_timeout = match on_timeout.as_str() {
                "apply" => OnTimeout::Apply,
                "expire" => OnTimeout::Expire,
                _ => default_timeout,
            };
            let state = if res.was_applying {
                format!(
                    "resumed after a restart mid-apply ({} step(s) done): judged again before it applies",
                    res.steps.len()
                )
            } else {
                "resumed after a restart: waiting as before".to_string()
            };
            Some(Pending {
                id,
                ask: ChangeAsk {
                    intent: intent.clone(),
                    requester: requester.clone(),
                    apply_via,
                    recipe: recipe.clone(),
                },
                plan,
                since: now,
                deadline: now + res.remaining,
                on_timeout,
                applying: false,
                state,
            })
        })
        .collect()
}

/// A held change.
struct Pending {
    id: u64,
    ask: ChangeAsk,
    plan: Plan,
    since: Instant,
    deadline: Instant,
    on_timeout: OnTimeout,
    /// A writer task is applying it.
    applying: bool,
    state: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Apply once nothing would break.
    Delay,
    /// Once no IPv6 flow rides a multipath route: set the port-free hash,
    /// then apply.
    StageHashFields(u32),
    /// Once no local flow rides the changed route: install the change as
    /// a resilient nexthop group.
    StageResilient,
}

/// An unplanned kernel change that invalidated armed flows.
struct Exposure {
    cause: String,
    /// How many armed flows it invalidated.
    exposed: usize,
    /// Those of them still open as of the latest re-check.
    flows: Vec<FlowKey>,
    /// The first few of them (at most the detector's `MAX_EVIDENCE`).
    evidence: Vec<String>,
    /// How many of them were gone once the socket polls settled.
    died: Option<usize>,
    /// Socket polls since the exposure.
    polls: u8,
}

/// Socket polls during which the flows an exposure hit are re-counted.
const EXPOSURE_RECHECK_POLLS: u8 = 60;

/// Prediction rounds within which every flow is asked again even when
/// nothing the model sees changed (see `Core::spawn_predictions`).
const REPREDICT_ROUNDS: usize = 30;

/// Most flows asked about in one prediction round: bounds what the core
/// does when the answers come back (the next round starts at once).
const PREDICT_ROUND_MAX: usize = 16_384;

/// Most socket changes the core applies in one go; more (100k new sockets
/// at start) are applied in chunks with queries answered in between.
const SOCKET_CHUNK: usize = 4096;

/// Most exposures remembered.
const MAX_EXPOSURES: usize = 16;

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
    input_tx: mpsc::Sender<Input>,
    scratch: Vec<Applied>,
    flows: FlowTable,
    listening: BTreeSet<u16>,
    selftest: Option<SelftestReport>,
    selftest_state: String,
    predicting: bool,
    pending: BTreeMap<u64, Pending>,
    next_change_id: u64,
    /// The change journal (see [`crate::journal`]).
    journal: Option<Journal>,
    /// Recently vetoed proposals, which an operator may approve.
    vetoed: BTreeMap<u64, ChangeAsk>,
    /// Journal entries as written, for `WatchChange`.
    changes_tx: broadcast::Sender<crate::journal::Entry>,
    /// A socket poll has completed: until then an empty flow table means
    /// "not looked yet", not "no flows" (a change resumed at start waits).
    sockets_polled: bool,
    /// The previous socket polls, diffed on the polling thread.
    socket_polls: Arc<std::sync::Mutex<SocketPolls>>,
    /// Socket changes not applied yet, in chunks of `SOCKET_CHUNK`.
    socket_backlog: VecDeque<Change>,
    /// An `Input::Continue` is queued.
    continuing: bool,
    /// Notifications received during a dump, replayed after it.
    replay: Vec<(Vec<Change>, Instant)>,
    /// An overrun happened during the running dump: dump again.
    restart_dump: bool,
    exposures: VecDeque<Exposure>,
    findings_tx: watch::Sender<Vec<Finding>>,
    detectors: Vec<Box<dyn Detector>>,
    frr_peers: Vec<Peer>,
    frr_state: String,
    frr_polling: bool,
    /// Interfaces with a remediation in flight.
    remediating: BTreeSet<String>,
    /// The remediation's fast path (`None` without remediation, or when
    /// its socket could not be opened).
    reflex: Option<crate::kernel::reflex::Reflex>,
    /// Changes the guard is applying that write IPv6 forwarding: while
    /// any runs, neither the reflex nor the core remediates (the guard's
    /// own toggle is not "behind its back"); once it ends, what remains
    /// is remediated and reported as such.
    own_forwarding: BTreeSet<u64>,
    remediations: VecDeque<String>,
    verdicts: BTreeMap<String, u64>,
    finding_labels: BTreeSet<(String, String)>,
    /// Bridge ports with the guard's reflection filter.
    hairpin_filters: BTreeSet<String>,
    /// Ports with a filter change in flight (stage or remediation).
    hairpin_busy: BTreeSet<String>,
    /// How to apply changes that do not go through the kernel writer, by id.
    apply_via: HashMap<u64, ApplyVia>,
}

/// Starts the forwarding reflex when remediation is on (see
/// [`crate::kernel::reflex`]); its reactions reach the core as
/// `Input::Remediated`, like the core's own.
fn spawn_reflex(settings: &CoreSettings, input_tx: &mpsc::Sender<Input>) -> Option<crate::kernel::reflex::Reflex> {
    let policy = &settings.hazards.subnet_anycast;
    if !policy.remediate {
        return None;
    }
    let tx = input_tx.clone();
    let report = move |r: crate::kernel::reflex::Reaction| {
        let _ = tx.blocking_send(Input::Remediated {
            ifaces: r.ifaces,
            latency: r.latency,
            result: r.result,
            by: "reflex",
        });
    };
    match crate::kernel::reflex::Reflex::spawn(settings.proc_sys.clone(), policy.realtime_priority, report) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(error = %e, "forwarding reflex unavailable: the core remediates alone");
            None
        }
    }
}

/// Starts the monitor (subscribing before anything is dumped) and the core
/// task. Returns once the monitor socket is open; the first dump runs in
/// the background and `ready_rx` flips when it completes.
pub fn start(settings: CoreSettings) -> std::io::Result<CoreHandle> {
    // The journal first: a guard that cannot record its decisions must not
    // take any.
    let (journal, replayed) = match &settings.journal_dir {
        Some(dir) => {
            let (j, r) = Journal::open(dir).map_err(std::io::Error::other)?;
            (Some(j), r)
        }
        None => (None, crate::journal::Replay::default()),
    };
    let (mon_tx, mon_rx) = mpsc::channel(MONITOR_QUEUE);
    let stats = Arc::new(monitor::MonitorStats::default());
    monitor::spawn(settings.netlink_rcvbuf, mon_tx, stats.clone())?;
    let (query_tx, query_rx) = mpsc::channel(256);
    let (events_tx, _) = broadcast::channel(8192);
    let (ready_tx, ready_rx) = watch::channel(false);
    let (dump_tx, dump_rx) = mpsc::channel(64);
    let (input_tx, input_rx) = mpsc::channel(1024);
    let (findings_tx, findings_rx) = watch::channel(Vec::new());
    let (changes_tx, _) = broadcast::channel(1024);
    if settings.observe_syns {
        let (syn_tx, mut syn_rx) = mpsc::channel(4096);
        match syn_observer::spawn(syn_tx) {
            Ok(handle) => {
                let tx = input_tx.clone();
                tokio::spawn(async move {
                    let _keep = handle;
                    while let Some(s) = syn_rx.recv().await {
                        let obs = Observation { local: s.local, remote: s.remote, ifindex: s.ifindex };
                        if tx.send(Input::Syn(obs)).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => warn!(error = %e, "SYN observer unavailable: flows' current members stay unknown"),
        }
    }
    let selftest_state = if settings.selftest.is_some() { "running" } else { "disabled" };
    let reflex = spawn_reflex(&settings, &input_tx);
    let resumed = resume_pending(&replayed, settings.hazards.ecmp_rehash.on_timeout, settings.northbound.as_ref());
    let mut core = Core {
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
        input_tx,
        scratch: Vec::new(),
        flows: FlowTable::default(),
        listening: BTreeSet::new(),
        selftest: None,
        selftest_state: selftest_state.into(),
        predicting: false,
        pending: BTreeMap::new(),
        next_change_id: replayed.max_id + 1,
        journal,
        vetoed: BTreeMap::new(),
        changes_tx: changes_tx.clone(),
        sockets_polled: false,
        socket_polls: Arc::default(),
        socket_backlog: VecDeque::new(),
        continuing: false,
        replay: Vec::new(),
        restart_dump: false,
        exposures: VecDeque::new(),
        findings_tx,
        detectors: hazards::all(),
        frr_peers: Vec::new(),
        frr_state: "connecting".into(),
        frr_polling: false,
        remediating: BTreeSet::new(),
        reflex,
        own_forwarding: BTreeSet::new(),
        remediations: VecDeque::new(),
        verdicts: BTreeMap::new(),
        finding_labels: BTreeSet::new(),
        hairpin_filters: BTreeSet::new(),
        hairpin_busy: BTreeSet::new(),
        apply_via: HashMap::new(),
    };
    core.settings.metrics.stale.set(1);
    // Vetoed proposals stay approvable across restarts; one the proxy or
    // the Guard API judged is committed to FRR from its edits, never
    // through the kernel writer.
    for (id, rec) in &replayed.vetoed {
        let Record::Decision { intent, requester, northbound: recipe, .. } = rec else { continue };
        match recipe {
            Some(held) => {
                let via = crate::frr::proxy::resumed_apply(core.settings.northbound.clone(), held.clone());
                core.apply_via.insert(*id, via);
            }
            None if requester.starts_with(crate::frr::proxy::REQUESTER) => continue,
            None => {}
        }
        let ask =
            ChangeAsk { intent: intent.clone(), requester: requester.clone(), apply_via: None, recipe: recipe.clone() };
        core.vetoed.insert(*id, ask);
    }
    for mut p in resumed {
        info!(change = p.id, intent = ?p.ask.intent, state = %p.state, "held change resumed from the journal");
        if let Some(via) = p.ask.apply_via.take() {
            core.apply_via.insert(p.id, via);
        }
        core.pending.insert(p.id, p);
    }
    core.settings.metrics.pending.set(core.pending.len() as i64);
    tokio::spawn(core.run(mon_rx, dump_rx, query_rx, input_rx));
    Ok(CoreHandle { query_tx, events_tx, ready_rx, monitor_stats: stats, findings_rx, changes_tx })
}

impl Core {
    async fn run(
        mut self,
        mut mon_rx: mpsc::Receiver<monitor::MonitorMsg>,
        mut dump_rx: mpsc::Receiver<DumpMsg>,
        mut query_rx: mpsc::Receiver<Query>,
        mut input_rx: mpsc::Receiver<Input>,
    ) {
        self.start_dump();
        self.start_selftest();
        self.spawn_hairpin_filter_read();
        let mut pending_tick = tokio::time::interval(Duration::from_millis(500));
        let mut frr_tick = tokio::time::interval(self.settings.frr_poll_interval);
        frr_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                                msg = mon_rx.recv() => match msg {
                    // During a dump, notifications wait to be replayed on
                    // top of it; reading them keeps the monitor from
                    // blocking while the kernel queues (see monitor.rs).
                    Some(monitor::MonitorMsg::Changes(changes, at)) if self.building.is_some() => {
                        self.replay.push((changes, at));
                    }
                                                            Some(monitor::MonitorMsg::Changes(changes, at)) => {
                        // Remediations look at forwarding, anycast,
                        // addresses and bridge ports: skip them for the
                        // route churn that makes up almost every batch.
                        let anycast = changes.iter().any(|c| matches!(c,
                            Change::Forwarding { .. } | Change::Anycast(_) | Change::AnycastGone(_)
                                | Change::Address(_) | Change::AddressGone(_) | Change::Link(_) | Change::LinkGone(_)));
                        let bridge = changes.iter().any(|c| matches!(c,
                            Change::Link(_) | Change::LinkGone(_) | Change::BridgePort(..)));
                        self.apply_all(changes);
                        if anycast {
                            self.remediate(at);
                        }
                        if bridge {
                            self.remediate_hairpin(at);
                        }
                    }
                    Some(monitor::MonitorMsg::Overrun) => {
                                                self.overruns += 1;
                        self.settings.metrics.overruns.inc();
                        self.settings.metrics.stale.set(1);
                        warn!(overruns = self.overruns, "netlink overrun: notifications lost, model stale until re-dump");
                        self.stale = true;
                        if self.building.is_some() {
                            // The running dump may have read tables before
                            // the lost notifications: dump again when it ends.
                            // Everything buffered so far predates the loss.
                            self.restart_dump = true;
                            self.replay.clear();
                        } else {
                            self.start_dump();
                        }
                    }
                    None => { warn!("netlink monitor stopped; core stops"); return; }
                },
                Some(input) = input_rx.recv() => {
                    if matches!(input, Input::Tcp(_)) { sock_poll_busy = false; }
                    self.process_input(input);
                }
                                _ = pending_tick.tick() => {
                                    self.process_pending();
                                    // Routes' gateways and sockets change
                                    // the exposed interfaces too; they do
                                    // not call for a look at every batch.
                                    self.remediate(Instant::now());
                                }
                _ = frr_tick.tick() => self.spawn_frr_poll(),
                _ = sock_tick.tick() => {
                    if !sock_poll_busy {
                        sock_poll_busy = true;
                        self.spawn_sock_poll();
                    }
                }
                                // Interface names are only known after the first dump.
                _ = sysctl_tick.tick(), if self.ever_dumped => self.spawn_sysctl_read(),
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
            DumpMsg::Done(Ok(_)) if self.restart_dump => {
                self.restart_dump = false;
                self.building = None;
                info!("re-dumping: an overrun happened during the dump");
                self.start_dump();
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
                    self.settings.metrics.resyncs.inc();
                }
                self.settings.metrics.stale.set(0);
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
                // Notifications that arrived during the dump, in order.
                let replay = std::mem::take(&mut self.replay);
                let last = replay.last().map(|(_, at)| *at);
                for (changes, _) in replay {
                    self.apply_all(changes);
                }
                // Conflicts that predate the dump (start, or a lost
                // notification before a resync) are remediated too.
                self.remediate(last.unwrap_or_else(Instant::now));
                self.remediate_hairpin(Instant::now());
                self.spawn_sysctl_read();
                self.ready_tx.send_replace(true);
            }
            DumpMsg::Done(Err(e)) => {
                self.building = None;
                self.restart_dump = false;
                self.dump_failures += 1;
                warn!(error = %e, failures = self.dump_failures, "kernel dump failed; retrying");
                self.start_dump();
            }
        }
    }

    fn apply_all(&mut self, changes: Vec<Change>) {
        let mut applied = std::mem::take(&mut self.scratch);
        for c in changes {
            let scope = Invalidation::of(&c);
            // A route, rule or nexthop notification means the kernel touched
            // its FIB even when the content is identical (an identical
            // replace is the classic trigger); an address notification only
            // counts when the address set changed (flag and lifetime updates
            // leave routes alone).
            let always = matches!(scope, Invalidation::Route { .. } | Invalidation::Nexthops)
                || matches!(c, Change::Rule(_) | Change::RuleGone(_));
            let before = applied.len();
            // Without flows there is nothing to invalidate (or describe).
            let cause = (scope != Invalidation::None && !self.flows.is_empty()).then(|| describe_change(&c));
            self.model.apply(c, &mut applied);
            if always || applied.len() > before {
                if let Some(cause) = cause {
                    self.invalidate(scope, cause);
                }
            }
        }
        self.events_applied += applied.len() as u64;
        self.settings.metrics.events.inc_by(applied.len() as u64);
        self.update_model_gauges();
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
        let tx = self.input_tx.clone();
        let polls = self.socket_polls.clone();
        tokio::spawn(async move {
            // The diff against the previous poll is made here too, so that
            // the core applies only what changed (O(100k) per poll at 100k
            // sockets otherwise).
            let r = tokio::task::spawn_blocking(move || {
                let poll = sockdiag::poll_tcp()?;
                let delta = polls.lock().unwrap_or_else(|e| e.into_inner()).delta(poll.established);
                Ok::<_, std::io::Error>(SockPoll { listening: Some(poll.listening), delta })
            })
            .await;
            // A failed poll is reported too: it frees the next one.
            let poll = match r {
                Ok(Ok(poll)) => poll,
                Ok(Err(e)) => {
                    warn!(error = %e, "sock_diag poll failed");
                    SockPoll::default()
                }
                Err(e) => {
                    warn!(error = %e, "sock_diag task failed");
                    SockPoll::default()
                }
            };
            let _ = tx.send(Input::Tcp(poll)).await;
        });
    }

    fn spawn_sysctl_read(&self) {
        let names: HashMap<String, u32> = self.model.links.values().map(|l| (l.name.clone(), l.ifindex)).collect();
        let root = self.settings.proc_sys.clone();
        let tx = self.input_tx.clone();
        tokio::spawn(async move {
            if let Ok(s) = tokio::task::spawn_blocking(move || sysctl::read(&root, &names)).await {
                let _ = tx.send(Input::Change(Change::Sysctls(s))).await;
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
                    selftest: self.selftest_state.clone(),
                    pending: self.pending.len(),
                    armed_flows: self.armed_count(),
                    frr_state: self.frr_state.clone(),
                    remediations: self.remediations.iter().cloned().collect(),
                    forwarding_reflex: match &self.reflex {
                        None => "off".into(),
                        Some(_) if !self.settings.hazards.subnet_anycast.remediate => "off".into(),
                        Some(r) if !r.alive() => "stopped".into(),
                        Some(r) => {
                            let names = r.armed_names();
                            if names.is_empty() {
                                "idle".into()
                            } else {
                                format!("armed: {}", names.into_iter().collect::<Vec<_>>().join(", "))
                            }
                        }
                    },
                    findings: self.findings().iter().fold(BTreeMap::new(), |mut m, f| {
                        *m.entry(format!("{}/{}", f.hazard, severity_name(f.severity))).or_default() += 1;
                        m
                    }),
                    verdicts: self.verdicts.clone(),
                });
            }
            Query::Lookup { addr, table, reply } => {
                let r = self.model.lookup(table, addr).map(|resolved| {
                    let ifnames = resolved.members.iter().map(|m| self.model.ifname(m.ifindex)).collect();
                    LookupResult { resolved, ifnames }
                });
                let _ = reply.send(r);
            }
            Query::Findings { reply } => {
                let _ = reply.send((self.findings(), self.stale));
            }
            Query::Flows { at_risk, reply } => {
                let facts = self.facts();
                let flows = self
                    .flows
                    .iter()
                    .map(|f| FlowView {
                        armed: f.armed(affected(&facts, f)),
                        ifnames: f.members.iter().map(|m| self.model.ifname(m.ifindex)).collect(),
                        flow: f.clone(),
                    })
                    .filter(|v| !at_risk || v.armed)
                    .collect();
                let _ = reply.send((flows, facts));
            }
            Query::Evaluate { intent, reply } => {
                let d = self.decide(&intent);
                self.count_verdict(&d);
                info!(verdict = d.verdict.kind(), intent = ?intent, findings = d.findings.len(), "evaluated change");
                let _ = reply.send(d);
            }
            Query::Propose { ask, reply } => self.propose(ask, reply),
            Query::Pending { reply } => {
                let now = Instant::now();
                let list = self
                    .pending
                    .values()
                    .map(|p| PendingView {
                        id: p.id,
                        intent: p.ask.intent.clone(),
                        verdict: match p.plan {
                            Plan::Delay => "delay",
                            Plan::StageHashFields(_) | Plan::StageResilient => "stage",
                        },
                        state: p.state.clone(),
                        age_seconds: now.duration_since(p.since).as_secs(),
                        deadline_seconds: p.deadline.saturating_duration_since(now).as_secs(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Query::Approve { id, who, reason, reply } => self.approve(id, who, reason, reply),
            Query::FrrAccess { reply } => {
                let _ = reply.send(self.settings.vtysh.clone());
            }
            Query::Cancel { id, who, reason, reply } => {
                let _ = reply.send(self.cancel(id, who, reason));
            }
            Query::History { id, limit, reply } => match &self.journal {
                // Files are read off the core's thread: the model keeps
                // being updated meanwhile.
                Some(j) => {
                    let path = j.path().to_path_buf();
                    tokio::task::spawn_blocking(move || {
                        let _ = reply.send(crate::journal::history(&path, id, limit).map_err(|e| e.to_string()));
                    });
                }
                None => {
                    let _ = reply.send(Err("this guard keeps no journal".to_string()));
                }
            },
            Query::Reconfigure { hazards, vtysh, reply } => {
                if hazards != self.settings.hazards {
                    info!(hazards = ?hazards, "hazard policies reloaded");
                }
                if hazards.subnet_anycast.realtime_priority != self.settings.hazards.subnet_anycast.realtime_priority {
                    warn!("hazards.subnet_anycast.realtime_priority takes effect at the next start");
                }
                self.settings.hazards = hazards;
                self.settings.vtysh = vtysh;
                self.rearm();
                self.publish_findings();
                let _ = reply.send(());
            }
            Query::Peers { reply } => {
                let views = self.peers().iter().map(|p| peers::view(&self.model, p)).collect();
                let _ = reply.send((views, self.frr_state.clone()));
            }
            Query::Publish { applied } => self.publish(applied),
            Query::Show { kind, limit, reply } => {
                let _ = reply.send(show(&self.model, &kind, limit));
            }
        }
    }
}

/// What a kernel change invalidates, per field-notes ("What invalidates
/// the cached route of armed flows").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invalidation {
    None,
    /// A route change: IPv6 flows whose route sits on the path from the
    /// root to it (or that it captures), in its table; every IPv4 flow.
    Route {
        table: u32,
        dst: IpNetwork,
    },
    /// Rule and address changes flush every cached route of the family.
    Family {
        v6: bool,
    },
    /// Nexthop object changes: flows over routes using nexthop objects.
    Nexthops,
}

impl Invalidation {
    fn of(c: &Change) -> Invalidation {
        match c {
            Change::Route(r) | Change::RouteGone(r) => Invalidation::Route { table: r.table, dst: r.dst },
            Change::Rule(r) | Change::RuleGone(r) => Invalidation::Family { v6: r.family == 6 },
            // Measured (integration/ecmp.rs): an IPv6 address moves flows
            // when its duplicate address detection completes, not while it
            // is tentative, and not at all when added with nodad.
            Change::Address(a)
                if a.key.address.is_ipv6()
                    && a.flags & (crate::model::objects::IFA_F_TENTATIVE | crate::model::objects::IFA_F_NODAD) != 0 =>
            {
                Invalidation::None
            }
            Change::Address(a) => Invalidation::Family { v6: a.key.address.is_ipv6() },
            Change::AddressGone(k) => Invalidation::Family { v6: k.address.is_ipv6() },
            Change::Nexthop(_) | Change::NexthopGone(_) => Invalidation::Nexthops,
            _ => Invalidation::None,
        }
    }

    fn hits(&self, f: &Flow) -> bool {
        match *self {
            Invalidation::None => false,
            Invalidation::Route { table, dst } => f.hit_by_route_change(table, dst),
            Invalidation::Family { v6 } => f.is_v6() == v6,
            Invalidation::Nexthops => f.members.iter().any(|m| m.nhid.is_some()),
        }
    }
}

fn describe_change(c: &Change) -> String {
    match c {
        Change::Route(r) => format!("route {} changed", r.key_string()),
        Change::RouteGone(r) => format!("route {} removed", r.key_string()),
        Change::Rule(r) => format!("rule pref {} added (v{})", r.priority, r.family),
        Change::RuleGone(r) => format!("rule pref {} removed (v{})", r.priority, r.family),
        Change::Address(a) => format!("address {}/{} changed", a.key.address, a.key.prefix_len),
        Change::AddressGone(k) => format!("address {}/{} removed", k.address, k.prefix_len),
        Change::Nexthop(n) => format!("nexthop id {} changed", n.id),
        Change::NexthopGone(id) => format!("nexthop id {id} removed"),
        _ => "kernel change".into(),
    }
}

/// `info`, `warning` or `critical`.
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

fn affected(facts: &KernelFacts, f: &Flow) -> bool {
    let fact = if f.is_v6() { facts.ecmp_v6_affected } else { facts.ecmp_v4_affected };
    fact.unwrap_or(true)
}

impl Core {
    fn process_input(&mut self, input: Input) {
        match input {
            Input::Change(c) => self.apply_all(vec![c]),
            Input::Tcp(poll) => {
                self.sockets_polled = true;
                if let Some(listening) = poll.listening {
                    self.listening = listening;
                }
                if let Some(delta) = poll.delta {
                    self.socket_backlog.extend(delta.split_sockets(SOCKET_CHUNK));
                }
                self.apply_socket_chunk();
                // Sockets leave the model one poll after they close (see
                // SocketPolls), so count the dead at the second poll.
                // Exposed flows die at their next packet, which may come
                // much later: keep counting for a while.
                for e in self.exposures.iter_mut().filter(|e| e.polls < EXPOSURE_RECHECK_POLLS) {
                    e.polls += 1;
                    if e.polls >= 2 {
                        e.flows.retain(|k| self.model.sockets.contains_key(k));
                        let gone = e.exposed - e.flows.len();
                        if e.died != Some(gone) {
                            warn!(cause = %e.cause, exposed = e.exposed, died = gone, "ecmp_rehash: exposed flows re-checked");
                        }
                        e.died = Some(gone);
                    }
                }
                self.after_socket_chunk();
            }
            Input::Continue => {
                self.continuing = false;
                self.apply_socket_chunk();
                self.after_socket_chunk();
            }
            Input::Predictions(list) => {
                self.predicting = false;
                self.flows.predicted(list);
                // Rounds are capped: ask for the rest at once.
                self.spawn_predictions(false);
                self.process_pending();
                self.publish_findings();
            }
            Input::Syn(obs) => self.flows.observe(obs),
            Input::Selftest(r) => {
                match r {
                    Ok(report) => {
                        self.selftest_state = "done".into();
                        info!(report = ?report.ecmp, "self-test done");
                        self.selftest = Some(report);
                    }
                    Err(e) => {
                        warn!(error = %e, "self-test failed; detectors assume the kernel is affected");
                        self.selftest_state = format!("failed: {e}");
                    }
                }
                self.publish_findings();
            }
            Input::Done { id, result, touched_filters } => self.finish_change(id, result, touched_filters),
            Input::FrrPeers(r, took) => {
                self.frr_polling = false;
                self.settings.metrics.frr_poll_seconds.observe(took.as_secs_f64());
                self.settings.metrics.frr_up.set(i64::from(r.is_ok()));
                let state = match r {
                    Ok(p) => {
                        self.frr_peers = p;
                        // A peer learned while forwarding is already on
                        // over it: no notification will come for the
                        // reflex. Remediate it now (this re-arms too).
                        self.remediate(Instant::now());
                        "up".to_string()
                    }
                    Err(e) => format!("unavailable: {e}"),
                };
                if state != self.frr_state {
                    info!(frr = %state, "FRR state changed");
                    self.frr_state = state;
                }
                self.publish_findings();
            }
            Input::HairpinFilters(r) => match r {
                Ok(set) => {
                    self.hairpin_filters = set;
                    self.publish_findings();
                    self.remediate_hairpin(Instant::now());
                }
                Err(e) => warn!(error = %e, "cannot read the hairpin reflection filters (is nftables installed?)"),
            },
            Input::HairpinRemediated { port, install, latency, result } => {
                self.hairpin_busy.remove(&port);
                let line = match &result {
                    Ok(()) if install => {
                        self.hairpin_filters.insert(port.clone());
                        self.settings.metrics.remediation_seconds.observe(latency.as_secs_f64());
                        format!(
                            "installed the hairpin reflection filter on {port} {:.3} ms after the kernel reported hairpin on",
                            latency.as_secs_f64() * 1000.0
                        )
                    }
                    Ok(()) => {
                        self.hairpin_filters.remove(&port);
                        format!("removed the hairpin reflection filter on {port}: hairpin is off")
                    }
                    Err(e) => format!("hairpin filter change on {port} failed: {e}"),
                };
                warn!(hazard = "hairpin_dad", latency_us = latency.as_micros() as u64, outcome = %line, "remediation");
                if self.remediations.len() >= MAX_EXPOSURES {
                    self.remediations.pop_front();
                }
                self.remediations.push_back(line);
                self.publish_findings();
            }
            Input::Remediated { ifaces, latency, result, by } => {
                self.settings.metrics.remediation_seconds.observe(latency.as_secs_f64());
                for i in &ifaces {
                    self.remediating.remove(i);
                }
                // Forwarding may have been turned on again while the write
                // was in flight (skipped as busy): check again where the
                // kernel says it is on now. The model alone cannot tell:
                // this result often overtakes the write's own netconf
                // notification, and the model, still showing the toggle,
                // would have it written again for nothing. Where the model
                // is behind the other way (a re-enable not applied yet),
                // that notification remediates, the interface being free
                // now. After a failure the next notification retries (at
                // once would spin on a persistent error).
                if result.is_ok() {
                    let root = self.settings.proc_sys.clone();
                    let on: BTreeSet<String> =
                        ifaces.iter().filter(|i| writer::v6_forwarding_on(&root, i)).cloned().collect();
                    if !on.is_empty() {
                        self.remediate_where(Instant::now(), |i| on.contains(i));
                    }
                }
                let line = match &result {
                    Ok(()) => format!(
                        "turned IPv6 forwarding off on {} {:.3} ms after the kernel reported the conflict ({by})",
                        ifaces.join(", "),
                        latency.as_secs_f64() * 1000.0
                    ),
                    Err(e) => format!("remediation on {} failed: {e}", ifaces.join(", ")),
                };
                warn!(hazard = "subnet_anycast", by, latency_us = latency.as_micros() as u64, outcome = %line, "remediation");
                if self.remediations.len() >= MAX_EXPOSURES {
                    self.remediations.pop_front();
                }
                self.remediations.push_back(line);
                self.publish_findings();
            }
        }
    }

    fn spawn_frr_poll(&mut self) {
        if self.frr_polling {
            return;
        }
        self.frr_polling = true;
        let vtysh = self.settings.vtysh.clone();
        let tx = self.input_tx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = vtysh.bgp_neighbors().await.map_err(|e| e.to_string());
            let _ = tx.send(Input::FrrPeers(r, started.elapsed())).await;
        });
    }

    fn spawn_hairpin_filter_read(&self) {
        let tx = self.input_tx.clone();
        tokio::spawn(async move {
            let r = tokio::task::spawn_blocking(writer::hairpin_filters)
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let _ = tx.send(Input::HairpinFilters(r)).await;
        });
    }

    /// After the fact: hairpin was turned on behind the guard's back:
    /// install the reflection filter at once; hairpin went off (or the port
    /// went away): remove the filter the guard owns.
    fn remediate_hairpin(&mut self, received: Instant) {
        if !self.settings.hazards.hairpin_dad.remediate || self.stale {
            return;
        }
        let hairpin: BTreeSet<String> = self
            .model
            .links
            .values()
            .filter(|l| l.bridge_port.as_ref().is_some_and(|b| b.hairpin))
            .map(|l| l.name.clone())
            .collect();
        let install: Vec<String> = hairpin.difference(&self.hairpin_filters).cloned().collect();
        let remove: Vec<String> = self.hairpin_filters.difference(&hairpin).cloned().collect();
        for (port, inst) in install.into_iter().map(|p| (p, true)).chain(remove.into_iter().map(|p| (p, false))) {
            if !self.hairpin_busy.insert(port.clone()) {
                continue;
            }
            let tx = self.input_tx.clone();
            tokio::spawn(async move {
                let p = port.clone();
                let result = tokio::task::spawn_blocking(move || {
                    if inst { writer::install_hairpin_filter(&p) } else { writer::remove_hairpin_filter(&p) }
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                let latency = received.elapsed();
                let _ = tx.send(Input::HairpinRemediated { port, install: inst, latency, result }).await;
            });
        }
    }

    fn peers(&self) -> Vec<Peer> {
        peers::merge(&self.frr_peers, &self.model)
    }

    /// After the fact: forwarding was turned on (by someone else) on an
    /// interface where a neighbor sits at the Subnet-Router anycast. With
    /// `remediate`, turn forwarding off there at once (packets are still
    /// forwarded: `all.forwarding` governs that) and record how long it
    /// took from the kernel's notification to the write's completion.
    ///
    /// The decision needs only interfaces, prefixes, forwarding, peers and
    /// the route tables' gateway index, not the routes themselves, so it
    /// costs the same with a million routes; the findings published after
    /// the write name the routes.
    fn remediate(&mut self, received: Instant) {
        self.remediate_where(received, |_| true);
    }

    /// [`Core::remediate`], limited to the interfaces `keep` accepts.
    fn remediate_where(&mut self, received: Instant, keep: impl Fn(&str) -> bool) {
        if !self.settings.hazards.subnet_anycast.remediate || self.stale || !self.own_forwarding.is_empty() {
            return;
        }
        // Interfaces armed before this batch are the reflex's: it saw the
        // notification that turned forwarding on there, and has written
        // (or is writing) already.
        let reflex = self.reflex.as_ref().filter(|r| r.alive());
        let armed = reflex.map(|r| r.armed_names()).unwrap_or_default();
        // One look at the model decides both what to write now and what
        // the reflex is armed with next.
        let exposed = self.with_context(hazards::subnet_anycast::armed_ifaces);
        let ifaces: Vec<String> = hazards::subnet_anycast::forwarding_on_among(&self.model, &exposed)
            .into_iter()
            .filter(|i| keep(i) && !self.remediating.contains(i) && !armed.contains(i))
            .collect();
        if let Some(r) = &self.reflex {
            r.arm(exposed);
        }
        self.spawn_remediation(ifaces, received);
    }

    /// After the guard's own forwarding change: the exposed interfaces
    /// whose forwarding reads 1 in `/proc` (the model may not have seen
    /// the change's notifications yet, and the reflex was disarmed while
    /// they came) are written at once, on this thread (a rare, short
    /// write), so that the reflex, re-armed next, finds them off.
    fn remediate_after_own_change(&mut self) {
        if !self.settings.hazards.subnet_anycast.remediate || self.stale {
            return;
        }
        let received = Instant::now();
        let root = self.settings.proc_sys.clone();
        let ifaces: Vec<String> = self
            .with_context(hazards::subnet_anycast::armed_ifaces)
            .into_values()
            .filter(|i| !self.remediating.contains(i) && writer::v6_forwarding_on(&root, i))
            .collect();
        if ifaces.is_empty() {
            return;
        }
        let result = writer::v6_forwarding_off(&root, &ifaces);
        let latency = received.elapsed();
        self.remediating.extend(ifaces.iter().cloned());
        let _ = self.input_tx.try_send(Input::Remediated { ifaces, latency, result, by: "core" });
    }

    /// Turns forwarding off on `ifaces` in a blocking thread; the result
    /// comes back as `Input::Remediated`.
    fn spawn_remediation(&mut self, ifaces: Vec<String>, received: Instant) {
        if ifaces.is_empty() {
            return;
        }
        self.remediating.extend(ifaces.iter().cloned());
        let root = self.settings.proc_sys.clone();
        let tx = self.input_tx.clone();
        // Straight to a blocking thread: no async task in between that
        // would wait for this (busy) worker to yield.
        tokio::task::spawn_blocking(move || {
            let result = writer::v6_forwarding_off(&root, &ifaces);
            // The write is complete here: stop the clock before handing
            // the result back to the core.
            let latency = received.elapsed();
            let _ = tx.blocking_send(Input::Remediated { ifaces, latency, result, by: "core" });
        });
    }

    /// Tells the reflex where forwarding would create a conflict now.
    /// With remediation turned off (a reload), it is disarmed.
    fn rearm(&self) {
        let Some(r) = &self.reflex else { return };
        if !self.settings.hazards.subnet_anycast.remediate || !self.own_forwarding.is_empty() {
            r.arm(BTreeMap::new());
        } else if !self.stale {
            r.arm(self.with_context(hazards::subnet_anycast::armed_ifaces));
        }
    }

    fn start_selftest(&mut self) {
        let Some(st) = self.settings.selftest.clone() else { return };
        let tx = self.input_tx.clone();
        tokio::spawn(async move {
            let r = tokio::task::spawn_blocking(move || selftest::cached_or_run(&st.cache, st.connections))
                .await
                .unwrap_or_else(|e| Err(format!("self-test task failed: {e}")));
            let _ = tx.send(Input::Selftest(r)).await;
        });
    }

    /// What the self-test says for the namespace's current hash settings.
    fn facts(&self) -> KernelFacts {
        let kernel_version = crate::hazards::running_kernel_version();
        let Some(report) = &self.selftest else { return KernelFacts { kernel_version, ..KernelFacts::default() } };
        let s = &self.model.sysctls;
        let v6 = report.ecmp.iter().find(|p| {
            p.family == 6
                && Some(p.policy) == s.hash_policy_v6
                && (p.policy != 3 || p.fields.is_none() || p.fields == s.hash_fields_v6)
        });
        let v4 = report.ecmp.iter().find(|p| p.family == 4);
        KernelFacts {
            ecmp_v6_affected: v6.and_then(|p| p.affected()),
            ecmp_v4_affected: v4.and_then(|p| p.affected()),
            sit_local_remote_drops: report.sit.as_ref().and_then(|p| p.drops()),
            kernel_version,
        }
    }

    fn armed_count(&self) -> usize {
        let facts = self.facts();
        self.flows.maybe_armed().filter(|f| f.armed(affected(&facts, f))).count()
    }

    fn invalidate(&mut self, scope: Invalidation, cause: String) {
        let facts = self.facts();
        let exposed = self.flows.invalidate(|f| affected(&facts, f), |f| scope.hits(f));
        if exposed.is_empty() {
            return;
        }
        // The count stays exact; the evidence is capped like the detector's.
        let evidence: Vec<String> = exposed
            .iter()
            .filter_map(|k| self.flows.get(k))
            .take(hazards::ecmp_rehash::MAX_EVIDENCE)
            .map(|f| format!("tcp {} -> {} route {}", f.local, f.remote, f.prefix))
            .collect();
        warn!(cause = %cause, exposed = exposed.len(), hazard = "ecmp_rehash", "unplanned change invalidated armed flows");
        if self.exposures.len() >= MAX_EXPOSURES {
            self.exposures.pop_front();
        }
        self.exposures.push_back(Exposure {
            cause,
            exposed: exposed.len(),
            flows: exposed,
            evidence,
            died: None,
            polls: 0,
        });
        self.publish_findings();
    }

    /// Applies the next chunk of socket changes, if any, and brings the
    /// flow table up to date (which then costs about the chunk).
    fn apply_socket_chunk(&mut self) {
        if let Some(chunk) = self.socket_backlog.pop_front() {
            self.apply_all(vec![chunk]);
        }
        self.flows.sync(&self.model, &self.listening);
    }

    /// After a chunk: queue the next one behind whatever queries wait, or,
    /// with the poll applied, predict, release held changes and publish.
    fn after_socket_chunk(&mut self) {
        if !self.socket_backlog.is_empty() {
            // When the queue is full, the next poll carries on instead.
            if !self.continuing && self.input_tx.try_send(Input::Continue).is_ok() {
                self.continuing = true;
            }
            return;
        }
        self.spawn_predictions(true);
        self.process_pending();
        self.publish_findings();
    }

    /// Starts a prediction round unless one runs: flows that need a
    /// prediction (new ones, ones whose route or keys changed, all after a
    /// change that can move the kernel's answers), at most
    /// `PREDICT_ROUND_MAX` at a time, plus with `refresh` a rolling share, so
    /// that every flow is asked again within REPREDICT_ROUNDS polls (answers
    /// also move with neighbour reachability, which the model does not see).
    fn spawn_predictions(&mut self, refresh: bool) {
        if self.predicting || self.flows.is_empty() {
            return;
        }
        let refresh = if refresh { self.flows.len().div_ceil(REPREDICT_ROUNDS) } else { 0 };
        let todo = self.flows.take_unpredicted(refresh, PREDICT_ROUND_MAX);
        if todo.is_empty() {
            return;
        }
        self.predicting = true;
        let keys: Vec<FlowKey> = todo.iter().map(|f| f.key()).collect();
        let probes: Vec<route_get::FlowKey> = todo
            .iter()
            .map(|f| route_get::FlowKey {
                src: f.local.ip(),
                dst: f.remote.ip(),
                sport: f.local.port(),
                dport: f.remote.port(),
                mark: f.mark,
                oif: (f.bound_ifindex != 0).then_some(f.bound_ifindex),
            })
            .collect();
        let tx = self.input_tx.clone();
        tokio::spawn(async move {
            let answers = tokio::task::spawn_blocking(move || match route_get::RouteProber::new() {
                Ok(mut p) => p.select_many(&probes),
                Err(e) => {
                    warn!(error = %e, "route prober unavailable");
                    Vec::new()
                }
            })
            .await
            .unwrap_or_default();
            // Keys without an answer (errors, no prober) are asked again.
            let mut answers = answers.into_iter();
            let list = keys
                .into_iter()
                .map(|k| {
                    let a = answers.next().and_then(|a| a.ok());
                    (k, a.map(|s| MemberId { gateway: s.gateway, ifindex: s.oif }))
                })
                .collect();
            let _ = tx.send(Input::Predictions(list)).await;
        });
    }

    /// Runs `f` with the detectors' view of the node now.
    fn with_context<T>(&self, f: impl FnOnce(&Context<'_>) -> T) -> T {
        let facts = self.facts();
        let peers = self.peers();
        f(&Context {
            model: &self.model,
            flows: &self.flows,
            kernel: &facts,
            peers: &peers,
            hairpin_filters: &self.hairpin_filters,
        })
    }

    fn context_findings(&self, intent: Option<&Intent>) -> Vec<Finding> {
        self.with_context(|ctx| {
            self.detectors
                .iter()
                .flat_map(|d| match intent {
                    Some(i) => d.evaluate(ctx, i),
                    None => d.current(ctx),
                })
                .collect()
        })
    }

    fn findings(&self) -> Vec<Finding> {
        let mut out = self.context_findings(None);
        for e in &self.exposures {
            let died = match e.died {
                Some(d) => format!("{d} of them gone since"),
                None => "re-checking which survived".into(),
            };
            out.push(Finding {
                hazard: crate::hazards::ecmp_rehash::NAME,
                severity: Severity::Critical,
                summary: format!("observed: {} invalidated {} armed flow(s); {died}", e.cause, e.exposed),
                breaks: e.died.unwrap_or(e.exposed),
                evidence: e.evidence.clone(),
                mitigations: Vec::new(),
                stage: None,
            });
        }
        if !self.remediations.is_empty() {
            out.push(Finding {
                hazard: hazards::subnet_anycast::NAME,
                severity: Severity::Info,
                summary: format!(
                    "remediated {} time(s) after forwarding was turned on over a peer",
                    self.remediations.len()
                ),
                breaks: 0,
                evidence: self.remediations.iter().cloned().collect(),
                mitigations: Vec::new(),
                stage: None,
            });
        }
        out
    }

    fn publish_findings(&mut self) {
        let f = self.findings();
        let m = &self.settings.metrics;
        // Labels seen before but absent now go back to 0.
        let mut counts: BTreeMap<(String, String), i64> = self.finding_labels.iter().map(|k| (k.clone(), 0)).collect();
        for x in &f {
            *counts.entry((x.hazard.to_string(), severity_name(x.severity).to_string())).or_default() += 1;
        }
        for ((hazard, severity), n) in &counts {
            m.findings.get_or_create(&FindingLabel { hazard: hazard.clone(), severity: severity.clone() }).set(*n);
        }
        self.finding_labels = counts.into_keys().collect();
        m.pending.set(self.pending.len() as i64);
        m.armed_flows.set(self.armed_count() as i64);
        self.findings_tx.send_if_modified(|cur| {
            if *cur == f {
                false
            } else {
                *cur = f;
                true
            }
        });
    }

    fn count_verdict(&mut self, d: &Decision) {
        *self.verdicts.entry(d.verdict.kind().to_string()).or_default() += 1;
        self.settings.metrics.verdicts.get_or_create(&VerdictLabel { verdict: d.verdict.kind().into() }).inc();
    }

    fn update_model_gauges(&self) {
        for (kind, n) in self.model.counts() {
            self.settings.metrics.model_objects.get_or_create(&KindLabel { kind }).set(n as i64);
        }
    }

    fn decide(&self, intent: &Intent) -> Decision {
        let mut d = policy::decide(self.context_findings(Some(intent)), &self.settings.hazards);
        if self.stale {
            // A stale model cannot show a change safe: hold it until the
            // re-dump completes.
            if d.verdict == Verdict::Allow {
                d.verdict = Verdict::Delay {
                    max_wait: self.settings.hazards.ecmp_rehash.max_delay,
                    reason: "the model is stale (initial dump or re-dump after an overrun in progress)".into(),
                };
            }
        }
        d
    }

    fn propose(&mut self, mut ask: ChangeAsk, reply: oneshot::Sender<ProposeOutcome>) {
        let decision = self.decide(&ask.intent);
        self.count_verdict(&decision);
        info!(
            verdict = decision.verdict.kind(),
            requester = %ask.requester,
            intent = ?ask.intent,
            findings = decision.findings.len(),
            "proposal judged"
        );
        let id = self.next_change_id;
        self.next_change_id += 1;
        let record = Record::Decision {
            change_id: id,
            intent: ask.intent.clone(),
            verdict: decision.verdict.kind().to_string(),
            requester: ask.requester.clone(),
            reasons: decision.findings.iter().map(|f| f.summary.clone()).collect(),
            northbound: ask.recipe.clone(),
        };
        if let Err(e) = self.journal_append(record) {
            let message = format!("not applied: {e}");
            let _ = reply.send(ProposeOutcome { decision, change_id: id, outcome: "failed", message });
            return;
        }
        if let Some(via) = ask.apply_via.take() {
            self.apply_via.insert(id, via);
        }
        match &decision.verdict {
            Verdict::Veto { .. } => {
                // `approve` applies it through `self.apply_via` when it has one.
                self.vetoed.insert(
                    id,
                    ChangeAsk {
                        intent: ask.intent.clone(),
                        requester: ask.requester.clone(),
                        apply_via: None,
                        recipe: ask.recipe.clone(),
                    },
                );
                while self.vetoed.len() > MAX_VETOED {
                    if let Some((old, _)) = self.vetoed.pop_first() {
                        self.apply_via.remove(&old);
                    }
                }
                let message = format!("vetoed; `routeguard approve {id} --reason TEXT` applies it anyway");
                let _ = reply.send(ProposeOutcome { decision, change_id: id, outcome: "vetoed", message });
            }
            Verdict::Allow => {
                if let Intent::LinkHairpin { dev, .. } = &ask.intent {
                    // The apply manages the filter itself.
                    self.hairpin_busy.insert(dev.clone());
                }
                self.spawn_apply(id, ask.intent.clone(), None, Some((reply, decision)));
            }
            Verdict::Stage { plan: Staging::ReflectionFilter(port), .. } => {
                self.hairpin_busy.insert(port.clone());
                let staging = Some(Staging::ReflectionFilter(port.clone()));
                self.spawn_apply(id, ask.intent.clone(), staging, Some((reply, decision)));
            }
            Verdict::Stage { plan: Staging::DisableForwardingOn(ifaces), .. } => {
                // Nothing to wait for: the plan runs at once.
                let staging = Some(Staging::DisableForwardingOn(ifaces.clone()));
                self.spawn_apply(id, ask.intent.clone(), staging, Some((reply, decision)));
            }
            Verdict::Delay { .. } | Verdict::Stage { .. } => {
                let plan = match &decision.verdict {
                    Verdict::Stage { plan: Staging::HashFields(fields), .. } => Plan::StageHashFields(*fields),
                    Verdict::Stage { plan: Staging::ResilientGroup, .. }
                        if matches!(ask.intent, Intent::RouteReplace(_)) =>
                    {
                        Plan::StageResilient
                    }
                    _ => Plan::Delay,
                };
                let max_wait = match &decision.verdict {
                    Verdict::Delay { max_wait, .. } => *max_wait,
                    _ => self.settings.hazards.ecmp_rehash.max_delay,
                };
                let state = match plan {
                    Plan::Delay => "waiting until no flow would move".to_string(),
                    Plan::StageHashFields(_) => "waiting until no local flow rides an IPv6 multipath route".to_string(),
                    Plan::StageResilient => "waiting until no local flow rides the route being changed".to_string(),
                };
                let now = Instant::now();
                let on_timeout = self.settings.hazards.ecmp_rehash.on_timeout;
                let held =
                    held_record(id, &ask, plan, crate::journal::now_ms() + max_wait.as_millis() as u64, on_timeout);
                if let Err(e) = self.journal_append(held) {
                    let message = format!("not held: {e}");
                    let _ = reply.send(ProposeOutcome { decision, change_id: id, outcome: "failed", message });
                    return;
                }
                self.pending.insert(
                    id,
                    Pending {
                        id,
                        ask,
                        plan,
                        since: now,
                        deadline: now + max_wait,
                        on_timeout,
                        applying: false,
                        state: state.clone(),
                    },
                );
                let _ = reply.send(ProposeOutcome { decision, change_id: id, outcome: "pending", message: state });
                self.settings.metrics.pending.set(self.pending.len() as i64);
            }
        }
    }

    /// Applies held changes whose condition holds; expires or forces the
    /// ones past their deadline.
    fn process_pending(&mut self) {
        let now = Instant::now();
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(p) = self.pending.get(&id) else { continue };
            if p.applying {
                continue;
            }
            let ready = self.sockets_polled
                && match p.plan {
                    // A resilient stage waits like a delay (nothing the change
                    // touches would move), then installs it through a group.
                    Plan::Delay | Plan::StageResilient => {
                        !self.stale
                            && !self.predicting_unknown()
                            && self.decide(&p.ask.intent).verdict == Verdict::Allow
                    }
                    Plan::StageHashFields(_) => !self.stale && !self.flows.iter().any(|f| f.is_v6()),
                };
            let timed_out = now >= p.deadline;
            if ready || (timed_out && p.on_timeout == OnTimeout::Apply) {
                let intent = p.ask.intent.clone();
                let pre = match p.plan {
                    Plan::StageHashFields(fields) => Some(Staging::HashFields(fields)),
                    Plan::StageResilient => Some(Staging::ResilientGroup),
                    Plan::Delay => None,
                };
                if let Err(e) = self.journal_release(id, !ready, pre.as_ref()) {
                    warn!(change = id, error = %e, "held change not released: the journal cannot be written");
                    continue;
                }
                if let Some(p) = self.pending.get_mut(&id) {
                    p.applying = true;
                    p.state = if ready { "applying".into() } else { "max_delay passed: applying anyway".into() };
                }
                info!(change = id, forced = !ready, "held change released");
                self.spawn_apply(id, intent, pre, None);
            } else if timed_out {
                warn!(change = id, "held change expired after max_delay; nothing applied");
                let done = Record::Done {
                    change_id: id,
                    outcome: "expired".into(),
                    message: "max_delay passed; nothing applied".into(),
                };
                if let Err(e) = self.journal_append(done) {
                    warn!(change = id, error = %e, "expiry not journaled; it will be judged again after a restart");
                }
                self.pending.remove(&id);
                self.apply_via.remove(&id);
            }
        }
    }

    /// Whether some flow still waits for its first prediction (then a
    /// delayed change must not go yet: the flow could be armed).
    fn predicting_unknown(&self) -> bool {
        self.flows.awaiting_prediction()
    }

    fn spawn_apply(
        &mut self,
        id: u64,
        intent: Intent,
        staging: Option<Staging>,
        reply: Option<(oneshot::Sender<ProposeOutcome>, Decision)>,
    ) {
        let tx = self.input_tx.clone();
        let root = self.settings.proc_sys.clone();
        let vtysh = self.settings.vtysh.clone();
        // A held (or approved) change is released; otherwise it applies at once.
        let via = self.apply_via.remove(&id).map(|v| (v, self.pending.contains_key(&id)));
        let touched_filters =
            matches!(intent, Intent::LinkHairpin { .. }) || matches!(staging, Some(Staging::ReflectionFilter(_)));
        if writes_v6_forwarding(&intent) && self.own_forwarding.insert(id) {
            self.rearm();
        }
        tokio::spawn(async move {
            let result = apply_intent(&root, &vtysh, &intent, staging, via).await;
            match &result {
                Ok(m) => info!(change = id, outcome = "applied", detail = %m, "change applied"),
                Err(e) => warn!(change = id, outcome = "failed", error = %e, "change failed"),
            }
            if let Some((reply, decision)) = reply {
                let (outcome, message) = match &result {
                    Ok(m) => ("applied", m.clone()),
                    Err(e) => ("failed", e.clone()),
                };
                let _ = reply.send(ProposeOutcome { decision, change_id: id, outcome, message });
            }
            let _ = tx.send(Input::Done { id, result, touched_filters }).await;
        });
    }

    /// Appends to the journal and syncs it (a no-op without one).
    fn journal_append(&mut self, record: Record) -> Result<(), crate::journal::JournalError> {
        self.journal_write(record, true)
    }

    /// Appends to the journal, synced or not (see
    /// [`Journal::append_unsynced`]; a no-op without one).
    fn journal_write(&mut self, record: Record, sync: bool) -> Result<(), crate::journal::JournalError> {
        let entry = crate::journal::Entry { at_ms: crate::journal::now_ms(), record };
        if let Some(j) = &mut self.journal {
            let r = if sync { j.append(&entry) } else { j.append_unsynced(&entry) };
            r.inspect_err(|e| error!(error = %e, "journal write failed"))?;
        }
        // Watchers see what is on disk (or would be, without a journal).
        let _ = self.changes_tx.send(entry);
        Ok(())
    }

    /// Journals that held change `id` starts applying, and its staged
    /// step, before either is taken.
    fn journal_release(
        &mut self,
        id: u64,
        forced: bool,
        staging: Option<&Staging>,
    ) -> Result<(), crate::journal::JournalError> {
        self.journal_append(Record::Applying { change_id: id, forced })?;
        if let Some(Staging::HashFields(fields)) = staging {
            let step = format!("net.ipv6.fib_multipath_hash_fields={fields} net.ipv6.fib_multipath_hash_policy=3");
            self.journal_append(Record::Step { change_id: id, step })?;
        }
        Ok(())
    }

    /// Applies held or vetoed change `id` now, despite its findings.
    fn approve(
        &mut self,
        id: u64,
        who: String,
        reason: String,
        reply: oneshot::Sender<Result<ProposeOutcome, String>>,
    ) {
        if reason.trim().is_empty() {
            let _ = reply.send(Err("an approval needs a reason (--reason TEXT): it is audit-logged".into()));
            return;
        }
        let (intent, pre) = if let Some(p) = self.pending.get(&id) {
            if p.applying {
                let _ = reply.send(Err(format!("change {id} is already applying")));
                return;
            }
            let pre = match p.plan {
                Plan::StageHashFields(f) => Some(Staging::HashFields(f)),
                Plan::StageResilient => Some(Staging::ResilientGroup),
                Plan::Delay => None,
            };
            (p.ask.intent.clone(), pre)
        } else if let Some(ask) = self.vetoed.get(&id) {
            (ask.intent.clone(), None)
        } else {
            let _ = reply.send(Err(format!(
                "no held or recently vetoed change {id} (see `routeguard pending` and `routeguard history`)"
            )));
            return;
        };
        let approval = Record::Approve { change_id: id, who: who.clone(), reason: reason.clone() };
        if let Err(e) = self.journal_append(approval).and_then(|_| self.journal_release(id, true, pre.as_ref())) {
            let _ = reply.send(Err(format!("not approved: {e}")));
            return;
        }
        warn!(change = id, who = %who, reason = %reason, intent = ?intent, "change approved despite its findings");
        self.vetoed.remove(&id);
        if let Some(p) = self.pending.get_mut(&id) {
            p.applying = true;
            p.state = format!("approved by {who}: applying");
        } else {
            // A vetoed change is applied like a held one: its outcome ends
            // up in the journal through finish_change.
            self.pending.insert(
                id,
                Pending {
                    id,
                    ask: ChangeAsk { intent: intent.clone(), requester: who.clone(), apply_via: None, recipe: None },
                    plan: Plan::Delay,
                    since: Instant::now(),
                    deadline: Instant::now(),
                    on_timeout: OnTimeout::Expire,
                    applying: true,
                    state: format!("approved by {who}: applying"),
                },
            );
        }
        let (tx, rx) = oneshot::channel();
        self.spawn_apply(id, intent, pre, Some((tx, Decision::approved())));
        tokio::spawn(async move {
            let _ = reply.send(rx.await.map_err(|_| "the guard stopped while applying".to_string()));
        });
    }

    /// Drops held change `id`.
    fn cancel(&mut self, id: u64, who: String, reason: String) -> Result<String, String> {
        let Some(p) = self.pending.get(&id) else {
            return Err(format!("no held change {id} (see `routeguard pending`)"));
        };
        if p.applying {
            return Err(format!("change {id} is already applying"));
        }
        self.journal_append(Record::Cancel { change_id: id, who: who.clone(), reason: reason.clone() })
            .map_err(|e| format!("not cancelled: {e}"))?;
        let p = self.pending.remove(&id).expect("checked above");
        self.apply_via.remove(&id);
        self.settings.metrics.pending.set(self.pending.len() as i64);
        info!(change = id, who = %who, reason = %reason, intent = ?p.ask.intent, "held change cancelled");
        Ok(format!("change {id} cancelled; nothing applied"))
    }

    fn finish_change(&mut self, id: u64, result: Result<String, String>, touched_filters: bool) {
        let done = match &result {
            Ok(m) => Record::Done { change_id: id, outcome: "applied".into(), message: m.clone() },
            Err(e) => Record::Done { change_id: id, outcome: "failed".into(), message: e.clone() },
        };
        // A held change's outcome ends its resumption after a restart:
        // synced. Any other change's outcome is history only (replay resumes
        // held changes alone): written without waiting for the disk, so an
        // allowed change costs one sync, its decision's, before it is acted on.
        let held = self.pending.contains_key(&id);
        if let Err(e) = self.journal_write(done, held) {
            warn!(change = id, error = %e, "outcome not journaled");
        }
        // Reflection-filter stages and hairpin changes touch the filters:
        // re-read them. Only then: the read runs `nft`, a process spawn
        // that other changes (every proxied commit) need not pay for.
        if touched_filters {
            self.hairpin_busy.clear();
            self.spawn_hairpin_filter_read();
        }
        self.settings.metrics.pending.set(self.pending.len().saturating_sub(1) as i64);
        if self.own_forwarding.remove(&id) && self.own_forwarding.is_empty() {
            // What the change left (an approved toggle over a peer) is
            // remediated now, as after any other toggle.
            // Written before the reflex is re-armed: a notification of the
            // change still queued for it then finds forwarding off.
            self.remediate_after_own_change();
            self.rearm();
        }
        if self.pending.remove(&id).is_some() {
            match result {
                Ok(m) => info!(change = id, detail = %m, "held change applied"),
                Err(e) => warn!(change = id, error = %e, "held change failed to apply"),
            }
        }
    }
}

/// Whether applying `intent` writes an IPv6 `forwarding` sysctl.
fn writes_v6_forwarding(intent: &Intent) -> bool {
    intent.effective_sysctls().iter().any(|(k, _)| k.starts_with("net.ipv6.conf.") && k.ends_with(".forwarding"))
}

/// Runs a blocking kernel write (an `ip` command) off the async workers;
/// its error as text.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, writer::WriteError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
}

/// Executes an intent with its stage plan: a hash-fields stage first
/// switches the IPv6 hash, then applies, then verifies; a
/// forwarding-off stage applies, then turns forwarding off on the peering
/// interfaces at once and verifies their anycast left.
async fn apply_intent(
    root: &std::path::Path,
    vtysh: &Vtysh,
    intent: &Intent,
    staging: Option<Staging>,
    mut via: Option<(ApplyVia, bool)>,
) -> Result<String, String> {
    let mut notes = Vec::new();
    let stage_fields = match &staging {
        Some(Staging::HashFields(f)) => Some(*f),
        _ => None,
    };
    if let Some(fields) = stage_fields {
        let fields_s = fields.to_string();
        // Fields first: policy 3 reads them, and both writes leave cached
        // routes alone (field-notes: rewriting the policy broke nothing).
        let prev_f =
            writer::write_sysctl(root, "net.ipv6.fib_multipath_hash_fields", &fields_s).map_err(|e| e.to_string())?;
        let prev_p =
            writer::write_sysctl(root, "net.ipv6.fib_multipath_hash_policy", "3").map_err(|e| e.to_string())?;
        notes.push(format!(
            "net.ipv6.fib_multipath_hash_policy {prev_p} -> 3, fib_multipath_hash_fields {prev_f} -> {fields:#06x}"
        ));
        // Fault injection for the restart-safety tests (kill -9 between a
        // stage's first step and the change): not a configuration key.
        if let Some(ms) = std::env::var("RG_TEST_PAUSE_AFTER_STEP_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    match intent {
        // Someone else applies it (the northbound proxy forwards its commit).
        _ if via.is_some() => {
            if let Some((apply, released)) = via.take() {
                notes.push(apply(released).await?);
            }
        }
        Intent::RouteReplace(spec) if matches!(staging, Some(Staging::ResilientGroup)) => {
            let s = spec.clone();
            let group = blocking(move || writer::route_replace_resilient(&s)).await?;
            notes.push(format!("route {} replaced via resilient nexthop group {group}; verified", spec.dst));
        }
        Intent::RouteReplace(spec) => {
            let names = writer::link_names().await.map_err(|e| e.to_string())?;
            writer::route_replace(spec, &names).await.map_err(|e| e.to_string())?;
            notes.push(format!("route {} replaced", spec.dst));
        }
        Intent::Sysctl { key, value } => {
            let prev = writer::write_sysctl(root, key, value).map_err(|e| e.to_string())?;
            notes.push(format!("{key} {prev} -> {value}"));
        }
        Intent::FrrCli { line } => {
            vtysh.run(&["configure terminal", line]).await.map_err(|e| format!("FRR refused `{line}`: {e}"))?;
            notes.push(format!("FRR: {line}"));
        }
        Intent::AddressAdd { address, dev, nodad } => {
            let names = writer::link_names().await.map_err(|e| e.to_string())?;
            writer::address_add(*address, dev, *nodad, &names).await.map_err(|e| e.to_string())?;
            notes.push(format!("address {address} added on {dev}"));
        }
        Intent::FrrConfig { text, diff } => {
            crate::frr::reload::apply(vtysh, text).await.map_err(|e| format!("FRR configuration not applied: {e}"))?;
            notes.push(format!("FRR configuration applied ({} change(s))", diff.len()));
        }
        Intent::Tunnel { name, kind, remote, local } => {
            let names = writer::link_names().await.map_err(|e| e.to_string())?;
            let exists = names.contains_key(name);
            let (n, k, r, l) = (name.clone(), kind.clone(), *remote, *local);
            blocking(move || writer::tunnel_set(&n, &k, r, l, exists)).await?;
            notes.push(format!(
                "tunnel {name} ({kind}) {} with remote {remote}",
                if exists { "changed" } else { "created" }
            ));
        }
        Intent::NexthopGroup { id, members } => {
            let (i, m) = (*id, members.clone());
            blocking(move || writer::nexthop_group_replace(i, &m)).await?;
            notes.push(format!("nexthop group {id} replaced ({} member(s))", members.len()));
        }
        Intent::LocalRoute { dst, dev } => {
            let (d, v) = (*dst, dev.clone());
            blocking(move || writer::local_route_add(d, &v)).await?;
            notes.push(format!("local route {dst} dev {dev} added to table local"));
        }
        Intent::LinkHairpin { dev, on } => {
            let (dev, on) = (dev.clone(), *on);
            let staged = matches!(&staging, Some(Staging::ReflectionFilter(p)) if *p == dev);
            tokio::task::spawn_blocking(move || -> Result<String, writer::WriteError> {
                if staged && !writer::hairpin_filters()?.contains(&dev) {
                    writer::install_hairpin_filter(&dev)?;
                }
                writer::set_hairpin(&dev, on)?;
                if !on {
                    // The filter's reason is gone with the hairpin.
                    writer::remove_hairpin_filter(&dev)?;
                }
                if staged && !writer::hairpin_filters()?.contains(&dev) {
                    return Err(writer::WriteError::Nft { reason: format!("filter for {dev} missing after install") });
                }
                Ok(if staged {
                    format!("reflection filter installed on {dev}, then hairpin on; verified the filter")
                } else {
                    format!("hairpin {} on {dev}", if on { "on" } else { "off" })
                })
            })
            .await
            .map_err(|e| e.to_string())?
            .map(|n| notes.push(n))
            .map_err(|e| e.to_string())?;
        }
    }
    if let Some(Staging::DisableForwardingOn(ifaces)) = &staging {
        let started = Instant::now();
        writer::v6_forwarding_off(root, ifaces)?;
        let window = started.elapsed();
        let joined = writer::anycast_joined(ifaces).map_err(|e| e.to_string())?;
        if !joined.is_empty() {
            return Err(format!("verification failed: anycast still joined: {}", joined.join(", ")));
        }
        notes.push(format!(
            "forwarding off on {} ({} us after the change); verified no anycast joined there",
            ifaces.join(", "),
            window.as_micros()
        ));
    }
    if let Some(fields) = stage_fields {
        let p = writer::read_sysctl(root, "net.ipv6.fib_multipath_hash_policy").map_err(|e| e.to_string())?;
        let f = writer::read_sysctl(root, "net.ipv6.fib_multipath_hash_fields").map_err(|e| e.to_string())?;
        if p != "3" || crate::hazards::ecmp_rehash::parse_int(&f) != Some(fields) {
            return Err(format!("verification failed: hash policy {p}, fields {f}"));
        }
        notes.push("verified hash settings".into());
    }
    Ok(notes.join("; "))
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
