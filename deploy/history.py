"""Each deploy's record: what it changed, when, and how it ended; `rollout history` and `undo`.

One JSON file per stack, rewritten atomically after each deploy (deploy.statefile), newest
last, at most MAX_ENTRIES kept. `undo` deploys the release that ran before the last deploy
that succeeded, as `kubectl rollout undo` does: a second undo returns to where the first began.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deploy.errors import RolloutError
from deploy.model import Release
from deploy.statefile import read_json, write_json

MAX_ENTRIES = 100
RESULTS = ("ok", "rolled-back", "halted", "running", "interrupted")
CHANGES = ("up", "deploy", "undo")  # the actions that change the release (not a restart)


@dataclass(frozen=True)
class Entry:
    number: int
    action: str  # up, deploy, undo, restart
    release: Release
    previous: Release | None  # what ran before (None: unknown, or the first release)
    started: float
    ended: float | None
    result: str  # ok, rolled-back, halted, running (now, or the tool died), interrupted
    detail: str = ""
    size: int | None = None  # how many instances the stack had when it began (None: not known)

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "action": self.action, "release": self.release.as_dict(),
                "previous": self.previous.as_dict() if self.previous else None,
                "started": self.started, "ended": self.ended, "result": self.result,
                "detail": self.detail, "size": self.size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        previous = data.get("previous")
        return cls(int(data["number"]), str(data["action"]), Release.from_dict(data["release"]),
                   Release.from_dict(previous) if previous else None, float(data["started"]),
                   None if data.get("ended") is None else float(data["ended"]),
                   str(data["result"]), str(data.get("detail", "")),
                   None if data.get("size") is None else int(data["size"]))


class History:
    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[Entry]:
        try:
            data = read_json(self.path, f"move it aside to start a new history ({self.path})")
        except FileNotFoundError:
            return []
        try:
            return [Entry.from_dict(item) for item in data]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RolloutError(f"{self.path} is damaged ({str(exc)[:120]}); move it aside to start a "
                               "new history") from None

    def save(self, entries: list[Entry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, [e.as_dict() for e in entries[-MAX_ENTRIES:]])

    def begin(self, action: str, release: Release, previous: Release | None,
              size: int | None = None) -> Entry:
        """Recorded before anything changes: a deploy the tool did not live to finish shows as
        'running' in `history`, so the next command can tell (and knows the size to restore)."""
        entries = self.entries()
        entry = Entry((entries[-1].number + 1) if entries else 1, action, release, previous,
                      time.time(), None, "running", size=size)
        self.save([*entries, entry])
        return entry

    def end(self, entry: Entry, result: str, detail: str = "") -> None:
        self.save([e if e.number != entry.number else replace(e, ended=time.time(), result=result,
                                                               detail=detail[:500])
                   for e in self.entries()])

    def interrupted(self) -> Entry | None:
        """The last entry when it is still 'running'. Asked by a command that holds the deploy
        lock, so its tool is gone: killed, or the machine stopped, in the middle of it."""
        entries = self.entries()
        return entries[-1] if entries and entries[-1].result == "running" else None

    def undo_target(self) -> tuple[Entry, Release]:
        """The last deploy that was not rolled back (done, halted or interrupted: the fleet may
        be on it, or part of it) and the release that ran before it."""
        for entry in reversed(self.entries()):
            if entry.action in CHANGES and entry.result != "rolled-back":
                if entry.previous is None:
                    raise RolloutError(f"nothing to undo: #{entry.number} ({entry.action} "
                                       f"{entry.release}) is the first release this history knows")
                return entry, entry.previous
        raise RolloutError(f"nothing to undo: no deploy in {self.path}")


def table(entries: list[Entry]) -> str:
    rows = [("#", "WHEN", "ACTION", "RELEASE", "PREVIOUS", "RESULT")]
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.started))
        rows.append((str(e.number), when, e.action, str(e.release), str(e.previous or "-"), e.result))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
