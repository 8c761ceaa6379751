"""Small HTTP GETs: the app's readiness URL and HAProxy's stats CSV.

Not httpx on purpose: the agent is PID 1 of every container, and importing httpx (with
the TLS context it builds) took the agent from 26 to 34 MiB RSS, over the 30 MiB budget,
for GETs that need a status line and a body read to EOF. Proxies are never used (a proxy
from the environment must not see a loopback probe).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


async def get(url: str, timeout_s: float, max_bytes: int = 65536) -> tuple[int, bytes]:
    """(status, body) of an HTTP/1.0 GET; raises OSError or TimeoutError.

    The answer ends when the server closes (HTTP/1.0); it may still come chunked (HAProxy's
    stats page does). A body over `max_bytes` is an error, not a silent truncation.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(
            parts.hostname or "127.0.0.1", port, ssl=tls_context() if secure else None
        )
        try:
            writer.write(
                f"GET {target} HTTP/1.0\r\nHost: {parts.netloc}\r\nUser-Agent: drain-agent\r\n\r\n".encode()
            )
            await writer.drain()
            reply = await reader.read(max_bytes + 1)
            while len(reply) <= max_bytes and (chunk := await reader.read(max_bytes + 1)):
                reply += chunk
        finally:
            writer.close()
    if len(reply) > max_bytes:
        raise OSError(f"answer from {url} is over {max_bytes} bytes")
    head, _, body = reply.partition(b"\r\n\r\n")
    fields = head.split(b"\r\n", 1)[0].split()
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        raise OSError(f"not an HTTP answer from {url}: {head[:60]!r}")
    if b"\r\ntransfer-encoding: chunked" in head.lower():
        body = dechunk(body, url)
    return int(fields[1]), body


def dechunk(body: bytes, url: str) -> bytes:
    """A whole chunked body, or OSError if it was cut short."""
    out, rest = bytearray(), body
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            size = -1
        if not sep or size < 0 or len(rest) < size + 2 or rest[size : size + 2] != b"\r\n":
            raise OSError(f"truncated or malformed chunked answer from {url}")
        if size == 0:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2 :]


def tls_context() -> object:
    """Only an https URL loads OpenSSL (several MiB of every agent's RSS otherwise)."""
    import ssl

    return ssl.create_default_context()


async def ready(url: str, timeout_s: float) -> bool:
    """True if `url` answers 200; False on any other status, error or timeout."""
    try:
        status, _ = await get(url, timeout_s)
    except (OSError, TimeoutError):  # ssl.SSLError is an OSError
        return False
    return status == 200


async def listening(url: str, timeout_s: float) -> bool:
    """Does anything accept connections at the URL's host and port?"""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(parts.hostname or "127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
