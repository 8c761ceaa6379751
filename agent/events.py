"""The agent's timeline: one log line per event, with the server name and elapsed ms.

    2026-11-26T05:10:00.123Z drain-agent[7] event=drain.done server=app/app1 t_ms=5120 drain_ms=38
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping

log = logging.getLogger("drain_agent")


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
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


class Timeline:
    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.started = time.monotonic()

    def ms_since(self, moment: float) -> int:
        return int((time.monotonic() - moment) * 1000)

    def event(self, name: str, level: int, fields: Mapping[str, object]) -> None:
        extra = "".join(f" {key}={fmt(value)}" for key, value in fields.items())
        log.log(
            level,
            "event=%s server=%s t_ms=%d%s",
            name, self.server_id, self.ms_since(self.started), extra,
        )
