"""What `rollout` needs from a way of running the stack: local processes or docker compose."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deploy.errors import RolloutError

BACKEND = "app"
# A version is an image tag in compose: the same rule as Docker's (and deploy.sh's).
VERSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_ENV_VALUE = 4096
RELOAD_TIMEOUT_S = 15.0


def check_version(version: str) -> str:
    if not VERSION.fullmatch(version):
        raise RolloutError(f"version {version[:80]!r} is not a valid image tag (letters, digits, "
                           "'_', '.', '-'; at most 128; not starting with '.' or '-')", exit_code=2)
    return version


def check_env(env: Mapping[str, str]) -> Mapping[str, str]:
    """Extra environment for new instances: names a shell would accept, one-line values."""
    for key, value in env.items():
        if not ENV_KEY.fullmatch(key):
            raise RolloutError(f"--env {key[:80]!r}: not a variable name", exit_code=2)
        if any(c in value for c in "\n\r\0") or len(value) > MAX_ENV_VALUE:
            raise RolloutError(f"--env {key}: the value must be one line of at most "
                               f"{MAX_ENV_VALUE} characters", exit_code=2)
    return env


def worker_pid(show_info: str) -> str:
    """The worker's pid in HAProxy's `show info` (a reload makes a new worker: a new pid)."""
    for line in show_info.splitlines():
        if line.startswith("Pid: "):
            return line.split(": ", 1)[1].strip()
    raise RolloutError(f"no Pid in HAProxy's `show info`: {show_info.strip()[:200]!r}")


def wait_new_worker(show_info: Callable[[], str], old: str, timeout_s: float = RELOAD_TIMEOUT_S) -> str:
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
    raise RolloutError(f"no new HAProxy worker {timeout_s:g}s after SIGUSR2 (worker {old} still "
                       "answers): see HAProxy's log; the old configuration still serves")


@dataclass(frozen=True)
class Instance:
    """One running instance, found in HAProxy's stats by its address, as its agent finds itself."""

    name: str  # supervisor program (app1) or container name (zero-downtime-haproxy-app-2)
    address: str  # ip:port as HAProxy sees it
    backend: str = BACKEND


class Engine(Protocol):
    """A stack that `rollout` can start, inspect and restart; every command takes one of these."""

    name: str  # the --engine value: local or docker
    # A surge may start the next batch while the last one drains: `retire` can run in another
    # thread while `add` starts other instances (the local engine; compose counts containers
    # to scale, so there one step ends before the next begins).
    overlapping_retire: bool

    @property
    def root(self) -> Path:
        """Where the stack is defined: the local state directory, or the compose file's directory
        (named in messages such as "a stack is already running from ...")."""

    @property
    def blue_green(self) -> bool:
        """Whether this is the two-pool stack (blue1 blue2 green1 green2 behind a map switch)."""

    @property
    def color_map(self) -> Path:
        """Blue/green only: the map file as rollout writes it (on this machine)."""

    @property
    def color_map_ref(self) -> str:
        """Blue/green only: the map as HAProxy names it (its path inside HAProxy's container, if any)."""

    def haproxy_command(self, line: str) -> str:
        """One command on HAProxy's Runtime API (never published); HAProxy's answer."""

    def up(self) -> None:
        """Start HAProxy and every instance (callers then wait for each to be UP)."""

    def down(self) -> None:
        """Stop everything (instances drain first)."""

    def reload(self) -> list[str]:
        """Reload every HAProxy's configuration without a restart, one after the other: check
        that it loads (else nothing is signalled), hand the servers' states to the new worker
        (server-state-file), SIGUSR2 to the master (master-worker), wait for the new worker; the
        listeners are handed over (`expose-fd listeners`) and the old worker finishes what it
        has. One line per HAProxy reloaded."""

    def is_up(self) -> bool: ...

    def instances(self) -> list[Instance]: ...

    def stats_url(self) -> str:
        """HAProxy's read-only stats CSV (`.../stats;csv`)."""

    def frontend_url(self) -> str: ...

    def replace(
        self, instances: list[Instance], version: str | None, env: Mapping[str, str]
    ) -> list[Instance]:
        """Stop-first: stop the instances together (SIGTERM: each agent drains its server; then
        SIGKILL after the grace period) and start their replacements, with a new version and
        extra environment when given. Returns the replacements (a container gets a new name
        and address) once started; they may not be ready yet."""

    def add(self, instances: list[Instance], version: str | None, env: Mapping[str, str]) -> list[Instance]:
        """Surge: one new instance beside each of `instances`, in its backend (a spare slot, one
        more container); returns them once started, maybe not ready yet."""

    def retire(self, instances: list[Instance]) -> None:
        """Stop the instances together, each draining first, and wait until all are gone."""

    def prepare(self, version: str | None, env: Mapping[str, str]) -> None:
        """Before any restart: whatever a new version needs (the docker engine builds its image),
        so that the restarts themselves measure only stops and starts."""

    def version_of(self, instance: Instance) -> str | None:
        """The version the running instance reports (None when it does not answer)."""

    def start_failure(self, instance: Instance) -> str | None:
        """Why the instance gave up starting (its agent exited: command not found, app exited,
        never ready), in one line; None while it may still come up."""

    def ledgers(self) -> list[Path]:
        """Files where instances record each processed POST's request id (may be empty)."""

    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        """The instance's last log lines, shown when it fails to come up."""
