//! The gRPC edge: `routeguard.v1.Guard`, gRPC health and reflection, on a
//! unix socket (mode 0660) and optionally on TCP with TLS.

pub mod server;

use std::net::IpAddr;
use std::pin::Pin;
use std::time::Instant;

use futures::Stream;
use tokio::sync::{broadcast, oneshot};
use tonic::{Request, Response, Status};

use crate::core::{ChangeAsk, CoreHandle, LookupResult, Query};
use crate::hazards::Finding;
use crate::model::flows::MemberId;
use crate::policy::intent::{
    parse_address_add, parse_frr_cli, parse_link, parse_local_route, parse_nexthop_group, parse_route_replace,
    parse_sysctl, parse_tunnel, Intent,
};
use crate::policy::{Decision, Verdict};
use crate::proto::guard as pb;

/// Who sent a change: the request's `requester` when set, else the unix
/// peer's uid (recorded in the audit log with every verdict).
fn requester_of(req: &Request<pb::ChangeRequest>) -> String {
    who(req, &req.get_ref().requester)
}

/// `named` when set, else the unix peer's uid; a named requester also
/// carries the uid, which the client cannot choose.
fn who<T>(req: &Request<T>, named: &str) -> String {
    let uid = req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| format!("uid {}", c.uid()));
    match (named.trim(), uid) {
        ("", Some(uid)) => uid,
        ("", None) => "unknown".into(),
        (n, Some(uid)) if !n.ends_with(&format!("({uid})")) => format!("{n} ({uid})"),
        (n, _) => n.to_string(),
    }
}

/// Most objects one `Show` call returns when the request sets no limit.
pub const DEFAULT_SHOW_LIMIT: usize = 10_000;

/// The `Guard` service.
pub struct GuardService {
    core: CoreHandle,
    started: Instant,
    kernel: String,
    northbound: Option<tokio::sync::watch::Receiver<crate::frr::northbound::StateMap>>,
    /// Judges and commits northbound edits (`None` without [frr.northbound]).
    proxy: Option<crate::frr::proxy::Proxy>,
}

impl GuardService {
    /// A service answering from `core`.
    pub fn new(core: CoreHandle, kernel: String) -> Self {
        GuardService { core, started: Instant::now(), kernel, northbound: None, proxy: None }
    }

    /// Reports the FRR northbound daemons' states in `GetStatus`.
    pub fn with_northbound(mut self, states: tokio::sync::watch::Receiver<crate::frr::northbound::StateMap>) -> Self {
        self.northbound = Some(states);
        self
    }

    /// Judges (and, with `propose`, acts on) northbound edits.
    pub fn with_proxy(mut self, proxy: crate::frr::proxy::Proxy) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// `Evaluate`/`Propose` of northbound edits.
    async fn northbound(
        &self,
        e: &pb::NorthboundEdit,
        propose: bool,
        requester: String,
    ) -> Result<Response<pb::Decision>, Status> {
        let Some(proxy) = &self.proxy else {
            return Err(Status::failed_precondition(
                "northbound edits need FRR's gRPC northbound: configure [frr.northbound] endpoints",
            ));
        };
        let update = e
            .update
            .iter()
            .map(|p| crate::proto::frr::PathValue { path: p.path.clone(), value: p.value.clone() })
            .collect();
        let delete =
            e.delete.iter().map(|p| crate::proto::frr::PathValue { path: p.clone(), value: String::new() }).collect();
        let j = proxy.judge(update, delete, propose, requester).await?;
        let mut d = decision_to_pb(&j.decision);
        d.change_id = j.change_id;
        d.outcome = j.outcome;
        d.message = j.message;
        Ok(Response::new(d))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, Status> {
        self.core.ask(make).await.map_err(|e| Status::unavailable(e.to_string()))
    }

    /// The journal entries of change `id`; NOT_FOUND when it has none.
    async fn change_entries(&self, id: u64) -> Result<Vec<crate::journal::Entry>, Status> {
        if id == 0 {
            return Err(Status::invalid_argument("change_id 0 is no change"));
        }
        let entries =
            self.ask(|reply| Query::History { id: Some(id), limit: 0, reply }).await?.map_err(Status::unavailable)?;
        if entries.is_empty() {
            return Err(Status::not_found(format!("no change {id} in the journal")));
        }
        Ok(entries)
    }

    /// The request's intent; a whole FRR configuration is first diffed
    /// against FRR's running one (which needs FRR).
    async fn intent_for(&self, req: &pb::ChangeRequest) -> Result<Intent, Status> {
        let Some(pb::change_request::Intent::FrrConfig(text)) = &req.intent else { return intent_of(req) };
        if text.len() > crate::frr::reload::MAX_CONFIG {
            return Err(Status::invalid_argument(format!(
                "--frr-config: {} bytes; at most {} are accepted",
                text.len(),
                crate::frr::reload::MAX_CONFIG
            )));
        }
        if text.trim().is_empty() {
            return Err(Status::invalid_argument("--frr-config: the configuration is empty"));
        }
        let vtysh = self.ask(|reply| Query::FrrAccess { reply }).await?;
        let diff = crate::frr::reload::diff(&vtysh, text)
            .await
            .map_err(|e| Status::unavailable(format!("cannot diff against FRR's running configuration: {e}")))?;
        Ok(Intent::FrrConfig { text: text.clone(), diff })
    }
}

fn lookup_to_pb(r: LookupResult) -> pb::LookupResponse {
    let route = &r.resolved.route;
    pb::LookupResponse {
        found: true,
        prefix: route.dst.to_string(),
        table: route.table,
        route_type: route_type_name(route.kind).into(),
        protocol: protocol_name(route.protocol),
        metric: route.metric,
        nhid: route.attrs.nhid.unwrap_or(0),
        multipath: r.resolved.members.len() > 1,
        members: r
            .resolved
            .members
            .iter()
            .zip(r.ifnames)
            .map(|(m, ifname)| pb::Member {
                gateway: m.gateway.map(|g| g.to_string()).unwrap_or_default(),
                ifindex: m.ifindex,
                ifname,
                weight: u32::from(m.weight),
                nhid: m.nhid.unwrap_or(0),
            })
            .collect(),
    }
}

/// RTN_* route type names as `ip route` prints them.
pub fn route_type_name(kind: u8) -> &'static str {
    match kind {
        1 => "unicast",
        2 => "local",
        3 => "broadcast",
        4 => "anycast",
        5 => "multicast",
        6 => "blackhole",
        7 => "unreachable",
        8 => "prohibit",
        9 => "throw",
        10 => "nat",
        _ => "unspec",
    }
}

/// RTPROT_* names as iproute2 prints them.
pub fn protocol_name(p: u8) -> String {
    match p {
        0 => "unspec".into(),
        1 => "redirect".into(),
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        9 => "ra".into(),
        11 => "zebra".into(),
        12 => "bird".into(),
        186 => "bgp".into(),
        187 => "isis".into(),
        188 => "ospf".into(),
        189 => "rip".into(),
        other => other.to_string(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ModelEvent, Status>> + Send>>;
type FindingsStream = Pin<Box<dyn Stream<Item = Result<pb::ListFindingsResponse, Status>> + Send>>;

/// Findings to proto.
pub fn finding_to_pb(f: &Finding) -> pb::Finding {
    pb::Finding {
        hazard: f.hazard.into(),
        severity: crate::core::severity_name(f.severity).into(),
        summary: f.summary.clone(),
        breaks: f.breaks as u64,
        evidence: f.evidence.clone(),
        mitigations: f
            .mitigations
            .iter()
            .map(|m| pb::Mitigation {
                name: m.name.into(),
                description: m.description.clone(),
                side_effects: m.side_effects.clone(),
            })
            .collect(),
    }
}

fn decision_to_pb(d: &Decision) -> pb::Decision {
    let mut out = pb::Decision {
        verdict: d.verdict.kind().into(),
        would_be: d.would_be.as_ref().map(|v| v.kind().to_string()).unwrap_or_default(),
        findings: d.findings.iter().map(finding_to_pb).collect(),
        outcome: "evaluated".into(),
        ..Default::default()
    };
    match &d.verdict {
        Verdict::Allow => {}
        Verdict::Delay { max_wait, reason } => {
            out.max_wait_seconds = max_wait.as_secs();
            out.reasons = vec![reason.clone()];
        }
        Verdict::Stage { steps, reason, side_effects, .. } => {
            out.steps = steps.clone();
            out.reasons = vec![reason.clone()];
            out.side_effects = side_effects.clone();
        }
        Verdict::Veto { reasons, fixes } => {
            out.reasons = reasons.clone();
            out.fixes = fixes.clone();
        }
    }
    out
}

/// History entries `ListHistory` returns when no limit is given.
pub const DEFAULT_HISTORY: usize = 1000;
/// Most history entries one `ListHistory` returns.
pub const MAX_HISTORY: usize = 10_000;

fn history_pb(e: &crate::journal::Entry) -> pb::HistoryEntry {
    let json = serde_json::to_value(e).unwrap_or_default();
    pb::HistoryEntry {
        at_ms: e.at_ms,
        r#type: json["type"].as_str().unwrap_or_default().to_string(),
        change_id: e.record.change_id(),
        json: json.to_string(),
    }
}

/// For a whole FRR configuration: the difference that is judged.
fn frr_diff_message(intent: &Intent) -> String {
    match intent {
        Intent::FrrConfig { diff, .. } if diff.is_empty() => "no difference from FRR's running configuration".into(),
        Intent::FrrConfig { diff, .. } => format!("difference from FRR's running configuration:\n{}", diff.join("\n")),
        _ => String::new(),
    }
}

/// Parses the intent of a change request, naming the bad input.
pub fn intent_of(req: &pb::ChangeRequest) -> Result<Intent, Status> {
    use pb::change_request::Intent as I;
    match &req.intent {
        Some(I::RouteReplace(s)) => parse_route_replace(s).map(Intent::RouteReplace),
        Some(I::Sysctl(s)) => parse_sysctl(s),
        Some(I::FrrCli(s)) => parse_frr_cli(s),
        Some(I::Link(s)) => parse_link(s),
        Some(I::AddressAdd(s)) => parse_address_add(s),
        Some(I::Tunnel(s)) => parse_tunnel(s),
        Some(I::LocalRoute(s)) => parse_local_route(s),
        Some(I::NexthopGroup(s)) => parse_nexthop_group(s),
        Some(I::FrrConfig(_)) => {
            return Err(Status::invalid_argument("frr_config is diffed against FRR first (GuardService::intent_for)"))
        }
        Some(I::Northbound(_)) => {
            return Err(Status::invalid_argument("northbound edits are judged by the proxy (GuardService::northbound)"))
        }
        None => {
            return Err(Status::invalid_argument(
                "no change given: set one of route_replace, sysctl, frr_cli, link, address_add, tunnel, \
                 local_route, nexthop_group, frr_config, northbound",
            ))
        }
    }
    .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn member_pb(m: &Option<MemberId>, model_names: &[(u32, String)]) -> Option<pb::FlowMember> {
    m.as_ref().map(|m| pb::FlowMember {
        gateway: m.gateway.map(|g| g.to_string()).unwrap_or_default(),
        ifindex: m.ifindex,
        ifname: model_names.iter().find(|(i, _)| *i == m.ifindex).map(|(_, n)| n.clone()).unwrap_or_default(),
    })
}

fn fact_name(f: Option<bool>) -> String {
    match f {
        Some(true) => "affected",
        Some(false) => "unaffected",
        None => "unknown",
    }
    .into()
}

#[tonic::async_trait]
impl pb::guard_server::Guard for GuardService {
    async fn get_status(&self, req: Request<pb::GetStatusRequest>) -> Result<Response<pb::Status>, Status> {
        let digest = req.into_inner().digest;
        let s = self.ask(|reply| Query::Status { digest, reply }).await?;
        Ok(Response::new(pb::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: self.kernel.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            counts: s.counts.into_iter().collect(),
            stale: s.stale,
            overruns: s.overruns,
            resyncs: s.resyncs,
            events_applied: s.events_applied,
            frr_state: s.frr_state,
            remediations: s.remediations,
            forwarding_reflex: s.forwarding_reflex,
            findings: s.findings.into_iter().collect(),
            verdicts: s.verdicts.into_iter().collect(),
            model_digest: s.digest.unwrap_or_default(),
            sysctls: s.sysctls.into_iter().collect(),
            last_dump_ms: s.last_dump.as_millis() as u64,
            ready: *self.core.ready_rx.borrow(),
            selftest: s.selftest,
            pending: s.pending as u64,
            armed_flows: s.armed_flows as u64,
            frr_northbound: self
                .northbound
                .as_ref()
                .map(|n| n.borrow().clone().into_iter().collect())
                .unwrap_or_default(),
        }))
    }

    async fn lookup(&self, req: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        let req = req.into_inner();
        let addr: IpAddr = req
            .address
            .trim()
            .parse()
            .map_err(|_| Status::invalid_argument(format!("`{}` is not an IPv4 or IPv6 address", req.address)))?;
        let table = if req.table == 0 { crate::model::TABLE_MAIN } else { req.table };
        let r = self.ask(|reply| Query::Lookup { addr, table, reply }).await?;
        Ok(Response::new(match r {
            Some(r) => lookup_to_pb(r),
            None => pb::LookupResponse { found: false, table, ..Default::default() },
        }))
    }

    async fn show(&self, req: Request<pb::ShowRequest>) -> Result<Response<pb::ShowResponse>, Status> {
        let req = req.into_inner();
        let kind = req.kind.trim().to_string();
        if !crate::core::SHOW_KINDS.contains(&kind.as_str()) {
            return Err(Status::invalid_argument(format!(
                "unknown kind `{kind}`; expected one of {}",
                crate::core::SHOW_KINDS.join(", ")
            )));
        }
        let limit = if req.limit == 0 { DEFAULT_SHOW_LIMIT } else { req.limit as usize };
        let objs = self.ask(|reply| Query::Show { kind, limit, reply }).await?.map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::ShowResponse { objects_json: objs.iter().map(|v| v.to_string()).collect() }))
    }

    async fn list_findings(
        &self,
        _req: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        let (findings, stale) = self.ask(|reply| Query::Findings { reply }).await?;
        Ok(Response::new(pb::ListFindingsResponse { findings: findings.iter().map(finding_to_pb).collect(), stale }))
    }

    type WatchFindingsStream = FindingsStream;

    async fn watch_findings(
        &self,
        _req: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<Self::WatchFindingsStream>, Status> {
        let mut rx = self.core.findings_rx.clone();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let snapshot: Vec<pb::Finding> = rx.borrow_and_update().iter().map(finding_to_pb).collect();
                if tx.send(Ok(pb::ListFindingsResponse { findings: snapshot, stale: false })).await.is_err() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }

    async fn list_flows(&self, req: Request<pb::ListFlowsRequest>) -> Result<Response<pb::ListFlowsResponse>, Status> {
        let at_risk = req.into_inner().at_risk;
        let (flows, facts) = self.ask(|reply| Query::Flows { at_risk, reply }).await?;
        let flows = flows
            .into_iter()
            .map(|v| {
                let names: Vec<(u32, String)> =
                    v.flow.members.iter().map(|m| m.ifindex).zip(v.ifnames.iter().cloned()).collect();
                pb::Flow {
                    local: v.flow.local.to_string(),
                    remote: v.flow.remote.to_string(),
                    prefix: v.flow.prefix.to_string(),
                    table: v.flow.table,
                    members: v
                        .flow
                        .members
                        .iter()
                        .zip(&v.ifnames)
                        .map(|(m, n)| pb::Member {
                            gateway: m.gateway.map(|g| g.to_string()).unwrap_or_default(),
                            ifindex: m.ifindex,
                            ifname: n.clone(),
                            weight: u32::from(m.weight),
                            nhid: m.nhid.unwrap_or(0),
                        })
                        .collect(),
                    current: member_pb(&v.flow.current, &names),
                    after: member_pb(&v.flow.after, &names),
                    armed: v.armed,
                }
            })
            .collect();
        Ok(Response::new(pb::ListFlowsResponse {
            flows,
            kernel_v6: fact_name(facts.ecmp_v6_affected),
            kernel_v4: fact_name(facts.ecmp_v4_affected),
        }))
    }

    async fn evaluate(&self, req: Request<pb::ChangeRequest>) -> Result<Response<pb::Decision>, Status> {
        if let Some(pb::change_request::Intent::Northbound(e)) = &req.get_ref().intent {
            return self.northbound(e, false, requester_of(&req)).await;
        }
        let intent = self.intent_for(req.get_ref()).await?;
        let diff = frr_diff_message(&intent);
        let d = self.ask(|reply| Query::Evaluate { intent, reply }).await?;
        let mut d = decision_to_pb(&d);
        d.message = diff;
        Ok(Response::new(d))
    }

    async fn propose(&self, req: Request<pb::ChangeRequest>) -> Result<Response<pb::Decision>, Status> {
        let requester = requester_of(&req);
        if let Some(pb::change_request::Intent::Northbound(e)) = &req.get_ref().intent {
            return self.northbound(e, true, requester).await;
        }
        let intent = self.intent_for(req.get_ref()).await?;
        let o = self
            .ask(|reply| Query::Propose { ask: ChangeAsk { intent, requester, apply_via: None, recipe: None }, reply })
            .await?;
        let mut d = decision_to_pb(&o.decision);
        d.change_id = o.change_id;
        d.outcome = o.outcome.into();
        d.message = o.message;
        Ok(Response::new(d))
    }

    async fn list_pending(
        &self,
        _req: Request<pb::ListPendingRequest>,
    ) -> Result<Response<pb::ListPendingResponse>, Status> {
        let list = self.ask(|reply| Query::Pending { reply }).await?;
        Ok(Response::new(pb::ListPendingResponse {
            changes: list
                .into_iter()
                .map(|p| pb::PendingChange {
                    id: p.id,
                    intent: serde_json::to_string(&p.intent).unwrap_or_default(),
                    verdict: p.verdict.into(),
                    state: p.state,
                    age_seconds: p.age_seconds,
                    deadline_seconds: p.deadline_seconds,
                })
                .collect(),
        }))
    }

    async fn approve(&self, req: Request<pb::ApproveRequest>) -> Result<Response<pb::Decision>, Status> {
        let who = who(&req, &req.get_ref().requester);
        let (id, reason) = (req.get_ref().change_id, req.get_ref().reason.clone());
        if reason.trim().is_empty() {
            return Err(Status::invalid_argument("an approval needs a reason: it is audit-logged"));
        }
        if reason.len() > 4096 {
            return Err(Status::invalid_argument("reason longer than 4096 bytes"));
        }
        let o =
            self.ask(|reply| Query::Approve { id, who, reason, reply }).await?.map_err(Status::failed_precondition)?;
        let mut d = decision_to_pb(&o.decision);
        d.change_id = o.change_id;
        d.outcome = o.outcome.into();
        d.message = o.message;
        Ok(Response::new(d))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        let who = who(&req, &req.get_ref().requester);
        let (id, reason) = (req.get_ref().change_id, req.get_ref().reason.clone());
        if reason.len() > 4096 {
            return Err(Status::invalid_argument("reason longer than 4096 bytes"));
        }
        let message =
            self.ask(|reply| Query::Cancel { id, who, reason, reply }).await?.map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::CancelResponse { message }))
    }

    async fn get_change(&self, req: Request<pb::GetChangeRequest>) -> Result<Response<pb::ChangeInfo>, Status> {
        let id = req.get_ref().change_id;
        let entries = self.change_entries(id).await?;
        let state = entries.last().map(|e| e.state()).unwrap_or_default();
        Ok(Response::new(pb::ChangeInfo { change_id: id, state, entries: entries.iter().map(history_pb).collect() }))
    }

    type WatchChangeStream = std::pin::Pin<Box<dyn Stream<Item = Result<pb::HistoryEntry, Status>> + Send>>;

    async fn watch_change(
        &self,
        req: Request<pb::GetChangeRequest>,
    ) -> Result<Response<Self::WatchChangeStream>, Status> {
        let id = req.get_ref().change_id;
        // Subscribe before reading what is written: nothing falls between.
        let mut rx = self.core.changes_tx.subscribe();
        let past = self.change_entries(id).await?;
        let (tx, out) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for e in &past {
                if tx.send(Ok(history_pb(e))).await.is_err() || e.is_final() {
                    return;
                }
            }
            loop {
                match rx.recv().await {
                    // An entry written between the subscribe and the read
                    // comes twice: send it once.
                    Ok(e) if e.record.change_id() == id && !past.contains(&e) => {
                        if tx.send(Ok(history_pb(&e))).await.is_err() || e.is_final() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx.send(Err(Status::data_loss(format!("{n} journal entries missed")))).await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }

    async fn list_history(
        &self,
        req: Request<pb::ListHistoryRequest>,
    ) -> Result<Response<pb::ListHistoryResponse>, Status> {
        let id = Some(req.get_ref().change_id).filter(|&i| i != 0);
        let limit = match req.get_ref().limit {
            0 => DEFAULT_HISTORY,
            n if n as usize > MAX_HISTORY => {
                return Err(Status::invalid_argument(format!("limit {n}: at most {MAX_HISTORY} entries per call")))
            }
            n => n as usize,
        };
        let entries = self.ask(|reply| Query::History { id, limit, reply }).await?.map_err(Status::unavailable)?;
        Ok(Response::new(pb::ListHistoryResponse { entries: entries.iter().map(history_pb).collect() }))
    }

    async fn list_peers(&self, _req: Request<pb::ListPeersRequest>) -> Result<Response<pb::ListPeersResponse>, Status> {
        let (views, frr_state) = self.ask(|reply| Query::Peers { reply }).await?;
        let s = |v: Option<String>| v.unwrap_or_default();
        Ok(Response::new(pb::ListPeersResponse {
            frr_state,
            peers: views
                .into_iter()
                .map(|v| pb::Peer {
                    address: v.peer.address.to_string(),
                    vrf: v.peer.vrf,
                    state: v.peer.state,
                    source: format!("{:?}", v.peer.source).to_lowercase(),
                    local: v.peer.local.map(|l| l.to_string()).unwrap_or_default(),
                    ifname: s(v.ifname),
                    prefix: s(v.prefix),
                    route_type: s(v.route_type),
                })
                .collect(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let mut rx = self.core.events_tx.subscribe();
        let stream = async_stream(move |tx| async move {
            loop {
                let item = match rx.recv().await {
                    Ok(e) => Ok(pb::ModelEvent {
                        seq: e.seq,
                        kind: e.applied.kind.into(),
                        op: e.applied.op.into(),
                        key: e.applied.key,
                    }),
                    Err(broadcast::error::RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "watcher fell behind and missed {n} events; re-read state with GetStatus/Show and watch again"
                    ))),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a spawned task through a small channel.
fn async_stream<F, Fut>(f: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::ModelEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
