"""`rollout status`: the stack as HAProxy and the engine see it, as a table or JSON, and
`--wait` until a deploy is done, as `kubectl rollout status`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from deploy.cli_stack import history_of, lock_path
from deploy.engines.base import Engine, by_instance, read_stats
from deploy.errors import RolloutError
from deploy.lock import holder
from deploy.strategies import bluegreen
from deploy.strategies.rolling import row_of

WAIT_POLL_S = 0.5


def snapshot(engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    """Who deploys, what did not finish, which pool is active, and each instance's row."""
    pages = engine.stats_pages()
    servers = {name: read_stats(url) for name, url in pages.items()}
    state: dict[str, Any] = {"engine": engine.name, "deploying": holder(lock_path(engine, args)),
                             "interrupted": None}
    try:
        last = history_of(engine, args).entries()[-1:]
    except RolloutError as exc:  # the servers are still worth showing
        last = []
        print(f"rollout: {exc}", file=sys.stderr)
    if last and last[0].result == "running" and not state["deploying"]:
        state["interrupted"] = f"#{last[0].number} ({last[0].action} {last[0].release})"
    if engine.blue_green and by_instance(engine):
        state["active"] = bluegreen.active_color(engine)
        state["map_file"] = bluegreen.file_color(engine)
    state["instances"] = []
    for instance in engine.instances():
        rows = {name: row_of(stats, instance) for name, stats in servers.items()}
        state["instances"].append({
            "name": instance.name, "pool": instance.backend, "address": instance.address,
            # per HAProxy: its state, sessions and queue for this instance
            "haproxy": {name: row.status if row else "missing" for name, row in rows.items()},
            "sessions": sum(row.scur for row in rows.values() if row),
            "queued": sum(row.qcur for row in rows.values() if row),
            "version": engine.version_of(instance)})
    return state


def table(state: dict[str, Any]) -> str:
    lines = []
    if state["deploying"]:
        lines.append(f"deploying: {state['deploying']}")
    elif state["interrupted"]:
        lines.append(f"interrupted: {state['interrupted']} did not finish, the tool died during it; "
                     "`rollout deploy VERSION` or `rollout undo` converges and completes")
    blue_green = "active" in state
    if blue_green:
        note = ("" if state["active"] == state["map_file"]
                else f" (map file says {state['map_file']}: a HAProxy restart would switch!)")
        lines.append(f"active: {state['active']}{note}")
    names = list(state["instances"][0]["haproxy"]) if state["instances"] else ["haproxy"]
    heads = ["HAPROXY"] if names == ["haproxy"] else [name.upper() for name in names]
    rows: list[tuple[str, ...]] = [(*(("POOL",) if blue_green else ()), "SERVER", *heads, "SESSIONS",
                                    "QUEUED", "VERSION")]
    for i in state["instances"]:
        rows.append((*((i["pool"],) if blue_green else ()), i["name"], *i["haproxy"].values(),
                     str(i["sessions"]), str(i["queued"]), i["version"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    return "\n".join(lines)


def not_done(state: dict[str, Any]) -> str | None:
    """Why `--wait` goes on waiting (None: done)."""
    if state["deploying"]:
        return f"a deploy holds the stack ({state['deploying']})"
    down = [f"{i['name']} {'/'.join(i['haproxy'].values())}" for i in state["instances"]
            if set(i["haproxy"].values()) != {"UP"}]
    if down or not state["instances"]:
        return f"not UP: {', '.join(down) or 'no instance'}"
    return None


def cmd_status(engine: Engine, args: argparse.Namespace) -> int:
    state = snapshot(engine, args)
    if args.wait:
        deadline, said = time.monotonic() + args.timeout, ""
        while (why := not_done(state)) is not None and not state["interrupted"]:
            if time.monotonic() >= deadline:
                raise RolloutError(f"not done after {args.timeout:g}s: {why}")
            if why != said:
                print(f"waiting: {why}", file=sys.stderr, flush=True)
                said = why
            time.sleep(WAIT_POLL_S)
            state = snapshot(engine, args)
    print(json.dumps(state, indent=2) if args.json else table(state))
    if args.wait and state["interrupted"]:
        raise RolloutError(f"{state['interrupted']} did not finish (the tool died during it): a deploy "
                           "or `rollout undo` completes it")
    return 0
