"""The instances' own timeline, read back from drain-agent's log lines.

rollout sees a restart from outside (asked, stopped, ready); the agents log each step
as it happens inside (stop signal and drain, drained, app exited, started, UP). Their
lines carry UTC timestamps, so a deploy report can mark exactly when each happened.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from deploy.engines.base import Engine
from deploy.strategies.rolling import Event

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z drain-agent\[\d+\] event=(\S+)(.*)$")
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
    events = []
    for line in log.splitlines():
        match = LINE.match(line)
        if not match or match.group(2) not in MARKED:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
        if at >= since:
            events.append(Event(at, instance, MARKED[match.group(2)]))
    return events


def instance_timeline(engine: Engine, since: float) -> list[Event]:
    """Every instance's marked events since `since`, in time order."""
    events = []
    for instance in engine.instances():
        events += agent_events(engine.log_tail(instance, 100_000), instance.name, since)
    return sorted(events, key=lambda event: event.at)
