"""Bad input at the front door, and who can reach the Runtime API."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import HAProxy, Processes, free_port, haproxy_binary, wait_for

FLOOD = Path(__file__).parent / "apps" / "flood.py"


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


def test_haproxy_listens_only_on_loopback_and_its_admin_socket_is_unix_only(guarded: HAProxy) -> None:
    """Every socket the HAProxy processes hold: TCP listeners only on 127.0.0.1 (frontend,
    stats; no Runtime API on TCP), and the admin socket a unix socket only its owner can open."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and _cmdline(p).startswith(haproxy_binary()) and str(guarded.servers_cfg) in _cmdline(p)]
    assert pids
    inodes = {link.split("[")[1].rstrip("]") for pid in pids for link in _fd_links(pid) if link.startswith("socket:[")}
    listening = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN, held by HAProxy
            address, port = fields[1].split(":")
            listening[int(port, 16)] = address
    assert listening == {guarded.port: "0100007F", guarded.stats_port: "0100007F"}
    unix = [line.split()[-1] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
            if line.split()[6] in inodes and len(line.split()) > 7]
    # HAProxy binds a temporary name and renames it into place.
    assert any(path == str(guarded.socket) or path.startswith(f"{guarded.socket}.") for path in unix)
    assert stat.S_IMODE(os.stat(guarded.socket).st_mode) == 0o600


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _fd_links(pid: int) -> list[str]:
    links = []
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                links.append(os.readlink(fd))
    return links


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


def test_public_clients_see_the_service_not_its_metrics_or_pid(guarded: HAProxy) -> None:
    for path in ("/metrics", "/version", "/metrics/", "//metrics", "/%6detrics", "/x/../version", "/VERSION",
                 "/./metrics"):
        assert httpx.get(f"{guarded.url}{path}").status_code == 404, path
    answer = httpx.get(f"{guarded.url}/cms").json()
    assert set(answer) == {"instance", "version", "delay_ms"}  # no pid
    assert httpx.get(f"{guarded.url}/readyz").status_code == 200
    direct = f"http://127.0.0.1:{guarded.app_ports[0]}"  # operators, on the instance itself
    assert "pid" in httpx.get(f"{direct}/version").json()
    assert "service_requests_total" in httpx.get(f"{direct}/metrics").text


@pytest.mark.parametrize("per_source", [None, "100000"], ids=["ours", "control"])
def test_thousands_of_idle_connections_to_every_port_an_app_reaches_starve_neither_the_frontend_nor_a_drain(
        stack_factory, procs: Processes, monkeypatch: pytest.MonkeyPatch, per_source: str | None) -> None:  # type: ignore[no-untyped-def]
    """What a compromised app container can do: hold 5,000 idle sockets on every port it reaches
    (here from 127.0.0.2, as a container has its own address): the public frontend, the stats
    page every agent reads, each agent's port, each app's port. The public frontend still
    answers everything, and a rolling restart still drains in its usual time (the drain counts
    only HAProxy's connections to an app, never a flood's). The control lifts the frontend's
    limit per source: the flood takes the global maxconn, which every listener shares."""
    from agent.connections import established_to
    from deploy.strategies.rolling import rolling_restart
    from tests.conftest import load_during

    if per_source:
        monkeypatch.setenv("HAPROXY_MAX_CONN_PER_SOURCE", per_source)  # supervisord passes it on
    engine = stack_factory()
    baseline = rolling_restart(engine, None, {}, 60, lambda event: None)
    assert baseline.error is None
    instances = engine.instances()
    ports = [engine.stack.port, engine.stack.stats_port,
             *(engine.agent_port(i) for i in instances), *(engine.app_port(i) for i in instances)]
    for port in ports:
        procs.start([sys.executable, str(FLOOD), "127.0.0.2", "5000", str(port)], {}, f"flood-{port}")
    flooder = frozenset({"127.0.0.2"})
    app_ports = [engine.app_port(i) for i in instances]  # the agents answer and close: no socket stays
    wait_for(lambda: all(len(established_to(port, flooder) or ()) >= 4500 for port in app_ports), timeout=60,
             what="5,000 idle sockets on every app's port")
    held = {port: len(established_to(port, flooder) or ()) for port in ports}
    print(f"\nidle sockets held: {held}")
    result, restart = load_during(engine.frontend_url(), lambda: rolling_restart(
        engine, None, {}, 60, lambda event: None), requests=6_000, start_after_s=0.5)
    if per_source:
        print(f"\ncontrol: {result.failed} failed; the restart: {restart.error or 'done'}")  # type: ignore[attr-defined]
        assert result.failed > 0 or restart.error is not None  # type: ignore[attr-defined]
        return
    assert restart.error is None, restart.error  # type: ignore[attr-defined]
    assert result.failed == 0, result.failures
    flooded_s, usual_s = sum(restart.seconds.values()), sum(baseline.seconds.values())  # type: ignore[attr-defined]
    print(f"\nflooded: {result.total} requests, 0 failed; the restart took {flooded_s:.1f}s (usual: {usual_s:.1f}s)")
    assert flooded_s < 2 * usual_s + 3, (flooded_s, usual_s)
