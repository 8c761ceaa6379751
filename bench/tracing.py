"""Per-request timestamps from the strict checker, to know what was in flight when a drain began.

The agent's overhead is its stop path minus what the requests already in flight on that
server at its SIGTERM still needed. A traced run gives `run_load` a client factory that
makes `TracingClient`s: each notes every request's wall-clock start and end (the clock of
the agents' log stamps) and the answering instance. The checker's logic is untouched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from deploy.check.loadcheck import percentile
from deploy.check.strict_http import Response, StrictClient


@dataclass(frozen=True)
class Span:
    began: float  # time.time()
    ended: float
    instance: str


def instance_of(body: bytes) -> str:
    """The instance that answered, from the service's JSON body ('?' if it does not say)."""
    try:
        return str(json.loads(body).get("instance", "?"))
    except (ValueError, AttributeError):
        return "?"


@dataclass
class Trace:
    raw: list[tuple[float, float, bytes]] = field(default_factory=list)
    _spans: list[Span] | None = None

    def spans(self) -> list[Span]:
        if self._spans is None:
            self._spans = [Span(began, ended, instance_of(body)) for began, ended, body in self.raw]
        return self._spans

    def in_flight_ms(self, instance: str, at: float) -> float:
        """How long after `at` the last request already sent to `instance` by then ended.

        Requests sent later (before HAProxy learns of the drain from the agent) do not count:
        the time they add is the agent's overhead.
        The agents' stamps are truncated to the ms, hence the 1 ms of slack."""
        ends = [s.ended for s in self.spans() if s.instance == instance and s.began <= at + 0.001]
        last = max((end for end in ends if end > at), default=at)
        return (last - at) * 1000

    def window(self, spans: list[tuple[float, float]]) -> dict[str, float | int | None]:
        """Throughput and p99 over time windows ((since, until) in time.time()): the requests
        answered in them, per second of window, and the p99 of their latencies."""
        seconds = sum(max(0.0, until - since) for since, until in spans)
        latencies = [(s.ended - s.began) * 1000 for s in self.spans()
                     if any(since <= s.ended < until for since, until in spans)]
        return {"seconds": round(seconds, 3), "requests": len(latencies),
                "rps": len(latencies) / seconds if seconds else None,
                "p99_ms": percentile(latencies, 99) if latencies else None}

    def client(self, url: str, timeout_s: float) -> StrictClient:
        """`run_load`'s client_factory."""
        return TracingClient(url, timeout_s, self)


class TracingClient(StrictClient):
    def __init__(self, url: str, timeout_s: float, trace: Trace) -> None:
        super().__init__(url, timeout_s)
        self.trace = trace

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        began = time.time()
        response = await super().request(method, target, body, headers)
        self.trace.raw.append((began, time.time(), bytes(response.body)))
        return response
