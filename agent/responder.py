"""The agent-check port: HAProxy connects, reads one line with this instance's state, done.

This is how HAProxy learns a drain without anyone holding admin rights: each HAProxy polls
every agent (`agent-check agent-port ... agent-inter ...`), and an agent can only ever
speak for its own server. Nothing the peer sends is used, so there is nothing to exploit;
a restarted or reloaded HAProxy re-learns every state on its next poll.

In `ready`, the steady state of a serving instance, and in `starting`, a poll from a HAProxy
that was already told that state's reply waits up to `hold_s` for the state to change (a long
poll): HAProxy learns a drain the moment it begins and a start the moment the app is ready, not
at its next poll, and an idle instance costs each HAProxy one connection per hold instead of
one per `agent-inter`. The other states are short-lived and answered at once. A HAProxy that
has just started learns the state on its first poll (its address was never told). A worker
that a reload started from the old one's server states (server-state-file, as `rollout
reload` does) knows it already; a plain reload's worker, with its configuration's idea of the
server (UP), may learn a `starting` instance's maint up to `hold_s` late, and meanwhile its
health check takes the server out. A HAProxy that does not wait that long (its `timeout
check` is shorter) closes the connection first; after three such polls in a row its address
is answered at once. Only polls from a HAProxy's address (its stats URL's host) wait, one per
address at a time (a HAProxy process never polls one server twice at once), at most MAX_HELD
in all: anyone else (a probe, a container's health check) is answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

# What HAProxy does with each reply: `maint` takes the server out (checks go on), `drain`
# sends it no new request, `ready` lifts both. UP itself is HAProxy's own health check.
REPLIES = {"starting": "maint", "ready": "ready", "draining": "drain", "stopping": "maint", "exited": "maint"}
HELD = ("ready", "starting")  # the states a known poll waits in for a change
MAX_HELD = 16
EARLY_CLOSES_OFF = 3
MAX_PEERS = 1024  # addresses remembered (what each was told); forgotten all at once past this


class Responder:
    def __init__(self, host: str, port: int, state: Callable[[], str], hold_s: float = 0.0,
                 say: Callable[..., None] = lambda *args, **fields: None,
                 haproxies: Callable[[], Awaitable[frozenset[str] | None]] | None = None) -> None:
        self.host = host
        self.port = port
        self.state = state
        self.hold_s = hold_s
        self.say = say
        self.haproxies = haproxies  # the addresses whose polls may be held (None: any)
        self.server: asyncio.Server | None = None
        self.changed = asyncio.Event()
        self.held = 0
        self.early_closes: dict[str, int] = {}  # peer address -> holds it cut short in a row
        self.told: dict[str, str] = {}  # peer address -> the last reply it got
        self.holding: set[str] = set()  # peer addresses with a poll held now

    async def start(self) -> None:
        """Bind now (an error here is a config error: port taken or not ours to bind)."""
        self.server = await asyncio.start_server(
            self.answer, self.host, self.port, reuse_address=True, family=socket.AF_INET
            if ":" not in self.host else socket.AF_INET6,
        )

    def state_changed(self) -> None:
        """Answer every held poll now, with the new state."""
        self.changed.set()
        self.changed = asyncio.Event()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        try:
            haproxy = self.hold_s > 0 and await self.from_haproxy(peer)  # before the checks: no await between
            state = self.state()
            if (haproxy and state in HELD and self.told.get(peer) == REPLIES[state]
                    and self.held < MAX_HELD
                    and peer not in self.holding and self.early_closes.get(peer, 0) < EARLY_CLOSES_OFF):
                self.held += 1
                self.holding.add(peer)
                try:
                    closed_first = await self.hold(reader)
                finally:
                    self.held -= 1
                    self.holding.discard(peer)
                if closed_first:
                    self.told.pop(peer, None)
                    self.note_early_close(peer)
                    return
                self.early_closes.pop(peer, None)
            reply = REPLIES[self.state()]
            with contextlib.suppress(OSError):
                writer.write(f"{reply}\n".encode())
                await writer.drain()
                if len(self.told) >= MAX_PEERS:
                    self.told.clear()
                self.told[peer] = reply
        finally:
            writer.close()

    async def from_haproxy(self, peer: str) -> bool:
        """Only a HAProxy's poll is held: a probe or a container's health check is answered at once."""
        if self.haproxies is None:
            return True
        addresses = await self.haproxies()
        return addresses is not None and peer in addresses

    async def hold(self, reader: asyncio.StreamReader) -> bool:
        """Until the state changes or `hold_s` passes; True if the peer closed the connection first."""
        changed = asyncio.ensure_future(self.changed.wait())
        closed = asyncio.ensure_future(until_closed(reader))
        try:
            done, _ = await asyncio.wait({changed, closed}, timeout=self.hold_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            closed.cancel()
        return closed in done and not changed.done()

    def note_early_close(self, peer: str) -> None:
        count = self.early_closes[peer] = self.early_closes.get(peer, 0) + 1
        if count == EARLY_CLOSES_OFF:
            self.say("agent.hold_off", peer=peer, hold_s=self.hold_s,
                     hint="this HAProxy closes its agent-check before --agent-hold ends (its "
                          "`timeout check` is shorter): answering it at once from now on")

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def until_closed(reader: asyncio.StreamReader) -> None:
    """Read (and drop: `agent-send` text, anything) until the peer closes."""
    with contextlib.suppress(OSError):
        while await reader.read(4096):
            pass
