"""Per-request timestamps from the strict checker, to know what was in flight when a drain began.

The agent's overhead is its drain time minus the time the last request in flight on that
server still needed. `run_load` builds one StrictClient per worker by name, so for a traced
run we swap in a subclass that only notes wall-clock start and end (the same clock as the
agent's log stamps) and the answering instance. The checker's logic is untouched.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock

from deploy.check import loadcheck
from deploy.check.strict_http import Response, StrictClient


@dataclass(frozen=True)
class Span:
    began: float  # time.time()
    ended: float
    instance: str


@dataclass
class Trace:
    raw: list[tuple[float, float, bytes]] = field(default_factory=list)
    _spans: list[Span] | None = None

    def spans(self) -> list[Span]:
        if self._spans is None:
            spans = []
            for began, ended, body in self.raw:
                try:
                    instance = str(json.loads(body).get("instance", "?"))
                except (ValueError, AttributeError):
                    instance = "?"
                spans.append(Span(began, ended, instance))
            self._spans = spans
        return self._spans

    def in_flight_ms(self, instance: str, at: float, routed_until: float) -> float:
        """How long after `at` the last request sent to `instance` before `routed_until` ended."""
        last = max(
            (s.ended for s in self.spans()
             if s.instance == instance and s.began <= routed_until and s.ended > at),
            default=at,
        )
        return (last - at) * 1000


@contextlib.contextmanager
def traced() -> Iterator[Trace]:
    trace = Trace()

    class TracingClient(StrictClient):
        async def request(
            self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> Response:
            began = time.time()
            response = await super().request(method, target, body, headers)
            trace.raw.append((began, time.time(), bytes(response.body)))
            return response

    with mock.patch.object(loadcheck, "StrictClient", TracingClient):
        yield trace
