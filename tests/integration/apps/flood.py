"""Holds COUNT idle connections from SOURCE to each PORT of 127.0.0.1 (what a compromised app
container could do to every port it reaches), reopening those the other side closes, at
most 500 a second. Runs until killed.

    python flood.py SOURCE COUNT PORT [PORT ...]
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import sys
import time

source, count, ports = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
selector = selectors.DefaultSelector()
held = 0
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h


def open_one(port: int) -> None:
    global held
    conn = socket.socket()
    conn.setblocking(False)
    # The port is picked at connect time, per destination: a container has its own port space,
    # and 40,000 bound sockets on one host must not use up the ephemeral ports HAProxy needs.
    conn.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    try:
        conn.bind((source, 0))
        conn.connect_ex(("127.0.0.1", port))
    except OSError:
        conn.close()
        return
    selector.register(conn, selectors.EVENT_READ, port)
    held += 1


def close_one(conn: socket.socket) -> None:
    global held
    selector.unregister(conn)
    conn.close()
    held -= 1


for port in ports:  # all at once; then the ones closed are reopened, 50 every 0.1 s
    for _ in range(count):
        open_one(port)
wanted = dict.fromkeys(ports, 0)
while True:
    budget = 50
    for port in ports:
        while wanted[port] and budget:
            open_one(port)
            wanted[port] -= 1
            budget -= 1
    for key, _ in selector.select(timeout=0.1):
        conn = key.fileobj
        assert isinstance(conn, socket.socket)
        data = b""
        with contextlib.suppress(OSError):
            data = conn.recv(4096)
        if data:
            continue  # an answer, read: the socket stays open and idle
        close_one(conn)  # closed or reset by the other side: open another
        wanted[key.data] += 1
    time.sleep(0.1 if not budget else 0)
