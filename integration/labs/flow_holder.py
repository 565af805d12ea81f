#!/usr/bin/env python3
"""Holds N TCP connections from unbound sockets (the kernel picks the source
address and port: that is the case the ECMP hazard is about) and answers
commands on stdin with one JSON line each:
  open N     open N more connections, echo once on each
  check      send one line on every open connection; report which broke
  close      close all connections
  quit
Usage: flow_holder.py ADDR PORT
With BIND_DEV=DEV in the environment every socket is bound to device DEV
(SO_BINDTODEVICE; a VRF device puts the connections in that VRF)."""
import json
import os
import socket
import sys

addr, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
conns = {}


def echo(c):
    c.sendall(b"ping\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = c.recv(100)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data.split(b" ")[0].decode()


def reply(obj):
    print(json.dumps(obj), flush=True)


for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "open":
        opened, nodes = [], {}
        for _ in range(int(cmd[1])):
            c = socket.socket(family, socket.SOCK_STREAM)
            if os.environ.get("BIND_DEV"):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, os.environ["BIND_DEV"].encode())
            c.settimeout(3)
            c.connect((addr, port))
            lport = c.getsockname()[1]
            nodes[lport] = echo(c)
            conns[lport] = c
            opened.append(lport)
        reply({"opened": opened, "nodes": nodes})
    elif cmd[0] == "check":
        broken, nodes = [], {}
        for lport, c in sorted(conns.items()):
            try:
                nodes[lport] = echo(c)
            except (OSError, ConnectionError):
                broken.append(lport)
        for lport in broken:
            conns.pop(lport).close()
        reply({"broken": broken, "alive": sorted(conns), "nodes": nodes})
    elif cmd[0] == "close":
        for c in conns.values():
            c.close()
        conns.clear()
        reply({"closed": True})
    elif cmd[0] == "quit":
        break
