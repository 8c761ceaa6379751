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
import time
import urllib.request
from pathlib import Path

from bench.deployer import REPO_ROOT
from bench.log import describe, say
from bench.measure import Context, LoadSpec, idle_deploy, measure, order
from bench.stacks import Stacks, StackSpec, children, free_port_run, instance_memory, vm_rss_kb

ONE_FILE = REPO_ROOT / "dist" / "drain-agent"  # `make agent-binary` (make bench builds it)
BUILDS = {"Python build": [sys.executable, "-m", "agent"], "one-file build": [str(ONE_FILE)]}

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
        "builds": {label: build_memory(argv) for label, argv in BUILDS.items()},
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


def build_memory(argv: list[str]) -> dict[str, object]:
    """One agent of this build, ready, wrapping a small app, with no HAProxy: the VmRSS of its
    processes, the app's excluded (the one-file build is two: PyInstaller's bootloader, which
    unpacks the bundle and waits, and the interpreter it starts)."""
    if not Path(argv[0]).exists():
        return {"error": f"{argv[0]} is not built (make agent-binary)"}
    base = free_port_run(2)
    app = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(base)]
    proc = subprocess.Popen([*argv, "--agent-port", str(base + 1), "--agent-bind", "127.0.0.1",
                             "--ready-url", f"http://127.0.0.1:{base}/", "--drain-timeout", "1",
                             "--haproxy-stats", "http://127.0.0.1:9/stats;csv", "--", *app],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not app_answers(base):
            time.sleep(0.2)
        time.sleep(3)  # the agent is in READY, as a serving instance's is
        agent = [proc.pid] + [pid for pid in children(proc.pid) if not cmdline(pid).startswith(" ".join(app))]
        sizes = [vm_rss_kb(pid) or 0 for pid in agent]
        return {"rss_kb": sum(sizes), "processes": len(sizes), "per_process_kb": sizes,
                "pss_kb": sum(pss_kb(pid) for pid in agent)}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages divided among their users (what one more costs)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def app_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
            return True
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
