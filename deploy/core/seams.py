"""What the deploy rules need from the world, as protocols: a clock, HAProxy, an engine.

The engines (deploy/engines) and the HAProxy door (deploy/door.py) implement these; the unit
tests fake them on virtual time (tests/unit/fakes.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from agent.haproxy import ServerStat
from deploy.model import Instance, Release


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Door(Protocol):
    """HAProxy as a deploy sees it: every server's row, and the weights the operator's tool sets."""

    def servers(self) -> list[ServerStat]: ...

    def set_weight(self, backend: str, server: str, weight: int) -> None: ...

    def reset_weight(self, backend: str, server: str) -> None:
        """Back to the weight of HAProxy's configuration."""


class Pending(Protocol):
    """A retire that may still be running (the local engine drains in the background)."""

    def done(self) -> bool: ...

    @property
    def error(self) -> str | None: ...


class Fleet(Protocol):
    """The engine's part in a deploy: start, stop and inspect instances."""

    def instances(self) -> list[Instance]: ...

    def settle(self) -> list[str]:
        """After a deploy the tool did not finish: let the stops it began end, remove what it
        left half-done; a line for each thing done."""

    def prepare(self, version: str | None, env: Mapping[str, str]) -> None: ...

    def replace(self, instances: list[Instance], version: str | None,
                env: Mapping[str, str]) -> list[Instance]: ...

    def add(self, instances: list[Instance], version: str | None,
            env: Mapping[str, str]) -> list[Instance]: ...

    def start_retire(self, instances: list[Instance]) -> Pending: ...

    def version_of(self, instance: Instance) -> str | None: ...

    def release_of(self, instance: Instance) -> Release | None:
        """What the engine started this instance with (None: not known to this engine)."""

    def incarnations(self, instances: list[Instance]) -> Mapping[str, str]:
        """An id per process or container life (a restart changes it); names the engine cannot
        tell are left out."""

    def start_failure(self, instance: Instance) -> str | None: ...

    def log_tail(self, instance: Instance, lines: int = 20) -> str: ...
