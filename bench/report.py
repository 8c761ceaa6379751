"""RESULTS.md from results.json: the machine, the targets, then one part per section, medians of the runs
(the deploy parts: bench/report_deploys.py; the shared pieces: bench/report_format.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["release_part", "render", "streams_part", "surge_part"]

from bench import scale
from bench.goals import loaded_costs, our_deploys, section, upper_bounds
from bench.report_deploys import release_part, streams_part, surge_part
from bench.report_format import (
    causes,
    counter,
    covered,
    deploy_seconds,
    header,
    notes,
    posts_ok,
    split_failures,
    table,
)
from bench.summary import Record, costs, median, per_run, pick, spread, where
from bench.targets import middleware_costs

KB_PER_MIB = 1024


def machine_part(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    rows = [
        ("date (start)", m.get("date_utc")), ("nproc", m.get("nproc")), ("CPU", m.get("cpu_model")),
        ("kernel", m.get("kernel")), ("OS", m.get("os")), ("Python", m.get("python")),
        ("HAProxy", m.get("haproxy")), ("uvicorn", m.get("uvicorn")), ("starlette", m.get("starlette")),
        ("uvloop", m.get("uvloop")), ("hey", m.get("hey") or "not installed"),
        ("wrk", m.get("wrk") or "not installed"),
        ("load average at start / end", f"{m.get('load_average_start')} / {results.get('load_average_end')}"),
        ("commit, code fingerprint (start / end)",
         f"{m.get('git_head')} / {results.get('git_head_end')}, "
         f"{m.get('code_fingerprint')} / {results.get('code_fingerprint_end')}"),
        ("command, runs per variant", f"`{results.get('command')}`, {results.get('runs')}"),
        ("total run time", f"{results.get('total_seconds')} s"),
    ]
    return ["## Machine", "", *table(["item", "value"], rows)]


def targets_part(results: dict[str, Any]) -> list[str]:
    rows = [(t["target"], t["measured"], "**met**" if t["met"] else "**missed**", t.get("why") or "")
            for t in results.get("targets", [])]
    return ["## Targets", "", *table(["target", "measured", "verdict", "what limits it"], rows)]


def steady_part(data: dict[str, Any]) -> list[str]:
    runs = data.get("runs", [])
    lines = header(data, 1)
    rows = []
    clients = sorted({r["client"] for r in runs}, key=["strict", "wrk"].index)
    for client in clients:
        for variant in data.get("variants", []):
            chosen = where(runs, client=client, variant=variant)
            rows.append((variant, client, len({r["run"] for r in chosen}),
                         spread(per_run(chosen, "load", "rps")),
                         spread(per_run(chosen, "load", "p50_ms"), 1),
                         spread(per_run(chosen, "load", "p99_ms"), 1),
                         spread(pick(chosen, "load", "max_ms")), spread(pick(chosen, "load", "failed")),
                         spread(per_run(chosen, "cpu_us_per_request", "apps")),
                         spread(per_run(chosen, "cpu_us_per_request", "haproxy"))))
    lines += table(["variant", "client", "runs", "req/s", "p50 ms", "p99 ms", "max ms", "failed",
                    "instances' CPU us/request", "HAProxy CPU us/request"], rows)
    lines += notes("steady")
    without_label, with_label = data["variants"]
    for client, (costs_rps, costs_cpu) in middleware_costs(runs).items():
        lines.append(
            f"- {client}: the middleware costs {spread([c * 100 for c in costs_rps], 1)} % of req/s"
            f" (median of the per-run paired costs); the instances' CPU per request"
            f" {spread([c * 100 for c in costs_cpu], 1)} %."
        )
    asgi = data.get("asgi")
    if isinstance(asgi, dict):
        rps = median(per_run(where(runs, variant=with_label), "load", "rps")) or 0.0
        share = asgi["delta_us"] * rps / 1e6
        rounds, size = asgi["rounds"], asgi["requests_per_round"]
        lines.append(
            f"- In process (the ASGI app called directly, CPU time, {rounds} interleaved rounds of {size}"
            f" GET /cms): {asgi['with_us']:.1f} us per request with the middleware, {asgi['without_us']:.1f}"
            f" us without; paired median difference {asgi['delta_us']:+.2f} us. At the measured {rps:.0f}"
            f" req/s that is {share:.1%} of one CPU, {share / 2:.1%} of this 2-vCPU machine."
        )
        base = median(per_run(where(runs, variant=without_label), "cpu_us_per_request", "apps"))
        if base:
            lines.append(
                f"- An instance spends {base:.0f} us of CPU per request without the middleware (median"
                f" above), so the middleware adds {asgi['delta_us'] / base:+.1%} to it: the throughput it can"
                " cost when the instances are the bottleneck, less when HAProxy and the client share the CPU."
            )
    return [*lines, ""]


def original_part(data: dict[str, Any]) -> list[str]:
    runs = data.get("runs", [])
    lines = header(data, 2)
    rows = []
    for client in ("hey", "wrk", "strict"):
        for variant in data.get("variants", []):
            chosen = where(runs, client=client, variant=variant)
            if not chosen:
                continue
            non2xx = [float(split_failures(r)[0]) for r in chosen]
            transport = [float(split_failures(r)[1]) for r in chosen]
            rows.append((client, variant, len(chosen), spread(pick(chosen, "load", "requests")),
                         spread(non2xx), spread(transport), causes(chosen),
                         spread(pick(chosen, "load", "p50_ms"), 1), spread(pick(chosen, "load", "p99_ms"), 1),
                         spread(pick(chosen, "load", "max_ms")), deploy_seconds(chosen), covered(chosen),
                         " / ".join(counter(chosen, name) for name in ("eresp", "wretr", "wredis")),
                         posts_ok(chosen)))
    lines += table(["client", "mode", "runs", "requests", "non-2xx", "socket/transport errors",
                    "failed by cause (sum)", "p50 ms", "p99 ms", "max ms", "deploy s", "deploy inside load",
                    "eresp / wretr / wredis", "POSTs exactly once"], rows)
    return lines + notes("original")


def usual_part(data: dict[str, Any]) -> list[str]:
    runs = data.get("runs", [])
    labels = data.get("labels", {})
    lines = header(data, 3)
    rows = []
    for client in ("strict", "wrk"):
        for key in data.get("variants", []):
            chosen = where(runs, client=client, variant=key)
            if not chosen:
                continue
            rows.append((labels.get(key, key), client, len(chosen), spread(pick(chosen, "load", "requests")),
                         spread(pick(chosen, "load", "failed")),
                         spread(pick(chosen, "load", "failed_pct"), 3),
                         spread(pick(chosen, "load", "p99_ms"), 1), spread(pick(chosen, "load", "max_ms")),
                         deploy_seconds(chosen), counter(chosen, "eresp"), counter(chosen, "wretr"),
                         counter(chosen, "wredis"), counter(chosen, "hrsp_5xx"), posts_ok(chosen)))
    lines += table(["way", "client", "runs", "requests", "failed", "failed %", "p99 ms", "max ms",
                    "rolling deploy s", "eresp", "wretr", "wredis", "backend 5xx", "POSTs exactly once"],
                   rows)
    lines += ["Failures by cause, summed over the runs:", ""]
    for client in ("strict", "wrk"):
        for key in data.get("variants", []):
            chosen = where(runs, client=client, variant=key)
            if chosen:
                lines.append(f"- {labels.get(key, key)}, {client}: {causes(chosen)}")
    lines.append("")
    return lines + notes("usual")


def respawn_split(record: Record) -> list[tuple[float, float]]:
    """Per restart: (old agent gone -> `engine.replace()` returned, returned -> new agent's first line), ms.

    The old agent's last line is at its SIGTERM stamp plus its own elapsed ms; `started` is the
    deploy's event when LocalEngine.replace (supervisor's stop, remove and add, start) returned.
    """
    started = {e["instance"]: e["at"] for e in (record.get("deploy") or {}).get("events", [])
               if e["name"] == "started"}
    found = []
    for cost in record.get("agent_costs") or []:
        at = started.get(cost["instance"])
        if at is None or cost.get("app_stop_ms") is None or cost.get("respawn_ms") is None:
            continue
        old_gone = cost["signal_at"] + (cost["stop_path_ms"] + cost["app_stop_ms"]) / 1000
        found.append(((at - old_gone) * 1000, (old_gone + cost["respawn_ms"] / 1000 - at) * 1000))
    return found


def cost_rows(label: str, found: Sequence[Record]) -> tuple[object, ...]:
    return (label, len(found), spread(pick(found, "stop_path_ms")), spread(pick(found, "in_flight_ms")),
            spread(pick(found, "ready_ms")), spread(pick(found, "overhead_ms")), spread(upper_bounds(found)))


def agent_part(data: dict[str, Any], results: dict[str, Any]) -> list[str]:
    lines = header(data, 4)
    lines += ["### Agent overhead per restart (ms)", ""]
    sources: dict[str, list[Record]] = {}
    for label, record in our_deploys(results):
        found = [c for c in record.get("agent_costs") or [] if c.get("overhead_ms") is not None]
        if found:
            sources.setdefault(f"section {label}", []).extend(found)
    rows = [cost_rows(label, found) for label, found in sources.items()]
    rows.append(cost_rows("**all traced restarts under load**", loaded_costs(results)))
    rows.append(cost_rows("no load (3 instances)", costs(data.get("idle", []))))
    lines += table(["deploys", "restarts", "stop path (SIGTERM -> app signalled)", "in flight still needed",
                    "ready path (app ready -> back in rotation)", "**overhead**",
                    "upper bound (stop path + ready path)"], rows)
    lines += notes("overhead")
    loaded = [c for _, record in our_deploys(results) for c in record.get("agent_costs") or []]
    idle = costs(data.get("idle", []))
    phases = [("SIGTERM -> HAProxy drains the server (its next agent-check)", "drain_seen_ms"),
              ("SIGTERM -> app signalled (agent drain)", "stop_path_ms"),
              ("app signalled -> app exited, server in maint", "app_stop_ms"),
              ("old agent gone -> new agent's first line (supervisor, interpreter, imports)", "respawn_ms"),
              ("app started -> app ready (app start, readiness polling)", "app_start_ms"),
              ("app ready -> back in rotation (HAProxy's next agent-check)", "ready_ms"),
              ("app ready -> HAProxy's check shows UP (haproxy.up)", "up_ms")]
    lines += ["### Where a restart's time goes (ms, from the agents' log lines)", ""]
    rows = [(name, spread(pick(loaded, key)), spread(pick(idle, key))) for name, key in phases]
    split_loaded = [split for _, record in our_deploys(results) for split in respawn_split(record)]
    split_idle = [split for record in data.get("idle", []) for split in respawn_split(record)]
    rows[4:4] = [
        ("- of which supervisor's stop, remove and add (old agent gone -> replace() returned)",
         spread([a for a, _ in split_loaded]), spread([a for a, _ in split_idle])),
        ("- of which the new process's start (replace() returned -> new agent's first line)",
         spread([b for _, b in split_loaded]), spread([b for _, b in split_idle])),
    ]
    lines += table(["phase", f"under load ({len(loaded)} restarts, sections 2-4)", f"no load ({len(idle)})"],
                   rows)
    runs = data.get("runs", [])
    lines += ["### Rolling deploy time against the number of instances (under load)", ""]
    rows = []
    for variant in data.get("variants", []):
        chosen = where(runs, variant=variant)
        if not chosen:
            continue
        per_instance = [float(s) for r in chosen for s in (r["deploy"].get("per_instance_s") or {}).values()]
        rows.append((variant, len(chosen), deploy_seconds(chosen), spread(per_instance, 2),
                     spread(pick(chosen, "load", "requests")), spread(pick(chosen, "load", "failed")),
                     spread(pick(chosen, "load", "p99_ms"), 1), posts_ok(chosen)))
    idle_runs = data.get("idle", [])
    if idle_runs:
        per_instance = [float(s) for r in idle_runs
                        for s in (r["deploy"].get("per_instance_s") or {}).values()]
        rows.append((f"{idle_runs[0].get('instances')} instances, no load", len(idle_runs),
                     deploy_seconds(idle_runs), spread(per_instance, 2), "-", "-", "-", "-"))
    lines += table(["stack", "runs", "rolling deploy s", "per instance s (restart -> ready + UP)", "requests",
                    "failed", "p99 ms", "POSTs exactly once"], rows)
    memory = data.get("memory", [])
    agents = [float(m["rss_kb"]) / KB_PER_MIB for m in memory if m.get("rss_kb")]
    apps = [float(kb) / KB_PER_MIB for m in memory for kb in m.get("child_rss_kb") or [] if kb]
    lines += ["### Memory (VmRSS, MiB)", ""]
    rows = [("drain-agent (each instance's PID 1)", len(agents), spread(agents, 1)),
            ("the app it runs (uvicorn)", len(apps), spread(apps, 1))]
    rows += [(f"drain-agent alone, {label}" + (f" ({build['processes']} processes)"
                                               if build.get("processes", 1) > 1 else ""),
              1, f"{build['rss_kb'] / KB_PER_MIB:.1f} (PSS {build.get('pss_kb', 0) / KB_PER_MIB:.1f})"
              if "rss_kb" in build else build.get("error"))
             for label, build in (data.get("builds") or {}).items()]
    rows += [(f"reference: {label}", 1, f"{kb / KB_PER_MIB:.1f}")
             for label, kb in (data.get("memory_reference") or {}).items() if kb]
    lines += table(["process", "samples", "median (min-max)"], rows)
    return lines


def method_part() -> list[str]:
    return ["## Method", "", *notes("method")]


def render(results: dict[str, Any]) -> str:
    mode = "quick (smoke test)" if results.get("quick") else "full"
    lines = ["# Benchmark results", "",
             f"Generated by `python -m bench` ({mode}); raw figures in `results.json`.", ""]
    started_with = (results.get("machine") or {}).get("code_fingerprint")
    if results.get("code_fingerprint_end") not in (None, started_with):
        lines += ["**Warning: the code under test (agent/, service/, deploy/, haproxy/) changed while this"
                  " ran; sections measured before and after the change are not comparable.**", ""]
    lines += machine_part(results) + targets_part(results)
    parts = {"steady": steady_part, "original": original_part, "usual": usual_part}
    for key, render_part in parts.items():
        data = section(results, key)
        if data:
            lines += render_part(data)
    if section(results, "agent"):
        lines += agent_part(section(results, "agent"), results)
    if section(results, "surge"):
        lines += surge_part(section(results, "surge"))
    if section(results, "streams"):
        lines += streams_part(section(results, "streams"))
    if section(results, "release"):
        lines += release_part(section(results, "release"))
    if section(results, "scale"):
        lines += scale.part(section(results, "scale"))
    lines += method_part()
    return "\n".join(lines).rstrip() + "\n"
