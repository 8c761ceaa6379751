"""Local stacks for the bench: `rollout up`'s LocalEngine on free loopback ports, a fresh temp
state dir each, always torn down.

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
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from agent.errors import HAProxyError
from agent.haproxy import stat_rows
from bench.deployer import REPO_ROOT
from bench.log import say
from deploy.engines.base import BACKEND
from deploy.engines.local import LocalEngine, LocalStack, pid_alive, port_in_use
from deploy.errors import RolloutError
from deploy.strategies.rolling import wait_ready

PORT_LOW, PORT_HIGH = 20000, 30000
RESERVED_PORTS = frozenset({8785, 8404})
COUNTERS = ("econ", "eresp", "wretr", "wredis", "hrsp_5xx", "srv_abrt", "cli_abrt")
PLAIN_SERVICE = "{python} -m bench.plain_service"

_handed_out: set[int] = set()


@dataclass(frozen=True)
class StackSpec:
    """One way of running the stack. `options` are LocalStack fields (instances, agent, retry_on,
    retries, ...): anything not given is `rollout up`'s own default. `middleware=False` runs
    bench.plain_service, the service without its 503 drain middleware."""

    label: str
    middleware: bool = True
    options: dict[str, Any] = field(default_factory=dict)


def free_port_run(count: int) -> int:
    """A base port with `count` consecutive free loopback ports, none handed out before."""
    for _ in range(500):
        base = random.randrange(PORT_LOW, PORT_HIGH - count)
        ports = range(base, base + count)
        if any(p in RESERVED_PORTS or p in _handed_out or port_in_use(p) for p in ports):
            continue
        _handed_out.update(ports)
        return base
    raise RolloutError(f"no run of {count} free loopback ports in {PORT_LOW}-{PORT_HIGH}")


def backend_counters(engine: LocalEngine) -> dict[str, int]:
    """The `app` backend's error and retry counters, from its BACKEND row of `show stat` (type 2)."""
    return parse_backend_counters(engine.haproxy_command(f"show stat {BACKEND} 2 -1"))


def parse_backend_counters(reply: str) -> dict[str, int]:
    """The backend's own row (agent.haproxy keeps server rows for the deploy; the bench needs this one)."""
    try:
        row = next((row for row in stat_rows(reply) if row["svname"] == "BACKEND"), None)
    except HAProxyError:
        row = None
    if row is None:
        raise RolloutError(f"`show stat {BACKEND} 2 -1` has no BACKEND row: {reply[:120]!r}")
    return {name: int(row.get(name) or 0) for name in COUNTERS}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


# -- processes, from /proc ---------------------------------------------------------------


def _proc_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name ([1] is the parent, [11] utime, [12] stime)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return []


def vm_rss_kb(pid: int) -> int | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def children(pid: int) -> list[int]:
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and (fields := _proc_fields(int(entry))) and int(fields[1]) == pid]


def cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    fields = _proc_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def program_pids(engine: LocalEngine) -> dict[str, int]:
    """supervisor's programs and their PIDs (with the agent on, an instance's PID is drain-agent's)."""
    return {p["name"]: int(p["pid"]) for p in engine.supervisor("getAllProcessInfo") if p["pid"]}


def instance_memory(engine: LocalEngine) -> list[dict[str, object]]:
    """VmRSS of each instance's top process (drain-agent when the agent is on) and of its app child."""
    return [{"instance": name, "pid": pid, "rss_kb": vm_rss_kb(pid),
             "child_rss_kb": [vm_rss_kb(child) for child in children(pid)]}
            for name, pid in sorted(program_pids(engine).items()) if name.startswith("app")]


def process_cpu(engine: LocalEngine) -> dict[str, float]:
    """CPU seconds used so far by the instances (with their children) and by HAProxy (master and worker)."""
    used = {"apps": 0.0, "haproxy": 0.0}
    for name, pid in program_pids(engine).items():
        used["haproxy" if name == "haproxy" else "apps"] += cpu_s(pid) + sum(map(cpu_s, children(pid)))
    return used


def stop(engine: LocalEngine) -> None:
    """`engine.down()`; if that fails, SIGKILL supervisord and what it ran, each by its PID."""
    pidfile = engine.root / "supervisord.pid"
    started = [int(pidfile.read_text())] if pidfile.exists() else []
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        started += [pid for top in program_pids(engine).values() for pid in (top, *children(top))]
    try:
        engine.down()
    except Exception as exc:
        say(f"{engine.root}: down failed ({exc}); killing by PID")
    for pid in started:
        if pid_alive(pid):
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
        """Start every stack at once, then wait until each of their instances is ready and UP
        (as `rollout up` does)."""
        engines = [self._up(spec) for spec in specs]
        for spec, engine in zip(specs, engines, strict=True):
            for instance in engine.instances():
                wait_ready(engine, instance, None, timeout_s)
            say(f"stack '{spec.label}' up: {engine.frontend_url()} ({engine.root})")
        return engines

    def _up(self, spec: StackSpec) -> LocalEngine:
        plain: dict[str, Any] = {"app_command": PLAIN_SERVICE, "app_dir": str(REPO_ROOT)}
        stack = LocalStack(state_dir=tempfile.mkdtemp(prefix="zdh-bench-"),
                           **(spec.options if spec.middleware else plain | spec.options))
        slots = len(LocalEngine(stack).slots())  # every port an instance may run on (spares too)
        for attempt in range(3):
            base = free_port_run(2 + 2 * slots)
            engine = LocalEngine(replace(stack, port=base, stats_port=base + 1, app_base_port=base + 2,
                                         agent_base_port=base + 2 + slots))
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
