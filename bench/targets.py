"""The issue's targets, checked against the measured figures; each says met or missed, and why
when missed (the limits and words: bench/goals.py; the deploy targets: bench/targets_deploys.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench import scale
from bench.goals import (
    MIDDLEWARE_LIMIT,
    OVERHEAD_LIMIT_MS,
    P99_FACTOR,
    RSS_LIMIT_KB,
    TARGETS,
    loaded_costs,
    our_deploys,
    section,
    surge_deploys,
    upper_bounds,
)
from bench.summary import Record, costs, median, paired, per_run, pick, where
from bench.targets_deploys import (
    bad_release,
    streams_deploy,
    streams_whole,
    surge_capacity,
    surge_scale,
    surge_warmup,
)

__all__ = ["TARGETS", "bad_release", "evaluate", "middleware", "middleware_costs", "overhead", "p99",
           "rss", "streams_deploy", "streams_whole", "surge_capacity", "surge_scale", "surge_warmup",
           "zero_failures"]


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
    """Every agent of the section's stacks (the Python build), and one agent of each build alone."""
    memory = section(results, "agent").get("memory", [])
    sizes = [float(m["rss_kb"]) for m in memory if m.get("rss_kb")]
    if not sizes:
        return None
    mid, top = median(sizes), max(sizes)
    assert mid is not None
    builds = section(results, "agent").get("builds") or {"one-file build": {"error": "not measured"}}
    alone = [f"{label} alone {b['rss_kb'] / 1024:.1f} MiB"
             + (f" ({' + '.join(f'{kb / 1024:.1f}' for kb in b['per_process_kb'])} MiB: bootloader + "
                "interpreter)" if b.get("processes", 1) > 1 else "")
             if "rss_kb" in b else f"{label}: {b.get('error')}" for label, b in builds.items()]
    over = [label for label, b in builds.items() if "rss_kb" not in b or b["rss_kb"] > RSS_LIMIT_KB]
    met = top <= RSS_LIMIT_KB and not over
    reference = section(results, "agent").get("memory_reference") or {}
    why = ""
    if not met:
        parts = ", ".join(f"{label} {kb / 1024:.1f} MiB" for label, kb in reference.items() if kb)
        why = f"the interpreter and the agent's imports, before any work (idle processes' VmRSS: {parts})"
        if any("per_process_kb" in builds[label] for label in over):
            why += "; the one-file build adds PyInstaller's bootloader, a second process that waits"
    return {"target": TARGETS["rss"],
            "measured": f"median {mid / 1024:.1f} MiB, max {top / 1024:.1f} MiB over {len(sizes)} agents; "
                        + "; ".join(alone),
            "met": met, "why": why}


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
    (scale.scale_idle, ("scale",)),
    (scale.scale_deploy, ("scale",)),
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
