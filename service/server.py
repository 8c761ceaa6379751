"""uvicorn with a 503 phase: SIGTERM starts the drain, the listener closes only when it is done.

uvicorn on its own closes the listening socket at the first SIGTERM, so a load balancer
that still routes here gets refused connections. We take over `handle_exit` (which
uvicorn installs with signal.signal before it imports the app) and keep serving:
new requests get 503 from DrainMiddleware while in-flight ones finish. Only then does
uvicorn's own shutdown run. We do not re-raise the signal, so the exit code is 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType

import uvicorn

from service.config import ServiceConfig
from service.drain import DrainState

log = logging.getLogger("service")

TICK_S = 0.1
DRAIN_TICK_S = 0.01  # poll faster while draining: exit soon after the last request


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: ServiceConfig, state: DrainState) -> None:
        super().__init__(config)
        self.service = service
        self.state = state
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Signal handler: set state only, the main loop acts on it.
        if self.state.draining:
            # A second signal forces the exit, as in uvicorn: in-flight requests are cut.
            self.should_exit = self.force_exit = True
        else:
            self.state.start_draining()

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(DRAIN_TICK_S if self.state.draining else TICK_S)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
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
        if elapsed < self.service.drain_linger_s:
            return False
        if state.in_flight == 0:
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


def build_server(service: ServiceConfig, *, drain: bool = True) -> DrainingServer:
    from service.app import create_app

    state = DrainState()
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
    )
    return DrainingServer(config, service, state)
