//! Prometheus metrics, served on a loopback HTTP listener (`[metrics]
//! listen`). The core updates them as things happen, so a scrape never
//! waits for the core. Names start with `routeguard_`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Object kind (links, routes_v4, ...).
    pub kind: String,
}

/// `hazard` and `severity` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabel {
    /// Detector.
    pub hazard: String,
    /// info, warning, critical.
    pub severity: String,
}

/// `verdict` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    /// allow, delay, stage, veto.
    pub verdict: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Model objects per kind.
    pub model_objects: Family<KindLabel, Gauge>,
    /// Kernel changes applied to the model.
    pub events: Counter,
    /// Netlink overruns.
    pub overruns: Counter,
    /// Completed re-dumps.
    pub resyncs: Counter,
    /// 1 while the model is stale.
    pub stale: Gauge,
    /// 1 when the last FRR poll succeeded.
    pub frr_up: Gauge,
    /// Duration of FRR polls.
    pub frr_poll_seconds: Histogram,
    /// Current findings.
    pub findings: Family<FindingLabel, Gauge>,
    /// Verdicts issued.
    pub verdicts: Family<VerdictLabel, Counter>,
    /// Held changes.
    pub pending: Gauge,
    /// Flows the next invalidation would move.
    pub armed_flows: Gauge,
    /// Time from a kernel notification to a completed remediation.
    pub remediation_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("routeguard");
        let m = Metrics {
            model_objects: Family::default(),
            events: Counter::default(),
            overruns: Counter::default(),
            resyncs: Counter::default(),
            stale: Gauge::default(),
            frr_up: Gauge::default(),
            frr_poll_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            findings: Family::default(),
            verdicts: Family::default(),
            pending: Gauge::default(),
            armed_flows: Gauge::default(),
            remediation_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            registry: Registry::default(),
        };
        registry.register("model_objects", "Objects in the kernel model, per kind", m.model_objects.clone());
        registry.register("kernel_events", "Kernel changes applied to the model", m.events.clone());
        registry.register("netlink_overruns", "Netlink receive-buffer overruns (ENOBUFS)", m.overruns.clone());
        registry.register("resyncs", "Completed re-dumps after overruns", m.resyncs.clone());
        registry.register("model_stale", "1 while the model may miss kernel changes", m.stale.clone());
        registry.register("frr_up", "1 when the last FRR poll succeeded", m.frr_up.clone());
        registry.register("frr_poll_seconds", "Duration of FRR polls", m.frr_poll_seconds.clone());
        registry.register("findings", "Current findings per hazard and severity", m.findings.clone());
        registry.register("verdicts", "Verdicts issued per kind", m.verdicts.clone());
        registry.register("pending_changes", "Changes held by a delay or stage plan", m.pending.clone());
        registry.register(
            "armed_flows",
            "Flows the next invalidation of their cached route would move",
            m.armed_flows.clone(),
        );
        registry.register(
            "remediation_seconds",
            "Time from the kernel's notification to a completed remediation",
            m.remediation_seconds.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "metrics listening");
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut shutdown => return,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => { warn!(error = %e, "metrics accept failed"); continue; }
                },
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let m = m.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(m.encode())))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
                        };
                        resp.map_err(std::io::Error::other)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(())
}
