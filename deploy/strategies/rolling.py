"""Rolling restart: one instance at a time, each gated on ready + UP in HAProxy before the next.

The rules (deploy/deploy.sh follows the same ones): an instance is stopped only while another
server of its backend is UP; its replacement must be UP in HAProxy (HAProxy's own health
check) and answer with the new version within the timeout, or the rollout halts and names
the instances it did not touch.
"""

from __future__ import annotations

import asyncio
import re
import threading
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


def read_servers_patiently(engine: Engine, timeout_s: float) -> list[ServerStat]:
    """read_servers, retried while HAProxy restarts (bounded); then its error."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return read_servers(engine)
        except RolloutError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL_S)


def row_of(stats: list[ServerStat], instance: Instance) -> ServerStat | None:
    """The instance's row, by its address (as its agent finds it)."""
    for stat in stats:
        if stat.backend == instance.backend and stat.addr == instance.address:
            return stat
    return None


def others_up(stats: list[ServerStat], instance: Instance, batch: list[Instance] | None = None) -> int:
    """UP servers of the instance's backend, not counting it (nor the rest of its batch)."""
    leaving = {i.address for i in batch or [instance]}
    return sum(1 for s in stats if s.backend == instance.backend and s.addr not in leaving
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


def batch_size(max_unavailable: str, total: int) -> int:
    """`--max-unavailable`: a count ("3") or a share of the instances ("25%"), at least 1."""
    match = re.fullmatch(r"(\d{1,6})(%?)", max_unavailable.strip())
    if not match or int(match[1]) < 1 or (match[2] and int(match[1]) > 100):
        raise RolloutError(f"--max-unavailable {max_unavailable[:40]!r}: expected a count such as 2 "
                           "or a share such as 25%", exit_code=2)
    size = total * int(match[1]) // 100 if match[2] else int(match[1])
    return max(1, min(size, total))


def rolling_restart(
    engine: Engine,
    version: str | None,
    env: Mapping[str, str],
    timeout_s: float,
    report: Callable[[Event], None],
    instances: list[Instance] | None = None,
    guard: bool = True,
    surge: bool = False,
    max_unavailable: str = "1",
) -> RestartResult:
    """Replace `instances` (default: all), `max_unavailable` at a time; halt at the first that fails.

    Stop-first (default): a batch is stopped (each drains first), then started again. Surge:
    as many new instances start first and must be UP before the batch they replace is
    drained and stopped, so serving capacity never drops. `guard`: never stop the last UP
    server of a backend (off for a blue/green pool that takes no traffic)."""
    result = RestartResult()

    def emit(instance: Instance, name: str, detail: str = "") -> None:
        event = Event(time.time(), instance.name, name, detail)
        result.events.append(event)
        report(event)

    def halt(why: str, untouched: list[Instance], tail: str = "") -> RestartResult:
        names = ", ".join(i.name for i in untouched) or "none"
        result.error = f"{why}\nrollout halted; untouched: {names}{tail}"
        return result

    instances = engine.instances() if instances is None else instances
    size = batch_size(max_unavailable, len(instances))
    engine.prepare(version, env)
    with Retirements(engine, emit, result) as retiring:
        for start in range(0, len(instances), size):
            batch, rest = instances[start : start + size], instances[start + size :]
            before = engine.version_of(batch[0])
            target = version or before
            for old in batch:
                emit(old, "restart", f"{before or '?'} -> {target or '?'}")
            began = time.monotonic()
            if surge:
                new = engine.add(batch, target, env)
                for instance in new:
                    emit(instance, "started", f"new, beside the old one, in {time.monotonic() - began:.2f}s")
            else:
                stats = read_servers_patiently(engine, timeout_s)
                if guard and any(not others_up(stats, old, batch) for old in batch):
                    emit(batch[0], "failed", "no other server UP")
                    return halt(f"[{batch[0].name}] no other server of {batch[0].backend} is UP in HAProxy: "
                                "stopping it would cut service", batch + rest)
                new = engine.replace(batch, version, env)
                for instance in new:
                    emit(instance, "started", f"old one stopped and this one started in "
                         f"{time.monotonic() - began:.2f}s")
            deadline = time.monotonic() + timeout_s
            for instance in new:
                try:
                    wait_ready(engine, instance, target, max(0.0, deadline - time.monotonic()))
                except RolloutError as exc:
                    emit(instance, "failed", str(exc))
                    tail = f"\nlast log lines of {instance.name}:\n{engine.log_tail(instance, 8)}"
                    if surge:  # the old ones still serve: nothing was lost
                        engine.retire(new)
                        return halt(f"{exc}; the new instances were stopped", batch + rest, tail)
                    # Stop-first: the replacement keeps its slot (HAProxy sends it nothing) until a
                    # fix-forward `rollout restart` replaces it.
                    return halt(str(exc), rest, tail)
                result.seconds[instance.name] = time.monotonic() - began
                emit(instance, "ready", f"UP in {result.seconds[instance.name]:.2f}s")
            if surge:
                retiring.retire(batch)
    return result


class Retirements:
    """A surge's old batches, drained and stopped once their replacements are UP.

    Where the engine allows it (`overlapping_retire`), a batch drains in the background while
    the next batch's new instances boot: a step then costs the boot and warm-up, not the drain
    as well, and UP capacity stays at N (the draining ones take no new work, their
    replacements do). The local engine has a spare slot per instance, so old and new never
    need more. Leaving the `with` waits for every drain, whatever happened meanwhile, and adds
    a drain that failed in the background to the result's error."""

    def __init__(self, engine: Engine, emit: Callable[[Instance, str, str], None],
                 result: RestartResult) -> None:
        self.engine = engine
        self.emit = emit
        self.result = result
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def __enter__(self) -> Retirements:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wait()
        if self.errors:
            self.result.error = "\n".join(filter(None, [self.result.error, *self.errors]))

    def retire(self, batch: list[Instance]) -> None:
        if not self.engine.overlapping_retire:
            self._retire(batch)
            return
        thread = threading.Thread(target=self._in_background, args=(batch,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _retire(self, batch: list[Instance]) -> None:
        stopping = time.monotonic()
        self.engine.retire(batch)
        for old in batch:
            self.emit(old, "stopped", f"drained and stopped in {time.monotonic() - stopping:.2f}s")

    def _in_background(self, batch: list[Instance]) -> None:
        try:
            self._retire(batch)
        except Exception as exc:  # reported with the result, never lost with the thread
            names = ", ".join(i.name for i in batch)
            self.errors.append(f"stopping {names} failed ({exc}); their replacements are UP and serve")

    def wait(self) -> None:
        for thread in self.threads:
            thread.join()
        self.threads.clear()
