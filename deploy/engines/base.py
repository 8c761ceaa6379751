"""What `rollout` needs from a way of running the stack: local processes, docker compose or Swarm."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeGuard

from agent.errors import HAProxyError
from agent.haproxy import ServerStat, StatsPage
from deploy.errors import RolloutError
from deploy.model import BACKEND, Event, Instance, Release, RestartResult

__all__ = ["BACKEND", "Engine", "Finished", "HAProxyHandle", "InThread", "Instance", "InstanceEngine",
           "Release", "SelfUpdatingEngine", "by_instance", "check_env", "check_version", "read_stats",
           "self_updating"]
# A version is an image tag in compose: the same rule as Docker's (and deploy.sh's).
VERSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_ENV_VALUE = 4096


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


def read_stats(url: str, timeout_s: float = 2.0) -> list[ServerStat]:
    """Every server row of HAProxy's read-only stats CSV at `url`."""
    try:
        return asyncio.run(StatsPage(url, timeout_s=timeout_s).servers())
    except HAProxyError as exc:
        raise RolloutError(str(exc)) from None


class HAProxyHandle(Protocol):
    """One HAProxy of the stack, as only its engine can reach it: the Runtime API, a check of its
    configuration, the file its next worker starts from, and its master's signal. deploy/door.py
    does the rest (reads, weights, maps, reloads) the same way for every engine."""

    name: str

    def command(self, line: str) -> str:
        """One Runtime API command (never published: owners and operators only); the answer."""

    def config_alert(self) -> str | None:
        """Why its configuration would not load (`haproxy -c`'s alert); None: it loads."""

    @property
    def state_file(self) -> str | None:
        """Where a new worker reads the servers' states (server-state-file); None: nowhere."""

    def put_state(self, text: str) -> None:
        """Write `show servers state` where the next worker reads it, whole or not at all."""

    def drop_state(self) -> None:
        """Remove it: a stale file would hand an old state to a later worker."""

    def signal_reload(self) -> None:
        """SIGUSR2 to the master (master-worker): a new worker, the listeners handed over."""


class Finished:
    """A retire that ran to its end before `start_retire` returned (compose: one step at a time)."""

    def __init__(self, error: str | None = None) -> None:
        self.error = error

    def done(self) -> bool:
        return True


class InThread:
    """A retire running in a thread: the deploy watches and starts the next batch meanwhile."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self.thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # reported through `error`, never lost with the thread
            self.error = str(exc) or type(exc).__name__

    def done(self) -> bool:
        return not self.thread.is_alive()


class Engine(Protocol):
    """A stack that `rollout` can start, inspect and restart; every command takes one of these."""

    name: str  # the --engine value: local, docker or swarm
    # Declared, never faked: True where an orchestrator replaces the instances itself (Swarm: its
    # own rolling update, monitor and rollback), so that the instance-by-instance commands of an
    # InstanceEngine do not exist and the CLI refuses what needs them in one line.
    updates_itself: bool

    @property
    def root(self) -> Path:
        """Where the stack is defined: the local state directory, or the compose file's directory
        (named in messages such as "a stack is already running from ...")."""

    @property
    def blue_green(self) -> bool:
        """Whether this is the two-pool stack (blue1 blue2 green1 green2 behind a map switch)."""

    def haproxy_command(self, line: str) -> str:
        """One command on HAProxy's Runtime API (never published); HAProxy's answer. The first
        HAProxy's, where there are several."""

    def haproxies(self) -> list[HAProxyHandle]:
        """Every HAProxy of the stack (Swarm has two), as door.reload and the reads take them."""

    def up(self) -> None:
        """Start HAProxy and every instance (callers then wait for each to be UP)."""

    def down(self) -> None:
        """Stop everything (instances drain first)."""

    def is_up(self) -> bool: ...

    def instances(self) -> list[Instance]: ...

    def stats_url(self) -> str:
        """HAProxy's read-only stats CSV (`.../stats;csv`); the first one's, where there are several."""

    def stats_pages(self) -> dict[str, str]:
        """Every HAProxy of the stack by name, and its stats CSV (Swarm has two)."""

    def frontend_url(self) -> str: ...

    @property
    def stack_id(self) -> str:
        """The stack's name among others of its engine (compose project, Swarm stack)."""

    def check_release(self, version: str | None, env: Mapping[str, str]) -> None:
        """Refuse in one line, before anything is recorded or changed, a version or environment
        this engine could not pass to the app as given."""

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


class InstanceEngine(Engine, Protocol):
    """An engine our rules drive one instance at a time (deploy.core.deploy): local, docker."""

    @property
    def color_map(self) -> Path:
        """Blue/green only: the map file as rollout writes it (on this machine)."""

    @property
    def color_map_ref(self) -> str:
        """Blue/green only: the map as HAProxy names it (its path inside HAProxy's container, if any)."""

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

    def start_retire(self, instances: list[Instance]) -> InThread | Finished:
        """retire(), in the background where the engine allows it (the local engine: a surge's
        next batch boots while the last one drains; compose counts containers to scale, so
        there it finishes before returning)."""

    def release_of(self, instance: Instance) -> Release | None:
        """The version and extra environment this engine started the instance with (None: not
        known), so that a rollback puts back exactly that."""

    def incarnations(self, instances: list[Instance]) -> Mapping[str, str]:
        """An id per process or container life (a restart changes it); instances the engine
        cannot tell about are left out."""

    def settle(self) -> list[str]:
        """After a deploy the tool did not live to finish: let the stops it began end and remove
        what it left half-done (a stopped container); one line per thing done."""


class SelfUpdatingEngine(Engine, Protocol):
    """An engine whose orchestrator rolls a release out itself and keeps the spec before it."""

    def replicas(self) -> int: ...

    def update(self, version: str | None, env: Mapping[str, str], timeout_s: float,
               report: Callable[[Event], None], *, order: str | None = None, parallelism: int | None = None,
               monitor: float | None = None, failure_action: str | None = None) -> RestartResult:
        """Its own rolling update to `version` (None: the running one again), watched until every
        instance serves it and is UP in every HAProxy, or until it rolled back (the result's error).
        `order`, `parallelism`, `monitor` and `failure_action`: rollout's --surge, --max-unavailable,
        --watch-for and --no-rollback in the orchestrator's terms; None keeps the stack's."""

    def undo(self, timeout_s: float, report: Callable[[Event], None]) -> RestartResult:
        """Its own return to the spec before the last update, watched as an update is; refused in
        one line when it has none."""


def by_instance(engine: Engine) -> TypeGuard[InstanceEngine]:
    return not engine.updates_itself


def self_updating(engine: Engine) -> TypeGuard[SelfUpdatingEngine]:
    return engine.updates_itself
