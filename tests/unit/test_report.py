"""The load check's report files: every bucket, every event, a summary and a plot."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from deploy.check.loadcheck import LedgerCheck, LoadPlan, LoadResult, Second
from deploy.check.outcome import Outcome
from deploy.check.report import summary, write_report
from deploy.model import Event, RestartResult


def sample() -> tuple[LoadResult, RestartResult]:
    result = LoadResult(started=1000.0, elapsed_s=3.0, total=30, ok=29)
    result.failures = Counter({"http 503": 1})
    result.versions = Counter({"v1": 20, "v2": 10})
    result.kinds = Counter({"get": 25, "post": 5})
    result.latencies_ms = [float(i) for i in range(30)]
    result.seconds = {
        0: Second(ok=10, latencies_ms=[1.0] * 10, versions=Counter({"v1": 10})),
        2: Second(ok=19, failed=1, latencies_ms=[5.0] * 19, versions=Counter({"v1": 10, "v2": 9})),
    }
    restart = RestartResult(events=[Event(1001.0, "app1", "restart"), Event(1001.5, "app1", "ready", "UP")],
                            seconds={"app1": 0.5})
    return result, restart


def test_report_files(tmp_path: Path) -> None:
    result, restart = sample()
    ledger = LedgerCheck(answered=5, failed=0, processed_once=5, missing=0, duplicated=0, failed_but_processed=0)
    plan = LoadPlan(url="http://127.0.0.1:1/cms", requests=30)
    written = write_report(tmp_path, Outcome(plan, result, ledger, restart))
    assert {p.name for p in written} == {"report.json", "report.md", "timeline.png"}
    data = json.loads((tmp_path / "report.json").read_text())
    assert [s["t"] for s in data["seconds"]] == [0, 1, 2]  # empty seconds are kept, as zeros
    assert data["seconds"][2] == {"t": 2, "ok": 19, "failed": 1, "p50_ms": 5.0, "p99_ms": 5.0,
                                  "versions": {"v1": 10, "v2": 9}}
    assert [(e["t"], e["event"]) for e in data["events"]] == [(1.0, "restart"), (1.5, "ready")]
    assert data["failures"] == {"http 503": 1}
    markdown = (tmp_path / "report.md").read_text()
    assert "| 30 | 29 | 1 |" in markdown and "http 503 1" in markdown
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_names_failures_and_verdicts() -> None:
    result, restart = sample()
    bad = LedgerCheck(answered=5, failed=1, processed_once=4, missing=0, duplicated=1, failed_but_processed=1)
    text = summary(result, bad, restart, 100)
    assert "failed     1 (http 503: 1)" in text
    assert "NOT exactly once: 0 answered but not recorded, 1 processed twice, 1 failed yet processed" in text
    assert "restart    app1 0.50s (done)" in text


def test_report_without_matplotlib_says_what_to_install(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    from deploy import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli.main(["--state-dir", str(tmp_path), "check", "--report", str(tmp_path / "r")]) == 2
    assert "pip install 'zero-downtime-haproxy[report]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_deploys_own_steps_are_marked_beside_the_agents_events(tmp_path: Path) -> None:
    result, restart = sample()
    restart.events += [Event(1001.6, "deploy", "canary", "5% of the traffic to 1 new instance(s): weight 3"),
                       Event(1002.0, "deploy", "watch-failed", "[app4] error share 30.0%"),
                       Event(1002.1, "deploy", "rollback", "1 instance(s) back")]
    agents = [Event(1001.2, "app1", "drain")]
    write_report(tmp_path, Outcome(LoadPlan(url="http://127.0.0.1:1/cms", requests=30), result, None, restart), agents)
    data = json.loads((tmp_path / "report.json").read_text())
    assert [(m["instance"], m["event"]) for m in data["instance_events"]] == [
        ("app1", "drain"), ("deploy", "canary"), ("deploy", "watch-failed"), ("deploy", "rollback")]
    assert "| 1.6 | deploy | canary | 5% of the traffic" in (tmp_path / "report.md").read_text()


def test_one_outcome_one_writer_the_streams_section_included(tmp_path: Path) -> None:
    """The streams go into report.json and report.md as they are written, and a stream that
    lost an echo fails the outcome even with every HTTP request answered."""
    from deploy.check.streams import Reconnect, StreamsResult, WsTally

    result, restart = sample()
    result.failures, result.ok = Counter(), 30
    clients = StreamsResult(ws=[WsTally("ws-1", sent=10, echoed=9, unacked=1)],
                            reconnects=[Reconnect("ws", "ws-1", 1001.0, 1001.04, "1012", "app1", reached="app2")])
    plan = LoadPlan(url="http://127.0.0.1:1/cms", requests=30)
    outcome = Outcome(plan, result, None, restart, clients)
    write_report(tmp_path, outcome)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["streams"]["ws_messages"] == 10 and data["streams"]["ws_exactly_once"] is False
    assert "## Long-lived connections" in (tmp_path / "report.md").read_text()
    assert not outcome.ok
    assert Outcome(plan, result, None, restart).ok
