"""The long-lived connection protocol, piece by piece: the service's /ws and /events (a real
uvicorn in this process, released by a direct call or by SIGUSR1), and the checker's parts
(SSE decoding, the ledgers, the reconnect bursts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from deploy.check.sse import SseDecoder
from deploy.check.streams import Reconnect, StreamsPlan, StreamsResult, WsTally, expected_value
from deploy.check.streams_report import bursts, check_ws_ledgers, summary, timeline_events
from service.config import ServiceConfig
from service.server import DrainingServer, build_server
from service.streams import event_value, format_event, parse_last_event_id, parse_message

# -- pure pieces -----------------------------------------------------------------------------


def test_events_are_one_deterministic_sequence_any_instance_can_continue() -> None:
    assert event_value(7) == event_value(7) != event_value(8)
    # the checker's expectation is its own (deploy/ imports no service/ code), and the same
    assert [expected_value(n) for n in range(100)] == [event_value(n) for n in range(100)]
    text = format_event(42, {"instance": "app2", "version": "v1"})
    decoder = SseDecoder()
    [event] = decoder.feed(text.encode())
    assert (event.id, event.event) == ("42", "tick")
    assert json.loads(event.data) == {"n": 42, "value": event_value(42), "instance": "app2", "version": "v1"}


def test_sse_decoder_handles_split_chunks_crlf_comments_and_retry() -> None:
    decoder = SseDecoder()
    stream = b"retry: 1000\r\n\r\n: a comment\r\nid: 1\r\nevent: tick\r\ndata: a\r\ndata: b\r\n\r\nid: 2\ndata: c\n\nretry: 0\n\n"
    events = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert [(e.id, e.event, e.data) for e in events] == [("1", "tick", "a\nb"), ("2", "message", "c")]
    assert decoder.retry_ms == 0  # the last `retry:` (a released stream's) is the reconnection time


@pytest.mark.parametrize(("raw", "after"), [(None, 0), ("", 0), ("41", 41), (" 7 ", 7), ("-1", None),
                                            ("x", None), ("1" * 16, None), ("²", None)])
def test_last_event_id(raw: str | None, after: int | None) -> None:
    assert parse_last_event_id(raw) == after


@pytest.mark.parametrize(("text", "parsed"), [
    ('{"seq": 3, "data": "x"}', (3, "x")), ('{"seq": 0}', (0, None)), ('{"seq": "3"}', None),
    ('{"seq": true}', None), ('{"seq": -1}', None), ("[1]", None), ("not json", None), ("[" * 100_000, None),
])
def test_client_messages(text: str, parsed: tuple[int, object] | None) -> None:
    assert parse_message(text) == parsed


def tallies(run: str, *sent: int) -> StreamsResult:
    return StreamsResult(ws=[WsTally(client=f"{run}-ws{i}", sent=n, echoed=n) for i, n in enumerate(sent)])


def test_ws_ledgers_prove_each_message_processed_once(tmp_path: Path) -> None:
    result = tallies("r1", 3, 2)
    (tmp_path / "app1.log").write_text("ws:r1-ws0:1\nws:r1-ws0:2\nabc123\nws:r0-ws0:1\nws:r1-ws1:1\n")
    (tmp_path / "app2.log").write_text("ws:r1-ws0:3\nws:r1-ws1:2\n")
    check = check_ws_ledgers(result, sorted(tmp_path.glob("*.log")))
    assert (check.sent, check.processed_once, check.ok) == (5, 5, True)  # POST ids, other runs: ignored

    (tmp_path / "app3.log").write_text("ws:r1-ws0:3\nws:r1-ws1:9\n")  # processed twice; never sent
    (tmp_path / "app2.log").write_text("ws:r1-ws0:3\n")  # r1-ws1:2 echoed, but recorded nowhere
    check = check_ws_ledgers(result, sorted(tmp_path.glob("*.log")))
    assert (check.duplicated, check.unexpected, check.missing, check.ok) == (1, 1, 1, False)


def test_reconnects_group_into_one_burst_per_instance_left() -> None:
    def r(kind: str, at: float, left: str, ms: float) -> Reconnect:
        return Reconnect(kind, f"c{at}", at, at + ms / 1000, "1012" if kind == "ws" else "end", left, reached="app9")

    result = StreamsResult(reconnects=[r("ws", 100.0, "app1", 20), r("ws", 100.3, "app1", 80), r("sse", 100.1, "app1", 120),
                                       r("ws", 105.0, "app2", 30), r("ws", 109.0, "app1", 10)])
    groups = bursts(result)
    assert [(g[0].kind, g[0].left, len(g)) for g in groups] == [
        ("ws", "app1", 2), ("sse", "app1", 1), ("ws", "app2", 1), ("ws", "app1", 1)]
    marks = timeline_events(result)
    assert [(m.instance, m.name, m.detail) for m in marks][:2] == [
        ("app1", "ws-reconnect", "2 clients, max 80 ms"), ("app1", "sse-reconnect", "1 clients, max 120 ms")]
    assert not result.slow_reconnects
    result.reconnects.append(r("sse", 110.0, "app3", 1500))
    assert len(result.slow_reconnects) == 1 and not result.ok
    assert "1 reconnects over 1 s" in summary(result)


def test_a_plan_is_checked() -> None:
    with pytest.raises(ValueError, match="expected http"):
        StreamsPlan(url="ws://x:1")
    with pytest.raises(ValueError, match="ws rate"):
        StreamsPlan(url="http://x:1", ws_rate=0)
    assert StreamsPlan(url="http://127.0.0.1:8785/cms").origin == "127.0.0.1:8785"


# -- the service, in this process ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Service = tuple[DrainingServer, str, Path]


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[Service]:
    """The reference service on a free port, in this event loop; stopped at the end."""
    ledger = tmp_path / "ledger.log"
    config = ServiceConfig(instance="app7", port=free_port(), post_ledger=str(ledger), shutdown_timeout_s=2)
    server = build_server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield server, f"127.0.0.1:{config.port}", ledger
    finally:
        server.should_exit = server.force_exit = True
        await asyncio.wait_for(task, 10)


def run(tmp_path: Path, scenario: Callable[[Service], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving(tmp_path) as service:
            await scenario(service)

    asyncio.run(main())


def ledger_lines(ledger: Path) -> list[str]:
    return ledger.read_text().split()


def test_ws_echoes_seq_and_instance_and_records_it(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        server, address, ledger = service
        async with connect(f"ws://{address}/ws?client=c1") as ws:
            for seq in (1, 2, 5):
                await ws.send(json.dumps({"seq": seq, "data": f"d{seq}"}))
                assert json.loads(await ws.recv()) == {"seq": seq, "instance": "app7", "version": "v1", "data": f"d{seq}"}
            await ws.send("no seq")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        assert ledger_lines(ledger) == ["ws:c1:1", "ws:c1:2", "ws:c1:5"]
        assert server.state.streams.websockets == 0

    run(tmp_path, scenario)


def test_release_closes_every_socket_with_1012_and_echoes_exactly_what_it_processed(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        """Messages race the release: whatever the timing, a message is echoed if and only if it
        was processed (recorded), and every socket ends with 1012 after its echoes."""
        server, address, ledger = service
        sockets = [await connect(f"ws://{address}/ws?client=r{i}") for i in range(20)]
        for i, ws in enumerate(sockets):
            for seq in range(1, 4 + i % 3):
                await ws.send(json.dumps({"seq": seq}))
        await asyncio.sleep(0.001 * 5)
        assert server.state.streams.release("test")
        echoed: set[str] = set()
        for i, ws in enumerate(sockets):
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    echoed.add(f"ws:r{i}:{json.loads(await ws.recv())['seq']}")
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        await asyncio.sleep(0.05)
        assert set(ledger_lines(ledger)) == echoed and len(ledger_lines(ledger)) == len(echoed)
        assert server.state.streams.closed == 20 and server.state.streams.websockets == 0
        # A released instance takes no new long-lived connection (HAProxy retries a 503 elsewhere)...
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://{address}/ws?client=late")
        assert refused.value.response.status_code == 503
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            assert (await client.get("/events")).status_code == 503
            # ...and still serves everything else.
            assert (await client.get("/cms")).status_code == 200

    run(tmp_path, scenario)


def test_event_stream_resumes_after_last_event_id_and_ends_cleanly_on_release(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        server, address, _ = service
        decoder = SseDecoder()
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            async with client.stream("GET", "/events?interval_ms=20", headers={"last-event-id": "41"}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                ids: list[int] = []
                async for chunk in response.aiter_bytes():  # ends only when the response does
                    for event in decoder.feed(chunk):
                        ids.append(int(event.id or 0))
                        assert json.loads(event.data)["value"] == event_value(ids[-1])
                        if len(ids) == 3:
                            assert server.state.streams.sse == 1
                            server.state.streams.release("test")
            assert ids[:3] == [42, 43, 44] and ids == list(range(42, 42 + len(ids)))
            assert decoder.retry_ms == 0  # reconnect at once
            assert server.state.streams.sse == 0 and server.state.streams.ended == 1
            assert (await client.get("/events", headers={"last-event-id": "x"})).status_code == 503  # released
            server.state.streams.released.clear()  # (only to see the bad requests below; the
            server.state.streams.released_at = None  # loop would release again on a request left)
            server.state.streams.release_requested = ""
            assert (await client.get("/events", headers={"last-event-id": "x"})).status_code == 400
            assert (await client.get("/events?interval_ms=1")).status_code == 400
            for bad in ("%C2%B2", "9" * 5000, "%D9%A3%D9%A3"):
                assert (await client.get(f"/events?interval_ms={bad}")).status_code == 400, bad

    run(tmp_path, scenario)


def test_sigusr1_is_the_release_and_does_not_stop_the_service(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        server, address, _ = service
        async with connect(f"ws://{address}/ws") as ws:
            began = time.monotonic()
            os.kill(os.getpid(), signal.SIGUSR1)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            assert time.monotonic() - began < 0.5  # woken at once, not at the next tick
        assert server.state.streams.release_requested == "SIGUSR1"
        assert not server.should_exit and not server.state.draining
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            assert (await client.get("/readyz")).status_code in (200, 503)  # still serving
            assert (await client.get("/cms")).status_code == 200

    run(tmp_path, scenario)


def test_websockets_is_installed_for_uvicorn() -> None:
    assert websockets.__version__
