"""The agent's own account of each restart, read from its log lines in <state_dir>/logs/appN.log.

    2026-11-26T05:24:18.373Z drain-agent[21540] event=signal.received server=app/app1 t_ms=1884 ...

The lines are parsed by agent.events.parse_line, next to the catalogue of their names.
Per restart: the old agent's stop path (signal.received -> app.signalled, by its t_ms,
which is monotonic) and the new agent's ready path (app.ready -> back in rotation). HAProxy
learns each state at its next agent-check (`agent-inter 100ms`), so both include that wait.
The agent's overhead is the stop path minus what the requests already in flight at the
SIGTERM still needed, plus the ready path. The same lines show where the rest goes.

Back in rotation: HAProxy routes to a server as soon as it leaves maintenance ('UP 1/2' at
first), but shows it 'UP', and the agent logs haproxy.up, only after its next passing health
check. So with a trace the ready path ends at the first request the new process answered;
without one (no load) at haproxy.up, an upper bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agent.events import LogEvent, parse_log
from bench.tracing import Trace
from deploy.engines.base import Engine

ALL_LINES = 10**7


@dataclass
class RestartCost:
    instance: str
    signal_at: float
    stop_path_ms: int  # signal.received -> app.signalled: the drain, as the agent ran it
    drain_ms: int | None  # signal.received -> drain.done
    ready_ms: float | None  # new agent: app.ready -> back in rotation (first request answered, or haproxy.up)
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


def restart_costs(text: str, instance: str, since: float, until: float, trace: Trace | None = None,
                  idle: bool = False) -> list[RestartCost]:
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
        ready_ms: float | None = up_ms
        stop_path_ms = _ms(signalled, received)
        assert stop_path_ms is not None
        in_flight: float | None = 0.0 if idle else None
        if trace is not None:
            in_flight = trace.in_flight_ms(instance, received.at)
            served = trace.first_sent_ms(instance, app_ready.at) if app_ready else None
            ready_ms = served if served is not None and (up_ms is None or served < up_ms) else up_ms
        overhead = None
        if in_flight is not None and ready_ms is not None:
            overhead = max(0.0, stop_path_ms - in_flight) + ready_ms
        costs.append(RestartCost(
            instance=instance, signal_at=received.at, stop_path_ms=stop_path_ms,
            drain_ms=_ms(_first(old, "drain.done"), received), ready_ms=ready_ms, up_ms=up_ms,
            in_flight_ms=in_flight, overhead_ms=overhead,
            app_stop_ms=_ms(old[-1], signalled),
            respawn_ms=_ms(new[0] if new else None, old[-1], same_process=False),
            app_start_ms=_ms(app_ready, _first(new, "app.started")),
        ))
    return costs


def deploy_costs(engine: Engine, since: float, until: float, trace: Trace | None = None,
                 idle: bool = False) -> list[RestartCost]:
    return [cost for instance in engine.instances()
            for cost in restart_costs(engine.log_tail(instance, ALL_LINES), instance.name, since, until,
                                      trace, idle)]
