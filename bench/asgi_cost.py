"""The drain middleware's CPU cost per request, measured in process: no network, no HAProxy, less noise.

End-to-end req/s on a shared 2-vCPU box moves by more than 5% from run to run, which is
the size of the target itself. Calling the ASGI app directly, with and without the
middleware, interleaved, gives the per-request cost in microseconds; multiplied by the
measured req/s it bounds the share of the machine's CPU the middleware can take.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from starlette.types import ASGIApp, Message, Scope

from service.app import create_app
from service.config import ServiceConfig


def _scope(path: str) -> Scope:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
    }


async def _per_request_us(app: ASGIApp, requests: int) -> float:
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    # CPU time of this process, not wall time: other jobs on the box do not count.
    began = time.process_time()
    for _ in range(requests):
        await app(_scope("/cms"), receive, send)
    elapsed = time.process_time() - began
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses {set(statuses)}")
    return elapsed / requests * 1e6


def measure(rounds: int = 21, requests: int = 2000) -> dict[str, object]:
    """Median CPU microseconds per GET /cms with and without the middleware, over interleaved rounds."""
    config = ServiceConfig(instance="bench", version="v1")
    apps: dict[str, ASGIApp] = {
        "with middleware": create_app(config, drain=True),
        "without middleware": create_app(config, drain=False),
    }

    async def run() -> dict[str, list[float]]:
        found: dict[str, list[float]] = {name: [] for name in apps}
        for app in apps.values():  # warm-up: build the middleware stacks, fill caches
            await _per_request_us(app, 500)
        for index in range(rounds):
            names = list(apps) if index % 2 == 0 else list(reversed(apps))
            for name in names:
                found[name].append(await _per_request_us(apps[name], requests))
        return found

    found = asyncio.run(run())
    with_us = statistics.median(found["with middleware"])
    without_us = statistics.median(found["without middleware"])
    paired = [w - o for w, o in zip(found["with middleware"], found["without middleware"], strict=True)]
    return {
        "rounds": rounds,
        "requests_per_round": requests,
        "with_us": with_us,
        "without_us": without_us,
        "delta_us": statistics.median(paired),
        "samples_us": found,
    }
