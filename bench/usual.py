"""Section 3: the same rolling deploy done the usual ways, side by side, under the strict checker (and wrk).

(a) plain restarts, no agent, no retries; (b) HAProxy retries only; (c) the original
design's sample drain script (1 s polling, fixed sleeps), run by the bench; (d) ours:
drain-agent on every instance, default retries, restarted by `rolling_restart`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.log import describe, say
from bench.measure import Context, LoadSpec, installed, measure, order
from bench.original import RESTART_AFTER_S
from bench.stacks import Stacks, StackSpec
from bench.steady import NO_AGENT

KEY = "usual"
TITLE = "The same deploy, the usual ways, side by side"


@dataclass(frozen=True)
class Way:
    key: str
    label: str
    stack: StackSpec
    strategy: str


WAYS = [
    Way("a", "(a) plain restarts, no agent, no retries",
        StackSpec("a", options=NO_AGENT | {"retry_on": "none", "retries": 0}), "rolling"),
    Way("b", "(b) HAProxy retries only", StackSpec("b", options=NO_AGENT), "rolling"),
    Way("c", "(c) sample script: drain, 1 s polling, fixed sleeps",
        StackSpec("c", options=NO_AGENT), "sample"),
    Way("d", "(d) ours: drain-agent + retries", StackSpec("d"), "rolling"),
]


def loads(quick: bool) -> list[LoadSpec]:
    strict = LoadSpec("strict", requests=10_000 if quick else 50_000, concurrency=200,
                      post_share=0.2, slow_share=0.1, slow_ms=200)
    if quick:
        return [strict]
    return [strict, LoadSpec("wrk", duration_s=16, concurrency=200, threads=2, timeout_s=10)]


def run(ctx: Context) -> dict[str, object]:
    records: list[dict[str, object]] = []
    plan, notes = installed(loads(ctx.quick))
    if ctx.quick:
        notes.append("--quick: strict checker only (no wrk rows)")
    with Stacks(ctx.keep_dirs) as stacks:
        engines = dict(zip((w.key for w in WAYS), stacks.start([w.stack for w in WAYS]), strict=True))
        ways = {w.key: w for w in WAYS}
        for index in range(ctx.runs):
            for load in plan:
                for key in order(list(ways), index):
                    way, engine = ways[key], engines[key]
                    version = ctx.versions.next(engine)
                    say(f"[usual] run {index + 1} {load.client} {way.label}: deploy to {version}")
                    record = measure(engine, load, strategy=way.strategy, version=version,
                                     delay_s=RESTART_AFTER_S)
                    record |= {"run": index + 1, "variant": way.key}
                    records.append(record)
                    say(f"[usual]   {describe(record)} counters {record['counters']}")
    return {
        "title": TITLE,
        "loads": {load.client: load.describe() for load in plan},
        "variants": [w.key for w in WAYS],
        "labels": {w.key: w.label for w in WAYS},
        "runs": records,
        "notes": notes,
    }
