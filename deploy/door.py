"""The deploy's door to HAProxy: every server's row from the read-only stats, and server
weights through the admin Runtime API (operators only; no app ever holds that right)."""

from __future__ import annotations

import re

from agent.errors import ConfigError
from agent.haproxy import ServerStat, check_name
from deploy.engines.base import Engine, read_stats
from deploy.errors import RolloutError

INITIAL = re.compile(r"\d+ \(initial (\d+)\)")


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
