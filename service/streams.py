"""Long-lived connections: a WebSocket echo (/ws) and server-sent events (/events), and how
they leave an instance that is being drained.

A drain that waits for zero sessions never ends while such a connection is open. So, once
its server is out of rotation in every HAProxy, drain-agent tells the app (`--drain-notify
SIGUSR1`; the app's own SIGTERM does the same as a fallback) and the app *releases* them:

    /ws      each socket finishes the message in flight (processed and echoed), then is
             closed with 1012 (service restart); the client reconnects through HAProxy to
             another instance and resends what it has no echo for.
    /events  each stream stops and ends its response cleanly, after `retry: 0`; the client
             reconnects at once with Last-Event-ID and another instance continues the sequence.

Exactly-once, honestly: the server echoes `seq` on the same connection, before its close
frame, so at a clean 1012 close every message it processed has had its echo sent, and
every message without an echo was never processed (arrived after the close, and was
dropped unread). Resending those is safe. Each processed message is also written to the
instance's ledger (`ws:<client>:<seq>`, beside the POST ids), so a checker can prove it
across instances. Only a cut connection (a crash, or a client that ignores the close
until the drain timeout) can lose an echo of a processed message; a resend then shows up
as a duplicate in the ledger, never silently.

SSE events are a deterministic numbered sequence: event n carries `event_value(n)`, so
any instance can continue a stream from the client's Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from service.refusal import refusal_status

try:  # uvicorn's WebSocket support needs the `websockets` package (a dependency)
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    HAVE_WEBSOCKETS = True
except ImportError:  # pragma: no cover - /ws is then off; /events still works
    WebSocketsSansIOProtocol = object  # type: ignore[assignment,misc]
    HAVE_WEBSOCKETS = False

log = logging.getLogger("service")

WS_SERVICE_RESTART = 1012  # RFC 6455 close code: "service restart", reconnect
WS_BAD_DATA = 1007  # a message that is not {"seq": <int>, ...}
# SSE `retry:`, how soon an EventSource reconnects once a stream ends: after a crash, not at
# once (1 s); after a release, at once (0, sent just before the end).
EVENT_RETRY_MS = 1000
RELEASED_RETRY_MS = 0
EVENT_INTERVAL_MS = 1000  # /events default
MIN_INTERVAL_MS, MAX_INTERVAL_MS = 10, 10_000  # < HAProxy's timeout client/server: never idle
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_SEQ = 2**53  # JSON-safe
# The largest WebSocket message the service reads (uvicorn's default is 16 MiB, each parsed on
# the event loop): a larger one closes the connection with 1009 (message too big).
MAX_WS_MESSAGE_BYTES = 64 * 1024
# After a release, how long the service's own SIGTERM drain waits for the clients' close
# replies before its shutdown cuts the sockets left. The agent's --drain-timeout is the bound
# in a deploy: a socket still open then was sent its close long before, and is cut at once.
WS_CLOSE_GRACE_S = 1.0
# How long uvicorn waits for a client's reply to our close frame (its own default: 10 s). Longer
# than any drain timeout (70 s), so that drain-agent's --drain-timeout, not uvicorn, decides
# when a client that ignores the close is cut, and the cut is counted and logged.
WS_CLOSE_WAIT_S = 120.0


def event_value(n: int) -> str:
    """Event n's payload: the same on every instance, so a stream can resume anywhere."""
    return hashlib.sha256(f"event {n}".encode()).hexdigest()[:16]


def format_event(n: int, identity: dict[str, str]) -> str:
    data = json.dumps({"n": n, "value": event_value(n), **identity}, separators=(",", ":"))
    return f"id: {n}\nevent: tick\ndata: {data}\n\n"


ASCII_DIGITS = re.compile(r"[0-9]{1,15}")


def whole_number(raw: str, high: int) -> int | None:
    """A request's number: ASCII digits only (`str.isdigit` also takes '²', which `int` refuses),
    at most `high`; None otherwise, for a 400, never a 500."""
    if not ASCII_DIGITS.fullmatch(raw):
        return None
    value = int(raw)
    return value if value <= high else None


def parse_last_event_id(raw: str | None) -> int | None:
    """The id to continue after (0: from the start); None if it is not an event id of ours."""
    if raw is None or raw == "":
        return 0
    return whole_number(raw.strip(), 10**15 - 1)


def parse_message(text: str) -> tuple[int, object] | None:
    """A client message {"seq": n, "data": ...} -> (n, data); None when malformed."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    seq = message.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < MAX_SEQ:
        return None
    return seq, message.get("data")


class Streams:
    """This instance's open long-lived connections, and their one-time release."""

    def __init__(self, instance: str = "app") -> None:
        self.instance = instance
        self.websockets = 0  # /ws handlers running (accepted, not yet closed by us or the client)
        self.sse = 0  # /events responses streaming
        self.sockets: set[ReleasingWebSocketProtocol] = set()  # every WebSocket TCP connection open
        self.released = asyncio.Event()
        self.release_requested = ""  # why, once asked (possibly from a signal handler)
        self.released_at: float | None = None
        self.closed = 0  # sockets closed with 1012 by the release
        self.ended = 0  # event streams ended by the release
        self._settled_logged = False

    @property
    def open(self) -> int:
        return self.websockets + self.sse

    def request_release(self, reason: str) -> None:
        """Signal-handler safe: only notes it; `release` (in the loop) acts."""
        if not self.release_requested:
            self.release_requested = reason

    def release(self, reason: str | None = None) -> bool:
        """Close every socket after its message in flight, end every stream; refuse new ones."""
        if self.released.is_set():
            return False
        self.request_release(reason or "asked")
        self.released_at = time.monotonic()
        self.released.set()
        log.info("event=service.release instance=%s reason=%s websockets=%d sse=%d",
                 self.instance, self.release_requested, self.websockets, self.sse)
        self._maybe_settled()
        return True

    def enter(self, kind: str) -> None:
        if kind == "ws":
            self.websockets += 1
        else:
            self.sse += 1

    def leave(self, kind: str, *, released: bool) -> None:
        if kind == "ws":
            self.websockets -= 1
            self.closed += released
        else:
            self.sse -= 1
            self.ended += released
        self._maybe_settled()

    def _maybe_settled(self) -> None:
        if self.released_at is None or self.open or self._settled_logged:
            return
        self._settled_logged = True
        log.info("event=service.released instance=%s websockets_closed=%d sse_ended=%d elapsed_ms=%d",
                 self.instance, self.closed, self.ended, (time.monotonic() - self.released_at) * 1000)

    def sockets_settled(self) -> bool:
        """May the service's own drain end, as far as WebSockets go? Yes once none is open, or
        WS_CLOSE_GRACE_S after the release (what is still open then is cut, and counted)."""
        if not self.sockets:
            return True
        return self.released_at is not None and time.monotonic() - self.released_at >= WS_CLOSE_GRACE_S

    def log_cut(self) -> None:
        """At shutdown: count what is cut rather than closed cleanly (the close ignored, or no
        release at all), so a deploy's log says how many long-lived connections were cut."""
        ignored = sum(1 for s in self.sockets if s.close_sent and not s.disconnected)
        unreleased = sum(1 for s in self.sockets if s.handshake_complete and not s.close_sent
                         and not s.disconnected)
        if ignored or unreleased or self.sse:
            log.warning(
                "event=service.streams_cut instance=%s websockets=%d ignored_close=%d sse=%d",
                self.instance, ignored + unreleased, ignored, self.sse,
            )


class ReleasingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (websockets, sans-I/O), tracked in `Streams.sockets`, and
    waiting WS_CLOSE_WAIT_S (not 10 s) for the client's reply to our close frame."""

    streams: Streams  # set on the subclass `protocol_for` makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = WS_CLOSE_WAIT_S

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.streams.sockets.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.streams.sockets.discard(self)
        super().connection_lost(exc)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            # A denial response (503) is a complete answer: without this uvicorn logs "ASGI
            # callable returned without completing handshake" for each refused reconnect.
            self.handshake_complete = True


class QuietWebSocketLines(logging.Filter):
    """Without the access log, uvicorn's per-connection WebSocket lines go too: each deploy
    reconnects every client, which would be two lines per client per instance restarted."""

    NOISE = ('"WebSocket ', "connection open", "connection closed", "connection rejected")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(noise in message for noise in self.NOISE)


def protocol_for(streams: Streams) -> type[ReleasingWebSocketProtocol] | None:
    """uvicorn's `ws=`: the protocol class bound to this instance's streams (None: no websockets)."""
    if not HAVE_WEBSOCKETS:  # pragma: no cover
        log.warning("event=service.no_websockets hint=\"pip install websockets: /ws is off\"")
        return None
    return type("ReleasingWebSocketProtocol", (ReleasingWebSocketProtocol,), {"streams": streams})


def unavailable(headers: Iterable[tuple[bytes, bytes]]) -> Response:
    """A released instance takes no new long-lived connection: refused before any work, as the
    drain refuses plain requests (425 where HAProxy asked, which it re-sends elsewhere)."""
    return JSONResponse(
        {"error": "draining", "detail": "this instance is shutting down; reconnect"},
        status_code=refusal_status(headers), headers={"retry-after": "1", "connection": "close"},
    )


def stream_routes(
    identity: dict[str, str], streams: Streams, draining: Callable[[], bool],
    record: Callable[[str], None] | None,
) -> list[BaseRoute]:
    """/ws and /events. `record(line)` writes a processed message to the ledger (tests)."""

    async def websocket_echo(ws: WebSocket) -> None:
        if streams.released.is_set() or draining():
            await deny(ws, unavailable(ws.scope["headers"]))
            return
        client = ws.query_params.get("client", "")
        if client and not CLIENT_ID.fullmatch(client):
            await deny(ws, JSONResponse({"error": "client: 1-128 of A-Z a-z 0-9 . _ : -"}, 400))
            return
        await ws.accept()
        streams.enter("ws")
        released = asyncio.ensure_future(streams.released.wait())
        closed_by_release = False
        try:
            while True:
                receiving = asyncio.ensure_future(ws.receive())
                await asyncio.wait({receiving, released}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    # Nothing in flight: close now. The message that may be on its way was never
                    # read, so never processed: the client resends it elsewhere.
                    receiving.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await receiving
                    # It may have arrived after all: then it is the message in flight.
                    if not receiving.cancelled() and not await echo(ws, receiving.result(), client):
                        return
                    closed_by_release = True
                    await ws.close(WS_SERVICE_RESTART, "service restart")
                    return
                if not await echo(ws, receiving.result(), client):
                    return
                if released.done():  # the message in flight is answered: now close
                    closed_by_release = True
                    await ws.close(WS_SERVICE_RESTART, "service restart")
                    return
        except WebSocketDisconnect:
            return
        finally:
            released.cancel()
            streams.leave("ws", released=closed_by_release)

    async def echo(ws: WebSocket, message: Any, client: str) -> bool:
        """Process one ASGI message: echo it (and record it). False once the socket is done."""
        if message["type"] == "websocket.disconnect":
            return False
        text = message.get("text")
        if text is None and message.get("bytes") is not None:
            text = message["bytes"].decode(errors="replace")
        parsed = parse_message(text or "")
        if parsed is None:
            await ws.close(WS_BAD_DATA, 'expected {"seq": <int>, "data": ...}')
            return False
        seq, data = parsed
        if record is not None and client:
            record(f"ws:{client}:{seq}")
        await ws.send_text(json.dumps({"seq": seq, **identity, "data": data}, separators=(",", ":")))
        return True

    async def events(request: Request) -> Response:
        if streams.released.is_set():
            return unavailable(request.scope["headers"])
        raw = request.query_params.get("interval_ms", str(EVENT_INTERVAL_MS))
        interval_ms = whole_number(raw, MAX_INTERVAL_MS)
        if interval_ms is None or interval_ms < MIN_INTERVAL_MS:
            return JSONResponse({"error": f"interval_ms must be an integer from {MIN_INTERVAL_MS} "
                                          f"to {MAX_INTERVAL_MS}, got {raw[:20]!r}"}, 400)
        interval_s = interval_ms / 1000
        after = parse_last_event_id(request.headers.get("last-event-id",
                                                        request.query_params.get("last_event_id")))
        if after is None:
            return JSONResponse({"error": "Last-Event-ID must be an event number"}, 400)
        return StreamingResponse(
            stream(after, interval_s), media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def stream(after: int, interval_s: float) -> AsyncIterator[str]:
        streams.enter("sse")  # here, not in the route: counted only once the stream really runs
        released = asyncio.ensure_future(streams.released.wait())
        ended_by_release = False
        try:
            yield f"retry: {EVENT_RETRY_MS}\n\n"
            n = after
            while not released.done():
                n += 1
                yield format_event(n, identity)
                await asyncio.wait({released}, timeout=interval_s)
            # The response ends here, cleanly: the client resumes at once, on another instance.
            yield f"retry: {RELEASED_RETRY_MS}\n\n"
            ended_by_release = True
        finally:
            released.cancel()
            streams.leave("sse", released=ended_by_release)

    return [WebSocketRoute("/ws", websocket_echo), Route("/events", events)]


async def deny(ws: WebSocket, response: Response) -> None:
    """Refuse a WebSocket before its handshake with a real HTTP answer (ASGI denial response);
    a server without that extension can only answer 403."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:  # pragma: no cover - uvicorn's websockets implementation has it
        await ws.close()
