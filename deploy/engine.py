"""What `rollout` needs from a way of running the stack: local processes or docker compose."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

BACKEND = "app"


@dataclass(frozen=True)
class Instance:
    name: str  # supervisor program / compose service, e.g. app1
    server: str  # HAProxy server name in BACKEND
    backend: str = BACKEND


class Engine(Protocol):
    name: str

    def up(self) -> None:
        """Start HAProxy and every instance (callers then wait for each to be UP)."""

    def down(self) -> None:
        """Stop everything (instances drain first)."""

    def is_up(self) -> bool: ...

    def instances(self) -> list[Instance]: ...

    def stats_url(self) -> str:
        """HAProxy's read-only stats CSV (`.../stats;csv`)."""

    def frontend_url(self) -> str: ...

    def restart(self, instance: Instance, version: str | None, env: Mapping[str, str]) -> None:
        """Stop the instance (SIGTERM, wait, SIGKILL) and start it again, with a new
        version and extra environment when given. Returns once the new one was started."""

    def version_of(self, instance: Instance) -> str | None:
        """The version the running instance reports (None when it does not answer)."""

    def ledgers(self) -> list[Path]:
        """Files where instances record each processed POST's request id (may be empty)."""

    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        """The instance's last log lines, shown when it fails to come up."""
