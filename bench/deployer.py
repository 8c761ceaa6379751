"""A rolling deploy in its own process, started on cue while the load runs.

The strict checker is CPU-bound Python; a deploy polled from a thread of the same process
would wait for its GIL, and its timings would grow. As in real life, the deploy is a
separate process: `python -m bench.deployer STATE_DIR STRATEGY VERSION DELAY_S TIMEOUT_S`
prints `ready` once imported, waits for `go` on stdin, sleeps DELAY_S, deploys (watching every
server's status in HAProxy meanwhile) and prints `result <json>`. Progress goes to stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent


class BackgroundDeploy:
    """Parent side: `with BackgroundDeploy(...) as deploy: deploy.go(); <load>; deploy.result()`."""

    def __init__(self, state_dir: Path, strategy: str, version: str, delay_s: float,
                 timeout_s: float = 90) -> None:
        self.args = [str(state_dir), strategy, version, str(delay_s), str(timeout_s)]
        self.timeout_s = timeout_s
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.outcome: dict[str, object] | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.went: float | None = None

    def __enter__(self) -> BackgroundDeploy:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.deployer", *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(30):
            raise RuntimeError("bench.deployer did not start within 30 s")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "ready":
                self.ready.set()
            elif line.startswith("result "):
                self.outcome = json.loads(line[len("result "):])
        self.finished.set()

    def go(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.went = time.time()
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def done(self) -> bool:
        return self.finished.is_set()

    def result(self) -> dict[str, object]:
        if not self.finished.wait(self.timeout_s * 12 + 60):
            raise RuntimeError("the deploy did not finish")
        assert self.proc is not None
        self.proc.wait(10)
        if self.outcome is None:
            raise RuntimeError(f"bench.deployer exited {self.proc.returncode} without a result")
        return self.outcome


def main(argv: list[str]) -> int:
    state_dir, strategy_name, version, delay_s, timeout_s = argv
    from bench.strategies import DeployTiming, strategy, watched
    from deploy.engines.local import LocalEngine, LocalStack

    engine = LocalEngine(LocalStack.load(state_dir))
    run = strategy(strategy_name)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    time.sleep(float(delay_s))
    with watched(engine) as states:
        try:
            timing = run(engine, version, float(timeout_s))
        except Exception as exc:  # reported to the parent, which records the run as broken
            timing = DeployTiming(strategy_name, version, error=f"{type(exc).__name__}: {exc}")
    timing.states = states
    print("result " + json.dumps(timing.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
