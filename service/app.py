"""Routes of the reference service: the demo endpoint, WebSocket echo and event stream (see
service.streams), probes, version and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import sys
import uuid
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.config import ServiceConfig
from service.drain import DrainMiddleware, DrainState
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.streams import stream_routes, whole_number

MAX_DELAY_MS = 60_000
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class BodyTooLarge(Exception):
    pass


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def delay_of(request: Request) -> int | Response:
    """`?delay_ms=`: ASCII digits up to MAX_DELAY_MS, or the 400 that says so."""
    raw = request.query_params.get("delay_ms", "0")
    delay_ms = whole_number(raw, MAX_DELAY_MS)
    if delay_ms is None:
        return error(400, f"delay_ms must be an integer from 0 to {MAX_DELAY_MS}, got {raw[:20]!r}")
    return delay_ms


def create_app(config: ServiceConfig, state: DrainState | None = None, *, drain: bool = True) -> Starlette:
    """The service. `drain=False` leaves out the 503 drain (only to measure what it costs)."""
    state = state or DrainState()
    metrics = ServiceMetrics(state)
    # What every answer says about who answered. The pid only on /version, which the public
    # frontend does not serve (haproxy.cfg): operators read it on the instance itself.
    identity = {"instance": config.instance, "version": config.version}
    ledger = open(config.post_ledger, "a", buffering=1) if config.post_ledger else None  # noqa: SIM115

    def record(line: str) -> None:
        if ledger is not None:
            ledger.write(line + "\n")

    async def cms_get(request: Request) -> Response:
        delay_ms = delay_of(request)
        if isinstance(delay_ms, Response):
            return delay_ms
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return JSONResponse({**identity, "delay_ms": delay_ms})

    async def cms_post(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                return error(400, "Content-Length must be a number")
            if len(declared) > 15 or int(declared) > config.max_body_bytes:
                return error(413, f"body over {config.max_body_bytes} bytes")
        try:
            body = await read_body(request, config.max_body_bytes)
        except BodyTooLarge:
            return error(413, f"body over {config.max_body_bytes} bytes")
        try:
            json.loads(body)
        except ValueError as exc:
            return error(400, f"body is not valid JSON: {exc}")
        except RecursionError:
            return error(400, "body is not valid JSON: nested too deeply")
        delay_ms = delay_of(request)
        if isinstance(delay_ms, Response):
            return delay_ms
        given = request.headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        if ledger is not None:
            ledger.write(request_id + "\n")
        if delay_ms:  # the work is done (recorded); the answer comes later
            await asyncio.sleep(delay_ms / 1000)
        return JSONResponse(
            {
                **identity,
                "request_id": request_id,
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        )

    async def cms(request: Request) -> Response:
        if config.fault_error_share and random.random() < config.fault_error_share:
            return error(500, "injected fault (SERVICE_FAULT_ERROR_SHARE)")  # before any work
        return await (cms_post if request.method == "POST" else cms_get)(request)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", **identity})

    async def readyz(request: Request) -> Response:
        if state.draining:
            return error(503, "draining")
        if not state.ready:
            return error(503, "starting")
        return JSONResponse({"status": "ready", **identity})

    async def version(request: Request) -> Response:
        return JSONResponse({**identity, "pid": os.getpid()})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def warm_up() -> None:
            await asyncio.sleep(config.warmup_s)
            state.ready = True
            if config.fault_crash_after_s is not None:
                await asyncio.sleep(config.fault_crash_after_s)
                print(f"service: crashing on purpose {config.fault_crash_after_s:g}s after ready "
                      "(SERVICE_FAULT_CRASH_AFTER_S)", file=sys.stderr, flush=True)
                os._exit(1)

        warmup = asyncio.create_task(warm_up())
        try:
            yield
        finally:
            warmup.cancel()
            if ledger is not None:
                ledger.close()

    return Starlette(
        routes=[
            Route("/cms", cms, methods=["GET", "POST"]),
            *stream_routes(identity, state.streams, lambda: state.draining,
                           record if ledger is not None else None),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/version", version),
            Route("/metrics", metrics_endpoint),
        ],
        middleware=[
            Middleware(MetricsMiddleware, metrics=metrics),
            *([Middleware(DrainMiddleware, state=state)] if drain else []),
        ],
        lifespan=lifespan,
    )


async def read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
