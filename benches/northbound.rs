//! Northbound proxy overhead and `Evaluate` latency (issue 5).
//!
//! Run as root: `cargo bench --bench northbound`. Without `--bench` (e.g.
//! under `cargo test --benches`) it prints "skipped" and exits 0.
//!
//! Part 1, proxy overhead (namespace `rgbnb-<pid>`): FRR 8.4.4 with gRPC
//! (the cached build of integration/frr/build-frr-grpc, zebra + staticd with
//! `-M grpc:PORT`, started by integration/frr/frr-ns) and `routeguard run`
//! with `[frr.northbound]` and `[proxy] listen`. One client thread in the
//! namespace holds two warm tonic channels: one to staticd directly, one to
//! routeguard's `frr.Northbound` proxy. It runs, in batches that alternate
//! direct/proxy (and which goes first), the same operations on both:
//!   * a transaction: `CreateCandidate`, `EditCandidate`, `Commit(ALL)`,
//!     `DeleteCandidate`; the edit alternately adds a harmless static route
//!     (one nexthop on an up veth) and deletes it again, so every commit
//!     changes something and every batch ends where it started. Through
//!     the proxy the add is judged (verdict allow) and the delete is
//!     forwarded unjudged, as the proxy does for removals;
//!   * a `Get` of staticd's configuration (`/frr-routing:routing`, JSON),
//!     read to the end of the stream.
//!
//! Timed: client wall time of the `Commit` call alone (the call the proxy
//! judges), of the whole transaction, and of the `Get` (request to the end
//! of the stream). p50/p99 per side and the ratio proxy/direct.
//!
//! Control (`hop-only`, on unless `RGBENCH_NB_HOP=0`): a third warm channel
//! to a bare pass-through `frr.Northbound` server in this process (tonic,
//! its own current-thread runtime on its own thread, which `setns`es into
//! the namespace and listens on 127.0.0.1:50101) that forwards every call
//! to staticd unchanged: no judgement, no journal, FRR's candidate ids and
//! `Get` stream passed through, TCP_NODELAY like the proxy. It runs the
//! same calls in the same rotation of batches; its ratio to direct is what
//! one extra gRPC hop costs on this machine, the floor for any proxy.
//!
//! Part 2, `Evaluate` latency (namespace `rgbnbe-<pid>`): 1M routes (80 %
//! IPv4, 20 % IPv6, 10 % of them 3-way multipath; the shape of the ECMP
//! bench) are loaded with `ip -batch`, the namespace is dumped into a
//! `Model` with the daemon's own code (`kernel::dump::dump_all`,
//! `Model::apply`, `kernel::sysctl::read`) and, for each intent, parse +
//! `Context` + every detector's `evaluate` + `policy::decide` is timed (what
//! the core does for `Query::Evaluate`, minus its logging and stale check).
//! No flows. Then `routeguard run` in the namespace answers the same intents
//! through gRPC `Evaluate` on its unix socket (client wall time).
//!
//! Cleanup: FRR is stopped (`frr-ns stop`), every process in the namespaces
//! is killed, the namespaces and `/tmp/rgbnb-<pid>/` are removed on every
//! exit path (Drop guard, SIGINT/SIGTERM/SIGHUP watcher, `PR_SET_PDEATHSIG`
//! on the daemon). Every `ip` command carries `-n NS` or runs under `ip
//! netns exec NS`; only threads of this process ever `setns`, never the
//! main thread.
//!
//! Knobs: `RGBENCH_NB_PARTS` (default `proxy,evaluate`), `RGBENCH_NB_CALLS`
//! (default 1000 per side and kind), `RGBENCH_NB_BATCH` (default 50, even),
//! `RGBENCH_NB_ROUTES` (default 1000000), `RGBENCH_NB_EVALS` (default 1000
//! in-process calls per intent), `RGBENCH_NB_GRPC` (default 200 gRPC calls
//! per intent), `RGBENCH_NB_HOP` (default 1; 0 skips the hop-only control),
//! `RGBENCH_DAEMON=PATH` picks another daemon binary.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use tonic::transport::Channel;

use routeguard::hazards::{self, Context, Finding, KernelFacts};
use routeguard::kernel::{dump, sysctl};
use routeguard::model::flows::FlowTable;
use routeguard::model::{Applied, Change, Model};
use routeguard::policy::intent::{self, Intent};
use routeguard::policy::{self, HazardsConfig};
use routeguard::proto::frr as fpb;
use routeguard::proto::frr::northbound_client::NorthboundClient;
use routeguard::proto::frr::northbound_server::{Northbound, NorthboundServer};
use routeguard::proto::guard as pb;

#[path = "common/mod.rs"]
mod common;
use common::{
    cpu_seconds, daemon_bin, env_u64, in_ns_named as in_ns, ip, kill, loadavg, run_ok, Daemon, Guard, Rng, Stats,
};

/// gRPC ports of zebra and staticd inside the lab namespace (frr-ns gives
/// zebra BASE and staticd BASE+1), and the proxy's.
const ZEBRA: u16 = 50051;
const STATICD: u16 = 50052;
const PROXY: u16 = 50100;
/// The harmless route of part 1.
const NB_PREFIX: &str = "2001:db8:77::/64";
const NB_GW: &str = "fd00:1::2";
const NB_DEV: &str = "rgbnb0";
/// Untimed calls per side and kind before the timed ones.
const WARMUP: usize = 20;

// ---------------------------------------------------------------------------
// Cleanup: one registry, used by the Drop guard and the signal watcher.

struct Cleanup {
    namespaces: Vec<String>,
    frr: Vec<String>,
    dir: PathBuf,
    pids: Vec<u32>,
}

static CLEANUP: Mutex<Option<Cleanup>> = Mutex::new(None);

fn registry() -> std::sync::MutexGuard<'static, Option<Cleanup>> {
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner())
}

fn track(f: impl FnOnce(&mut Cleanup)) {
    if let Some(c) = registry().as_mut() {
        f(c);
    }
}

fn frr_ns() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("integration/frr/frr-ns")
}

/// Stops FRR, kills what we started and everything inside our namespaces
/// (never this process), deletes the namespaces and the scratch directory.
/// Idempotent.
fn cleanup() {
    let mut reg = registry();
    let Some(c) = reg.take() else { return };
    for ns in &c.frr {
        let _ = Command::new(frr_ns()).args(["stop", ns]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
    for &p in &c.pids {
        kill(p, libc::SIGKILL);
    }
    for ns in &c.namespaces {
        common::reap_ns(ns);
        common::delete_ns("northbound", ns);
    }
    let _ = std::fs::remove_dir_all(&c.dir);
}

// ---------------------------------------------------------------------------
// Small helpers.

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// The daemon.

/// A channel to the Guard API's unix socket, built as `client::connect`
/// builds it.
async fn unix_channel(path: &Path) -> Result<Channel> {
    let p = path.to_path_buf();
    let ch =
        tonic::transport::Endpoint::try_from("http://[::1]:50051")?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await?;
    Ok(ch)
}

fn status(rt: &tokio::runtime::Runtime, sock: &Path) -> Result<pb::Status> {
    rt.block_on(async {
        let mut c = routeguard::client::connect(sock).await?;
        Ok(c.get_status(pb::GetStatusRequest { digest: false }).await?.into_inner())
    })
}

// ---------------------------------------------------------------------------
// Part 1: the northbound proxy against FRR directly.

fn route_xpath(prefix: &str) -> String {
    format!(
        "/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-staticd:staticd'][name='staticd'][vrf='default']/frr-staticd:staticd/route-list[prefix='{prefix}'][afi-safi='frr-routing:ipv6-unicast']"
    )
}

fn nexthop_xpath(prefix: &str, gw: &str, dev: &str) -> String {
    format!(
        "{}/path-list[table-id='0'][distance='1']/frr-nexthops/nexthop[nh-type='ip6'][vrf='default'][gateway='{gw}'][interface='{dev}']",
        route_xpath(prefix)
    )
}

fn pv(path: String) -> fpb::PathValue {
    fpb::PathValue { path, value: String::new() }
}

async fn nb_client(port: u16) -> Result<NorthboundClient<Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connect 127.0.0.1:{port}"))?;
    Ok(NorthboundClient::new(ch))
}

/// One transaction; returns (Commit ms, whole transaction ms).
async fn transaction(c: &mut NorthboundClient<Channel>, add: bool) -> Result<(f64, f64)> {
    let t0 = Instant::now();
    let id = c.create_candidate(fpb::CreateCandidateRequest {}).await?.into_inner().candidate_id;
    let req = if add {
        fpb::EditCandidateRequest {
            candidate_id: id,
            update: vec![pv(nexthop_xpath(NB_PREFIX, NB_GW, NB_DEV))],
            delete: vec![],
        }
    } else {
        fpb::EditCandidateRequest { candidate_id: id, update: vec![], delete: vec![pv(route_xpath(NB_PREFIX))] }
    };
    c.edit_candidate(req).await.context("EditCandidate")?;
    let t1 = Instant::now();
    let r = c
        .commit(fpb::CommitRequest {
            candidate_id: id,
            phase: fpb::commit_request::Phase::All as i32,
            comment: "bench".into(),
        })
        .await;
    let commit = t1.elapsed();
    r.with_context(|| format!("Commit ({})", if add { "add" } else { "delete" }))?;
    c.delete_candidate(fpb::DeleteCandidateRequest { candidate_id: id }).await.context("DeleteCandidate")?;
    Ok((ms(commit), ms(t0.elapsed())))
}

/// `Get` of staticd's configuration, to the end of the stream; (ms, bytes).
async fn get_config(c: &mut NorthboundClient<Channel>) -> Result<(f64, usize)> {
    let req = fpb::GetRequest {
        r#type: fpb::get_request::DataType::Config as i32,
        encoding: fpb::Encoding::Json as i32,
        with_defaults: false,
        path: vec!["/frr-routing:routing".into()],
    };
    let t = Instant::now();
    let mut s = c.get(req).await.context("Get")?.into_inner();
    let mut bytes = 0;
    while let Some(r) = s.message().await.context("Get stream")? {
        bytes += r.data.map(|d| d.data.len()).unwrap_or(0);
    }
    Ok((ms(t.elapsed()), bytes))
}

#[derive(Default)]
struct Side {
    commit_add: Vec<f64>,
    commit_del: Vec<f64>,
    tx: Vec<f64>,
    get: Vec<f64>,
    get_bytes: usize,
}

impl Side {
    fn commits(&self) -> Vec<f64> {
        self.commit_add.iter().chain(&self.commit_del).copied().collect()
    }
}

/// One timed kind: name, direct, proxy and (if measured) hop-only samples.
type Kind = (&'static str, Vec<f64>, Vec<f64>, Option<Vec<f64>>);

fn proxy_part(p: &Params, ns: &str, dir: &Path) -> Result<Value> {
    let grpc_prefix = PathBuf::from("/var/cache/routeguard-test/frr-grpc-8.4.4/sbin/staticd");
    if !grpc_prefix.is_file() {
        bail!(
            "FRR 8.4.4 with gRPC is not in the cache ({} missing); run integration/frr/build-frr-grpc first",
            grpc_prefix.display()
        );
    }
    run_ok("ip", &["netns", "add", ns])?;
    track(|c| c.namespaces.push(ns.to_string()));
    ip(ns, &["link", "set", "lo", "up"])?;
    ip(ns, &["link", "add", NB_DEV, "type", "veth", "peer", "name", "rgbnb1"])?;
    ip(ns, &["link", "set", NB_DEV, "up"])?;
    ip(ns, &["link", "set", "rgbnb1", "up"])?;
    ip(ns, &["-6", "addr", "add", "fd00:1::1/64", "dev", NB_DEV, "nodad"])?;
    let conf = dir.join("frr.conf");
    std::fs::write(&conf, "!\n")?;
    track(|c| c.frr.push(ns.to_string()));
    let out = run_ok(
        frr_ns().to_str().unwrap_or_default(),
        &[
            "start",
            ns,
            "--flavor",
            "grpc",
            "--daemons",
            "zebra,staticd",
            "--config",
            conf.to_str().unwrap_or_default(),
            "--grpc-base-port",
            &ZEBRA.to_string(),
        ],
    )?;
    println!("northbound: 1. FRR: {}", out.trim().replace('\n', "; "));
    let extra = format!(
        "[frr.northbound]\nzebra = \"http://127.0.0.1:{ZEBRA}\"\nstaticd = \"http://127.0.0.1:{STATICD}\"\n\
         [proxy]\nlisten = \"127.0.0.1:{PROXY}\"\n"
    );
    // JSON logs: their timestamps split the proxy's commits into segments.
    let extra = format!("log_format = \"json\"\n{extra}");
    let mut d = Daemon::spawn(&p.daemon, ns, dir, "proxy", &extra, |pid| track(|c| c.pids.push(pid)))?;
    d.wait_dump()?;
    let pid = d.pid()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let t = Instant::now();
    loop {
        let s = status(&rt, &d.sock)?;
        let up = |k: &str| s.frr_northbound.get(k).is_some_and(|v| v == "up");
        if up("zebra") && up("staticd") {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("frr_northbound not up after 30 s: {:?}", s.frr_northbound);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The control: a bare pass-through hop to staticd (RGBENCH_NB_HOP=0 skips it).
    let mut hop = if p.hop { Some(HopServer::start(ns, HOP, STATICD)?) } else { None };
    let load_start = loadavg();
    println!(
        "northbound: 1. routeguard proxy{} and FRR up; measuring (load {load_start})",
        if hop.is_some() { ", hop-only control" } else { "" }
    );

    let calls = p.calls;
    let batch = p.batch;
    let cpu0 = (cpu_seconds(pid), Instant::now());
    let with_hop = hop.is_some();
    let (direct, proxy, hop_side, checks) = in_ns(ns, "rgb-nb-client", || {
        let crt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        crt.block_on(async {
            // Sides: 0 direct, 1 routeguard's proxy, 2 the hop-only control.
            let mut sides = vec![nb_client(STATICD).await?, nb_client(PROXY).await?];
            if with_hop {
                sides.push(nb_client(HOP).await?);
            }
            let n = sides.len();
            let mut out: Vec<Side> = (0..n).map(|_| Side::default()).collect();
            // Warm-up, and a check that an add through the proxy really
            // lands in staticd's configuration (and a delete removes it).
            for c in sides.iter_mut() {
                for i in 0..WARMUP {
                    transaction(c, i % 2 == 0).await?;
                    get_config(c).await?;
                }
            }
            transaction(&mut sides[1], true).await?;
            let landed = String::from_utf8_lossy(&get_raw(&mut sides[0]).await?).contains(NB_PREFIX);
            transaction(&mut sides[1], false).await?;
            let removed = !String::from_utf8_lossy(&get_raw(&mut sides[0]).await?).contains(NB_PREFIX);
            if !landed || !removed {
                bail!("proxy commits did not reach staticd (landed {landed}, removed {removed})");
            }
            let mut checks = json!({"landed": landed, "removed": removed});
            if with_hop {
                transaction(&mut sides[2], true).await?;
                let landed = String::from_utf8_lossy(&get_raw(&mut sides[0]).await?).contains(NB_PREFIX);
                transaction(&mut sides[2], false).await?;
                let removed = !String::from_utf8_lossy(&get_raw(&mut sides[0]).await?).contains(NB_PREFIX);
                if !landed || !removed {
                    bail!("hop-only commits did not reach staticd (landed {landed}, removed {removed})");
                }
                checks["hop_landed"] = json!(landed);
                checks["hop_removed"] = json!(removed);
            }
            // Commits: batches alternate between the sides, and which side
            // goes first rotates too (direct/proxy, proxy/direct without the
            // control; direct/proxy/hop, proxy/hop/direct, hop/direct/proxy
            // with it).
            let rounds = calls.div_ceil(batch);
            for round in 0..rounds {
                for s in (0..n).map(|k| (k + round) % n) {
                    for i in 0..batch {
                        let add = i % 2 == 0;
                        let (c, tx) = transaction(&mut sides[s], add).await?;
                        if add {
                            out[s].commit_add.push(c)
                        } else {
                            out[s].commit_del.push(c)
                        }
                        out[s].tx.push(tx);
                    }
                }
            }
            for round in 0..rounds {
                for s in (0..n).map(|k| (k + round) % n) {
                    for _ in 0..batch {
                        let (t, bytes) = get_config(&mut sides[s]).await?;
                        out[s].get.push(t);
                        out[s].get_bytes = bytes;
                    }
                }
            }
            let hop_side = if with_hop { out.pop() } else { None };
            let proxy = out.pop().unwrap_or_default();
            let direct = out.pop().unwrap_or_default();
            Ok((direct, proxy, hop_side, checks))
        })
    })?;
    if let Some(h) = hop.as_mut() {
        h.stop();
    }
    let cpu = cpu_seconds(pid) - cpu0.0;
    let wall = cpu0.1.elapsed().as_secs_f64();
    let s = status(&rt, &d.sock)?;
    let allow = s.verdicts.get("allow").copied().unwrap_or(0);
    let other: u64 = s.verdicts.iter().filter(|(k, _)| k.as_str() != "allow").map(|(_, v)| *v).sum();
    let load_end = loadavg();
    drop(rt);
    d.stop()?;
    let _ = Command::new(frr_ns()).args(["stop", ns]).stdout(Stdio::null()).status();
    track(|c| c.frr.retain(|n| n != ns));
    let segments = commit_segments(&dir.join("proxy.log"), WARMUP + 2)?;

    // Journal sync cost on the state directory's filesystem: part of every
    // judged commit (a decision record is synced, with fdatasync as the
    // journal does, before anything is done).
    let fsync = {
        let path = dir.join("fsync-probe");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let mut v = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            f.write_all(b"{\"record\":\"decision\",\"padding\":\"............................................\"}\n")?;
            f.sync_data()?;
            v.push(ms(t.elapsed()));
        }
        let _ = std::fs::remove_file(&path);
        Stats::of(&v)
    };

    let mut res = serde_json::Map::new();
    let mut ratios = serde_json::Map::new();
    let mut pass = true;
    let mut hop_ratios = serde_json::Map::new();
    let hs = hop_side.as_ref();
    let kinds: [Kind; 5] = [
        ("commit", direct.commits(), proxy.commits(), hs.map(Side::commits)),
        ("commit_add", direct.commit_add.clone(), proxy.commit_add.clone(), hs.map(|h| h.commit_add.clone())),
        ("commit_delete", direct.commit_del.clone(), proxy.commit_del.clone(), hs.map(|h| h.commit_del.clone())),
        ("transaction", direct.tx.clone(), proxy.tx.clone(), hs.map(|h| h.tx.clone())),
        ("get", direct.get.clone(), proxy.get.clone(), hs.map(|h| h.get.clone())),
    ];
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    for (kind, dv, pv, hv) in &kinds {
        let (sd, sp) = (Stats::of(dv), Stats::of(pv));
        let (r50, r99) = (sp.p50 / sd.p50, sp.p99 / sd.p99);
        println!("northbound: 1. {kind:<13} direct   {}", sd.line("ms"));
        println!("northbound: 1. {kind:<13} proxy    {}", sp.line("ms"));
        if let Some(hv) = hv {
            let sh = Stats::of(hv);
            let (h50, h90, h99) = (sh.p50 / sd.p50, sh.p90 / sd.p90, sh.p99 / sd.p99);
            println!("northbound: 1. {kind:<13} hop-only {}", sh.line("ms"));
            println!(
                "northbound: 1. {kind:<13} ratio hop-only/direct p50 {h50:.2} p90 {h90:.2} p99 {h99:.2}; \
                 proxy/hop-only p50 {:.2} p99 {:.2}",
                sp.p50 / sh.p50,
                sp.p99 / sh.p99
            );
            hop_ratios.insert(
                kind.to_string(),
                json!({"p50": r3(h50), "p90": r3(h90), "p99": r3(h99),
                       "proxy_over_hop_p50": r3(sp.p50 / sh.p50), "proxy_over_hop_p99": r3(sp.p99 / sh.p99)}),
            );
            res.insert(
                kind.to_string(),
                json!({"direct_ms": sd.json(), "proxy_ms": sp.json(), "hop_only_ms": sh.json()}),
            );
        } else {
            res.insert(kind.to_string(), json!({"direct_ms": sd.json(), "proxy_ms": sp.json()}));
        }
        println!("northbound: 1. {kind:<13} ratio proxy/direct p50 {r50:.2} p99 {r99:.2}");
        if matches!(*kind, "commit" | "get") {
            pass &= r50 <= 1.2 && r99 <= 1.2;
        }
        ratios.insert(kind.to_string(), json!({"p50": r3(r50), "p99": r3(r99)}));
    }
    println!(
        "northbound: 1. Get answer {} bytes; daemon verdicts allow {allow} (adds through the proxy incl. warm-up: {}), \
         other {other}; daemon CPU {cpu:.2} s over {wall:.1} s; journal write+fdatasync on the state dir {} (load {load_end})",
        proxy.get_bytes,
        proxy.commit_add.len() + WARMUP / 2 + 1,
        fsync.line("ms"),
    );
    Ok(json!({
        "calls_per_side": calls, "batch": batch, "load_start": load_start, "load_end": load_end,
        "results": res, "ratios": ratios, "get_bytes": proxy.get_bytes, "checks": checks,
        "hop_only": if with_hop {
            json!({"listen": format!("127.0.0.1:{HOP}"), "runtime": "current_thread, own thread in the namespace",
                   "ratios_to_direct": hop_ratios})
        } else {
            json!(null)
        },
        "daemon_verdicts": {"allow": allow, "other": other}, "daemon_cpu_secs": cpu, "wall_secs": wall,
        "journal_fsync_ms": fsync.json(), "daemon_side_segments_ms": segments,
        "target": {"goal": "proxy/direct <= 1.2 at p50 and p99, Commit and Get", "pass": pass},
    }))
}

/// Seconds of the day of a tracing JSON timestamp (`...T06:40:01.123456Z`).
fn tod(v: &Value) -> Option<f64> {
    let t = v["timestamp"].as_str()?;
    let hms = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut it = hms.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The daemon's own view of each proxied commit, from its JSON log (one
/// client, so commits do not overlap), skipping the first `skip`:
/// * add: received -> "proposal judged" (staticd `Get`, intents, the core's
///   detectors and policy) -> "change applied" (journal fsync, spawn, the
///   forwarded `Commit`) -> "commit answered";
/// * delete: received -> "route change not judged" (staticd `Get`; since
///   3ebacda "commit not judged", nothing read) -> "commit answered" (the
///   forwarded `Commit`).
fn commit_segments(log: &Path, skip: usize) -> Result<Value> {
    let text = std::fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    let mut seg: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut cur: Option<(f64, Vec<(&'static str, f64)>)> = None;
    let mut n = 0usize;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(msg), Some(t)) = (v["message"].as_str(), tod(&v)) else { continue };
        match msg {
            "northbound proxy: commit" => cur = Some((t, Vec::new())),
            "proposal judged" => cur.iter_mut().for_each(|c| c.1.push(("judged", t))),
            "change applied" => cur.iter_mut().for_each(|c| c.1.push(("applied", t))),
            m if m.starts_with("northbound proxy: route change not judged")
                || m.starts_with("northbound proxy: commit not judged") =>
            {
                cur.iter_mut().for_each(|c| c.1.push(("not_judged", t)))
            }
            "northbound proxy: commit answered" => {
                let Some((t0, marks)) = cur.take() else { continue };
                n += 1;
                if n <= skip {
                    continue;
                }
                let at = |k: &str| marks.iter().find(|(m, _)| *m == k).map(|(_, t)| *t);
                let ms = |a: f64, b: f64| (b - a) * 1000.0;
                match (at("judged"), at("applied"), at("not_judged")) {
                    (Some(j), Some(a), _) => {
                        seg.entry("add: received -> judged (Get + intents + core)").or_default().push(ms(t0, j));
                        seg.entry("add: judged -> applied (journal + forwarded Commit)").or_default().push(ms(j, a));
                        seg.entry("add: applied -> answered").or_default().push(ms(a, t));
                        seg.entry("add: received -> answered").or_default().push(ms(t0, t));
                    }
                    (_, _, Some(g)) => {
                        seg.entry("delete: received -> read done (none since 3ebacda)").or_default().push(ms(t0, g));
                        seg.entry("delete: read done -> answered (forwarded Commit)").or_default().push(ms(g, t));
                        seg.entry("delete: received -> answered").or_default().push(ms(t0, t));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let mut out = serde_json::Map::new();
    for (k, v) in &seg {
        let s = Stats::of(v);
        println!("northbound: 1. daemon side, {k}: {}", s.line("ms"));
        out.insert(k.to_string(), s.json());
    }
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------------------
// Part 1's control: a bare gRPC hop.

/// gRPC port of the pass-through control (`RGBENCH_NB_HOP`).
const HOP: u16 = 50101;

/// A `frr.Northbound` server that forwards every call to staticd unchanged:
/// no judgement, no journal, no candidate bookkeeping (FRR's candidate ids
/// pass through), `Get` answers streamed straight from FRR's stream. What
/// one tonic hop costs, and nothing else.
struct Hop {
    up: NorthboundClient<Channel>,
}

type Fwd<T> = std::result::Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl Northbound for Hop {
    async fn get_capabilities(
        &self,
        r: tonic::Request<fpb::GetCapabilitiesRequest>,
    ) -> Fwd<fpb::GetCapabilitiesResponse> {
        self.up.clone().get_capabilities(r.into_inner()).await
    }
    type GetStream = tonic::codec::Streaming<fpb::GetResponse>;
    async fn get(&self, r: tonic::Request<fpb::GetRequest>) -> Fwd<Self::GetStream> {
        self.up.clone().get(r.into_inner()).await
    }
    async fn subscribe(&self, r: tonic::Request<fpb::SubscribeRequest>) -> Fwd<fpb::SubscribeResponse> {
        self.up.clone().subscribe(r.into_inner()).await
    }
    async fn create_candidate(
        &self,
        r: tonic::Request<fpb::CreateCandidateRequest>,
    ) -> Fwd<fpb::CreateCandidateResponse> {
        self.up.clone().create_candidate(r.into_inner()).await
    }
    async fn delete_candidate(
        &self,
        r: tonic::Request<fpb::DeleteCandidateRequest>,
    ) -> Fwd<fpb::DeleteCandidateResponse> {
        self.up.clone().delete_candidate(r.into_inner()).await
    }
    async fn update_candidate(
        &self,
        r: tonic::Request<fpb::UpdateCandidateRequest>,
    ) -> Fwd<fpb::UpdateCandidateResponse> {
        self.up.clone().update_candidate(r.into_inner()).await
    }
    async fn edit_candidate(&self, r: tonic::Request<fpb::EditCandidateRequest>) -> Fwd<fpb::EditCandidateResponse> {
        self.up.clone().edit_candidate(r.into_inner()).await
    }
    async fn load_to_candidate(
        &self,
        r: tonic::Request<fpb::LoadToCandidateRequest>,
    ) -> Fwd<fpb::LoadToCandidateResponse> {
        self.up.clone().load_to_candidate(r.into_inner()).await
    }
    async fn commit(&self, r: tonic::Request<fpb::CommitRequest>) -> Fwd<fpb::CommitResponse> {
        self.up.clone().commit(r.into_inner()).await
    }
    type ListTransactionsStream = tonic::codec::Streaming<fpb::ListTransactionsResponse>;
    async fn list_transactions(
        &self,
        r: tonic::Request<fpb::ListTransactionsRequest>,
    ) -> Fwd<Self::ListTransactionsStream> {
        self.up.clone().list_transactions(r.into_inner()).await
    }
    async fn get_transaction(&self, r: tonic::Request<fpb::GetTransactionRequest>) -> Fwd<fpb::GetTransactionResponse> {
        self.up.clone().get_transaction(r.into_inner()).await
    }
    async fn lock_config(&self, r: tonic::Request<fpb::LockConfigRequest>) -> Fwd<fpb::LockConfigResponse> {
        self.up.clone().lock_config(r.into_inner()).await
    }
    async fn unlock_config(&self, r: tonic::Request<fpb::UnlockConfigRequest>) -> Fwd<fpb::UnlockConfigResponse> {
        self.up.clone().unlock_config(r.into_inner()).await
    }
    async fn subscription_cache(
        &self,
        r: tonic::Request<fpb::SubscriptionCacheRequest>,
    ) -> Fwd<fpb::SubscriptionCacheResponse> {
        self.up.clone().subscription_cache(r.into_inner()).await
    }
    async fn execute(&self, r: tonic::Request<fpb::ExecuteRequest>) -> Fwd<fpb::ExecuteResponse> {
        self.up.clone().execute(r.into_inner()).await
    }
}

/// The running control: its thread (in the lab namespace, with its own
/// current-thread runtime) and the sender that stops it.
struct HopServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HopServer {
    /// Starts the pass-through on 127.0.0.1:`listen` inside `ns`, forwarding
    /// to staticd at 127.0.0.1:`upstream` (reachable only from inside `ns`,
    /// hence the thread's `setns`). Returns once it listens and its upstream
    /// channel is connected.
    fn start(ns: &str, listen: u16, upstream: u16) -> Result<HopServer> {
        let path = format!("/var/run/netns/{ns}");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new().name("rgb-nb-hop".into()).spawn(move || {
            let setup =
                (|| -> Result<(tokio::runtime::Runtime, tokio::net::TcpListener, NorthboundClient<Channel>)> {
                    use std::os::fd::AsRawFd;
                    let fd = File::open(&path).with_context(|| format!("open {path}"))?;
                    // SAFETY: setns(2) on a namespace fd we hold; affects this thread only.
                    #[allow(unsafe_code)]
                    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        bail!("setns({path}): {}", std::io::Error::last_os_error());
                    }
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    let (l, up) = rt.block_on(async {
                        let l = tokio::net::TcpListener::bind(("127.0.0.1", listen))
                            .await
                            .with_context(|| format!("bind 127.0.0.1:{listen}"))?;
                        Ok::<_, anyhow::Error>((l, nb_client(upstream).await?))
                    })?;
                    Ok((rt, l, up))
                })();
            let (rt, listener, up) = match setup {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // As routeguard's proxy: TCP_NODELAY on accepted connections.
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let r = rt.block_on(
                tonic::transport::Server::builder()
                    .add_service(NorthboundServer::new(Hop { up }))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop_rx.await;
                    }),
            );
            if let Err(e) = r {
                eprintln!("northbound: hop-only server stopped: {e}");
            }
        })?;
        let mut hop = HopServer { stop: Some(stop_tx), thread: Some(thread) };
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => Ok(hop),
            Ok(Err(e)) => {
                hop.stop();
                Err(e.context("hop-only server"))
            }
            Err(e) => {
                hop.stop();
                bail!("hop-only server not ready: {e}")
            }
        }
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HopServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn get_raw(c: &mut NorthboundClient<Channel>) -> Result<Vec<u8>> {
    let req = fpb::GetRequest {
        r#type: fpb::get_request::DataType::Config as i32,
        encoding: fpb::Encoding::Json as i32,
        with_defaults: false,
        path: vec!["/frr-routing:routing".into()],
    };
    let mut s = c.get(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await? {
        out.extend_from_slice(r.data.map(|d| d.data).unwrap_or_default().as_bytes());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Part 2: Evaluate on a 1M-route model.

struct Generated {
    v4: usize,
    v6: usize,
    /// First IPv6 3-way multipath route: its prefix.
    multipath_v6: String,
}

fn route_members_v6(n: u32) -> String {
    (1..=n).map(|i| format!(" nexthop via fd00:{i}::2 dev rgr{i}")).collect()
}

/// The ECMP bench's route shape: BGP-like, deterministic, de-duplicated.
fn write_route_batches(dir: &Path, total: usize) -> Result<(PathBuf, PathBuf, Generated)> {
    let n4 = total * 4 / 5;
    let n6 = total - n4;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let v4p = dir.join("v4.batch");
    let v6p = dir.join("v6.batch");
    let mut seen4: HashSet<(u32, u8)> = HashSet::with_capacity(n4);
    let mut w = BufWriter::new(File::create(&v4p)?);
    while seen4.len() < n4 {
        let x = rng.next();
        let first = (x % 223 + 1) as u32;
        if first == 10 || first == 127 || first == 100 || first == 169 || first == 172 || first == 192 {
            continue;
        }
        let len: u8 = if (x >> 8) % 10 < 6 { 24 } else { 16 + ((x >> 16) % 8) as u8 };
        let addr = ((first << 24) | ((x >> 24) as u32 & 0x00ff_ffff)) & (u32::MAX << (32 - len));
        if !seen4.insert((addr, len)) {
            continue;
        }
        let p = format!("{}/{len}", Ipv4Addr::from(addr));
        let k = (x >> 40) % 3 + 1;
        if (x >> 48).is_multiple_of(10) {
            let m: String = (1..=3).map(|i| format!(" nexthop via 10.{i}.0.2 dev rgr{i}")).collect();
            writeln!(w, "route add {p}{m}")?;
        } else {
            writeln!(w, "route add {p} via 10.{k}.0.2 dev rgr{k}")?;
        }
    }
    w.flush()?;
    let mut seen6: HashSet<(u128, u8)> = HashSet::with_capacity(n6);
    let mut w = BufWriter::new(File::create(&v6p)?);
    let mut multipath_v6 = String::new();
    while seen6.len() < n6 {
        let x = rng.next();
        let y = rng.next();
        let len: u8 = if x.is_multiple_of(2) { 48 } else { 32 + ((x >> 8) % 16) as u8 };
        let hi = (0x2000u128 | ((y >> 48) as u128 & 0x1fff)) << 112;
        let addr = (hi | ((y as u128 & 0xffff_ffff_ffff) << 64)) & (u128::MAX << (128 - len as u32));
        // 2001:db8::/32 is the lab's own (the anycast-gateway route).
        if (addr >> 96) == 0x2001_0db8 || !seen6.insert((addr, len)) {
            continue;
        }
        let p = format!("{}/{len}", Ipv6Addr::from(addr));
        let k = (x >> 40) % 3 + 1;
        if (x >> 48).is_multiple_of(10) {
            if multipath_v6.is_empty() {
                multipath_v6 = p.clone();
            }
            writeln!(w, "route add {p}{}", route_members_v6(3))?;
        } else {
            writeln!(w, "route add {p} via fd00:{k}::2 dev rgr{k}")?;
        }
    }
    w.flush()?;
    Ok((v4p, v6p, Generated { v4: n4, v6: n6, multipath_v6 }))
}

/// The detectors' context: no flows, no peers, no hairpin filters, kernel
/// facts as a daemon without a self-test result has them.
fn ctx<'a>(model: &'a Model, flows: &'a FlowTable, kernel: &'a KernelFacts) -> Context<'a> {
    Context { model, flows, kernel, peers: &[], hairpin_filters: &NO_FILTERS }
}

static NO_FILTERS: BTreeSet<String> = BTreeSet::new();

/// An intent in its gRPC text form (`kind`: the `ChangeRequest` field).
struct Case {
    name: &'static str,
    kind: &'static str,
    text: String,
}

impl Case {
    fn parse(&self) -> Result<Intent> {
        let r = match self.kind {
            "route_replace" => intent::parse_route_replace(&self.text).map(Intent::RouteReplace),
            "sysctl" => intent::parse_sysctl(&self.text),
            "link" => intent::parse_link(&self.text),
            "address_add" => intent::parse_address_add(&self.text),
            "tunnel" => intent::parse_tunnel(&self.text),
            k => bail!("unknown kind {k}"),
        };
        r.map_err(|e| anyhow!("{}: {e}", self.text))
    }

    fn request(&self) -> pb::ChangeRequest {
        use pb::change_request::Intent as I;
        let t = self.text.clone();
        let intent = match self.kind {
            "route_replace" => I::RouteReplace(t),
            "sysctl" => I::Sysctl(t),
            "link" => I::Link(t),
            "address_add" => I::AddressAdd(t),
            _ => I::Tunnel(t),
        };
        pb::ChangeRequest { intent: Some(intent), requester: "bench".into() }
    }
}

fn build_eval_lab(ns: &str) -> Result<()> {
    run_ok("ip", &["netns", "add", ns])?;
    track(|c| c.namespaces.push(ns.to_string()));
    ip(ns, &["link", "set", "lo", "up"])?;
    ip(ns, &["link", "add", "rgbr0", "type", "bridge"])?;
    ip(ns, &["link", "set", "rgbr0", "up"])?;
    for i in 1..=3 {
        let (r, p) = (format!("rgr{i}"), format!("rgp{i}"));
        ip(ns, &["link", "add", &r, "type", "veth", "peer", "name", &p])?;
        ip(ns, &["link", "set", &r, "up"])?;
        ip(ns, &["link", "set", &p, "up"])?;
        ip(ns, &["-6", "addr", "add", &format!("fd00:{i}::1/64"), "dev", &r, "nodad"])?;
        ip(ns, &["addr", "add", &format!("10.{i}.0.1/24"), "dev", &r])?;
    }
    // A bridge port (the hairpin intent's target).
    ip(ns, &["link", "set", "rgp1", "master", "rgbr0"])?;
    // The Subnet-Router anycast hazard: a prefix on rgr3 and a route whose
    // gateway is that prefix's `prefix::`.
    ip(ns, &["-6", "addr", "add", "fdc0:3489:e0fd::1/64", "dev", "rgr3", "nodad"])?;
    ip(ns, &["-6", "route", "add", "2001:db8::/32", "via", "fdc0:3489:e0fd::", "dev", "rgr3"])?;
    Ok(())
}

fn evaluate_part(p: &Params, ns: &str, dir: &Path) -> Result<Value> {
    build_eval_lab(ns)?;
    let (v4b, v6b, gen) = write_route_batches(dir, p.routes)?;
    println!("northbound: 2. loading {} IPv4 + {} IPv6 routes (load {})", gen.v4, gen.v6, loadavg());
    let t = Instant::now();
    for f in [&v4b, &v6b] {
        let st = Command::new("ip").args(["-n", ns, "-batch"]).arg(f).stdout(Stdio::null()).status()?;
        if !st.success() {
            bail!("ip -batch {} failed", f.display());
        }
    }
    let load_secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&v4b);
    let _ = std::fs::remove_file(&v6b);
    println!("northbound: 2. loaded in {load_secs:.1} s (load {})", loadavg());

    let (model, dump_secs) = in_ns(ns, "rgb-nb-dump", || {
        let mut m = Model::default();
        let mut sink: Vec<Applied> = Vec::new();
        let t = Instant::now();
        dump::dump_all(64 << 20, |batch| {
            for c in batch {
                m.apply(c, &mut sink);
            }
            sink.clear();
        })?;
        let names: HashMap<String, u32> = m.links.values().map(|l| (l.name.clone(), l.ifindex)).collect();
        let s = sysctl::read(Path::new("/proc/sys"), &names);
        m.apply(Change::Sysctls(s), &mut sink);
        Ok((m, t.elapsed().as_secs_f64()))
    })?;
    let (n4, n6) = (model.routes.count_v4(), model.routes.count_v6());
    println!("northbound: 2. model: {n4} IPv4 + {n6} IPv6 routes (dump {dump_secs:.2} s)");
    if n4 + n6 < p.routes {
        bail!("the model holds {} routes, fewer than the {} loaded", n4 + n6, p.routes);
    }
    let cases = vec![
        Case {
            name: "route replace of a multipath route (3 -> 2 members)",
            kind: "route_replace",
            text: format!("{}{}", gen.multipath_v6, route_members_v6(2)),
        },
        Case {
            name: "sysctl all.forwarding=1 (hits the anycast gateway)",
            kind: "sysctl",
            text: "net.ipv6.conf.all.forwarding=1".into(),
        },
        Case {
            name: "sysctl rgr1.forwarding=1 (no conflict)",
            kind: "sysctl",
            text: "net.ipv6.conf.rgr1.forwarding=1".into(),
        },
        Case { name: "address add", kind: "address_add", text: "fd00:77::1/64 dev rgr2".into() },
        Case { name: "hairpin on a bridge port", kind: "link", text: "rgp1 hairpin on".into() },
        Case { name: "sit tunnel to a local address", kind: "tunnel", text: "rgt0 type sit remote 10.1.0.1".into() },
    ];
    let dets = hazards::all();
    let cfg = HazardsConfig::default();
    let flows = FlowTable::default();
    let kf = KernelFacts { kernel_version: hazards::running_kernel_version(), ..KernelFacts::default() };
    let decide = |intent: &Intent| -> policy::Decision {
        let c = ctx(&model, &flows, &kf);
        let findings: Vec<Finding> = dets.iter().flat_map(|d| d.evaluate(&c, intent)).collect();
        policy::decide(findings, &cfg)
    };
    // First call of each (cold caches), then warm-up, then N rounds that
    // interleave the intents.
    let load_start = loadavg();
    let mut first = Vec::new();
    for c in &cases {
        let t = Instant::now();
        let d = decide(&c.parse()?);
        first.push(ms(t.elapsed()));
        black_box(d);
    }
    for _ in 0..50 {
        for c in &cases {
            black_box(decide(&c.parse()?));
        }
    }
    let mut lat: Vec<Vec<f64>> = vec![Vec::with_capacity(p.evals); cases.len()];
    let mut verdicts: Vec<(String, usize)> = vec![Default::default(); cases.len()];
    for _ in 0..p.evals {
        for (i, c) in cases.iter().enumerate() {
            let t = Instant::now();
            let d = decide(&c.parse()?);
            lat[i].push(ms(t.elapsed()));
            verdicts[i] = (d.verdict.kind().to_string(), d.findings.len());
        }
    }
    // Where the time goes: each detector's evaluate, and decide, alone.
    let mut parts: Vec<BTreeMap<String, f64>> = Vec::new();
    for c in &cases {
        let intent = c.parse()?;
        let cx = ctx(&model, &flows, &kf);
        let mut m = BTreeMap::new();
        let n = 200;
        let t = Instant::now();
        for _ in 0..n {
            black_box(c.parse()?);
        }
        m.insert("parse".to_string(), ms(t.elapsed()) / n as f64);
        let mut all = Vec::new();
        for d in &dets {
            let t = Instant::now();
            let mut f = Vec::new();
            for _ in 0..n {
                f = black_box(d.evaluate(&cx, &intent));
            }
            m.insert(d.name().to_string(), ms(t.elapsed()) / n as f64);
            all.extend(f);
        }
        let t = Instant::now();
        for _ in 0..n {
            black_box(policy::decide(all.clone(), &cfg));
        }
        m.insert("decide (incl. clone)".to_string(), ms(t.elapsed()) / n as f64);
        parts.push(m);
    }
    let load_end = loadavg();
    let mut inproc = serde_json::Map::new();
    let mut worst_p99 = 0.0f64;
    for (i, c) in cases.iter().enumerate() {
        let s = Stats::of(&lat[i]);
        worst_p99 = worst_p99.max(s.p99);
        let parts_s: Vec<String> = parts[i].iter().map(|(k, v)| format!("{k} {:.1} µs", v * 1000.0)).collect();
        println!(
            "northbound: 2a. in process [{}]: {}; first call {:.3} ms; verdict {} ({} finding(s)); mean per part: {}",
            c.name,
            s.line("ms"),
            first[i],
            verdicts[i].0,
            verdicts[i].1,
            parts_s.join(", ")
        );
        inproc.insert(
            c.name.to_string(),
            json!({"text": c.text, "kind": c.kind, "ms": s.json(), "first_ms": first[i], "verdict": verdicts[i].0,
                   "findings": verdicts[i].1, "parts_mean_ms": parts[i]}),
        );
    }
    let all: Vec<f64> = lat.iter().flatten().copied().collect();
    let sa = Stats::of(&all);
    println!("northbound: 2a. in process, all intents: {} (load {load_start} -> {load_end})", sa.line("ms"));
    let inproc_pass = worst_p99 <= 1.0;
    drop(model);

    // ---- Through the daemon.
    let mut grpc = json!(null);
    let mut grpc_pass = None;
    if p.grpc > 0 {
        let mut d = Daemon::spawn(&p.daemon, ns, dir, "eval", "", |pid| track(|c| c.pids.push(pid)))?;
        let dump_s = d.wait_dump()?;
        let pid = d.pid()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let st = status(&rt, &d.sock)?;
        println!(
            "northbound: 2b. daemon: first dump {dump_s:.2} s after spawn; routes {}+{}, stale {} (load {})",
            st.counts.get("routes_v4").copied().unwrap_or(0),
            st.counts.get("routes_v6").copied().unwrap_or(0),
            st.stale,
            loadavg()
        );
        std::thread::sleep(Duration::from_secs(3));
        let load_start = loadavg();
        // One channel, as `client::connect` builds it, for the Guard client
        // and for gRPC health: `Check` answers without the core, so it is
        // the cost of the transport alone, measured interleaved.
        let channel = rt.block_on(unix_channel(&d.sock))?;
        let mut client = pb::guard_client::GuardClient::new(channel.clone());
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        for _ in 0..5 {
            for c in &cases {
                rt.block_on(client.evaluate(c.request()))?;
                rt.block_on(health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }))?;
            }
        }
        let mut rng = Rng(42);
        let mut lat: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut base: Vec<f64> = Vec::new();
        let mut verdicts: Vec<String> = vec![String::new(); cases.len()];
        let c0 = (cpu_seconds(pid), Instant::now());
        for _ in 0..p.grpc {
            for (i, c) in cases.iter().enumerate() {
                // A random pause, so requests land at any point of the
                // daemon's periodic work.
                std::thread::sleep(Duration::from_micros(rng.next() % 20_000));
                let req = c.request();
                let t = Instant::now();
                let dec = rt.block_on(client.evaluate(req))?.into_inner();
                lat[i].push(ms(t.elapsed()));
                verdicts[i] = dec.verdict;
                std::thread::sleep(Duration::from_micros(rng.next() % 20_000));
                let t = Instant::now();
                rt.block_on(health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }))?;
                base.push(ms(t.elapsed()));
            }
        }
        let busy = (cpu_seconds(pid) - c0.0) / c0.1.elapsed().as_secs_f64();
        let load_end = loadavg();
        drop(client);
        drop(health);
        drop(rt);
        d.stop()?;
        let mut per = serde_json::Map::new();
        let mut worst = 0.0f64;
        for (i, c) in cases.iter().enumerate() {
            let s = Stats::of(&lat[i]);
            worst = worst.max(s.p99);
            println!("northbound: 2b. gRPC Evaluate [{}]: {}; verdict {}", c.name, s.line("ms"), verdicts[i]);
            per.insert(c.name.to_string(), json!({"ms": s.json(), "verdict": verdicts[i]}));
        }
        let all: Vec<f64> = lat.iter().flatten().copied().collect();
        let sg = Stats::of(&all);
        println!(
            "northbound: 2b. gRPC Evaluate, all intents: {}; daemon CPU {:.0} % of a core meanwhile (load {load_start} \
             -> {load_end})",
            sg.line("ms"),
            busy * 100.0
        );
        let sb = Stats::of(&base);
        println!("northbound: 2b. gRPC health Check on the same channel (no core), interleaved: {}", sb.line("ms"));
        grpc_pass = Some(worst <= 1.0);
        grpc = json!({"per_intent": per, "all_ms": sg.json(), "health_check_ms": sb.json(), "worst_p99_ms": worst, "first_dump_secs": dump_s,
                      "daemon_cpu_fraction": busy, "load_start": load_start, "load_end": load_end});
    }
    Ok(json!({
        "routes_loaded": {"v4": gen.v4, "v6": gen.v6, "secs": load_secs},
        "model": {"routes_v4": n4, "routes_v6": n6, "dump_secs": dump_secs},
        "inproc": inproc, "inproc_all_ms": sa.json(), "load_start": load_start, "load_end": load_end,
        "grpc": grpc,
        "target": {"goal": "Evaluate p99 <= 1 ms, every intent", "inproc_worst_p99_ms": worst_p99,
                   "inproc_pass": inproc_pass, "grpc_pass": grpc_pass},
    }))
}

// ---------------------------------------------------------------------------

struct Params {
    parts: Vec<String>,
    calls: usize,
    batch: usize,
    routes: usize,
    evals: usize,
    grpc: usize,
    /// Part 1 also measures the hop-only control.
    hop: bool,
    daemon: PathBuf,
}

fn bench(p: &Params, pid: u32, dir: &Path) -> Result<Value> {
    let mut out = serde_json::Map::new();
    out.insert(
        "machine".into(),
        json!({
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": routeguard::kernel_release(),
            "load_start": loadavg(),
        }),
    );
    if p.parts.iter().any(|s| s == "proxy") {
        out.insert("proxy".into(), proxy_part(p, &format!("rgbnb-{pid}"), dir)?);
    }
    if p.parts.iter().any(|s| s == "evaluate") {
        out.insert("evaluate".into(), evaluate_part(p, &format!("rgbnbe-{pid}"), dir)?);
    }
    out.insert("load_end".into(), json!(loadavg()));
    Ok(Value::Object(out))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("northbound: skipped (not a test; run `cargo bench --bench northbound` as root)");
        return;
    }
    // SAFETY: geteuid(2) has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("northbound: needs root (network namespaces, FRR, 1M routes)");
        std::process::exit(1);
    }
    let params = (|| -> Result<Params> {
        let batch = env_u64("RGBENCH_NB_BATCH", 50)?.max(2) as usize;
        if !batch.is_multiple_of(2) {
            bail!("RGBENCH_NB_BATCH must be even (a batch adds and deletes the route alternately)");
        }
        Ok(Params {
            parts: std::env::var("RGBENCH_NB_PARTS")
                .unwrap_or_else(|_| "proxy,evaluate".into())
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            calls: env_u64("RGBENCH_NB_CALLS", 1000)?.max(1) as usize,
            batch,
            routes: env_u64("RGBENCH_NB_ROUTES", 1_000_000)? as usize,
            evals: env_u64("RGBENCH_NB_EVALS", 1000)?.max(1) as usize,
            grpc: env_u64("RGBENCH_NB_GRPC", 200)? as usize,
            hop: env_u64("RGBENCH_NB_HOP", 1)? != 0,
            daemon: daemon_bin()?,
        })
    })();
    let params = match params {
        Ok(p) => p,
        Err(e) => {
            eprintln!("northbound: {e:#}");
            std::process::exit(2);
        }
    };
    let pid = std::process::id();
    let dir = PathBuf::from(format!("/tmp/rgbnb-{pid}"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("northbound: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    *registry() = Some(Cleanup { namespaces: Vec::new(), frr: Vec::new(), dir: dir.clone(), pids: Vec::new() });
    common::install_signal_watcher("northbound", &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP], cleanup);
    let result = {
        let _guard = Guard(cleanup);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bench(&params, pid, &dir)));
        match r {
            Ok(r) => r,
            Err(_) => Err(anyhow!("panicked")),
        }
    };
    match result {
        Ok(summary) => println!("northbound summary: {summary}"),
        Err(e) => {
            eprintln!("northbound: FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}
