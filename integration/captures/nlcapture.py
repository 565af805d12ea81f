#!/usr/bin/env python3
"""Capture raw rtnetlink messages as test fixtures for routeguard's decoders.

Every fixture is one whole netlink message exactly as the kernel sent it,
16-byte nlmsghdr included, so the Rust tests exercise the same bytes a live
socket would deliver. The tool talks to the kernel through a plain
AF_NETLINK/NETLINK_ROUTE socket, with no netlink library in between, so
nothing can reinterpret or re-encode what the kernel sent.

Subcommands:
  dump KIND  send an NLM_F_DUMP request, save the first reply that matches
  watch      join multicast groups, run a command, save the first matching
             notification it caused
  add-nh-group  create a nexthop group with 16-bit weights (iproute2 < 6.12
             cannot express weights above 255)

Matching: --match ATTR=KIND:VALUE compares a top-level attribute of the
message (after the family header of its message type), e.g. 1=u32:10,
1=i32:-1, 6=ip:fe80::2, 3=str:rgB. --type limits the message type.
Without --out the matching messages are listed instead of saved, which is
the quickest way to look at what a kernel sends.

Run it inside the network namespace under test (ip netns exec NS ...): the
socket sees the namespace of the process that opens it.
"""

import argparse
import ipaddress
import os
import select
import socket
import struct
import subprocess
import sys
import time

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300

AF_UNSPEC = 0
AF_INET = 2
AF_INET6 = 10

RTM_NEWNEXTHOP = 104
NHA_ID = 1
NHA_GROUP = 2

# Size of the family header that precedes the attributes, per message type.
# Needed to find the attributes of a message in order to --match on them.
HEADER_SIZE = {}
for _t in (16, 17, 18, 19):  # RTM_*LINK: struct ifinfomsg
    HEADER_SIZE[_t] = 16
for _t in (20, 21, 22, 60, 61, 62):  # RTM_*ADDR, RTM_*ANYCAST: struct ifaddrmsg
    HEADER_SIZE[_t] = 8
for _t in (24, 25, 26):  # RTM_*ROUTE: struct rtmsg
    HEADER_SIZE[_t] = 12
for _t in (80, 81, 82):  # RTM_*NETCONF: struct netconfmsg, 1 byte padded to 4
    HEADER_SIZE[_t] = 4
for _t in (104, 105, 106):  # RTM_*NEXTHOP: struct nhmsg
    HEADER_SIZE[_t] = 8

# Dump requests: (request type, family header bytes). The family byte is
# filled in from --family where the kind takes one.
DUMP_KINDS = {
    "nexthop": (106, 8),   # RTM_GETNEXTHOP, struct nhmsg
    "netconf": (82, 4),    # RTM_GETNETCONF, struct netconfmsg + padding
    "anycast": (62, 8),    # RTM_GETANYCAST, struct ifaddrmsg (IPv6 only)
    "route": (26, 12),     # RTM_GETROUTE, struct rtmsg
    "link": (18, 16),      # RTM_GETLINK, struct ifinfomsg
    "addr": (22, 8),       # RTM_GETADDR, struct ifaddrmsg
}


def open_socket(groups=()):
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    for group in groups:
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    return sock


def split_messages(buf):
    """Yields (type, flags, whole message bytes) for each message in buf."""
    off = 0
    while off + 16 <= len(buf):
        length, mtype, flags, _seq, _pid = struct.unpack_from("=IHHII", buf, off)
        if length < 16 or off + length > len(buf):
            raise ValueError(f"bad nlmsg_len {length} at offset {off}")
        yield mtype, flags, buf[off:off + length]
        off += (length + 3) & ~3


def attrs(buf):
    """Yields (type with flag bits masked, payload) for top-level attributes."""
    off = 0
    while off + 4 <= len(buf):
        length, atype = struct.unpack_from("=HH", buf, off)
        if length < 4 or off + length > len(buf):
            return
        yield atype & 0x3FFF, buf[off + 4:off + length]
        off += (length + 3) & ~3


def parse_match(spec):
    """Turns ATTR=KIND:VALUE into (attribute type, expected payload bytes)."""
    attr, _, rest = spec.partition("=")
    kind, _, value = rest.partition(":")
    if kind == "u32":
        data = struct.pack("=I", int(value, 0))
    elif kind == "i32":
        data = struct.pack("=i", int(value, 0))
    elif kind == "u16":
        data = struct.pack("=H", int(value, 0))
    elif kind == "ip":
        data = ipaddress.ip_address(value).packed
    elif kind == "str":
        data = value.encode() + b"\0"
    elif kind == "hex":
        data = bytes.fromhex(value)
    else:
        raise SystemExit(f"unknown match kind in {spec!r}")
    return int(attr, 0), data


def matches(msg, mtype, want_types, want_attrs):
    if want_types and mtype not in want_types:
        return False
    if not want_attrs:
        return True
    hdr = HEADER_SIZE.get(mtype)
    if hdr is None:
        return False
    found = {}
    for atype, payload in attrs(msg[16 + hdr:]):
        found.setdefault(atype, payload)
    return all(found.get(a) == d for a, d in want_attrs)


def describe(msg):
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", msg, 0)
    line = f"type={mtype} len={length} flags={flags:#x} seq={seq} pid={pid}"
    hdr = HEADER_SIZE.get(mtype)
    if hdr is not None:
        parts = [f"{a}:{p.hex()}" for a, p in attrs(msg[16 + hdr:])]
        line += f" hdr={msg[16:16 + hdr].hex()} attrs=" + " ".join(parts)
    return line


def save_or_list(found, out):
    if out is None:
        for msg in found:
            print(describe(msg))
        return 0
    if not found:
        print("no matching message", file=sys.stderr)
        return 1
    with open(out, "wb") as f:
        f.write(found[0])
    print(f"{out}: {describe(found[0])}")
    return 0


def recv_all(sock, timeout):
    """Reads until the socket has been quiet for `timeout` seconds."""
    msgs = []
    while True:
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            return msgs
        data = sock.recv(1 << 20)
        msgs.extend(split_messages(data))


def cmd_dump(args):
    req_type, hdr_len = DUMP_KINDS[args.kind]
    family = {"4": AF_INET, "6": AF_INET6, "any": AF_UNSPEC}[args.family]
    if args.kind == "anycast":
        family = AF_INET6
    header = bytes([family]) + bytes(hdr_len - 1)
    sock = open_socket()
    msg = struct.pack("=IHHII", 16 + hdr_len, req_type, NLM_F_REQUEST | NLM_F_DUMP,
                      1, 0) + header
    sock.send(msg)
    found = []
    want_attrs = [parse_match(m) for m in args.match]
    done = False
    while not done:
        data = sock.recv(1 << 20)
        for mtype, _flags, whole in split_messages(data):
            if mtype == NLMSG_DONE:
                done = True
                break
            if mtype == NLMSG_ERROR:
                err = struct.unpack_from("=i", whole, 16)[0]
                raise SystemExit(f"dump failed: errno {-err} ({os.strerror(-err)})")
            if matches(whole, mtype, args.type, want_attrs):
                found.append(whole)
    return save_or_list(found, args.out)


def cmd_watch(args):
    if not args.command:
        raise SystemExit("watch needs a command after --")
    sock = open_socket(args.group)
    # Subscribe first, then act: a notification sent before we joined the
    # group would be lost, and the capture would silently miss it.
    subprocess.run(args.command, check=True)
    want_attrs = [parse_match(m) for m in args.match]
    found = [whole for mtype, _flags, whole in recv_all(sock, args.settle)
             if matches(whole, mtype, args.type, want_attrs)]
    return save_or_list(found, args.out)


def nla(atype, payload):
    length = 4 + len(payload)
    return struct.pack("=HH", length, atype) + payload + bytes((-length) % 4)


def cmd_add_nh_group(args):
    members = b""
    for spec in args.member:
        nh_id, _, weight = spec.partition(":")
        weight = int(weight or "1")
        if not 1 <= weight <= 65535:
            raise SystemExit(f"weight out of range in {spec!r}")
        # struct nexthop_grp: id, weight-1 low byte, weight-1 high byte, resvd.
        members += struct.pack("=IBBH", int(nh_id), (weight - 1) & 0xFF,
                               (weight - 1) >> 8, 0)
    body = struct.pack("=BBBBI", AF_UNSPEC, 0, args.protocol, 0, 0)
    body += nla(NHA_ID, struct.pack("=I", args.id)) + nla(NHA_GROUP, members)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    sock = open_socket()
    sock.send(struct.pack("=IHHII", 16 + len(body), RTM_NEWNEXTHOP, flags, 1, 0) + body)
    for mtype, _flags, whole in split_messages(sock.recv(65536)):
        if mtype == NLMSG_ERROR:
            err = struct.unpack_from("=i", whole, 16)[0]
            if err:
                raise SystemExit(f"RTM_NEWNEXTHOP failed: {os.strerror(-err)}")
            return 0
    raise SystemExit("no ACK for RTM_NEWNEXTHOP")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add_filters(sp):
        sp.add_argument("--type", type=int, action="append", default=[],
                        help="accept only this nlmsg_type (repeatable)")
        sp.add_argument("--match", action="append", default=[],
                        help="ATTR=KIND:VALUE (kind: u32 i32 u16 ip str hex)")
        sp.add_argument("--out", help="write the first match here (else list all)")

    d = sub.add_parser("dump", help="dump request, save first matching reply")
    d.add_argument("kind", choices=sorted(DUMP_KINDS))
    d.add_argument("--family", choices=["4", "6", "any"], default="any")
    add_filters(d)

    w = sub.add_parser("watch", help="join groups, run a command, save a notification")
    w.add_argument("--group", type=int, action="append", required=True,
                   help="RTNLGRP_* number to join (repeatable)")
    w.add_argument("--settle", type=float, default=0.5,
                   help="seconds of quiet that end the capture")
    add_filters(w)
    w.add_argument("command", nargs=argparse.REMAINDER)

    g = sub.add_parser("add-nh-group", help="create a nexthop group with u16 weights")
    g.add_argument("--id", type=int, required=True)
    g.add_argument("--member", action="append", required=True, help="ID[:WEIGHT]")
    g.add_argument("--protocol", type=int, default=3, help="RTPROT_* (3 = boot)")

    args = p.parse_args()
    if args.cmd == "watch" and args.command and args.command[0] == "--":
        args.command = args.command[1:]
    return {"dump": cmd_dump, "watch": cmd_watch, "add-nh-group": cmd_add_nh_group}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
