"""Progress lines on stderr, stamped with the time since the bench started, so a long run reads as a log."""

from __future__ import annotations

import sys
import time

_STARTED = time.monotonic()


def elapsed_s() -> float:
    return time.monotonic() - _STARTED


def say(message: str) -> None:
    minutes, seconds = divmod(int(elapsed_s()), 60)
    print(f"[bench {minutes:02d}:{seconds:02d}] {message}", file=sys.stderr, flush=True)
