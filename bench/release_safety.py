"""Section 7: a bad release, watched and rolled back, against the same release unwatched.

Two bad releases of the reference service (its fault settings): one that crashes 2 s after
every start, one that answers 500 to 30% of /cms. Each is deployed with `rollout deploy`
under the strict checker's load, twice in each run on a fresh stack: with the watch and the
rollback (the defaults; the 500 release through canary steps 5,25,100), and with
`--watch-for 0 --no-rollback`, which is what every other path did before. Measured: how many
requests the bad version answered (its 200s and its 500s), the failures, and how long from
the first new instance UP until the bad version served nothing any more (the rollback's end;
unwatched: it never ends, so the load's end bounds it).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvloop

from bench.measure import Context
from bench.stacks import Stacks, StackSpec
from deploy.check.loadcheck import LoadPlan, run_load
from deploy.engines.local import LocalEngine

KEY = "release"
TITLE = "A bad release: watched and rolled back, against unwatched"
BAD = {"crash": ["--env", "SERVICE_FAULT_CRASH_AFTER_S=2"],
       "500s": ["--env", "SERVICE_FAULT_ERROR_SHARE=0.3"]}
WATCHED = {"crash": ["--watch-for", "5", "--min-ready", "4"],
           "500s": ["--watch-for", "5", "--canary", "5,25,100"]}
UNWATCHED = ["--watch-for", "0", "--no-rollback"]
VARIANTS = ("watched", "unwatched")
STAMP = re.compile(r"^(\d\d:\d\d:\d\d\.\d\d\d) \[([^\]]+)\] (\w[\w-]*)", re.M)


def rollout(engine: LocalEngine, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("rollout")), "--state-dir", str(engine.root), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def stamps(stderr: str) -> list[tuple[float, str, str]]:
    """(time.time(), instance, event) of each progress line `rollout` printed (today, local time)."""
    day = time.strftime("%Y-%m-%d ")
    found = []
    for match in STAMP.finditer(stderr):
        clock = time.mktime(time.strptime(day + match[1][:8], "%Y-%m-%d %H:%M:%S"))
        found.append((clock + int(match[1][9:]) / 1000, match[2], match[3]))
    return found


def one(engine: LocalEngine, bad: str, variant: str, version: str, duration_s: float) -> dict[str, object]:
    done = threading.Event()
    runs: list[subprocess.CompletedProcess[str]] = []

    def deploy() -> None:
        time.sleep(1.0)
        watch = WATCHED[bad] if variant == "watched" else UNWATCHED
        runs.append(rollout(engine, "deploy", version, *BAD[bad], *watch))
        done.set()

    thread = threading.Thread(target=deploy)
    thread.start()
    plan = LoadPlan(url=f"{engine.frontend_url()}/cms", requests=None, duration_s=duration_s,
                    concurrency=50, post_share=0.2, slow_share=0.1, slow_ms=100)
    load = uvloop.run(run_load(plan))
    thread.join()
    run = runs[0]
    events = stamps(run.stderr)
    first_up = next((at for at, _, name in events if name == "ready"), None)
    rolled_back = [at for at, _, name in events if name == "rollback"]
    ended = max((at for at, _, _ in events), default=None) if rolled_back else None
    served_s = ((ended or load.started + load.elapsed_s) - first_up) if first_up else None
    bad_answers = load.versions.get(version, 0) + load.failures.get("http 500", 0)
    if first_up is None:
        raise RuntimeError(f"the {bad} release ({variant}) never got UP: {run.stderr.strip()[-300:]}")
    return {"bad": bad, "variant": variant, "exit": run.returncode, "requests": load.total,
            "failed": load.failed, "failures": dict(load.failures), "bad_answers": bad_answers,
            "bad_share": round(bad_answers / max(1, load.total), 4),
            "bad_served_s": None if served_s is None else round(served_s, 2),
            "rolled_back": bool(rolled_back), "ended_by_load": ended is None,
            "stderr_tail": run.stderr.strip().splitlines()[-3:]}


def run(ctx: Context) -> dict[str, object]:
    duration_s = 12.0 if ctx.quick else 25.0
    records = []
    for number in range(ctx.runs):
        for bad in BAD:
            for variant in VARIANTS:
                with Stacks(ctx.keep_dirs) as stacks:
                    (engine,) = stacks.start([StackSpec(f"{bad}-{variant}")])
                    record = one(engine, bad, variant, ctx.versions.next(engine), duration_s)
                records.append(record | {"run": number})
    return {"title": TITLE, "duration_s": duration_s, "runs": records}
