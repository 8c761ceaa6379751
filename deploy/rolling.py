"""Rolling restart: one instance at a time, each gated on ready + UP in HAProxy before the next."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from agent.haproxy import ServerStat, parse_stat_csv, stat_from_row
from deploy.engine import BACKEND, Engine, Instance
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


def read_servers(engine: Engine, backend: str = BACKEND) -> dict[str, ServerStat]:
    """Server rows from HAProxy's read-only stats CSV."""
    try:
        response = httpx.get(engine.stats_url(), timeout=2.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise RolloutError(f"HAProxy stats at {engine.stats_url()} unreachable: {exc}") from None
    rows = parse_stat_csv(response.text)
    return {
        row["svname"]: stat_from_row(row)
        for row in rows
        if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def wait_ready(engine: Engine, instance: Instance, version: str | None, timeout_s: float) -> None:
    """Until HAProxy shows the server UP and the new process answers with the new version."""
    deadline = time.monotonic() + timeout_s
    status, seen = "?", None
    while time.monotonic() < deadline:
        try:
            stat = read_servers(engine, instance.backend).get(instance.server)
            status = stat.status if stat else "missing"
        except RolloutError as exc:
            status = str(exc)  # HAProxy restarting: keep waiting, bounded by the deadline
        if status == "UP":
            seen = engine.version_of(instance)
            if seen is not None and (version is None or seen == version):
                return
        time.sleep(POLL_S)
    raise RolloutError(
        f"[{instance.name}] not ready and UP within {timeout_s:g}s (HAProxy status: {status}, "
        f"version answered: {seen or 'none'})"
    )


def rolling_restart(
    engine: Engine,
    version: str | None,
    env: Mapping[str, str],
    timeout_s: float,
    report: Callable[[Event], None],
    instances: list[Instance] | None = None,
) -> RestartResult:
    """Restart `instances` (default: all) one at a time; halt at the first that fails."""
    result = RestartResult()

    def emit(instance: Instance, name: str, detail: str = "") -> None:
        event = Event(time.time(), instance.name, name, detail)
        result.events.append(event)
        report(event)

    instances = engine.instances() if instances is None else instances
    for index, instance in enumerate(instances):
        before = engine.version_of(instance)
        emit(instance, "restart", f"{before or '?'} -> {version or before or '?'}")
        began = time.monotonic()
        engine.restart(instance, version, env)
        emit(instance, "started", f"old stopped in {time.monotonic() - began:.2f}s")
        try:
            wait_ready(engine, instance, version, timeout_s)
        except RolloutError as exc:
            emit(instance, "failed", str(exc))
            untouched = ", ".join(i.name for i in instances[index + 1 :]) or "none"
            tail = engine.log_tail(instance, 8)
            result.error = (
                f"{exc}\nrollout halted; untouched: {untouched}\n"
                f"last log lines of {instance.name}:\n{tail}"
            )
            return result
        result.seconds[instance.name] = time.monotonic() - began
        emit(instance, "ready", f"UP in {result.seconds[instance.name]:.2f}s")
    return result
