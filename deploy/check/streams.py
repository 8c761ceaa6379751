"""Long-lived clients for the load check: WebSocket and server-sent-event clients that ride
through a deploy, reconnect when an instance lets them go, and count every message.

WebSocket (`/ws?client=<id>`): each client sends `{"seq": n}` at a fixed rate and keeps every
message it has no echo for. When the server closes (1012, service restart) it reconnects at
once through HAProxy, resends those in order, and goes on. The server echoes on the same
connection before its close frame, so after a clean close every unechoed message was never
processed, and the resend is the only processing it gets. The checker proves it twice: each
seq echoed exactly once (client side), and each `ws:<client>:<seq>` exactly once in the
instances' ledgers (server side; `check_ws_ledgers`). A duplicate would show in both.

SSE (`/events`): each client reads the numbered stream; when it ends it waits the server's
`retry:` like an EventSource (0 after a release) and reconnects with Last-Event-ID; every event must be
the previous id + 1 (no gap, nothing twice) and carry the value the sequence defines.

Every close and the reconnect that followed is kept (`Reconnect`): the summary gives how many
and how fast, `timeline_events` marks them on the report's timeline (deploy/check/streams_report.py:
the ledgers' proof, the summary and the report).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from deploy.check.sse import SseProtocol

T = TypeVar("T")


def expected_value(n: int) -> str:
    """Event n's payload as the stream protocol fixes it (service/streams.py serves it; a unit
    test pins the two together): the same on every instance, so a stream can resume anywhere."""
    return hashlib.sha256(f"event {n}".encode()).hexdigest()[:16]

RECONNECT_BUDGET_S = 1.0  # the promise: every client is back within 1 s of its close
RETRY_PAUSE_S = 0.05  # between failed attempts (a refused connect, a 503)
# Codes a server sends to say "reconnect": 1012 service restart, 1001 going away.
RECONNECT_CODES = frozenset({1001, 1012})


@dataclass(frozen=True, kw_only=True)
class StreamsPlan:
    url: str  # the frontend, http://host:port (any path is ignored)
    ws_clients: int = 100
    ws_rate: float = 20.0  # messages per second, per WebSocket client
    sse_clients: int = 50
    sse_interval_ms: int = 100  # the event period asked of /events
    connect_timeout_s: float = 5.0
    settle_timeout_s: float = 10.0  # at the end: longest wait for the last echoes
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url {self.url!r}: expected http://host:port")
        if not 0 <= self.ws_clients <= 5000 or not 0 <= self.sse_clients <= 5000:
            raise ValueError("ws clients and sse clients: 0..5000 each")
        if not 0 < self.ws_rate <= 1000:
            raise ValueError(f"ws rate {self.ws_rate}: must be in (0, 1000] messages/s")
        if not 10 <= self.sse_interval_ms <= 10_000:
            raise ValueError(f"sse interval {self.sse_interval_ms}: must be 10..10000 ms")

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 80}"


@dataclass
class Reconnect:
    """One close (or end of stream), and the connection that replaced it."""

    kind: str  # ws, sse
    client: str
    closed_at: float  # time.time() the close frame / end of stream arrived
    open_at: float  # time.time() the next connection was open (101, or 200 with its headers)
    how: str  # '1012', 'end' (the stream ended), or what cut it ('reset', '1006'...)
    left: str  # the instance it was on
    attempts: int = 1  # connects it took (a refused one or a 503 adds one)
    reached: str = ""  # the instance it reached, once it said (first echo or event)

    @property
    def ms(self) -> float:
        return (self.open_at - self.closed_at) * 1000


@dataclass
class WsTally:
    client: str
    sent: int = 0  # seqs 1..sent were sent (at least once)
    resent: int = 0  # sends of a seq again, after a reconnect
    echoed: int = 0  # seqs echoed (first time)
    duplicates: int = 0  # echoes of a seq already echoed
    unknown: int = 0  # echoes of a seq never sent
    out_of_order: int = 0  # echoes on one connection not in send order
    unacked: int = 0  # at the end: sent, never echoed
    connections: int = 0


@dataclass
class SseTally:
    client: str
    events: int = 0  # received in order
    last_id: int = 0
    gaps: int = 0  # an id past last + 1: events skipped
    repeats: int = 0  # an id at or below the last: received twice, or out of order
    bad_values: int = 0  # data that is not the sequence's
    cut: int = 0  # streams that ended without their end (a reset, a truncated body)
    connections: int = 0


@dataclass
class StreamsResult:
    started: float = 0.0  # time.time()
    elapsed_s: float = 0.0
    ws: list[WsTally] = field(default_factory=list)
    sse: list[SseTally] = field(default_factory=list)
    reconnects: list[Reconnect] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # attempts that failed, by cause
    closes: Counter[str] = field(default_factory=Counter)  # how connections ended, by kind:how
    instances: Counter[str] = field(default_factory=Counter)  # answers per instance

    @property
    def ws_exactly_once(self) -> bool:
        """Every seq sent was echoed, once; nothing else was echoed."""
        return all(t.echoed == t.sent and not (t.duplicates or t.unknown or t.unacked) for t in self.ws)

    @property
    def sse_in_order(self) -> bool:
        return all(not (t.gaps or t.repeats or t.bad_values) for t in self.sse)

    def reconnect_ms(self, kind: str | None = None) -> list[float]:
        return [r.ms for r in self.reconnects if kind is None or r.kind == kind]

    @property
    def slow_reconnects(self) -> list[Reconnect]:
        return [r for r in self.reconnects if r.ms > RECONNECT_BUDGET_S * 1000]

    @property
    def ok(self) -> bool:
        return self.ws_exactly_once and self.sse_in_order and not self.slow_reconnects


# -- WebSocket --------------------------------------------------------------------------------


async def ws_client(plan: StreamsPlan, index: int, stop: asyncio.Event, result: StreamsResult) -> WsTally:
    tally = WsTally(client=f"{plan.run_id}-ws{index}")
    url = f"ws://{plan.origin}/ws?client={tally.client}"
    unacked: dict[int, str] = {}  # seq -> its message, in send order
    all_acked = asyncio.Event()
    all_acked.set()
    period = 1 / plan.ws_rate
    closed: tuple[float, str, str] | None = None  # when, how, on which instance
    give_up = None

    async def sender(ws: ClientConnection) -> None:
        next_at = time.monotonic() + random.random() * period
        while not stop.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            if stop.is_set():
                break
            tally.sent += 1
            message = json.dumps({"seq": tally.sent, "data": f"m{tally.sent}"})
            unacked[tally.sent] = message
            all_acked.clear()
            await ws.send(message)  # ConnectionClosed: it stays unacked, and is resent
        await all_acked.wait()  # the last echoes, then a normal close
        await ws.close()

    await asyncio.sleep(random.random() * 0.5)  # not all at once
    while not (stop.is_set() and not unacked):
        attempts = 0
        while True:
            attempts += 1
            try:
                ws = await connect(url, open_timeout=plan.connect_timeout_s, ping_interval=None,
                                   max_queue=None, compression=None)
                break
            except InvalidStatus as exc:
                result.failures[f"ws connect: http {exc.response.status_code}"] += 1
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                result.failures[f"ws connect: {type(exc).__name__}"] += 1
            give_up = give_up or time.monotonic() + plan.settle_timeout_s
            if stop.is_set() and time.monotonic() > give_up:
                tally.unacked = len(unacked)
                return tally
            await asyncio.sleep(RETRY_PAUSE_S)
        give_up = None
        tally.connections += 1
        opened = time.time()
        reconnect = None
        if closed is not None:
            reconnect = Reconnect("ws", tally.client, closed[0], opened, closed[1], closed[2], attempts)
            result.reconnects.append(reconnect)
        instance = ""
        last_seq = 0
        task = None
        try:
            for message in list(unacked.values()):  # what has no echo: never processed
                tally.resent += 1
                await ws.send(message)
            task = asyncio.create_task(sender(ws))
            async for raw in ws:
                echo = json.loads(raw)
                seq = echo.get("seq")
                instance = str(echo.get("instance", "?"))
                if reconnect is not None and not reconnect.reached:
                    reconnect.reached = instance
                result.instances[instance] += 1
                if not isinstance(seq, int) or seq < 1 or seq > tally.sent:
                    tally.unknown += 1
                    continue
                if seq <= last_seq:
                    tally.out_of_order += 1
                last_seq = max(last_seq, seq)
                if unacked.pop(seq, None) is None:
                    tally.duplicates += 1
                    continue
                tally.echoed += 1
                if not unacked:
                    all_acked.set()
        except ConnectionClosed:
            pass
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task
        received = ws.protocol.close_rcvd  # None: no close frame came, the connection was cut
        how = str(received.code) if received is not None else "cut"
        result.closes[f"ws:{how}"] += 1
        closed = (time.time(), how, instance)
        if received is None or received.code not in RECONNECT_CODES:
            if not stop.is_set():
                result.failures[f"ws closed: {how}"] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
    return tally


# -- server-sent events ------------------------------------------------------------------------


async def sse_client(plan: StreamsPlan, index: int, stop: asyncio.Event, result: StreamsResult) -> SseTally:
    tally = SseTally(client=f"{plan.run_id}-sse{index}")
    host, _, port = plan.origin.rpartition(":")
    loop = asyncio.get_running_loop()
    closed: tuple[float, str, str] | None = None
    await asyncio.sleep(random.random() * 0.5)
    while not stop.is_set():
        attempts = 0
        protocol: SseProtocol | None = None
        while not stop.is_set():
            attempts += 1
            resume = f"last-event-id: {tally.last_id}\r\n" if tally.last_id else ""
            request = (f"GET /events?interval_ms={plan.sse_interval_ms} HTTP/1.1\r\nhost: {plan.origin}\r\n"
                       f"accept: text/event-stream\r\n{resume}connection: close\r\n\r\n").encode()
            try:
                async with asyncio.timeout(plan.connect_timeout_s):
                    _, protocol = await loop.create_connection(
                        functools.partial(SseProtocol, request), host, int(port))
                    status = await protocol.headers
                if status == 200:
                    break
                result.failures[f"sse connect: http {status}"] += 1
            except (OSError, TimeoutError) as exc:
                result.failures[f"sse connect: {type(exc).__name__}"] += 1
            if protocol is not None:
                protocol.close()
                protocol = None
            await asyncio.sleep(RETRY_PAUSE_S)
        if protocol is None:
            break
        tally.connections += 1
        reconnect = None
        if closed is not None:
            reconnect = Reconnect("sse", tally.client, closed[0], time.time(), closed[1], closed[2], attempts)
            result.reconnects.append(reconnect)
        instance = ""
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            while True:
                getting: asyncio.Future[Any] = asyncio.ensure_future(protocol.events.get())
                ending: asyncio.Future[Any] = protocol.done
                await asyncio.wait({getting, ending, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    if protocol.events.empty():
                        break
                    continue
                event = getting.result()
                if event.id is None or not event.id.isdigit():
                    continue
                n = int(event.id)
                try:
                    data = json.loads(event.data)
                except ValueError:
                    data = {}
                instance = str(data.get("instance", "?"))
                if reconnect is not None and not reconnect.reached:
                    reconnect.reached = instance
                result.instances[instance] += 1
                if data.get("n") != n or data.get("value") != expected_value(n):
                    tally.bad_values += 1
                if n <= tally.last_id:
                    tally.repeats += 1
                    continue
                if n > tally.last_id + 1:
                    tally.gaps += 1
                tally.last_id = n
                tally.events += 1
        finally:
            stopping.cancel()
            protocol.close()
        if stop.is_set():
            break
        how = protocol.done.result()
        result.closes[f"sse:{how}"] += 1
        if how != "end":
            tally.cut += 1
            result.failures[f"sse stream: {how}"] += 1
        closed = (time.time(), how, instance)
        retry_ms = protocol.decoder.retry_ms  # as an EventSource does: wait what the stream said
        await asyncio.sleep(RETRY_PAUSE_S if retry_ms is None else retry_ms / 1000)
    return tally


# -- running them ------------------------------------------------------------------------------


async def run_streams(plan: StreamsPlan, stop: asyncio.Event) -> StreamsResult:
    """Every client, until `stop` is set; then the WebSocket clients wait for their last echoes."""
    result = StreamsResult(started=time.time())
    began = time.monotonic()
    ws = [asyncio.create_task(ws_client(plan, i, stop, result)) for i in range(plan.ws_clients)]
    sse = [asyncio.create_task(sse_client(plan, i, stop, result)) for i in range(plan.sse_clients)]
    result.ws = list(await asyncio.gather(*ws))
    result.sse = list(await asyncio.gather(*sse))
    result.elapsed_s = time.monotonic() - began
    return result


async def alongside(plan: StreamsPlan, work: Awaitable[T], warm_up_s: float = 1.0) -> tuple[T, StreamsResult]:
    """The stream clients connected first, then `work` (say, run_load with a restart), then
    they stop: `rollout check --ws-clients ... --sse-clients ...`."""
    stop = asyncio.Event()
    streams = asyncio.create_task(run_streams(plan, stop))
    try:
        await asyncio.sleep(warm_up_s)
        outcome = await work
    finally:
        stop.set()
    return outcome, await streams
