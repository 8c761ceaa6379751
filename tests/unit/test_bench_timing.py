"""How bench times a deploy (README's "deploy seconds") and plans its runs."""

from __future__ import annotations

import pytest

from bench import clients
from bench.measure import LoadSpec, installed, order
from bench.strategies import DeployTiming
from deploy.strategies.rolling import Event, RestartResult


def result(error: str | None = None) -> RestartResult:
    events = [Event(10.0, "app1", "restart"), Event(10.2, "app1", "started"), Event(11.0, "app1", "ready"),
              Event(11.1, "app2", "restart"), Event(11.3, "app2", "started"), Event(12.5, "app2", "ready")]
    return RestartResult(events=events, seconds={"app1": 1.0, "app2": 1.4}, error=error)


def test_a_deploy_lasts_from_its_first_action_to_the_last_instance_back() -> None:
    timing = DeployTiming.of("rolling_restart", "v2", result(), first="restart")
    assert (timing.began, timing.ended) == (10.0, 12.5)
    assert timing.seconds == pytest.approx(2.5)
    assert timing.per_instance_s == {"app1": 1.0, "app2": 1.4}
    record = timing.as_dict()
    assert record["seconds"] == pytest.approx(2.5)
    assert record["events"][0] == {"at": 10.0, "instance": "app1", "name": "restart", "detail": ""}  # type: ignore[index]


def test_a_halted_deploy_has_no_duration() -> None:
    timing = DeployTiming.of("rolling_restart", "v2", result(error="[app2] not ready"), first="restart")
    assert timing.began == 10.0
    assert timing.ended is None and timing.seconds is None
    assert timing.error == "[app2] not ready"


def test_the_sample_script_starts_at_its_first_drain() -> None:
    found = result()
    found.events.insert(0, Event(9.0, "app1", "drain"))
    assert DeployTiming.of("sample_script", "v2", found, first="drain").seconds == pytest.approx(3.5)


def test_order_rotates_the_variants_from_run_to_run() -> None:
    assert [order(["a", "b", "c"], run) for run in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert order([], 3) == []


def test_loads_whose_client_is_missing_are_left_out_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients, "available", lambda tool: tool == "wrk")
    plan = [LoadSpec("hey", requests=10), LoadSpec("wrk", duration_s=1), LoadSpec("strict", requests=10)]
    kept, notes = installed(plan)
    assert [load.client for load in kept] == ["wrk", "strict"]
    assert notes == ["hey is not installed: its rows are skipped"]


def test_a_trace_window_counts_what_ended_in_it() -> None:
    from bench.tracing import Trace

    trace = Trace(raw=[(10.0, 10.1, b"{}"), (10.5, 11.5, b"{}"), (11.9, 12.2, b"{}")])
    found = trace.window([(10.0, 12.0)])
    assert found["requests"] == 2 and found["rps"] == 1.0
    assert found["p99_ms"] is not None and round(found["p99_ms"]) == 1000
    assert trace.window([(20.0, 21.0)]) == {"seconds": 1.0, "requests": 0, "rps": 0.0, "p99_ms": None}
