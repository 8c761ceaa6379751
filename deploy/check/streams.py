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
and how fast, `timeline_events` marks them on the report's timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httptools
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from deploy.check.loadcheck import percentile
from deploy.model import Event
from service.streams import event_value

T = TypeVar("T")
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


@dataclass
class SseEvent:
    id: str | None  # the last event id, as an EventSource keeps it
    event: str
    data: str


class SseDecoder:
    """The text/event-stream format (WHATWG HTML, "Server-sent events"): fields up to a blank line.
    `retry_ms` is the stream's reconnection time, as its last `retry:` field set it."""

    def __init__(self) -> None:
        self.buffer = b""
        self.id: str | None = None
        self.event = ""
        self.data: list[str] = []
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self.buffer += chunk
        events: list[SseEvent] = []
        while True:
            cut = min((i for i in (self.buffer.find(b"\n"), self.buffer.find(b"\r")) if i >= 0), default=-1)
            if cut < 0 or (self.buffer[cut:cut + 1] == b"\r" and cut + 1 == len(self.buffer)):
                return events  # no line end yet, or a \r whose \n may be in the next chunk
            line = self.buffer[:cut].decode(errors="replace")
            end = cut + (2 if self.buffer[cut : cut + 2] == b"\r\n" else 1)
            self.buffer = self.buffer[end:]
            if not line:
                if self.data:
                    events.append(SseEvent(self.id, self.event or "message", "\n".join(self.data)))
                self.event, self.data = "", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self.data.append(value)
            elif name == "event":
                self.event = value
            elif name == "id" and "\0" not in value:
                self.id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)


class _SseProtocol(asyncio.Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.parser = httptools.HttpResponseParser(self)
        self.decoder = SseDecoder()
        self.headers: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.events: asyncio.Queue[SseEvent] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.finish(f"bad response ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish("reset" if isinstance(exc, ConnectionResetError) else "cut")

    def on_headers_complete(self) -> None:
        if not self.headers.done():
            self.headers.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.headers.done() and self.headers.result() == 200:
            for event in self.decoder.feed(body):
                self.events.put_nowait(event)

    def on_message_complete(self) -> None:
        self.finish("end")

    def finish(self, how: str) -> None:
        if not self.headers.done():
            self.headers.set_exception(ConnectionError(how))
        if not self.done.done():
            self.done.set_result(how)
        if self.transport is not None and how != "end":
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def sse_client(plan: StreamsPlan, index: int, stop: asyncio.Event, result: StreamsResult) -> SseTally:
    tally = SseTally(client=f"{plan.run_id}-sse{index}")
    host, _, port = plan.origin.rpartition(":")
    loop = asyncio.get_running_loop()
    closed: tuple[float, str, str] | None = None
    await asyncio.sleep(random.random() * 0.5)
    while not stop.is_set():
        attempts = 0
        protocol: _SseProtocol | None = None
        while not stop.is_set():
            attempts += 1
            resume = f"last-event-id: {tally.last_id}\r\n" if tally.last_id else ""
            request = (f"GET /events?interval_ms={plan.sse_interval_ms} HTTP/1.1\r\nhost: {plan.origin}\r\n"
                       f"accept: text/event-stream\r\n{resume}connection: close\r\n\r\n").encode()
            try:
                async with asyncio.timeout(plan.connect_timeout_s):
                    _, protocol = await loop.create_connection(
                        functools.partial(_SseProtocol, request), host, int(port))
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
                if data.get("n") != n or data.get("value") != event_value(n):
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


# -- proving it from the ledgers ----------------------------------------------------------------


@dataclass
class WsLedgerCheck:
    """WebSocket messages sent vs. processed, from the instances' ledgers (`ws:<client>:<seq>`)."""

    sent: int
    processed_once: int
    missing: int  # sent (and echoed), yet no instance recorded it
    duplicated: int  # recorded more than once: processed twice
    unexpected: int  # recorded, never sent

    @property
    def ok(self) -> bool:
        return self.processed_once == self.sent and not (self.missing or self.duplicated or self.unexpected)


def check_ws_ledgers(result: StreamsResult, ledgers: list[Path]) -> WsLedgerCheck:
    sent = {tally.client: tally.sent for tally in result.ws}
    prefix = f"ws:{result.ws[0].client.rsplit('-', 1)[0]}-" if result.ws else None
    seen: Counter[tuple[str, int]] = Counter()
    for path in ledgers:
        with path.open() as lines:
            for line in lines:
                if prefix is None or not line.startswith(prefix):
                    continue
                _, client, seq = line.strip().split(":")
                seen[(client, int(seq))] += 1
    expected = {(client, seq) for client, count in sent.items() for seq in range(1, count + 1)}
    return WsLedgerCheck(
        sent=len(expected),
        processed_once=sum(1 for key in expected if seen[key] == 1),
        missing=sum(1 for key in expected if seen[key] == 0),
        duplicated=sum(1 for key in seen if seen[key] > 1),
        unexpected=sum(1 for key in seen if key not in expected),
    )


# -- reporting ----------------------------------------------------------------------------------


def latency_text(values: list[float]) -> str:
    if not values:
        return "none"
    return (f"{len(values)}, p50 {percentile(values, 50):.0f} ms, p99 {percentile(values, 99):.0f} ms, "
            f"max {max(values):.0f} ms")


def summary(result: StreamsResult, ledger: WsLedgerCheck | None = None) -> str:
    lines = []
    if result.ws:
        sent = sum(t.sent for t in result.ws)
        verdict = "each echoed exactly once" if result.ws_exactly_once else (
            f"NOT exactly once: {sum(t.sent - t.echoed for t in result.ws)} without echo, "
            f"{sum(t.duplicates for t in result.ws)} echoed twice, "
            f"{sum(t.unknown for t in result.ws)} unknown")
        lines.append(f"websocket  {len(result.ws)} clients, {sent} messages, {verdict}; "
                     f"{sum(t.resent for t in result.ws)} resent after a reconnect")
        if ledger is not None:
            lines.append("           ledgers: " + ("each processed exactly once" if ledger.ok else (
                f"NOT exactly once: {ledger.missing} missing, {ledger.duplicated} processed twice, "
                f"{ledger.unexpected} unexpected")))
        lines.append(f"           reconnects {latency_text(result.reconnect_ms('ws'))}")
    if result.sse:
        events = sum(t.events for t in result.sse)
        verdict = "in order, no gap" if result.sse_in_order else (
            f"{sum(t.gaps for t in result.sse)} gaps, {sum(t.repeats for t in result.sse)} repeats, "
            f"{sum(t.bad_values for t in result.sse)} bad values")
        lines.append(f"sse        {len(result.sse)} clients, {events} events, {verdict}")
        lines.append(f"           reconnects {latency_text(result.reconnect_ms('sse'))}")
    if result.slow_reconnects:
        lines.append(f"           {len(result.slow_reconnects)} reconnects over {RECONNECT_BUDGET_S:g} s")
    if result.failures:
        lines.append("           attempts failed: " + ", ".join(
            f"{cause} {n}" for cause, n in result.failures.most_common()))
    return "\n".join(lines)


def bursts(result: StreamsResult, window_s: float = 2.0) -> list[list[Reconnect]]:
    """Reconnects grouped by kind and the instance left, a burst being closes within `window_s`:
    one per instance restarted, in a rolling restart."""
    groups: list[list[Reconnect]] = []
    for reconnect in sorted(result.reconnects, key=lambda r: r.closed_at):
        for group in groups:
            first = group[0]
            if ((first.kind, first.left) == (reconnect.kind, reconnect.left)
                    and reconnect.closed_at - first.closed_at <= window_s):
                group.append(reconnect)
                break
        else:
            groups.append([reconnect])
    return groups


def timeline_events(result: StreamsResult) -> list[Event]:
    """One mark per burst, for the report's timeline (`write_report(instance_events=...)`)."""
    return [
        Event(group[0].closed_at, group[0].left or "?", f"{group[0].kind}-reconnect",
              f"{len(group)} clients, max {max(r.ms for r in group):.0f} ms")
        for group in bursts(result)
    ]


def reconnect_stats(values: list[float]) -> dict[str, float]:
    return {"count": len(values), "p50": round(percentile(values, 50), 1),
            "p99": round(percentile(values, 99), 1), "max": round(max(values, default=0), 1)}


def report_data(result: StreamsResult, ledger: WsLedgerCheck | None, since: float) -> dict[str, Any]:
    return {
        "ws_clients": len(result.ws),
        "sse_clients": len(result.sse),
        "ws_messages": sum(t.sent for t in result.ws),
        "ws_exactly_once": result.ws_exactly_once,
        "ws_resent": sum(t.resent for t in result.ws),
        "ws_ledger": asdict(ledger) if ledger else None,
        "sse_events": sum(t.events for t in result.sse),
        "sse_in_order": result.sse_in_order,
        "failures": dict(result.failures),
        "closes": dict(result.closes),
        "reconnect_ms": {kind: reconnect_stats(result.reconnect_ms(kind)) for kind in ("ws", "sse")},
        "bursts": [{"t": round(g[0].closed_at - since, 3), "kind": g[0].kind, "left": g[0].left,
                    "clients": len(g), "max_ms": round(max(r.ms for r in g), 1),
                    "reached": dict(Counter(r.reached for r in g))} for g in bursts(result)],
    }


def append_to_report(directory: Path, result: StreamsResult, ledger: WsLedgerCheck | None,
                     since: float) -> None:
    """Add the streams to report.json and report.md that `write_report` wrote in `directory`."""
    data = report_data(result, ledger, since)
    path = directory / "report.json"
    report = json.loads(path.read_text())
    report["streams"] = data
    path.write_text(json.dumps(report, indent=1) + "\n")
    lines = ["", "## Long-lived connections", "", "```", summary(result, ledger), "```", ""]
    if data["bursts"]:
        lines += ["| t (s) | kind | left | clients | reached | max reconnect ms |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {b['t']} | {b['kind']} | {b['left']} | {b['clients']} | "
                  + ", ".join(f"{k}: {n}" for k, n in sorted(b["reached"].items())) + f" | {b['max_ms']} |"
                  for b in data["bursts"]]
        lines.append("")
    with (directory / "report.md").open("a") as md:
        md.write("\n".join(lines))
