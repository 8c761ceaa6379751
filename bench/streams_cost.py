"""Section 6: a rolling restart with long-lived clients, against the same deploy without them.

One 3-instance stack whose agents notify the app once their server takes no new work
(DRAIN_AGENT_DRAIN_NOTIFY=SIGUSR1: the service closes each WebSocket with 1012 and ends each
event stream). Each run deploys it twice under the same HTTP load, in turn: once with no other
client, once with 100 WebSocket clients (20 messages/s each) and 50 SSE clients connected from
the start, as `rollout check --ws-clients 100 --sse-clients 50` runs them (one process, one
event loop, beside the HTTP load). What it shows: the deploy's time with and without them,
how fast every client was back after its close, and that every message made it exactly once.
"""

from __future__ import annotations

import asyncio
import time

import uvloop

from bench.clients import strict_row
from bench.deployer import BackgroundDeploy
from bench.log import describe, say
from bench.measure import Context, LoadSpec, deploy_fields, order
from bench.stacks import Stacks, StackSpec
from deploy.check.loadcheck import LoadPlan, LoadResult, check_ledgers, run_load
from deploy.check.streams import StreamsPlan, StreamsResult, run_streams
from deploy.check.streams_report import check_ws_ledgers, report_data
from deploy.engines.local import LocalEngine

KEY = "streams"
TITLE = "Long-lived clients: a rolling restart with WebSocket and SSE clients, and without"
NOTIFY = {"DRAIN_AGENT_DRAIN_NOTIFY": "SIGUSR1"}
WITHOUT, WITH = "HTTP load only", "HTTP load + WebSocket and SSE clients"
DEPLOY_AFTER_S = 3.0


def http_load() -> LoadSpec:
    """Planned for 4 s; the checker keeps going until the deploy is done."""
    return LoadSpec("strict", duration_s=4, concurrency=100, post_share=0.2, slow_share=0.1, slow_ms=200)


def streams_plan(url: str, quick: bool) -> StreamsPlan:
    return StreamsPlan(url=url, ws_clients=30 if quick else 100, ws_rate=20,
                       sse_clients=15 if quick else 50, sse_interval_ms=100)


def run(ctx: Context) -> dict[str, object]:
    records: list[dict[str, object]] = []
    with Stacks(ctx.keep_dirs) as stacks:
        (engine,) = stacks.start([StackSpec("streams", options={"app_env": NOTIFY})])
        for index in range(ctx.runs):
            for variant in order([WITHOUT, WITH], index):
                version = ctx.versions.next(engine)
                say(f"[streams] run {index + 1}: {variant}, rolling restart to {version}")
                # A new plan each time: its run id names the clients, whose messages the
                # instances' ledgers keep from one deploy to the next.
                plan = streams_plan(engine.frontend_url(), ctx.quick)
                record = measure(engine, plan if variant == WITH else None, version)
                record |= {"run": index + 1, "variant": variant}
                records.append(record)
                say(f"[streams]   {describe(record)}{streams_text(record)}")
    plan = streams_plan(engine.frontend_url(), ctx.quick)
    return {
        "title": TITLE,
        "loads": {"HTTP": (http_load().describe()
                           + f"; deploy {DEPLOY_AFTER_S:g} s in, load runs until it is done"),
                  "streams": f"{plan.ws_clients} WebSocket clients x {plan.ws_rate:g} messages/s, "
                             f"{plan.sse_clients} SSE clients (an event every {plan.sse_interval_ms} ms)"},
        "variants": [WITHOUT, WITH],
        "runs": records,
        "notes": [],
    }


def measure(engine: LocalEngine, plan: StreamsPlan | None, version: str) -> dict[str, object]:
    """The HTTP load (and the stream clients) with a rolling restart `DEPLOY_AFTER_S` in."""
    spec = http_load()
    load_plan = LoadPlan(url=f"{engine.frontend_url()}/cms", requests=None, duration_s=spec.duration_s,
                         concurrency=spec.concurrency, post_share=spec.post_share,
                         slow_share=spec.slow_share, slow_ms=spec.slow_ms)
    since = time.time()
    with BackgroundDeploy(engine.root, "rolling", version, DEPLOY_AFTER_S) as deploy:
        deploy.go()
        started = time.time()
        load, streams = uvloop.run(together(load_plan, plan, deploy))
        ended = time.time()
        timing = deploy.result()
    record: dict[str, object] = {
        "client": "strict",
        "load": strict_row(load, check_ledgers(load, engine.ledgers())).as_dict(),
        **deploy_fields(engine, timing, started, ended),
    }
    if streams is not None:
        ledger = check_ws_ledgers(streams, engine.ledgers())
        record["streams"] = report_data(streams, ledger, since) | {
            "ws_ledger_ok": ledger.ok, "slow_reconnects": len(streams.slow_reconnects),
            "reconnects": len(streams.reconnects)}
    return record


async def together(load_plan: LoadPlan, plan: StreamsPlan | None,
                   deploy: BackgroundDeploy) -> tuple[LoadResult, StreamsResult | None]:
    stop = asyncio.Event()
    streams = asyncio.create_task(run_streams(plan, stop)) if plan else None
    try:
        load = await run_load(load_plan, keep_going=lambda: not deploy.done())
    finally:
        stop.set()
    return load, (await streams if streams else None)


def streams_text(record: dict[str, object]) -> str:
    found = record.get("streams")
    if not isinstance(found, dict):
        return ""
    ws, sse = found["reconnect_ms"]["ws"], found["reconnect_ms"]["sse"]
    return (f"; {found['ws_messages']} WS messages, exactly once: {found['ws_exactly_once']} "
            f"(ledgers: {found['ws_ledger_ok']}), {found['sse_events']} SSE events in order: "
            f"{found['sse_in_order']}; reconnect ms WS p50 {ws['p50']} max {ws['max']}, "
            f"SSE p50 {sse['p50']} max {sse['max']}; {found['slow_reconnects']} over 1 s")
