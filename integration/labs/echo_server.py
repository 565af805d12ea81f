#!/usr/bin/env python3
"""TCP echo server for lab nodes: echoes every line back, prefixed with the
node's name, so a client can tell which node answers a flow. Runs until
killed. Usage: echo_server.py NAME ADDR PORT"""
import socket
import sys
import threading

name, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(1024)
print("ready", flush=True)


def serve(conn):
    with conn:
        f = conn.makefile("rb")
        for line in f:
            try:
                conn.sendall(name.encode() + b" " + line)
            except OSError:
                return


while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
