"""A fleet behind a HAProxy, simulated on virtual time, for the deploy rules' unit tests.

Time moves only when the code under test sleeps (or an engine call takes time). While it
moves, `rps` requests a second are spread over the UP servers by weight, and each release's
`Behaviour` decides its errors, latency, boot time and crashes; HAProxy's counters grow
accordingly, so the watch and the canary analysis read what they would read from HAProxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from agent.haproxy import ServerStat
from deploy.errors import RolloutError
from deploy.model import Instance, Release


@dataclass(frozen=True)
class Behaviour:
    boot_s: float = 1.0  # start -> UP
    error_share: float = 0.0
    rtime_ms: int = 10
    crash_after_s: float | None = None  # after UP: exits, is restarted (a crash loop)
    never_ready: bool = False  # gives up after `boot_s`: start_failure says so


class FakeClock:
    def __init__(self, world: FakeWorld | None = None) -> None:
        self.now = 1000.0
        self.world = world

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        step = 0.01
        while seconds > 0:
            dt = min(step, seconds)
            self.now += dt
            seconds -= dt
            if self.world is not None:
                self.world.tick(dt)


@dataclass
class Slot:
    instance: Instance
    release: Release | None = None  # None: nothing runs here
    started: float = 0.0
    up_since: float | None = None
    draining_until: float | None = None
    incarnation: int = 0
    failed: str | None = None
    # HAProxy's counters and state for this server
    req: float = 0.0
    errors: float = 0.0
    rtime: int = 0
    chkdown: int = 0
    weight: int = 1


@dataclass
class FakeWorld:
    """The fleet (the engine's side) and HAProxy (the door's side) in one."""

    instances: int = 3
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    rps: float = 200.0
    drain_s: float = 0.5
    spares: bool = True
    clock: FakeClock = field(init=False)
    slots: list[Slot] = field(init=False)
    served: dict[str, float] = field(default_factory=dict)  # requests per version
    fail_retire: str | None = None
    stats_down: bool = False
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clock = FakeClock(self)
        count = 2 * self.instances if self.spares else self.instances
        self.slots = [Slot(Instance(f"app{i}", f"127.0.0.1:{8000 + i}")) for i in range(1, count + 1)]
        for slot in self.slots[: self.instances]:
            self.start_slot(slot, Release("v1"))
            slot.up_since = self.clock.now

    # -- simulation -----------------------------------------------------------------------

    def behaviour(self, release: Release) -> Behaviour:
        return self.behaviours.get(release.version, Behaviour())

    def start_slot(self, slot: Slot, release: Release) -> None:
        slot.release, slot.started, slot.up_since = release, self.clock.now, None
        slot.draining_until, slot.failed = None, None
        slot.incarnation += 1

    def status(self, slot: Slot) -> str:
        if slot.release is None:
            return "MAINT"
        if slot.draining_until is not None:
            return "DRAIN (agent)"
        return "UP" if slot.up_since is not None else "DOWN"

    def tick(self, dt: float) -> None:
        now = self.clock.now
        for slot in self.slots:
            if slot.release is None:
                continue
            b = self.behaviour(slot.release)
            if slot.draining_until is not None:
                if now >= slot.draining_until:
                    slot.release, slot.up_since, slot.draining_until = None, None, None
                continue
            if slot.up_since is None and slot.failed is None and now - slot.started >= b.boot_s:
                if b.never_ready:
                    slot.failed = "the app exited with 1 before it was ready"
                else:
                    slot.up_since = now
            elif (slot.up_since is not None and b.crash_after_s is not None
                  and now - slot.up_since >= b.crash_after_s):
                slot.chkdown += 1
                self.start_slot(slot, slot.release)  # the supervisor restarts it
        up = [s for s in self.slots if self.status(s) == "UP"]
        weights = sum(s.weight for s in up)
        for slot in up:
            if not weights:
                break
            assert slot.release is not None
            b = self.behaviour(slot.release)
            n = self.rps * dt * slot.weight / weights
            slot.req += n
            slot.errors += n * b.error_share
            slot.rtime = b.rtime_ms
            self.served[slot.release.version] = self.served.get(slot.release.version, 0.0) + n

    def slot(self, instance: Instance) -> Slot:
        return next(s for s in self.slots if s.instance.name == instance.name)

    def running(self) -> list[Slot]:
        return [s for s in self.slots if s.release is not None]

    def versions(self) -> list[str]:
        return [s.release.version for s in self.running() if s.release is not None]

    # -- the door -----------------------------------------------------------------------------

    def servers(self) -> list[ServerStat]:
        if self.stats_down:
            raise RolloutError("HAProxy stats unreachable")
        return [ServerStat("app", s.instance.name, self.status(s), 0, 0, s.instance.address, "",
                           req_tot=int(s.req), hrsp_5xx=int(s.errors), rtime=s.rtime,
                           chkdown=s.chkdown, weight=s.weight) for s in self.slots]

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        self.calls.append(f"weight {server} {weight}")
        next(s for s in self.slots if s.instance.name == server).weight = weight

    def reset_weight(self, backend: str, server: str) -> None:
        self.set_weight(backend, server, 1)

    # -- the fleet ---------------------------------------------------------------------------

    def fleet_instances(self) -> list[Instance]:
        return [s.instance for s in self.running()]

    def settle(self) -> list[str]:
        self.calls.append("settle")
        return []

    def prepare(self, version: str | None, env: Mapping[str, str]) -> None:
        self.calls.append(f"prepare {version}")

    def replace(self, instances: list[Instance], version: str | None,
                env: Mapping[str, str]) -> list[Instance]:
        self.calls.append("replace " + " ".join(i.name for i in instances))
        for instance in instances:
            self.slot(instance).draining_until = self.clock.now + self.drain_s
        self.clock.advance(self.drain_s + 0.01)
        for instance in instances:
            slot = self.slot(instance)
            old = slot.release or Release("v1")
            self.start_slot(slot, Release(version or old.version, dict(env)))
        return instances

    def add(self, instances: list[Instance], version: str | None,
            env: Mapping[str, str]) -> list[Instance]:
        self.calls.append("add " + " ".join(i.name for i in instances))
        free = [s for s in self.slots if s.release is None][: len(instances)]
        if len(free) < len(instances):
            raise RolloutError("no free slot")
        for slot in free:
            self.start_slot(slot, Release(version or "v1", dict(env)))
        return [s.instance for s in free]

    def start_retire(self, instances: list[Instance]) -> FakePending:
        self.calls.append("retire " + " ".join(i.name for i in instances))
        end = self.clock.now + self.drain_s
        for instance in instances:
            self.slot(instance).draining_until = end
        return FakePending(self.clock, end, self.fail_retire)

    def version_of(self, instance: Instance) -> str | None:
        slot = self.slot(instance)
        return slot.release.version if slot.release and slot.up_since is not None else None

    def release_of(self, instance: Instance) -> Release | None:
        return self.slot(instance).release

    def incarnations(self, instances: list[Instance]) -> Mapping[str, str]:
        return {i.name: str(self.slot(i).incarnation) for i in instances}

    def start_failure(self, instance: Instance) -> str | None:
        return self.slot(instance).failed

    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        return f"(log of {instance.name})"


class Fleet:
    """FakeWorld under the names of the Fleet protocol (`instances` is a field there)."""

    def __init__(self, world: FakeWorld) -> None:
        self.world = world

    def instances(self) -> list[Instance]:
        return self.world.fleet_instances()

    def __getattr__(self, name: str) -> object:
        return getattr(self.world, name)


@dataclass
class FakePending:
    clock: FakeClock
    end: float
    failure: str | None = None

    def done(self) -> bool:
        return self.clock.now >= self.end

    @property
    def error(self) -> str | None:
        return self.failure


def with_release(world: FakeWorld, version: str, **behaviour: object) -> FakeWorld:
    world.behaviours[version] = replace(Behaviour(), **behaviour)  # type: ignore[arg-type]
    return world
