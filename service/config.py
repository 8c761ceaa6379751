"""Service settings, read from the environment and checked once at start."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

# HAProxy takes an instance out after two failed readiness checks 200 ms apart (haproxy.cfg):
# without the agent's notice, the service keeps refusing (and its listener open) this long.
NO_NOTICE_LINGER_S = 1.0


class ConfigError(ValueError):
    """A setting is missing or out of range; the message names the variable and the fix."""


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    version: str = "v1"
    instance: str = "app"
    host: str = "127.0.0.1"
    port: int = 8000
    warmup_s: float = 0.0  # readiness stays 503 this long after start
    shutdown_timeout_s: float = 20.0  # longest wait for in-flight requests after SIGTERM
    # Keep refusing new requests at least this long after SIGTERM, so that HAProxy has taken the
    # instance out before its listener closes. None: 0 after the drain notice (SIGUSR1: the
    # agent saw HAProxy send no new work here), else NO_NOTICE_LINGER_S.
    drain_linger_s: float | None = None
    keep_alive_s: float = 75.0  # above HAProxy's idle-pool purge, so HAProxy closes first
    max_body_bytes: int = 1_048_576
    # Append each processed POST's request id here, and each WebSocket message as ws:<client>:<seq>
    # (tests: exactly once, proven from the instances' ledgers)
    post_ledger: str | None = None
    access_log: bool = False
    # A bad release on purpose, to try the deploy's watch and rollback: the process exits (1)
    # this long after it is ready, every time it starts; /cms answers 500 to this share.
    fault_crash_after_s: float | None = None
    fault_error_share: float = 0.0

    def __post_init__(self) -> None:
        if not self.version or not self.instance:
            raise ConfigError("SERVICE_VERSION and SERVICE_INSTANCE must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"SERVICE_PORT={self.port} is not a TCP port (1..65535)")
        for name, value in (
            ("SERVICE_WARMUP_S", self.warmup_s),
            ("SERVICE_SHUTDOWN_TIMEOUT_S", self.shutdown_timeout_s),
            ("SERVICE_DRAIN_LINGER_S", 0.0 if self.drain_linger_s is None else self.drain_linger_s),
            ("SERVICE_KEEP_ALIVE_S", self.keep_alive_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name}={value} must be a finite number of seconds >= 0")
        if self.fault_crash_after_s is not None and (
                not math.isfinite(self.fault_crash_after_s) or self.fault_crash_after_s < 0):
            raise ConfigError(f"SERVICE_FAULT_CRASH_AFTER_S={self.fault_crash_after_s} must be >= 0 seconds")
        if not 0 <= self.fault_error_share <= 1:
            raise ConfigError(f"SERVICE_FAULT_ERROR_SHARE={self.fault_error_share} must be 0..1")
        if self.max_body_bytes < 1:
            raise ConfigError(f"SERVICE_MAX_BODY_BYTES={self.max_body_bytes} must be >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        env = os.environ if env is None else env

        def number(name: str, default: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number") from None

        def integer(name: str, default: int) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not an integer") from None

        return cls(
            version=env.get("SERVICE_VERSION", "v1"),
            instance=env.get("SERVICE_INSTANCE") or socket.gethostname(),
            host=env.get("SERVICE_HOST", "127.0.0.1"),
            port=integer("SERVICE_PORT", 8000),
            warmup_s=number("SERVICE_WARMUP_S", 0.0),
            shutdown_timeout_s=number("SERVICE_SHUTDOWN_TIMEOUT_S", 20.0),
            drain_linger_s=(number("SERVICE_DRAIN_LINGER_S", 0.0)
                            if env.get("SERVICE_DRAIN_LINGER_S") else None),
            keep_alive_s=number("SERVICE_KEEP_ALIVE_S", 75.0),
            max_body_bytes=integer("SERVICE_MAX_BODY_BYTES", 1_048_576),
            post_ledger=env.get("SERVICE_POST_LEDGER") or None,
            access_log=env.get("SERVICE_ACCESS_LOG", "0").lower() in ("1", "true", "yes"),
            fault_crash_after_s=(number("SERVICE_FAULT_CRASH_AFTER_S", 0.0)
                                 if env.get("SERVICE_FAULT_CRASH_AFTER_S") else None),
            fault_error_share=number("SERVICE_FAULT_ERROR_SHARE", 0.0),
        )
