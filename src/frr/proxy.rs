//! The `frr.Northbound` proxy: routeguard serves FRR's wire contract on
//! `[proxy] listen`, so a northbound client pointed at routeguard instead
//! of FRR needs no other change.
//!
//! ```text
//!  client ──frr.Northbound──> Proxy ──(path owner)──> zebra / staticd / ... (frr.Northbound)
//!                               │  Commit: Propose(intent, apply_via = forward the commit)
//!                               └──────────────────> core (detectors, policy, pending changes)
//! ```
//!
//! Candidates are the proxy's own: each one is bound to the daemon its
//! first edit belongs to (one daemon per candidate; FRR's candidates are
//! per daemon too), mirrored by a candidate on that daemon so FRR validates
//! every edit when it is made, and every edit is recorded. At `Commit`
//! staticd route edits become route-replace intents: the touched routes as
//! staticd runs them plus the candidate's edits give the resulting member
//! set of every prefix they touch. Only the routes whose outcome depends
//! on their running state are read (`Get` of each `route-list` entry),
//! while the candidate is edited, alongside the forwarded edit; removals
//! read nothing. The core judges them:
//! - allow: the commit is forwarded and FRR's answer returned;
//! - veto: `FAILED_PRECONDITION` with the reasons and fixes; nothing is
//!   forwarded;
//! - delay or stage: the core holds a pending change and the client gets
//!   `UNAVAILABLE` naming its id; once its condition holds the core
//!   releases it and the proxy replays the recorded edits into a fresh
//!   candidate on the daemon and commits that.
//!
//! Bad input (malformed paths, unknown candidates, invalid prefixes,
//! oversized requests) gets a gRPC status naming the problem; every
//! upstream call has a timeout, and a daemon that hangs, drops the
//! connection or answers garbage is reported (`frr_northbound` in status)
//! without taking the proxy down.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use serde::{Deserialize, Serialize};
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};

use super::northbound::{reason, with_timeout, Northbound};
use super::static_routes::{changes, ReadPlan, RouteKey, StaticRoutes};
use super::xpath::{self, RouteError};
use crate::core::{ApplyVia, ChangeAsk, CoreHandle, Query};
use crate::model::routes::normalize;
use crate::policy::intent::Intent;
use crate::policy::{Decision, Verdict};
use crate::proto::frr as pb;
use crate::proto::frr::commit_request::Phase;

/// Largest request the proxy decodes (tonic answers larger ones itself).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Most paths in one `EditCandidate` or `Get`.
pub const MAX_PATHS: usize = 10_000;
/// Most open candidates.
pub const MAX_CANDIDATES: usize = 1024;
/// How the proxy names itself as the requester of a change (audit log,
/// journal).
pub const REQUESTER: &str = "northbound proxy";
/// Where staticd's routes live.
const STATICD_ROOT: &str = "/frr-routing:routing";
/// Most routes a commit's judgement reads one `Get` each; a commit that
/// touches more reads staticd's whole configuration in one `Get` instead.
const MAX_ROUTE_READS: usize = 8;

#[derive(Clone, Debug)]
enum Edit {
    Change { update: Vec<pb::PathValue>, delete: Vec<pb::PathValue> },
    Load { kind: i32, config: pb::DataTree },
}

#[derive(Clone, Debug, Default)]
struct Candidate {
    daemon: Option<String>,
    upstream_id: Option<u32>,
    edits: Vec<Edit>,
    /// Why the edits cannot be judged (an XML load), if so.
    opaque: Option<String>,
    /// staticd routes the Commit's judgement needs, read while the
    /// candidate was edited (see [`Proxy::prefetch`]); cleared when the
    /// candidate is rebased (`UpdateCandidate`).
    read: BTreeMap<RouteKey, StaticRoutes>,
}

/// A judged commit, as the core will apply it.
#[derive(Clone)]
struct Forward {
    id: u32,
    daemon: String,
    upstream: u32,
    phase: Phase,
    comment: String,
    edits: Vec<Edit>,
}

#[derive(Default)]
struct State {
    next_id: u32,
    candidates: HashMap<u32, Candidate>,
}

/// The proxy service.
#[derive(Clone)]
pub struct Proxy {
    up: Upstreams,
    core: CoreHandle,
    state: Arc<Mutex<State>>,
}

/// Calls to FRR's daemons, with timeouts and reporting: what the proxy
/// forwards, and what replays a held commit (also one resumed from the
/// journal after a restart, before any proxy exists).
#[derive(Clone)]
pub struct Upstreams {
    nb: Northbound,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").field("daemons", &self.nb.daemons()).finish()
    }
}

/// One recorded candidate edit as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JournalEdit {
    /// `EditCandidate`: (path, value) pairs.
    Change {
        /// Paths updated, with their values.
        update: Vec<(String, String)>,
        /// Paths deleted (values as sent).
        delete: Vec<(String, String)>,
    },
    /// `LoadToCandidate`.
    Load {
        /// `LoadType` (0 merge, 1 replace).
        load_type: i32,
        /// `Encoding` (0 JSON, 1 XML).
        encoding: i32,
        /// The data tree.
        data: String,
    },
}

/// A commit the core holds, as journaled: enough to commit it to FRR
/// after a restart (a fresh candidate, the edits replayed, then Commit).
/// Also what the Guard API's northbound edits are applied with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldCommit {
    /// The daemon the edits belong to.
    pub daemon: String,
    /// The client's candidate id (for messages); 0 for edits proposed
    /// through the Guard API.
    pub candidate: u32,
    /// The commit comment.
    pub comment: String,
    /// The edits, in order.
    pub edits: Vec<JournalEdit>,
}

fn pvs(v: &[pb::PathValue]) -> Vec<(String, String)> {
    v.iter().map(|p| (p.path.clone(), p.value.clone())).collect()
}

fn unpvs(v: &[(String, String)]) -> Vec<pb::PathValue> {
    v.iter().map(|(path, value)| pb::PathValue { path: path.clone(), value: value.clone() }).collect()
}

impl From<&Edit> for JournalEdit {
    fn from(e: &Edit) -> JournalEdit {
        match e {
            Edit::Change { update, delete } => JournalEdit::Change { update: pvs(update), delete: pvs(delete) },
            Edit::Load { kind, config } => {
                JournalEdit::Load { load_type: *kind, encoding: config.encoding, data: config.data.clone() }
            }
        }
    }
}

impl From<&JournalEdit> for Edit {
    fn from(e: &JournalEdit) -> Edit {
        match e {
            JournalEdit::Change { update, delete } => Edit::Change { update: unpvs(update), delete: unpvs(delete) },
            JournalEdit::Load { load_type, encoding, data } => {
                Edit::Load { kind: *load_type, config: pb::DataTree { encoding: *encoding, data: data.clone() } }
            }
        }
    }
}

/// How the core applies a held commit it resumed from the journal: the
/// edits replayed into a fresh candidate on the daemon, then committed.
/// Without a northbound client (no `[frr.northbound]` endpoints) the apply
/// fails with a message naming the change's daemon: it is never applied
/// behind FRR's back through the kernel writer.
pub fn resumed_apply(up: Option<Upstreams>, held: HeldCommit) -> ApplyVia {
    replay_apply(up, held, "edits replayed after a restart")
}

/// Applies `held` by replaying its edits into a fresh candidate; `how`
/// goes into the message.
fn replay_apply(up: Option<Upstreams>, held: HeldCommit, how: &'static str) -> ApplyVia {
    Arc::new(move |_released: bool| {
        let (up, held) = (up.clone(), held.clone());
        Box::pin(async move {
            let what = held.what();
            let HeldCommit { daemon, comment, edits, .. } = held;
            let Some(up) = up else {
                return Err(format!(
                    "cannot commit {what} to {daemon}: no [frr.northbound] endpoints are configured (the edits are \
                     in the journal)"
                ));
            };
            let edits: Vec<Edit> = edits.iter().map(Edit::from).collect();
            match up.replay(&daemon, &edits, &comment).await {
                Ok(r) => Ok(format!("{daemon} committed {what} ({how}) (transaction {})", r.transaction_id)),
                Err(e) => Err(format!("{daemon} refused the commit of {what}: {}", reason(&e))),
            }
        })
    })
}

impl HeldCommit {
    /// "candidate N", or what the Guard API proposed.
    fn what(&self) -> String {
        match self.candidate {
            0 => "the proposed northbound edits".into(),
            n => format!("candidate {n}"),
        }
    }
}

/// What the Guard API's `Evaluate`/`Propose` of northbound edits came to.
#[derive(Debug)]
pub struct Judged {
    /// The decision (the worst of the routes the edits change).
    pub decision: Decision,
    /// Propose: the change id (0 when nothing was journaled).
    pub change_id: u64,
    /// Propose: applied, pending, vetoed or failed; empty for Evaluate.
    pub outcome: String,
    /// What was judged, or what happened.
    pub message: String,
}

fn not_found(id: u32) -> Status {
    // FRR's own wording, plus the id.
    Status::not_found(format!("candidate configuration not found (candidate {id})"))
}

/// Prefixes an upstream error with the daemon, keeping its code.
fn upstream_err(daemon: &str, s: Status) -> Status {
    Status::new(
        s.code(),
        format!(
            "{daemon}: {}",
            if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_string() }
        ),
    )
}

fn route_err(e: RouteError) -> Status {
    match e {
        RouteError::NotConfigured { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

/// A commit's verdict as one message: reasons, fixes, the findings' evidence.
pub fn describe_veto(d: &Decision) -> String {
    let mut parts = Vec::new();
    if let Verdict::Veto { reasons, fixes } = &d.verdict {
        parts.push(format!("reasons: {}", reasons.join("; ")));
        if !fixes.is_empty() {
            parts.push(format!("fixes: {}", fixes.join("; ")));
        }
    }
    let evidence: Vec<&String> = d.findings.iter().flat_map(|f| f.evidence.iter()).take(5).collect();
    if !evidence.is_empty() {
        parts.push(format!("evidence: {}", evidence.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")));
    }
    parts.join(" | ")
}

impl Upstreams {
    /// Calls to `nb`'s daemons.
    pub fn new(nb: Northbound) -> Upstreams {
        Upstreams { nb }
    }

    /// Has `daemon` check `edit` in a scratch candidate (EditCandidate,
    /// then Commit VALIDATE), which is deleted again; FRR's refusal comes
    /// back with its code.
    async fn validate(&self, daemon: &str, edit: &Edit) -> Result<(), Status> {
        let mut client = self.client(daemon)?;
        let id = self
            .call(daemon, "CreateCandidate", async {
                client.create_candidate(pb::CreateCandidateRequest {}).await.map(|r| r.into_inner().candidate_id)
            })
            .await?;
        let r = async {
            if let Edit::Change { update, delete } = edit.clone() {
                let req = pb::EditCandidateRequest { candidate_id: id, update, delete };
                self.call(daemon, "EditCandidate", async { client.clone().edit_candidate(req).await }).await?;
            }
            match self.forward_commit(daemon, id, Phase::Validate, "").await {
                // FRR's NB_ERR_NO_CHANGES: the edits change nothing.
                Err(e) if e.code() == Code::Aborted => Ok(()),
                r => r.map(drop),
            }
        }
        .await;
        let req = pb::DeleteCandidateRequest { candidate_id: id };
        let _ = self.call(daemon, "DeleteCandidate", async { client.delete_candidate(req).await }).await;
        r
    }

    fn client(&self, daemon: &str) -> Result<super::northbound::NbClient, Status> {
        self.nb
            .upstream(daemon)
            .map(|u| u.client.clone())
            .ok_or_else(|| Status::failed_precondition(format!("no endpoint for {daemon} in [frr.northbound]")))
    }

    /// Notes an upstream failure that says the daemon is unwell.
    fn report(&self, daemon: &str, what: &str, s: &Status) {
        if matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal | Code::Cancelled
        ) {
            warn!(daemon, call = what, error = %reason(s), "northbound proxy: upstream call failed");
            self.nb.set_state(daemon, format!("down: {what}: {}", reason(s)));
        }
    }

    async fn call<T>(
        &self,
        daemon: &str,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        match with_timeout(self.nb.timeout(), daemon, what, fut).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.report(daemon, what, &e);
                Err(upstream_err(daemon, e))
            }
        }
    }

    /// Forwards `phase` of the candidate's mirror.
    async fn forward_commit(
        &self,
        daemon: &str,
        upstream: u32,
        phase: Phase,
        comment: &str,
    ) -> Result<pb::CommitResponse, Status> {
        let mut client = self.client(daemon)?;
        let req = pb::CommitRequest { candidate_id: upstream, phase: phase as i32, comment: comment.to_string() };
        let r = self.call(daemon, "Commit", async { client.commit(req).await.map(|r| r.into_inner()) }).await;
        if r.is_ok() && matches!(phase, Phase::All | Phase::Apply) {
            self.nb.note_commit(daemon);
        }
        r
    }

    /// Replays `edits` into a fresh candidate on `daemon` and commits it:
    /// how a held change is applied once released.
    async fn replay(&self, daemon: &str, edits: &[Edit], comment: &str) -> Result<pb::CommitResponse, Status> {
        let mut client = self.client(daemon)?;
        let id = self
            .call(daemon, "CreateCandidate", async {
                client.create_candidate(pb::CreateCandidateRequest {}).await.map(|r| r.into_inner().candidate_id)
            })
            .await?;
        let result = async {
            for e in edits {
                match e.clone() {
                    Edit::Change { update, delete } => {
                        let req = pb::EditCandidateRequest { candidate_id: id, update, delete };
                        self.call(daemon, "EditCandidate", async { client.edit_candidate(req).await }).await?;
                    }
                    Edit::Load { kind, config } => {
                        let req = pb::LoadToCandidateRequest { candidate_id: id, r#type: kind, config: Some(config) };
                        self.call(daemon, "LoadToCandidate", async { client.load_to_candidate(req).await }).await?;
                    }
                }
            }
            self.forward_commit(daemon, id, Phase::All, comment).await
        }
        .await;
        let req = pb::DeleteCandidateRequest { candidate_id: id };
        let _ = self.call(daemon, "DeleteCandidate", async { client.delete_candidate(req).await }).await;
        result
    }
}

impl Proxy {
    /// A proxy forwarding to `nb`'s daemons and judging with `core`.
    pub fn new(nb: Northbound, core: CoreHandle) -> Proxy {
        Proxy {
            up: Upstreams::new(nb),
            core,
            state: Arc::new(Mutex::new(State { next_id: 1, candidates: HashMap::new() })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the map is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn candidate(&self, id: u32) -> Result<Candidate, Status> {
        self.lock().candidates.get(&id).cloned().ok_or_else(|| not_found(id))
    }

    /// The daemon that owns every path in `paths`.
    fn owner_of(&self, paths: &[&str]) -> Result<String, Status> {
        if paths.len() > MAX_PATHS {
            return Err(Status::invalid_argument(format!("{} paths in one request; at most {MAX_PATHS}", paths.len())));
        }
        let configured = self.up.nb.daemons();
        let caps = self.up.nb.modules();
        let mut owner: Option<String> = None;
        for p in paths {
            let steps = xpath::parse(p).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let d = xpath::owner(p, &steps, &configured, &caps).map_err(route_err)?;
            match &owner {
                Some(o) if *o != d => {
                    return Err(Status::invalid_argument(format!(
                        "paths of one request belong to {o} and {d}; send one request per daemon"
                    )))
                }
                _ => owner = Some(d),
            }
        }
        owner.ok_or_else(|| Status::invalid_argument("no path given"))
    }

    /// Binds candidate `id` to `daemon`, creating its mirror there if needed.
    async fn bind(&self, id: u32, daemon: &str) -> Result<u32, Status> {
        let c = self.candidate(id)?;
        if let Some(d) = &c.daemon {
            if d != daemon {
                return Err(Status::invalid_argument(format!(
                    "candidate {id} holds edits for {d}; this one belongs to {daemon}: use one candidate per daemon"
                )));
            }
        }
        if let Some(u) = c.upstream_id {
            return Ok(u);
        }
        let mut client = self.up.client(daemon)?;
        let upstream = self
            .up
            .call(daemon, "CreateCandidate", async {
                client.create_candidate(pb::CreateCandidateRequest {}).await.map(|r| r.into_inner().candidate_id)
            })
            .await?;
        let mut st = self.lock();
        match st.candidates.get_mut(&id) {
            Some(c) if c.upstream_id.is_none() => {
                c.daemon = Some(daemon.to_string());
                c.upstream_id = Some(upstream);
                Ok(upstream)
            }
            Some(c) => Ok(c.upstream_id.unwrap_or(upstream)),
            None => Err(not_found(id)),
        }
    }

    fn record(
        &self,
        id: u32,
        edit: Edit,
        opaque: Option<String>,
        read: Vec<(RouteKey, StaticRoutes)>,
    ) -> Result<(), Status> {
        let mut st = self.lock();
        let c = st.candidates.get_mut(&id).ok_or_else(|| not_found(id))?;
        c.edits.push(edit);
        c.read.extend(read);
        if opaque.is_some() {
            c.opaque = opaque;
        }
        Ok(())
    }

    /// The route intents of committing `c` on staticd: the routes the
    /// edits touch, as staticd runs them, with the edits applied. Only the
    /// routes whose outcome depends on their running state are read (see
    /// [`ReadPlan`]), one `Get` each, concurrently; a commit that only
    /// removes routes (or touches none that is judged) reads nothing.
    async fn intents(&self, id: u32, c: &Candidate) -> Result<Vec<Intent>, Status> {
        if c.daemon.as_deref() != Some("staticd") {
            return Ok(Vec::new());
        }
        if let Some(why) = &c.opaque {
            return Err(Status::failed_precondition(format!("candidate {id}: {why}")));
        }
        let plan = read_plan(&c.edits).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let routes: Vec<(&RouteKey, &[xpath::Step])> = plan.routes().collect();
        let running = if plan.needs_everything() || routes.len() > MAX_ROUTE_READS || !canonical(&routes) {
            self.read_staticd().await?
        } else if routes.is_empty() {
            info!(
                candidate = id,
                "northbound proxy: commit not judged: its edits remove routes or touch none the detectors judge"
            );
            StaticRoutes::default()
        } else {
            let reads = routes.iter().map(|(k, steps)| async move {
                match c.read.get(*k) {
                    Some(r) => Ok(r.clone()),
                    None => self.read_route(k, steps).await,
                }
            });
            let mut running = StaticRoutes::default();
            for r in futures::future::try_join_all(reads).await? {
                running.routes.extend(r.routes);
            }
            running
        };
        let after = apply_edits(&running, &c.edits).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut out = Vec::new();
        for ch in changes(&running, &after) {
            match ch.intent() {
                Some(i) => out.push(i),
                None => {
                    info!(route = %ch.key.prefix, vrf = %ch.key.vrf, "northbound proxy: route change not judged (removal, blackhole or non-default VRF)")
                }
            }
        }
        Ok(out)
    }

    /// Reads, for a Commit to come, the routes its judgement will need
    /// after `edit` (on top of candidate `id`'s edits so far) that were not
    /// read yet; run alongside the forwarded edit, so the Commit finds
    /// them read. FRR commits a candidate as it was created (running then)
    /// plus its edits, so running as read while the candidate is edited is
    /// what the commit installs, not less than running at Commit time.
    /// Best effort: a failed read is left to the Commit.
    async fn prefetch(&self, id: u32, edit: &Edit) -> Vec<(RouteKey, StaticRoutes)> {
        let Ok(c) = self.candidate(id) else { return Vec::new() };
        let mut edits = c.edits.clone();
        edits.push(edit.clone());
        let Ok(plan) = read_plan(&edits) else { return Vec::new() };
        let routes: Vec<(&RouteKey, &[xpath::Step])> = plan.routes().collect();
        if plan.needs_everything() || routes.len() > MAX_ROUTE_READS || !canonical(&routes) {
            return Vec::new();
        }
        let reads = routes
            .iter()
            .filter(|(k, _)| !c.read.contains_key(*k))
            .map(|(k, steps)| async move { self.read_route(k, steps).await.ok().map(|r| ((*k).clone(), r)) });
        futures::future::join_all(reads).await.into_iter().flatten().collect()
    }

    /// staticd's whole running configuration.
    async fn read_staticd(&self) -> Result<StaticRoutes, Status> {
        let data =
            self.up.nb.get("staticd", pb::get_request::DataType::Config, vec![STATICD_ROOT.into()]).await.map_err(
                |e| {
                    self.up.report("staticd", "Get", &e);
                    Status::unavailable(format!("cannot read staticd's running configuration: {}", reason(&e)))
                },
            )?;
        let mut running = StaticRoutes::default();
        for d in &data {
            let r = StaticRoutes::from_json(d).map_err(|e| self.garbage(e))?;
            running.routes.extend(r.routes);
        }
        Ok(running)
    }

    /// One route of staticd's running configuration, read at its
    /// `route-list` entry `steps`; none when staticd has no such entry.
    async fn read_route(&self, key: &RouteKey, steps: &[xpath::Step]) -> Result<StaticRoutes, Status> {
        // FRR 8.4 answers a `Get` of a list entry with the entry and every
        // entry after it; of the entry's first member (the `prefix` key),
        // with the entry's members: just this route.
        let path = format!("{}/prefix", xpath::render(steps));
        let mut route = StaticRoutes::default();
        match self.up.nb.get("staticd", pb::get_request::DataType::Config, vec![path]).await {
            Ok(data) => {
                for d in &data {
                    route.merge_route_json(d, key).map_err(|e| self.garbage(e))?;
                }
            }
            // FRR 8.4: INVALID_ARGUMENT "Data path not found".
            Err(e) if is_absent(&e) => {}
            Err(e) => {
                self.up.report("staticd", "Get", &e);
                return Err(Status::unavailable(format!(
                    "cannot read route {} from staticd's running configuration: {}",
                    key.prefix,
                    reason(&e)
                )));
            }
        }
        Ok(route)
    }

    /// staticd answered something that is not its configuration.
    fn garbage(&self, e: super::static_routes::RoutesError) -> Status {
        warn!(error = %e, "northbound proxy: staticd answered garbage");
        self.up.nb.set_state("staticd", format!("down: Get answered garbage: {e}"));
        Status::unavailable(format!("cannot read staticd's running configuration: {e}"))
    }

    /// How the core applies a judged commit: at once, the commit of the
    /// candidate's mirror; once released from hold, a replay of its edits.
    fn apply_via(&self, fwd: Forward, slot: Arc<Mutex<Option<Result<pb::CommitResponse, Status>>>>) -> ApplyVia {
        let proxy = self.clone();
        Arc::new(move |released: bool| {
            let (proxy, fwd, slot) = (proxy.clone(), fwd.clone(), slot.clone());
            Box::pin(async move {
                let Forward { id, daemon, upstream, phase, comment, edits } = fwd;
                let r = if released {
                    proxy.up.replay(&daemon, &edits, &comment).await
                } else {
                    proxy.up.forward_commit(&daemon, upstream, phase, &comment).await
                };
                let msg = match &r {
                    Ok(resp) => Ok(format!(
                        "{daemon} committed candidate {id}{} (transaction {})",
                        if released { " (edits replayed)" } else { "" },
                        resp.transaction_id
                    )),
                    Err(e) => Err(format!("{daemon} refused the commit of candidate {id}: {}", reason(e))),
                };
                if let Ok(mut s) = slot.lock() {
                    *s = Some(r);
                }
                msg
            })
        })
    }

    /// Judges and acts on a commit of phase ALL or APPLY.
    async fn commit_judged(
        &self,
        id: u32,
        c: Candidate,
        phase: Phase,
        comment: String,
    ) -> Result<pb::CommitResponse, Status> {
        let (Some(daemon), Some(upstream)) = (c.daemon.clone(), c.upstream_id) else {
            return Err(Status::aborted(format!("candidate {id} has no edits: no changes to apply")));
        };
        let intents = match self.intents(id, &c).await {
            Ok(i) => i,
            Err(e) => {
                self.abort_if_applying(&daemon, upstream, phase).await;
                return Err(e);
            }
        };
        let intent = match self.pick(&intents).await {
            Ok(Some(i)) => i,
            // Nothing the detectors judge: forward as is.
            Ok(None) => return self.up.forward_commit(&daemon, upstream, phase, &comment).await,
            Err(e) => {
                self.abort_if_applying(&daemon, upstream, phase).await;
                return Err(e);
            }
        };
        let slot = Arc::new(Mutex::new(None));
        let recipe = HeldCommit {
            daemon: daemon.clone(),
            candidate: id,
            comment: comment.clone(),
            edits: c.edits.iter().map(JournalEdit::from).collect(),
        };
        let fwd = Forward { id, daemon: daemon.clone(), upstream, phase, comment, edits: c.edits.clone() };
        let via = self.apply_via(fwd, slot.clone());
        let ask = ChangeAsk {
            intent,
            requester: format!("{REQUESTER} (candidate {id})"),
            apply_via: Some(via),
            recipe: Some(recipe),
        };
        let outcome = self
            .core
            .ask(|reply| Query::Propose { ask, reply })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        match outcome.outcome {
            "applied" | "failed" => {
                let r = slot.lock().ok().and_then(|mut s| s.take());
                r.unwrap_or_else(|| Err(Status::internal(outcome.message)))
            }
            "pending" => Err(Status::unavailable(format!(
                "routeguard holds the commit of candidate {id} as change {} ({}): {}; it is committed to {daemon} by \
                 itself once that holds (see `routeguard pending`)",
                outcome.change_id,
                outcome.decision.verdict.kind(),
                outcome.message
            ))),
            _ => {
                self.abort_if_applying(&daemon, upstream, phase).await;
                Err(Status::failed_precondition(format!(
                    "routeguard vetoed the commit of candidate {id}: {}",
                    describe_veto(&outcome.decision)
                )))
            }
        }
    }

    /// After a refused APPLY, releases FRR's prepared transaction.
    async fn abort_if_applying(&self, daemon: &str, upstream: u32, phase: Phase) {
        if phase == Phase::Apply {
            let _ = self.up.forward_commit(daemon, upstream, Phase::Abort, "").await;
        }
    }

    /// The one intent to propose: the only one, or, of several, the only
    /// one not allowed now. Errors on a veto (or several held intents).
    async fn pick(&self, intents: &[Intent]) -> Result<Option<Intent>, Status> {
        match intents {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            many => {
                let mut held = Vec::new();
                for i in many {
                    let intent = i.clone();
                    let d = self
                        .core
                        .ask(|reply| Query::Evaluate { intent, reply })
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    match d.verdict {
                        Verdict::Allow => {}
                        Verdict::Veto { .. } => {
                            return Err(Status::failed_precondition(format!(
                                "routeguard vetoed the commit: {}",
                                describe_veto(&d)
                            )))
                        }
                        _ => held.push(i.clone()),
                    }
                }
                match held.len() {
                    0 => Ok(None),
                    1 => Ok(held.pop()),
                    n => Err(Status::failed_precondition(format!(
                        "{n} routes of this commit would be held; commit them one candidate each"
                    ))),
                }
            }
        }
    }

    /// The daemons' northbound states, for `GetStatus`.
    pub fn states(&self) -> tokio::sync::watch::Receiver<super::northbound::StateMap> {
        self.up.nb.states()
    }

    /// The Guard API's `Evaluate` (`propose` false) or `Propose` of FRR
    /// northbound edits, as if a client had put them in one candidate and
    /// committed it through the proxy: staticd route edits become route
    /// intents the detectors judge; a proposal is journaled (with its
    /// edits, so that a held one survives restarts) and, once allowed or
    /// released, committed to the daemon through a fresh candidate. Edits
    /// nothing judges are committed at once (propose) or allowed (evaluate).
    pub async fn judge(
        &self,
        update: Vec<pb::PathValue>,
        delete: Vec<pb::PathValue>,
        propose: bool,
        requester: String,
    ) -> Result<Judged, Status> {
        let paths: Vec<&str> = update.iter().chain(&delete).map(|p| p.path.as_str()).collect();
        if paths.is_empty() {
            return Err(Status::invalid_argument("northbound edit without update or delete paths"));
        }
        let daemon = self.owner_of(&paths)?;
        let n_paths = paths.len();
        let edit = Edit::Change { update, delete };
        if daemon == "staticd" {
            apply_edits(&StaticRoutes::default(), std::slice::from_ref(&edit))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        // FRR validates the edits first, as it does a client's.
        self.up.validate(&daemon, &edit).await?;
        let c = Candidate {
            daemon: Some(daemon.clone()),
            upstream_id: None,
            edits: vec![edit],
            opaque: None,
            read: BTreeMap::new(),
        };
        let intents = self.intents(0, &c).await?;
        let mut judged = Vec::new();
        for intent in &intents {
            let i = intent.clone();
            let d = self
                .core
                .ask(|reply| Query::Evaluate { intent: i, reply })
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            judged.push((intent.clone(), d));
        }
        let held = HeldCommit {
            daemon: daemon.clone(),
            candidate: 0,
            comment: format!("routeguard propose ({requester})"),
            edits: c.edits.iter().map(JournalEdit::from).collect(),
        };
        let worst = judged.iter().max_by_key(|(_, d)| d.verdict.strictness()).cloned();
        let Some((intent, decision)) = worst else {
            let message = format!("{n_paths} edit(s) to {daemon}: nothing the detectors judge");
            if !propose {
                return Ok(Judged { decision: Decision::approved(), change_id: 0, outcome: String::new(), message });
            }
            let r = replay_apply(Some(self.up.clone()), held, "proposed through the Guard API")(false).await;
            let (outcome, message) = match r {
                Ok(m) => ("applied", format!("{message}; {m}")),
                Err(e) => ("failed", e),
            };
            return Ok(Judged { decision: Decision::approved(), change_id: 0, outcome: outcome.into(), message });
        };
        let held_n =
            judged.iter().filter(|(_, d)| matches!(d.verdict, Verdict::Delay { .. } | Verdict::Stage { .. })).count();
        if !propose {
            let message = format!("{} route(s) of {daemon} judged; the worst verdict is shown", judged.len());
            return Ok(Judged { decision, change_id: 0, outcome: String::new(), message });
        }
        if held_n > 1 && !matches!(decision.verdict, Verdict::Veto { .. }) {
            return Err(Status::failed_precondition(format!(
                "{held_n} routes of these edits would be held; propose them one route at a time"
            )));
        }
        let via = replay_apply(Some(self.up.clone()), held.clone(), "proposed through the Guard API");
        let ask = ChangeAsk { intent, requester, apply_via: Some(via), recipe: Some(held) };
        let o = self
            .core
            .ask(|reply| Query::Propose { ask, reply })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Judged { decision: o.decision, change_id: o.change_id, outcome: o.outcome.into(), message: o.message })
    }

    /// Dry-run judgement for VALIDATE and PREPARE: only a veto stops them.
    async fn precheck(&self, id: u32, c: &Candidate) -> Result<(), Status> {
        for intent in self.intents(id, c).await? {
            let d = self
                .core
                .ask(|reply| Query::Evaluate { intent, reply })
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            if matches!(d.verdict, Verdict::Veto { .. }) {
                return Err(Status::failed_precondition(format!(
                    "routeguard vetoes the commit of candidate {id}: {}",
                    describe_veto(&d)
                )));
            }
        }
        Ok(())
    }
}

/// Which routes of staticd's running configuration judging `edits` needs.
fn read_plan(edits: &[Edit]) -> Result<ReadPlan, super::static_routes::RoutesError> {
    let mut plan = ReadPlan::default();
    for e in edits {
        match e {
            Edit::Change { update, delete } => {
                // FRR applies a request's updates, then its deletes.
                for (pv, del) in update.iter().map(|p| (p, false)).chain(delete.iter().map(|p| (p, true))) {
                    let steps = xpath::parse(&pv.path).map_err(|e| super::static_routes::RoutesError(e.to_string()))?;
                    plan.note(&steps, del)?;
                }
            }
            Edit::Load { .. } => plan.note_load(),
        }
    }
    Ok(plan)
}

/// Whether every route's prefix is spelled as staticd stores it; one
/// spelled otherwise (upper case, host bits) might not match in a `Get`.
fn canonical(routes: &[(&RouteKey, &[xpath::Step])]) -> bool {
    routes
        .iter()
        .all(|(k, steps)| steps.last().and_then(|s| s.key("prefix")) == Some(normalize(k.prefix).to_string().as_str()))
}

/// Whether a failed `Get` of one configuration node says it does not
/// exist (FRR 8.4: INVALID_ARGUMENT "Data path not found").
fn is_absent(s: &Status) -> bool {
    s.code() == Code::NotFound
        || (s.code() == Code::InvalidArgument && s.message().to_ascii_lowercase().contains("not found"))
}

/// The routes after a candidate's edits, on top of `running`.
fn apply_edits(running: &StaticRoutes, edits: &[Edit]) -> Result<StaticRoutes, super::static_routes::RoutesError> {
    let mut after = running.clone();
    for e in edits {
        match e {
            Edit::Change { update, delete } => {
                // FRR applies a request's updates, then its deletes.
                for pv in update {
                    let steps = xpath::parse(&pv.path).map_err(|e| super::static_routes::RoutesError(e.to_string()))?;
                    after.edit(&steps, false)?;
                }
                for pv in delete {
                    let steps = xpath::parse(&pv.path).map_err(|e| super::static_routes::RoutesError(e.to_string()))?;
                    after.edit(&steps, true)?;
                }
            }
            Edit::Load { kind, config } => {
                let loaded = StaticRoutes::from_json(&config.data)?;
                if *kind == pb::load_to_candidate_request::LoadType::Replace as i32 {
                    after = loaded;
                } else {
                    after.routes.extend(loaded.routes);
                }
            }
        }
    }
    Ok(after)
}

/// Modules a data tree mentions: `frr-x:` in JSON, `frrouting.org/yang/x` in XML.
fn tree_modules(data: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let bytes = data.as_bytes();
    for (marker, prefix) in [("\"frr-", "frr-"), ("frrouting.org/yang/", "frr-")] {
        let mut from = 0;
        while let Some(i) = data[from..].find(marker) {
            let start = from + i + marker.len();
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'-') {
                end += 1;
            }
            let json_ok = marker != "\"frr-" || bytes.get(end) == Some(&b':');
            if end > start && json_ok {
                let m = format!("{prefix}{}", &data[start..end]);
                if !out.contains(&m) {
                    out.push(m);
                }
            }
            from = end.max(start);
        }
    }
    out
}

type GetStream = Pin<Box<dyn Stream<Item = Result<pb::GetResponse, Status>> + Send>>;
type TxStream = Pin<Box<dyn Stream<Item = Result<pb::ListTransactionsResponse, Status>> + Send>>;

fn not_proxied(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not offered by the routeguard northbound proxy; ask the daemon directly"))
}

#[tonic::async_trait]
impl pb::northbound_server::Northbound for Proxy {
    async fn get_capabilities(
        &self,
        _req: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::GetCapabilitiesResponse>, Status> {
        let mut merged: Option<pb::GetCapabilitiesResponse> = None;
        let mut errors = Vec::new();
        for d in self.up.nb.daemons() {
            match self.up.nb.capabilities(&d).await {
                Ok(c) => match &mut merged {
                    None => merged = Some(c),
                    Some(m) => {
                        m.rollback_support &= c.rollback_support;
                        for module in c.supported_modules {
                            if !m.supported_modules.iter().any(|x| x.name == module.name) {
                                m.supported_modules.push(module);
                            }
                        }
                    }
                },
                Err(e) => {
                    self.up.report(&d, "GetCapabilities", &e);
                    errors.push(format!("{d}: {}", reason(&e)));
                }
            }
        }
        match merged {
            Some(mut m) => {
                m.supported_modules.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(Response::new(m))
            }
            None => Err(Status::unavailable(format!("no FRR daemon answered: {}", errors.join("; ")))),
        }
    }

    type GetStream = GetStream;

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let req = req.into_inner();
        let paths: Vec<&str> = req.path.iter().map(String::as_str).collect();
        let daemon = self.owner_of(&paths)?;
        let mut client = self.up.client(&daemon)?;
        // The timeout covers the whole stream, as for every upstream call.
        let deadline = tokio::time::Instant::now() + self.up.nb.timeout();
        let upstream =
            self.up.call(&daemon, "Get", async move { client.get(req).await.map(Response::into_inner) }).await?;
        // Answers pass through as they arrive; an upstream failure ends the
        // stream with the daemon's error.
        let up = self.up.clone();
        let stream = futures::stream::unfold(Some(upstream), move |state| {
            let (up, daemon) = (up.clone(), daemon.clone());
            async move {
                let mut upstream = state?;
                let next = match tokio::time::timeout_at(deadline, upstream.message()).await {
                    Ok(next) => next,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "{daemon} did not answer Get within {:?}",
                        up.nb.timeout()
                    ))),
                };
                match next {
                    Ok(Some(r)) => Some((Ok(r), Some(upstream))),
                    Ok(None) => None,
                    Err(e) => {
                        up.report(&daemon, "Get", &e);
                        Some((Err(upstream_err(&daemon, e)), None))
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn subscribe(&self, _req: Request<pb::SubscribeRequest>) -> Result<Response<pb::SubscribeResponse>, Status> {
        Err(not_proxied("Subscribe"))
    }

    async fn create_candidate(
        &self,
        _req: Request<pb::CreateCandidateRequest>,
    ) -> Result<Response<pb::CreateCandidateResponse>, Status> {
        let mut st = self.lock();
        if st.candidates.len() >= MAX_CANDIDATES {
            return Err(Status::resource_exhausted(format!(
                "{MAX_CANDIDATES} candidates are open; delete some (DeleteCandidate)"
            )));
        }
        let mut id = st.next_id;
        while id == 0 || st.candidates.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        st.next_id = id.wrapping_add(1);
        st.candidates.insert(id, Candidate::default());
        Ok(Response::new(pb::CreateCandidateResponse { candidate_id: id }))
    }

    async fn delete_candidate(
        &self,
        req: Request<pb::DeleteCandidateRequest>,
    ) -> Result<Response<pb::DeleteCandidateResponse>, Status> {
        let id = req.into_inner().candidate_id;
        let c = self.lock().candidates.remove(&id).ok_or_else(|| not_found(id))?;
        if let (Some(d), Some(u)) = (c.daemon, c.upstream_id) {
            if let Ok(mut client) = self.up.client(&d) {
                let r = pb::DeleteCandidateRequest { candidate_id: u };
                if let Err(e) = self.up.call(&d, "DeleteCandidate", async { client.delete_candidate(r).await }).await {
                    warn!(daemon = %d, error = %reason(&e), "northbound proxy: cannot delete the mirror candidate");
                }
            }
        }
        Ok(Response::new(pb::DeleteCandidateResponse {}))
    }

    async fn update_candidate(
        &self,
        req: Request<pb::UpdateCandidateRequest>,
    ) -> Result<Response<pb::UpdateCandidateResponse>, Status> {
        let id = req.into_inner().candidate_id;
        let c = self.candidate(id)?;
        if let (Some(d), Some(u)) = (c.daemon, c.upstream_id) {
            let mut client = self.up.client(&d)?;
            let r = pb::UpdateCandidateRequest { candidate_id: u };
            self.up.call(&d, "UpdateCandidate", async { client.update_candidate(r).await }).await?;
        }
        // Rebased on running as it is now: what was read before is stale.
        if let Some(c) = self.lock().candidates.get_mut(&id) {
            c.read.clear();
        }
        Ok(Response::new(pb::UpdateCandidateResponse {}))
    }

    async fn edit_candidate(
        &self,
        req: Request<pb::EditCandidateRequest>,
    ) -> Result<Response<pb::EditCandidateResponse>, Status> {
        let req = req.into_inner();
        let id = req.candidate_id;
        self.candidate(id)?;
        let paths: Vec<&str> = req.update.iter().chain(&req.delete).map(|p| p.path.as_str()).collect();
        if paths.is_empty() {
            return Err(Status::invalid_argument("EditCandidate without update or delete paths"));
        }
        let daemon = self.owner_of(&paths)?;
        if daemon == "staticd" {
            // Catch invalid prefixes and nexthops before FRR sees them.
            let edit = Edit::Change { update: req.update.clone(), delete: req.delete.clone() };
            apply_edits(&StaticRoutes::default(), &[edit]).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let upstream = self.bind(id, &daemon).await?;
        let mut client = self.up.client(&daemon)?;
        let fwd =
            pb::EditCandidateRequest { candidate_id: upstream, update: req.update.clone(), delete: req.delete.clone() };
        let edit = Edit::Change { update: req.update, delete: req.delete };
        let prefetch = async {
            if daemon == "staticd" {
                self.prefetch(id, &edit).await
            } else {
                Vec::new()
            }
        };
        let (forwarded, read) =
            tokio::join!(self.up.call(&daemon, "EditCandidate", async { client.edit_candidate(fwd).await }), prefetch);
        forwarded?;
        self.record(id, edit, None, read)?;
        Ok(Response::new(pb::EditCandidateResponse {}))
    }

    async fn load_to_candidate(
        &self,
        req: Request<pb::LoadToCandidateRequest>,
    ) -> Result<Response<pb::LoadToCandidateResponse>, Status> {
        let req = req.into_inner();
        let id = req.candidate_id;
        self.candidate(id)?;
        let config = req.config.clone().ok_or_else(|| Status::invalid_argument("LoadToCandidate without config"))?;
        let kind = pb::load_to_candidate_request::LoadType::try_from(req.r#type)
            .map_err(|_| Status::invalid_argument(format!("unknown load type {}", req.r#type)))?;
        let modules = tree_modules(&config.data);
        let steps: Vec<xpath::Step> =
            modules.iter().map(|m| xpath::Step { name: format!("{m}:x"), keys: Vec::new() }).collect();
        if steps.is_empty() {
            return Err(Status::invalid_argument("LoadToCandidate config names no FRR module (frr-...)"));
        }
        let daemon =
            xpath::owner("(loaded config)", &steps, &self.up.nb.daemons(), &self.up.nb.modules()).map_err(route_err)?;
        let xml = config.encoding == pb::Encoding::Xml as i32;
        let opaque = (xml && daemon == "staticd")
            .then(|| "routeguard cannot judge an XML LoadToCandidate; load JSON instead".to_string());
        if daemon == "staticd" && !xml {
            StaticRoutes::from_json(&config.data).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let upstream = self.bind(id, &daemon).await?;
        let mut client = self.up.client(&daemon)?;
        let fwd =
            pb::LoadToCandidateRequest { candidate_id: upstream, r#type: kind as i32, config: Some(config.clone()) };
        self.up.call(&daemon, "LoadToCandidate", async { client.load_to_candidate(fwd).await }).await?;
        self.record(id, Edit::Load { kind: kind as i32, config }, opaque, Vec::new())?;
        Ok(Response::new(pb::LoadToCandidateResponse {}))
    }

    async fn commit(&self, req: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        let req = req.into_inner();
        let id = req.candidate_id;
        let c = self.candidate(id)?;
        let phase = Phase::try_from(req.phase)
            .map_err(|_| Status::invalid_argument(format!("unknown commit phase {}", req.phase)))?;
        info!(candidate = id, phase = ?phase, daemon = ?c.daemon, edits = c.edits.len(), "northbound proxy: commit");
        let r = match phase {
            Phase::All | Phase::Apply => self.commit_judged(id, c, phase, req.comment).await,
            Phase::Validate | Phase::Prepare | Phase::Abort => {
                let (Some(daemon), Some(upstream)) = (c.daemon.clone(), c.upstream_id) else {
                    return Err(Status::aborted(format!("candidate {id} has no edits: no changes to apply")));
                };
                if phase != Phase::Abort {
                    self.precheck(id, &c).await?;
                }
                self.up.forward_commit(&daemon, upstream, phase, &req.comment).await
            }
        };
        match &r {
            Ok(resp) => info!(candidate = id, transaction = resp.transaction_id, "northbound proxy: commit answered"),
            Err(e) => {
                info!(candidate = id, code = ?e.code(), message = %e.message(), "northbound proxy: commit refused")
            }
        }
        r.map(Response::new)
    }

    type ListTransactionsStream = TxStream;

    async fn list_transactions(
        &self,
        _req: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<Self::ListTransactionsStream>, Status> {
        Err(not_proxied("ListTransactions"))
    }

    async fn get_transaction(
        &self,
        _req: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        Err(not_proxied("GetTransaction"))
    }

    async fn lock_config(
        &self,
        _req: Request<pb::LockConfigRequest>,
    ) -> Result<Response<pb::LockConfigResponse>, Status> {
        Err(not_proxied("LockConfig"))
    }

    async fn unlock_config(
        &self,
        _req: Request<pb::UnlockConfigRequest>,
    ) -> Result<Response<pb::UnlockConfigResponse>, Status> {
        Err(not_proxied("UnlockConfig"))
    }

    async fn subscription_cache(
        &self,
        _req: Request<pb::SubscriptionCacheRequest>,
    ) -> Result<Response<pb::SubscriptionCacheResponse>, Status> {
        Err(not_proxied("SubscriptionCache"))
    }

    async fn execute(&self, req: Request<pb::ExecuteRequest>) -> Result<Response<pb::ExecuteResponse>, Status> {
        let req = req.into_inner();
        let daemon = self.owner_of(&[req.path.as_str()])?;
        let mut client = self.up.client(&daemon)?;
        let r = self.up.call(&daemon, "Execute", async { client.execute(req).await.map(|r| r.into_inner()) }).await?;
        Ok(Response::new(r))
    }
}

/// Serves the proxy on `listen` until `shutdown` resolves.
pub async fn serve(
    listen: SocketAddr,
    proxy: Proxy,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    info!(%listen, daemons = ?proxy.up.nb.daemons(), "FRR northbound proxy listening");
    let svc = pb::northbound_server::NorthboundServer::new(proxy).max_decoding_message_size(MAX_REQUEST_BYTES);
    // tonic ignores `Server::tcp_nodelay` for a listener of our own: set it
    // on every accepted connection, or Nagle holds back small answers.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let r =
            tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(incoming, shutdown).await;
        if let Err(e) = r {
            warn!(error = %e, "FRR northbound proxy stopped");
        }
    });
    Ok(())
}

/// Daemon states for `routeguard status`, keyed by daemon.
pub fn states_json(states: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::json!(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_edits_survive_the_journal_unchanged() {
        let edits = vec![
            Edit::Change {
                update: vec![pb::PathValue { path: "/a[x='1']/b".into(), value: "v \"q\"\n".into() }],
                delete: vec![pb::PathValue { path: "/a[x='2']".into(), value: String::new() }],
            },
            Edit::Load {
                kind: pb::load_to_candidate_request::LoadType::Replace as i32,
                config: pb::DataTree {
                    encoding: pb::Encoding::Json as i32,
                    data: "{\"frr-routing:routing\":{}}".into(),
                },
            },
        ];
        let held = HeldCommit {
            daemon: "staticd".into(),
            candidate: 7,
            comment: "drop rgr3".into(),
            edits: edits.iter().map(JournalEdit::from).collect(),
        };
        let text = serde_json::to_string(&held).unwrap();
        let back: HeldCommit = serde_json::from_str(&text).unwrap();
        assert_eq!(back, held);
        let replayed: Vec<Edit> = back.edits.iter().map(Edit::from).collect();
        assert_eq!(format!("{replayed:?}"), format!("{edits:?}"));
    }

    #[tokio::test]
    async fn a_resumed_commit_without_endpoints_fails_naming_the_daemon() {
        let held = HeldCommit { daemon: "staticd".into(), candidate: 3, comment: String::new(), edits: Vec::new() };
        let e = resumed_apply(None, held)(true).await.unwrap_err();
        assert!(e.contains("staticd") && e.contains("candidate 3") && e.contains("[frr.northbound]"), "{e}");
    }

    #[test]
    fn only_missing_data_reads_as_no_route() {
        assert!(is_absent(&Status::invalid_argument("Data path not found")), "FRR 8.4's answer");
        assert!(is_absent(&Status::not_found("no such node")));
        assert!(!is_absent(&Status::invalid_argument("Failed to fetch operational data")));
        assert!(!is_absent(&Status::unavailable("not found")));
        assert!(!is_absent(&Status::internal("Failed to dump data")));
    }

    #[test]
    fn routes_are_read_one_by_one_only_when_spelled_as_staticd_stores_them() {
        let base = "/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-staticd:staticd'][name='staticd'][vrf='default']/frr-staticd:staticd";
        let check = |prefix: &str| {
            let path = format!("{base}/route-list[prefix='{prefix}'][afi-safi='frr-routing:ipv6-unicast']/path-list[table-id='0'][distance='1']");
            let edit = Edit::Change { update: vec![pb::PathValue { path, value: String::new() }], delete: vec![] };
            let plan = read_plan(&[edit]).unwrap();
            let routes: Vec<_> = plan.routes().collect();
            assert_eq!(routes.len(), 1);
            canonical(&routes)
        };
        assert!(check("2001:db8:77::/64"));
        assert!(!check("2001:DB8:77::/64"), "upper case");
        assert!(!check("2001:db8:77::1/64"), "host bits");
        assert!(!check("2001:db8:0077::/64"), "leading zeros");
    }

    #[test]
    fn removals_read_nothing_and_loads_read_everything() {
        let base = "/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-staticd:staticd'][name='staticd'][vrf='default']/frr-staticd:staticd/route-list[prefix='2001:db8::/64'][afi-safi='frr-routing:ipv6-unicast']";
        let pv = |p: &str| pb::PathValue { path: p.into(), value: String::new() };
        let del = Edit::Change { update: vec![], delete: vec![pv(base)] };
        let p = read_plan(std::slice::from_ref(&del)).unwrap();
        assert!(p.routes().next().is_none() && !p.needs_everything());
        // In one request the delete comes after the update: still a removal.
        let nh = format!("{base}/path-list[table-id='0'][distance='1']/frr-nexthops/nexthop[nh-type='ip6'][vrf='default'][gateway='fd00::2'][interface='x']");
        let both = Edit::Change { update: vec![pv(&nh)], delete: vec![pv(base)] };
        assert!(read_plan(&[both]).unwrap().routes().next().is_none());
        let add = Edit::Change { update: vec![pv(&nh)], delete: vec![] };
        let routes: Vec<String> = read_plan(&[del, add]).unwrap().routes().map(|(_, s)| xpath::render(s)).collect();
        assert_eq!(routes, vec![base.to_string()]);
        let load = Edit::Load { kind: 0, config: pb::DataTree { encoding: 0, data: "{}".into() } };
        assert!(read_plan(&[load]).unwrap().needs_everything());
        let bad = Edit::Change { update: vec![pv("no-slash")], delete: vec![] };
        assert!(read_plan(&[bad]).is_err());
    }

    #[test]
    fn modules_of_loaded_trees() {
        let json = r#"{"frr-routing:routing":{"control-plane-protocols":{"control-plane-protocol":[{"type":"frr-staticd:staticd","frr-staticd:staticd":{}}]}}}"#;
        assert_eq!(tree_modules(json), vec!["frr-routing", "frr-staticd"]);
        let xml = r#"<routing xmlns="http://frrouting.org/yang/routing"><staticd xmlns="http://frrouting.org/yang/staticd"/></routing>"#;
        assert_eq!(tree_modules(xml), vec!["frr-routing", "frr-staticd"]);
        assert!(tree_modules("{}").is_empty());
    }

    #[test]
    fn edits_replay_updates_then_deletes_and_loads() {
        let base = "/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-staticd:staticd'][name='staticd'][vrf='default']/frr-staticd:staticd/route-list[prefix='2001:db8::/64'][afi-safi='frr-routing:ipv6-unicast']";
        let nh = format!("{base}/path-list[table-id='0'][distance='1']/frr-nexthops/nexthop[nh-type='ip6'][vrf='default'][gateway='fd00::2'][interface='x']");
        let pv = |p: &str| pb::PathValue { path: p.into(), value: String::new() };
        let e = Edit::Change { update: vec![pv(&nh)], delete: vec![pv(base)] };
        let after = apply_edits(&StaticRoutes::default(), &[e]).unwrap();
        assert!(after.routes.is_empty(), "the delete comes after the update");
        let load = Edit::Load {
            kind: pb::load_to_candidate_request::LoadType::Replace as i32,
            config: pb::DataTree { encoding: 0, data: "{}".into() },
        };
        let e = Edit::Change { update: vec![pv(&nh)], delete: vec![] };
        assert!(apply_edits(&StaticRoutes::default(), &[e, load]).unwrap().routes.is_empty());
    }
}
