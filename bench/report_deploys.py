"""RESULTS.md's deploy parts: surge (section 5), long-lived streams through a deploy (6), and a
bad release caught and rolled back (7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.report_format import deploy_seconds, header, notes, posts_ok, table
from bench.summary import Record, median, pick, spread, where


def window(records: Sequence[Record], which: str, key: str, digits: int = 0) -> str:
    return spread(pick([r.get("windows") or {} for r in records], which, key), digits)


def window_ratio(records: Sequence[Record], key: str) -> str:
    ratios = [w["deploy"][key] / w["steady"][key] for r in records
              if (w := r.get("windows")) and w["deploy"].get(key) is not None and w["steady"].get(key)]
    return spread(ratios, 2)


def surge_part(data: dict[str, Any]) -> list[str]:
    runs = data.get("runs", [])
    lines = header(data, 5)
    lines += ["### (a) Capacity: stop-first and surge side by side (3 instances)", ""]
    rows = []
    for variant in data.get("variants", []):
        chosen = where(runs, part="capacity", variant=variant)
        if chosen:
            rows.append((variant, len(chosen), spread(pick(chosen, "load", "requests")),
                         spread(pick(chosen, "load", "failed")), deploy_seconds(chosen),
                         window(chosen, "deploy", "rps"), window(chosen, "steady", "rps"),
                         window_ratio(chosen, "rps"), window(chosen, "deploy", "p99_ms"),
                         window(chosen, "steady", "p99_ms"), window_ratio(chosen, "p99_ms"),
                         posts_ok(chosen)))
    lines += table(["deploy", "runs", "requests", "failed", "deploy s", "req/s during", "req/s steady",
                    "ratio", "p99 ms during", "p99 ms steady", "ratio", "POSTs exactly once"], rows)
    lines += [f"### (b) A {data.get('warmup_s', 3):g} s warm-up and 2 s requests in flight (3 instances)", ""]
    warmup_rows = []
    for variant in data.get("variants", []):
        chosen = where(runs, part="warm-up", variant=variant)
        if chosen:
            boots = [float(ms) for r in chosen for ms in r.get("boots_ms") or []]
            bounds = [3 * (median(r["boots_ms"]) or 0) / 1000 + 2.5 for r in chosen if r.get("boots_ms")]
            per_step = [float(v) for r in chosen for v in (r["deploy"].get("per_instance_s") or {}).values()]
            warmup_rows.append((variant, len(chosen), spread(pick(chosen, "load", "requests")),
                                spread(pick(chosen, "load", "failed")), deploy_seconds(chosen), spread(boots),
                                spread(bounds, 2), spread(per_step, 2), posts_ok(chosen)))
    lines += table(["deploy", "runs", "requests", "failed", "deploy s", "boot + warm-up ms",
                    "bound 3 x (boot + warm-up) + 2.5 s", "per step s (restart -> new one UP)",
                    "POSTs exactly once"], warmup_rows)
    lines += [f"### (c) Many instances, surge {data.get('scale_k', 3)} at a time (under load)", ""]
    scale_rows = []
    for size in sorted({int(r["instances"]) for r in where(runs, part="scale")}):
        chosen = where(runs, part="scale", instances=size)
        steps = int(chosen[0]["steps"])
        scale_rows.append((size, len(chosen), steps, deploy_seconds(chosen),
                     spread([s / steps for s in pick(chosen, "deploy", "seconds")], 2),
                     spread(pick(chosen, "load", "requests")), spread(pick(chosen, "load", "failed")),
                     spread(pick(chosen, "load", "p99_ms"), 1), posts_ok(chosen)))
    lines += table(["instances", "runs", "steps", "deploy s", "s per step", "requests", "failed", "p99 ms",
                    "POSTs exactly once"], scale_rows)
    return lines + notes("surge")


def streams_part(data: dict[str, Any]) -> list[str]:
    runs = data.get("runs", [])
    lines = header(data, 6)
    rows = []
    for variant in data.get("variants", []):
        chosen = where(runs, variant=variant)
        found = [r["streams"] for r in chosen if r.get("streams")]
        ws = [s["reconnect_ms"]["ws"] for s in found]
        sse = [s["reconnect_ms"]["sse"] for s in found]
        good = sum(1 for s in found if s["ws_exactly_once"] and s["ws_ledger_ok"] and s["sse_in_order"])
        whole = f"{good}/{len(found)} runs" if found else "-"
        rows.append((variant, len(chosen), deploy_seconds(chosen), spread(pick(chosen, "load", "requests")),
                     spread(pick(chosen, "load", "failed")),
                     spread([s["ws_messages"] for s in found]) if found else "-",
                     spread([s["sse_events"] for s in found]) if found else "-", whole,
                     spread(pick(found, "reconnects")) if found else "-",
                     f"{spread(pick(ws, 'p50'))} / {spread(pick(ws, 'max'))}" if found else "-",
                     f"{spread(pick(sse, 'p50'))} / {spread(pick(sse, 'max'))}" if found else "-",
                     spread(pick(found, "slow_reconnects")) if found else "-"))
    lines += table(["clients", "runs", "deploy s", "HTTP requests", "HTTP failed", "WS messages",
                    "SSE events", "exactly once, in order", "reconnects", "WS reconnect ms p50 / max",
                    "SSE reconnect ms p50 / max", "reconnects over 1 s"], rows)
    return lines + notes("streams")


def release_part(data: dict[str, Any]) -> list[str]:
    runs = data.get("runs", [])
    lines = header(data, 7)
    rows = []
    for bad in ("crash", "500s"):
        for variant in ("watched", "unwatched"):
            chosen = where(runs, bad=bad, variant=variant)
            if chosen:
                served = [float(r["bad_served_s"]) for r in chosen if r.get("bad_served_s") is not None]
                rows.append((bad, variant, len(chosen), spread(pick(chosen, "requests")),
                             spread(pick(chosen, "bad_answers")),
                             spread([100 * float(r["bad_share"]) for r in chosen], 1),
                             spread(pick(chosen, "failed")), spread(served, 1),
                             sum(1 for r in chosen if r.get("rolled_back"))))
    lines += table(["release", "deploy", "runs", "requests", "bad answers", "bad share %", "failed",
                    "bad version served s", "rolled back"], rows)
    return lines + notes("release")
