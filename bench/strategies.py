"""How a rolling deploy is driven: our `rolling_restart`, or the original design's sample script.

Both run in the deployer child process (bench.deployer) and return the same timing record:
from the deploy's first action to the last instance being back in rotation.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import asdict, dataclass, field

from agent.haproxy import Address, RuntimeAPI, ServerStat, find_server
from deploy.engines.base import BACKEND
from deploy.engines.local import LocalEngine
from deploy.strategies.rolling import Event, rolling_restart

# The sample script's unit of waiting: `sleep 1` before each connection check, 1 s between
# status polls, and 1 s to let the instance "warm up and receive traffic" after `ready`.
SAMPLE_SLEEP_S = 1.0


@dataclass
class DeployTiming:
    strategy: str
    version: str
    began: float | None = None  # time.time() of the first action
    ended: float | None = None  # time.time() the last instance was back in rotation
    per_instance_s: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, object]] = field(default_factory=list)
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        if self.began is None or self.ended is None:
            return None
        return self.ended - self.began

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "seconds": self.seconds}


def note(timing: DeployTiming, instance: str, name: str, detail: str = "") -> None:
    at = time.time()
    timing.events.append({"at": at, "instance": instance, "name": name, "detail": detail})
    print(f"  [deploy {timing.strategy}] {instance} {name} {detail}".rstrip(), file=sys.stderr, flush=True)


def rolling(engine: LocalEngine, version: str, timeout_s: float) -> DeployTiming:
    """rolling_restart: restart (supervisor: SIGTERM, wait, start), wait ready + UP, next."""
    timing = DeployTiming("rolling_restart", version)

    def report(event: Event) -> None:
        timing.events.append({"at": event.at, "instance": event.instance, "name": event.name,
                              "detail": event.detail})
        if event.name in ("ready", "failed"):
            print(f"  [deploy rolling_restart] {event.instance} {event.name} {event.detail}",
                  file=sys.stderr, flush=True)

    result = rolling_restart(engine, version, {}, timeout_s, report)
    timing.error = result.error
    timing.per_instance_s = dict(result.seconds)
    starts = [e["at"] for e in timing.events if e["name"] == "restart"]
    readies = [e["at"] for e in timing.events if e["name"] == "ready"]
    timing.began = float(starts[0]) if starts else None  # type: ignore[arg-type]
    timing.ended = float(readies[-1]) if readies and result.error is None else None  # type: ignore[arg-type]
    return timing


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

    def stat(self, server: str) -> ServerStat:
        return find_server(asyncio.run(self.api.servers(BACKEND)), BACKEND, server)

    def set_state(self, server: str, state: str) -> None:
        asyncio.run(self.api.set_server(BACKEND, server, f"state {state}"))

    def run(self, version: str) -> DeployTiming:
        timing = DeployTiming("sample_script", version)
        for instance in self.engine.instances():
            began = time.monotonic()
            deadline = began + self.timeout_s
            self.set_state(instance.name, "drain")
            note(timing, instance.name, "drain")
            while True:
                time.sleep(SAMPLE_SLEEP_S)
                count = self.stat(instance.name).scur
                if count == 0 or time.monotonic() > deadline:
                    break
            note(timing, instance.name, "restart", f"scur {count}")
            self.engine.replace([instance], version, {})
            while (status := self.stat(instance.name).admin_state) not in ("ready", "drain"):
                if time.monotonic() > deadline:
                    timing.error = f"{instance.name} not UP within {self.timeout_s:g}s ({status})"
                    return timing
                time.sleep(SAMPLE_SLEEP_S)
            self.set_state(instance.name, "ready")
            timing.per_instance_s[instance.name] = time.monotonic() - began
            note(timing, instance.name, "ready", f"status was {status}")
            time.sleep(SAMPLE_SLEEP_S)
        timing.began = float(timing.events[0]["at"])  # type: ignore[arg-type]
        timing.ended = float([e["at"] for e in timing.events if e["name"] == "ready"][-1])  # type: ignore[arg-type]
        return timing


def sample_script(engine: LocalEngine, version: str, timeout_s: float) -> DeployTiming:
    return SampleScript(engine, timeout_s).run(version)


STRATEGIES = {"rolling": rolling, "sample": sample_script}
