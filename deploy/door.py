"""The deploy's door to HAProxy, the same for every engine: every server's row from the
read-only stats, server weights through the admin Runtime API (operators only; no app ever
holds that right), and the reload of every HAProxy of the stack. An engine gives only a
handle per HAProxy (engines/base.py: HAProxyHandle)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from agent.errors import ConfigError
from agent.haproxy import ServerStat, check_name
from deploy.engines.base import Engine, HAProxyHandle, read_stats
from deploy.errors import RolloutError

INITIAL = re.compile(r"\d+ \(initial (\d+)\)")
RELOAD_TIMEOUT_S = 15.0


class HAProxyDoor:
    def __init__(self, engine: Engine, timeout_s: float = 2.0) -> None:
        self.engine = engine
        self.timeout_s = timeout_s

    def servers(self) -> list[ServerStat]:
        return read_stats(self.engine.stats_url(), self.timeout_s)

    def command(self, line: str) -> str:
        reply = self.engine.haproxy_command(line).strip()
        if reply and not INITIAL.fullmatch(reply):
            raise RolloutError(f"HAProxy refused {line!r}: {reply[:200]}")
        return reply

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        if not 0 <= weight <= 256:
            raise RolloutError(f"weight {weight}: HAProxy takes 0..256")
        self.command(f"set weight {where(backend, server)} {weight}")

    def reset_weight(self, backend: str, server: str) -> None:
        """Back to the weight of HAProxy's configuration (`get weight` says it: 'N (initial M)')."""
        where_ = where(backend, server)
        match = INITIAL.fullmatch(self.command(f"get weight {where_}"))
        if match is None:
            raise RolloutError(f"HAProxy's `get weight {where_}` did not say its initial weight")
        self.command(f"set weight {where_} {match[1]}")


def where(backend: str, server: str) -> str:
    try:
        return f"{check_name('backend', backend)}/{check_name('server', server)}"
    except ConfigError as exc:
        raise RolloutError(str(exc)) from None


def reload_all(engine: Engine) -> list[str]:
    """Every HAProxy of the stack in turn; one line each. A HAProxy whose configuration does
    not load stops the reload there, before it is signalled."""
    return [reload(haproxy) for haproxy in engine.haproxies()]


def reload(haproxy: HAProxyHandle, timeout_s: float = RELOAD_TIMEOUT_S) -> str:
    """Check that the configuration loads (else nothing is signalled), hand the servers' states
    and addresses to the new worker (server-state-file: a stopped spare slot is not taken for
    UP), SIGUSR2 to the master, and wait for a new worker on the Runtime API. The listeners are
    handed over (`expose-fd listeners`) and the old worker finishes what it has."""
    alert = haproxy.config_alert()
    if alert is not None:
        raise RolloutError(f"{haproxy.name}: its configuration does not load, so nothing was "
                           f"reloaded: {alert.strip()[:300]}")
    old = worker_pid(haproxy.command("show info"))
    began = time.monotonic()
    try:
        if haproxy.state_file is not None:
            haproxy.put_state(haproxy.command("show servers state"))
        haproxy.signal_reload()
        new = wait_new_worker(lambda: haproxy.command("show info"), old, haproxy.name, timeout_s)
    finally:
        haproxy.drop_state()  # read at the new worker's start: never left to go stale
    return (f"{haproxy.name}: reloaded (master-worker, SIGUSR2): worker {old} -> {new} "
            f"in {time.monotonic() - began:.2f}s")


def worker_pid(show_info: str) -> str:
    """The worker's pid in HAProxy's `show info` (a reload makes a new worker: a new pid)."""
    for line in show_info.splitlines():
        if line.startswith("Pid: "):
            return line.split(": ", 1)[1].strip()
    raise RolloutError(f"no Pid in HAProxy's `show info`: {show_info.strip()[:200]!r}")


def wait_new_worker(show_info: Callable[[], str], old: str, name: str = "haproxy",
                    timeout_s: float = RELOAD_TIMEOUT_S) -> str:
    """After SIGUSR2 to HAProxy's master: until a new worker answers on the Runtime API; its pid."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid = worker_pid(show_info())
        except RolloutError:
            pid = old  # between the old worker letting go of the socket and the new one taking it
        if pid != old:
            return pid
        time.sleep(0.05)
    raise RolloutError(f"{name}: no new worker {timeout_s:g}s after SIGUSR2 (worker {old} still "
                       "answers): see its log; the old configuration still serves")
