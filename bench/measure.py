"""One measurement: a bounded load on a stack, optionally with a rolling deploy in the middle.

Records the client's row, HAProxy's backend counters (difference over the run), the deploy's
timing, whether the load covered the whole deploy, the versions afterwards and, with the
agent on, the agent's cost per restart from its log.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import TypeVar

from bench import clients
from bench.agentlog import deploy_costs
from bench.deployer import BackgroundDeploy
from bench.stacks import backend_counters, counter_delta, process_cpu, versions
from bench.tracing import Trace
from deploy.check.loadcheck import LoadPlan, check_ledgers
from deploy.check.strict_http import StrictClient
from deploy.engines.local import LocalEngine

T = TypeVar("T")


@dataclass(frozen=True)
class LoadSpec:
    client: str  # strict, hey or wrk
    requests: int | None = None  # strict, hey
    duration_s: float | None = None  # strict, wrk
    concurrency: int = 200
    post_share: float = 0.2  # strict
    slow_share: float = 0.1  # strict
    slow_ms: int = 200  # strict
    threads: int = 2  # wrk
    timeout_s: int | None = None  # wrk --timeout, hey -t

    def describe(self, url: str = "http://127.0.0.1:<port>/cms") -> str:
        if self.client == "hey":
            return f"hey -n {self.requests} -c {self.concurrency} -t {self.timeout_s or 20} {url}"
        if self.client == "wrk":
            timeout = f" --timeout {self.timeout_s}s" if self.timeout_s else ""
            duration = int(self.duration_s or 0)
            return f"wrk -t{self.threads} -c{self.concurrency} -d{duration}s --latency{timeout} {url}"
        size = f"{self.requests} requests" if self.requests else f"{self.duration_s:g} s"
        return (f"strict checker: {size}, c {self.concurrency}, POST {self.post_share:.0%}, "
                f"slow GET {self.slow_share:.0%} ({self.slow_ms} ms)")


def installed(plan: list[LoadSpec]) -> tuple[list[LoadSpec], list[str]]:
    """The loads whose client is on this machine (strict always is), and a note for each one left out."""
    tools = {load.client for load in plan} - {"strict"}
    missing = sorted(tool for tool in tools if not clients.available(tool))
    return ([load for load in plan if load.client not in missing],
            [f"{tool} is not installed: its rows are skipped" for tool in missing])


class Versions:
    """A fresh version name for each deploy of each stack: v2, v3, ..."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def next(self, engine: LocalEngine) -> str:
        key = str(engine.root)
        self.last[key] = self.last.get(key, 1) + 1
        return f"v{self.last[key]}"


@dataclass
class Context:
    """What every section gets: how many runs, quick or full, and the version counter for deploys."""

    runs: int
    quick: bool
    keep_dirs: bool = False
    versions: Versions = field(default_factory=Versions)


def order(items: list[T], run: int) -> list[T]:
    """Rotate the variants' order from run to run, so none is always first (or last) on a drifting machine."""
    shift = run % len(items) if items else 0
    return items[shift:] + items[:shift]


def run_client(engine: LocalEngine, load: LoadSpec, deploy: BackgroundDeploy | None,
               trace: Trace | None) -> clients.LoadRow:
    url = f"{engine.frontend_url()}/cms"
    if load.client == "hey":
        assert load.requests is not None
        return clients.run_hey(url, load.requests, load.concurrency, load.timeout_s or 20)
    if load.client == "wrk":
        assert load.duration_s is not None
        return clients.run_wrk(url, load.threads, load.concurrency, int(load.duration_s), load.timeout_s)
    plan = LoadPlan(
        url=url, requests=load.requests, duration_s=load.duration_s, concurrency=load.concurrency,
        post_share=load.post_share, slow_share=load.slow_share, slow_ms=load.slow_ms,
    )
    result = clients.run_strict(plan, keep_going=(lambda: not deploy.done()) if deploy else (lambda: False),
                                client_factory=trace.client if trace else StrictClient)
    return clients.strict_row(result, check_ledgers(result, engine.ledgers()))


def cpu_per_request(
    engine: LocalEngine, before: dict[str, float] | None, requests: int
) -> dict[str, float] | None:
    """CPU microseconds per request of the instances and of HAProxy over a run without restarts."""
    if before is None or not requests:
        return None
    after = process_cpu(engine)
    return {name: (after[name] - before[name]) / requests * 1e6 for name in after}


def measure(engine: LocalEngine, load: LoadSpec, *, strategy: str | None = None, version: str | None = None,
            delay_s: float = 2.0, trace: Trace | None = None) -> dict[str, object]:
    """Run `load`; with `strategy`, a rolling deploy to `version` starts `delay_s` after the load.
    A strict load under a deploy of our stack is traced; pass `trace` to keep (or force) one."""
    load_average = os.getloadavg()[0]
    before = backend_counters(engine)
    cpu_before = process_cpu(engine) if strategy is None else None
    deploy = BackgroundDeploy(engine.root, strategy, version or "", delay_s) if strategy else None
    if trace is None and strategy and engine.stack.agent and load.client == "strict":
        trace = Trace()
    with deploy or contextlib.nullcontext():
        started = time.time()
        if deploy is not None:
            deploy.go()
        row = run_client(engine, load, deploy, trace)
        ended = time.time()
        timing = deploy.result() if deploy is not None else None
    record: dict[str, object] = {
        "client": load.client,
        "load": row.as_dict(),
        "cpu_us_per_request": cpu_per_request(engine, cpu_before, row.requests),
        "counters": counter_delta(before, backend_counters(engine)),
        "load_started": started,
        "load_ended": ended,
        "load_average_1m": load_average,
    }
    if timing is not None:
        record |= deploy_fields(engine, timing, started, ended)
        began, finished = timing.get("began"), timing.get("ended")
        if engine.stack.agent and isinstance(began, float):
            until = finished if isinstance(finished, float) else ended
            costs = deploy_costs(engine, timing, began - 1, until + 1, trace)
            record["agent_costs"] = [cost.as_dict() for cost in costs]
    return record


def deploy_fields(engine: LocalEngine, timing: dict[str, object], started: float,
                  ended: float) -> dict[str, object]:
    """The deploy's timing, whether the load covered all of it, and the versions it left."""
    began, finished = timing.get("began"), timing.get("ended")
    return {"deploy": timing, "versions_after": versions(engine),
            "covered": (isinstance(began, float) and isinstance(finished, float)
                        and started <= began and finished <= ended)}


def idle_deploy(engine: LocalEngine, version: str) -> dict[str, object]:
    """A rolling restart without load: nothing in flight, so the agent's whole stop path is overhead."""
    with BackgroundDeploy(engine.root, "rolling", version, 0.0) as deploy:
        deploy.go()
        timing = deploy.result()
    record: dict[str, object] = {"client": "none", "deploy": timing, "versions_after": versions(engine)}
    began, finished = timing.get("began"), timing.get("ended")
    if isinstance(began, float):
        until = finished if isinstance(finished, float) else time.time()
        costs = deploy_costs(engine, timing, began - 1, until + 1, idle=True)
        record["agent_costs"] = [cost.as_dict() for cost in costs]
    return record
