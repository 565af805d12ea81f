#!/usr/bin/env python3
"""Exercise FRR 8.4.4's gRPC northbound (frr.Northbound) against real daemons.

Run it inside the namespace that runs the daemons (the gRPC module listens on
0.0.0.0:PORT there, plaintext), with the venv and stubs that the wrapper
integration/frr/demo-northbound prepares:

    ip netns exec NS $CACHE/venv-northbound/bin/python demo-northbound.py \
        --stubs $CACHE/northbound-py --zebra 50051 --staticd 50052 \
        --interface nb0 --prefix 2001:db8:77::/64 --gateway fd00:1::2

What it does, printing what it sees:
  1. GetCapabilities on zebra and staticd (version, rollback_support, modules,
     encodings);
  2. Get /frr-interface:lib from zebra (interfaces with state), JSON;
  3. staticd: CreateCandidate, EditCandidate (create the static route list entry
     with one ip6 nexthop, xpath as in field-notes.md), Commit(ALL), then waits
     for the route in the kernel (`ip -6 route show PREFIX`) and reads it back
     with Get; DeleteCandidate;
  4. error behaviour: an EditCandidate with a bad xpath, an unknown candidate
     id, and a call of the RPC /frr.Northbound/Subscribe, which 8.4.4's proto
     does not have (the server's status code is printed; expected UNIMPLEMENTED);
  5. removes the route again through a second candidate (EditCandidate delete +
     Commit) and checks that the kernel route is gone.
Exits non-zero if any expectation fails.
"""

import argparse
import json
import subprocess
import sys
import time

STATIC_ROUTE_XPATH = (
    "/frr-routing:routing/control-plane-protocols/"
    "control-plane-protocol[type='frr-staticd:staticd'][name='staticd'][vrf='default']/"
    "frr-staticd:staticd/route-list[prefix='{prefix}'][afi-safi='frr-routing:ipv6-unicast']"
)
NEXTHOP_SUFFIX = (
    "/path-list[table-id='0'][distance='1']/frr-nexthops/"
    "nexthop[nh-type='ip6'][vrf='default'][gateway='{gateway}'][interface='{interface}']"
)
STATICD_XPATH = (
    "/frr-routing:routing/control-plane-protocols/"
    "control-plane-protocol[type='frr-staticd:staticd'][name='staticd'][vrf='default']"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stubs", required=True, help="dir with frr_northbound_pb2*.py")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--zebra", type=int, default=50051)
    ap.add_argument("--staticd", type=int, default=50052)
    ap.add_argument("--interface", required=True)
    ap.add_argument("--prefix", default="2001:db8:77::/64")
    ap.add_argument("--gateway", default="fd00:1::2")
    args = ap.parse_args()

    sys.path.insert(0, args.stubs)
    import grpc  # noqa: E402
    import frr_northbound_pb2 as pb  # noqa: E402
    import frr_northbound_pb2_grpc as pb_grpc  # noqa: E402

    failures = []

    def check(cond, what):
        print(("  ok   " if cond else "  FAIL ") + what)
        if not cond:
            failures.append(what)

    def stub(port):
        channel = grpc.insecure_channel(f"{args.host}:{port}")
        grpc.channel_ready_future(channel).result(timeout=10)
        return channel, pb_grpc.NorthboundStub(channel)

    zebra_ch, zebra = stub(args.zebra)
    staticd_ch, staticd = stub(args.staticd)

    # 1. GetCapabilities
    for name, s in (("zebra", zebra), ("staticd", staticd)):
        t0 = time.monotonic()
        caps = s.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
        ms = (time.monotonic() - t0) * 1000
        mods = sorted(m.name for m in caps.supported_modules)
        print(f"[{name}] GetCapabilities ({ms:.1f} ms): frr_version={caps.frr_version!r} "
              f"rollback_support={caps.rollback_support} "
              f"encodings={[pb.Encoding.Name(e) for e in caps.supported_encodings]} "
              f"modules={len(mods)}")
        print(f"         modules: {', '.join(mods)}")
        check(caps.frr_version.startswith("8.4.4"), f"{name} reports FRR 8.4.4")

    # 2. Get /frr-interface:lib from zebra
    req = pb.GetRequest(type=pb.GetRequest.ALL, encoding=pb.JSON, path=["/frr-interface:lib"])
    t0 = time.monotonic()
    responses = list(zebra.Get(req, timeout=10))
    ms = (time.monotonic() - t0) * 1000
    print(f"[zebra] Get /frr-interface:lib ({ms:.1f} ms): {len(responses)} response(s)")
    data = json.loads(responses[0].data.data) if responses else {}
    ifaces = data.get("frr-interface:lib", {}).get("interface", [])
    for i in ifaces:
        st = i.get("state", {})
        print(f"         interface {i.get('name')}: vrf={i.get('vrf')} state={json.dumps(st)}")
    check(any(i.get("name") == args.interface for i in ifaces),
          f"zebra's Get lists {args.interface}")
    print("         first response, raw (truncated): " + responses[0].data.data[:300].replace("\n", " "))

    # 3. static route through a staticd candidate
    route_xpath = STATIC_ROUTE_XPATH.format(prefix=args.prefix)
    nh_xpath = route_xpath + NEXTHOP_SUFFIX.format(gateway=args.gateway, interface=args.interface)
    cand = staticd.CreateCandidate(pb.CreateCandidateRequest(), timeout=10).candidate_id
    print(f"[staticd] CreateCandidate -> candidate_id={cand}")
    print(f"[staticd] EditCandidate update path={nh_xpath}")
    staticd.EditCandidate(pb.EditCandidateRequest(
        candidate_id=cand, update=[pb.PathValue(path=nh_xpath, value="")]), timeout=10)
    t0 = time.monotonic()
    resp = staticd.Commit(pb.CommitRequest(candidate_id=cand, phase=pb.CommitRequest.ALL,
                                           comment="routeguard demo: add"), timeout=10)
    print(f"[staticd] Commit(ALL) -> transaction_id={resp.transaction_id} "
          f"error_message={resp.error_message!r}")
    route = wait_route(args.prefix, present=True)
    print(f"[kernel] ip -6 route show {args.prefix}: {route or '(none)'} "
          f"({(time.monotonic() - t0) * 1000:.0f} ms after Commit)")
    check(bool(route) and args.gateway in route and args.interface in route,
          "route is in the kernel with the requested nexthop")
    print("[kernel] ip -6 nexthop show: " + " | ".join(
        subprocess.run(["ip", "-6", "nexthop", "show"], capture_output=True, text=True)
        .stdout.strip().splitlines()))
    got = list(staticd.Get(pb.GetRequest(type=pb.GetRequest.CONFIG, encoding=pb.JSON,
                                         path=[STATICD_XPATH]), timeout=10))
    text = got[0].data.data if got else ""
    print(f"[staticd] Get CONFIG {STATICD_XPATH}:\n" + indent(text))
    check(args.prefix in text, "staticd's running config has the route")
    staticd.DeleteCandidate(pb.DeleteCandidateRequest(candidate_id=cand), timeout=10)
    print(f"[staticd] DeleteCandidate {cand}: ok")

    # 4. error behaviour
    cand2 = staticd.CreateCandidate(pb.CreateCandidateRequest(), timeout=10).candidate_id
    code, detail = status_of(lambda: staticd.EditCandidate(pb.EditCandidateRequest(
        candidate_id=cand2, update=[pb.PathValue(path="/frr-nonexistent:foo/bar", value="1")]),
        timeout=10))
    print(f"[staticd] EditCandidate bad xpath -> {code} {detail!r}")
    check(code == "INVALID_ARGUMENT", "bad xpath gives INVALID_ARGUMENT")
    code, detail = status_of(lambda: staticd.Commit(pb.CommitRequest(
        candidate_id=999999, phase=pb.CommitRequest.ALL), timeout=10))
    print(f"[staticd] Commit unknown candidate -> {code} {detail!r}")
    check(code == "NOT_FOUND", "unknown candidate gives NOT_FOUND")
    txs = list(staticd.ListTransactions(pb.ListTransactionsRequest(), timeout=10))
    print(f"[staticd] ListTransactions -> OK, {len(txs)} transaction(s)")
    for t in txs:
        print(f"         id={t.id} client={t.client!r} date={t.date!r} comment={t.comment!r}")
    for ch, name in ((zebra_ch, "zebra"), (staticd_ch, "staticd")):
        raw = ch.unary_unary("/frr.Northbound/Subscribe",
                             request_serializer=lambda b: b,
                             response_deserializer=lambda b: b)
        code, detail = status_of(lambda: raw(b"", timeout=10))
        print(f"[{name}] /frr.Northbound/Subscribe (not in 8.4.4's proto) -> {code} {detail!r}")
        check(code == "UNIMPLEMENTED", f"{name}: unknown RPC gives UNIMPLEMENTED")
    raw = zebra_ch.unary_unary("/frr.NorthboundNope/GetCapabilities",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
    code, detail = status_of(lambda: raw(b"", timeout=10))
    print(f"[zebra] /frr.NorthboundNope/GetCapabilities (unknown service) -> {code} {detail!r}")

    # 5. remove the route again
    print(f"[staticd] EditCandidate delete path={route_xpath}")
    staticd.EditCandidate(pb.EditCandidateRequest(
        candidate_id=cand2, delete=[pb.PathValue(path=route_xpath)]), timeout=10)
    resp = staticd.Commit(pb.CommitRequest(candidate_id=cand2, phase=pb.CommitRequest.ALL,
                                           comment="routeguard demo: delete"), timeout=10)
    print(f"[staticd] Commit(ALL) -> transaction_id={resp.transaction_id}")
    gone = wait_route(args.prefix, present=False)
    check(not gone, "route left the kernel after the delete commit")
    staticd.DeleteCandidate(pb.DeleteCandidateRequest(candidate_id=cand2), timeout=10)

    print(f"demo-northbound: {'all checks passed' if not failures else 'FAILED: ' + '; '.join(failures)}")
    return 1 if failures else 0


def wait_route(prefix, present, timeout=5.0):
    """Poll `ip -6 route show PREFIX` until the route is (or is no longer) there."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["ip", "-6", "route", "show", prefix],
                             capture_output=True, text=True).stdout.strip()
        if bool(out) == present or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def status_of(call):
    """Run a call expected to fail; return (status code name, details)."""
    import grpc
    try:
        call()
        return "OK", ""
    except grpc.RpcError as e:
        return e.code().name, e.details()


def indent(text):
    return "\n".join("         " + line for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
