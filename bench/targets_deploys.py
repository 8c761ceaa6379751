"""The deploy targets: surge capacity, warm-up and scale, WebSocket and SSE clients through a
deploy, and a bad release rolled back; each met or missed, and why."""

from __future__ import annotations

from typing import Any

from bench.goals import (
    RECONNECT_BUDGET_MS,
    SCALE_STEP_SPREAD,
    STREAMS_FACTOR,
    SURGE_P99_FACTOR,
    SURGE_RPS_SHARE,
    TARGETS,
    WARMUP_SLACK_S,
    section,
)
from bench.summary import Record, median, pick, where


def window_ratios(runs: list[Record], variant: str, key: str) -> list[float]:
    """Per run of section 5(a): the deploy window's figure over the same seconds of the steady run."""
    ratios = []
    for r in where(runs, part="capacity", variant=variant):
        windows = r.get("windows") or {}
        during, steady = (windows.get("deploy") or {}).get(key), (windows.get("steady") or {}).get(key)
        if during is not None and steady:
            ratios.append(during / steady)
    return ratios


def surge_capacity(results: dict[str, Any]) -> dict[str, object] | None:
    runs = section(results, "surge").get("runs", [])
    rps, p99 = window_ratios(runs, "surge", "rps"), window_ratios(runs, "surge", "p99_ms")
    if not rps or not p99:
        return None
    stop_rps, stop_p99 = window_ratios(runs, "stop-first", "rps"), window_ratios(runs, "stop-first", "p99_ms")
    mid_rps, mid_p99 = median(rps) or 0, median(p99) or 0
    measured = (f"surge: req/s {mid_rps:.0%} of steady (runs {min(rps):.0%}-{max(rps):.0%}), "
                f"p99 {mid_p99:.2f}x; stop-first side by side: req/s {median(stop_rps) or 0:.0%}, "
                f"p99 {median(stop_p99) or 0:.2f}x")
    met = mid_rps >= SURGE_RPS_SHARE and mid_p99 <= SURGE_P99_FACTOR
    why = "" if met else "see section 5(a)"
    return {"target": TARGETS["surge_capacity"], "measured": measured, "met": met, "why": why}


def surge_warmup(results: dict[str, Any]) -> dict[str, object] | None:
    runs = where(section(results, "surge").get("runs", []), part="warm-up", variant="surge")
    pairs = [(r["deploy"]["seconds"], 3 * (median(r["boots_ms"]) or 0) / 1000 + WARMUP_SLACK_S)
             for r in runs if r.get("boots_ms") and isinstance(r["deploy"].get("seconds"), float)]
    if not pairs:
        return None
    deploy, bound = median([d for d, _ in pairs]) or 0, median([b for _, b in pairs]) or 0
    stop_first = median(pick(where(section(results, "surge").get("runs", []), part="warm-up",
                                   variant="stop-first"), "deploy", "seconds"))
    measured = (f"{deploy:.2f} s against a bound of {bound:.2f} s (boot + warm-up measured in each run); "
                f"stop-first {stop_first or 0:.2f} s")
    met = deploy <= bound
    why = "" if met else ("a step also waits for HAProxy to see its instance UP (its next agent-check and"
                          " health check), and the last old instance drains its 2 s requests: section 5(b)")
    return {"target": TARGETS["surge_warmup"], "measured": measured, "met": met, "why": why}


def surge_scale(results: dict[str, Any]) -> dict[str, object] | None:
    runs = where(section(results, "surge").get("runs", []), part="scale")
    per_step = {}
    for size in sorted({int(r["instances"]) for r in runs}):
        found = where(runs, instances=size)
        seconds = median(pick(found, "deploy", "seconds"))
        if seconds is not None:
            per_step[size] = (seconds, seconds / int(found[0]["steps"]))
    if len(per_step) < 2:
        return None
    steps = [s for _, s in per_step.values()]
    spread = max(steps) / min(steps)
    measured = ", ".join(f"{n}: {d:.1f} s ({s:.2f} s per step)" for n, (d, s) in per_step.items())
    met = spread <= SCALE_STEP_SPREAD
    why = "" if met else f"seconds per step vary {spread:.1f}x: see section 5(c)"
    return {"target": TARGETS["surge_scale"], "measured": measured, "met": met, "why": why}


def streams_whole(results: dict[str, Any]) -> dict[str, object] | None:
    found = [r["streams"] for r in section(results, "streams").get("runs", []) if r.get("streams")]
    if not found:
        return None
    messages, events = sum(s["ws_messages"] for s in found), sum(s["sse_events"] for s in found)
    whole = [s for s in found if s["ws_exactly_once"] and s["ws_ledger_ok"] and s["sse_in_order"]]
    slow = sum(s["slow_reconnects"] for s in found)
    reconnects = sum(s["reconnects"] for s in found)
    worst = max(max(s["reconnect_ms"]["ws"]["max"], s["reconnect_ms"]["sse"]["max"]) for s in found)
    measured = (f"{messages} WebSocket messages and {events} events in {len(found)} deploys: whole in "
                f"{len(whole)}; {reconnects} reconnects, {slow} over {RECONNECT_BUDGET_MS} ms "
                f"(slowest {worst:.0f} ms)")
    met = len(whole) == len(found) and slow == 0 and reconnects > 0
    why = "" if met else ("reconnects wait for CPU: the checker, HAProxy and the instances share 2 vCPUs"
                          " (section 6)" if len(whole) == len(found) and reconnects else "see section 6")
    return {"target": TARGETS["streams_whole"], "measured": measured, "met": met, "why": why}


def streams_deploy(results: dict[str, Any]) -> dict[str, object] | None:
    runs = section(results, "streams").get("runs", [])
    by_run: dict[object, dict[str, float]] = {}
    for r in runs:
        seconds = r["deploy"].get("seconds")
        if isinstance(seconds, float):
            by_run.setdefault(r.get("run"), {})["with" if r.get("streams") else "without"] = seconds
    ratios = [pair["with"] / pair["without"] for pair in by_run.values() if {"with", "without"} <= set(pair)]
    if not ratios:
        return None
    without = median(pick(where(runs, streams=None), "deploy", "seconds"))
    mid = median(ratios) or 0
    measured = (f"{mid:.2f}x (runs {min(ratios):.2f}-{max(ratios):.2f}x, paired within each run); "
                f"median {without or 0:.2f} s without the clients")
    met = mid <= STREAMS_FACTOR
    why = "" if met else ("the clients' 2,000 messages/s and the HTTP load keep both vCPUs busy: the new"
                          " instances start slower (section 6)")
    return {"target": TARGETS["streams_deploy"], "measured": measured, "met": met, "why": why}


def bad_release(results: dict[str, Any]) -> dict[str, object] | None:
    runs = section(results, "release").get("runs", [])
    if not runs:
        return None
    parts, met = [], True
    for bad in ("crash", "500s"):
        watched = where(runs, bad=bad, variant="watched")
        unwatched = where(runs, bad=bad, variant="unwatched")
        if not watched or not unwatched:
            continue
        with_watch = median(pick(watched, "bad_answers")) or 0
        without = median(pick(unwatched, "bad_answers")) or 0
        rolled = sum(1 for r in watched if r.get("rolled_back"))
        met = met and rolled == len(watched) and with_watch < without
        parts.append(f"{bad}: {with_watch:.0f} bad answers watched against {without:.0f} unwatched "
                     f"(medians, {with_watch / max(without, 1):.1%}), rolled back {rolled}/{len(watched)}")
    return {"target": TARGETS["bad_release"], "measured": "; ".join(parts), "met": met,
            "why": "" if met else "see section 7"}
