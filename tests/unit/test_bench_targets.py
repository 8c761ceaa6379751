"""bench's verdicts on the issue's targets: each must be able to say "missed", and say why."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report, targets

Record = dict[str, Any]


def cost(overhead_ms: float | None = 40.0, stop_path_ms: int = 220, ready_ms: float | None = 20.0) -> Record:
    return {"instance": "app1", "signal_at": 1.0, "stop_path_ms": stop_path_ms, "drain_ms": stop_path_ms - 1,
            "ready_ms": ready_ms, "up_ms": 400, "in_flight_ms": 200.0, "overhead_ms": overhead_ms,
            "app_stop_ms": 200, "respawn_ms": 150, "app_start_ms": 300}


def deploy(*, failed: int = 0, error: str | None = None, covered: bool = True, stale: bool = False,
           posts_ok: bool | None = True, restarts: int = 3, costs: list[Record] | None = None,
           client: str = "strict", variant: str = "rolling restart", p99_ms: float = 100.0, **extra: Any) -> Record:
    names = [f"app{i}" for i in range(1, restarts + 1)]
    load_extra = {} if posts_ok is None else {"posts": {"exactly_once": posts_ok}}
    return {
        "client": client, "variant": variant, "run": 1,
        "load": {"requests": 10_000, "ok": 10_000 - failed, "failed": failed,
                 "failures": {"http 503": failed} if failed else {}, "p99_ms": p99_ms, "extra": load_extra},
        "deploy": {"strategy": "rolling_restart", "version": "v2", "error": error,
                   "seconds": None if error else 3.5, "per_instance_s": dict.fromkeys(names, 1.1), "events": []},
        "covered": covered,
        "versions_after": ["v2", "v1" if stale else "v2", "v2"],
        "agent_costs": [cost() for _ in names] if costs is None else costs,
        **extra,
    }


def results(*, original: list[Record] | None = None, usual: list[Record] | None = None,
            agent: dict[str, Any] | None = None, steady: dict[str, Any] | None = None) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    if original is not None:
        sections["original"] = {"runs": original}
    if usual is not None:
        sections["usual"] = {"runs": usual, "variants": ["a", "d"], "labels": {"a": "(a) plain", "d": "(d) ours"}}
    if agent is not None:
        sections["agent"] = agent
    if steady is not None:
        sections["steady"] = steady
    return {"sections": sections}


def by_target(found: list[dict[str, object]], start: str) -> dict[str, object]:
    (verdict,) = [v for v in found if str(v["target"]).startswith(start)]
    return verdict


# -- 0 failed requests ------------------------------------------------------------------------


def test_zero_failures_met() -> None:
    verdict = targets.zero_failures(results(original=[deploy()], usual=[deploy(variant="d")]))
    assert verdict is not None
    assert verdict["met"] is True
    assert verdict["measured"] == "0 failed of 20000 requests in 2 deploys under load"


def test_zero_failures_counts_only_our_deploys() -> None:
    verdict = targets.zero_failures(results(usual=[deploy(variant="a", failed=500), deploy(variant="d")]))
    assert verdict is not None and verdict["met"] is True


@pytest.mark.parametrize(("record", "why"), [
    (deploy(failed=3), "failures by cause: {'http 503': 3}"),
    (deploy(posts_ok=False), "POSTs not processed exactly once in 2, strict"),
    # A deploy that did not happen, or not all of it under load, is no evidence of zero failures:
    (deploy(error="AttributeError: 'LocalEngine' object has no attribute 'restart'"),
     "2, strict: deploy failed: AttributeError: 'LocalEngine' object has no attribute 'restart'"),
    (deploy(stale=True), "2, strict: instances not at v2 afterwards: ['v1']"),
    (deploy(covered=False), "2, strict: the deploy outlasted the load"),
])
def test_zero_failures_missed(record: Record, why: str) -> None:
    verdict = targets.zero_failures(results(original=[record, deploy(client="hey", posts_ok=None)]))
    assert verdict is not None
    assert verdict["met"] is False
    assert verdict["why"] == why


def test_no_deploys_no_verdict() -> None:
    assert targets.zero_failures(results(original=[deploy(variant="steady (no restart)")])) is None
    assert targets.evaluate({}) == []


# -- agent overhead ---------------------------------------------------------------------------


def test_overhead_met_on_the_median_under_load() -> None:
    costs = [cost(50), cost(90), cost(190)]
    verdict = targets.overhead(results(agent={"runs": [deploy(instances=3, costs=costs, variant="3 instances")]}))
    assert verdict is not None
    assert verdict["met"] is True
    assert verdict["measured"] == "median 90 ms over 3 restarts under load; 240 ms without subtracting the in-flight requests"


def test_overhead_missed() -> None:
    costs = [cost(150), cost(250), cost(260)]
    verdict = targets.overhead(results(original=[deploy(costs=costs)]))
    assert verdict is not None
    assert verdict["met"] is False
    assert "stop path and ready path" in str(verdict["why"])


def test_overhead_without_load_when_nothing_was_traced() -> None:
    idle = [deploy(costs=[cost(80)] * 3, client="none")]
    assert targets.overhead(results(agent={"runs": [], "idle": idle}))["met"] is True  # type: ignore[index]
    idle = [deploy(costs=[cost(420)] * 3, client="none")]
    assert targets.overhead(results(agent={"runs": [], "idle": idle}))["met"] is False  # type: ignore[index]


@pytest.mark.parametrize("found", [[], [cost()]])
def test_overhead_missed_when_restarts_are_missing_from_the_logs(found: list[Record]) -> None:
    """Renamed agent events made the restarts vanish from the figures: that must not pass."""
    verdict = targets.overhead(results(original=[deploy(costs=found)]))
    assert verdict is not None
    assert verdict["met"] is False
    assert f"{3 - len(found)} restarts not found in the agents' logs" in str(verdict["measured"])
    assert "event names" in str(verdict["why"])


def test_restarts_without_a_ready_path_are_not_counted() -> None:
    found = [cost(None, ready_ms=None), cost(30), cost(60)]
    verdict = targets.overhead(results(original=[deploy(costs=found)]))
    assert verdict is not None and verdict["met"] is True
    assert str(verdict["measured"]).startswith("median 45 ms over 2 restarts under load")


# -- p99, RSS, middleware ---------------------------------------------------------------------


def test_p99_ratio() -> None:
    runs = [deploy(p99_ms=140.0), deploy(variant="steady (no restart)", p99_ms=100.0),
            deploy(client="wrk", p99_ms=160.0), deploy(client="wrk", variant="steady (no restart)", p99_ms=100.0)]
    verdict = targets.p99(results(original=runs))
    assert verdict is not None
    assert verdict["measured"] == "wrk: 160 vs 100 ms = 1.60x; strict: 140 vs 100 ms = 1.40x"
    assert verdict["met"] is False
    assert str(verdict["why"]).startswith("missed with wrk.")
    assert targets.p99(results(original=runs[:2]))["met"] is True  # type: ignore[index]


def test_rss() -> None:
    builds = {"Python build": {"rss_kb": 19 * 1024, "processes": 1, "per_process_kb": [19 * 1024]},
              "one-file build": {"rss_kb": 20 * 1024, "processes": 2, "per_process_kb": [1024, 19 * 1024]}}
    small = {"memory": [{"rss_kb": 18 * 1024}, {"rss_kb": 19 * 1024}], "builds": builds}
    assert targets.rss(results(agent=small))["met"] is True  # type: ignore[index]
    # a build not measured is no evidence; one over the limit misses it, its bootloader named
    unbuilt = small | {"builds": {"one-file build": {"error": "dist/drain-agent is not built"}}}
    assert targets.rss(results(agent=unbuilt))["met"] is False  # type: ignore[index]
    over = small | {"builds": builds | {"one-file build": {"rss_kb": 21 * 1024, "processes": 2,
                                                           "per_process_kb": [2 * 1024, 19 * 1024]}}}
    verdict = targets.rss(results(agent=over))
    assert verdict is not None and verdict["met"] is False
    assert "one-file build alone 21.0 MiB (2.0 + 19.0 MiB: bootloader + interpreter)" in str(verdict["measured"])
    assert "bootloader" in str(verdict["why"])
    big = {"memory": [{"rss_kb": 22 * 1024}, {"rss_kb": 31 * 1024}], "builds": builds,
           "memory_reference": {"python (bare interpreter)": 10 * 1024}}
    verdict = targets.rss(results(agent=big))
    assert verdict is not None
    assert verdict["met"] is False
    assert str(verdict["measured"]).startswith("median 26.5 MiB, max 31.0 MiB over 2 agents; ")
    assert "python (bare interpreter) 10.0 MiB" in str(verdict["why"])


def steady_runs(rps_without: float, rps_with: float, cpu_without: float = 100.0) -> list[Record]:
    return [{"client": "strict", "variant": variant, "run": 1, "load": {"rps": rps},
             "cpu_us_per_request": {"apps": cpu, "haproxy": 40.0}}
            for variant, rps, cpu in (("without middleware", rps_without, cpu_without),
                                      ("with middleware", rps_with, cpu_without + 2))]


@pytest.mark.parametrize(("delta_us", "rps_with", "met"), [
    (2.0, 9_600.0, True),  # 2% in process; end to end 4%
    (7.0, 9_900.0, False),  # 7% in process
    (2.0, 9_000.0, False),  # every run's end-to-end cost is above 5%
])
def test_middleware(delta_us: float, rps_with: float, met: bool) -> None:
    steady = {"runs": steady_runs(10_000.0, rps_with), "asgi": {"delta_us": delta_us}}
    verdict = targets.middleware(results(steady=steady))
    assert verdict is not None
    assert verdict["met"] is met


def test_a_failed_section_fails_the_targets_it_measures() -> None:
    """A section that raised leaves its targets missed, not met on the other sections' figures,
    nor gone from the table."""
    found = results(original=[deploy()], agent={"error": "Traceback ...\nRolloutError: HAProxy did not start\n",
                                                "runs": []})
    verdicts = {str(v["target"]): v for v in targets.evaluate(found)}
    assert set(verdicts) == {targets.TARGETS[k] for k in ("zero_failures", "overhead", "rss")}
    for verdict in verdicts.values():
        assert verdict["met"] is False
        assert str(verdict["why"]).startswith("section agent failed: RolloutError: HAProxy did not start")
    assert verdicts[targets.TARGETS["rss"]]["measured"] == "not measured"
    assert verdicts[targets.TARGETS["zero_failures"]]["measured"] == "0 failed of 10000 requests in 1 deploys under load"


def test_the_report_shows_each_verdict() -> None:
    found = results(original=[deploy(error="boom")])
    found["targets"] = targets.evaluate(found)
    assert [t["met"] for t in found["targets"]] == [False, True]  # zero failures; overhead
    text = report.render(found)
    zero = by_target(found["targets"], "0 failed")
    assert f"| {zero['target']} | {zero['measured']} | **missed** | 2, strict: deploy failed: boom |" in text


# -- section 5: surge ---------------------------------------------------------------------------


def window(rps: float, p99_ms: float) -> Record:
    return {"seconds": 3.0, "requests": int(rps * 3), "rps": rps, "p99_ms": p99_ms}


def surge_run(part: str, variant: str, *, seconds: float = 3.0, failed: int = 0, **extra: Any) -> Record:
    return deploy(failed=failed, variant=variant, part=part, instances=extra.pop("instances", 3), **extra) | {
        "deploy": {"strategy": "rolling_restart", "version": "v2", "error": None, "seconds": seconds,
                   "per_instance_s": {"app4": 1.0}, "events": []}}


def surge_results(*runs: Record) -> dict[str, Any]:
    return {"sections": {"surge": {"runs": list(runs), "variants": ["stop-first", "surge"], "warmup_s": 3,
                                   "scale_k": 3}}}


def capacity(variant: str, during: float, steady: float = 1000.0, p99: float = 2000.0) -> Record:
    return surge_run("capacity", variant, windows={"deploy": window(during, p99), "steady": window(steady, 2000.0)})


@pytest.mark.parametrize(("during", "p99", "met"), [(950, 2000, True), (850, 2000, False), (950, 2500, False)])
def test_surge_capacity(during: float, p99: float, met: bool) -> None:
    verdict = targets.surge_capacity(surge_results(capacity("surge", during, p99=p99), capacity("stop-first", 700)))
    assert verdict is not None and verdict["met"] is met
    assert "stop-first side by side: req/s 70%" in str(verdict["measured"])


@pytest.mark.parametrize(("seconds", "met"), [(12.1, True), (12.2, False)])
def test_surge_warmup_bound_is_three_boots_plus_slack(seconds: float, met: bool) -> None:
    run = surge_run("warm-up", "surge", seconds=seconds, boots_ms=[3100, 3200, 3300])  # bound 3 x 3.2 + 2.5
    verdict = targets.surge_warmup(surge_results(run, surge_run("warm-up", "stop-first", seconds=15.0)))
    assert verdict is not None and verdict["met"] is met
    assert str(verdict["measured"]).startswith(f"{seconds:.2f} s against a bound of 12.10 s")


@pytest.mark.parametrize(("last", "met"), [(8 * 1.4, True), (8 * 2.0, False)])
def test_surge_scale_grows_about_as_steps(last: float, met: bool) -> None:
    runs = [surge_run("scale", "3 instances", seconds=1.0, instances=3, steps=1),
            surge_run("scale", "24 instances", seconds=last, instances=24, steps=8)]
    verdict = targets.surge_scale(surge_results(*runs))
    assert verdict is not None and verdict["met"] is met


def test_surge_deploys_count_for_zero_failures_and_the_report_shows_them() -> None:
    found = surge_results(capacity("surge", 950), surge_run("warm-up", "surge", failed=2, boots_ms=[3000]))
    verdict = targets.zero_failures(found)
    assert verdict is not None and verdict["met"] is False
    found["targets"] = targets.evaluate(found)
    text = report.render(found)
    assert "| surge | 1 | 10000 | 0 | 3.00 | 950 | 1000 | 0.95 | 2000 | 2000 | 1.00 | 1/1 runs |" in text
    assert "| surge | 1 | 10000 | 2 | 3.00 | 3000 | 11.50 | 1.00 | 1/1 runs |" in text


# -- section 6: long-lived clients ------------------------------------------------------------


def streams_run(run: int, seconds: float, *, slow: int = 0, whole: bool = True) -> Record:
    found = {"ws_messages": 6000, "sse_events": 1500, "ws_exactly_once": whole, "ws_ledger_ok": True,
             "sse_in_order": True, "reconnects": 150, "slow_reconnects": slow,
             "reconnect_ms": {"ws": {"p50": 200.0, "max": 1500.0 if slow else 600.0},
                              "sse": {"p50": 300.0, "max": 700.0}}}
    return surge_run("streams", "with", seconds=seconds) | {"run": run, "streams": found}


def streams_results(*runs: Record) -> dict[str, Any]:
    return {"sections": {"streams": {"runs": list(runs), "variants": ["without", "with"]}}}


@pytest.mark.parametrize(("with_s", "met"), [(7.4, True), (7.6, False)])
def test_streams_deploy_ratio_is_paired_within_a_run(with_s: float, met: bool) -> None:
    without = surge_run("streams", "without", seconds=5.0) | {"run": 1}
    verdict = targets.streams_deploy(streams_results(without, streams_run(1, with_s)))
    assert verdict is not None and verdict["met"] is met
    assert str(verdict["measured"]).startswith(f"{with_s / 5:.2f}x")


@pytest.mark.parametrize(("slow", "whole", "met"), [(0, True, True), (1, True, False), (0, False, False)])
def test_streams_whole(slow: int, whole: bool, met: bool) -> None:
    verdict = targets.streams_whole(streams_results(streams_run(1, 5.0, slow=slow, whole=whole)))
    assert verdict is not None and verdict["met"] is met
    found = streams_results(streams_run(1, 5.0, slow=slow, whole=whole))
    found["targets"] = targets.evaluate(found)
    good = "1/1" if whole else "0/1"
    row = f"| with | 1 | 5.00 | 10000 | 0 | 6000 | 1500 | {good} runs | 150 | 200 / {1500 if slow else 600} | 300 / 700 | {slow} |"
    assert row in report.render(found)


def release_run(bad: str, variant: str, answers: int, rolled_back: bool) -> Record:
    return {"bad": bad, "variant": variant, "requests": 20_000, "failed": answers // 3, "bad_answers": answers,
            "bad_share": answers / 20_000, "bad_served_s": 3.0 if rolled_back else 20.0,
            "rolled_back": rolled_back, "run": 0}


@pytest.mark.parametrize(("watched_answers", "rolled_back", "met"), [
    (100, True, True), (100, False, False), (10_000, True, False)])
def test_the_bad_release_target_needs_a_rollback_and_less_exposure(
        watched_answers: int, rolled_back: bool, met: bool) -> None:
    runs = [release_run(bad, "watched", watched_answers, rolled_back) for bad in ("crash", "500s")]
    runs += [release_run(bad, "unwatched", 10_000, False) for bad in ("crash", "500s")]
    verdict = targets.bad_release({"sections": {"release": {"runs": runs}}})
    assert verdict is not None and verdict["met"] is met
    assert "crash: " in str(verdict["measured"]) and "500s: " in str(verdict["measured"])
    rendered = "\n".join(report.release_part({"title": "t", "runs": runs}))
    assert "| crash | watched | 1 |" in rendered and "| 500s | unwatched | 1 |" in rendered
