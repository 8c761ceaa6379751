"""A surge's background drains: a failure there is reported with the deploy's result, not lost
with its thread; an engine that cannot overlap retires in the foreground."""

from __future__ import annotations

import threading

import pytest

from deploy.engines.base import Instance
from deploy.errors import RolloutError
from deploy.strategies.rolling import RestartResult, Retirements

OLD = [Instance("app1", "127.0.0.1:8001")]


class FakeEngine:
    def __init__(self, overlapping: bool, failure: Exception | None = None) -> None:
        self.overlapping_retire = overlapping
        self.failure = failure
        self.threads: list[str] = []

    def retire(self, instances: list[Instance]) -> None:
        self.threads.append(threading.current_thread().name)
        if self.failure is not None:
            raise self.failure


def test_a_failed_background_drain_is_in_the_result() -> None:
    engine, result, events = FakeEngine(True, OSError("supervisor socket gone")), RestartResult(), []
    with Retirements(engine, lambda i, name, detail: events.append(name), result) as retiring:  # type: ignore[arg-type]
        retiring.retire(OLD)
    assert result.error == "stopping app1 failed (supervisor socket gone); their replacements are UP and serve"
    assert events == [] and engine.threads != [threading.current_thread().name]


def test_a_halt_keeps_its_own_error_first() -> None:
    engine, result = FakeEngine(True, RolloutError("app1 did not stop within 115s")), RestartResult()
    with Retirements(engine, lambda *_: None, result) as retiring:  # type: ignore[arg-type]
        retiring.retire(OLD)
        result.error = "[app5] not ready and UP within 90s"
    assert result.error.splitlines() == ["[app5] not ready and UP within 90s",
                                         "stopping app1 failed (app1 did not stop within 115s); "
                                         "their replacements are UP and serve"]


def test_without_overlap_the_drain_runs_in_the_foreground_and_raises() -> None:
    engine = FakeEngine(False, RolloutError("boom"))
    with pytest.raises(RolloutError, match="boom"), Retirements(engine, lambda *_: None, RestartResult()) as retiring:  # type: ignore[arg-type]
        retiring.retire(OLD)
    assert engine.threads == [threading.current_thread().name]
