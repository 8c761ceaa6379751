"""The issue's targets, checked against the measured figures; each says met or missed, and why when missed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench.summary import Record, costs, median, paired, per_run, pick, where

RSS_LIMIT_KB = 30 * 1024
OVERHEAD_LIMIT_MS = 200.0
P99_FACTOR = 1.5
MIDDLEWARE_LIMIT = 0.05
SURGE_RPS_SHARE = 0.9
SURGE_P99_FACTOR = 1.2
WARMUP_SLACK_S = 2.5
SCALE_STEP_SPREAD = 1.5
STREAMS_FACTOR = 1.5
RECONNECT_BUDGET_MS = 1000
TARGETS = {
    "zero_failures": "0 failed requests in every deploy of ours (sections 2, 3(d), 4, 5, 6)",
    "overhead": f"agent overhead <= {OVERHEAD_LIMIT_MS:.0f} ms per instance (median)",
    "p99": f"p99 during a deploy <= {P99_FACTOR}x steady state (section 2, same client and load)",
    "middleware": f"drain middleware costs <= {MIDDLEWARE_LIMIT:.0%} throughput (section 1)",
    "rss": f"drain-agent RSS <= {RSS_LIMIT_KB // 1024} MiB",
    "surge_capacity": f"surge: req/s during a deploy >= {SURGE_RPS_SHARE:.0%} of steady state, p99 <= "
                      f"{SURGE_P99_FACTOR}x (section 5(a))",
    "surge_warmup": f"surge, 3 s warm-up, 2 s requests: deploy <= 3 x (boot + warm-up) + {WARMUP_SLACK_S} s "
                    "(section 5(b))",
    "streams_whole": "WebSocket and SSE clients through a rolling restart: every message exactly once, "
                     f"every event in order, every client back within {RECONNECT_BUDGET_MS} ms of its close "
                     "(section 6)",
    "streams_deploy": f"the deploy with those clients <= {STREAMS_FACTOR}x the same deploy without them "
                      "(section 6)",
    "bad_release": "a bad release (crash after UP; 500s) is rolled back by the deploy itself in every run, "
                   "and answers fewer requests than unwatched (section 7)",
    "surge_scale": f"surge, 3 at a time: deploy time grows about as N/3 (seconds per step within "
                   f"{SCALE_STEP_SPREAD}x from 3 to 24 instances; section 5(c))",
}


def section(results: dict[str, Any], key: str) -> dict[str, Any]:
    found = (results.get("sections") or {}).get(key)
    return found if isinstance(found, dict) else {}


def our_deploys(results: dict[str, Any]) -> list[tuple[str, Record]]:
    """Every rolling deploy of our stack under load, labelled by where it was measured."""
    original = where(section(results, "original").get("runs", []), variant="rolling restart")
    usual = where(section(results, "usual").get("runs", []), variant="d")
    found = [(f"2, {r['client']}", r) for r in original]
    found += [(f"3(d), {r['client']}", r) for r in usual]
    found += [(f"4, {r['instances']} instances", r) for r in section(results, "agent").get("runs", [])]
    return found


def surge_deploys(results: dict[str, Any]) -> list[tuple[str, Record]]:
    """Section 5's deploys: in a surge the new instances run in other slots than the old ones,
    so bench.agentlog's per-slot restart costs do not apply; they count for zero failures."""
    return ([(f"5({r['part']}), {r['variant']}", r) for r in section(results, "surge").get("runs", [])]
            + [(f"6, {r['variant']}", r) for r in section(results, "streams").get("runs", [])])


def loaded_costs(results: dict[str, Any]) -> list[Record]:
    return [c for _, r in our_deploys(results) for c in r.get("agent_costs") or []
            if c.get("overhead_ms") is not None]


def upper_bounds(found: Sequence[Record]) -> list[float]:
    """Per restart: stop path + ready path, nothing subtracted."""
    return [c["stop_path_ms"] + c["ready_ms"] for c in found if c.get("ready_ms") is not None]


def deploy_problem(record: Record) -> str | None:
    """Why a deploy under load is no evidence of zero failures: it broke, did not reach its
    version on every instance, or ran (in part) while no load did."""
    deploy = record.get("deploy") or {}
    if deploy.get("error") or deploy.get("seconds") is None:
        return f"deploy failed: {str(deploy.get('error') or 'it did not finish').splitlines()[0][:120]}"
    stale = [v for v in record.get("versions_after") or [None] if v != deploy.get("version")]
    if stale:
        return f"instances not at {deploy.get('version')} afterwards: {stale}"
    if not record.get("covered"):
        return "the deploy outlasted the load"
    return None


def zero_failures(results: dict[str, Any]) -> dict[str, object] | None:
    deploys = our_deploys(results) + surge_deploys(results)
    if not deploys:
        return None
    failed = sum(int(r["load"]["failed"]) for _, r in deploys)
    requests = sum(int(r["load"]["requests"]) for _, r in deploys)
    problems = [f"{label}: {problem}" for label, r in deploys if (problem := deploy_problem(r))]
    posts_bad = [label for label, r in deploys
                 if isinstance(r["load"].get("extra", {}).get("posts"), dict)
                 and not r["load"]["extra"]["posts"]["exactly_once"]]
    measured = f"{failed} failed of {requests} requests in {len(deploys)} deploys under load"
    if posts_bad:
        measured += f"; POST ledger mismatch in {', '.join(posts_bad)}"
    if problems:
        measured += f"; {len(problems)} of them no evidence"
    causes: dict[str, int] = {}
    for _, r in deploys:
        for cause, n in r["load"]["failures"].items():
            causes[cause] = causes.get(cause, 0) + n
    why = "; ".join([f"failures by cause: {causes}"] * bool(failed)
                    + [f"POSTs not processed exactly once in {', '.join(posts_bad)}"] * bool(posts_bad)
                    + sorted(set(problems)))
    return {"target": TARGETS["zero_failures"],
            "measured": measured, "met": failed == 0 and not posts_bad and not problems, "why": why}


def uncounted(records: Sequence[Record]) -> int:
    """Restarts done but not found in the agents' logs (one cost is expected per instance restarted)."""
    restarted = [len((r.get("deploy") or {}).get("per_instance_s") or {}) for r in records]
    return sum(max(0, n - len(r.get("agent_costs") or [])) for n, r in zip(restarted, records, strict=True))


def overhead(results: dict[str, Any]) -> dict[str, object] | None:
    deploys = [r for _, r in our_deploys(results)]
    idle_runs = section(results, "agent").get("idle", [])
    if not deploys and not idle_runs:
        return None
    loaded = loaded_costs(results)
    idle = costs(idle_runs)
    mid = median([c["overhead_ms"] for c in loaded]) if loaded else None
    idle_mid = median([c["overhead_ms"] for c in idle if c.get("overhead_ms") is not None])
    upper = median(upper_bounds(loaded))
    missing = uncounted(deploys) + uncounted(idle_runs)
    parts = []
    if mid is not None:
        parts.append(f"median {mid:.0f} ms over {len(loaded)} restarts under load")
    if upper is not None:
        parts.append(f"{upper:.0f} ms without subtracting the in-flight requests")
    if idle_mid is not None:
        parts.append(f"{idle_mid:.0f} ms with no load ({len(idle)} restarts)")
    if missing:
        parts.append(f"{missing} restarts not found in the agents' logs")
    verdict = mid if mid is not None else idle_mid
    met = verdict is not None and verdict <= OVERHEAD_LIMIT_MS and not missing
    why = ""
    if missing or verdict is None:
        why = "restarts missing from the agents' logs: do bench.agentlog's event names match agent.events?"
    elif not met:
        why = "see section 4: the stop path and ready path of each restart"
    return {"target": TARGETS["overhead"],
            "measured": "; ".join(parts) or "no restart measured", "met": met, "why": why}


def p99(results: dict[str, Any]) -> dict[str, object] | None:
    runs = section(results, "original").get("runs", [])
    ratios = {}
    for client in ("hey", "wrk", "strict"):
        deploy = median(pick(where(runs, client=client, variant="rolling restart"), "load", "p99_ms"))
        steady = median(pick(where(runs, client=client, variant="steady (no restart)"), "load", "p99_ms"))
        if deploy is not None and steady:
            ratios[client] = (deploy, steady, deploy / steady)
    if not ratios:
        return None
    measured = "; ".join(f"{c}: {d:.0f} vs {s:.0f} ms = {r:.2f}x" for c, (d, s, r) in ratios.items())
    missed = [c for c, (_, _, r) in ratios.items() if r > P99_FACTOR]
    why = ""
    if missed:
        restarts = [c for _, r in our_deploys(results) for c in r.get("agent_costs") or []]
        respawn = median(pick(restarts, "respawn_ms"))
        app_start = median(pick(restarts, "app_start_ms"))
        per_instance = median([float(v) for _, r in our_deploys(results)
                               for v in (r["deploy"].get("per_instance_s") or {}).values()])
        why = (
            f"missed with {', '.join(missed)}. While an instance restarts (median {per_instance or 0:.1f} s"
            f" each under load, mostly process start: respawn {respawn or 0:.0f} ms + app start"
            f" {app_start or 0:.0f} ms) two instances carry the load, and the two new interpreters take"
            " CPU from a saturated 2-vCPU box; closed-loop clients queue on the remaining servers."
            " No request fails; the tail grows (see section 2's max column)."
        )
        usual = section(results, "usual")
        labels = usual.get("labels") or {}
        by_way = [(labels.get(k, k).split(" ")[0], median(pick(where(usual.get("runs", []), client="wrk",
                                                                      variant=k), "load", "p99_ms")))
                  for k in usual.get("variants", [])]
        if any(v is not None for _, v in by_way):
            why += (" The usual ways have the same tail (section 3, wrk p99 ms: "
                    + ", ".join(f"{k} {v:.0f}" for k, v in by_way if v is not None) + ").")
    return {"target": TARGETS["p99"],
            "measured": measured, "met": not missed, "why": why}


def middleware_costs(runs: list[Record]) -> dict[str, tuple[list[float], list[float]]]:
    """Per client: the middleware's relative cost in req/s and in the instances' CPU per request,
    paired within each run."""
    found = {}
    for client in ("strict", "wrk"):
        without = where(runs, client=client, variant="without middleware")
        with_ = where(runs, client=client, variant="with middleware")
        rps_costs = paired(without, with_, "load", "rps")
        if rps_costs:
            found[client] = (rps_costs, [-c for c in paired(without, with_, "cpu_us_per_request", "apps")])
    return found


def middleware(results: dict[str, Any]) -> dict[str, object] | None:
    """The middleware's cost: its in-process CPU per request against an instance's whole CPU per request.

    End-to-end req/s on this shared box moves by more than the 5% target from run to run, so the
    verdict rests on the in-process measurement (the only difference between the two stacks,
    isolated), unless every end-to-end run of a client shows a cost above the target.
    """
    data = section(results, "steady")
    runs = data.get("runs", [])
    found = middleware_costs(runs)
    asgi = data.get("asgi")
    base = median(per_run(where(runs, variant="without middleware"), "cpu_us_per_request", "apps"))
    estimate = asgi["delta_us"] / base if isinstance(asgi, dict) and base else None
    if not found and estimate is None:
        return None
    parts = []
    if estimate is not None and isinstance(asgi, dict):
        parts.append(f"in process {asgi['delta_us']:+.2f} us per request, against {base:.0f} us of CPU an"
                     f" instance spends per request without it: {estimate:+.1%}")
    parts += [f"end-to-end {c} req/s {median(r) or 0:+.1%} (runs {min(r):+.1%} to {max(r):+.1%})"
              + (f", instances' CPU per request {median(u) or 0:+.1%}" if u else "")
              for c, (r, u) in found.items()]
    always_over = [c for c, (r, _) in found.items() if min(r) > MIDDLEWARE_LIMIT]
    if estimate is not None:
        met = estimate <= MIDDLEWARE_LIMIT and not always_over
    else:
        met = all((median(r) or 0) <= MIDDLEWARE_LIMIT for r, _ in found.values())
    noisy = [c for c, (r, _) in found.items() if (median(r) or 0) > MIDDLEWARE_LIMIT]
    why = ""
    if not met:
        why = (f"every run of {', '.join(always_over)} costs more than the target" if always_over
               else "the in-process cost is above the target")
    elif noisy:
        why = (f"met by the in-process figure; the end-to-end median of {', '.join(noisy)} is above 5%,"
               " but its runs spread over more than the target (a shared 2-vCPU box; see the load averages)")
    return {"target": TARGETS["middleware"],
            "measured": "; ".join(parts), "met": met, "why": why}


def rss(results: dict[str, Any]) -> dict[str, object] | None:
    memory = section(results, "agent").get("memory", [])
    sizes = [float(m["rss_kb"]) for m in memory if m.get("rss_kb")]
    if not sizes:
        return None
    mid, top = median(sizes), max(sizes)
    assert mid is not None
    met = top <= RSS_LIMIT_KB
    reference = section(results, "agent").get("memory_reference") or {}
    why = ""
    if not met:
        parts = ", ".join(f"{label} {kb / 1024:.1f} MiB" for label, kb in reference.items() if kb)
        why = f"the interpreter and the agent's imports, before any work (idle processes' VmRSS: {parts})"
    return {"target": TARGETS["rss"],
            "measured": f"median {mid / 1024:.1f} MiB, max {top / 1024:.1f} MiB over {len(sizes)} agents",
            "met": met, "why": why}


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


CHECKS: tuple[tuple[Callable[[dict[str, Any]], dict[str, object] | None], tuple[str, ...]], ...] = (
    (zero_failures, ("original", "usual", "agent", "surge", "streams")),
    (overhead, ("original", "usual", "agent")),
    (p99, ("original",)),
    (middleware, ("steady",)),
    (rss, ("agent",)),
    (surge_capacity, ("surge",)),
    (surge_warmup, ("surge",)),
    (surge_scale, ("surge",)),
    (streams_whole, ("streams",)),
    (streams_deploy, ("streams",)),
    (bad_release, ("release",)),
)


def evaluate(results: dict[str, Any]) -> list[dict[str, object]]:
    """Every target whose sections ran; one whose section failed is missed, whatever the others show."""
    verdicts = []
    for check, keys in CHECKS:
        found = check(results)
        errors = {key: str(section(results, key).get("error") or "").strip() for key in keys}
        failed = [f"section {key} failed: {error.splitlines()[-1][:200]}"
                  for key, error in errors.items() if error]
        if failed:
            found = found or {"target": TARGETS[check.__name__], "measured": "not measured", "why": ""}
            found |= {"met": False, "why": "; ".join([*failed, str(found["why"])]).strip("; ")}
        if found is not None:
            verdicts.append(found)
    return verdicts
