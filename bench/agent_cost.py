"""Section 4: what the agent itself costs, per restart and in memory, and how a deploy grows with instances.

Overhead per instance = the agent's stop path (SIGTERM received -> app signalled) minus what
the requests in flight on that server at the SIGTERM still needed (from the strict checker's
per-request timestamps), plus the ready path (app ready -> HAProxy routes to it again). Both
include HAProxy's wait for its next agent-check. Sections 2 and 3 add their traced deploys of
our stack to the same figures.
"""

from __future__ import annotations

import subprocess
import sys

from bench.deployer import REPO_ROOT
from bench.log import describe, say
from bench.measure import Context, LoadSpec, idle_deploy, measure, order
from bench.stacks import Stacks, StackSpec, instance_memory

KEY = "agent"
TITLE = "The agent's own cost, and deploy time against the number of instances"
SIZES = (3, 6, 9)
RESTART_AFTER_S = 1.0


def load() -> LoadSpec:
    """Planned for 3 s; the checker keeps going until the deploy is done (the same in --quick)."""
    return LoadSpec("strict", duration_s=3, concurrency=100, post_share=0.2, slow_share=0.1, slow_ms=200)


def run(ctx: Context) -> dict[str, object]:
    records: list[dict[str, object]] = []
    idle: list[dict[str, object]] = []
    memory: list[dict[str, object]] = []
    spec = load()
    with Stacks(ctx.keep_dirs) as stacks:
        specs = [StackSpec(f"{n} instances", options={"instances": n}) for n in SIZES]
        engines = dict(zip(SIZES, stacks.start(specs), strict=True))
        for index in range(ctx.runs):
            for size in order(list(SIZES), index):
                engine = engines[size]
                version = ctx.versions.next(engine)
                say(f"[agent] run {index + 1}: {size} instances, rolling restart to {version}")
                record = measure(engine, spec, strategy="rolling", version=version, delay_s=RESTART_AFTER_S)
                record |= {"run": index + 1, "variant": f"{size} instances", "instances": size}
                records.append(record)
                say(f"[agent]   {describe(record)}")
                for row in instance_memory(engine):
                    memory.append(row | {"run": index + 1, "stack": f"{size} instances"})
            engine = engines[SIZES[0]]
            version = ctx.versions.next(engine)
            say(f"[agent] run {index + 1}: {SIZES[0]} instances, rolling restart to {version} without load")
            record = idle_deploy(engine, version)
            idle.append(record | {"run": index + 1, "variant": "no load", "instances": SIZES[0]})
    return {
        "title": TITLE,
        "loads": {"strict": spec.describe() + "; deploy 1 s in, load runs until it is done"},
        "variants": [f"{n} instances" for n in SIZES],
        "runs": records,
        "idle": idle,
        "memory": memory,
        "memory_reference": reference_memory(),
        "notes": [],
    }


REFERENCE_PROGRAMS = {
    "python (bare interpreter)": "import time",
    "python + asyncio": "import asyncio, time",
    "python + asyncio + prometheus_client": "import asyncio, prometheus_client, time",
    "python + the agent's imports": "import agent.__main__, time",
}


def reference_memory() -> dict[str, int | None]:
    """VmRSS of idle interpreters with some of the agent's imports: what its RSS is made of."""
    sizes: dict[str, int | None] = {}
    for label, imports in REFERENCE_PROGRAMS.items():
        code = (f"{imports}\nimport os\n"
                "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')][0])")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              check=False, cwd=REPO_ROOT)
        sizes[label] = int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None
    return sizes
