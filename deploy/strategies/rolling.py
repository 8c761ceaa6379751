"""Rolling restarts and deploys on a real engine: the rules of deploy.core.deploy, with the
engine, HAProxy (deploy.door) and the wall clock plugged in."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from agent.haproxy import ServerStat
from deploy.core.deploy import deploy
from deploy.core.plan import Plan, batch_size, row_of
from deploy.core.seams import Fleet, RealClock
from deploy.door import HAProxyDoor
from deploy.engines.base import Engine, Instance, InstanceEngine, read_stats
from deploy.errors import RolloutError
from deploy.model import Event, RestartResult

__all__ = ["Event", "RestartResult", "batch_size", "read_servers", "rolling_restart", "row_of",
           "run_plan", "wait_ready"]

POLL_S = 0.05


def read_servers(engine: Engine, backend: str | None = None) -> list[ServerStat]:
    """Server rows from HAProxy's read-only stats CSV (all backends, or one)."""
    return [stat for stat in read_stats(engine.stats_url()) if backend is None or stat.backend == backend]


def wait_ready(engine: Engine, instance: Instance, version: str | None, timeout_s: float) -> None:
    """Until HAProxy's own check shows the server UP and it answers with `version` (any if None)."""
    deadline = time.monotonic() + timeout_s
    status, check, seen = "?", "", None
    while time.monotonic() < deadline:
        try:
            stat = row_of(read_servers(engine, instance.backend), instance)
            status = stat.status if stat else "missing"
            check = f", check: {stat.check}" if stat and stat.check and status != "UP" else ""
        except RolloutError as exc:
            status, check = str(exc), ""  # HAProxy restarting: keep waiting, bounded by the deadline
        if status == "UP":
            seen = engine.version_of(instance)
            if seen is not None and (version is None or seen == version):
                return
        elif (why := engine.start_failure(instance)) is not None:
            raise RolloutError(f"[{instance.name}] {why}")
        time.sleep(POLL_S)
    raise RolloutError(
        f"[{instance.name}] not ready and UP within {timeout_s:g}s (HAProxy status: {status}{check}, "
        f"version answered: {seen or 'none'})"
    )


def run_plan(engine: InstanceEngine, plan: Plan, report: Callable[[Event], None]) -> RestartResult:
    fleet: Fleet = engine
    return deploy(plan, fleet, HAProxyDoor(engine), RealClock(), report)


def rolling_restart(
    engine: InstanceEngine,
    version: str | None,
    env: Mapping[str, str],
    timeout_s: float,
    report: Callable[[Event], None],
    instances: list[Instance] | None = None,
    guard: bool = True,
    surge: bool = False,
    max_unavailable: str = "1",
) -> RestartResult:
    """Replace `instances` (default: all), `max_unavailable` at a time, unwatched; halt at the
    first that fails (see deploy.core.deploy for the rules)."""
    plan = Plan(version, env, timeout_s, tuple(instances) if instances is not None else None,
                guard=guard, surge=surge, max_unavailable=max_unavailable)
    return run_plan(engine, plan, report)
