"""Bad releases on the local stack, through `rollout` itself, under the strict checker.

A release that gets UP and then crashes, and one that answers 500 to a share of real
requests, are caught by the watch (HAProxy's own per-server counters, new against old) and
rolled back by the tool; a good release under canary steps goes through with 0 failed and
the traffic shares asked. The bad releases' own 500s, counted by the same harness, are the
negative control: the checker sees what a bad release does, and sees none after the rollback.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from deploy.check.loadcheck import LoadResult, check_ledgers
from deploy.engines.local import LocalEngine
from deploy.strategies.rolling import read_servers
from tests.conftest import BIN, load_during


def rollout(engine: LocalEngine, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "rollout"), "--state-dir", str(engine.root), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def deploy_under_load(engine: LocalEngine, *args: str, requests: int = 15_000
                      ) -> tuple[LoadResult, subprocess.CompletedProcess[str]]:
    result, run = load_during(engine.frontend_url(), lambda: rollout(engine, *args), requests=requests,
                              slow_ms=100)
    assert isinstance(run, subprocess.CompletedProcess)
    return result, run


def event_time(stderr: str, name: str) -> float:
    """When `rollout` printed an event (HH:MM:SS.mmm, today, local time)."""
    match = re.search(rf"^(\d\d:\d\d:\d\d\.\d\d\d) \[[^\]]+\] {name}\b", stderr, re.M)
    assert match, f"no {name} event in:\n{stderr}"
    clock = time.strptime(time.strftime("%Y-%m-%d ") + match[1][:8], "%Y-%m-%d %H:%M:%S")
    return time.mktime(clock) + int(match[1][9:]) / 1000


def failed_after(result: LoadResult, at: float) -> int:
    """Failures in the whole seconds of the run that began after `at` (completion time)."""
    first = int(at - result.started) + 1
    return sum(second.failed for k, second in result.seconds.items() if k >= first)


def all_up_on(engine: LocalEngine, version: str) -> None:
    instances = engine.instances()
    assert len(instances) == 3
    rows = {s.addr: s.status for s in read_servers(engine, "app")}
    assert [rows.get(i.address) for i in instances] == ["UP"] * 3, rows
    assert [engine.version_of(i) for i in instances] == [version] * 3


def test_a_release_that_crashes_after_up_is_rolled_back(stack_factory) -> None:  # type: ignore[no-untyped-def]
    """Crashes 2 s after every start; --min-ready 4 holds each batch, so the deploy stops
    after the first one and rolls it back; the other two are never touched."""
    engine = stack_factory()
    result, run = deploy_under_load(engine, "deploy", "v2", "--env", "SERVICE_FAULT_CRASH_AFTER_S=2",
                                    "--min-ready", "4", "--watch-for", "5")
    assert run.returncode == 1, run.stderr
    assert "deploy failed and was rolled back" in run.stderr
    assert re.search(r"watch failed: \[app1\] (restarted|left UP|went DOWN)", run.stderr), run.stderr
    assert "rolled back: app1 on v1; untouched: app2, app3" in run.stderr
    assert "[app2] restart" not in run.stderr
    all_up_on(engine, "v1")
    assert result.versions["v2"] > 0  # it did serve before it crashed
    # what fails is what was in flight on the crashing app (cut), nothing after the rollback
    assert failed_after(result, event_time(run.stderr, "rollback")) == 0, result.failures
    history = rollout(engine, "history").stdout.splitlines()
    assert history[-1].split()[-1] == "rolled-back" and "SERVICE_FAULT_CRASH_AFTER_S=2" in history[-1]


def test_a_release_that_answers_500_is_caught_at_the_first_canary_step(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory()
    result, run = deploy_under_load(engine, "deploy", "v2", "--env", "SERVICE_FAULT_ERROR_SHARE=0.3",
                                    "--canary", "5,25,100", "--watch-for", "5")
    assert run.returncode == 1, run.stderr
    assert "error share" in run.stderr and "--max-error-rate" in run.stderr
    assert [line.split("canary ")[1].split("%")[0] for line in run.stderr.splitlines()
            if "] canary " in line] == ["5"]
    assert "untouched: app1, app2, app3" in run.stderr  # the old ones never stopped serving
    all_up_on(engine, "v1")
    # At most the first step's share of the requests ever reached v2 (its 500s included)
    reached_v2 = result.versions["v2"] + result.failures["http 500"]
    assert result.failures["http 500"] > 0  # the negative control: the checker sees a bad release
    assert reached_v2 / result.total < 0.05, (reached_v2, result.total)
    assert failed_after(result, event_time(run.stderr, "rollback")) == 0, result.failures
    assert set(result.failures) == {"http 500"}, result.failures


def test_a_good_release_through_canary_steps_fails_nothing(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory()
    began = time.monotonic()
    plain = rollout(engine, "deploy", "v2", "--surge", "--watch-for", "0")
    plain_s = time.monotonic() - began
    assert plain.returncode == 0, plain.stderr

    began = time.monotonic()
    result, run = deploy_under_load(engine, "deploy", "v3", "--canary", "5,25,100", "--watch-for", "3",
                                    requests=20_000)
    canary_s = time.monotonic() - began
    assert run.returncode == 0, run.stderr
    assert result.failed == 0, result.failures
    assert check_ledgers(result, engine.ledgers()).ok
    all_up_on(engine, "v3")
    # Each step's share, from HAProxy's per-server counters over its window
    shares = {}
    for line in run.stderr.splitlines():
        if m := re.search(r"watch-passed canary (\d+)%: new \d+ errors in (\d+) requests.*; "
                          r"old in this window \d+ errors in (\d+)", line):
            shares[int(m[1])] = 100 * int(m[2]) / (int(m[2]) + int(m[3]))
        elif "watch-passed canary 100%: " in line and "old over the deploy (none served" in line:
            shares[100] = 100.0
    assert set(shares) == {5, 25, 100}, run.stderr
    assert abs(shares[5] - 5) < 3 and abs(shares[25] - 25) < 4 and shares[100] > 97, shares
    # the unwatched deploy, plus three holds and the final window, plus the first load second
    assert canary_s < plain_s + 4 * 3 + 1.0 + 3.0, (canary_s, plain_s)


def test_history_after_three_deploys_and_undo_under_load(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory()
    for version in ("v2", "v3", "v4"):
        run = rollout(engine, "deploy", version, "--watch-for", "0.5")
        assert run.returncode == 0, run.stderr
    lines = rollout(engine, "history").stdout.splitlines()
    assert [line.split()[3:] for line in lines[1:]] == [
        ["deploy", "v2", "v1", "ok"], ["deploy", "v3", "v2", "ok"], ["deploy", "v4", "v3", "ok"]]

    result, run = deploy_under_load(engine, "undo", "--watch-for", "1")
    assert run.returncode == 0, run.stderr
    assert "undo #3 (v4): back to v3" in run.stderr
    assert result.failed == 0, result.failures
    assert set(result.versions) == {"v3", "v4"}
    all_up_on(engine, "v3")
    assert rollout(engine, "history").stdout.splitlines()[-1].split()[3:] == ["undo", "v3", "v4", "ok"]


def test_watch_flags_are_refused_where_they_mean_nothing(tmp_path: Path, stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory()
    for args, says in [
        (("restart", "--canary", "5"), "--canary: for deploys"),
        (("deploy", "v2", "--canary", "5", "--watch-for", "0"), "--canary needs a watch window"),
        (("deploy", "v2", "--canary", "50,5"), "rising percentages"),
        (("deploy", "v2", "--watch-for", "ten"), "expected a duration"),
        (("deploy", "v2", "--max-error-rate", "7"), "--max-error-rate 7.0: must be 0..1"),
        (("undo",), "nothing to undo"),
    ]:
        run = rollout(engine, *args)
        assert run.returncode in (1, 2) and says in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr
    all_up_on(engine, "v1")


def test_a_second_deploy_half_a_second_later_is_refused_naming_the_first(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory()
    seen: dict[str, object] = {}

    def two_deploys() -> subprocess.CompletedProcess[str]:
        first = subprocess.Popen([str(BIN / "rollout"), "--state-dir", str(engine.root), "deploy", "v2",
                                  "--watch-for", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        began = time.monotonic()
        seen["second"] = rollout(engine, "deploy", "v3")
        seen["second_s"] = time.monotonic() - began
        seen["first_pid"] = first.pid
        out, err = first.communicate(timeout=120)
        return subprocess.CompletedProcess(first.args, first.returncode, out, err)

    result, first = load_during(engine.frontend_url(), two_deploys, requests=10_000, slow_ms=100)
    assert isinstance(first, subprocess.CompletedProcess)
    second = seen["second"]
    assert isinstance(second, subprocess.CompletedProcess)
    assert second.returncode == 1 and float(seen["second_s"]) < 1.0, (second.stderr, seen["second_s"])  # type: ignore[arg-type]
    assert f"another deploy holds this stack: pid {seen['first_pid']} on " in second.stderr
    assert "deploy v2" in second.stderr
    assert first.returncode == 0, first.stderr
    assert result.failed == 0, result.failures
    all_up_on(engine, "v2")
    assert "v3" not in result.versions
