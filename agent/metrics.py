"""The agent's own metrics: Prometheus on --metrics-port, nothing at all without it.

prometheus_client is imported only when metrics are asked for: as PID 1 of every container
the agent should cost as little memory as it can (about 5 MiB less without it).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from agent.events import AgentState

# The metrics port is open to every container of the network: a bounded number of scrapers at a
# time, each with a short deadline, served on the agent's own event loop (no thread per
# connection inside PID 1). Beyond that a connection is closed at once.
MAX_SCRAPERS = 8
SCRAPE_TIMEOUT_S = 2.0
MAX_REQUEST_HEAD = 4096


class Metrics(Protocol):
    async def start(self) -> None: ...
    def record_state(self, state: AgentState) -> None: ...
    def record_drain(self, seconds: float) -> None: ...
    def record_time_to_ready(self, seconds: float) -> None: ...
    def record_stats_error(self) -> None: ...


class NoMetrics:
    async def start(self) -> None:
        pass

    def record_state(self, state: AgentState) -> None:
        pass

    def record_drain(self, seconds: float) -> None:
        pass

    def record_time_to_ready(self, seconds: float) -> None:
        pass

    def record_stats_error(self) -> None:
        pass


class PrometheusMetrics:
    def __init__(self, port: int) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Enum,
            Gauge,
            Histogram,
        )

        self.registry = CollectorRegistry()
        self.state = Enum(
            "drain_agent_state", "Lifecycle state of the agent.",
            states=[state.value for state in AgentState],
            registry=self.registry,
        )
        self.drain_seconds = Histogram(
            "drain_agent_drain_seconds",
            "From the stop signal to zero sessions in every HAProxy (or the timeout).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.time_to_ready = Gauge(
            "drain_agent_time_to_ready_seconds",
            "From the agent's start to the app's readiness.",
            registry=self.registry,
        )
        self.stats_errors = Counter(
            "drain_agent_haproxy_stats_errors",
            "HAProxy stats reads that failed (unreachable, timeout, error reply).",
            registry=self.registry,
        )
        self.port = port
        self.scrapers = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.answer, "0.0.0.0", self.port, reuse_address=True,
                                                 limit=MAX_REQUEST_HEAD)

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.scrapers >= MAX_SCRAPERS:
            writer.close()
            return
        self.scrapers += 1
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(self.response(head))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            self.scrapers -= 1
            with contextlib.suppress(OSError):
                writer.close()

    def response(self, head: bytes) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        parts = head.split(b" ", 2)
        if len(parts) == 3 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
            status, kind, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        else:
            status, kind, body = "404 Not Found", "text/plain", b"not found: GET /metrics\n"
        return (f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\n\r\n").encode() + body

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def record_state(self, state: AgentState) -> None:
        self.state.state(state.value)

    def record_drain(self, seconds: float) -> None:
        self.drain_seconds.observe(seconds)

    def record_time_to_ready(self, seconds: float) -> None:
        self.time_to_ready.set(seconds)

    def record_stats_error(self) -> None:
        self.stats_errors.inc()
