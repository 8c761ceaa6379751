"""Bad input at the front door, and who can reach the Runtime API."""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import HAProxy, Processes, free_port, wait_for


@pytest.fixture
def guarded(procs: Processes, tmp_path: Path) -> HAProxy:
    """HAProxy with a 1 s header timeout (so slow-loris tests are quick) and app1 running."""
    haproxy = HAProxy(procs, tmp_path, [free_port(), free_port(), free_port()],
                      HAPROXY_HTTP_REQUEST_TIMEOUT="1s")
    procs.start([sys.executable, "-m", "service"],
                {"SERVICE_PORT": str(haproxy.app_ports[0]), "SERVICE_MAX_BODY_BYTES": "1000"}, "app1")
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    return haproxy


def raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_frontend_cannot_reach_the_runtime_api(guarded: HAProxy) -> None:
    for line in (b"set server app/app1 state maint\n", b"show stat\n", b"disable server app/app1\n"):
        reply = raw(guarded.port, line)
        assert reply.startswith(b"HTTP/1.1 400"), reply[:80]
    assert httpx.get(f"{guarded.url}/stats").status_code == 404  # no stats page on the frontend
    stats = httpx.post(f"http://127.0.0.1:{guarded.stats_port}/stats",
                       data={"s": "app1", "action": "maint", "b": "#3"})
    assert stats.status_code in (200, 303, 403)
    assert guarded.server("app1").status == "UP"  # nobody changed it
    assert stat.S_IMODE(os.stat(guarded.socket).st_mode) == 0o600  # owner-only admin socket


def test_stats_and_runtime_api_are_loopback_or_unix_only(guarded: HAProxy) -> None:
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    ports = {int(line.split()[1].split(":")[1], 16): line.split()[1].split(":")[0]
             for line in listening if line.split()[3] == "0A"}
    assert ports[guarded.stats_port] == "0100007F"  # 127.0.0.1


def test_bad_requests_get_clear_answers_through_haproxy(guarded: HAProxy) -> None:
    url = f"{guarded.url}/cms"
    assert httpx.post(url, content=b"x" * 2000).status_code == 413
    bad_json = httpx.post(url, content=b"{oops")
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
    assert httpx.get(url, params={"delay_ms": "soon"}).status_code == 400
    assert httpx.get(f"{guarded.url}/nope").status_code == 404


def test_huge_headers_are_refused_by_haproxy(guarded: HAProxy) -> None:
    reply = raw(guarded.port, b"GET /cms HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert reply.split(b"\r\n", 1)[0] in (b"HTTP/1.1 400 Bad request", b"HTTP/1.1 431 Request Header Fields Too Large")


def test_slow_loris_is_cut_off_by_the_header_timeout(guarded: HAProxy) -> None:
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as s:
        s.sendall(b"GET /cms HTTP/1.1\r\nHost: x\r\n")
        reply = b""
        for _ in range(40):  # one header byte every 0.1 s, never finishing
            try:
                s.sendall(b"X")
            except OSError:
                break
            s.settimeout(0.1)
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            reply += chunk
    assert time.monotonic() - began < 3
    assert reply.startswith(b"HTTP/1.1 408")
