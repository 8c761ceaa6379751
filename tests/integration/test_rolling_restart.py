"""Rolling restarts of the local stack (supervisor + HAProxy + drain-agent) under load.

The zero-failure test and its negative control use the same harness: same load, same
restart; only the agent and HAProxy's retries differ. The control must catch failures,
or the zero means nothing.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from deploy.check.loadcheck import LoadResult, check_ledgers
from deploy.engines.local import LocalEngine
from deploy.strategies.rolling import Event, RestartResult, read_servers, rolling_restart, row_of
from tests.conftest import BIN, load_during, make_stack, shut_down


def load_with_restart(engine: LocalEngine, version: str, slow_ms: int = 150,
                      **options: object) -> tuple[LoadResult, RestartResult]:
    events: list[Event] = []
    result, restart = load_during(
        engine.frontend_url(), lambda: rolling_restart(engine, version, {}, 60, events.append, **options),  # type: ignore[arg-type]
        slow_ms=slow_ms)
    # The whole restart happened while the load ran.
    assert result.started < events[0].at and events[-1].at < result.started + result.elapsed_s
    assert isinstance(restart, RestartResult)
    return result, restart


def test_rolling_restart_under_load_loses_nothing(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory()
    result, restart = load_with_restart(engine, "v2")

    assert restart.error is None
    assert result.total >= 20_000
    assert result.failed == 0, result.failures
    assert result.ok == result.total
    assert set(result.kinds) == {"get", "get-slow", "post"}
    assert set(result.versions) == {"v1", "v2"}
    ledger = check_ledgers(result, engine.ledgers())
    assert ledger.answered == result.kinds["post"] > 1000
    assert ledger.processed_once == ledger.answered and ledger.ok
    assert [engine.version_of(i) for i in engine.instances()] == ["v2", "v2", "v2"]
    stats = read_servers(engine)
    assert {row_of(stats, i).status for i in engine.instances()} == {"UP"}  # type: ignore[union-attr]


def test_negative_control_same_harness_without_agent_or_retries_fails(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory(agent=False, retry_on="none", retries=0)
    result, restart = load_with_restart(engine, "v2")

    assert restart.error is None
    assert result.failed > 0, "the harness should catch the failures of a plain restart"
    assert [engine.version_of(i) for i in engine.instances()] == ["v2", "v2", "v2"]


def test_rollout_cli_status_restart_and_halt(tmp_path: Path) -> None:
    engine = make_stack(tmp_path)
    stack = engine.stack
    rollout = [str(BIN / "rollout"), "--state-dir", stack.state_dir]

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*rollout, *args], capture_output=True, text=True, timeout=timeout, check=False)

    up = run("up", "--detach", "--port", str(stack.port), "--stats-port", str(stack.stats_port),
             "--app-base-port", str(stack.app_base_port), "--agent-base-port", str(stack.agent_base_port))
    try:
        assert up.returncode == 0, up.stderr
        again = run("up", "--detach", "--port", str(stack.port))
        assert again.returncode != 0 and "already running" in again.stderr

        status = run("status")
        lines = status.stdout.splitlines()
        assert lines[0].split() == ["SERVER", "HAPROXY", "SESSIONS", "QUEUED", "VERSION"]
        assert [line.split()[:2] + line.split()[-1:] for line in lines[1:]] == [
            ["app1", "UP", "v1"], ["app2", "UP", "v1"], ["app3", "UP", "v1"]]

        bad_release = ("--version", "bad", "--env", "SERVICE_WARMUP_S=600",
                       "--env", "DRAIN_AGENT_START_TIMEOUT=2", "--restart-timeout", "4")
        bad = run("restart", *bad_release)  # a deploy: rolled back by itself
        assert bad.returncode == 1
        assert "[app1] app not ready at http://127.0.0.1:" in bad.stderr and "within 2s" in bad.stderr
        assert "deploy failed and was rolled back" in bad.stderr
        assert "rolled back: app1 on v1; untouched: app2, app3" in bad.stderr
        versions = [line.split()[-1] for line in run("status").stdout.splitlines()[1:]]
        assert versions == ["v1", "v1", "v1"]

        bad = run("restart", *bad_release, "--no-rollback")  # today's halt
        assert bad.returncode == 1
        assert "rollout halted; untouched: app2, app3" in bad.stderr
        versions = [line.split()[-1] for line in run("status").stdout.splitlines()[1:]]
        assert versions[1:] == ["v1", "v1"]  # the rest keep serving the old version

        good = run("restart", "--version", "v1")
        assert good.returncode == 0, good.stderr
        assert "[app3] ready" in good.stderr
        status = run("status")
        assert [line.split()[1] for line in status.stdout.splitlines()[1:]] == ["UP"] * 3, status.stderr

        assert run("restart", "--env", "oops").returncode == 2
    finally:
        down = run("down")
        shut_down(engine)
    assert down.returncode == 0
    assert run("status").returncode != 0


class UpCounter:
    """Samples how many servers HAProxy has UP, every 20 ms, while a deploy runs."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.samples.append(sum(1 for s in read_servers(self.engine) if s.status == "UP"))

    def __enter__(self) -> UpCounter:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def test_surge_keeps_every_instance_up_and_loses_nothing(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory()
    with UpCounter(engine) as up:
        result, restart = load_with_restart(engine, "v2", surge=True)
    assert restart.error is None
    assert result.failed == 0, result.failures
    assert check_ledgers(result, engine.ledgers()).ok
    assert min(up.samples) >= 3 and max(up.samples) == 4  # a new one UP before an old one drained
    assert len(engine.instances()) == 3
    assert [engine.version_of(i) for i in engine.instances()] == ["v2", "v2", "v2"]


def test_surge_boots_the_next_instance_while_the_last_one_drains(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """1.5 s requests keep each old instance draining; the next new one is started meanwhile,
    and capacity still never drops below 3."""
    engine = stack_factory()
    with UpCounter(engine) as up:
        result, restart = load_with_restart(engine, "v2", surge=True, slow_ms=1500)
    assert restart.error is None and result.failed == 0, (restart.error, result.failures)
    assert min(up.samples) >= 3
    started = [e.at for e in restart.events if e.name == "started"]
    stopped = [e.at for e in restart.events if e.name == "stopped"]
    assert len(started) == len(stopped) == 3
    # Old batch i stopped only after new batch i+1 had started: the drain overlapped the boot.
    assert stopped[0] > started[1] and stopped[1] > started[2], restart.events


def test_negative_control_stop_first_drops_capacity(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """The same counter sees a stop-first deploy go below 3: it can catch a drop."""
    engine = stack_factory()
    with UpCounter(engine) as up:
        result, restart = load_with_restart(engine, "v2")
    assert restart.error is None and result.failed == 0
    assert min(up.samples) == 2


def test_twelve_instances_three_at_a_time(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory(instances=12)
    with UpCounter(engine) as up:
        result, restart = load_with_restart(engine, "v2", max_unavailable="3")
    assert restart.error is None
    assert result.failed == 0, result.failures
    assert check_ledgers(result, engine.ledgers()).ok
    assert min(up.samples) >= 9  # never more than 3 out at once
    assert min(up.samples) < 12  # and it did take several out together
    assert {engine.version_of(i) for i in engine.instances()} == {"v2"}


def test_large_posts_ride_through_even_with_the_agents_stats_access_cut(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """POSTs of 20 KB-1 MiB (HAProxy could re-send only those under its 16 KB buffer) never meet a
    draining app: HAProxy learns the drain from the agent before the app stops. Then the same with
    agents that cannot read HAProxy's stats: they wait their drain timeout, HAProxy still polls them."""
    engine = stack_factory()
    big = {"requests": 1500, "concurrency": 30, "post_bytes": (20 * 1024, 1024 * 1024 - 100)}  # + JSON: 1 MiB
    result, restart = load_during(engine.frontend_url(), lambda: rolling_restart(engine, "v2", {}, 60, print), **big)
    assert restart.error is None  # type: ignore[attr-defined]
    assert result.failed == 0, result.failures
    assert check_ledgers(result, engine.ledgers()).ok and len(result.posts_answered) > 300

    cut = {"DRAIN_AGENT_HAPROXY_STATS": "http://127.0.0.1:1/stats;csv", "DRAIN_AGENT_DRAIN_TIMEOUT": "1"}
    assert rolling_restart(engine, "v2", cut, 60, print).error is None
    result, restart = load_during(engine.frontend_url(), lambda: rolling_restart(engine, "v3", {}, 60, print), **big)
    assert restart.error is None  # type: ignore[attr-defined]
    assert result.failed == 0, result.failures
    assert check_ledgers(result, engine.ledgers()).ok
    log = engine.log_tail(engine.instances()[0], 400)
    assert "event=drain.timeout" in log and "unreachable" in log  # the cut agents could not read stats


def test_without_the_agent_posts_of_every_size_ride_through_a_rolling_restart(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """No agent: the service's own drain is the safety net, for 30% POSTs of 20 KB to 1 MiB.
    It refuses (425, which HAProxy re-sends) only what HAProxy holds whole, serves the larger
    ones while it drains, and keeps its listener open until HAProxy's checks took it out.
    (The control without the agent and without retries is the negative control above.)"""
    engine = stack_factory(agent=False)
    big = {"requests": 4000, "concurrency": 50, "post_share": 0.3,
           "post_bytes": (20 * 1024, 1024 * 1024 - 100)}  # + JSON: 1 MiB, the service's limit
    result, restart = load_during(engine.frontend_url(), lambda: rolling_restart(engine, "v2", {}, 60, print), **big)
    assert restart.error is None  # type: ignore[attr-defined]
    print(f"\nno agent, POSTs of 20 KB-1 MiB: {result.total} requests, {result.failed} failed "
          f"{dict(result.failures)}; {len(result.posts_answered)} POSTs")
    assert result.failed == 0, result.failures
    assert check_ledgers(result, engine.ledgers()).ok and len(result.posts_answered) > 800
    assert {engine.version_of(i) for i in engine.instances()} == {"v2"}
