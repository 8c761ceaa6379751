"""The release judge (deploy.core.analysis) and the history (deploy.history): pure rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.haproxy import ServerStat
from deploy.core.analysis import Figures, Thresholds, canary_count, canary_weights, delta, judge
from deploy.core.watch import Watch
from deploy.errors import RolloutError
from deploy.history import History, table
from deploy.model import Instance, Release


def row(addr: str = "127.0.0.1:1", status: str = "UP", **counters: int) -> ServerStat:
    return ServerStat("app", addr.rsplit(":", 1)[1], status, 0, 0, addr, "", **counters)


def test_a_counter_that_went_down_restarted_from_zero() -> None:
    """A HAProxy reload starts a new worker's counters at zero: never a negative delta."""
    then = row(req_tot=1000, hrsp_5xx=10)
    assert delta(row(req_tot=1100, hrsp_5xx=12, rtime=5), then) == Figures(100, 2, 5.0)
    assert delta(row(req_tot=40, hrsp_5xx=1, rtime=5), then) == Figures(40, 1, 5.0)


def test_errors_count_5xx_failed_connections_and_cut_responses() -> None:
    figures = delta(row(req_tot=100, hrsp_5xx=1, econ=2, eresp=3), row())
    assert (figures.requests, figures.errors) == (100, 6)


@pytest.mark.parametrize(("new", "old", "fails"), [
    (Figures(10, 1), Figures(1000, 0), True),  # one 500 in ten requests is a signal
    (Figures(1000, 5), Figures(1000, 0), False),  # 0.5% is within +1%
    (Figures(1000, 25), Figures(1000, 20), False),  # worse, but within the margin of the old
    (Figures(1000, 40), Figures(1000, 20), True),
    (Figures(0, 3), Figures(100, 0), True),  # failed connections with no request answered
    (Figures(0, 0), Figures(0, 0), False),
])
def test_the_error_share_is_judged_against_the_old_one(new: Figures, old: Figures, fails: bool) -> None:
    assert (judge(new, old, Thresholds()) is not None) is fails


@pytest.mark.parametrize(("new_ms", "old_ms", "requests", "fails"), [
    (35, 10, 100, False),  # 3.5 times, but only 25 ms more: noise on a fast service
    (100, 10, 100, True),
    (100, 10, 10, False),  # too few requests to judge latency
    (500, 200, 100, False),  # 2.5 times: within x3
    (700, 200, 100, True),
])
def test_latency_is_judged_with_a_ratio_a_floor_and_enough_requests(
        new_ms: int, old_ms: int, requests: int, fails: bool) -> None:
    new, old = Figures(requests, 0, float(new_ms)), Figures(1000, 0, float(old_ms))
    assert (judge(new, old, Thresholds()) is not None) is fails
    assert judge(new, old, Thresholds(), latency=False) is None


def test_figures_add_up_with_latency_weighted_by_requests() -> None:
    total = Figures(100, 1, 10.0) + Figures(300, 2, 30.0) + Figures(0, 0, None)
    assert total == Figures(400, 3, 25.0)


@pytest.mark.parametrize("bad", [{"max_error_rate": -0.1}, {"max_error_rate": 2}, {"max_latency_ratio": 0.5}])
def test_thresholds_out_of_range_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("percent", [1, 5, 10, 25, 33, 50, 75, 90, 99])
@pytest.mark.parametrize("old", [2, 3, 4, 8, 16, 64])
def test_canary_weights_give_the_share_asked_within_a_point(percent: int, old: int) -> None:
    """With as many new instances as a step runs (its share of the fleet, at least one)."""
    new = canary_count(percent, old)
    w_new, w_old = canary_weights(percent, new, old)
    assert 0 <= w_old <= 256 and 1 <= w_new <= 256
    assert 100 * new * w_new / (new * w_new + old * w_old) == pytest.approx(percent, abs=1.0)


def test_canary_at_100_percent_sends_nothing_to_the_old_ones() -> None:
    assert canary_weights(100, 3, 3)[1] == 0
    with pytest.raises(ValueError):
        canary_weights(0, 1, 3)


def test_canary_count_is_the_fleet_share_at_least_one() -> None:
    assert [canary_count(p, 4) for p in (5, 25, 26, 50, 100)] == [1, 1, 2, 2, 4]


def test_the_watch_fails_a_new_server_that_left_up_restarted_or_went_down() -> None:
    new = Instance("app4", "127.0.0.1:4")
    for later, incarnation, says in [
        (row("127.0.0.1:4", "DOWN"), "1", "left UP: HAProxy says DOWN"),
        (row("127.0.0.1:4", "MAINT"), "1", "left UP"),
        (row("127.0.0.1:4", chkdown=2), "1", "went DOWN in HAProxy 1 time(s)"),
        (row("127.0.0.1:4"), "2", "restarted (was 1, now 2)"),
    ]:
        watch = Watch(Thresholds())
        watch.expect(new)
        watch.add(new, row("127.0.0.1:4", chkdown=1), "1")
        assert watch.observe([row("127.0.0.1:4", chkdown=1)], {"app4": "1"}) is None
        assert says in (watch.observe([later], {"app4": incarnation}) or "")


def test_a_new_server_is_never_counted_as_old_even_before_it_is_watched() -> None:
    watch = Watch(Thresholds())
    watch.expect(Instance("app4", "127.0.0.1:4"))
    watch.observe([row("127.0.0.1:1", req_tot=0), row("127.0.0.1:4", req_tot=0)], {})
    watch.observe([row("127.0.0.1:1", req_tot=100), row("127.0.0.1:4", req_tot=50, hrsp_5xx=50)], {})
    assert watch.old_deploy == Figures(100, 0, 0.0)


# -- history ----------------------------------------------------------------------------------

def test_undo_returns_to_the_release_before_the_last_good_deploy(tmp_path: Path) -> None:
    history = History(tmp_path / "history.json")
    with pytest.raises(RolloutError, match="no deploy in"):
        history.undo_target()
    history.end(history.begin("up", Release("v1"), None), "ok")
    with pytest.raises(RolloutError, match="first release"):
        history.undo_target()
    history.end(history.begin("deploy", Release("v2", {"A": "1"}), Release("v1")), "ok")
    history.end(history.begin("deploy", Release("v3"), Release("v2", {"A": "1"})), "rolled-back")
    entry, release = history.undo_target()
    assert (entry.number, release) == (2, Release("v1"))
    history.end(history.begin("undo", release, entry.release), "ok")
    assert history.undo_target()[1] == Release("v2", {"A": "1"})  # a second undo goes back again
    assert [e.result for e in history.entries()] == ["ok", "ok", "rolled-back", "ok"]
    assert "v2 (A=1)" in table(history.entries())


def test_a_deploy_the_tool_did_not_finish_shows_as_running(tmp_path: Path) -> None:
    history = History(tmp_path / "history.json")
    history.end(history.begin("up", Release("v1"), None, size=3), "ok")
    assert history.interrupted() is None
    history.begin("deploy", Release("v2"), Release("v1"), size=3)
    entries = History(tmp_path / "history.json").entries()
    assert [(e.result, e.size) for e in entries] == [("ok", 3), ("running", 3)]
    assert history.interrupted() == entries[-1]


def test_undo_after_a_halted_or_interrupted_deploy_returns_to_the_release_before_it(tmp_path: Path) -> None:
    history = History(tmp_path / "history.json")
    history.end(history.begin("up", Release("v1"), None), "ok")
    history.end(history.begin("deploy", Release("v2"), Release("v1")), "ok")
    history.end(history.begin("restart", Release("v2"), Release("v2")), "ok")  # changes no release
    assert history.undo_target()[1] == Release("v1")
    history.end(history.begin("deploy", Release("v3"), Release("v2")), "halted")  # part on v3
    assert history.undo_target()[1] == Release("v2")
    history.begin("deploy", Release("v4"), Release("v2"))  # the tool died during it
    assert history.undo_target()[1] == Release("v2")


@pytest.mark.parametrize("content", ["", "{", "[{\"number\": 1}]", "[1]", "\"x\""])
def test_a_damaged_history_is_one_line_that_says_what_to_do(tmp_path: Path, content: str) -> None:
    path = tmp_path / "history.json"
    path.write_text(content)
    with pytest.raises(RolloutError, match=r"is damaged .*move it aside"):
        History(path).entries()


def test_history_is_written_whole_and_bounded(tmp_path: Path) -> None:
    history = History(tmp_path / "history.json")
    for n in range(105):
        history.end(history.begin("deploy", Release(f"v{n}"), None), "ok")
    data = json.loads((tmp_path / "history.json").read_text())
    assert len(data) == 100 and data[-1]["release"]["version"] == "v104"
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]  # no temporary file left


def test_the_report_says_which_old_figures_it_compared_with() -> None:
    new = Instance("app4", "127.0.0.1:4")
    watch = Watch(Thresholds())
    rows = [row("127.0.0.1:1", req_tot=0), row("127.0.0.1:4", req_tot=0)]
    watch.observe(rows, {})
    watch.expect(new)
    watch.add(new, rows[1], "1")
    later = [row("127.0.0.1:1", req_tot=100), row("127.0.0.1:4", req_tot=50)]
    watch.observe(later, {})
    assert "; old over the deploy 0 errors in 100 requests" in watch.describe(later)
    watch.mark(later)  # a canary step's window
    assert "; old over the deploy (none served in this window)" in watch.describe(later)
    again = [row("127.0.0.1:1", req_tot=130), row("127.0.0.1:4", req_tot=60)]
    watch.observe(again, {})
    assert watch.describe(again) == "new 0 errors in 10 requests (0.0%), 0 ms; old in this window 0 errors in 30 requests (0.0%), 0 ms"
