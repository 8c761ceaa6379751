"""Bad days for one instance: HAProxy unreachable or refusing, drains that never end, signals, orphans."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvloop

from deploy.check.loadcheck import LoadPlan, run_load
from tests.conftest import (
    HAProxy,
    Processes,
    event_times,
    free_port,
    start_agent,
    start_plain_services,
    wait_for,
)

RECORDER = Path(__file__).parent / "apps" / "recorder.py"


def load_in_background(url: str, requests: int = 6000, concurrency: int = 50):  # type: ignore[no-untyped-def]
    plan = LoadPlan(url=f"{url}/cms", requests=requests, concurrency=concurrency, post_share=0.2, slow_share=0.1, slow_ms=100)
    pool = ThreadPoolExecutor(1)
    return pool.submit(lambda: uvloop.run(run_load(plan)))


def test_stats_unreachable_at_sigterm_falls_back_on_the_503_drain(procs: Processes, haproxy: HAProxy) -> None:
    """The agent cannot read HAProxy's stats (its access cut): it never takes that for drained,
    waits its drain timeout, then signals the app, whose own drain (refusals HAProxy re-sends) does the job."""
    start_plain_services(procs, haproxy)
    agent = start_agent(procs, haproxy, haproxy.app_ports[0], "--drain-timeout", "1",
                        "--haproxy-stats", f"http://127.0.0.1:{free_port()}/stats;csv")
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    load = load_in_background(haproxy.url)
    time.sleep(0.5)
    began = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=10) == 0
    stop_s = time.monotonic() - began
    result = load.result(timeout=60)
    log = procs.log("agent")
    assert "event=haproxy.error" in log and "unreachable" in log
    assert "event=drain.timeout" in log and "relying on the app's own drain" in log
    assert "event=drain.done" not in log
    assert 1 <= stop_s < 5
    print(f"\nstats unreachable at SIGTERM: stop took {stop_s:.2f}s; {result.total} requests, "
          f"{result.failed} failed {dict(result.failures)}")
    assert result.failed == 0, result.failures  # the service refuses (425) and HAProxy re-sends


def test_drain_that_never_reaches_zero_goes_on_after_the_timeout(procs: Processes, haproxy: HAProxy) -> None:
    agent = start_agent(procs, haproxy, haproxy.app_ports[0], "--drain-timeout", "0.5")
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"{haproxy.url}/cms?delay_ms=3000", timeout=20)
        wait_for(lambda: haproxy.server("app1").scur == 1, what="a session on app1")
        began = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 0
        stopped_s = time.monotonic() - began
        assert slow.result().status_code == 200  # the app still finished it
    events = event_times(procs.log("agent"))
    assert "drain.timeout" in events and "drain.done" not in events
    assert 0.4 < events["app.signalled"] - events["signal.received"] < 1.5
    assert stopped_s < 5  # bounded by the slow request, not by anything hanging


def test_second_sigterm_cuts_the_drain_short(procs: Processes, haproxy: HAProxy) -> None:
    agent = start_agent(procs, haproxy, haproxy.app_ports[0])
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"{haproxy.url}/cms?delay_ms=2000", timeout=20)
        wait_for(lambda: haproxy.server("app1").scur == 1, what="a session on app1")
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: "to=draining" in procs.log("agent"), what="drain started")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 0
        assert slow.result().status_code == 200
    events = event_times(procs.log("agent"))
    assert "drain.cut" in events
    assert events["app.signalled"] - events["signal.again"] < 0.3


def test_signals_forwarded_orphans_reaped_exit_code_passed_on(procs: Processes, haproxy: HAProxy, tmp_path: Path) -> None:
    port = haproxy.app_ports[0]
    record = tmp_path / "signals.txt"
    agent = start_agent(
        procs, haproxy, port, command=[sys.executable, str(RECORDER)],
        env={"RECORDER_PORT": str(port), "RECORDER_FILE": str(record), "RECORDER_EXIT_CODE": "7",
             "RECORDER_ORPHANS": "1"},
    )
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    time.sleep(0.6)  # the orphaned sleeps (0.2 s, 0.3 s) have ended
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == agent.pid]
    assert len(children) == 1, "only the app is left: the orphans were adopted and reaped"
    assert not [p for p in children if _state(p) == "Z"]

    for sig in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
        agent.send_signal(sig)

    def recorded() -> list[str]:
        return record.read_text().splitlines() if record.exists() else []

    with contextlib.suppress(AssertionError):  # the assert below shows what was recorded, and why not
        wait_for(lambda: len(recorded()) >= 3 or agent.poll() is not None, timeout=10, what="3 signals")
    assert len(recorded()) == 3 and agent.poll() is None, (recorded(), agent.poll(), procs.log("agent")[-3000:])
    assert haproxy.server("app1").status == "UP"

    agent.send_signal(signal.SIGINT)  # drains like SIGTERM, forwarded as SIGINT
    assert agent.wait(timeout=10) == 7
    names = [line.split()[1] for line in record.read_text().splitlines()]
    assert sorted(names[:3]) == ["SIGHUP", "SIGQUIT", "SIGUSR1"]  # pending signals arrive in any order
    assert names[3:] == ["SIGINT"]
    events = event_times(procs.log("agent"))
    assert events["drain.done"] <= events["app.signalled"]
    wait_for(lambda: haproxy.server("app1").status in ("MAINT", "DOWN"), timeout=3, what="app1 out")


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _state(proc: Path) -> str:
    try:
        return (proc / "stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"
