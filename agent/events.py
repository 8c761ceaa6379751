"""The agent's vocabulary and its timeline: one log line per event, with the server and elapsed ms.

    2026-11-26T05:10:00.123Z drain-agent[7] event=drain.done server=172.18.0.5:8000 t_ms=5120 drain_ms=38

Every state and event name is listed here once; the report and the benchmarks read the
same names back from the logs.
"""

from __future__ import annotations

import enum
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import NamedTuple

log = logging.getLogger("drain_agent")


class AgentState(enum.Enum):
    STARTING = "starting"  # the app is starting; HAProxy is told maint
    READY = "ready"  # the app answers its readiness URL; HAProxy is told ready
    DRAINING = "draining"  # stop asked; HAProxy is told drain; waiting for zero sessions
    STOPPING = "stopping"  # the app has its signal; HAProxy is told maint
    EXITED = "exited"


EVENTS = {
    "agent.state": "a state change (from, to)",
    "agent.listening": "the agent-check port is open",
    "app.port_busy": "another process still answers on the app's port; waiting for it to go",
    "app.started": "the app was spawned",
    "app.ready": "the app answered its readiness URL",
    "app.signalled": "the app got its stop signal",
    "app.kill": "the app outlived --stop-timeout and got SIGKILL",
    "app.exited": "the app is gone (code, how)",
    "start.timeout": "the app was not ready within --start-timeout",
    "agent.hold_off": "a HAProxy closed its agent-check before --agent-hold ended, three times in "
                      "a row: it is answered at once from now on",
    "haproxy.up": "every HAProxy shows this server UP",
    "haproxy.not_up": "a HAProxy does not show this server UP after --start-timeout",
    "haproxy.missing": "a HAProxy's stats have no server with this instance's address",
    "haproxy.error": "a HAProxy's stats could not be read (retried)",
    "drain.done": "every HAProxy shows this server out of rotation with zero sessions",
    "drain.notify": "every HAProxy sends this server no new work: the app got --drain-notify's "
                    "signal, once, to close its long-lived connections (sessions: open then)",
    "drain.timeout": "--drain-timeout passed before every HAProxy showed zero (sessions: left "
                     "open, cut when the app stops)",
    "drain.cut": "the drain ended early: a second signal, or the app exited",
    "drain.old_workers": "a HAProxy reloaded within --reload-window: the app's port still holds "
                         "connections no stats page accounts for (an old worker's sessions); "
                         "the drain waits for them",
    "haproxy.uptime_unknown": "a HAProxy worker's uptime could not be read: taken as just "
                              "reloaded (the drain also counts the app's connections)",
    "signal.received": "a stop signal: the drain begins",
    "signal.again": "a second stop signal: the drain is cut short",
    "signal.forwarded": "a signal passed on to the app",
}


class UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UTCFormatter("%(asctime)s drain-agent[%(process)d] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value).replace("\n", "\\n")
    return f'"{text}"' if (" " in text or not text) else text


class Timeline:
    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.started = time.monotonic()

    def ms_since(self, moment: float) -> int:
        return int((time.monotonic() - moment) * 1000)

    def event(self, name: str, level: int, fields: Mapping[str, object]) -> None:
        if name not in EVENTS:
            raise ValueError(f"unknown event {name!r}: add it to agent.events.EVENTS")
        extra = "".join(f" {key}={fmt(value)}" for key, value in fields.items())
        log.log(
            level,
            "event=%s server=%s t_ms=%d%s",
            name, self.server_id, self.ms_since(self.started), extra,
        )


# -- reading the lines back (the report, the benchmarks, the tests) ---------------------------

# `<UTC stamp> <program>[<pid>] event=<name> key=value ...`: drain-agent's lines, and the
# service's own (`service[12] event=service.draining ...`) in the same shape.
LINE = re.compile(
    r"^(?P<stamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (?P<program>[\w.-]+)\[(?P<pid>\d+)\] "
    r"event=(?P<event>\S+)(?P<rest>.*)$"
)
FIELD = re.compile(r'(\w+)=("[^"]*"|\S*)')


class LogEvent(NamedTuple):
    """One event line: when (UTC, seconds since the epoch, ms resolution), what, and its fields
    (values as logged, quotes removed; `server` and `t_ms` on every drain-agent line)."""

    at: float
    event: str
    fields: dict[str, str]
    program: str
    pid: int


def parse_line(line: str) -> LogEvent | None:
    """The event on one log line, or None for any other line (the app's own output)."""
    match = LINE.match(line)
    if match is None:
        return None
    from datetime import UTC, datetime  # only readers need it; the agent never parses its log

    at = datetime.strptime(match["stamp"], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
    fields = {key: value[1:-1] if value.startswith('"') else value
              for key, value in FIELD.findall(match["rest"])}
    return LogEvent(at, match["event"], fields, match["program"], int(match["pid"]))


def parse_log(text: str) -> list[LogEvent]:
    """Every event line of a log, in order."""
    return [event for line in text.split("\n") if (event := parse_line(line)) is not None]
