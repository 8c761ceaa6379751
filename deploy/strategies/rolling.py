"""Rolling restart: one instance at a time, each gated on ready + UP in HAProxy before the next.

The rules (deploy/deploy.sh follows the same ones): an instance is stopped only while another
server of its backend is UP; its replacement must be UP in HAProxy (HAProxy's own health
check) and answer with the new version within the timeout, or the rollout halts and names
the instances it did not touch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.errors import HAProxyError
from agent.haproxy import ServerStat, StatsPage
from deploy.engines.base import Engine, Instance
from deploy.errors import RolloutError

POLL_S = 0.05


@dataclass
class Event:
    """One step of a deploy, for progress lines and the report's timeline."""

    at: float  # time.time()
    instance: str
    name: str  # restart, started, ready, failed
    detail: str = ""


@dataclass
class RestartResult:
    events: list[Event] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per instance: restart -> ready
    error: str | None = None  # why the rollout halted


def read_servers(engine: Engine, backend: str | None = None) -> list[ServerStat]:
    """Server rows from HAProxy's read-only stats CSV (all backends, or one)."""
    try:
        stats = asyncio.run(StatsPage(engine.stats_url(), timeout_s=2.0).servers())
    except HAProxyError as exc:
        raise RolloutError(str(exc)) from None
    return [stat for stat in stats if backend is None or stat.backend == backend]


def row_of(stats: list[ServerStat], instance: Instance) -> ServerStat | None:
    """The instance's row, by its address (as its agent finds it)."""
    for stat in stats:
        if stat.backend == instance.backend and stat.addr == instance.address:
            return stat
    return None


def others_up(stats: list[ServerStat], instance: Instance) -> int:
    return sum(1 for s in stats if s.backend == instance.backend and s.addr != instance.address
               and s.status == "UP")


def wait_ready(engine: Engine, instance: Instance, version: str | None, timeout_s: float) -> None:
    """Until HAProxy's own check shows the server UP and it answers with the new version."""
    deadline = time.monotonic() + timeout_s
    status, seen = "?", None
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


def rolling_restart(
    engine: Engine,
    version: str | None,
    env: Mapping[str, str],
    timeout_s: float,
    report: Callable[[Event], None],
    instances: list[Instance] | None = None,
    guard: bool = True,
) -> RestartResult:
    """Restart `instances` (default: all) one at a time; halt at the first that fails.

    `guard`: refuse to stop an instance while no other server of its backend is UP (off for
    a blue/green pool that takes no traffic)."""
    result = RestartResult()

    def emit(instance: Instance, name: str, detail: str = "") -> None:
        event = Event(time.time(), instance.name, name, detail)
        result.events.append(event)
        report(event)

    instances = engine.instances() if instances is None else instances
    engine.prepare(version, env)
    for index, instance in enumerate(instances):
        untouched = ", ".join(i.name for i in instances[index + 1 :]) or "none"
        if guard and not others_up(read_servers(engine, instance.backend), instance):
            emit(instance, "failed", "no other server UP")
            result.error = (
                f"[{instance.name}] no other server of {instance.backend} is UP in HAProxy: stopping "
                f"it would cut service; rollout halted; untouched: "
                f"{', '.join(i.name for i in instances[index:])}"
            )
            return result
        before = engine.version_of(instance)
        emit(instance, "restart", f"{before or '?'} -> {version or before or '?'}")
        began = time.monotonic()
        new = engine.restart(instance, version, env)
        emit(new, "started", f"old one stopped and {'it' if new == instance else new.name} "
             f"started in {time.monotonic() - began:.2f}s")
        try:
            wait_ready(engine, new, version, timeout_s)
        except RolloutError as exc:
            emit(new, "failed", str(exc))
            tail = engine.log_tail(new, 8)
            result.error = (
                f"{exc}\nrollout halted; untouched: {untouched}\n"
                f"last log lines of {new.name}:\n{tail}"
            )
            return result
        instance = new
        result.seconds[instance.name] = time.monotonic() - began
        emit(instance, "ready", f"UP in {result.seconds[instance.name]:.2f}s")
    return result
