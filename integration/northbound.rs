//! The FRR northbound client and proxy against real FRR 8.4.4 with gRPC
//! (integration/frr/build-frr-grpc, zebra + staticd started with
//! `-M grpc:PORT` by integration/frr/frr-ns inside the lab namespace), and
//! fault injection against a scripted fake northbound server.
//!
//! The test's gRPC clients and the fake server run on threads that entered
//! the lab's network namespace (setns is per thread), so they reach the
//! daemons on 127.0.0.1 inside it.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ecmp_lab::EcmpLab;
use common::{eventually, run_ok, slow, Daemon, Netns};
use routeguard::proto::frr as pb;
use routeguard::proto::frr::northbound_client::NorthboundClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

const ZEBRA: u16 = 50051;
const STATICD: u16 = 50052;
const PROXY: u16 = 50100;
const ANYCAST_RT: &str = "fd00:ecec:f::1/128";

fn frr_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("integration/frr")
}

/// FRR zebra + staticd with gRPC in `ns`; stopped on drop.
struct Frr {
    ns: String,
}

impl Frr {
    fn start(ns: &Netns) -> Frr {
        Self::start_with(ns, "")
    }

    /// Starts FRR with `config` (frr.conf lines) applied.
    fn start_with(ns: &Netns, config: &str) -> Frr {
        // A no-op when the build is cached (see integration/frr/README.md).
        run_ok(frr_dir().join("build-frr-grpc").to_str().unwrap(), &[]);
        let conf = tempfile::Builder::new().suffix(".conf").tempfile().unwrap();
        std::fs::write(conf.path(), format!("log stdout\n{config}")).unwrap();
        let out = run_ok(
            frr_dir().join("frr-ns").to_str().unwrap(),
            &[
                "start",
                &ns.name,
                "--flavor",
                "grpc",
                "--daemons",
                "zebra,staticd",
                "--config",
                conf.path().to_str().unwrap(),
                "--grpc-base-port",
                &ZEBRA.to_string(),
            ],
        );
        eprintln!("{out}");
        Frr { ns: ns.name.clone() }
    }

    fn vtysh(&self, cmds: &[&str]) -> String {
        let mut args = vec!["vtysh", self.ns.as_str()];
        for c in cmds {
            args.push("-c");
            args.push(c);
        }
        run_ok(frr_dir().join("frr-ns").to_str().unwrap(), &args)
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        let _ = Command::new(frr_dir().join("frr-ns")).args(["stop", &self.ns]).status();
    }
}

/// Runs `f` on a thread inside network namespace `ns`, on its own runtime.
fn in_ns<T: Send>(ns: &str, f: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn enter(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}");
}

async fn client(port: u16) -> NorthboundClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect");
    NorthboundClient::new(ch)
}

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

/// A nexthop as vtysh's `ipv6 route P GW IF` creates it (`ip6-ifindex`).
fn cli_nexthop_xpath(prefix: &str, gw: &str, dev: &str) -> String {
    nexthop_xpath(prefix, gw, dev).replace("[nh-type='ip6']", "[nh-type='ip6-ifindex']")
}

fn pv(path: &str) -> pb::PathValue {
    pb::PathValue { path: path.into(), value: String::new() }
}

/// CreateCandidate + EditCandidate(updates) + Commit(ALL) through `c`.
async fn commit(c: &mut NorthboundClient<Channel>, updates: &[String]) -> (u32, Result<pb::CommitResponse, Status>) {
    let id = c.create_candidate(pb::CreateCandidateRequest {}).await.expect("create").into_inner().candidate_id;
    let req =
        pb::EditCandidateRequest { candidate_id: id, update: updates.iter().map(|p| pv(p)).collect(), delete: vec![] };
    c.edit_candidate(req).await.expect("edit");
    let r = c
        .commit(pb::CommitRequest {
            candidate_id: id,
            phase: pb::commit_request::Phase::All as i32,
            comment: "test".into(),
        })
        .await
        .map(|r| r.into_inner());
    (id, r)
}

/// staticd's running configuration, read from FRR directly.
async fn staticd_config() -> String {
    let mut c = client(STATICD).await;
    let req = pb::GetRequest {
        r#type: pb::get_request::DataType::Config as i32,
        encoding: pb::Encoding::Json as i32,
        with_defaults: false,
        path: vec!["/frr-routing:routing".into()],
    };
    let mut s = c.get(req).await.expect("get").into_inner();
    let mut out = String::new();
    while let Some(r) = s.message().await.expect("get stream") {
        out.push_str(&r.data.map(|d| d.data).unwrap_or_default());
    }
    out
}

fn guard_env(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("ROUTEGUARD_FRR__NORTHBOUND__ZEBRA", format!("http://127.0.0.1:{ZEBRA}")),
        ("ROUTEGUARD_FRR__NORTHBOUND__STATICD", format!("http://127.0.0.1:{STATICD}")),
        ("ROUTEGUARD_FRR__NORTHBOUND__POLL_INTERVAL", "300ms".into()),
        ("ROUTEGUARD_PROXY__LISTEN", format!("127.0.0.1:{PROXY}")),
    ];
    v.extend_from_slice(extra);
    v
}

fn start_guard(ns: &Netns, env: &[(&'static str, String)]) -> Daemon {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Daemon::start(ns, &env)
}

fn wait_northbound(d: &Daemon, want: &[(&str, &str)]) -> serde_json::Value {
    eventually(slow(Duration::from_secs(20)), || {
        let s = d.json(&["status"]);
        let nb = &s["frr_northbound"];
        want.iter()
            .all(|(k, v)| nb[*k].as_str().is_some_and(|s| s.starts_with(v)))
            .then(|| nb.clone())
            .ok_or(format!("frr_northbound: {nb}"))
    })
    .0
}

fn kernel_route(ns: &Netns, prefix: &str) -> String {
    // `proto static` as a filter does not match zebra's routes (FRR uses its
    // own protocol number, which iproute2 merely names "static").
    ns.ip(&["-o", "-6", "route", "show", prefix])
        .lines()
        .filter(|l| l.contains("proto static"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// (a) A harmless static route through the proxy lands in FRR and the
/// kernel; changes made elsewhere are noticed; bad input gets clear codes.
#[test]
fn harmless_commit_lands_in_frr_and_the_kernel_and_bad_input_is_refused() {
    let ns = Netns::new("nbA");
    ns.ip(&["link", "add", "nbA0", "type", "veth", "peer", "name", "nbA1"]);
    ns.ip(&["link", "set", "nbA0", "up"]);
    ns.ip(&["link", "set", "nbA1", "up"]);
    ns.ip(&["-6", "addr", "add", "fd00:1::1/64", "dev", "nbA0", "nodad"]);
    let frr = Frr::start(&ns);
    let d = start_guard(&ns, &guard_env(&[]));
    let nb = wait_northbound(&d, &[("zebra", "up"), ("staticd", "up")]);
    eprintln!("frr_northbound: {nb}");

    let prefix = "2001:db8:77::/64";
    let (_, r) = in_ns(&ns.name, async {
        let mut c = client(PROXY).await;
        commit(&mut c, &[nexthop_xpath(prefix, "fd00:1::2", "nbA0")]).await
    });
    r.expect("an allowed commit returns FRR's answer");
    let (route, _) = eventually(slow(Duration::from_secs(5)), || {
        let r = kernel_route(&ns, prefix);
        (!r.is_empty()).then_some(r).ok_or("route not in the kernel".to_string())
    });
    assert!(route.contains("fd00:1::2") && route.contains("nbA0"), "{route}");
    let cfg = in_ns(&ns.name, staticd_config());
    assert!(cfg.contains(prefix), "{cfg}");

    // The poller attributes the commit to the proxy (a change within the
    // same poll interval would be attributed to it too: wait for that poll).
    eventually(slow(Duration::from_secs(10)), || {
        d.log_text().contains("the proxy committed meanwhile").then_some(()).ok_or("no poll since".to_string())
    });
    // A change made elsewhere (vtysh) is noticed by the poller: logged
    // and streamed by WatchEvents.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut stream = rt.block_on(async {
        let mut c = routeguard::client::connect(&d.socket).await.expect("connect");
        c.watch_events(routeguard::proto::guard::WatchEventsRequest {}).await.unwrap().into_inner()
    });
    let out = frr.vtysh(&["configure terminal", "ipv6 route 2001:db8:88::/64 fd00:1::3"]);
    let running = frr.vtysh(&["show running-config"]);
    assert!(running.contains("2001:db8:88::/64"), "vtysh said {out:?}; running config:\n{running}");
    eventually(slow(Duration::from_secs(10)), || {
        let log = d.log_text();
        (log.contains("FRR configuration changed outside routeguard") && log.contains("2001:db8:88::/64"))
            .then_some(())
            .ok_or("no change reported".to_string())
    });
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + slow(Duration::from_secs(10));
        let mut seen = Vec::new();
        loop {
            let ev = tokio::time::timeout_at(deadline, stream.message())
                .await
                .unwrap_or_else(|_| panic!("no frr_config event; saw {seen:?}"))
                .expect("stream error")
                .expect("stream ended");
            if ev.kind == "frr_config" && ev.op == "changed_elsewhere" && ev.key.contains("2001:db8:88::/64") {
                assert!(ev.key.starts_with("staticd ") && ev.key.contains("+/"), "{ev:?}");
                break;
            }
            seen.push((ev.kind, ev.op, ev.key));
        }
    });

    // A member added to that route is judged with the member staticd
    // already has (the proxy reads just that route, at its route-list
    // entry); removing the route reads nothing and is forwarded unjudged.
    let other = "2001:db8:88::/64";
    let (_, r) = in_ns(&ns.name, async {
        let mut c = client(PROXY).await;
        commit(&mut c, &[nexthop_xpath(other, "fd00:1::4", "nbA0")]).await
    });
    r.expect("adding a member is allowed");
    let log = d.log_text();
    let judged = log.lines().filter(|l| l.contains("proposal judged") && l.contains("fd00:1::4")).collect::<Vec<_>>();
    assert!(judged.len() == 1 && judged[0].contains("fd00:1::3"), "judged without the running member: {judged:?}");
    let (_, r) = in_ns(&ns.name, async {
        let mut c = client(PROXY).await;
        let id = c.create_candidate(pb::CreateCandidateRequest {}).await?.into_inner().candidate_id;
        let req = pb::EditCandidateRequest { candidate_id: id, update: vec![], delete: vec![pv(&route_xpath(other))] };
        c.edit_candidate(req).await?;
        let phase = pb::commit_request::Phase::All as i32;
        let r = c.commit(pb::CommitRequest { candidate_id: id, phase, comment: "rm".into() }).await;
        Ok::<_, Status>((id, r))
    })
    .expect("delete through the proxy");
    r.expect("a removal is forwarded");
    assert!(!in_ns(&ns.name, staticd_config()).contains(other), "route still in staticd");
    assert!(d.log_text().contains("northbound proxy: commit not judged"), "the removal read staticd's config");

    // FRR commits a candidate as it was created plus its edits: a member
    // removed elsewhere (vtysh) after the edit comes back with the commit.
    // The proxy reads the route while the candidate is edited, so it
    // judges the member set FRR installs, the removed member included.
    let third = "2001:db8:99::/64";
    frr.vtysh(&["configure terminal", "ipv6 route 2001:db8:99::/64 fd00:1::5 nbA0"]);
    let id = in_ns(&ns.name, async {
        let mut c = client(PROXY).await;
        let id = c.create_candidate(pb::CreateCandidateRequest {}).await.expect("create").into_inner().candidate_id;
        let update = vec![pv(&nexthop_xpath(third, "fd00:1::6", "nbA0"))];
        c.edit_candidate(pb::EditCandidateRequest { candidate_id: id, update, delete: vec![] }).await.expect("edit");
        id
    });
    frr.vtysh(&["configure terminal", "no ipv6 route 2001:db8:99::/64 fd00:1::5 nbA0"]);
    assert!(!in_ns(&ns.name, staticd_config()).contains("fd00:1::5"), "vtysh did not remove the member");
    in_ns(&ns.name, async {
        let mut c = client(PROXY).await;
        let phase = pb::commit_request::Phase::All as i32;
        c.commit(pb::CommitRequest { candidate_id: id, phase, comment: "add".into() }).await.expect("allowed");
    });
    let cfg = in_ns(&ns.name, staticd_config());
    assert!(cfg.contains("fd00:1::5") && cfg.contains("fd00:1::6"), "FRR committed the candidate as created: {cfg}");
    let log = d.log_text();
    let judged = log.lines().filter(|l| l.contains("proposal judged") && l.contains("fd00:1::6")).collect::<Vec<_>>();
    assert!(judged.len() == 1 && judged[0].contains("fd00:1::5"), "judged another member set: {judged:?}");

    // Bad input: clear codes, and the proxy keeps serving.
    in_ns(&ns.name, async {
        let mut c = client(PROXY).await;
        let id = c.create_candidate(pb::CreateCandidateRequest {}).await.unwrap().into_inner().candidate_id;
        let edit = |paths: Vec<String>| pb::EditCandidateRequest {
            candidate_id: id,
            update: paths.iter().map(|p| pv(p)).collect(),
            delete: vec![],
        };
        let cases: Vec<(Vec<String>, Code, &str)> = vec![
            (vec!["/frr-routing:routing/control[".into()], Code::InvalidArgument, "malformed xpath"),
            (vec!["no-slash".into()], Code::InvalidArgument, "expected `/`"),
            (vec![nexthop_xpath("2001:db8:zz::/64", "fd00:1::2", "nbA0")], Code::InvalidArgument, "invalid prefix"),
            (vec![nexthop_xpath("2001:db8::/64", "not-an-ip", "nbA0")], Code::InvalidArgument, "invalid nexthop gateway"),
            (
                vec!["/frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-bgp:bgp'][name='bgp'][vrf='default']".into()],
                Code::FailedPrecondition,
                "bgpd",
            ),
            (vec![format!("{}/bogus-leaf", route_xpath("2001:db8:1::/64"))], Code::InvalidArgument, "staticd:"),
            (
                vec![nexthop_xpath("2001:db8:2::/64", "fd00:1::2", "nbA0"), "/frr-interface:lib/interface[name='x']".into()],
                Code::InvalidArgument,
                "one request per daemon",
            ),
        ];
        for (paths, code, text) in cases {
            let e = c.edit_candidate(edit(paths.clone())).await.expect_err("must fail");
            assert_eq!(e.code(), code, "{paths:?}: {e:?}");
            assert!(e.message().contains(text), "{paths:?}: {e:?}");
        }
        let e = c
            .commit(pb::CommitRequest {
                candidate_id: 987_654,
                phase: pb::commit_request::Phase::All as i32,
                comment: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = c.commit(pb::CommitRequest { candidate_id: id, phase: 42, comment: String::new() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = c
            .commit(pb::CommitRequest {
                candidate_id: id,
                phase: pb::commit_request::Phase::All as i32,
                comment: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Aborted, "a candidate without edits: {e:?}");
        let e = c.delete_candidate(pb::DeleteCandidateRequest { candidate_id: 987_654 }).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        // Oversized: 5 MiB in one request.
        let e = c.edit_candidate(edit(vec![format!("/frr-interface:lib/{}", "a".repeat(5 << 20))])).await.unwrap_err();
        assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument), "{e:?}");
        let e = c.list_transactions(pb::ListTransactionsRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        // Still serving: capabilities of both daemons, merged.
        let caps = c.get_capabilities(pb::GetCapabilitiesRequest {}).await.expect("still serving").into_inner();
        assert_eq!(caps.frr_version, "8.4.4");
        let names: Vec<_> = caps.supported_modules.iter().map(|m| m.name.as_str()).collect();
        assert!(names.contains(&"frr-staticd") && names.contains(&"frr-zebra"), "{names:?}");
        // Get goes to the owning daemon.
        let req = pb::GetRequest {
            r#type: pb::get_request::DataType::All as i32,
            encoding: 0,
            with_defaults: false,
            path: vec!["/frr-interface:lib".into()],
        };
        let mut s = c.get(req).await.expect("get through the proxy").into_inner();
        let first = s.message().await.unwrap().expect("one answer");
        assert!(first.data.unwrap().data.contains("nbA0"));
    });
}

/// The ECMP lab in R with FRR owning the 3-way route (staticd), flows
/// open, the guard watching.
fn ecmp_setup(tag: &str, action: &str) -> (EcmpLab, Frr, Daemon, common::ecmp_lab::Holder) {
    let lab = EcmpLab::new(tag, true, 1);
    // zebra prefers kernel routes (distance 0) over static ones: the lab's
    // own route goes, FRR installs the same members instead.
    lab.r.ip(&["-6", "route", "del", ANYCAST_RT]);
    let routes: String = (1..=3).map(|i| format!("ipv6 route {ANYCAST_RT} fd00:{i}::2 rgr{i}\n")).collect();
    let frr = Frr::start_with(&lab.r, &routes);
    eventually(slow(Duration::from_secs(10)), || {
        let r = kernel_route(&lab.r, ANYCAST_RT);
        (r.matches("nexthop via").count() == 3).then_some(()).ok_or(format!("FRR's route: {r:?}"))
    });
    let d = start_guard(
        &lab.r,
        &guard_env(&[
            ("ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL", "200ms".into()),
            ("ROUTEGUARD_HAZARDS__ECMP_REHASH__ACTION", action.into()),
        ]),
    );
    wait_northbound(&d, &[("staticd", "up")]);
    let mut h = lab.holder();
    h.open(40);
    eventually(slow(Duration::from_secs(20)), || {
        let v = d.json(&["flows", "--at-risk"]);
        let n = v["flows"].as_array().map(|a| a.len()).unwrap_or(0);
        (n > 0).then_some(()).ok_or(format!("no armed flow yet: {v}"))
    });
    (lab, frr, d, h)
}

/// CreateCandidate, delete the third member of the ECMP route, Commit(ALL).
async fn drop_third_member() -> Result<pb::CommitResponse, Status> {
    let mut c = client(PROXY).await;
    let id = c.create_candidate(pb::CreateCandidateRequest {}).await?.into_inner().candidate_id;
    let req = pb::EditCandidateRequest {
        candidate_id: id,
        update: vec![],
        delete: vec![pv(&cli_nexthop_xpath(ANYCAST_RT, "fd00:3::2", "rgr3"))],
    };
    c.edit_candidate(req).await?;
    let phase = pb::commit_request::Phase::All as i32;
    c.commit(pb::CommitRequest { candidate_id: id, phase, comment: "drop rgr3".into() }).await.map(|r| r.into_inner())
}

/// (b) An IPv6 multipath replace through staticd (FRR's 3-way route loses
/// a member: zebra replaces the route, flows re-hash) with flows at risk is
/// vetoed: FAILED_PRECONDITION, FRR's configuration unchanged, no flow broken.
#[test]
fn ecmp_replace_with_flows_at_risk_is_vetoed_and_frr_unchanged() {
    let (lab, _frr, d, mut h) = ecmp_setup("nbB", "veto");
    let before = in_ns(&lab.r.name, staticd_config());
    assert!(before.contains("rgr3"), "{before}");
    let e = in_ns(&lab.r.name, drop_third_member()).expect_err("vetoed");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("vetoed") && e.message().contains("at risk"), "{e:?}");
    assert!(e.message().contains("fixes:"), "{e:?}");
    assert_eq!(in_ns(&lab.r.name, staticd_config()), before, "FRR's config changed");
    assert_eq!(kernel_route(&lab.r, ANYCAST_RT).matches("nexthop via").count(), 3);
    assert!(h.check().is_empty(), "a vetoed commit must not touch the flows");
    assert_eq!(d.json(&["status"])["verdicts"]["veto"], 1);
}

/// (c) With action = delay the commit is held (UNAVAILABLE naming the
/// change) and committed to FRR by itself once the flows have closed.
#[test]
fn delayed_commit_applies_by_itself_once_flows_close() {
    let (lab, _frr, d, mut h) = ecmp_setup("nbC", "delay");
    let e = in_ns(&lab.r.name, drop_third_member()).expect_err("held");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let p = d.json(&["pending"]);
    let id = p["pending"][0]["id"].as_u64().expect("one pending change");
    assert!(e.message().contains(&format!("change {id}")), "{e:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(in_ns(&lab.r.name, staticd_config()).contains("rgr3"), "committed while flows were open");
    assert!(h.check().is_empty(), "no connection may break while the commit waits");
    h.close();
    eventually(slow(Duration::from_secs(15)), || {
        let p = d.json(&["pending"]);
        p["pending"].as_array().unwrap().is_empty().then_some(()).ok_or(format!("{p}"))
    });
    let cfg = in_ns(&lab.r.name, staticd_config());
    assert!(cfg.contains("rgr1") && !cfg.contains("rgr3"), "{cfg}");
    let (route, _) = eventually(slow(Duration::from_secs(5)), || {
        let r = kernel_route(&lab.r, ANYCAST_RT);
        (!r.contains("rgr3")).then_some(r.clone()).ok_or(format!("rgr3 still in the kernel: {r}"))
    });
    assert!(route.contains("rgr1") && route.contains("rgr2"), "{route}");
    assert!(d.log_text().contains("edits replayed"), "the held commit was replayed into FRR");
}

/// The Guard API takes northbound edits too (`evaluate|propose
/// --northbound-edit`): judged like a commit through the proxy (the ECMP
/// veto with flows at risk, FRR unchanged) and committed to FRR when
/// allowed; bad edits are refused with the edit named.
#[test]
fn guard_api_judges_and_commits_northbound_edits() {
    let (lab, _frr, d, mut h) = ecmp_setup("nbG", "veto");
    let before = in_ns(&lab.r.name, staticd_config());
    let drop3 = format!("delete {}", cli_nexthop_xpath(ANYCAST_RT, "fd00:3::2", "rgr3"));
    let v = d.decision(&["evaluate", "--northbound-edit", &drop3]);
    assert_eq!(v["verdict"], "veto", "{v}");
    assert!(v["reasons"][0].as_str().unwrap().contains("at risk"), "{v}");
    let v = d.decision(&["propose", "--northbound-edit", &drop3]);
    assert_eq!((v["verdict"].as_str(), v["outcome"].as_str()), (Some("veto"), Some("vetoed")), "{v}");
    let id = v["change_id"].as_u64().expect("a vetoed proposal is journaled");
    assert_eq!(d.json(&["change", &id.to_string()])["state"], "vetoed");
    assert_eq!(in_ns(&lab.r.name, staticd_config()), before, "FRR's config changed");
    assert!(h.check().is_empty(), "a vetoed proposal must not touch the flows");

    let prefix = "2001:db8:99::/64";
    let add = format!("update {}", nexthop_xpath(prefix, "fd00:1::2", "rgr1"));
    let v = d.decision(&["propose", "--northbound-edit", &add]);
    assert_eq!((v["verdict"].as_str(), v["outcome"].as_str()), (Some("allow"), Some("applied")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("staticd committed"), "{v}");
    assert!(in_ns(&lab.r.name, staticd_config()).contains(prefix));
    eventually(slow(Duration::from_secs(5)), || {
        let r = kernel_route(&lab.r, prefix);
        r.contains("rgr1").then_some(()).ok_or(format!("not in the kernel: {r:?}"))
    });
    // The same edit again changes nothing: allowed, nothing to judge.
    let v = d.decision(&["evaluate", "--northbound-edit", &add]);
    assert_eq!(v["verdict"], "allow", "{v}");

    for (bad, says) in [
        ("update /frr-staticd:nonsense", "frr-staticd"),
        ("replace /a", "update PATH VALUE"),
        ("update /frr-routing:routing/control-plane-protocols/control-plane-protocol[type='frr-staticd:staticd'][name='staticd'][vrf='default']/frr-staticd:staticd/route-list[prefix='not-a-prefix'][afi-safi='frr-routing:ipv6-unicast']", "not-a-prefix"),
    ] {
        let o = d.cli(&["evaluate", "--northbound-edit", bad], true);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
    assert_eq!(d.json(&["status"])["ready"], true, "the daemon keeps serving");
}

/// Restart safety for the proxy: a commit held by the guard survives
/// `kill -9`. After the restart it is still held (FRR unchanged, no flow
/// broken) and, once the flows close, it is committed to FRR by itself
/// from the edits the journal kept.
#[test]
fn held_commit_survives_kill_9_and_is_committed_after_restart() {
    let (lab, _frr, mut d, mut h) = ecmp_setup("nbK", "delay");
    let e = in_ns(&lab.r.name, drop_third_member()).expect_err("held");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let id = d.json(&["pending"])["pending"][0]["id"].as_u64().expect("one pending change");
    assert!(d.stop("KILL", Duration::from_secs(5)).is_some(), "the daemon survived kill -9");
    d.restart();
    let p = d.json(&["pending"]);
    assert_eq!(p["pending"][0]["id"].as_u64(), Some(id), "the held commit was lost: {p}");
    assert_eq!(d.json(&["change", &id.to_string()])["state"], "held");
    std::thread::sleep(Duration::from_secs(2));
    assert!(in_ns(&lab.r.name, staticd_config()).contains("rgr3"), "committed while flows were open");
    assert!(h.check().is_empty(), "no connection may break while the resumed commit waits");
    h.close();
    eventually(slow(Duration::from_secs(20)), || {
        let p = d.json(&["pending"]);
        p["pending"].as_array().unwrap().is_empty().then_some(()).ok_or(format!("{p}"))
    });
    let c = d.json(&["change", &id.to_string()]);
    assert_eq!(c["state"], "applied", "{c}");
    let cfg = in_ns(&lab.r.name, staticd_config());
    assert!(cfg.contains("rgr1") && cfg.contains("rgr2") && !cfg.contains("rgr3"), "{cfg}");
    let (route, _) = eventually(slow(Duration::from_secs(5)), || {
        let r = kernel_route(&lab.r, ANYCAST_RT);
        (!r.contains("rgr3")).then_some(r.clone()).ok_or(format!("rgr3 still in the kernel: {r}"))
    });
    assert!(route.contains("rgr1") && route.contains("rgr2"), "{route}");
    assert!(d.log_text().contains("edits replayed after a restart"), "committed from the journaled edits");
}

// ---- fault injection with a scripted fake northbound server ----

const GOOD: u8 = 0;
const HANG: u8 = 1;
const GARBAGE_JSON: u8 = 2;
const CUT_MID_STREAM: u8 = 3;
const GARBAGE_BYTES: u8 = 4;

#[derive(Clone)]
struct Fake {
    mode: Arc<AtomicU8>,
    next: Arc<AtomicU32>,
    cut: Arc<tokio::sync::Notify>,
}

impl Fake {
    async fn behave(&self) -> Result<(), Status> {
        if self.mode.load(Ordering::SeqCst) == HANG {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::northbound_server::Northbound for Fake {
    async fn get_capabilities(
        &self,
        _: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::GetCapabilitiesResponse>, Status> {
        self.behave().await?;
        let m = |n: &str| pb::ModuleData { name: n.into(), organization: "fake".into(), revision: String::new() };
        Ok(Response::new(pb::GetCapabilitiesResponse {
            frr_version: "fake".into(),
            rollback_support: false,
            supported_modules: vec![m("frr-routing"), m("frr-staticd"), m("frr-interface")],
            supported_encodings: vec![0],
        }))
    }
    type GetStream = Stream<pb::GetResponse>;
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        self.behave().await?;
        let data = |s: &str| pb::GetResponse { timestamp: 0, data: Some(pb::DataTree { encoding: 0, data: s.into() }) };
        match self.mode.load(Ordering::SeqCst) {
            GARBAGE_JSON => Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(data("}{ garbage"))])))),
            CUT_MID_STREAM => {
                let cut = self.cut.clone();
                let s = async_stream_of(data("{}"), cut);
                Ok(Response::new(s))
            }
            _ => Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(data("{}"))])))),
        }
    }
    async fn subscribe(&self, _: Request<pb::SubscribeRequest>) -> Result<Response<pb::SubscribeResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn create_candidate(
        &self,
        _: Request<pb::CreateCandidateRequest>,
    ) -> Result<Response<pb::CreateCandidateResponse>, Status> {
        self.behave().await?;
        Ok(Response::new(pb::CreateCandidateResponse { candidate_id: self.next.fetch_add(1, Ordering::SeqCst) }))
    }
    async fn delete_candidate(
        &self,
        _: Request<pb::DeleteCandidateRequest>,
    ) -> Result<Response<pb::DeleteCandidateResponse>, Status> {
        self.behave().await?;
        Ok(Response::new(pb::DeleteCandidateResponse {}))
    }
    async fn update_candidate(
        &self,
        _: Request<pb::UpdateCandidateRequest>,
    ) -> Result<Response<pb::UpdateCandidateResponse>, Status> {
        self.behave().await?;
        Ok(Response::new(pb::UpdateCandidateResponse {}))
    }
    async fn edit_candidate(
        &self,
        _: Request<pb::EditCandidateRequest>,
    ) -> Result<Response<pb::EditCandidateResponse>, Status> {
        self.behave().await?;
        Ok(Response::new(pb::EditCandidateResponse {}))
    }
    async fn load_to_candidate(
        &self,
        _: Request<pb::LoadToCandidateRequest>,
    ) -> Result<Response<pb::LoadToCandidateResponse>, Status> {
        self.behave().await?;
        Ok(Response::new(pb::LoadToCandidateResponse {}))
    }
    async fn commit(&self, _: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        self.behave().await?;
        Ok(Response::new(pb::CommitResponse { transaction_id: 7, error_message: String::new() }))
    }
    type ListTransactionsStream = Stream<pb::ListTransactionsResponse>;
    async fn list_transactions(
        &self,
        _: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<Self::ListTransactionsStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_transaction(
        &self,
        _: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn lock_config(&self, _: Request<pb::LockConfigRequest>) -> Result<Response<pb::LockConfigResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn unlock_config(
        &self,
        _: Request<pb::UnlockConfigRequest>,
    ) -> Result<Response<pb::UnlockConfigResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn subscription_cache(
        &self,
        _: Request<pb::SubscriptionCacheRequest>,
    ) -> Result<Response<pb::SubscriptionCacheResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn execute(&self, _: Request<pb::ExecuteRequest>) -> Result<Response<pb::ExecuteResponse>, Status> {
        Err(Status::unimplemented(""))
    }
}

/// A Get stream that sends one answer, then has the relay cut the
/// connection, then never ends.
fn async_stream_of(first: pb::GetResponse, cut: Arc<tokio::sync::Notify>) -> Stream<pb::GetResponse> {
    let s = futures::stream::unfold(0u8, move |n| {
        let (first, cut) = (first.clone(), cut.clone());
        async move {
            if n == 0 {
                Some((Ok(first), 1))
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                cut.notify_waiters();
                std::future::pending::<()>().await;
                None
            }
        }
    });
    Box::pin(s)
}

/// The relay in front of the fake: forwards bytes, cuts every connection
/// on `cut`, or (GARBAGE_BYTES) answers junk instead of forwarding.
async fn relay(listen: u16, to: u16, mode: Arc<AtomicU8>, cut: Arc<tokio::sync::Notify>) {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await.unwrap();
    let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
    let conns2 = conns.clone();
    tokio::spawn(async move {
        loop {
            cut.notified().await;
            for h in conns2.lock().unwrap().drain(..) {
                h.abort();
            }
        }
    });
    loop {
        let (mut inbound, _) = l.accept().await.unwrap();
        let mode = mode.clone();
        let h = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            if mode.load(Ordering::SeqCst) == GARBAGE_BYTES {
                let _ = inbound.write_all(b"HTTP/1.1 500 nope\r\n\r\n\x00\xff\x13garbage garbage").await;
                return;
            }
            if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
        conns.lock().unwrap().push(h.abort_handle());
    }
}

#[test]
fn faulty_upstream_times_out_is_reported_and_recovers() {
    let ns = Netns::new("nbF");
    let fake = Fake {
        mode: Arc::new(AtomicU8::new(GOOD)),
        next: Arc::new(AtomicU32::new(1)),
        cut: Arc::new(tokio::sync::Notify::new()),
    };
    let (relay_port, fake_port) = (50062u16, 50063u16);
    {
        let (fake, name) = (fake.clone(), ns.name.clone());
        std::thread::spawn(move || {
            enter(&name);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                tokio::spawn(relay(relay_port, fake_port, fake.mode.clone(), fake.cut.clone()));
                tonic::transport::Server::builder()
                    .add_service(pb::northbound_server::NorthboundServer::new(fake))
                    .serve(([127, 0, 0, 1], fake_port).into())
                    .await
                    .unwrap();
            });
        });
    }
    let d = start_guard(
        &ns,
        &[
            ("ROUTEGUARD_FRR__NORTHBOUND__STATICD", format!("http://127.0.0.1:{relay_port}")),
            ("ROUTEGUARD_FRR__NORTHBOUND__POLL_INTERVAL", "300ms".into()),
            ("ROUTEGUARD_FRR__NORTHBOUND__TIMEOUT", "1s".into()),
            ("ROUTEGUARD_PROXY__LISTEN", format!("127.0.0.1:{PROXY}")),
        ],
    );
    wait_northbound(&d, &[("staticd", "up")]);
    let harmless = vec![nexthop_xpath("2001:db8:5::/64", "fd00:9::2", "lo")];
    let set = |m: u8| fake.mode.store(m, Ordering::SeqCst);
    let proxy_works = || {
        let (_, r) = in_ns(&ns.name, async {
            let mut c = client(PROXY).await;
            commit(&mut c, &harmless).await
        });
        assert_eq!(r.expect("commit through the proxy").transaction_id, 7);
    };
    proxy_works();

    // Hang: the proxy answers within its timeout, status says down, and
    // once the fake answers again everything recovers.
    set(HANG);
    let started = std::time::Instant::now();
    let e = in_ns(&ns.name, async {
        let mut c = client(PROXY).await;
        c.get_capabilities(pb::GetCapabilitiesRequest {}).await.unwrap_err()
    });
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("did not answer GetCapabilities within 1s"), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    wait_northbound(&d, &[("staticd", "down: ")]);
    set(GOOD);
    wait_northbound(&d, &[("staticd", "up")]);
    proxy_works();

    // Disconnect in the middle of a Get stream.
    set(CUT_MID_STREAM);
    let e = in_ns(&ns.name, async {
        let mut c = client(PROXY).await;
        let req =
            pb::GetRequest { r#type: 1, encoding: 0, with_defaults: false, path: vec!["/frr-routing:routing".into()] };
        match c.get(req).await {
            Err(e) => e,
            Ok(s) => {
                let mut s = s.into_inner();
                loop {
                    match s.message().await {
                        Err(e) => break e,
                        Ok(None) => panic!("stream ended cleanly after a cut"),
                        Ok(Some(_)) => {}
                    }
                }
            }
        }
    });
    assert!(e.message().starts_with("staticd"), "{e:?}");
    set(GOOD);
    wait_northbound(&d, &[("staticd", "up")]);
    proxy_works();

    // Garbage data: a commit cannot be judged, so it is refused.
    set(GARBAGE_JSON);
    let (_, r) = in_ns(&ns.name, async {
        let mut c = client(PROXY).await;
        commit(&mut c, &harmless).await
    });
    let e = r.expect_err("garbage running config");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("running configuration"), "{e:?}");
    wait_northbound(&d, &[("staticd", "down: ")]);
    set(GOOD);
    wait_northbound(&d, &[("staticd", "up")]);

    // Garbage bytes instead of HTTP/2.
    set(GARBAGE_BYTES);
    // New connections see the junk; drop the established one first.
    fake.cut.notify_waiters();
    let e = in_ns(&ns.name, async {
        let mut c = client(PROXY).await;
        c.get_capabilities(pb::GetCapabilitiesRequest {}).await.unwrap_err()
    });
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    wait_northbound(&d, &[("staticd", "down: ")]);
    set(GOOD);
    wait_northbound(&d, &[("staticd", "up")]);
    proxy_works();
    assert!(d.log_text().contains("northbound proxy: upstream call failed"));
}
