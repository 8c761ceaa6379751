"""The drain state machine: STARTING -> READY -> DRAINING -> STOPPING -> EXITED.

    start:    server to maint; spawn the app; wait for its readiness URL; set ready in
              every HAProxy; wait until each reports UP.
    SIGTERM:  set drain; wait until each HAProxy shows scur + qcur == 0 for the server
              (bounded by --drain-timeout); only then signal the app; wait for it
              (bounded by --stop-timeout, then SIGKILL); server to maint; exit with its code.
    app dies: server to maint at once; exit with its code.

Signal handlers only set state; this loop acts. A second SIGTERM cuts the drain short.
HAProxy trouble never blocks a stop: every call has a deadline, and an unreachable
HAProxy is logged and skipped, leaving the app's own 503 drain to do the job.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent import probe
from agent.config import AgentConfig
from agent.errors import EXIT_START_TIMEOUT, AgentError, HAProxyCommandError, HAProxyError
from agent.events import Timeline
from agent.haproxy import RuntimeAPI, ServerStat
from agent.metrics import Metrics
from agent.supervise import Child, describe

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARDED_SIGNALS = (
    signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
    signal.SIGCONT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
)
# How each state is asserted in HAProxy; re-applied when HAProxy restarts under us.
HAPROXY_SETTINGS = {
    "maint": ("state maint",),
    "ready": ("state ready", "health up"),  # we checked readiness ourselves: no wait for `rise`
    "drain": ("state drain",),
}


class AgentState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    EXITED = "exited"


class Agent:
    def __init__(self, config: AgentConfig, timeline: Timeline, metrics: Metrics) -> None:
        self.config = config
        self.timeline = timeline
        self.metrics = metrics
        self.apis = [RuntimeAPI(a, config.api_timeout_s) for a in config.haproxy]
        self.state = AgentState.STARTING
        self.desired = "maint"
        self.stop_signal: int = signal.SIGTERM
        self.stop_requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.identities: dict[RuntimeAPI, tuple[str, int] | None] = {}
        self.child: Child | None = None
        self.app_ready = False

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        await self.preflight()
        self.child = Child(self.config.command)
        self.install_signal_handlers(self.child)
        spawned = time.monotonic()
        pid = self.child.start()
        self.event("app.started", pid=pid, command=" ".join(self.config.command))
        code = await self.serve(spawned)
        self.transition(AgentState.EXITED, code=code)
        return code

    async def serve(self, spawned: float) -> int:
        assert self.child is not None
        exited: asyncio.Future[Any] = asyncio.ensure_future(asyncio.shield(self.child.exited))
        stop: asyncio.Future[Any] = asyncio.ensure_future(self.stop_requested.wait())
        try:
            ready: asyncio.Future[Any] = asyncio.ensure_future(self.become_ready(spawned))
            done, _ = await asyncio.wait(
                {ready, stop, exited},
                timeout=self.config.start_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if ready not in done:
                ready.cancel()
            if exited in done:
                return await self.app_exited(exited.result())
            if not done:
                return await self.start_timed_out()
            if ready in done:
                ready.result()
                time_to_ready_ms = self.timeline.ms_since(spawned)
                self.metrics.record_time_to_ready(time_to_ready_ms / 1000)
                self.transition(AgentState.READY, time_to_ready_ms=time_to_ready_ms)
                while not stop.done():
                    done, _ = await asyncio.wait(
                        {stop, exited}, timeout=self.config.watch_interval_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if exited in done:
                        return await self.app_exited(exited.result())
                    if not done:
                        await self.watch_haproxy()
            return await self.shut_down(exited)
        finally:
            stop.cancel()
            exited.cancel()

    async def preflight(self) -> None:
        """Before the app starts: every HAProxy answers and knows our server, which goes to maint."""
        deadline = time.monotonic() + self.config.haproxy_wait_s
        for api in self.apis:
            while True:
                try:
                    await api.server_stat(self.config.backend, self.config.server)
                    self.identities[api] = await self.identity(api)
                    break
                except HAProxyCommandError:
                    raise
                except HAProxyError as exc:
                    if time.monotonic() >= deadline:
                        raise HAProxyError(
                            f"{exc} (waited {self.config.haproxy_wait_s:g}s; see --haproxy-wait)"
                        ) from None
                    await asyncio.sleep(0.2)
        await self.assert_state("maint")
        self.event("haproxy.found", haproxies=",".join(str(a.address) for a in self.apis))

    async def become_ready(self, spawned: float) -> None:
        await self.wait_app_ready()
        self.app_ready = True
        self.event("app.ready", wait_ms=self.timeline.ms_since(spawned))
        await self.assert_state("ready")
        await self.wait_haproxy(lambda stat: stat.status == "UP", "UP")

    async def start_timed_out(self) -> int:
        self.event(
            "start.timeout", logging.ERROR, ready_url=self.config.ready_url,
            timeout_s=self.config.start_timeout_s,
        )
        await self.assert_state("maint")
        code = await self.stop_app(signal.SIGTERM)
        what = (
            "app ready, but HAProxy never reported the server UP (can HAProxy reach the app?)"
            if self.app_ready else f"app not ready at {self.config.ready_url}"
        )
        raise AgentError(
            f"{self.config.server_id}: {what} within {self.config.start_timeout_s:g}s "
            f"(see --start-timeout); server left in maint, app {describe(code)}",
            EXIT_START_TIMEOUT,
        )

    async def shut_down(self, exited: asyncio.Future[int]) -> int:
        self.transition(AgentState.DRAINING, signal=signal.Signals(self.stop_signal).name)
        drain_started = time.monotonic()
        await self.assert_state("drain")
        await self.wait_drained(exited)
        drain_ms = self.timeline.ms_since(drain_started)
        self.metrics.record_drain(drain_ms / 1000)
        self.transition(AgentState.STOPPING, drain_ms=drain_ms)
        code = await self.stop_app(self.stop_signal)
        await self.assert_state("maint")
        return code

    async def app_exited(self, code: int) -> int:
        """The app ended on its own: out of rotation first, then report."""
        await self.assert_state("maint")
        level = logging.INFO if code == 0 else logging.ERROR
        self.event("app.exited", level, code=code, how=describe(code), unexpected=True)
        self.cleanup_group()
        return code

    # -- the app ---------------------------------------------------------------------

    async def wait_app_ready(self) -> None:
        interval = self.config.poll_interval_s
        while not await probe.ready(self.config.ready_url, timeout_s=max(1.0, interval)):
            await asyncio.sleep(interval)

    async def stop_app(self, sig: int) -> int:
        assert self.child is not None
        if self.child.send(sig):
            self.event("app.signalled", signal=signal.Signals(sig).name, pid=self.child.pid)
        try:
            async with asyncio.timeout(self.config.stop_timeout_s):
                code = await asyncio.shield(self.child.exited)
        except TimeoutError:
            self.event("app.kill", logging.ERROR, after_s=self.config.stop_timeout_s,
                       hint="raise --stop-timeout or make the app stop faster")
            self.child.send(signal.SIGKILL)
            code = await asyncio.shield(self.child.exited)
        self.event("app.exited", code=code, how=describe(code))
        self.cleanup_group()
        return code

    def cleanup_group(self) -> None:
        assert self.child is not None
        self.child.signal_group(signal.SIGTERM)
        self.child.reap()

    # -- HAProxy ---------------------------------------------------------------------

    async def identity(self, api: RuntimeAPI) -> tuple[str, int]:
        """Which HAProxy process answers: a new one after a restart or reload."""
        info = await api.info()
        return info["Pid"], round(time.time() - int(info["Uptime_sec"]))

    async def on_each(self, action: Callable[[RuntimeAPI], Awaitable[None]], what: str) -> None:
        results = await asyncio.gather(*(action(api) for api in self.apis), return_exceptions=True)
        for api, result in zip(self.apis, results, strict=True):
            if isinstance(result, HAProxyError):
                self.identities[api] = None
                self.metrics.record_api_error()
                self.event("haproxy.error", logging.WARNING, haproxy=api.address,
                           action=what, error=result)
            elif isinstance(result, BaseException):
                raise result

    async def assert_state(self, desired: str) -> None:
        self.desired = desired

        async def apply(api: RuntimeAPI) -> None:
            for setting in HAPROXY_SETTINGS[desired]:
                await api.set_server(self.config.backend, self.config.server, setting)

        await self.on_each(apply, f"set {desired}")
        self.event(f"haproxy.{desired}")

    async def wait_haproxy(self, done: Callable[[ServerStat], bool], what: str) -> None:
        """Poll `show stat` until `done(stat)` holds in every reachable HAProxy."""
        pending = set(self.apis)
        while pending:
            for api in list(pending):
                try:
                    stat = await api.server_stat(self.config.backend, self.config.server)
                except HAProxyError as exc:
                    self.event("haproxy.error", logging.WARNING, haproxy=api.address,
                               action=f"wait {what}", error=exc)
                    pending.discard(api)
                    continue
                if done(stat):
                    pending.discard(api)
            if pending:
                await asyncio.sleep(self.config.poll_interval_s)
        self.event(f"haproxy.{what.lower()}")

    async def wait_drained(self, exited: asyncio.Future[int]) -> None:
        """Until every HAProxy shows no session and no queued request on our server."""
        pending = {api for api in self.apis if self.identities.get(api) is not None}
        if len(pending) < len(self.apis):
            self.event("drain.skipped", logging.WARNING, unreachable=len(self.apis) - len(pending),
                       hint="relying on the app's 503 drain")
        deadline = time.monotonic() + self.config.drain_timeout_s
        busy: dict[RuntimeAPI, int] = {}
        while pending:
            if self.forced.is_set() or exited.done():
                self.event("drain.cut", reason="second signal" if self.forced.is_set() else "app exited")
                return
            if time.monotonic() >= deadline:
                self.event("drain.timeout", logging.WARNING, sessions=sum(busy.values()),
                           timeout_s=self.config.drain_timeout_s)
                return
            for api in list(pending):
                try:
                    stat = await api.server_stat(self.config.backend, self.config.server)
                except HAProxyError as exc:
                    self.event("haproxy.error", logging.WARNING, haproxy=api.address,
                               action="wait drained", error=exc)
                    pending.discard(api)
                    continue
                busy[api] = stat.busy
                if stat.admin_state not in ("drain", "maint"):
                    # HAProxy restarted under us and forgot the drain: say it again.
                    await self.on_each(self.reassert_on(api), "re-drain")
                elif stat.busy == 0:
                    pending.discard(api)
            if pending:
                await asyncio.sleep(self.config.poll_interval_s)
        self.event("drain.done")

    def reassert_on(self, target: RuntimeAPI) -> Callable[[RuntimeAPI], Awaitable[None]]:
        async def apply(api: RuntimeAPI) -> None:
            if api is target:
                for setting in HAPROXY_SETTINGS[self.desired]:
                    await api.set_server(self.config.backend, self.config.server, setting)
        return apply

    async def watch_haproxy(self) -> None:
        """While serving: a HAProxy that restarted (or came back) gets our state again."""
        for api in self.apis:
            try:
                current = await self.identity(api)
            except HAProxyError as exc:
                if self.identities.get(api) is not None:
                    self.event("haproxy.lost", logging.WARNING, haproxy=api.address, error=exc)
                self.identities[api] = None
                continue
            previous = self.identities.get(api)
            if previous is not None and previous[0] == current[0] and abs(previous[1] - current[1]) <= 2:
                continue
            self.identities[api] = current
            await self.on_each(self.reassert_on(api), f"re-assert {self.desired}")
            self.event("haproxy.reasserted", haproxy=api.address, state=self.desired, pid=current[0])

    # -- signals and logging ---------------------------------------------------------

    def install_signal_handlers(self, child: Child) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.on_stop_signal, sig)
        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, self.on_forwarded_signal, child, sig)
        loop.add_signal_handler(signal.SIGCHLD, child.reap)

    def on_stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.stop_requested.is_set():
            self.forced.set()
            self.event("signal.again", signal=name, hint="cutting the drain short")
            if self.state is AgentState.STOPPING and self.child is not None:
                self.child.send(sig)
            return
        self.stop_signal = sig
        self.stop_requested.set()
        self.event("signal.received", signal=name)

    def on_forwarded_signal(self, child: Child, sig: int) -> None:
        forwarded = child.send(sig)
        self.event("signal.forwarded", signal=signal.Signals(sig).name, delivered=forwarded)

    def transition(self, state: AgentState, **fields: object) -> None:
        self.event("agent.state", from_=self.state.value, to=state.value, **fields)
        self.state = state
        self.metrics.record_state(state.value)

    def event(self, name: str, level: int = logging.INFO, /, **fields: object) -> None:
        self.timeline.event(name, level, {k.rstrip("_"): v for k, v in fields.items()})
