"""Section 5: surge against stop-first, a deploy with a warm-up, and many instances at a time.

(a) Capacity: the same 3-instance stack deployed stop-first and with surge, side by side, under
    the strict checker with 2% of 2 s requests; req/s and p99 while the deploy runs against the
    same run before and after it (`bench.measure.windows`).
(b) Warm-up: instances that stay unready 3 s after they start (SERVICE_WARMUP_S) and 2 s
    requests in flight. A surge step boots the next instance while the last one drains
    (`deploy.strategies.rolling.Retirements`), so the deploy should take about 3 x (boot +
    warm-up) plus the last drain. Boot + warm-up is measured in the same run: from the step's
    start (its `restart` event) to the new instance's app answering ready (its agent's app.ready).
(c) Scale: 3, 6, 12 and 24 instances, surge with --max-unavailable 3, under a light load: the
    deploy time should grow about as N/K, the number of steps.
"""

from __future__ import annotations

from typing import Any

from agent.events import parse_log
from bench.agentlog import ALL_LINES
from bench.log import describe, say
from bench.measure import Context, LoadSpec, measure, order
from bench.stacks import Stacks, StackSpec
from bench.tracing import Trace
from deploy.engines.local import LocalEngine

KEY = "surge"
TITLE = "Surge against stop-first; a warm-up; many instances at a time"
STOP_FIRST, SURGE = "stop-first", "surge"
STRATEGY = {STOP_FIRST: "rolling", SURGE: "surge"}
# Each instance serves at most this many requests at once (HAProxy queues the rest), so that
# its capacity, not this 2-vCPU machine's CPU, limits throughput: with the instances in turn
# away, what a deploy costs in capacity shows in req/s.
CAPACITY = "maxconn 32"
WARMUP_S = 3.0
SCALE_K = 3


def capacity_load(quick: bool) -> LoadSpec:
    return LoadSpec("strict", duration_s=10 if quick else 16, concurrency=200, post_share=0.2,
                    slow_share=0.02, slow_ms=2000)


def warmup_load(quick: bool) -> LoadSpec:
    return LoadSpec("strict", duration_s=20 if quick else 30, concurrency=200 if quick else 500,
                    post_share=0.2, slow_share=0.1, slow_ms=2000)


def scale_load() -> LoadSpec:
    """Planned for 3 s; the checker keeps going until the deploy is done."""
    return LoadSpec("strict", duration_s=3, concurrency=50, post_share=0.2, slow_share=0.02, slow_ms=2000)


def sizes(quick: bool) -> tuple[int, ...]:
    return (3, 6) if quick else (3, 6, 12, 24)


def run(ctx: Context) -> dict[str, object]:
    records: list[dict[str, object]] = []
    records += side_by_side(ctx, "capacity", capacity_load(ctx.quick), {"server_options": CAPACITY},
                            delay_s=4.0, paired_steady=True)
    records += side_by_side(ctx, "warm-up", warmup_load(ctx.quick),
                            {"app_env": {"SERVICE_WARMUP_S": f"{WARMUP_S:g}"}}, delay_s=4.0)
    records += scale(ctx)
    return {
        "title": TITLE,
        "loads": {
            "(a) capacity": capacity_load(ctx.quick).describe() + f"; servers `{CAPACITY}`; deploy 4 s in",
            "(b) warm-up": (warmup_load(ctx.quick).describe()
                            + f"; SERVICE_WARMUP_S={WARMUP_S:g}; deploy 4 s in"),
            "(c) scale": scale_load().describe() + f"; surge, --max-unavailable {SCALE_K}; deploy 1 s in, "
                         "load runs until it is done",
        },
        "variants": [STOP_FIRST, SURGE],
        "runs": records,
        "warmup_s": WARMUP_S,
        "scale_k": SCALE_K,
        "notes": [],
    }


def side_by_side(ctx: Context, part: str, load: LoadSpec, options: dict[str, Any], delay_s: float,
                 paired_steady: bool = False) -> list[dict[str, object]]:
    """One stack per variant, both up at once, measured in turn (the order rotating). With
    `paired_steady`, each deploy run follows a run of the same load without a deploy."""
    records = []
    with Stacks(ctx.keep_dirs) as stacks:
        specs = [StackSpec(f"{part} {variant}", options=options) for variant in (STOP_FIRST, SURGE)]
        engines = dict(zip((STOP_FIRST, SURGE), stacks.start(specs), strict=True))
        for index in range(ctx.runs):
            for variant in order([STOP_FIRST, SURGE], index):
                engine = engines[variant]
                steady: tuple[Trace, object] | None = None
                if paired_steady:
                    say(f"[surge] run {index + 1} {part}: {variant} stack, steady")
                    steady_trace = Trace()
                    steady = (steady_trace, measure(engine, load, trace=steady_trace)["load_started"])
                version = ctx.versions.next(engine)
                say(f"[surge] run {index + 1} {part}: {variant} deploy to {version}")
                trace = Trace()
                record = measure(engine, load, strategy=STRATEGY[variant], version=version, delay_s=delay_s,
                                 trace=trace)
                record |= {"run": index + 1, "part": part, "variant": variant, "instances": 3}
                record["boots_ms"] = boots_ms(engine, record)
                if steady is not None:
                    record["windows"] = windows(record, trace, *steady)
                records.append(record)
                say(f"[surge]   {describe(record)}; {windows_text(record)}")
    return records


def windows(record: dict[str, object], trace: Trace, steady: Trace,
            steady_started: object) -> dict[str, object]:
    """req/s and p99 while the deploy ran, against the same seconds of the load (counted from
    its start) in the steady run just before. 2 s requests from 200 workers started together
    come in waves; the same offsets see the same waves."""
    deploy, started = record.get("deploy"), record.get("load_started")
    if not isinstance(deploy, dict) or not isinstance(started, float):
        return {}
    began, ended = deploy.get("began"), deploy.get("ended")
    if not isinstance(began, float) or not isinstance(ended, float) or not isinstance(steady_started, float):
        return {}
    shift = steady_started - started
    return {"deploy": trace.window([(began, ended)]),
            "steady": steady.window([(began + shift, ended + shift)])}


def scale(ctx: Context) -> list[dict[str, object]]:
    records = []
    with Stacks(ctx.keep_dirs) as stacks:
        specs = [StackSpec(f"{n} instances", options={"instances": n}) for n in sizes(ctx.quick)]
        engines = dict(zip(sizes(ctx.quick), stacks.start(specs, timeout_s=120), strict=True))
        for index in range(ctx.runs):
            for size in order(list(engines), index):
                engine = engines[size]
                version = ctx.versions.next(engine)
                say(f"[surge] run {index + 1} scale: {size} instances, {SCALE_K} at a time to {version}")
                record = measure(engine, scale_load(), strategy=f"surge:{SCALE_K}", version=version,
                                 delay_s=1.0)
                record |= {"run": index + 1, "part": "scale", "variant": f"{size} instances",
                           "instances": size, "steps": -(-size // SCALE_K)}
                records.append(record)
                say(f"[surge]   {describe(record)}")
    return records


def boots_ms(engine: LocalEngine, record: dict[str, object]) -> list[int]:
    """Per new instance of a surge: its step's first `restart` event -> its agent's app.ready
    (boot + warm-up; in a stop-first step the old one's drain and stop come first)."""
    deploy = record.get("deploy")
    if not isinstance(deploy, dict) or record.get("variant") != SURGE:
        return []
    slots = {slot.name: slot for slot in engine.slots()}
    step_began: float | None = None
    boots = []
    for event in deploy.get("events") or []:
        if event["name"] == "restart" and step_began is None:
            step_began = event["at"]
        elif event["name"] == "started" and step_began is not None:
            log = engine.log_tail(slots[event["instance"]], ALL_LINES)
            readies = [e.at for e in parse_log(log) if e.event == "app.ready" and e.at >= step_began - 0.001]
            if readies:
                boots.append(round((readies[0] - step_began) * 1000))
        elif event["name"] == "ready":
            step_began = None
    return boots


def windows_text(record: dict[str, object]) -> str:
    found = record.get("windows")
    if not isinstance(found, dict):
        return "no windows"
    deploy, steady = found["deploy"], found["steady"]
    return (f"req/s {deploy['rps'] or 0:.0f} during vs {steady['rps'] or 0:.0f} steady, "
            f"p99 {deploy['p99_ms'] or 0:.0f} vs {steady['p99_ms'] or 0:.0f} ms")
