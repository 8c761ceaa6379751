"""The readiness probe: GET the app's readiness URL, look at the status code only.

Not httpx on purpose: the agent is PID 1 of every container, and importing httpx (with
the TLS context it builds) took the agent from 26 to 34 MiB RSS, over the 30 MiB budget,
for one GET that needs nothing but a status line. Proxies are never used (a proxy from
the environment must not see a loopback probe).
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit


async def ready(url: str, timeout_s: float) -> bool:
    """True if `url` answers 200; False on any other status, error or timeout."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl.create_default_context() if secure else None
            )
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: drain-agent\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            status_line = await reader.readline()
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    finally:
        if writer is not None:
            writer.close()
    fields = status_line.split()
    return len(fields) >= 2 and fields[0].startswith(b"HTTP/") and fields[1] == b"200"
