"""Types every layer of deploy/ shares: imported downwards only (engines, core, check, CLI)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

BACKEND = "app"


@dataclass(frozen=True)
class Instance:
    """One running instance, found in HAProxy's stats by its address, as its agent finds itself."""

    name: str  # supervisor program (app1) or container name (zero-downtime-haproxy-app-2)
    address: str  # ip:port as HAProxy sees it
    backend: str = BACKEND


@dataclass(frozen=True)
class Release:
    """What an instance runs: its version and the extra environment it was started with."""

    version: str
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __str__(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        return f"{self.version} ({extra})" if extra else self.version

    def as_dict(self) -> dict[str, object]:
        return {"version": self.version, "env": dict(self.env)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Release:
        env = data.get("env") or {}
        if not isinstance(data.get("version"), str) or not isinstance(env, dict):
            raise ValueError(f"not a release: {dict(data)!r:.200}")
        return cls(str(data["version"]), MappingProxyType({str(k): str(v) for k, v in env.items()}))


@dataclass
class Event:
    """One step of a deploy, for progress lines and the report's timeline."""

    at: float  # time.time()
    instance: str
    name: str  # restart, started, ready, failed, stopped, weight, watch, rollback, ...
    detail: str = ""


@dataclass
class RestartResult:
    """What a deploy did: its events, each new instance's restart -> ready time, and why it
    halted (None: it completed). `rolled_back`: the new instances were put back."""

    events: list[Event] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    rolled_back: bool = False
