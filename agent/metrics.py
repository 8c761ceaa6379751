"""The agent's own metrics: Prometheus on --metrics-port, nothing at all without it.

prometheus_client is imported only when metrics are asked for: as PID 1 of every container
the agent should cost as little memory as it can (about 5 MiB less without it).
"""

from __future__ import annotations

from typing import Protocol

STATES = ["starting", "ready", "draining", "stopping", "exited"]


class Metrics(Protocol):
    def record_state(self, state: str) -> None: ...
    def record_drain(self, seconds: float) -> None: ...
    def record_time_to_ready(self, seconds: float) -> None: ...
    def record_api_error(self) -> None: ...


class NoMetrics:
    def record_state(self, state: str) -> None:
        pass

    def record_drain(self, seconds: float) -> None:
        pass

    def record_time_to_ready(self, seconds: float) -> None:
        pass

    def record_api_error(self) -> None:
        pass


class PrometheusMetrics:
    def __init__(self, port: int) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Enum,
            Gauge,
            Histogram,
            start_http_server,
        )

        self.registry = CollectorRegistry()
        self.state = Enum(
            "drain_agent_state", "Lifecycle state of the agent.", states=STATES,
            registry=self.registry,
        )
        self.drain_seconds = Histogram(
            "drain_agent_drain_seconds",
            "From `set server ... state drain` to zero sessions in HAProxy (or the timeout).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.time_to_ready = Gauge(
            "drain_agent_time_to_ready_seconds",
            "From spawning the app to UP in every HAProxy.",
            registry=self.registry,
        )
        self.api_errors = Counter(
            "drain_agent_haproxy_api_errors",
            "Runtime API calls that failed (unreachable, timeout, error reply).",
            registry=self.registry,
        )
        start_http_server(port, registry=self.registry)

    def record_state(self, state: str) -> None:
        self.state.state(state)

    def record_drain(self, seconds: float) -> None:
        self.drain_seconds.observe(seconds)

    def record_time_to_ready(self, seconds: float) -> None:
        self.time_to_ready.set(seconds)

    def record_api_error(self) -> None:
        self.api_errors.inc()
