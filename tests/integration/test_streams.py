"""WebSocket and server-sent-event clients ride through restarts: real HAProxy, agents, service.

With `--drain-notify SIGUSR1` the agent tells the app as soon as every HAProxy sends it no new
work; the app closes each socket with 1012 after the message in flight and ends each event
stream; the clients reconnect through HAProxy to another instance and carry on. The drain then
ends in about the time of a message. The control: the same without the notice waits the whole
drain timeout. And a client that ignores the close is cut at the drain timeout, and counted.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from agent.events import parse_log
from deploy.check.loadcheck import LoadPlan, LoadResult, check_ledgers, run_load
from deploy.check.streams import StreamsPlan, StreamsResult, run_streams
from deploy.check.streams_report import bursts, check_ws_ledgers, summary
from deploy.strategies.rolling import Event, RestartResult, rolling_restart
from tests.conftest import HAProxy, Processes, start_agent, wait_for

NOTIFY = {"DRAIN_AGENT_DRAIN_NOTIFY": "SIGUSR1"}


def with_streams(url: str, plan: StreamsPlan, action: Callable[[], Any], http: int = 0,
                 warm_up_s: float = 1.5) -> tuple[StreamsResult, LoadResult | None, Any]:
    """The stream clients (and `http` strict HTTP workers, if any) while `action` runs in a thread,
    from `warm_up_s` on; everything stops a moment after it returns."""
    outcome: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            time.sleep(warm_up_s)
            outcome.append(action())
        except BaseException as exc:
            outcome.append(exc)
        finally:
            done.set()

    async def main() -> tuple[StreamsResult, LoadResult | None]:
        stop = asyncio.Event()
        streams = asyncio.create_task(run_streams(plan, stop))
        load = None
        if http:
            load = asyncio.create_task(run_load(
                LoadPlan(url=f"{url}/cms", requests=1, concurrency=http, post_share=0.2, slow_share=0.1,
                         slow_ms=100),
                keep_going=lambda: not done.is_set()))
        while not done.is_set():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the last reconnects settle
        stop.set()
        return await streams, (await load if load else None)

    thread = threading.Thread(target=run)
    thread.start()
    streams, load = uvloop.run(main())
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return streams, load, outcome[0]


def drains(log: str, since: float = 0.0) -> list[int]:
    """drain_ms of each drain in an agent's log (its DRAINING -> STOPPING transition)."""
    return [int(e.fields["drain_ms"]) for e in parse_log(log)
            if e.event == "agent.state" and e.fields.get("to") == "stopping" and e.at >= since]


def assert_streams_whole(streams: StreamsResult, ledgers: list[Path]) -> None:
    assert streams.ws_exactly_once, summary(streams)
    assert all(t.out_of_order == 0 for t in streams.ws)
    ledger = check_ws_ledgers(streams, ledgers)
    assert ledger.ok and ledger.processed_once == sum(t.sent for t in streams.ws), ledger
    assert streams.sse_in_order, summary(streams)
    assert all(t.cut == 0 for t in streams.sse)
    assert not streams.slow_reconnects, streams.slow_reconnects[:3]
    # Nothing failed on the way: no refused connect, no 503, no cut stream.
    assert not streams.failures, streams.failures


# -- the rolling restart -------------------------------------------------------------------


def test_rolling_restart_with_websocket_and_sse_clients_loses_nothing(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """Scaled for a 2-core machine (the full 100 WS x 20/s + 50 SSE run is in docs/streams.md):
    every WebSocket message echoed and processed exactly once, every event in order, every
    client back within 1 s, no HTTP request failed, and each drain ~ a message, not 70 s. The
    same deploy without the clients first: with them it takes no more than 1.5x as long."""
    engine = stack_factory(app_env=NOTIFY)
    events: list[Event] = []

    def restart() -> tuple[RestartResult, float]:
        began = time.monotonic()
        result = rolling_restart(engine, "v2", {}, 60, events.append)
        return result, time.monotonic() - began

    url = engine.frontend_url()
    none = StreamsPlan(url=url, ws_clients=0, sse_clients=0)
    _, bare_load, (bare, bare_s) = with_streams(url, none, restart, http=20)
    assert bare.error is None and bare_load is not None and bare_load.failed == 0
    since = time.time()
    plan = StreamsPlan(url=url, ws_clients=30, ws_rate=20, sse_clients=15, sse_interval_ms=100)
    streams, load, (result, with_s) = with_streams(url, plan, restart, http=20)
    print(summary(streams))
    print(f"deploy under HTTP load: {bare_s:.2f}s without the stream clients ({bare.seconds}), "
          f"{with_s:.2f}s with them ({result.seconds})")

    assert result.error is None
    assert load is not None and load.failed == 0, load.failures
    assert load.total > 500
    assert check_ledgers(load, engine.ledgers()).ok
    assert_streams_whole(streams, engine.ledgers())
    assert sum(t.sent for t in streams.ws) > 30 * 20 * 3
    # Every client left each instance it was on, once per restart: 3 bursts per kind, one per instance.
    assert {(b[0].kind, b[0].left) for b in bursts(streams)} == {
        (kind, name) for kind in ("ws", "sse") for name in ("app1", "app2", "app3")}
    assert {r.how for r in streams.reconnects} == {"1012", "end"}
    assert all(r.reached and r.reached != r.left for r in streams.reconnects)
    # Each drain took about one message, not the drain timeout (70 s).
    for instance in engine.instances():
        log = engine.log_path(instance).read_text()
        assert "event=drain.notify" in log and "event=drain.timeout" not in log
        assert [ms < 1500 for ms in drains(log, since)] == [True], drains(log, since)
    assert with_s <= 1.5 * bare_s


# -- the notice, and its control --------------------------------------------------------------


def start_pool(procs: Processes, haproxy: HAProxy, tmp: Path, *agent_flags: str) -> subprocess.Popen[bytes]:
    """app1 under drain-agent with `agent_flags`; app2 and app3 plain; every one with a ledger."""
    ledger = {"SERVICE_POST_LEDGER": str(tmp / "ledger-app1.log")}
    agent = start_agent(procs, haproxy, haproxy.app_ports[0], *agent_flags, env=ledger)
    for name, port in (("app2", haproxy.app_ports[1]), ("app3", haproxy.app_ports[2])):
        procs.start([sys.executable, "-m", "service"], {
            "SERVICE_PORT": str(port), "SERVICE_INSTANCE": name,
            "SERVICE_POST_LEDGER": str(tmp / f"ledger-{name}.log")}, name)
    for name in ("app1", "app2", "app3"):
        wait_for(lambda name=name: haproxy.server(name).status == "UP", what=f"{name} UP")  # type: ignore[misc]
    return agent


@pytest.mark.parametrize("notify", [True, False], ids=["notify", "control-without-notify"])
def test_the_drain_notice_ends_the_drain_in_a_message_not_the_timeout(
    procs: Processes, haproxy: HAProxy, tmp_path: Path, notify: bool,
) -> None:
    flags = ["--drain-timeout", "3", *(["--drain-notify", "SIGUSR1"] if notify else [])]
    agent = start_pool(procs, haproxy, tmp_path, *flags)
    plan = StreamsPlan(url=haproxy.url, ws_clients=12, ws_rate=20, sse_clients=6, sse_interval_ms=100)

    def stop_app1() -> int:
        agent.send_signal(signal.SIGTERM)
        return agent.wait(timeout=20)

    streams, _, code = with_streams(haproxy.url, plan, stop_app1)
    assert code == 0
    log = procs.log("agent")
    [drain_ms] = drains(log)
    # Either way the clients ride through: with the notice at once, without it at the app's
    # SIGTERM (the service's fallback), after the whole drain timeout.
    assert_streams_whole(streams, sorted(tmp_path.glob("ledger-*.log")))
    assert {r.left for r in streams.reconnects} == {"app1"}  # only app1's clients moved
    if notify:
        assert drain_ms < 1500, log
        assert "event=drain.notify" in log and "event=drain.timeout" not in log
        assert re.search(r"event=service.release instance=app1 reason=SIGUSR1 websockets=\d+ sse=\d+", log)
    else:
        assert drain_ms >= 3000, log
        assert "event=drain.notify" not in log
        assert re.search(r"event=drain.timeout .* sessions=\d+", log)
        assert "event=service.release instance=app1 reason=sigterm" in log


# -- clients that ignore the close ------------------------------------------------------------


def raw_websocket(port: int, client: str) -> socket.socket:
    """A WebSocket that answers nothing on its own: the test decides what it does with a close."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall(f"GET /ws?client={client} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n"
                 f"connection: Upgrade\r\nsec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n"
                 .encode())
    assert conn.recv(4096).startswith(b"HTTP/1.1 101 ")
    return conn


def test_clients_that_ignore_the_close_are_cut_at_the_drain_timeout_and_counted(
    procs: Processes, haproxy: HAProxy, tmp_path: Path,
) -> None:
    agent = start_pool(procs, haproxy, tmp_path, "--drain-timeout", "2", "--drain-notify", "SIGUSR1")
    # Round robin: open sockets until two land on app1 (its answers name the instance).
    deaf: list[socket.socket] = []
    while len(deaf) < 2:
        conn = raw_websocket(haproxy.port, f"deaf{len(deaf)}")
        conn.sendall(bytes([0x81, 0x80 | 9]) + b"\0\0\0\0" + b'{"seq":1}')  # masked text frame
        if b'"instance":"app1"' in conn.recv(4096):
            deaf.append(conn)
        else:
            conn.close()
    lingering = deaf[1]
    plan = StreamsPlan(url=haproxy.url, ws_clients=6, ws_rate=20, sse_clients=3, sse_interval_ms=100)

    def stop_app1() -> int:
        agent.send_signal(signal.SIGTERM)
        # `lingering` completes the close handshake but never closes its TCP connection;
        # `deaf_one` never even answers the close frame.
        assert lingering.recv(100).startswith(b"\x88")  # the close frame: 1012
        lingering.sendall(b"\x88\x82\0\0\0\0\x03\xf4")
        return agent.wait(timeout=20)

    streams, _, code = with_streams(haproxy.url, plan, stop_app1)
    assert code == 0
    log = procs.log("agent")
    [drain_ms] = drains(log)
    assert 2000 <= drain_ms < 2600, log
    # The agent says how many it left to be cut: both of them (HAProxy still holds both sessions)...
    assert re.search(r"event=drain.timeout .* sessions=2 ", log), log
    # ...and the service which of them it cut itself: the one that never answered its close.
    assert re.search(r"event=service.streams_cut instance=app1 websockets=1 ignored_close=1 sse=0", log), log
    # The well-behaved clients did not wait for them.
    assert_streams_whole(streams, sorted(tmp_path.glob("ledger-*.log")))
    for conn in deaf:
        conn.close()


def test_a_websocket_message_over_the_limit_is_a_1009_close_and_the_service_goes_on(
    procs: Processes, haproxy: HAProxy, tmp_path: Path,
) -> None:
    from service.streams import MAX_WS_MESSAGE_BYTES

    start_pool(procs, haproxy, tmp_path)
    for size, closed in ((MAX_WS_MESSAGE_BYTES - 64, False), (MAX_WS_MESSAGE_BYTES + 1, True)):
        conn = raw_websocket(haproxy.port, f"big{size}")
        payload = b'{"seq":1,"data":"' + b"x" * (size - 19) + b'"}'  # `size` bytes
        conn.sendall(bytes([0x81, 0x80 | 127]) + len(payload).to_bytes(8, "big") + b"\0\0\0\0" + payload)
        reply = conn.recv(4096)
        if closed:
            assert reply[:1] == b"\x88" and reply[2:4] == (1009).to_bytes(2, "big"), reply[:20]
        else:
            assert reply[:1] == b"\x81" and b'"seq":1' in reply, reply[:80]
        conn.close()
    assert wait_for(lambda: haproxy.server("app1").status == "UP", what="still UP")
