"""Watching new instances from the moment they are UP: does any leave UP, restart, or do worse
than the old version in the same seconds? Pure: it is handed each read of HAProxy's stats."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.haproxy import ServerStat
from deploy.core.analysis import Figures, Thresholds, delta, judge, total
from deploy.model import Instance


@dataclass
class Watched:
    instance: Instance
    since: ServerStat  # its row when it became UP
    window: ServerStat  # its row when the current window began
    incarnation: str | None


def key(stat: ServerStat) -> tuple[str, str]:
    return stat.backend, stat.addr


class Watch:
    """The new instances under watch, and the old servers they are compared with.

    A window starts at `mark()` (each canary step) or when the watch starts; the new servers'
    figures are their counters' growth since, and the old servers' figures add up the growth
    of each one while it is UP, so a drained or stopped old server stops counting. When no old
    server served in the window (the last batch), the old version's figures since the deploy
    began stand in."""

    def __init__(self, thresholds: Thresholds, old_backends: set[str] | None = None) -> None:
        """`old_backends`: where the old version serves (blue/green: the other pool; default:
        the backends of the new instances)."""
        self.thresholds = thresholds
        self.old_backends = old_backends
        self.new: dict[tuple[str, str], Watched] = {}
        self.fresh: set[tuple[str, str]] = set()  # started by this deploy: never counted as old
        self.last: dict[tuple[str, str], ServerStat] = {}
        self.old_window = Figures()
        self.old_deploy = Figures()
        self.marked = False  # a window began (a canary step); else the old figures are the deploy's

    def add(self, instance: Instance, stat: ServerStat, incarnation: str | None) -> None:
        self.new[(instance.backend, instance.address)] = Watched(instance, stat, stat, incarnation)

    def expect(self, instance: Instance) -> None:
        """A new instance was started here: from now on its row is not the old version's."""
        self.fresh.add((instance.backend, instance.address))

    def drop(self, instance: Instance) -> None:
        self.new.pop((instance.backend, instance.address), None)

    @property
    def instances(self) -> list[Instance]:
        return [w.instance for w in self.new.values()]

    def mark(self, stats: list[ServerStat]) -> None:
        rows = {key(s): s for s in stats}
        for watched in self.new.values():
            watched.window = rows.get((watched.instance.backend, watched.instance.address), watched.window)
        self.old_window = Figures()
        self.marked = True

    def figures(self, stats: list[ServerStat]) -> tuple[Figures, Figures]:
        """(the new servers' figures in this window, the old version's to compare with)."""
        rows = {key(s): s for s in stats}
        new = total(delta(rows[k], w.window) for k, w in self.new.items() if k in rows)
        return new, self.old_window if self.old_window.requests else self.old_deploy

    def describe(self, stats: list[ServerStat]) -> str:
        new, old = self.figures(stats)
        since = ("over the deploy" if not self.marked else "in this window" if self.old_window.requests
                 else "over the deploy (none served in this window)")
        return f"new {new}; old {since} {old}"

    def observe(self, stats: list[ServerStat], incarnations: Mapping[str, str],
                latency: bool = False) -> str | None:
        """Why the watch fails, naming the instance and the figure; None while all is well."""
        backends = (self.old_backends or {w.instance.backend for w in self.new.values()}
                    or {s.backend for s in stats})
        for stat in stats:
            k = key(stat)
            if stat.backend in backends and stat.addr and k not in self.fresh and stat.status == "UP":
                grew = delta(stat, self.last.get(k)) if k in self.last else Figures()
                self.old_window = self.old_window + grew
                self.old_deploy = self.old_deploy + grew
            self.last[k] = stat
        rows = {key(s): s for s in stats}
        for k, watched in self.new.items():
            name, row = watched.instance.name, rows.get(k)
            if row is None:
                return f"[{name}] is gone from HAProxy"
            if not row.status.startswith("UP"):
                check = f" ({row.check})" if row.check else ""
                return f"[{name}] left UP: HAProxy says {row.status}{check}"
            if row.chkdown > watched.since.chkdown:
                downs = row.chkdown - watched.since.chkdown
                return f"[{name}] went DOWN in HAProxy {downs} time(s) since it was UP"
            now = incarnations.get(name)
            if watched.incarnation is not None and now is not None and now != watched.incarnation:
                return f"[{name}] restarted (was {watched.incarnation}, now {now}): it crashed or exited"
        if not self.new:
            return None
        new, old = self.figures(stats)
        why = judge(new, old, self.thresholds, latency)
        if why is None:
            return None
        names = ", ".join(w.instance.name for w in self.new.values())
        return f"[{names}] {why}"
