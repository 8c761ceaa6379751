"""What a deploy is asked to do (`Plan`), what it changed (`Change`), why it stops (`Halt`),
and the pure reads of HAProxy's rows the rules make."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agent.haproxy import ServerStat
from deploy.core.analysis import Thresholds
from deploy.core.seams import Pending
from deploy.errors import RolloutError
from deploy.model import Instance, Release


@dataclass(frozen=True)
class Plan:
    version: str | None  # None: each instance keeps its version (a restart)
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout_s: float = 90.0  # per batch: start -> UP on the new version
    instances: tuple[Instance, ...] | None = None  # default: all of them
    guard: bool = True  # never stop the last UP server of a backend
    surge: bool = False
    max_unavailable: str = "1"
    watch_s: float = 0.0
    min_ready_s: float = 0.0  # each batch stays UP (watched) this long before the next one starts
    canary: tuple[float, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    rollback: bool = False
    repair: Repair | None = None  # a deploy the tool did not finish: converge first
@dataclass(frozen=True)
class Repair:
    """What a deploy the tool did not live to finish may have left, and what to converge to:
    `size` instances (missing ones started on `fill`, the release before it; extras retired)."""

    size: int
    fill: Release
    interrupted: Release  # what it was putting in: extras on it go first


@dataclass
class Change:
    """One old instance and its replacement. `old_serving`: surge, the old one still serves
    (until its retire is done); `pending`: its retire, in the background."""

    old: Instance
    new: Instance
    previous: Release | None
    old_serving: bool
    pending: Pending | None = None
class Halt(Exception):
    def __init__(self, why: str, tail: str = "") -> None:
        super().__init__(why)
        self.why = why
        self.tail = tail
def batch_size(max_unavailable: str, total: int) -> int:
    """`--max-unavailable`: a count ("3") or a share of the instances ("25%"), at least 1."""
    match = re.fullmatch(r"(\d{1,6})(%?)", max_unavailable.strip())
    if not match or int(match[1]) < 1 or (match[2] and int(match[1]) > 100):
        raise RolloutError(f"--max-unavailable {max_unavailable[:40]!r}: expected a count such as 2 "
                           "or a share such as 25%", exit_code=2)
    size = total * int(match[1]) // 100 if match[2] else int(match[1])
    return max(1, min(size, total))
def row_of(stats: list[ServerStat], instance: Instance) -> ServerStat | None:
    """The instance's row, by its address (as its agent finds it)."""
    for stat in stats:
        if stat.backend == instance.backend and stat.addr == instance.address:
            return stat
    return None
def others_up(stats: list[ServerStat], batch: list[Instance]) -> int:
    """UP servers of the batch's backend that are not in the batch."""
    leaving = {i.address for i in batch}
    return sum(1 for s in stats if s.backend == batch[0].backend and s.addr not in leaving
               and s.status == "UP")
