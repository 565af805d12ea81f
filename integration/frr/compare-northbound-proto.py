#!/usr/bin/env python3
"""Check our proto/frr/northbound.proto for wire compatibility with FRR 8.4.4's.

    CACHE=${RG_TEST_CACHE:-/var/cache/routeguard-test}
    $CACHE/venv-northbound/bin/python integration/frr/compare-northbound-proto.py \
        $CACHE/frr-grpc-8.4.4/share/proto/frr-northbound.proto proto/frr/northbound.proto

(the venv and FRR's proto come from integration/frr/demo-northbound --setup-only).
Compiles both with grpc_tools.protoc and compares package, every message field
(number, name, type, label, message type), every enum value and every RPC
(request/response types, streaming). Prints the differences; exit 1 when something
of FRR's is missing or different in ours (extras in ours are listed, not failures:
against 8.4.4 an extra RPC answers UNIMPLEMENTED).
"""

import os
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2


def describe(proto_path):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "set.pb")
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc",
                        "-I", os.path.dirname(os.path.abspath(proto_path)),
                        f"--descriptor_set_out={out}", os.path.basename(proto_path)],
                       check=True)
        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            fds.ParseFromString(f.read())
    fd = fds.file[0]
    entries = {}

    def walk(prefix, messages):
        for m in messages:
            name = prefix + m.name
            entries["message " + name] = {
                f.number: (f.name, descriptor_pb2.FieldDescriptorProto.Type.Name(f.type),
                           descriptor_pb2.FieldDescriptorProto.Label.Name(f.label), f.type_name)
                for f in m.field}
            for e in m.enum_type:
                entries["enum " + name + "." + e.name] = {v.number: v.name for v in e.value}
            walk(name + ".", m.nested_type)

    walk("", fd.message_type)
    for e in fd.enum_type:
        entries["enum " + e.name] = {v.number: v.name for v in e.value}
    for s in fd.service:
        for m in s.method:
            entries[f"rpc {fd.package}.{s.name}/{m.name}"] = (
                m.input_type, m.output_type,
                "client-stream" if m.client_streaming else "unary",
                "server-stream" if m.server_streaming else "unary")
    return fd.package, entries


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    frr_pkg, frr = describe(sys.argv[1])
    our_pkg, ours = describe(sys.argv[2])
    bad = 0
    if frr_pkg != our_pkg:
        print(f"DIFF package: FRR {frr_pkg!r}, ours {our_pkg!r}")
        bad += 1
    for key in sorted(frr):
        if key not in ours:
            print(f"MISSING in ours: {key} {frr[key]}")
            bad += 1
        elif ours[key] != frr[key]:
            print(f"DIFF {key}\n  FRR : {frr[key]}\n  ours: {ours[key]}")
            bad += 1
    for key in sorted(set(ours) - set(frr)):
        print(f"extra in ours (not in FRR's): {key}")
    print(f"{len(frr)} definitions in FRR's proto, {len(ours)} in ours, {bad} incompatible")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
