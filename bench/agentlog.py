"""The agent's own account of each restart, read from its log lines in <state_dir>/logs/appN.log.

    2026-11-26T05:24:18.373Z drain-agent[21540] event=signal.received server=app/app1 t_ms=1884 ...

Per restart: the old agent's stop path (signal.received -> app.signalled, by its t_ms,
which is monotonic) and the new agent's ready bookkeeping (app.ready -> haproxy.up).
The agent's overhead is the stop path minus what the requests in flight still needed,
plus the ready bookkeeping. The same lines also show where the rest of a restart goes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.tracing import Trace

LINE = re.compile(
    r"^(?P<stamp>\S+Z) drain-agent\[(?P<pid>\d+)\] event=(?P<event>\S+) server=\S+ t_ms=(?P<t_ms>\d+)"
)


@dataclass(frozen=True)
class AgentEvent:
    at: float  # UTC wall clock, ms resolution
    pid: int
    event: str
    t_ms: int  # since that agent started (monotonic)


@dataclass
class RestartCost:
    instance: str
    signal_at: float
    stop_path_ms: int  # signal.received -> app.signalled: the drain, as the agent ran it
    drain_ms: int | None  # signal.received -> drain.done
    ready_ms: int | None  # new agent: app.ready -> haproxy.up
    in_flight_ms: float | None  # what the requests in flight at the signal still needed, if known
    overhead_ms: float | None  # max(0, stop_path - in_flight) + ready
    # Where the rest of the restart goes (wall clock, ms):
    app_stop_ms: int | None  # app.signalled -> the old agent's last line (app exited, server in maint)
    respawn_ms: int | None  # old agent's last line -> new agent's first line (supervisor + interpreter start)
    app_start_ms: int | None  # new agent: app.started -> app.ready (the app's start + readiness polling)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def read_events(path: Path) -> list[AgentEvent]:
    events = []
    with path.open(errors="replace") as lines:
        for line in lines:
            match = LINE.match(line)
            if match:
                stamp = datetime.strptime(match["stamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                events.append(AgentEvent(
                    stamp.timestamp(), int(match["pid"]), match["event"], int(match["t_ms"])
                ))
    return events


def _first(events: list[AgentEvent], name: str) -> AgentEvent | None:
    return next((e for e in events if e.event == name), None)


def _ms(later: AgentEvent | None, earlier: AgentEvent | None, *, same_process: bool = True) -> int | None:
    if later is None or earlier is None:
        return None
    if same_process:
        return later.t_ms - earlier.t_ms
    return round((later.at - earlier.at) * 1000)


def restart_costs(path: Path, instance: str, since: float, until: float, trace: Trace | None = None,
                  idle: bool = False) -> list[RestartCost]:
    """The restarts whose SIGTERM reached the agent between `since` and `until` (time.time()).

    With a trace, the in-flight need comes from the requests' timestamps; `idle` says nothing
    was in flight (a deploy without load), so the whole stop path is overhead.
    """
    by_pid: dict[int, list[AgentEvent]] = {}
    for event in read_events(path):
        by_pid.setdefault(event.pid, []).append(event)
    agents = list(by_pid.values())  # in order of first appearance: one agent per run of the program
    costs = []
    for index, old in enumerate(agents):
        received = _first(old, "signal.received")
        signalled = _first(old, "app.signalled")
        if received is None or signalled is None or not since <= received.at <= until:
            continue
        new = agents[index + 1] if index + 1 < len(agents) else []
        app_ready, up = _first(new, "app.ready"), _first(new, "haproxy.up")
        ready_ms = _ms(up, app_ready)
        stop_path_ms = signalled.t_ms - received.t_ms
        in_flight: float | None = 0.0 if idle else None
        if trace is not None:
            # Requests sent before HAProxy applied the drain (+1 ms: the stamps are truncated to ms).
            drain = _first(old, "haproxy.drain")
            routed_until = (drain.at if drain else received.at) + 0.001
            in_flight = trace.in_flight_ms(instance, received.at, routed_until)
        overhead = None
        if in_flight is not None and ready_ms is not None:
            overhead = max(0.0, stop_path_ms - in_flight) + ready_ms
        costs.append(RestartCost(
            instance=instance, signal_at=received.at, stop_path_ms=stop_path_ms,
            drain_ms=_ms(_first(old, "drain.done"), received), ready_ms=ready_ms,
            in_flight_ms=in_flight, overhead_ms=overhead,
            app_stop_ms=_ms(old[-1], signalled),
            respawn_ms=_ms(new[0] if new else None, old[-1], same_process=False),
            app_start_ms=_ms(app_ready, _first(new, "app.started")),
        ))
    return costs


def deploy_costs(engine_root: Path, instances: list[str], since: float, until: float,
                 trace: Trace | None = None, idle: bool = False) -> list[RestartCost]:
    costs = []
    for name in instances:
        path = engine_root / "logs" / f"{name}.log"
        if path.exists():
            costs += restart_costs(path, name, since, until, trace, idle)
    return costs
