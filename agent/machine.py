"""The drain state machine: STARTING -> READY -> DRAINING -> STOPPING -> EXITED.

    start:    answer maint on the agent port; wait until no older process holds the app's
              port; spawn the app; once its readiness URL answers 200, answer ready.
              HAProxy's own health check then makes the server UP.
    SIGTERM:  answer drain; wait until every HAProxy's stats show this server out of
              rotation with scur + qcur == 0 (a failed read is retried, never taken as
              drained; bounded by --drain-timeout) and, within --reload-window of a
              HAProxy reload, until the app's port holds no connection from HAProxy but
              the ones its stats account for (an old worker's sessions); only then signal
              the app; wait for it
              (bounded by --stop-timeout, then SIGKILL); exit with its code.
              With --drain-notify SIG: as soon as every HAProxy shows the server out of
              rotation (no new work can arrive), the app gets SIG, once, so it closes its
              long-lived connections (WebSockets, event streams) and the sessions reach 0.
    app dies: answer maint; exit with its code.

The machine does no I/O of its own: it is handed its HAProxies' stats, the app (a `Child`),
probes and a clock, so each (state, event) pair is unit-tested. Signal handlers only set
flags; `run` acts. A second stop signal cuts the drain short.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from agent.config import AgentConfig
from agent.errors import EXIT_START_TIMEOUT, AgentError, HAProxyError
from agent.events import AgentState, Timeline
from agent.haproxy import ServerStat
from agent.metrics import Metrics
from agent.supervise import describe


class App(Protocol):
    """The app process (agent.supervise.Child)."""

    pid: int | None
    exited: asyncio.Future[int]

    def start(self) -> int: ...
    def send(self, sig: int) -> bool: ...
    def signal_group(self, sig: int) -> None: ...
    def reap(self) -> None: ...


class Stats(Protocol):
    """One HAProxy's read-only stats (agent.haproxy.StatsPage)."""

    url: str

    async def servers(self) -> list[ServerStat]: ...
    async def uptime_s(self) -> float: ...


class Clock(Protocol):
    def now(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class Probes(Protocol):
    async def app_ready(self) -> bool: ...
    async def port_taken(self) -> bool: ...
    def is_mine(self, stat: ServerStat) -> bool: ...
    async def app_connections(self) -> frozenset[str] | None: ...


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        spawn: Callable[[], App],
        haproxies: Sequence[Stats],
        probes: Probes,
        clock: Clock,
        timeline: Timeline,
        metrics: Metrics,
        on_state: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.spawn = spawn
        self.haproxies = list(haproxies)
        self.probes = probes
        self.clock = clock
        self.timeline = timeline
        self.metrics = metrics
        self.on_state = on_state  # the agent port answers its held polls with the new state
        self.state = AgentState.STARTING
        self.stop_signal: int = signal.SIGTERM
        self.stop_requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.child: App | None = None
        self.app_ready = False
        self.last_error: dict[str, str] = {}
        self.reload_recent = False  # a HAProxy worker younger than --reload-window was seen
        self.open_at_zero: frozenset[str] | None = None  # the app's connections when sessions hit 0
        self.own_at_zero = 0  # of them, the current workers' own (the fewest any read said since)

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        begun = self.clock.now()
        if await self.until(self.wait_port_free(), self.config.start_timeout_s) != "done":
            self.transition(AgentState.EXITED, code=0, app="never started")
            if self.stop_requested.is_set():
                return 0
            raise AgentError(
                f"another process still answers on {self.config.ready_url} after "
                f"{self.config.start_timeout_s:g}s (see --start-timeout); app not started",
                EXIT_START_TIMEOUT,
            )
        self.child = self.spawn()
        pid = self.child.start()
        self.event("app.started", pid=pid, command=" ".join(self.config.command))
        code = await self.serve(begun)
        self.transition(AgentState.EXITED, code=code)
        return code

    async def serve(self, begun: float) -> int:
        outcome = await self.until(self.wait_app_ready(), self.config.start_timeout_s)
        if outcome == "exited":
            return await self.app_exited()
        if outcome == "timeout":
            return await self.start_timed_out()
        if outcome == "done":
            ready_ms = int((self.clock.now() - begun) * 1000)
            self.metrics.record_time_to_ready(ready_ms / 1000)
            self.transition(AgentState.READY, time_to_ready_ms=ready_ms)
            watch = asyncio.ensure_future(self.watch_up(begun))
            try:
                outcome = await self.until(asyncio.Event().wait(), None)
            finally:
                watch.cancel()
            if outcome == "exited":
                return await self.app_exited()
        return await self.shut_down()

    async def until(self, work: Awaitable[object], timeout_s: float | None) -> str:
        """Run `work` until it is done, a stop is asked, the app exits, or the timeout."""
        task: asyncio.Future[object] = asyncio.ensure_future(work)
        stop: asyncio.Future[object] = asyncio.ensure_future(self.stop_requested.wait())
        waits = {task, stop}
        if self.child is not None:
            waits.add(asyncio.ensure_future(asyncio.shield(self.child.exited)))
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if self.child is not None and self.child.exited.done():
            return "exited"
        if stop in done:
            return "stop"
        if task in done:
            task.result()
            return "done"
        return "timeout"

    async def start_timed_out(self) -> int:
        self.event("start.timeout", logging.ERROR, ready_url=self.config.ready_url,
                   timeout_s=self.config.start_timeout_s)
        code = await self.stop_app(signal.SIGTERM)
        self.transition(AgentState.EXITED, code=EXIT_START_TIMEOUT)
        raise AgentError(
            f"app not ready at {self.config.ready_url} within "
            f"{self.config.start_timeout_s:g}s (see --start-timeout); app {describe(code)}",
            EXIT_START_TIMEOUT,
        )

    async def shut_down(self) -> int:
        self.transition(AgentState.DRAINING, signal=signal.Signals(self.stop_signal).name)
        drain_started = self.clock.now()
        await self.wait_drained()
        drain_ms = int((self.clock.now() - drain_started) * 1000)
        self.metrics.record_drain(drain_ms / 1000)
        self.transition(AgentState.STOPPING, drain_ms=drain_ms)
        return await self.stop_app(self.stop_signal)

    async def app_exited(self) -> int:
        """The app ended on its own: out of rotation (HAProxy's check sees it too), then report."""
        assert self.child is not None
        code = self.child.exited.result()
        self.transition(AgentState.STOPPING, reason="app exited")
        level = logging.INFO if code == 0 else logging.ERROR
        self.event("app.exited", level, code=code, how=describe(code), unexpected=True)
        self.cleanup_group()
        return code

    # -- the app ---------------------------------------------------------------------

    async def wait_port_free(self) -> None:
        """An older app (its agent SIGKILLed) may still be finishing on our port: never take
        its answers for our app's, and let it go before ours tries to bind."""
        said = False
        while await self.probes.port_taken():
            if not said:
                self.event("app.port_busy", logging.WARNING, ready_url=self.config.ready_url)
                said = True
            await self.clock.sleep(self.config.poll_interval_s)

    async def wait_app_ready(self) -> None:
        while not await self.probes.app_ready():
            await self.clock.sleep(self.config.poll_interval_s)
        self.app_ready = True
        self.event("app.ready")

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
        expected = code == 0 or code == 128 + sig
        self.event("app.exited", logging.INFO if expected else logging.ERROR, code=code, how=describe(code))
        self.cleanup_group()
        return code

    def cleanup_group(self) -> None:
        assert self.child is not None
        self.child.signal_group(signal.SIGTERM)
        self.child.reap()

    # -- HAProxy ---------------------------------------------------------------------

    async def my_rows(self, haproxy: Stats) -> list[ServerStat] | None:
        """This instance's rows in one HAProxy; None when its stats cannot be read."""
        try:
            rows = [stat for stat in await haproxy.servers() if self.probes.is_mine(stat)]
        except HAProxyError as exc:
            self.metrics.record_stats_error()
            if self.last_error.get(haproxy.url) != str(exc):
                self.event("haproxy.error", logging.WARNING, haproxy=haproxy.url, error=exc)
            self.last_error[haproxy.url] = str(exc)
            return None
        self.last_error.pop(haproxy.url, None)
        if rows and not self.config.server:  # name the log lines after the rows found
            self.timeline.server_id = ",".join(sorted({f"{r.backend}/{r.server}" for r in rows}))
        if not rows and self.last_error.get(haproxy.url + " missing") is None:
            self.last_error[haproxy.url + " missing"] = "said"
            self.event("haproxy.missing", logging.WARNING, haproxy=haproxy.url,
                       hint="no server row with this instance's address: check --server-port, "
                            "or the server-template slots are all taken")
        return rows

    async def wait_drained(self) -> None:
        """Until one round of reads shows this server out of rotation with nothing in flight in
        every HAProxy. Every round reads every HAProxy: one that restarted after it had drained
        is UP again and takes requests until its next agent-check."""
        assert self.child is not None
        began = self.clock.now()
        deadline = began + self.config.drain_timeout_s
        busy: dict[str, int | str] = {h.url: "unread" for h in self.haproxies}
        notify = self.config.drain_notify_signal
        reload_said = False
        while True:
            if self.forced.is_set() or self.child.exited.done():
                self.event("drain.cut", reason="second signal" if self.forced.is_set() else "app exited")
                return
            if self.clock.now() >= deadline:
                left = {url: n for url, n in busy.items() if n != 0}
                # `sessions`: how many were still open, which the app's stop cuts (say, clients
                # that ignored its close).
                cut = sum(n for n in left.values() if isinstance(n, int))
                self.event("drain.timeout", logging.WARNING, timeout_s=self.config.drain_timeout_s,
                           left=",".join(f"{url}={n}" for url, n in left.items()),
                           **({"sessions": cut} if cut else {}),
                           hint="relying on the app's own drain")
                return
            own = 0
            busy.pop("old-workers", None)
            for haproxy in self.haproxies:
                rows = await self.my_rows(haproxy)
                if not rows:
                    # A failed read is never "drained". No row for an app that never got ready:
                    # it was never in rotation (its agent said maint all along, and Swarm puts a
                    # task in the DNS only once healthy), so nothing can be in flight.
                    busy[haproxy.url] = "unread" if rows is None else 0 if not self.app_ready else "missing"
                elif any(row.accepting for row in rows):
                    busy[haproxy.url] = "accepting"
                else:
                    busy[haproxy.url] = sum(row.busy for row in rows)
                    own += sum(row.conns for row in rows)
            if notify is not None and self.app_ready and all(isinstance(n, int) for n in busy.values()):
                # Out of rotation everywhere: what is still open can only end, so the app may
                # close its long-lived connections now; the drain then waits for 0 as before.
                if self.child.send(notify):
                    self.event("drain.notify", signal=signal.Signals(notify).name,
                               sessions=sum(int(n) for n in busy.values()),
                               after_ms=int((self.clock.now() - began) * 1000))
                notify = None
            if all(n == 0 for n in busy.values()):
                held = await self.held_by_old_workers(own)
                if not held:
                    self.event("drain.done")
                    return
                busy["old-workers"] = held
                if not reload_said:
                    reload_said = True
                    self.event("drain.old_workers", connections=held, workers_own=own,
                               hint="HAProxy reloaded recently: its old worker still has "
                                    "sessions here; waiting for them")
            await self.clock.sleep(self.config.poll_interval_s)

    async def held_by_old_workers(self, own: int) -> int:
        """Connections from HAProxy to the app that no stats page accounts for: an old worker's,
        after a reload within --reload-window (a worker's uptime that cannot be read counts as
        recent). The current workers' own connections (idle in their pools, or in use between
        two sessions) are counted out; sessions are 0 by now."""
        if self.config.reload_window_s <= 0:
            return 0
        if not self.reload_recent:
            for haproxy in self.haproxies:
                try:
                    uptime = await haproxy.uptime_s()
                except HAProxyError as exc:
                    if self.last_error.get(haproxy.url + " uptime") is None:
                        self.last_error[haproxy.url + " uptime"] = "said"
                        self.event("haproxy.uptime_unknown", logging.WARNING, haproxy=haproxy.url,
                                   error=exc, hint="taken as just reloaded")
                    uptime = 0.0
                if uptime < self.config.reload_window_s:
                    self.reload_recent = True
            if not self.reload_recent:
                return 0
        connections = await self.probes.app_connections()
        if connections is None:
            return 0
        # Only those already open when the sessions reached 0: a health check opened since is
        # not a session (HAProxy sends a drained server none), and lasts at most `timeout check`.
        if self.open_at_zero is None:
            self.open_at_zero, self.own_at_zero = connections, own
        # Only what the current workers held at 0 is theirs: a connection they open later is
        # not among those counted, and a read that says more (one answered, as seen once, by
        # the old worker, whose count includes its own session) must not end the drain.
        self.own_at_zero = min(self.own_at_zero, own)
        return max(0, len(self.open_at_zero & connections) - self.own_at_zero)

    async def watch_up(self, begun: float) -> None:
        """While READY, say when HAProxy's own check has the server UP, or that it does not."""
        deadline = self.clock.now() + self.config.start_timeout_s
        pending = list(self.haproxies)
        checks: dict[str, str] = {}
        while pending:
            for haproxy in list(pending):
                rows = await self.my_rows(haproxy)
                if rows and all(row.status == "UP" for row in rows):
                    pending.remove(haproxy)
                elif rows:
                    checks[haproxy.url] = "; ".join(f"{row.status} ({row.check})" for row in rows)
            if pending and self.clock.now() >= deadline:
                self.event("haproxy.not_up", logging.ERROR, haproxies=" ".join(h.url for h in pending),
                           seen=" | ".join(checks.values()) or "no row",
                           hint="the app is ready on its readiness URL, but HAProxy's health "
                                "check fails: can HAProxy reach the app's address and port?")
                return
            if pending:
                await self.clock.sleep(self.config.poll_interval_s * 4)
        self.event("haproxy.up", since_start_ms=int((self.clock.now() - begun) * 1000))

    # -- signals and logging ---------------------------------------------------------

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
        self.event("signal.received", signal=name, state=self.state.value)

    def on_forwarded_signal(self, sig: int) -> None:
        delivered = self.child.send(sig) if self.child is not None else False
        self.event("signal.forwarded", signal=signal.Signals(sig).name, delivered=delivered)

    def transition(self, state: AgentState, **fields: object) -> None:
        self.event("agent.state", from_=self.state.value, to=state.value, **fields)
        self.state = state
        self.metrics.record_state(state)
        self.on_state()

    def event(self, name: str, level: int = logging.INFO, /, **fields: object) -> None:
        self.timeline.event(name, level, {k.rstrip("_"): v for k, v in fields.items()})
