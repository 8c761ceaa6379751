"""The agent's own metrics: Prometheus on --metrics-port, nothing at all without it.

prometheus_client is imported only when metrics are asked for: as PID 1 of every container
the agent should cost as little memory as it can (about 5 MiB less without it).
"""

from __future__ import annotations

from typing import Protocol

from agent.events import AgentState


class Metrics(Protocol):
    def record_state(self, state: AgentState) -> None: ...
    def record_drain(self, seconds: float) -> None: ...
    def record_time_to_ready(self, seconds: float) -> None: ...
    def record_stats_error(self) -> None: ...


class NoMetrics:
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
            start_http_server,
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
        start_http_server(port, registry=self.registry)

    def record_state(self, state: AgentState) -> None:
        self.state.state(state.value)

    def record_drain(self, seconds: float) -> None:
        self.drain_seconds.observe(seconds)

    def record_time_to_ready(self, seconds: float) -> None:
        self.time_to_ready.set(seconds)

    def record_stats_error(self) -> None:
        self.stats_errors.inc()
