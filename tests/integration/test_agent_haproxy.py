"""drain-agent with a real HAProxy and the real service: the order of a drain, and its edges."""

from __future__ import annotations

import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import BIN, HAProxy, Processes, event_times, start_agent, wait_for


def test_haproxy_drains_before_the_app_gets_sigterm(procs: Processes, haproxy: HAProxy) -> None:
    agent = start_agent(procs, haproxy, haproxy.app_ports[0])
    wait_for(lambda: haproxy.server("app1")["status"] == "UP", what="app1 UP")

    samples: list[tuple[float, str, int]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            row = haproxy.server("app1")
            samples.append((time.time(), row["status"], int(row["scur"])))
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            slow = [pool.submit(httpx.get, f"{haproxy.url}/cms?delay_ms=800", timeout=10) for _ in range(4)]
            wait_for(lambda: int(haproxy.server("app1")["scur"]) == 4, what="4 sessions on app1")
            agent.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
            assert [f.result().status_code for f in slow] == [200] * 4
        assert agent.wait(timeout=15) == 0  # type: ignore[attr-defined]
    finally:
        stop.set()
        poller.join()

    log = procs.log("agent")
    events = event_times(log)
    signalled = events["app.signalled"]
    # HAProxy showed DRAIN while the slow requests still held sessions...
    assert any(status == "DRAIN" and scur > 0 and t < signalled for t, status, scur in samples)
    # ...and every sample with a session on app1 came before the app was signalled.
    assert max(t for t, _, scur in samples if scur > 0) < signalled
    assert events["haproxy.drain"] < events["drain.done"] <= signalled
    # The app itself saw nothing in flight when its SIGTERM arrived.
    assert "event=service.draining instance=app1 in_flight=0" in log
    assert events["service.draining"] >= signalled
    assert haproxy.server("app1")["status"] == "MAINT"
    assert event_times(log)["agent.state"] <= events["app.ready"] + 1


def test_app_crash_takes_the_server_out_and_passes_the_code_on(procs: Processes, haproxy: HAProxy) -> None:
    agent = start_agent(procs, haproxy, haproxy.app_ports[0])
    wait_for(lambda: haproxy.server("app1")["status"] == "UP", what="app1 UP")
    app_pid = int(re.search(r"event=app.started .*? pid=(\d+)", procs.log("agent")).group(1))  # type: ignore[union-attr]
    import os

    os.kill(app_pid, signal.SIGKILL)
    assert agent.wait(timeout=10) == 128 + signal.SIGKILL  # type: ignore[attr-defined]
    assert haproxy.server("app1")["status"] == "MAINT"
    assert "killed by SIGKILL" in procs.log("agent")


def test_never_ready_app_stays_out_and_agent_fails(procs: Processes, haproxy: HAProxy) -> None:
    agent = start_agent(procs, haproxy, haproxy.app_ports[0], "--start-timeout", "1.5",
                        env={"SERVICE_WARMUP_S": "600"})
    seen = set()
    while agent.poll() is None:  # type: ignore[attr-defined]
        seen.add(haproxy.server("app1")["status"])
        time.sleep(0.02)
    assert agent.returncode == 3  # type: ignore[attr-defined]
    assert seen <= {"DOWN", "MAINT"}  # never in rotation
    assert haproxy.server("app1")["status"] == "MAINT"
    assert "app not ready at http://127.0.0.1:" in procs.log("agent")
    assert "within 1.5s (see --start-timeout); server left in maint" in procs.log("agent")


def test_haproxy_restart_gets_our_state_back(procs: Processes, haproxy: HAProxy) -> None:
    start_agent(procs, haproxy, haproxy.app_ports[0], "--watch-interval", "0.2")
    wait_for(lambda: haproxy.server("app1")["status"] == "UP", what="app1 UP")
    haproxy.command("set server app/app1 state maint")  # what a fresh HAProxy may think
    haproxy.restart()
    wait_for(lambda: "event=haproxy.reasserted" in procs.log("agent"), what="re-assert")
    wait_for(lambda: haproxy.server("app1")["status"] == "UP", what="app1 UP again")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--server", "app9"], 4, "has no server app/app9 (servers there: app1, app2, app3)"),
        (["--server", "app1", "--backend", "web"], 4, "has no server web/app1 (no such backend)"),
    ],
)
def test_unknown_backend_or_server(procs: Processes, haproxy: HAProxy, args: list[str], code: int, message: str) -> None:
    proc = procs.start([str(BIN / "drain-agent"), "--haproxy", haproxy.address, *args, "--", "true"], log="bad")
    assert proc.wait(timeout=10) == code
    assert message in procs.log("bad")
    assert "app.started" not in procs.log("bad")


def test_unreachable_haproxy_at_start(procs: Processes, tmp_path: Path) -> None:
    began = time.monotonic()
    proc = procs.start([str(BIN / "drain-agent"), "--haproxy", f"unix://{tmp_path}/none.sock", "--server", "app1",
                        "--haproxy-wait", "0.5", "--", "true"], log="bad")
    assert proc.wait(timeout=10) == 4
    assert time.monotonic() - began < 5
    log = procs.log("bad")
    assert "unreachable" in log and "waited 0.5s; see --haproxy-wait" in log
    assert "app.started" not in log


def test_missing_and_unrunnable_commands(procs: Processes, haproxy: HAProxy, tmp_path: Path) -> None:
    base = [str(BIN / "drain-agent"), "--haproxy", haproxy.address, "--server", "app1"]
    assert procs.start([*base, "--"], log="none").wait(timeout=10) == 2
    assert "no app command" in procs.log("none")
    assert procs.start([*base, "--", "no-such-command-xyz"], log="nf").wait(timeout=10) == 127
    assert "app command not found: 'no-such-command-xyz'" in procs.log("nf")
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\n")
    assert procs.start([*base, "--", str(script)], log="ne").wait(timeout=10) == 126


def test_agent_metrics(procs: Processes, haproxy: HAProxy) -> None:
    from tests.conftest import free_port

    metrics_port = free_port()
    start_agent(procs, haproxy, haproxy.app_ports[0], "--metrics-port", str(metrics_port))
    wait_for(lambda: haproxy.server("app1")["status"] == "UP", what="app1 UP")
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'drain_agent_state{drain_agent_state="ready"} 1.0' in text
    ready_s = float(next(line.split()[1] for line in text.splitlines()
                         if line.startswith("drain_agent_time_to_ready_seconds ")))
    assert 0 < ready_s < 10
    assert "drain_agent_haproxy_api_errors_total 0.0" in text
    assert "drain_agent_drain_seconds_count 0.0" in text
