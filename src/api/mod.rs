//! The gRPC edge: `routeguard.v1.Guard`, gRPC health and reflection, on a
//! unix socket (mode 0660) and optionally on TCP with TLS.

pub mod server;

use std::net::IpAddr;
use std::pin::Pin;
use std::time::Instant;

use futures::Stream;
use tokio::sync::{broadcast, oneshot};
use tonic::{Request, Response, Status};

use crate::core::{CoreHandle, LookupResult, Query};
use crate::proto::guard as pb;

/// Most objects one `Show` call returns when the request sets no limit.
pub const DEFAULT_SHOW_LIMIT: usize = 10_000;

/// The `Guard` service.
pub struct GuardService {
    core: CoreHandle,
    started: Instant,
    kernel: String,
    frr_state: String,
}

impl GuardService {
    /// A service answering from `core`.
    pub fn new(core: CoreHandle, kernel: String) -> Self {
        GuardService { core, started: Instant::now(), kernel, frr_state: "not_configured".into() }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.core.query_tx.send(make(tx)).await.map_err(|_| Status::unavailable("routeguard core is shutting down"))?;
        rx.await.map_err(|_| Status::unavailable("routeguard core is shutting down"))
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
            frr_state: self.frr_state.clone(),
            model_digest: s.digest.unwrap_or_default(),
            sysctls: s.sysctls.into_iter().collect(),
            last_dump_ms: s.last_dump.as_millis() as u64,
            ready: *self.core.ready_rx.borrow(),
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
