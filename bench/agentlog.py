"""The agent's own account of each restart, read from its log lines in <state_dir>/logs/appN.log.

    2026-11-26T05:24:18.373Z drain-agent[21540] event=signal.received server=app/app1 t_ms=1884 ...

The lines are parsed by agent.events.parse_line, next to the catalogue of their names.
Per restart: the old agent's stop path (signal.received -> app.signalled, by its t_ms,
which is monotonic) and the new agent's ready path (app.ready -> back in rotation). HAProxy
learns each state at its next agent-check (`agent-inter 100ms`), so both include that wait.
The agent's overhead is the stop path minus what the requests already in flight at the
SIGTERM still needed, plus the ready path. The same lines show where the rest goes.

When HAProxy applied a drain or took the server back no agent can log (HAProxy pulls), so
the deploy's process watches every server's status (bench.strategies.watched). HAProxy routes
to a server leaving maintenance at once ('UP 1/2'); it shows 'UP', and the agent logs
haproxy.up, only after its next passing health check: without the watch, the ready path
ends there, an upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.events import LogEvent, parse_log
from agent.haproxy import ServerStat
from bench.tracing import Trace
from deploy.engines.base import Engine

ALL_LINES = 10**7


@dataclass
class RestartCost:
    instance: str
    signal_at: float
    stop_path_ms: int  # signal.received -> app.signalled: the drain, as the agent ran it
    drain_ms: int | None  # signal.received -> drain.done
    drain_seen_ms: int | None  # signal.received -> HAProxy drains the server (its next agent-check)
    ready_ms: int | None  # new agent: app.ready -> HAProxy routes to it again (or haproxy.up)
    up_ms: int | None  # new agent: app.ready -> haproxy.up (HAProxy's check shows UP)
    in_flight_ms: float | None  # what the requests in flight at the signal still needed, if known
    overhead_ms: float | None  # max(0, stop_path - in_flight) + ready
    # Where the rest of the restart goes (wall clock, ms):
    app_stop_ms: int | None  # app.signalled -> the old agent's last line (app exited, server in maint)
    respawn_ms: int | None  # old agent's last line -> new agent's first line (supervisor + interpreter start)
    app_start_ms: int | None  # new agent: app.started -> app.ready (the app's start + readiness polling)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def agents(text: str) -> list[list[LogEvent]]:
    """drain-agent's events, one list per agent process, in the order they started."""
    by_pid: dict[int, list[LogEvent]] = {}
    for event in parse_log(text):
        if event.program == "drain-agent":
            by_pid.setdefault(event.pid, []).append(event)
    return list(by_pid.values())


def _first(events: list[LogEvent], name: str) -> LogEvent | None:
    return next((e for e in events if e.event == name), None)


def _ms(later: LogEvent | None, earlier: LogEvent | None, *, same_process: bool = True) -> int | None:
    if later is None or earlier is None:
        return None
    if same_process:  # the agent's own monotonic clock
        return int(later.fields["t_ms"]) - int(earlier.fields["t_ms"])
    return round((later.at - earlier.at) * 1000)


def _seen(states: Sequence[Sequence[Any]], after: LogEvent | None, routed: bool) -> int | None:
    """ms from `after` until the watch first saw HAProxy (not) routing to the server."""
    if after is None:
        return None
    return next((round((at - after.at) * 1000) for at, status in states
                 if at >= after.at and ServerStat("", "", status, 0, 0).accepting == routed), None)


def restart_costs(text: str, instance: str, since: float, until: float, trace: Trace | None = None,
                  idle: bool = False, states: Sequence[Sequence[Any]] = ()) -> list[RestartCost]:
    """The restarts in one instance's log whose SIGTERM reached the agent between `since` and
    `until` (time.time()).

    With a trace, the in-flight need comes from the requests' timestamps; `idle` says nothing
    was in flight (a deploy without load), so the whole stop path is overhead.
    """
    runs = agents(text)
    costs = []
    for index, old in enumerate(runs):
        received = _first(old, "signal.received")
        signalled = _first(old, "app.signalled")
        if received is None or signalled is None or not since <= received.at <= until:
            continue
        new = runs[index + 1] if index + 1 < len(runs) else []
        app_ready, up = _first(new, "app.ready"), _first(new, "haproxy.up")
        up_ms = _ms(up, app_ready)
        routed = _seen(states, app_ready, routed=True)
        ready_ms = routed if routed is not None and (up_ms is None or routed < up_ms) else up_ms
        stop_path_ms = _ms(signalled, received)
        assert stop_path_ms is not None
        in_flight: float | None = 0.0 if idle else None
        if trace is not None:
            in_flight = trace.in_flight_ms(instance, received.at)
        overhead = None
        if in_flight is not None and ready_ms is not None:
            overhead = max(0.0, stop_path_ms - in_flight) + ready_ms
        costs.append(RestartCost(
            instance=instance, signal_at=received.at, stop_path_ms=stop_path_ms,
            drain_ms=_ms(_first(old, "drain.done"), received),
            drain_seen_ms=_seen(states, received, routed=False), ready_ms=ready_ms, up_ms=up_ms,
            in_flight_ms=in_flight, overhead_ms=overhead,
            app_stop_ms=_ms(old[-1], signalled),
            respawn_ms=_ms(new[0] if new else None, old[-1], same_process=False),
            app_start_ms=_ms(app_ready, _first(new, "app.started")),
        ))
    return costs


def deploy_costs(engine: Engine, timing: dict[str, Any], since: float, until: float,
                 trace: Trace | None = None, idle: bool = False) -> list[RestartCost]:
    """The agents' costs of one deploy (`timing`: its DeployTiming, with HAProxy's watched states)."""
    states = timing.get("states") or {}
    return [cost for instance in engine.instances()
            for cost in restart_costs(engine.log_tail(instance, ALL_LINES), instance.name, since, until,
                                      trace, idle, states.get(instance.name, ()))]
