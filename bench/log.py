"""Progress lines on stderr, stamped with the time since the bench started, so a long run reads as a
log; and the one-line summary of a measurement they show."""

from __future__ import annotations

import sys
import time

_STARTED = time.monotonic()


def elapsed_s() -> float:
    return time.monotonic() - _STARTED


def say(message: str) -> None:
    minutes, seconds = divmod(int(elapsed_s()), 60)
    print(f"[bench {minutes:02d}:{seconds:02d}] {message}", file=sys.stderr, flush=True)


def ms(value: object, digits: int = 1) -> str:
    """A latency for a progress line ('-' when the client did not report it)."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def describe(record: dict[str, object]) -> str:
    row = record["load"]
    assert isinstance(row, dict)
    text = (f"{row['requests']} requests, failed {row['failed']} {row['failures'] or ''}, "
            f"p50 {ms(row['p50_ms'])} ms, p99 {ms(row['p99_ms'])} ms, max {ms(row['max_ms'], 0)} ms")
    deploy = record.get("deploy")
    if isinstance(deploy, dict):
        seconds = deploy.get("seconds")
        if isinstance(seconds, float):
            text += f", deploy {seconds:.2f} s"
        else:
            text += f", deploy error {deploy.get('error')}"
        if not record.get("covered"):
            text += " (NOT covered by the load)"
    return text
