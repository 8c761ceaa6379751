"""Section 8: what the control plane costs as the fleet grows (3, 16 and 64 instances).

Idle: nothing runs but HAProxy's checks (its health checks and the agents' polls) for IDLE_S.
Measured: the CPU HAProxy (master and worker) and the agents (each instance's PID 1, without
its app) used, as a share of one core; the agents' memory; the TCP connections opened per
second (the kernel's ActiveOpens: nothing else runs, so these are the checks); and one read of
the stats CSV as an agent reads it while it drains. Then a rolling deploy, a quarter of the
instances at a time (`--max-unavailable 25%`), under the strict checker: its time, each step's,
the fewest servers UP, and the agent's overhead per restart. One stack at a time: 64 instances
take the 2 CPUs of this box.
"""

from __future__ import annotations

import math
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.goals import GROWTH_SLACK, IDLE_LIMIT, SCALE_SHARE, TARGETS
from bench.log import describe, say
from bench.measure import Context, LoadSpec, measure, order
from bench.report_format import header, notes, table
from bench.stacks import Stacks, StackSpec, children, cpu_s, instance_memory, program_pids
from bench.summary import Record, costs, median, pick, spread, where
from deploy.engines.local import LocalEngine

KEY = "scale"
TITLE = "What the control plane costs as the fleet grows"
SIZES = (3, 16, 64)
IDLE_S = 60.0
STATS_READS = 20
PLOT = "scale.png"
STEP_FACTOR = 4  # 64 instances, a quarter at a time: 4 steps


def load() -> LoadSpec:
    return LoadSpec("strict", duration_s=3, concurrency=100, post_share=0.2, slow_share=0.1, slow_ms=200)


def run(ctx: Context) -> dict[str, object]:
    sizes = SIZES[:2] if ctx.quick else SIZES
    idle_s = 5.0 if ctx.quick else IDLE_S
    records: list[Record] = []
    for index in range(ctx.runs):
        for size in order(list(sizes), index):
            with Stacks(ctx.keep_dirs) as stacks:
                engine = stacks.start([StackSpec(f"{size} instances", options={"instances": size})],
                                      timeout_s=300)[0]
                time.sleep(5)  # let the start settle: the checks' steady state
                say(f"[scale] run {index + 1}: {size} instances, idle for {idle_s:g} s")
                record: Record = {"run": index + 1, "variant": f"{size} instances", "instances": size,
                                  "idle": idle_cost(engine, idle_s)}
                version = ctx.versions.next(engine)
                say(f"[scale] run {index + 1}: {size} instances, {SCALE_SHARE} at a time to {version}")
                record |= measure(engine, load(), strategy=f"rolling:{SCALE_SHARE}", version=version,
                                  delay_s=1.0)
                record["steps"] = step_seconds(record)
                records.append(record)
                say(f"[scale]   idle {record['idle']}; {describe(record)}")
    data: dict[str, object] = {
        "title": TITLE,
        "loads": {"strict": load().describe() + f"; rolling, --max-unavailable {SCALE_SHARE}; deploy 1 s in"},
        "variants": [f"{n} instances" for n in sizes],
        "idle_s": idle_s,
        "runs": records,
        "notes": [],
    }
    return data


# -- idle ----------------------------------------------------------------------------------


def active_opens() -> int:
    """TCP connections this host opened so far (/proc/net/snmp, Tcp: ActiveOpens)."""
    with open("/proc/net/snmp") as snmp:
        rows = [line.split() for line in snmp if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("ActiveOpens")])


def control_cpu_s(engine: LocalEngine) -> dict[str, float]:
    """CPU seconds so far: HAProxy (master and worker), the agents (PID 1 of each instance),
    their apps."""
    used = {"haproxy": 0.0, "agents": 0.0, "apps": 0.0}
    for name, pid in program_pids(engine).items():
        below = sum(map(cpu_s, children(pid)))
        if name == "haproxy":
            used["haproxy"] += cpu_s(pid) + below
        else:
            used["agents"] += cpu_s(pid)
            used["apps"] += below
    return used


def stats_read_ms(engine: LocalEngine) -> tuple[float, int]:
    """Median time of one read of the stats CSV (what a draining agent reads every poll), and its size."""
    url = f"http://127.0.0.1:{engine.stack.stats_port}/stats;csv"
    times, size = [], 0
    for _ in range(STATS_READS):
        began = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as answer:
            size = len(answer.read())
        times.append((time.perf_counter() - began) * 1000)
        time.sleep(0.05)
    return statistics.median(times), size


def idle_cost(engine: LocalEngine, seconds: float) -> dict[str, float]:
    cpu_before, opens_before, began = control_cpu_s(engine), active_opens(), time.monotonic()
    time.sleep(seconds)
    cpu_after, opens_after, elapsed = control_cpu_s(engine), active_opens(), time.monotonic() - began
    read_ms, size = stats_read_ms(engine)
    rss = pick(instance_memory(engine), "rss_kb")
    share = {name: (cpu_after[name] - cpu_before[name]) / elapsed for name in cpu_after}
    return {
        "haproxy_core": share["haproxy"], "agents_core": share["agents"], "apps_core": share["apps"],
        "control_core": share["haproxy"] + share["agents"],
        "checks_per_s": (opens_after - opens_before) / elapsed,
        "agents_rss_mib": sum(rss) / 1024, "agent_rss_mib": (statistics.median(rss) / 1024) if rss else 0.0,
        "stats_read_ms": read_ms, "stats_bytes": float(size),
    }


# -- the deploy ----------------------------------------------------------------------------


def step_seconds(record: Record) -> list[float]:
    """Each step of the deploy: its first restart to its last instance ready (and UP)."""
    events = (record.get("deploy") or {}).get("events") or []
    steps: list[list[float]] = []
    for event in events:
        if event["name"] == "restart":
            if not steps or len(steps[-1]) == 2:
                steps.append([event["at"]])
        elif event["name"] == "ready" and steps:
            steps[-1][1:] = [event["at"]]
    return [step[1] - step[0] for step in steps if len(step) == 2]


def fewest_up(record: Record) -> int | None:
    """The fewest servers HAProxy routed to during the deploy: UP, or 'UP 1/2' (a failed check
    on a saturated box, still in rotation), from its statuses read every 20 ms (each read is
    one moment: every server's status is known from the first)."""
    states: dict[str, list[list[Any]]] = (record.get("deploy") or {}).get("states") or {}
    moments: dict[float, dict[str, str]] = {}
    for server, seen in states.items():
        for at, status in seen:
            moments.setdefault(at, {})[server] = status
    if not moments:
        return None
    now: dict[str, str] = {}
    fewest: int | None = None
    for at in sorted(moments):
        now.update(moments[at])
        if len(now) == len(states):
            up = sum(1 for status in now.values() if status.startswith("UP"))
            fewest = up if fewest is None else min(fewest, up)
    return fewest


# -- the report ----------------------------------------------------------------------------


def part(data: dict[str, Any]) -> list[str]:
    runs = data.get("runs", [])
    lines = header(data, 8)
    rows = []
    for variant in data.get("variants", []):
        chosen = where(runs, variant=variant)
        overheads = [float(c["overhead_ms"]) for c in costs(chosen) if c.get("overhead_ms") is not None]
        rows.append((variant, len(chosen),
                     spread([100 * x for x in pick(chosen, "idle", "control_core")], 1),
                     spread([100 * x for x in pick(chosen, "idle", "haproxy_core")], 1),
                     spread([100 * x for x in pick(chosen, "idle", "agents_core")], 1),
                     spread([100 * x for x in pick(chosen, "idle", "apps_core")], 1),
                     spread(pick(chosen, "idle", "checks_per_s")),
                     spread(pick(chosen, "idle", "agents_rss_mib")),
                     spread(pick(chosen, "idle", "stats_read_ms"), 2),
                     spread([x / 1024 for x in pick(chosen, "idle", "stats_bytes")], 1),
                     spread(pick(chosen, "deploy", "seconds"), 1),
                     spread([median(r["steps"]) or 0 for r in chosen if r.get("steps")], 1),
                     spread([n for r in chosen if (n := fewest_up(r)) is not None]),
                     spread(pick(chosen, "load", "failed")),
                     spread(overheads)))
    lines += table(["stack", "runs", "control plane % of a core", "HAProxy %", "agents %", "apps %",
                    "check connections/s", "agents' RSS MiB (sum)", "stats read ms", "stats KiB",
                    "deploy s", "step s", "fewest UP", "failed", "agent overhead ms"], rows)
    lines += [f"![control plane cost against instances]({PLOT})", ""]
    lines += notes("scale")
    return lines


def plot(data: dict[str, Any], path: Path) -> None:
    """The idle cost against the number of instances, beside RESULTS.md (bench.__main__ draws it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("[scale] no matplotlib: no plot")
        return
    runs = data["runs"]
    assert isinstance(runs, list)
    sizes = sorted({int(r["instances"]) for r in runs})
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for key, label in (("control_core", "HAProxy + agents"), ("haproxy_core", "HAProxy"),
                       ("agents_core", "agents"), ("apps_core", "apps (their idle loop, health checks)")):
        values = [100 * (median(pick(where(runs, instances=n), "idle", key)) or 0) for n in sizes]
        axis.plot(sizes, values, marker="o", label=label)
    axis.axhline(100 * IDLE_LIMIT, color="grey", linestyle="--", linewidth=1, label="target at 64 (5%)")
    axis.set_xlabel("instances")
    axis.set_ylabel("% of one core, idle")
    axis.set_title("What the control plane costs while nothing happens")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- the targets ---------------------------------------------------------------------------

def scale_idle(results: dict[str, Any]) -> dict[str, object] | None:
    runs = ((results.get("sections") or {}).get(KEY) or {}).get("runs") or []
    by_size = {n: median(pick(where(runs, instances=n), "idle", "control_core")) for n in SIZES}
    top, low = by_size.get(SIZES[-1]), by_size.get(SIZES[0])
    if top is None or low is None:
        return None
    growth = (top / SIZES[-1]) / (low / SIZES[0]) if low else math.inf
    met = top < IDLE_LIMIT and growth <= GROWTH_SLACK
    measured = (f"{100 * top:.1f}% of a core at {SIZES[-1]}, {100 * low:.1f}% at {SIZES[0]}; per instance "
                f"{growth:.2f}x at {SIZES[-1]} what it is at {SIZES[0]}")
    why = "" if met else ("HAProxy's HTTP health check of each instance every 200 ms (320 a second at "
                          "64; the free slots are parked, not polled), and each agent's poll every 1.6 s; "
                          "`inter 2s` would cut it at the cost of up to 2 s per new instance's UP: "
                          "section 8, haproxy.cfg")
    return {"target": TARGETS["scale_idle"], "measured": measured, "met": met, "why": why}


def scale_deploy(results: dict[str, Any]) -> dict[str, object] | None:
    runs = where(((results.get("sections") or {}).get(KEY) or {}).get("runs") or [], instances=SIZES[-1])
    if not runs:
        return None
    problems = []
    for record in runs:
        seconds, steps = (record.get("deploy") or {}).get("seconds"), record.get("steps") or []
        step = median(steps)
        if seconds is None or step is None:
            problems.append(f"run {record['run']}: the deploy did not finish")
            continue
        drains = pick(record.get("agent_costs") or [], "drain_ms")
        bound = STEP_FACTOR * step + (max(drains) / 1000 if drains else 0.0)
        if seconds > bound:
            problems.append(f"run {record['run']}: {seconds:.1f} s > {bound:.1f} s")
        if record["load"]["failed"]:
            problems.append(f"run {record['run']}: {record['load']['failed']} failed")
        if (fewest_up(record) or 0) < SIZES[-1] * 3 // 4:
            problems.append(f"run {record['run']}: {fewest_up(record)} UP at the fewest")
    seconds = pick(runs, "deploy", "seconds")
    step_medians = [median(r["steps"]) or 0.0 for r in runs if r.get("steps")]
    measured = (f"{spread(seconds, 1)} s over {len(runs)} runs; steps {spread(step_medians, 1)} s; "
                f"fewest UP {spread([n for r in runs if (n := fewest_up(r)) is not None])}; "
                f"failed {spread(pick(runs, 'load', 'failed'))}")
    return {"target": TARGETS["scale_deploy"], "measured": measured, "met": not problems,
            "why": "; ".join(problems)}
