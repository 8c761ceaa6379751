"""Section 1: steady state through HAProxy, 3 instances, no restart, with and without the drain middleware.

The agent is off in both variants, so the 503 drain middleware is the only difference
(`bench.plain_service` runs `build_server(..., drain=False)`). Slow requests are left out:
they only sleep, and would hide a per-request cost. Each run measures A B B A (the order
rotating from run to run) and averages each variant's two measurements, so a machine whose
speed drifts during the run favours neither; the cost is then paired within each run.
The instances' and HAProxy's CPU time per request is recorded too: unlike req/s, it hardly
depends on what else the shared machine is doing.
"""

from __future__ import annotations

from bench import asgi_cost
from bench.log import ms, say
from bench.measure import Context, LoadSpec, installed, measure, order
from bench.stacks import Stacks, StackSpec

KEY = "steady"
TITLE = "Steady state through HAProxy: what the drain middleware costs"
WITHOUT, WITH = "without middleware", "with middleware"
NO_AGENT = {"agent": False}


def loads(quick: bool) -> list[LoadSpec]:
    return [
        LoadSpec("strict", duration_s=3 if quick else 5, concurrency=100, post_share=0.2, slow_share=0.0),
        LoadSpec("wrk", duration_s=4 if quick else 10, concurrency=100, threads=2),
    ]


def run(ctx: Context) -> dict[str, object]:
    records: list[dict[str, object]] = []
    specs = [StackSpec(WITHOUT, middleware=False, options=NO_AGENT), StackSpec(WITH, options=NO_AGENT)]
    plan, notes = installed(loads(ctx.quick))
    with Stacks(ctx.keep_dirs) as stacks:
        engines = dict(zip((s.label for s in specs), stacks.start(specs), strict=True))
        for label, engine in engines.items():
            say(f"[steady] warm-up {label}")
            measure(engine, LoadSpec("strict", duration_s=1.5, concurrency=100, slow_share=0.0))
        for index in range(ctx.runs):
            for load in plan:
                first, second = order(list(engines), index)
                for label in (first, second, second, first):
                    record = measure(engines[label], load)
                    record |= {"run": index + 1, "variant": label}
                    records.append(record)
                    row, cpu = record["load"], record["cpu_us_per_request"]
                    assert isinstance(row, dict) and isinstance(cpu, dict)
                    say(f"[steady] run {index + 1} {label:>18} {load.client:6} {row['rps']:8.0f} req/s "
                        f"p50 {ms(row['p50_ms'])} ms p99 {ms(row['p99_ms'])} ms failed {row['failed']}, "
                        f"CPU per request: apps {cpu['apps']:.0f} us, HAProxy {cpu['haproxy']:.0f} us")
    say("[steady] in-process ASGI cost of the middleware (CPU time, interleaved rounds)")
    asgi = asgi_cost.measure(rounds=7 if ctx.quick else 21)
    say(f"[steady]   {asgi['with_us']:.1f} vs {asgi['without_us']:.1f} us per request "
        f"(paired median difference {asgi['delta_us']:+.2f} us)")
    return {
        "title": TITLE,
        "asgi": asgi,
        "loads": {load.client: load.describe() for load in plan},
        "variants": [WITHOUT, WITH],
        "runs": records,
        "notes": notes,
    }
