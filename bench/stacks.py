"""Local stacks for the bench: free loopback ports, a fresh temp state dir each, always torn down.

Ports come from 20000-29999, below Linux's ephemeral range (32768+): while an instance
restarts its port is unbound for a moment, and a client socket must not be able to take it
as its source port. 8785 and 8404 (a user's demo) are never used.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass
from types import TracebackType

import httpx

from agent.haproxy import parse_stat_csv
from bench.log import say
from deploy.engines.base import Instance
from deploy.engines.local import LocalEngine, LocalStack, pid_alive, port_in_use
from deploy.errors import RolloutError
from deploy.strategies.rolling import wait_ready

PORT_LOW, PORT_HIGH = 20000, 30000
RESERVED_PORTS = frozenset({8785, 8404})
DEFAULT_RETRY_ON = "conn-failure empty-response 503"
COUNTERS = ("econ", "eresp", "wretr", "wredis", "hrsp_5xx", "srv_abrt", "cli_abrt")

_handed_out: set[int] = set()


@dataclass(frozen=True)
class StackSpec:
    """One way of running the stack; `middleware=False` runs bench.plain_service instead."""

    label: str
    instances: int = 3
    agent: bool = True
    retry_on: str = DEFAULT_RETRY_ON
    retries: int = 3
    middleware: bool = True


class PlainEngine(LocalEngine):
    """The local stack whose instances run without the 503 drain middleware (steady-state cost only)."""

    def app_command(self, instance: Instance) -> str:
        command = super().app_command(instance)
        if not command.endswith(" -m service"):
            raise RolloutError(f"unexpected app command {command!r}")
        return command.removesuffix(" -m service") + " -m bench.plain_service"


def free_port_run(count: int) -> int:
    """A base port with `count` consecutive free loopback ports, none handed out before."""
    for _ in range(500):
        base = random.randrange(PORT_LOW, PORT_HIGH - count)
        ports = range(base, base + count)
        if any(p in RESERVED_PORTS or p in _handed_out for p in ports):
            continue
        if any(port_in_use(p) for p in ports):
            continue
        _handed_out.update(ports)
        return base
    raise RolloutError(f"no run of {count} free loopback ports in {PORT_LOW}-{PORT_HIGH}")


def backend_counters(engine: LocalEngine) -> dict[str, int]:
    """The `app` backend's error and retry counters from HAProxy's stats CSV."""
    response = httpx.get(engine.stats_url(), timeout=5.0)
    response.raise_for_status()
    for row in parse_stat_csv(response.text):
        if row["pxname"] == "app" and row["svname"] == "BACKEND":
            return {name: int(row.get(name) or 0) for name in COUNTERS}
    raise RolloutError("HAProxy stats have no app/BACKEND row")


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


def _vm_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def program_pids(engine: LocalEngine) -> dict[str, int]:
    """supervisor's programs and their PIDs (with the agent on, an instance's PID is drain-agent's)."""
    return {p["name"]: int(p["pid"]) for p in engine.supervisor("getAllProcessInfo") if p["pid"]}


def instance_memory(engine: LocalEngine) -> list[dict[str, object]]:
    """VmRSS of each instance's top process (drain-agent when the agent is on) and of its app child."""
    rows = []
    for name, pid in sorted(program_pids(engine).items()):
        if not name.startswith("app"):
            continue
        children = _children(pid)
        rows.append({
            "instance": name,
            "pid": pid,
            "rss_kb": _vm_rss_kb(pid),
            "child_rss_kb": [_vm_rss_kb(child) for child in children],
        })
    return rows


def _cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(engine: LocalEngine) -> dict[str, float]:
    """CPU seconds used so far by the instances (with their children) and by HAProxy (master and worker)."""
    used = {"apps": 0.0, "haproxy": 0.0}
    for name, pid in program_pids(engine).items():
        key = "haproxy" if name == "haproxy" else "apps"
        used[key] += _cpu_s(pid) + sum(_cpu_s(child) for child in _children(pid))
    return used


def _all_pids(engine: LocalEngine) -> list[int]:
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        pids = list(program_pids(engine).values())
        return pids + [child for pid in pids for child in _children(pid)]
    return []


def stop(engine: LocalEngine) -> None:
    """`engine.down()`; if that fails, SIGKILL supervisord and what it ran, each by its PID."""
    pidfile = engine.root / "supervisord.pid"
    supervisord = int(pidfile.read_text()) if pidfile.exists() else None
    started = _all_pids(engine)
    try:
        engine.down()
    except Exception as exc:
        say(f"{engine.root}: down failed ({exc}); killing by PID")
    for pid in [supervisord, *started]:
        if pid is not None and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Stacks:
    """Stacks started for one section; `with Stacks(...) as stacks:` stops them all, whatever happens."""

    def __init__(self, keep_dirs: bool = False) -> None:
        self.keep_dirs = keep_dirs
        self.engines: list[LocalEngine] = []

    def __enter__(self) -> Stacks:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for engine in reversed(self.engines):
            stop(engine)
            if not self.keep_dirs:
                shutil.rmtree(engine.root, ignore_errors=True)
        self.engines.clear()

    def start(self, specs: list[StackSpec], timeout_s: float = 60) -> list[LocalEngine]:
        """Start every stack at once, then wait until each of their instances is ready and UP."""
        engines = [self._up(spec) for spec in specs]
        for spec, engine in zip(specs, engines, strict=True):
            for instance in engine.instances():
                wait_ready(engine, instance, None, timeout_s)
            say(f"stack '{spec.label}' up: {engine.frontend_url()} ({engine.root})")
        return engines

    def _up(self, spec: StackSpec) -> LocalEngine:
        for attempt in range(3):
            base = free_port_run(2 * spec.instances + 2)
            state_dir = tempfile.mkdtemp(prefix="zdh-bench-")
            stack = LocalStack(
                state_dir=state_dir, port=base, stats_port=base + 1, app_base_port=base + 2,
                agent_base_port=base + 2 + spec.instances,
                instances=spec.instances, version="v1", agent=spec.agent,
                retry_on=spec.retry_on, retries=spec.retries,
            )
            engine = LocalEngine(stack) if spec.middleware else PlainEngine(stack)
            self.engines.append(engine)
            try:
                engine.up()
                return engine
            except RolloutError as exc:
                if "in use" not in str(exc) or attempt == 2:
                    raise
                say(f"ports taken meanwhile ({exc}); trying others")
                time.sleep(0.5)
        raise AssertionError("unreachable")


def versions(engine: LocalEngine) -> list[str | None]:
    return [engine.version_of(instance) for instance in engine.instances()]
