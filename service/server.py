"""uvicorn with a 503 phase: SIGTERM starts the drain, the listener closes only when it is done.

uvicorn on its own closes the listening socket at the first SIGTERM, so a load balancer
that still routes here gets refused connections. We take over `handle_exit` (which
uvicorn installs with signal.signal before it imports the app) and keep serving:
new requests get 503 from DrainMiddleware while in-flight ones finish. Only then does
uvicorn's own shutdown run. We do not re-raise the signal, so the exit code is 0.

SIGUSR1 (RELEASE_SIGNAL; drain-agent's `--drain-notify SIGUSR1` sends it once HAProxy sends
no new work here) releases the long-lived connections (service.streams): each WebSocket is
closed with 1012 after its message in flight, each event stream ends, and everything else
is served as before. SIGTERM does the same if no notice came first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Iterator
from types import FrameType

import uvicorn

from service.config import NO_NOTICE_LINGER_S, ServiceConfig
from service.drain import DrainState
from service.streams import MAX_WS_MESSAGE_BYTES, QuietWebSocketLines, protocol_for

log = logging.getLogger("service")

TICK_S = 0.1
DRAIN_TICK_S = 0.01  # poll faster while draining: exit soon after the last request
RELEASE_SIGNAL = signal.SIGUSR1


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: ServiceConfig, state: DrainState) -> None:
        super().__init__(config)
        self.service = service
        self.state = state
        self._drain_logged = False
        self.loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's (SIGTERM, SIGINT), and RELEASE_SIGNAL, whose default action would kill us."""
        previous = signal.signal(RELEASE_SIGNAL, self.handle_release)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(RELEASE_SIGNAL, previous)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Signal handler: set state only, the main loop acts on it.
        if self.state.draining:
            # A second Ctrl-C forces the exit, as in uvicorn: in-flight requests are cut. A
            # repeated SIGTERM changes nothing: the agent's parent-death SIGTERM comes once per
            # thread of this process, and a supervisor that means it sends SIGKILL.
            if sig == signal.SIGINT:
                self.should_exit = self.force_exit = True
        else:
            self.state.start_draining()
            self.wake_release()

    def handle_release(self, sig: int, frame: FrameType | None) -> None:
        self.state.streams.request_release(signal.Signals(sig).name)
        self.wake_release()

    def wake_release(self) -> None:
        """From a signal handler: release in the loop now (on_tick would, within TICK_S)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.apply_release)

    def apply_release(self) -> None:
        streams = self.state.streams
        if streams.release_requested and not streams.released.is_set():
            streams.release()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(DRAIN_TICK_S if self.state.draining else TICK_S)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        self.apply_release()
        state = self.state
        if not state.draining or state.drain_started is None:
            return False
        elapsed = time.monotonic() - state.drain_started
        if not self._drain_logged:
            self._drain_logged = True
            log.info(
                "event=service.draining instance=%s in_flight=%d",
                self.service.instance, state.in_flight,
            )
        if elapsed < self.linger_s():
            return False
        if state.in_flight == 0 and state.streams.sockets_settled():
            log.info(
                "event=service.drained instance=%s elapsed_ms=%d",
                self.service.instance, elapsed * 1000,
            )
            return True
        if elapsed >= self.service.shutdown_timeout_s:
            log.warning(
                "event=service.drain_timeout instance=%s in_flight=%d elapsed_ms=%d",
                self.service.instance, state.in_flight, elapsed * 1000,
            )
            return True
        return False

    def linger_s(self) -> float:
        if self.service.drain_linger_s is not None:
            return self.service.drain_linger_s
        return 0.0 if self.state.notice_before_drain else NO_NOTICE_LINGER_S

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.state.streams.log_cut()  # uvicorn's shutdown cuts what is still open
        await super().shutdown(sockets)


def build_server(service: ServiceConfig, *, drain: bool = True) -> DrainingServer:
    from service.app import create_app

    state = DrainState()
    state.streams.instance = service.instance
    if not service.access_log:
        logging.getLogger("uvicorn.error").addFilter(QuietWebSocketLines())
    config = uvicorn.Config(
        create_app(service, state, drain=drain),
        host=service.host,
        port=service.port,
        lifespan="on",
        access_log=service.access_log,
        timeout_keep_alive=int(service.keep_alive_s),
        # Our drain already waited for in-flight requests; this bounds uvicorn's own wait.
        timeout_graceful_shutdown=max(1, int(service.shutdown_timeout_s)),
        server_header=False,
        ws=protocol_for(state.streams) or "none",  # needs the `websockets` package
        ws_max_size=MAX_WS_MESSAGE_BYTES,
    )
    return DrainingServer(config, service, state)
