"""The instances' own timeline, read back from drain-agent's log lines.

rollout sees a restart from outside (asked, stopped, ready); the agents log each step
as it happens inside (stop signal and drain, drained, app exited, started, UP). Their
lines carry UTC timestamps, so a deploy report can mark exactly when each happened.
"""

from __future__ import annotations

from agent.events import parse_log
from deploy.engines.base import Engine
from deploy.model import Event

# agent event -> the name on the timeline
MARKED = {
    "signal.received": "drain",
    "drain.notify": "notify",
    "drain.done": "drained",
    "drain.timeout": "drain-timeout",
    "app.exited": "stopped",
    "app.started": "started",
    "haproxy.up": "up",
}


def agent_events(log: str, instance: str, since: float) -> list[Event]:
    return [Event(e.at, instance, MARKED[e.event]) for e in parse_log(log)
            if e.program == "drain-agent" and e.event in MARKED and e.at >= since]


def instance_timeline(engine: Engine, since: float) -> list[Event]:
    """Every instance's marked events since `since`, in time order."""
    events = []
    for instance in engine.instances():
        events += agent_events(engine.log_tail(instance, 100_000), instance.name, since)
    return sorted(events, key=lambda event: event.at)
