"""The agent's own Prometheus metrics, served on --metrics-port when given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, start_http_server

STATES = ["starting", "ready", "draining", "stopping", "exited"]


class AgentMetrics:
    def __init__(self) -> None:
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

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
