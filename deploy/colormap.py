"""The blue/green map file: which pool is active, as HAProxy reads it at start (`map` in
bluegreen.cfg). Written atomically and kept readable by HAProxy (0644) whatever the umask: an
unreadable map would keep HAProxy from starting at all."""

from __future__ import annotations

from pathlib import Path

from deploy.errors import RolloutError
from deploy.statefile import write_atomic

COLORS = ("blue", "green")
MAP_KEY = "active"


def read_map(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RolloutError(f"cannot read {path}: {exc.strerror or exc}") from None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == MAP_KEY and value.strip() in COLORS:
            return value.strip()
    raise RolloutError(f"{path} has no '{MAP_KEY} blue|green' line")


def write_map(path: Path, color: str) -> None:
    """A reader (HAProxy at start) sees the old file or the new one, never half."""
    write_atomic(path, f"{MAP_KEY} {color}\n", mode=0o644)
