"""Prometheus metrics for the service: requests by route and status, latency, in-flight, draining."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.drain import DrainState

# Known routes keep the label set small; anything else is counted as "other".
ROUTES = frozenset({"/cms", "/events", "/healthz", "/readyz", "/version", "/metrics"})
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServiceMetrics:
    def __init__(self, state: DrainState) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "service_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "service_request_duration_seconds",
            "Time from request start to the end of the response.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        in_flight = Gauge(
            "service_in_flight_requests", "Requests being handled now.", registry=self.registry
        )
        in_flight.set_function(lambda: state.in_flight)
        draining = Gauge(
            "service_draining", "1 once SIGTERM arrived and new requests get 503.",
            registry=self.registry,
        )
        draining.set_function(lambda: 1 if state.draining else 0)
        streams = Gauge(
            "service_open_streams", "Long-lived connections open now: WebSockets (ws), event streams (sse).",
            ["kind"], registry=self.registry,
        )
        streams.labels("ws").set_function(lambda: state.streams.websockets)
        streams.labels("sse").set_function(lambda: state.streams.sse)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
