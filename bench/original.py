"""Section 2: the original design's check, `hey -n 200000 -c 200 -t 100`, during a rolling restart.

Also wrk (no client retries, so resets show) and our strict checker (POSTs and slow
requests, every failure classified), each with the restart ~2 s after the load starts,
and each also without a restart: the steady reference for the p99 target.
"""

from __future__ import annotations

from bench.log import describe, say
from bench.measure import Context, LoadSpec, installed, measure, order
from bench.stacks import Stacks, StackSpec

KEY = "original"
TITLE = "The original design's check during a rolling restart (our stack: agent on, default retries)"
DEPLOY, STEADY = "rolling restart", "steady (no restart)"
RESTART_AFTER_S = 2.0


def loads(quick: bool) -> list[LoadSpec]:
    return [
        LoadSpec("hey", requests=60_000 if quick else 200_000, concurrency=200, timeout_s=100),
        LoadSpec("wrk", duration_s=12 if quick else 20, concurrency=200, threads=2, timeout_s=10),
        LoadSpec("strict", requests=10_000 if quick else 50_000, concurrency=200,
                 post_share=0.2, slow_share=0.1, slow_ms=200),
    ]


def run(ctx: Context) -> dict[str, object]:
    records: list[dict[str, object]] = []
    plan, notes = installed(loads(ctx.quick))
    with Stacks(ctx.keep_dirs) as stacks:
        (engine,) = stacks.start([StackSpec("ours")])
        for index in range(ctx.runs):
            for load in plan:
                for mode in order([DEPLOY, STEADY], index):
                    if mode == DEPLOY:
                        version = ctx.versions.next(engine)
                        say(f"[original] run {index + 1} {load.client}: rolling restart to {version} "
                            f"{RESTART_AFTER_S:g} s into the load")
                        record = measure(engine, load, strategy="rolling", version=version,
                                         delay_s=RESTART_AFTER_S)
                    else:
                        say(f"[original] run {index + 1} {load.client}: steady")
                        record = measure(engine, load)
                    record |= {"run": index + 1, "variant": mode}
                    records.append(record)
                    say(f"[original]   {describe(record)}")
    return {
        "title": TITLE,
        "loads": {load.client: load.describe() for load in plan},
        "variants": [DEPLOY, STEADY],
        "runs": records,
        "notes": notes,
    }
