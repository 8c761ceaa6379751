"""How a rolling deploy is driven: our `rolling_restart`, or the original design's sample script.

Both run in the deployer child process (bench.deployer), note their steps as rolling_restart's
Events, and return the same timing record: from the deploy's first action to the last
instance being back in rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from agent.haproxy import Address, RuntimeAPI, ServerStat, find_server
from deploy.engines.base import BACKEND
from deploy.engines.local import LocalEngine
from deploy.errors import RolloutError
from deploy.strategies.rolling import Event, RestartResult, read_servers, rolling_restart

# The sample script's unit of waiting: `sleep 1` before each connection check, 1 s between
# status polls, and 1 s to let the instance "warm up and receive traffic" after `ready`.
SAMPLE_SLEEP_S = 1.0
WATCH_S = 0.02
States = dict[str, list[tuple[float, str]]]  # per server: (time.time(), HAProxy status) at each change


@dataclass
class DeployTiming:
    strategy: str
    version: str
    began: float | None = None  # time.time() of the first action
    ended: float | None = None  # time.time() the last instance was back in rotation
    per_instance_s: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, object]] = field(default_factory=list)
    error: str | None = None
    states: States = field(default_factory=dict)

    @classmethod
    def of(cls, strategy: str, version: str, result: RestartResult, first: str) -> DeployTiming:
        """From the deploy's `first` event to its last `ready` (with surge: the last old instance
        `stopped`, which comes after), if it did not halt."""
        starts = [e.at for e in result.events if e.name == first]
        readies = sorted(e.at for e in result.events if e.name in ("ready", "stopped"))
        return cls(strategy, version, began=starts[0] if starts else None,
                   ended=readies[-1] if readies and result.error is None else None,
                   per_instance_s=dict(result.seconds), events=[asdict(e) for e in result.events],
                   error=result.error)

    @property
    def seconds(self) -> float | None:
        if self.began is None or self.ended is None:
            return None
        return self.ended - self.began

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "seconds": self.seconds}


@contextlib.contextmanager
def watched(engine: LocalEngine) -> Iterator[States]:
    """Every server's status in HAProxy, read every WATCH_S while the deploy runs: when each drain
    and each return to rotation took effect, which no agent can log (HAProxy pulls its state)."""
    states: States = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(WATCH_S):
            with contextlib.suppress(RolloutError):
                stats, now = read_servers(engine), time.time()
                for stat in stats:
                    seen = states.setdefault(stat.server, [])
                    if not seen or seen[-1][1] != stat.status:
                        seen.append((now, stat.status))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield states
    finally:
        stop.set()
        thread.join()


def progress(strategy: str, *names: str) -> Callable[[Event], None]:
    def say(event: Event) -> None:
        if not names or event.name in names:
            print(f"  [deploy {strategy}] {event.instance} {event.name} {event.detail}".rstrip(),
                  file=sys.stderr, flush=True)

    return say


def rolling(engine: LocalEngine, version: str, timeout_s: float, surge: bool = False,
            max_unavailable: str = "1") -> DeployTiming:
    """rolling_restart: restart (supervisor: SIGTERM, wait, start), wait ready + UP, next; with
    `surge`, the new instances start and are UP before the old ones drain and stop."""
    result = rolling_restart(engine, version, {}, timeout_s, progress("rolling_restart", "ready", "failed"),
                             surge=surge, max_unavailable=max_unavailable)
    return DeployTiming.of("rolling_restart", version, result, first="restart")


class SampleScript:
    """The original design's 'very graceful deploy', per instance, over the admin socket:

    set drain; every 1 s (sleep first) read the server's current connections until 0 (the
    script reads `show servers conn` field 7, used_cur; here `show stat` scur, through
    agent.haproxy like every other Runtime API call); restart by supervisor; poll `show stat`
    every 1 s until the status is UP (a drained server that passes its checks shows DRAIN,
    so that counts too); set ready; sleep 1 s.
    """

    def __init__(self, engine: LocalEngine, timeout_s: float) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self.api = RuntimeAPI(Address(path=str(engine.admin_socket)), 2.0)
        self.result = RestartResult()
        self.say = progress("sample_script")

    def stat(self, server: str) -> ServerStat:
        return find_server(asyncio.run(self.api.servers(BACKEND)), BACKEND, server)

    def set_state(self, server: str, state: str) -> None:
        asyncio.run(self.api.set_server(BACKEND, server, f"state {state}"))

    def note(self, instance: str, name: str, detail: str = "") -> None:
        self.result.events.append(event := Event(time.time(), instance, name, detail))
        self.say(event)

    def run(self, version: str) -> DeployTiming:
        for instance in self.engine.instances():
            began = time.monotonic()
            deadline = began + self.timeout_s
            self.set_state(instance.name, "drain")
            self.note(instance.name, "drain")
            while True:
                time.sleep(SAMPLE_SLEEP_S)
                count = self.stat(instance.name).scur
                if count == 0 or time.monotonic() > deadline:
                    break
            self.note(instance.name, "restart", f"scur {count}")
            self.engine.replace([instance], version, {})
            while (status := self.stat(instance.name).admin_state) not in ("ready", "drain"):
                if time.monotonic() > deadline:
                    self.result.error = f"{instance.name} not UP within {self.timeout_s:g}s ({status})"
                    return DeployTiming.of("sample_script", version, self.result, first="drain")
                time.sleep(SAMPLE_SLEEP_S)
            self.set_state(instance.name, "ready")
            self.result.seconds[instance.name] = time.monotonic() - began
            self.note(instance.name, "ready", f"status was {status}")
            time.sleep(SAMPLE_SLEEP_S)
        return DeployTiming.of("sample_script", version, self.result, first="drain")


def sample_script(engine: LocalEngine, version: str, timeout_s: float) -> DeployTiming:
    return SampleScript(engine, timeout_s).run(version)


STRATEGIES = {"rolling": rolling, "sample": sample_script}


def strategy(name: str) -> Callable[[LocalEngine, str, float], DeployTiming]:
    """A deploy by name: "rolling" and "sample", or `rolling_restart`'s options as
    "rolling:K" (K at a time, stop-first) and "surge" / "surge:K" (K new ones first)."""
    kind, _, size = name.partition(":")
    if kind in ("rolling", "surge") and (size or kind == "surge"):
        return lambda engine, version, timeout_s: rolling(engine, version, timeout_s, surge=kind == "surge",
                                                          max_unavailable=size or "1")
    if name not in STRATEGIES:
        raise ValueError(f"unknown deploy strategy {name!r}")
    return STRATEGIES[name]
