"""A deploy after one the tool did not live to finish (deploy.core.converge), on virtual time:
whatever the dead deploy left (a stopped instance, a surge's extra, canary weights), the next
deploy first converges to the stack's size, then completes."""

from __future__ import annotations

from deploy.core.deploy import deploy
from deploy.core.plan import Plan, Repair
from deploy.model import Event, Release, RestartResult
from tests.unit.fakes import Behaviour, FakeWorld, Fleet

REPAIR = Repair(size=3, fill=Release("v1"), interrupted=Release("v2"))


def run(world: FakeWorld, repair: Repair | None = REPAIR, **plan: object) -> tuple[RestartResult, list[Event]]:
    events: list[Event] = []
    options: dict[str, object] = {"version": "v2", "timeout_s": 30.0, "repair": repair, **plan}
    result = deploy(Plan(**options), Fleet(world), world, world.clock, events.append)  # type: ignore[arg-type]
    return result, events


def details(events: list[Event]) -> list[str]:
    return [e.detail for e in events if e.name == "converge"]


def test_an_instance_a_dead_deploy_stopped_is_started_on_the_release_before_then_replaced() -> None:
    world = FakeWorld()
    world.slots[0].release = None  # stopped, never started again
    result, events = run(world)
    assert result.error is None
    assert details(events) == ["2 of 3 instances run: starting 1 on v1"]
    steps = [c for c in world.calls if not c.startswith("weight") and c != "settle"]
    assert "settle" in world.calls[: world.calls.index("add app2")]
    assert steps[:2] == ["add app2", "prepare v2"]  # the fill is UP before anything stops
    assert world.versions() == ["v2", "v2", "v2"]


def test_a_surge_extra_on_the_interrupted_release_is_retired_first() -> None:
    world = FakeWorld()
    world.start_slot(world.slots[3], Release("v2"))  # app4: the new one, beside app1..3
    world.slots[3].up_since = world.clock.now
    result, events = run(world, surge=True)
    assert result.error is None
    assert details(events) == ["4 of 3 instances run: retiring app4"]
    assert len(world.running()) == 3 and world.versions() == ["v2", "v2", "v2"]


def test_weights_a_dead_canary_left_are_reset_before_the_deploy() -> None:
    world = FakeWorld()
    world.slots[0].weight, world.slots[1].weight = 243, 13
    result, events = run(world, watch_s=1.0)
    assert result.error is None and details(events) == ["3 of 3 instances run"]
    before = world.calls[: world.calls.index("prepare v2")]
    assert {"weight app1 1", "weight app2 1", "weight app3 1"} <= set(before)


def test_without_a_repair_nothing_is_converged() -> None:
    world = FakeWorld()
    world.slots[0].release = None
    result, events = run(world, repair=None)
    assert result.error is None and details(events) == [] and "settle" not in world.calls
    assert len(world.running()) == 2  # what the deploy was given


def test_the_fill_must_get_up_or_the_deploy_halts_before_it_begins() -> None:
    world = FakeWorld(behaviours={"v1": Behaviour(never_ready=True)})
    world.slots[0].release = None
    result, _ = run(world)
    assert result.error is not None and "rollout halted before it began" in result.error
    assert [c for c in world.calls if c.startswith(("replace", "prepare"))] == []  # nothing else touched


def test_no_instance_left_is_one_line_not_a_guess() -> None:
    world = FakeWorld()
    for slot in world.slots:
        slot.release = None
    result, _ = run(world)
    assert result.error is not None and result.error.startswith("no instance of the stack runs (it had 3)")


def test_extras_are_never_retired_when_no_other_server_is_up() -> None:
    world = FakeWorld(instances=2)
    for slot in world.slots[:2]:
        slot.up_since = None  # DOWN
    world.start_slot(world.slots[2], Release("v2"))
    world.slots[2].up_since = world.clock.now
    result, _ = run(world, repair=Repair(size=2, fill=Release("v1"), interrupted=Release("v2")))
    assert result.error is not None and "not stopping them" in result.error
    assert len(world.running()) == 3


def test_an_instance_the_dead_deploy_started_is_waited_for_before_the_guard() -> None:
    world = FakeWorld(instances=2, behaviours={"v2": Behaviour(boot_s=5.0)})
    world.start_slot(world.slots[1], Release("v2"))  # booting when the tool died
    result, _ = run(world, repair=Repair(size=2, fill=Release("v1"), interrupted=Release("v2")))
    assert result.error is None, result.error
    assert world.versions() == ["v2", "v2"]


def test_a_stop_that_ends_only_during_the_convergence_is_filled_too() -> None:
    """A container the dead deploy was stopping looks running until it exits: when it goes,
    its place is filled before the deploy begins."""
    world = FakeWorld()
    world.slots[0].draining_until = world.clock.now + 2.0  # still draining, then gone
    result, events = run(world)
    assert result.error is None
    assert details(events) == ["2 of 3 instances run: starting 1 on v1"]
    assert len(world.running()) == 3 and world.versions() == ["v2", "v2", "v2"]
