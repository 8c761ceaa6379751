"""What every section gets: how many runs, quick or full, and the version counter for deploys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from bench.measure import Versions


@dataclass
class Context:
    runs: int
    quick: bool
    keep_dirs: bool = False
    versions: Versions = field(default_factory=Versions)


T = TypeVar("T")


def order(items: list[T], run: int) -> list[T]:
    """Rotate the variants' order from run to run, so none is always first (or last) on a drifting machine."""
    shift = run % len(items) if items else 0
    return items[shift:] + items[:shift]
