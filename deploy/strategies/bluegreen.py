"""Blue/green: two pools behind a map switch in HAProxy, persisted so a restart keeps it.

HAProxy's `set map` lives in memory only: a restart or reload reads the map file again.
So a switch does both, in this order: `set map` (traffic moves at once), then the file
(write + rename, atomic). It refuses a pool that is not entirely UP, and afterwards
waits for the old pool to finish its requests, which then stays warm for a rollback.
A release watches the new pool after its switch (deploy.core.watch: a server that leaves
UP or restarts, or answers worse than the old pool did during the release) and switches
back by itself when it fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deploy.colormap import COLORS, MAP_KEY, read_map, write_map
from deploy.core.analysis import Thresholds
from deploy.core.watch import Watch
from deploy.engines.base import Instance, InstanceEngine
from deploy.errors import RolloutError
from deploy.strategies.rolling import Event, read_servers, rolling_restart, row_of

__all__ = ["COLORS", "MAP_KEY", "active_color", "file_color", "release", "switch", "write_map"]


@dataclass
class SwitchResult:
    old: str
    new: str
    drained_s: float  # until the old pool had no session and no queued request


def other(color: str) -> str:
    return COLORS[1 - COLORS.index(color)]


def check_color(color: str) -> str:
    if color not in COLORS:
        raise RolloutError(f"unknown color {color!r}: use blue or green", exit_code=2)
    return color


def file_color(engine: InstanceEngine) -> str:
    return read_map(engine.color_map)


def active_color(engine: InstanceEngine) -> str:
    """What HAProxy uses now (`show map`), which a restart would replace by the file's."""
    reply = engine.haproxy_command(f"show map {engine.color_map_ref}")
    for line in reply.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == MAP_KEY and parts[2] in COLORS:
            return parts[2]
    raise RolloutError(
        f"HAProxy's map {engine.color_map_ref} has no '{MAP_KEY}' entry: {reply.strip()[:200]!r}"
    )


def switch(
    engine: InstanceEngine, color: str, say: Callable[[str], None], drain_timeout_s: float = 60.0
) -> SwitchResult:
    check_color(color)
    # Every server of the pool that has an address (compose: the slots DNS filled) must be UP,
    # and every instance of the pool must have such a row (a stopped container has none).
    servers = [stat for stat in read_servers(engine, color) if stat.addr]
    not_up = {stat.server: stat.status for stat in servers if stat.status != "UP"}
    missing = [i.name for i in engine.instances() if i.backend == color
               and i.address not in {stat.addr for stat in servers}]
    if not servers or not_up or missing:
        detail = ", ".join([f"{name} ({status})" for name, status in not_up.items()]
                           + [f"{name} (not in HAProxy)" for name in missing]) or "no servers"
        raise RolloutError(f"refusing to switch to {color}: not UP and ready: {detail}")
    old = active_color(engine)
    if old == color:
        write_map(engine.color_map, color)
        say(f"{color} is already active")
        return SwitchResult(old, color, 0.0)
    # The file first: if HAProxy then refuses, the file goes back, and neither says `color`.
    write_map(engine.color_map, color)
    try:
        reply = engine.haproxy_command(f"set map {engine.color_map_ref} {MAP_KEY} {color}").strip()
    except RolloutError as exc:
        # No answer (a timeout) does not say whether HAProxy applied it: its map, read back, does.
        try:
            live = active_color(engine)
        except RolloutError:
            raise RolloutError(f"the switch to {color} got no answer from HAProxy ({exc}) and its map "
                               f"cannot be read back; {engine.color_map} says {color}: check "
                               "`rollout status` before anything else") from None
        if live != color:
            write_map(engine.color_map, old)
            raise
        reply = ""
    if reply:
        write_map(engine.color_map, old)
        raise RolloutError(f"HAProxy refused the switch to {color}: {reply[:200]}")
    switched = time.monotonic()
    say(f"switched: {old} -> {color} (HAProxy and {engine.color_map})")
    deadline = switched + drain_timeout_s
    last_report = 0.0
    while True:
        busy = sum(stat.busy for stat in read_servers(engine, old))
        now = time.monotonic()
        if busy == 0:
            break
        if now > deadline:
            say(f"warning: {old} still has {busy} sessions after {drain_timeout_s:g}s; leaving them")
            break
        if now - last_report >= 1.0:
            say(f"waiting for {old} to finish: {busy} sessions")
            last_report = now
        time.sleep(0.05)
    drained_s = time.monotonic() - switched
    say(f"{old} drained in {drained_s:.2f}s; it stays up for a rollback (`rollout switch {old}`)")
    return SwitchResult(old, color, drained_s)


def release(
    engine: InstanceEngine,
    version: str,
    env: Mapping[str, str],
    timeout_s: float,
    report: Callable[[Event], None],
    say: Callable[[str], None],
    watch_s: float = 0.0,
    thresholds: Thresholds | None = None,
    switch_back: bool = True,
) -> SwitchResult:
    """Deploy `version` to the idle pool, one instance at a time, switch to it, and watch it
    for `watch_s`; on a failure switch back (unless not `switch_back`) and raise."""
    active = active_color(engine)
    idle = other(active)
    say(f"releasing {version} to {idle}")
    watch = Watch(thresholds or Thresholds(), old_backends={active})
    watch.observe(read_servers(engine), {})  # the active pool's counters from here on
    pool = [i for i in engine.instances() if i.backend == idle]
    result = rolling_restart(engine, version, env, timeout_s, report, pool, guard=False)
    if result.error:
        raise RolloutError(f"{result.error}\nno switch: traffic stays on {active}")
    watch.observe(read_servers(engine), {})  # what the old pool did while the new one was made
    switched = switch(engine, idle, say)
    if watch_s > 0:
        watch_pool(engine, watch, pool, watch_s, say, active if switch_back else None)
    return switched


def watch_pool(engine: InstanceEngine, watch: Watch, pool: list[Instance], watch_s: float,
               say: Callable[[str], None], back_to: str | None) -> None:
    """The new pool, watched for `watch_s` after the switch; a failure switches to `back_to`."""
    stats = read_servers(engine)
    lives = engine.incarnations(pool)
    for instance in pool:
        watch.expect(instance)
        if (row := row_of(stats, instance)) is not None:
            watch.add(instance, row, lives.get(instance.name))
    watch.mark(stats)
    say(f"watching {pool[0].backend} for {watch_s:g}s")
    end = time.monotonic() + watch_s
    why = None
    while why is None and time.monotonic() < end:
        time.sleep(0.05)
        try:
            stats = read_servers(engine)
        except RolloutError:
            continue  # HAProxy restarting: the deadline still runs
        why = watch.observe(stats, engine.incarnations(pool))
    if why is None:
        why = watch.observe(read_servers(engine), engine.incarnations(pool), latency=True)
    if why is None:
        say(f"watch passed: {watch.describe(stats)}")
        return
    if back_to is None:
        raise RolloutError(f"watch failed: {why}\nno switch back (--no-rollback): "
                           f"`rollout switch {other(pool[0].backend)}` returns to the old pool")
    switch(engine, back_to, say)
    raise RolloutError(f"watch failed: {why}\nswitched back to {back_to}, which kept running the "
                       "release before")
