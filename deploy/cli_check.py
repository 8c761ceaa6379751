"""`rollout check`: the strict load checker on the stack's frontend, with WebSocket and SSE
clients beside it and a restart in the middle if asked; the summary and the report."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from deploy.check import streams, streams_report
from deploy.check.loadcheck import LoadPlan, LoadResult, run_load
from deploy.check.outcome import outcome_of
from deploy.check.report import summary, write_report
from deploy.check.streams import StreamsResult
from deploy.check.timeline import instance_timeline
from deploy.cli import run_restart, say
from deploy.cli_args import parse_env
from deploy.engines.base import Engine
from deploy.errors import RolloutError
from deploy.model import RestartResult

T = TypeVar("T")


def cmd_check(engine: Engine, args: argparse.Namespace) -> int:
    env = parse_env(args.env)
    url = args.url or f"{engine.frontend_url()}{args.path[0][0] if args.path else '/cms'}"
    contract = {"on": True, "off": False}.get(args.contract)
    if contract is None:
        contract = speaks_the_contract(url, args.timeout)
        say(f"the app at {url} {'speaks' if contract else 'does not speak'} the reference service's "
            f"contract: {'echo, ledgers and versions checked' if contract else 'success by status alone'}")
    body = args.body_file.read(1024 * 1024 + 1) if args.body_file else b""
    if len(body) > 1024 * 1024:
        raise RolloutError(f"--body-file {args.body_file.name}: over 1 MiB", exit_code=2)
    try:
        plan = LoadPlan(
            url=url,
            requests=None if args.duration else (args.requests or 20_000),
            duration_s=args.duration, concurrency=args.concurrency, post_share=args.post_share,
            slow_share=args.slow_share, slow_ms=args.slow_ms, post_bytes=args.post_bytes,
            timeout_s=args.timeout, contract=contract, paths=tuple(args.path or ()),
            method=args.method, headers=tuple(args.header), body=body, accept=args.accept,
        )
        streams_plan = streams.StreamsPlan(
            url=engine.frontend_url(), ws_clients=args.ws_clients, ws_rate=args.ws_rate,
            sse_clients=args.sse_clients, sse_interval_ms=args.sse_interval_ms,
        ) if args.ws_clients or args.sse_clients else None
    except ValueError as exc:
        raise RolloutError(f"check: {exc}", exit_code=2) from None
    if args.restart and not engine.is_up():
        raise RolloutError("the stack is not up: `rollout up --detach` first")
    restart: RestartResult | None = None
    restart_done = threading.Event()

    def restart_in_background() -> None:
        nonlocal restart
        try:
            time.sleep(args.restart_after)
            say(f"rolling restart to {args.version or 'the same version'} begins")
            restart = run_restart(engine, args, env)
        except RolloutError as exc:
            restart = RestartResult(error=str(exc))
        finally:
            restart_done.set()

    def progress(result: LoadResult) -> None:
        say(f"[load] {result.total} requests, {result.failed} failed")

    if args.restart:
        threading.Thread(target=restart_in_background, daemon=True).start()
    say(f"load: {plan.requests or plan.duration_s} {'requests' if plan.requests else 's'} "
        f"at concurrency {plan.concurrency} on {plan.url}")
    load = run_load(plan, progress, keep_going=lambda: args.restart and not restart_done.is_set())
    clients: StreamsResult | None = None
    if streams_plan is None:
        result = run_event_loop(load)
    else:
        result, clients = run_event_loop(streams.alongside(streams_plan, load))
    outcome = outcome_of(plan, result, restart, clients, engine.ledgers())
    print(summary(result, outcome.ledger, restart, plan.concurrency))
    if clients is not None:
        print(streams_report.summary(clients, outcome.ws_ledger))
    if args.report:
        timeline = instance_timeline(engine, result.started)
        if clients is not None:
            timeline = sorted(timeline + streams_report.timeline_events(clients), key=lambda e: e.at)
        written = write_report(Path(args.report), outcome, timeline)
        say("report: " + ", ".join(str(path) for path in written))
    if restart is not None and restart.error:
        say(restart.error)
    return 0 if outcome.ok else 1


def run_event_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coroutine)


def speaks_the_contract(url: str, timeout_s: float) -> bool:
    """One GET: the reference service answers JSON naming its instance and version."""
    import httpx

    try:
        answer = httpx.get(url, timeout=min(timeout_s, 5.0)).json()
    except (httpx.HTTPError, ValueError):
        return False
    return isinstance(answer, dict) and {"instance", "version"} <= answer.keys()
