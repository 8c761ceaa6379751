"""How a draining instance turns a request away so that HAProxy may send it elsewhere.

HAProxy's frontend sends `X-Drain-Refusal-Status: 425` with every request (haproxy.cfg) and
re-sends a 425, never a 503: an app's 503 may come after work, this refusal never does. It
can re-send only a request it holds whole, so `resendable` says which ones to refuse.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope

# What the proxy asks a refusal to be marked with, and the only value taken.
REFUSAL_HEADER = b"x-drain-refusal-status"
RESENDABLE_STATUS = 425
# HAProxy holds a request for a re-send only if all of it fits its buffer (tune.bufsize 16 KiB,
# less its 1 KiB rewrite reserve and the headers it adds): at most this much is refused.
RESENDABLE_REQUEST_BYTES = 12 * 1024


def refusal_status(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """425 where the proxy asked for it (it re-sends those), else 503."""
    return RESENDABLE_STATUS if (REFUSAL_HEADER, b"425") in headers else 503


def resendable(scope: Scope) -> bool:
    """Could HAProxy hold this whole request to send it elsewhere? Request line, headers and a
    declared body within RESENDABLE_REQUEST_BYTES; a body of unknown length (chunked) never."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
        if name == b"transfer-encoding":
            return False
        if name == b"content-length":
            if not (value.isdigit() and len(value) <= 15):
                return True  # a bad length: refusing it does no work (the app would answer 400)
            size += int(value)
    return size <= RESENDABLE_REQUEST_BYTES
