"""The deploy rules (deploy.core.deploy) on virtual time: every halt, guard, watch, canary and
rollback path, with a simulated fleet and HAProxy (tests/unit/fakes.py)."""

from __future__ import annotations

import pytest

from deploy.core.analysis import Thresholds
from deploy.core.deploy import deploy
from deploy.core.plan import Plan
from deploy.errors import RolloutError
from deploy.model import Event, Release, RestartResult
from tests.unit.fakes import Behaviour, FakeWorld, Fleet, with_release


def run(world: FakeWorld, **plan: object) -> tuple[RestartResult, list[Event]]:
    events: list[Event] = []
    options: dict[str, object] = {"version": "v2", "timeout_s": 30.0, **plan}
    result = deploy(Plan(**options), Fleet(world), world, world.clock, events.append)  # type: ignore[arg-type]
    return result, events


def names(events: list[Event], name: str) -> list[str]:
    return [e.instance for e in events if e.name == name]


# -- deploys that go through ---------------------------------------------------------------

@pytest.mark.parametrize("surge", [False, True])
def test_a_good_release_reaches_every_instance_one_at_a_time(surge: bool) -> None:
    world = FakeWorld()
    result, events = run(world, surge=surge)
    assert result.error is None and not result.rolled_back
    assert world.versions() == ["v2", "v2", "v2"]
    assert len(world.running()) == 3
    assert names(events, "restart") == ["app1", "app2", "app3"]
    assert len(names(events, "ready")) == 3


def test_k_at_a_time_replaces_k_together() -> None:
    world = FakeWorld(instances=8)
    result, _ = run(world, max_unavailable="25%")
    assert result.error is None
    assert [c for c in world.calls if c.startswith("replace")] == [
        "replace app1 app2", "replace app3 app4", "replace app5 app6", "replace app7 app8"]


def test_a_restart_without_a_version_keeps_each_version() -> None:
    world = FakeWorld()
    result, _ = run(world, version=None)
    assert result.error is None and world.versions() == ["v1", "v1", "v1"]
    assert {s.incarnation for s in world.running()} == {2}


@pytest.mark.parametrize("bad", ["max_unavailable", "empty"])
def test_bad_input_is_refused_before_anything_changes(bad: str) -> None:
    world = FakeWorld()
    with pytest.raises(RolloutError):
        if bad == "max_unavailable":
            run(world, max_unavailable="0")
        else:
            run(world, instances=())
    assert world.calls == [] or world.calls == ["prepare v2"]
    assert world.versions() == ["v1"] * 3


# -- halts without rollback (today's behaviour, --no-rollback) -----------------------------

def test_the_guard_never_stops_the_last_up_server() -> None:
    world = FakeWorld()
    for slot in world.slots[1:3]:
        slot.release = None  # app2, app3 gone: app1 is the only one UP
    result, _events = run(world)
    assert result.error is not None
    assert "[app1] no other server of app is UP in HAProxy: stopping it would cut service" in result.error
    assert "rollout halted; untouched: app1" in result.error
    assert world.versions() == ["v1"]
    assert not any(c.startswith("replace") for c in world.calls)


def test_stop_first_halt_keeps_the_broken_replacement_for_a_fix_forward() -> None:
    world = with_release(FakeWorld(), "v2", never_ready=True)
    result, _events = run(world)
    assert result.error is not None
    assert "[app1] the app exited with 1 before it was ready" in result.error
    assert "rollout halted; untouched: app2, app3" in result.error
    assert "last log lines of app1" in result.error
    assert world.versions() == ["v2", "v1", "v1"] and not result.rolled_back


def test_surge_halt_stops_the_new_ones_and_the_old_ones_keep_serving() -> None:
    world = with_release(FakeWorld(), "v2", never_ready=True)
    result, _ = run(world, surge=True)
    assert result.error is not None
    assert "; the new instances were stopped\nrollout halted; untouched: app1, app2, app3" in result.error
    world.clock.advance(1.0)
    assert world.versions() == ["v1", "v1", "v1"]


def test_a_release_that_never_gets_up_halts_at_the_timeout() -> None:
    world = with_release(FakeWorld(), "v2", boot_s=1000)
    began = world.clock.now
    result, _ = run(world, timeout_s=5.0)
    assert result.error is not None and "[app1] not ready and UP within 5s (HAProxy status: DOWN" in result.error
    assert world.clock.now - began == pytest.approx(5.5, abs=0.2)  # the drain, then 5 s


def test_a_background_retire_that_fails_halts_and_says_so() -> None:
    world = FakeWorld()
    world.fail_retire = "supervisor socket gone"
    result, _ = run(world, surge=True)
    assert result.error is not None and "stopping app1 failed (supervisor socket gone)" in result.error


def test_haproxy_unreachable_for_a_while_only_delays() -> None:
    world = FakeWorld()
    calls = 0
    real = world.servers

    def flaky() -> list:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        if 5 <= calls < 30:
            raise RolloutError("HAProxy stats unreachable")
        return real()

    world.servers = flaky  # type: ignore[method-assign]
    result, _ = run(world)
    assert result.error is None and world.versions() == ["v2"] * 3


# -- watch ------------------------------------------------------------------------------------

def test_watching_a_good_release_costs_only_the_final_window() -> None:
    plain, watched = FakeWorld(), FakeWorld()
    began = plain.clock.now
    assert run(plain, surge=True)[0].error is None
    plain_s = plain.clock.now - began
    result, events = run(watched, surge=True, watch_s=10.0)
    watched_s = watched.clock.now - began
    assert result.error is None and watched.versions() == ["v2"] * 3
    # the final window, no more; the last old batch drains within it, not after it
    assert plain_s + 10.0 - watched.drain_s - 0.1 <= watched_s <= plain_s + 10.0 + 0.1
    assert [e.detail.split(":")[0] for e in events if e.name == "watch-passed"] == ["final window"]


def test_a_release_that_crashes_after_up_is_caught_while_the_deploy_goes_on() -> None:
    """The watch runs alongside the next batches (as Swarm's monitor does): a crash 3 s after
    UP is seen while app2 is already replaced; both go back, app3 is never touched."""
    world = with_release(FakeWorld(), "v2", crash_after_s=1.0)
    result, _events = run(world, watch_s=10.0, rollback=True)
    assert result.error is not None and result.rolled_back
    assert "watch failed: [app1] left UP: HAProxy says DOWN" in result.error
    assert "rolled back: app1, app2 on v1; untouched: app3" in result.error
    assert world.versions() == ["v1"] * 3 and world.slots[2].incarnation == 1


def test_min_ready_holds_each_batch_so_a_crash_stops_the_deploy_after_the_first() -> None:
    world = with_release(FakeWorld(), "v2", crash_after_s=3.0)
    result, events = run(world, watch_s=10.0, min_ready_s=5.0, rollback=True)
    assert result.error is not None and result.rolled_back
    assert "rolled back: app1 on v1; untouched: app2, app3" in result.error
    assert names(events, "restart") == ["app1"]  # the deploy stopped after the first batch
    assert world.versions() == ["v1"] * 3


def test_surge_crash_loop_is_rolled_back_with_surge_and_the_old_ones_are_never_touched() -> None:
    world = with_release(FakeWorld(instances=4), "v2", crash_after_s=3.0)
    result, _events = run(world, surge=True, watch_s=10.0, min_ready_s=5.0, rollback=True,
                         max_unavailable="2")
    assert result.error is not None and result.rolled_back
    world.clock.advance(1.0)
    assert sorted(world.versions()) == ["v1"] * 4 and len(world.running()) == 4
    # the second batch never started; the first batch's old ones never stopped serving
    assert result.error.endswith("rolled back: app5, app6 on v1; untouched: app1, app2, app3, app4"), result.error
    # app3 and app4 kept their first process all along
    assert [world.slots[i].incarnation for i in (2, 3)] == [1, 1]


def test_an_error_share_above_the_old_one_is_caught_and_rolled_back() -> None:
    world = with_release(FakeWorld(), "v2", error_share=0.3)
    result, _ = run(world, watch_s=10.0, rollback=True)
    assert result.error is not None and result.rolled_back
    assert "error share" in result.error and "--max-error-rate" in result.error
    assert world.versions() == ["v1"] * 3


def test_an_error_share_within_the_threshold_passes() -> None:
    world = with_release(FakeWorld(), "v2", error_share=0.004)
    with_release(world, "v1", error_share=0.002)
    result, _ = run(world, watch_s=5.0, rollback=True)
    assert result.error is None, result.error


def test_a_slower_release_fails_at_the_end_of_its_window() -> None:
    world = with_release(FakeWorld(), "v2", rtime_ms=200)
    result, _events = run(world, watch_s=5.0, rollback=True, surge=True)
    assert result.error is not None and "average response time 200 ms against 10 ms" in result.error
    assert world.versions().count("v2") == 0 and "average response time" in result.error
    # a ratio above it passes
    world = with_release(FakeWorld(), "v2", rtime_ms=200)
    result, _ = run(world, watch_s=5.0, rollback=True, thresholds=Thresholds(max_latency_ratio=25))
    assert result.error is None, result.error


def test_without_rollback_a_failed_watch_halts_where_it_is() -> None:
    world = with_release(FakeWorld(), "v2", error_share=0.5)
    result, _ = run(world, watch_s=10.0, min_ready_s=2.0)
    assert result.error is not None and "rollout halted; untouched: app2, app3" in result.error
    assert not result.rolled_back and world.versions() == ["v2", "v1", "v1"]


def test_a_crash_in_the_final_window_rolls_back_every_batch() -> None:
    world = with_release(FakeWorld(), "v2", crash_after_s=12.0)
    result, _events = run(world, watch_s=30.0, rollback=True, max_unavailable="1")
    assert result.rolled_back and result.error is not None
    assert "rolled back: app1, app2, app3 on v1; untouched: none" in result.error
    assert world.versions() == ["v1"] * 3


def test_rollback_restores_the_previous_environment_too() -> None:
    world = FakeWorld()
    for slot in world.running():
        slot.release = Release("v1", {"MODE": "old"})
    with_release(world, "v2", error_share=1.0)
    result, _ = run(world, watch_s=5.0, rollback=True, env={"MODE": "new"})
    assert result.rolled_back
    assert [s.release for s in world.running()] == [Release("v1", {"MODE": "old"})] * 3


def test_a_rollback_that_cannot_know_the_previous_release_says_so() -> None:
    world = with_release(FakeWorld(), "v2", error_share=1.0)
    fleet = Fleet(world)
    fleet.release_of = lambda instance: None  # type: ignore[method-assign]
    result = deploy(Plan("v2", watch_s=5.0, rollback=True, timeout_s=30), fleet, world, world.clock,  # type: ignore[arg-type]
                    lambda e: None)
    assert result.error is not None and "rollback FAILED" in result.error and not result.rolled_back


# -- canary -----------------------------------------------------------------------------------

def share_of_v2(world: FakeWorld) -> float:
    return world.served.get("v2", 0.0) / sum(world.served.values())


@pytest.mark.parametrize("percent", [5, 25, 50])
def test_a_canary_step_sends_its_share(percent: int) -> None:
    world = FakeWorld(instances=4)
    world.clock.advance(0.0)
    result, events = run(world, canary=(percent,), watch_s=20.0, surge=True, rollback=True)
    assert result.error is None, result.error
    step = next(e for e in events if e.name == "canary")
    window = next(e for e in events if e.name == "watch-passed")
    assert window.detail.startswith(f"canary {percent}%")
    new, old = window.detail.split("new ", 1)[1].split("; old in this window ")
    new_req, old_req = int(new.split(" in ")[1].split()[0]), int(old.split(" in ")[1].split()[0])
    assert 100 * new_req / (new_req + old_req) == pytest.approx(percent, abs=1.5), step.detail
    assert world.versions() == ["v2"] * 4
    assert {s.weight for s in world.slots} == {1}  # weights back to the configuration's


def test_a_failing_canary_is_caught_at_its_first_step_with_its_share_at_most() -> None:
    world = with_release(FakeWorld(instances=4), "v2", error_share=0.3)
    result, events = run(world, canary=(5, 25, 100), watch_s=10.0, surge=True, rollback=True)
    assert result.error is not None and result.rolled_back
    assert [e.detail.split(" of")[0] for e in events if e.name == "canary"] == ["5%"]
    assert share_of_v2(world) < 0.05
    # the weights were set before it was UP, and to 0 the moment it failed, before its drain
    assert world.calls[:3] == ["prepare v2", "add app1", "weight app5 4"]  # 4 against 4 x 19: 5.0%
    assert world.calls.index("weight app5 0") < world.calls.index("retire app5")
    assert world.versions() == ["v1"] * 4 and {s.weight for s in world.slots} == {1}


def test_a_good_canary_takes_its_holds_and_the_final_window_no_more() -> None:
    plain, canary = FakeWorld(instances=4), FakeWorld(instances=4)
    began = plain.clock.now
    assert run(plain, surge=True)[0].error is None
    plain_s = plain.clock.now - began
    result, events = run(canary, canary=(5, 25, 100), watch_s=4.0, surge=True, rollback=True)
    assert result.error is None, result.error
    assert [e.detail.split(" of")[0] for e in events if e.name == "canary"] == ["5%", "25%", "100%"]
    # three holds + the final window; booting is what the plain deploy pays too (or less)
    assert canary.clock.now - began <= plain_s + 4 * 4.0 + 1.0
    assert canary.versions() == ["v2"] * 4


def test_behaviour_defaults_are_a_healthy_release() -> None:
    assert Behaviour() == Behaviour(boot_s=1.0, error_share=0.0, rtime_ms=10)
