"""The drain: once SIGTERM arrives, new requests are turned away before any work is done.

Pure ASGI middleware, so it runs before routing and before any handler: a request refused
here never reached application code, and HAProxy may send it elsewhere. How it is refused
(425 where HAProxy asks, else 503) and which requests are (only those HAProxy holds whole;
larger ones are served during the drain): service/refusal.py.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.refusal import refusal_status, resendable
from service.streams import Streams

# Probes and scrapes stay answered while draining and never count as work in flight.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_S = 1

_DRAINING_BODY = b'{"error":"draining","detail":"this instance is shutting down; retry"}'
_DRAINING_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_DRAINING_BODY)).encode()),
    (b"connection", b"close"),
    (b"retry-after", str(RETRY_AFTER_S).encode()),
]


class DrainState:
    """Shared between the middleware, the routes and the server: draining flag and work in flight
    (an event stream counts while it runs), and the long-lived connections (`streams`)."""

    def __init__(self) -> None:
        self.streams = Streams()
        self.ready = False
        self.draining = False
        self.drain_started: float | None = None
        self.notice_before_drain = False  # the agent's drain notice came before SIGTERM
        self.in_flight = 0

    def start_draining(self) -> None:
        if not self.draining:
            self.draining = True
            self.drain_started = time.monotonic()
            self.notice_before_drain = bool(self.streams.release_requested)
            # Without an earlier notice (drain-agent --drain-notify), SIGTERM releases them.
            self.streams.request_release("sigterm")

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


class DrainMiddleware:
    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        state = self.state
        if state.draining and resendable(scope):
            status = refusal_status(scope["headers"])
            await send({"type": "http.response.start", "status": status, "headers": _DRAINING_HEADERS})
            await send({"type": "http.response.body", "body": _DRAINING_BODY})
            return

        async def send_closing_when_draining(message: Message) -> None:
            # A request that finishes during the drain closes its connection afterwards,
            # so HAProxy never parks it in its idle pool just before the listener goes.
            if message["type"] == "http.response.start" and state.draining:
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        state.enter()
        try:
            await self.app(scope, receive, send_closing_when_draining)
        finally:
            state.leave()
