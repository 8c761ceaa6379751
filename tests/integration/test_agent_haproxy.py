"""drain-agent with a real HAProxy and the real service: HAProxy pulls each agent's state
(agent-check), the agent reads only HAProxy's stats; the order of a drain, and its edges."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    BIN,
    HAProxy,
    Processes,
    agent_args,
    event_times,
    load_during,
    start_agent,
    start_plain_services,
    wait_for,
)


def app_pid(procs: Processes, log: str = "agent") -> int:
    return int(re.findall(r"event=app.started .*? pid=(\d+)", procs.log(log))[-1])


def test_haproxy_drains_before_the_app_gets_sigterm(procs: Processes, haproxy: HAProxy) -> None:
    agent = start_agent(procs, haproxy, haproxy.app_ports[0])
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")

    samples: list[tuple[float, str, int]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            row = haproxy.server("app1")
            samples.append((time.time(), row.status, row.scur))
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            slow = [pool.submit(httpx.get, f"{haproxy.url}/cms?delay_ms=800", timeout=10) for _ in range(4)]
            wait_for(lambda: haproxy.server("app1").scur == 4, what="4 sessions on app1")
            agent.send_signal(signal.SIGTERM)
            assert [f.result().status_code for f in slow] == [200] * 4
        assert agent.wait(timeout=15) == 0
    finally:
        stop.set()
        poller.join()

    log = procs.log("agent")
    events = event_times(log)
    signalled = events["app.signalled"]
    # HAProxy learnt the drain from the agent (agent-check) while the slow requests still held sessions...
    assert any(status == "DRAIN (agent)" and scur > 0 and t < signalled for t, status, scur in samples)
    # ...and every sample with a session on app1 came before the app was signalled.
    assert max(t for t, _, scur in samples if scur > 0) < signalled
    assert events["signal.received"] < events["drain.done"] <= signalled
    # The app itself saw nothing in flight when its SIGTERM arrived.
    assert "event=service.draining instance=app1 in_flight=0" in log
    assert events["service.draining"] >= signalled
    # It names itself after the row it found by address, and holds no admin address at all.
    assert "event=drain.done server=app/app1" in log
    assert str(haproxy.socket) not in " ".join(agent.args)  # type: ignore[arg-type]


def test_the_agent_port_answers_only_its_own_state(procs: Processes, haproxy: HAProxy) -> None:
    start_agent(procs, haproxy, haproxy.app_ports[0])
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    for attempt in (b"", b"maint\n", b"set server app/app2 state maint\n", b"x" * 100_000):
        with socket.create_connection(("127.0.0.1", haproxy.agent_ports[0]), timeout=2) as conn:
            with contextlib.suppress(OSError):  # it may have answered and closed already
                conn.sendall(attempt)
            assert conn.recv(100) == b"ready\n"
    time.sleep(0.3)
    assert haproxy.server("app1").status == "UP"
    assert "event=agent.state" in procs.log("agent") and "to=draining" not in procs.log("agent")


def test_app_crash_takes_the_server_out_and_passes_the_code_on(procs: Processes, haproxy: HAProxy) -> None:
    agent = start_agent(procs, haproxy, haproxy.app_ports[0])
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    os.kill(app_pid(procs), signal.SIGKILL)
    assert agent.wait(timeout=10) == 128 + signal.SIGKILL
    wait_for(lambda: haproxy.server("app1").status in ("DOWN", "MAINT"), timeout=3, what="app1 out")
    assert "killed by SIGKILL" in procs.log("agent")


def test_never_ready_app_stays_out_and_agent_fails(procs: Processes, haproxy: HAProxy) -> None:
    agent = start_agent(procs, haproxy, haproxy.app_ports[0], "--start-timeout", "1.5",
                        env={"SERVICE_WARMUP_S": "600"})
    seen = set()
    while agent.poll() is None:
        seen.add(haproxy.server("app1").status)
        time.sleep(0.02)
    assert agent.returncode == 3
    assert not {s for s in seen if s.startswith("UP")}  # never in rotation
    assert "app not ready at http://127.0.0.1:" in procs.log("agent")
    assert "within 1.5s (see --start-timeout)" in procs.log("agent")


def test_ready_on_loopback_but_unreachable_by_haproxy_never_becomes_up(procs: Processes, haproxy: HAProxy) -> None:
    """The agent's probe reaches the app (bound to 127.0.0.2), HAProxy's check (127.0.0.1) cannot:
    UP comes only from HAProxy's own check, so the server never enters rotation."""
    port = haproxy.app_ports[0]
    args = [a.replace("127.0.0.1:", "127.0.0.2:") if a.startswith("http://127.0.0.1:" + str(port)) else a
            for a in agent_args(haproxy)]
    procs.start([*args, "--server", "app1", "--start-timeout", "2", "--", sys.executable, "-m", "service"],
                {"SERVICE_PORT": str(port), "SERVICE_HOST": "127.0.0.2"}, "agent")
    wait_for(lambda: "event=haproxy.not_up" in procs.log("agent"), timeout=10, what="haproxy.not_up")
    log = procs.log("agent")
    assert "event=app.ready" in log and "to=ready" in log
    assert haproxy.server("app1").status.startswith("DOWN")
    assert "can HAProxy reach the app" in log


def test_haproxy_reload_relearns_the_drain_from_the_agent(procs: Processes, haproxy: HAProxy) -> None:
    """A reloaded HAProxy's new worker starts with app1 UP: it learns the drain by polling the
    agent, and the drain ends at zero on the new worker while the old one finishes its request."""
    agent = start_agent(procs, haproxy, haproxy.app_ports[0], "--drain-timeout", "30")
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    old_pid = haproxy.command("show info").split("\nPid: ")[1].split()[0]
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"{haproxy.url}/cms?delay_ms=2000", timeout=20)
        wait_for(lambda: haproxy.server("app1").scur == 1, what="a session on app1")
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: haproxy.server("app1").status == "DRAIN (agent)", what="drain")
        haproxy.proc.send_signal(signal.SIGUSR2)
        reloaded = time.time()
        wait_for(lambda: haproxy.command("show info").split("\nPid: ")[1].split()[0] != old_pid,
                 what="the new worker")
        # The new worker starts with app1 UP (it may route to it until its first poll of the
        # agent, which waits for that) and learns the drain within one agent-inter (100 ms).
        wait_for(lambda: haproxy.server("app1").status in ("DRAIN (agent)", "MAINT"), timeout=0.5,
                 what="the drain learnt by the new worker")
        assert slow.result().status_code == 200  # the old worker's request finished
    assert agent.wait(timeout=15) == 0
    events = event_times(procs.log("agent"))
    assert reloaded < events["drain.done"] < events["service.draining"] + 0.001


def reload_during_a_long_post(procs: Processes, haproxy: HAProxy, ledger: Path, *agent_flags: str
                              ) -> tuple[httpx.Response | Exception, float, dict[str, float]]:
    """A 30 s POST in flight on app1 (its work done at once: the ledger line), the agent's
    drain begun, then a HAProxy reload: the old worker carries the POST, the new one's stats
    say 0. The app stops within 3 s of its SIGTERM. Returns the answer, when it came, and
    the agent's events."""
    agent = start_agent(procs, haproxy, haproxy.app_ports[0], "--drain-timeout", "60", *agent_flags,
                        env={"SERVICE_SHUTDOWN_TIMEOUT_S": "3", "SERVICE_POST_LEDGER": str(ledger)})
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    old_pid = haproxy.command("show info").split("\nPid: ")[1].split()[0]

    def post() -> httpx.Response | Exception:
        try:
            return httpx.post(f"{haproxy.url}/cms?delay_ms=30000", content=b"{}",
                              headers={"x-request-id": "long-post"}, timeout=60)
        except httpx.HTTPError as exc:
            return exc

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post)
        wait_for(lambda: haproxy.server("app1").scur == 1, what="the POST on app1")
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: haproxy.server("app1").status == "DRAIN (agent)", what="drain")
        haproxy.proc.send_signal(signal.SIGUSR2)
        wait_for(lambda: haproxy.command("show info").split("\nPid: ")[1].split()[0] != old_pid,
                 what="the new worker")
        wait_for(lambda: haproxy.server("app1").status == "DRAIN (agent)", timeout=1, what="drain relearnt")
        result = answer.result(timeout=60)
        answered = time.time()
    assert agent.wait(timeout=30) == 0
    return result, answered, event_times(procs.log("agent"))


def test_a_reload_mid_drain_the_drain_waits_for_what_the_old_worker_carries(
        procs: Processes, haproxy: HAProxy, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.log"
    answer, answered, events = reload_during_a_long_post(procs, haproxy, ledger)
    assert isinstance(answer, httpx.Response) and answer.status_code == 200, answer
    assert ledger.read_text() == "long-post\n"  # it ran once
    assert "event=drain.old_workers" in procs.log("agent")
    assert events["drain.done"] - events["signal.received"] > 25
    assert events["drain.done"] > answered - 0.5  # the drain ended with the POST, not at the reload
    assert events["app.signalled"] >= events["drain.done"]


def test_a_reload_mid_drain_without_the_reload_window_cuts_the_post_and_never_replays_it(
        procs: Processes, haproxy: HAProxy, tmp_path: Path) -> None:
    """The control: the same harness, the agent told to trust the stats alone. The drain ends
    at the reload, the app's 3 s stop cuts the POST, and HAProxy does not send it again (the
    app had done its work): the client gets an error, the ledger still says once."""
    ledger = tmp_path / "ledger.log"
    answer, _, events = reload_during_a_long_post(procs, haproxy, ledger, "--reload-window", "0")
    assert not (isinstance(answer, httpx.Response) and answer.status_code == 200), answer
    assert ledger.read_text() == "long-post\n"
    assert "event=drain.old_workers" not in procs.log("agent")
    assert events["drain.done"] - events["signal.received"] < 5  # ended at the reload


def test_haproxy_restarted_mid_drain_the_drain_still_ends_only_at_zero(procs: Processes, haproxy: HAProxy) -> None:
    agent = start_agent(procs, haproxy, haproxy.app_ports[0], "--drain-timeout", "30")
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"{haproxy.url}/cms?delay_ms=1500", timeout=20)
        wait_for(lambda: haproxy.server("app1").scur == 1, what="a session on app1")
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: "to=draining" in procs.log("agent"), what="draining")
        haproxy.proc.send_signal(signal.SIGTERM)  # HAProxy gone: the stats cannot be read
        haproxy.proc.wait(timeout=10)
        down_at = time.time()
        time.sleep(1.0)
        assert agent.poll() is None, "a stats read that failed was taken as drained"
        haproxy.socket.unlink(missing_ok=True)
        haproxy.proc = haproxy.start()
        with pytest.raises(httpx.HTTPError):
            slow.result()  # lost with the HAProxy that carried it: HAProxy's own cost, not the drain's
    assert agent.wait(timeout=15) == 0
    log = procs.log("agent")
    events = event_times(log)
    assert "event=haproxy.error" in log
    assert events["drain.done"] > down_at + 1.0


def test_haproxy_reload_mid_drain_under_load_fails_nothing(procs: Processes, haproxy: HAProxy) -> None:
    start_plain_services(procs, haproxy)
    agent = start_agent(procs, haproxy, haproxy.app_ports[0])
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")

    def drain_and_reload() -> int:
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: "to=draining" in procs.log("agent"), what="draining")
        haproxy.proc.send_signal(signal.SIGUSR2)  # master-worker reload: a new worker, listeners handed over
        return agent.wait(timeout=30)

    result, code = load_during(haproxy.url, drain_and_reload, requests=8000, slow_ms=300)
    assert code == 0
    assert result.failed == 0, result.failures
    assert "event=drain.done" in procs.log("agent")


def test_kill_9_of_the_agent_leaves_no_orphan_and_fails_nothing(procs: Processes, haproxy: HAProxy) -> None:
    """The app gets SIGTERM when its agent dies (parent-death signal), finishes what it has and
    exits; a new agent waits until the old app has let go of the port before starting its own."""
    start_plain_services(procs, haproxy)
    first = start_agent(procs, haproxy, haproxy.app_ports[0])
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    orphan = app_pid(procs)

    def kill_and_replace() -> float:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=5)
        began = time.monotonic()
        start_agent(procs, haproxy, haproxy.app_ports[0])  # what supervisor or Docker's restart does
        wait_for(lambda: not os.path.exists(f"/proc/{orphan}"), timeout=10, what="the old app gone")
        wait_for(lambda: haproxy.server("app1").status == "UP", timeout=10, what="app1 UP again")
        return time.monotonic() - began

    result, back_s = load_during(haproxy.url, kill_and_replace, requests=8000)
    assert result.failed == 0, result.failures
    assert isinstance(back_s, float) and back_s < 10
    log = procs.log("agent")
    assert app_pid(procs) != orphan
    started = [m.start() for m in re.finditer("event=app.started", log)]
    assert len(started) == 2
    print(f"\nkill -9 of the agent: serving again after {back_s:.2f}s; {result.total} requests, 0 failed")


def test_sigterm_while_starting_stops_at_once(procs: Processes, haproxy: HAProxy) -> None:
    """PID 1 ignores signals it has no handler for: the agent handles them before the app exists."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", haproxy.app_ports[0]))
    holder.listen(8)  # an "older app" still on the port: the agent waits before starting its own
    try:
        agent = start_agent(procs, haproxy, haproxy.app_ports[0])
        wait_for(lambda: "event=app.port_busy" in procs.log("agent"), what="waiting for the port")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=5) == 0
    finally:
        holder.close()
    assert "event=app.started" not in procs.log("agent")


def test_bad_configuration_is_one_line_and_exit_2(procs: Processes, haproxy: HAProxy) -> None:
    base = [str(BIN / "drain-agent")]
    cases = [
        ([*base, "--", "true"], {}, "no HAProxy stats URL"),
        ([*base, "--haproxy-stats", "tcp://x:1", "--", "true"], {}, "expected http://host:port/stats;csv"),
        ([*base, "--haproxy-stats", haproxy.stats_url, "--", "true"],
         {"DRAIN_AGENT_HAPROXY": "tcp://haproxy:9999"}, "agents no longer use HAProxy's Runtime API"),
        ([*base, "--haproxy-stats", haproxy.stats_url, "--agent-port", "70000", "--", "true"], {}, "not a TCP port"),
    ]
    for index, (args, env, message) in enumerate(cases):
        proc = procs.start(args, env, log=f"bad{index}")
        assert proc.wait(timeout=10) == 2
        assert message in procs.log(f"bad{index}")
        assert "app.started" not in procs.log(f"bad{index}")


def test_agent_port_taken_is_a_clear_error(procs: Processes, haproxy: HAProxy) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", haproxy.agent_ports[0]))
        taken.listen(1)
        proc = start_agent(procs, haproxy, haproxy.app_ports[0])
        assert proc.wait(timeout=10) == 1
    assert f"cannot listen on 127.0.0.1:{haproxy.agent_ports[0]} (--agent-port)" in procs.log("agent")
    assert "event=app.started" not in procs.log("agent")


def test_missing_and_unrunnable_commands(procs: Processes, haproxy: HAProxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = agent_args(haproxy)
    assert procs.start([*base, "--"], log="none").wait(timeout=10) == 2
    assert "no app command" in procs.log("none")
    assert procs.start([*base, "--", "no-such-command-xyz"], log="nf").wait(timeout=10) == 127
    assert "app command not found: 'no-such-command-xyz'" in procs.log("nf")
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\n")
    assert procs.start([*base, "--", str(script)], log="ne").wait(timeout=10) == 126


def test_agent_metrics(procs: Processes, haproxy: HAProxy) -> None:
    from agent.metrics import SCRAPE_TIMEOUT_S
    from tests.conftest import free_port

    metrics_port = free_port()
    agent = start_agent(procs, haproxy, haproxy.app_ports[0], "--metrics-port", str(metrics_port))
    wait_for(lambda: haproxy.server("app1").status == "UP", what="app1 UP")
    # 300 idle connections (anyone on the network can open them): no thread each in PID 1, a
    # scrape gets through once their deadline cut them, and the instance stays UP.
    idle = [socket.create_connection(("127.0.0.1", metrics_port)) for _ in range(300)]
    status = Path(f"/proc/{agent.pid}/status").read_text()
    assert int(re.search(r"Threads:\s+(\d+)", status)[1]) < 10, status  # type: ignore[index]
    time.sleep(SCRAPE_TIMEOUT_S + 0.5)
    for conn in idle:
        conn.close()
    assert httpx.get(f"http://127.0.0.1:{metrics_port}/nothing").status_code == 404
    assert haproxy.server("app1").status == "UP"
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'drain_agent_state{drain_agent_state="ready"} 1.0' in text
    ready_s = float(next(line.split()[1] for line in text.splitlines()
                         if line.startswith("drain_agent_time_to_ready_seconds ")))
    assert 0 < ready_s < 10
    assert "drain_agent_haproxy_stats_errors_total 0.0" in text
    assert "drain_agent_drain_seconds_count 0.0" in text
