"""The agent-check port: HAProxy connects, reads one line with this instance's state, done.

This is how HAProxy learns a drain without anyone holding admin rights: each HAProxy polls
every agent (`agent-check agent-port ... agent-inter ...`), and an agent can only ever
speak for its own server. Nothing is read from the peer, so there is nothing to exploit;
a restarted or reloaded HAProxy re-learns every state on its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

# What HAProxy does with each reply: `maint` takes the server out (checks go on), `drain`
# sends it no new request, `ready` lifts both. UP itself is HAProxy's own health check.
REPLIES = {"starting": "maint", "ready": "ready", "draining": "drain", "stopping": "maint", "exited": "maint"}


class Responder:
    def __init__(self, host: str, port: int, state: Callable[[], str]) -> None:
        self.host = host
        self.port = port
        self.state = state
        self.server: asyncio.Server | None = None
        self.polls = 0

    async def start(self) -> None:
        """Bind now (an error here is a config error: port taken or not ours to bind)."""
        self.server = await asyncio.start_server(
            self.answer, self.host, self.port, reuse_address=True, family=socket.AF_INET
            if ":" not in self.host else socket.AF_INET6,
        )

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.polls += 1
        with contextlib.suppress(OSError):
            writer.write(f"{REPLIES[self.state()]}\n".encode())
            await writer.drain()
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
