"""The drain state machine, (state, event) pair by pair, with fakes and virtual time.

Nothing here sleeps for real: the tests run on an event loop whose clock jumps to its next
timer whenever it would wait, so the machine's own timeouts (asyncio.wait, asyncio.timeout)
and the injected clock's polls all run in the same virtual seconds. A 60 s start timeout
takes a few milliseconds.

The app, each HAProxy's stats and the probes are fakes; the timeline is the real one, read
back from the "drain_agent" logger with caplog. `Harness.journal()` interleaves the events
logged with the signals the app received, so an assertion can say "the app got SIGTERM only
after drain.done".
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import selectors
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from agent.config import AgentConfig
from agent.errors import EXIT_START_TIMEOUT, AgentError, HAProxyConnectError, HAProxyError, HAProxyParseError
from agent.events import EVENTS, AgentState, Timeline
from agent.haproxy import ServerStat
from agent.machine import Agent
from agent.responder import REPLIES

T = TypeVar("T")
Answer = list[ServerStat] | HAProxyError

URL1 = "http://haproxy-1:8404/stats;csv"
URL2 = "http://haproxy-2:8404/stats;csv"
MY_ADDR = "10.0.0.5:8000"
CONFIG = AgentConfig(command=("app", "--serve"), haproxy_stats=(URL1,))
READY_AT = 0.3  # virtual seconds after start at which the fake app answers its readiness URL
SIGTERM, SIGINT, SIGKILL, SIGHUP = signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGHUP
STARTING, READY, DRAINING = AgentState.STARTING, AgentState.READY, AgentState.DRAINING
STOPPING, EXITED = AgentState.STOPPING, AgentState.EXITED


# -- virtual time ------------------------------------------------------------------------


class VirtualSelector(selectors.SelectSelector):
    """Polls without blocking; where the loop would wait `timeout` seconds, time jumps instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready:
            if timeout is None:
                raise RuntimeError("deadlock: nothing ready and no timer")
            self.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.virtual = VirtualSelector()
        super().__init__(self.virtual)

    def time(self) -> float:
        return self.virtual.now


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


def now() -> float:
    return asyncio.get_running_loop().time()


class VirtualClock:
    """The machine's Clock: the loop's virtual time; a sleep costs no real time at all."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def now(self) -> float:
        return now()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(seconds)


# -- fakes -------------------------------------------------------------------------------


def row(status: str, scur: int = 0, qcur: int = 0, *, backend: str = "app", server: str = "app1",
        addr: str = MY_ADDR) -> ServerStat:
    return ServerStat(backend=backend, server=server, status=status, scur=scur, qcur=qcur, addr=addr,
                      check="Layer7 check passed")


NEIGHBOUR = row("UP", 7, 2, server="app2", addr="10.0.0.6:8000")  # busy, UP, and not ours


def answer(*mine: ServerStat) -> list[ServerStat]:
    """A stats page: our rows among a neighbour's (which the machine must ignore)."""
    return [NEIGHBOUR, *mine]


DEFAULT_ANSWERS: dict[AgentState, Answer] = {
    STARTING: answer(row("MAINT")),
    READY: answer(row("UP")),
    DRAINING: answer(row("DRAIN (agent)")),
    STOPPING: answer(row("MAINT")),
    EXITED: answer(row("MAINT")),
}


class FakeStats:
    """One HAProxy. `answers[state]` is played one read at a time, its last answer repeated."""

    def __init__(self, url: str, **answers: Sequence[Answer]) -> None:
        self.url = url
        self.answers: dict[AgentState, list[Answer]] = {
            AgentState[state.upper()]: list(script) for state, script in answers.items()
        }
        self.reads: list[tuple[AgentState, float]] = []
        self.agent: Agent | None = None
        self.uptime: float | HAProxyError = 3600.0  # the serving worker's; < --reload-window: reloaded
        self.uptime_reads = 0

    def read_count(self, state: AgentState) -> int:
        return sum(1 for s, _ in self.reads if s is state)

    def peek(self, state: AgentState | None = None) -> Answer:
        """What a read now would answer in the agent's state, or in `state` (not counted as a read)."""
        assert self.agent is not None
        state = state or self.agent.state
        script = self.answers.get(state) or [DEFAULT_ANSWERS[state]]
        return script[min(self.read_count(state), len(script) - 1)]

    async def servers(self) -> list[ServerStat]:
        got = self.peek()
        assert self.agent is not None
        self.reads.append((self.agent.state, now()))
        await asyncio.sleep(0)  # a read is I/O: others run meanwhile
        if isinstance(got, HAProxyError):
            raise got
        return list(got)


    async def uptime_s(self) -> float:
        self.uptime_reads += 1
        await asyncio.sleep(0)
        if isinstance(self.uptime, HAProxyError):
            raise self.uptime
        return self.uptime


class FakeProbes:
    def __init__(self) -> None:
        self.connections = 0  # established to the app's port...
        self.connections_until = 0.0  # ...until this virtual time (then none)
        self.reads = 0
        self.ready_at: float | None = READY_AT  # None: never ready
        self.port_free_at = 0.0
        self.ready_checks: list[float] = []
        self.port_checks: list[float] = []

    async def app_ready(self) -> bool:
        self.ready_checks.append(now())
        await asyncio.sleep(0)
        return self.ready_at is not None and now() >= self.ready_at

    async def port_taken(self) -> bool:
        self.port_checks.append(now())
        await asyncio.sleep(0)
        return now() < self.port_free_at

    def is_mine(self, stat: ServerStat) -> bool:
        return stat.addr == MY_ADDR

    async def app_connections(self) -> frozenset[str] | None:
        """`connections` long ones (an old worker's, pooled) and, at every read, a health check
        that was not there before (each read sees a new one)."""
        self.reads += 1
        held = {f"10.0.0.9:{40000 + n}" for n in range(self.connections)} if now() < self.connections_until else set()
        return frozenset(held | {f"10.0.0.9:{50000 + self.reads}"})


class FakeApp:
    """The app: records what it is sent; exits as told by the harness (`exits_on`)."""

    pid: int | None
    exited: asyncio.Future[int]

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.pid = None
        self.exited = asyncio.get_running_loop().create_future()
        self.signals: list[str] = []
        self.group_signals: list[str] = []
        self.reaps = 0
        self.started_at: float | None = None
        self.stats_at_signal: list[Answer] = []

    def start(self) -> int:
        self.pid = 4242
        self.started_at = now()
        return self.pid

    def send(self, sig: int) -> bool:
        if self.pid is None or self.exited.done():
            return False
        name = signal.Signals(sig).name
        self.signals.append(name)
        self.h.mark(f"app<-{name}")
        if not self.stats_at_signal:
            self.stats_at_signal = [stats.peek(DRAINING) for stats in self.h.stats]
        loop = asyncio.get_running_loop()
        if sig == SIGKILL:
            loop.call_soon(self.exit, 128 + SIGKILL)
        elif sig in self.h.exits_on:
            loop.call_later(self.h.exit_delay_s, self.exit, self.h.exits_on[sig])
        return True

    def signal_group(self, sig: int) -> None:
        self.group_signals.append(signal.Signals(sig).name)

    def reap(self) -> None:
        self.reaps += 1

    def exit(self, code: int) -> None:
        if not self.exited.done():
            self.h.mark(f"app.exit:{code}")
            self.exited.set_result(code)


class RecordingMetrics:
    def __init__(self) -> None:
        self.states: list[AgentState] = []
        self.drains: list[float] = []
        self.ready: list[float] = []
        self.stats_errors = 0
        self.reached: dict[AgentState, asyncio.Event] = {}

    def event(self, state: AgentState) -> asyncio.Event:
        return self.reached.setdefault(state, asyncio.Event())

    def record_state(self, state: AgentState) -> None:
        self.states.append(state)
        self.event(state).set()

    def record_drain(self, seconds: float) -> None:
        self.drains.append(seconds)

    def record_time_to_ready(self, seconds: float) -> None:
        self.ready.append(seconds)

    def record_stats_error(self) -> None:
        self.stats_errors += 1


Script = Callable[[Agent], Awaitable[object]]


class Harness:
    """One agent, its fakes, and a script that plays the outside world (signals, exits)."""

    agent: Agent  # once main() runs

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.config = dataclasses.replace(CONFIG)
        self.stats: list[FakeStats] = [FakeStats(URL1)]
        self.probes = FakeProbes()
        self.clock = VirtualClock()
        self.metrics = RecordingMetrics()
        self.exits_on: dict[int, int] = {SIGTERM: 0, SIGINT: 0}  # how the app answers a signal
        self.exit_delay_s = 0.1
        self.apps: list[FakeApp] = []
        self.marks: list[tuple[int, str, float]] = []  # (records logged before, what, when)
        self.ended_at = 0.0

    # setup --------------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        self.config = dataclasses.replace(self.config, **changes)

    def spawn(self) -> FakeApp:
        app = FakeApp(self)
        self.apps.append(app)
        return app

    @property
    def app(self) -> FakeApp:
        assert len(self.apps) == 1, f"{len(self.apps)} apps spawned"
        return self.apps[0]

    # running ------------------------------------------------------------------------

    def run(self, script: Script | None = None) -> int:
        return run_virtual(self.main(script))

    async def main(self, script: Script | None) -> int:
        agent = Agent(
            self.config, spawn=self.spawn, haproxies=self.stats, probes=self.probes, clock=self.clock,
            timeline=Timeline(self.config.server_id), metrics=self.metrics,
        )
        self.agent = agent
        for stats in self.stats:
            stats.agent = agent
        async with asyncio.timeout(300):  # a stuck machine fails the test (300 virtual seconds)
            running = asyncio.ensure_future(agent.run())
            playing = asyncio.ensure_future(script(agent) if script else asyncio.sleep(0))
            try:
                await asyncio.wait({running, playing}, return_when=asyncio.FIRST_EXCEPTION)
                if playing.done() and playing.exception():
                    raise playing.exception()  # type: ignore[misc]
                return await running
            finally:
                self.ended_at = now()
                running.cancel()
                playing.cancel()

    async def reach(self, state: AgentState) -> None:
        await self.metrics.event(state).wait()

    async def wait_for(self, condition: Callable[[], bool], what: str, limit_s: float = 600) -> None:
        deadline = now() + limit_s
        while not condition():
            assert now() < deadline, f"still waiting for {what}"
            await asyncio.sleep(0.01)

    def mark(self, what: str) -> None:
        self.marks.append((len(self.records()), what, now()))

    # what happened ------------------------------------------------------------------

    def records(self) -> list[logging.LogRecord]:
        return [r for r in self.caplog.records if r.name == "drain_agent"]

    def events(self) -> list[str]:
        return [name(r) for r in self.records()]

    def fields(self, event: str) -> list[dict[str, str]]:
        return [fields(r) for r in self.records() if name(r) == event]

    def levels(self, event: str) -> list[str]:
        return [r.levelname for r in self.records() if name(r) == event]

    def journal(self, *, skip: Sequence[str] = ("agent.state",)) -> list[str]:
        """Events and the app's signals in order; a state change reads as '>state'."""
        out: list[str] = []
        marks = list(self.marks)
        for i, record in enumerate([*self.records(), None]):
            while marks and marks[0][0] == i:
                out.append(marks.pop(0)[1])
            if record is None:
                break
            event = name(record)
            if event == "agent.state":
                out.append(">" + fields(record)["to"])
            out.append(event)
        return [e for e in out if e not in skip]

    def journal_from(self, event: str) -> list[str]:
        journal = self.journal()
        return journal[journal.index(event):]

    def states(self) -> list[str]:
        return [f["to"] for f in self.fields("agent.state")]

    def when(self, what: str) -> float:
        """Virtual time of a mark (a signal received, an exit)."""
        return next(at for _, mark, at in self.marks if mark == what)


def name(record: logging.LogRecord) -> str:
    assert isinstance(record.args, tuple)
    return str(record.args[0])


def fields(record: logging.LogRecord) -> dict[str, str]:
    assert isinstance(record.args, tuple)
    return {key: value.strip('"') for key, value in re.findall(r' (\w+)=("[^"]*"|\S*)', str(record.args[3]))}


@pytest.fixture
def h(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    # setup_logging() (the real entry point) stops propagation; caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("drain_agent"), "propagate", True)
    caplog.set_level(logging.INFO, logger="drain_agent")
    yield Harness(caplog)
    # No task left failing unseen ("Task exception was never retrieved" and the like).
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR] == []


async def stop_when(h: Harness, state: AgentState, sig: int = SIGTERM) -> Agent:
    await h.reach(state)
    h.agent.on_stop_signal(sig)
    return h.agent


def drained_now(answers: list[Answer]) -> bool:
    """Would every HAProxy's current view let the app be signalled?"""
    return all(
        not isinstance(got, HAProxyError)
        and all(not r.accepting and r.busy == 0 for r in got if r.addr == MY_ADDR)
        for got in answers
    )


NORMAL_STOP = [  # from STOPPING on, for an app that exits 0 on SIGTERM
    ">stopping", "app<-SIGTERM", "app.signalled", "app.exit:0", "app.exited", ">exited",
]


# == STARTING ============================================================================


def test_starting_to_ready_answers_ready_once_the_app_does(h: Harness) -> None:
    async def script(agent: Agent) -> None:
        await h.reach(READY)
        assert agent.app_ready and h.app.signals == []
        assert h.app.started_at is not None and h.probes.ready_checks[0] >= h.app.started_at
        await h.wait_for(lambda: "haproxy.up" in h.events(), "haproxy.up")
        agent.on_stop_signal(SIGTERM)

    assert h.run(script) == 0
    assert h.journal()[:5] == ["app.started", "app.ready", ">ready", "haproxy.up", "signal.received"]
    assert h.metrics.ready == [pytest.approx(READY_AT, abs=0.06)]
    to_ready = h.fields("agent.state")[0]
    assert (to_ready["from"], to_ready["to"]) == ("starting", "ready")
    assert abs(int(to_ready["time_to_ready_ms"]) - READY_AT * 1000) <= 60
    assert h.stats[0].read_count(STARTING) == 0  # no stats read before READY
    # The timeline takes the name of the row found by address.
    assert "server=app/app1" in h.records()[-1].getMessage()


def test_starting_waits_for_a_busy_port_then_spawns(h: Harness) -> None:
    h.probes.port_free_at = 1.0  # an older app is still finishing on our port
    h.probes.ready_at = 1.3

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.app.started_at is not None and h.app.started_at >= 1.0
    assert h.events().count("app.port_busy") == 1  # said once, not per poll
    assert h.levels("app.port_busy") == ["WARNING"]
    assert len(h.probes.port_checks) > 10
    assert h.journal()[:3] == ["app.port_busy", "app.started", "app.ready"]


def test_starting_port_never_free_is_a_start_timeout_exit_3_without_spawning(h: Harness) -> None:
    h.probes.port_free_at = float("inf")
    h.configure(start_timeout_s=5.0)

    with pytest.raises(AgentError, match=r"another process still answers on http://127.0.0.1:8000/readyz "
                                          r"after 5s \(see --start-timeout\)") as caught:
        h.run()
    assert caught.value.exit_code == EXIT_START_TIMEOUT == 3
    assert h.apps == []
    assert h.ended_at == pytest.approx(5.0)
    assert h.journal() == ["app.port_busy", ">exited"]
    assert h.fields("agent.state")[-1]["app"] == "never started"


@pytest.mark.parametrize("sig", [SIGTERM, SIGINT])
def test_starting_stop_while_the_port_is_busy_exits_0_without_spawning(h: Harness, sig: int) -> None:
    h.probes.port_free_at = float("inf")

    async def script(agent: Agent) -> None:
        await asyncio.sleep(2.0)
        agent.on_stop_signal(sig)

    assert h.run(script) == 0
    assert h.apps == []
    assert h.ended_at == pytest.approx(2.0, abs=0.06)
    assert h.journal() == ["app.port_busy", "signal.received", ">exited"]


def test_stop_signal_before_run_never_starts_the_app(h: Harness) -> None:
    """__main__ replays signals caught before the machine ran (EARLY_SIGNALS)."""

    async def script(agent: Agent) -> None:
        pass

    async def main() -> int:
        task = asyncio.ensure_future(h.main(script))
        await asyncio.sleep(0)  # the agent exists, run() has not begun its first wait
        h.agent.on_stop_signal(SIGTERM)
        return await task

    assert run_virtual(main()) == 0
    assert h.apps == []
    assert h.journal() == ["signal.received", ">exited"]


@pytest.mark.parametrize("sig", [SIGTERM, SIGINT])
def test_starting_stop_before_ready_drains_then_signals_the_app(h: Harness, sig: int) -> None:
    h.probes.ready_at = None  # never ready

    async def script(agent: Agent) -> None:
        await h.wait_for(lambda: bool(h.apps), "spawn")
        await asyncio.sleep(1.0)
        agent.on_stop_signal(sig)

    assert h.run(script) == 0
    name = signal.Signals(sig).name
    assert h.states() == ["draining", "stopping", "exited"]  # never ready
    assert h.fields("agent.state")[0]["signal"] == name
    assert h.app.signals == [name]
    assert h.journal() == ["app.started", "signal.received", ">draining", "drain.done", ">stopping",
                           f"app<-{name}", "app.signalled", "app.exit:0", "app.exited", ">exited"]
    assert h.stats[0].read_count(DRAINING) == 1  # MAINT with 0 sessions: out at the first read


def test_starting_stop_before_ready_with_no_row_anywhere_is_drained_at_once(h: Harness) -> None:
    """Never ready and in no HAProxy (Swarm puts a task in the DNS only once it is healthy):
    nothing can be in flight, so the drain does not wait its timeout for a row."""
    h.probes.ready_at = None
    h.stats = [FakeStats(URL1, draining=[answer()]), FakeStats(URL2, draining=[answer()])]

    async def script(agent: Agent) -> None:
        await h.wait_for(lambda: bool(h.apps), "spawn")
        agent.on_stop_signal(SIGTERM)

    assert h.run(script) == 0
    assert h.journal() == ["app.started", "signal.received", ">draining", "haproxy.missing",
                           "haproxy.missing", "drain.done", *NORMAL_STOP]
    assert all(stats.read_count(DRAINING) == 1 for stats in h.stats)


def test_starting_second_signal_before_the_machine_acts_cuts_the_drain(h: Harness) -> None:
    h.probes.ready_at = None
    h.stats = [FakeStats(URL1, draining=[answer(row("UP", 3))])]

    async def script(agent: Agent) -> None:
        await h.wait_for(lambda: bool(h.apps), "spawn")
        agent.on_stop_signal(SIGTERM)
        agent.on_stop_signal(SIGTERM)

    assert h.run(script) == 0
    assert h.journal() == ["app.started", "signal.received", "signal.again", ">draining", "drain.cut",
                           *NORMAL_STOP]
    assert h.fields("drain.cut") == [{"reason": "second signal"}]
    assert h.app.signals == ["SIGTERM"]  # not forwarded twice: the app had not been signalled yet


def test_starting_forwarded_signal_before_and_after_spawn(h: Harness) -> None:
    h.probes.port_free_at = 1.0
    h.probes.ready_at = 2.0

    async def script(agent: Agent) -> None:
        await asyncio.sleep(0.5)
        agent.on_forwarded_signal(SIGHUP)  # no app yet
        await h.wait_for(lambda: bool(h.apps) and h.app.pid is not None, "spawn")
        agent.on_forwarded_signal(SIGHUP)
        assert agent.state is STARTING
        await h.reach(READY)
        agent.on_stop_signal(SIGTERM)

    assert h.run(script) == 0
    assert [f["delivered"] for f in h.fields("signal.forwarded")] == ["False", "True"]
    assert h.fields("signal.forwarded")[0]["signal"] == "SIGHUP"
    assert h.app.signals == ["SIGHUP", "SIGTERM"]
    assert "ready" in h.states()  # a forwarded signal changes nothing


@pytest.mark.parametrize(("code", "level", "how"), [
    (0, "INFO", "exited with code 0"),
    (1, "ERROR", "exited with code 1"),
    (139, "ERROR", "killed by SIGSEGV"),
    (137, "ERROR", "killed by SIGKILL (out of memory, or killed after a stop timeout?)"),
])
def test_starting_app_exits_before_ready(h: Harness, code: int, level: str, how: str) -> None:
    h.probes.ready_at = None

    async def script(agent: Agent) -> None:
        await h.wait_for(lambda: bool(h.apps), "spawn")
        await asyncio.sleep(0.2)
        h.app.exit(code)

    assert h.run(script) == code
    assert h.journal() == ["app.started", f"app.exit:{code}", ">stopping", "app.exited", ">exited"]
    assert h.fields("agent.state")[0]["reason"] == "app exited"
    assert h.levels("app.exited") == [level]
    assert h.fields("app.exited")[0]["how"] == how
    assert h.app.signals == []  # nothing to signal: it is gone
    assert h.app.group_signals == ["SIGTERM"] and h.app.reaps == 1  # its helpers are cleaned up
    assert h.stats[0].reads == []


def test_starting_app_that_exits_at_once_is_reported(h: Harness) -> None:
    async def script(agent: Agent) -> None:
        await h.wait_for(lambda: bool(h.apps) and h.app.pid is not None, "spawn", limit_s=1)
        h.app.exit(127)

    h.probes.ready_at = None
    assert h.run(script) == 127
    assert h.states() == ["stopping", "exited"]


def test_start_timeout_stops_the_app_and_exits_3(h: Harness) -> None:
    h.probes.ready_at = None
    h.configure(start_timeout_s=60.0)

    with pytest.raises(AgentError, match=r"^app not ready at http://127.0.0.1:8000/readyz within 60s "
                                          r"\(see --start-timeout\); app exited with code 0") as caught:
        h.run()
    assert caught.value.exit_code == EXIT_START_TIMEOUT
    assert h.app.signals == ["SIGTERM"]
    assert h.app.started_at is not None and h.when("app<-SIGTERM") == pytest.approx(60.0, abs=0.01)
    assert h.journal()[:6] == ["app.started", "start.timeout", "app<-SIGTERM", "app.signalled", "app.exit:0",
                               "app.exited"]
    assert h.levels("start.timeout") == ["ERROR"]
    assert h.stats[0].reads == []


def test_start_timeout_with_an_app_ignoring_sigterm_kills_it(h: Harness) -> None:
    h.probes.ready_at = None
    h.exits_on = {}
    h.configure(start_timeout_s=10.0, stop_timeout_s=5.0)

    with pytest.raises(AgentError, match=r"app killed by SIGKILL") as caught:
        h.run()
    assert caught.value.exit_code == EXIT_START_TIMEOUT
    assert h.app.signals == ["SIGTERM", "SIGKILL"]
    assert h.when("app<-SIGKILL") - h.when("app<-SIGTERM") == pytest.approx(5.0)
    assert h.journal()[-6:] == ["app.signalled", "app.kill", "app<-SIGKILL", "app.exit:137", "app.exited",
                                ">exited"]


# == READY ===============================================================================


def test_ready_sigterm_drains_then_signals_the_app_after_drain_done(h: Harness) -> None:
    h.stats = [FakeStats(URL1, draining=[answer(row("DRAIN (agent)", 3)), answer(row("DRAIN (agent)", 1, 1)),
                                         answer(row("DRAIN (agent)", 0, 1)), answer(row("DRAIN (agent)"))])]

    async def script(agent: Agent) -> None:
        await h.reach(READY)
        await h.wait_for(lambda: "haproxy.up" in h.events(), "haproxy.up")
        agent.on_stop_signal(SIGTERM)

    assert h.run(script) == 0
    assert h.journal() == ["app.started", "app.ready", ">ready", "haproxy.up", "signal.received", ">draining",
                           "drain.done", *NORMAL_STOP]
    assert h.fields("signal.received") == [{"signal": "SIGTERM", "state": "ready"}]
    assert h.fields("agent.state")[1]["signal"] == "SIGTERM"
    assert h.app.signals == ["SIGTERM"]
    assert h.stats[0].read_count(DRAINING) == 4  # queued requests (qcur) count as in flight
    assert h.metrics.drains == [pytest.approx(3 * CONFIG.poll_interval_s, abs=0.002)]
    assert h.metrics.states == [READY, DRAINING, STOPPING, EXITED]
    assert h.app.group_signals == ["SIGTERM"] and h.app.reaps == 1
    assert h.stats[0].read_count(STOPPING) == 0  # no more reads once the drain is over


def test_ready_sigint_is_the_signal_the_app_gets(h: Harness) -> None:
    assert h.run(lambda agent: stop_when(h, READY, SIGINT)) == 0
    assert h.app.signals == ["SIGINT"]
    assert h.fields("app.signalled") == [{"signal": "SIGINT", "pid": "4242"}]
    assert h.fields("agent.state")[1]["signal"] == "SIGINT"


def test_ready_forwarded_signal_goes_to_the_app_and_changes_nothing(h: Harness) -> None:
    async def script(agent: Agent) -> None:
        await h.reach(READY)
        agent.on_forwarded_signal(SIGHUP)
        await asyncio.sleep(1.0)
        assert agent.state is READY
        agent.on_stop_signal(SIGTERM)

    assert h.run(script) == 0
    assert h.app.signals == ["SIGHUP", "SIGTERM"]
    assert h.fields("signal.forwarded") == [{"signal": "SIGHUP", "delivered": "True"}]


@pytest.mark.parametrize(("code", "level"), [(0, "INFO"), (3, "ERROR"), (143, "ERROR")])
def test_ready_app_exits_on_its_own(h: Harness, code: int, level: str) -> None:
    async def script(agent: Agent) -> None:
        await h.reach(READY)
        await asyncio.sleep(1.0)
        h.app.exit(code)

    assert h.run(script) == code
    assert h.journal()[-4:] == [f"app.exit:{code}", ">stopping", "app.exited", ">exited"]
    assert h.states() == ["ready", "stopping", "exited"]  # no drain: nothing left to drain
    assert h.levels("app.exited") == [level]
    assert h.fields("app.exited")[0]["unexpected"] == "True"
    assert h.app.signals == []


def test_ready_watch_says_haproxy_up_once(h: Harness) -> None:
    h.stats = [FakeStats(URL1, ready=[answer(row("DOWN")), answer(row("DOWN 1/2")), answer(row("UP"))])]

    async def script(agent: Agent) -> None:
        await h.reach(READY)
        await asyncio.sleep(5.0)
        agent.on_stop_signal(SIGTERM)

    assert h.run(script) == 0
    assert h.events().count("haproxy.up") == 1
    assert h.stats[0].read_count(READY) == 3  # then the watch ends
    assert "haproxy.not_up" not in h.events()


def test_ready_watch_says_when_haproxy_never_shows_up(h: Harness) -> None:
    h.configure(start_timeout_s=10.0)
    h.stats = [FakeStats(URL1, ready=[answer(dataclasses.replace(row("DOWN"), check="Layer4 connection problem"))])]

    async def script(agent: Agent) -> None:
        await h.reach(READY)
        await asyncio.sleep(30.0)
        agent.on_stop_signal(SIGTERM)

    assert h.run(script) == 0
    assert h.events().count("haproxy.not_up") == 1
    assert h.levels("haproxy.not_up") == ["ERROR"]
    seen = h.fields("haproxy.not_up")[0]
    assert seen["haproxies"] == URL1 and seen["seen"] == "DOWN (Layer4 connection problem)"
    assert "haproxy.up" not in h.events()


def test_ready_row_missing_is_said_once_then_not_up(h: Harness) -> None:
    h.configure(start_timeout_s=5.0)
    h.stats = [FakeStats(URL1, ready=[answer()])]

    async def script(agent: Agent) -> None:
        await h.reach(READY)
        await asyncio.sleep(10.0)
        agent.on_stop_signal(SIGTERM)

    assert h.run(script) == 0
    assert h.events().count("haproxy.missing") == 1
    assert h.fields("haproxy.not_up")[0]["seen"] == "no row"
    assert h.fields("haproxy.missing")[0]["hint"].startswith("no server row with this instance's address")


def test_ready_stats_error_is_logged_once(h: Harness) -> None:
    h.stats = [FakeStats(URL1, ready=[HAProxyConnectError("unreachable")] * 5 + [answer(row("UP"))])]

    async def script(agent: Agent) -> None:
        await h.reach(READY)
        await asyncio.sleep(5.0)
        agent.on_stop_signal(SIGTERM)

    assert h.run(script) == 0
    assert h.events().count("haproxy.error") == 1
    assert h.events().count("haproxy.up") == 1


# == DRAINING ============================================================================


def test_draining_stats_errors_are_retried_never_drained_and_logged_once_per_error(h: Harness) -> None:
    first, second = HAProxyConnectError("refused"), HAProxyParseError("truncated row")
    h.stats = [FakeStats(URL1, draining=[first, first, first, second, second, answer(row("DRAIN (agent)", 2)),
                                         first, first, answer(row("DRAIN (agent)"))])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert [f["error"] for f in h.fields("haproxy.error")] == ["refused", "truncated row", "refused"]
    assert h.levels("haproxy.error") == ["WARNING"] * 3
    assert h.fields("haproxy.error")[0]["haproxy"] == URL1
    assert h.metrics.stats_errors == 7  # every failed read counts; the log says each error once
    assert h.stats[0].read_count(DRAINING) == 9  # drained only at the last read
    assert h.journal_from("drain.done") == ["drain.done", *NORMAL_STOP]
    assert h.journal()[h.journal().index("drain.done") - 1] == "haproxy.error"


def test_draining_stats_never_readable_is_a_drain_timeout_not_a_drain(h: Harness) -> None:
    h.configure(drain_timeout_s=20.0)
    h.stats = [FakeStats(URL1, draining=[HAProxyConnectError("HAProxy stats unreachable: timeout")])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert "drain.done" not in h.events()
    assert h.events().count("haproxy.error") == 1
    assert h.fields("drain.timeout") == [{"timeout_s": "20.000", "left": f"{URL1}=unread",
                                          "hint": "relying on the app's own drain"}]
    assert h.metrics.drains == [pytest.approx(20.0, abs=0.06)]
    assert h.journal_from("drain.timeout") == ["drain.timeout", *NORMAL_STOP]


def test_draining_row_missing_waits_for_the_drain_timeout(h: Harness) -> None:
    h.configure(drain_timeout_s=3.0)
    h.stats = [FakeStats(URL1, draining=[answer()])]  # only the neighbour's row

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.events().count("haproxy.missing") == 1
    assert h.levels("haproxy.missing") == ["WARNING"]
    assert h.journal_from("haproxy.missing") == ["haproxy.missing", "drain.timeout", *NORMAL_STOP]
    assert h.metrics.drains == [pytest.approx(3.0, abs=0.06)]


@pytest.mark.parametrize("status", ["UP", "UP 1/2", "no check"])
def test_draining_row_still_accepting_is_not_drained_even_with_zero_sessions(h: Harness, status: str) -> None:
    h.stats = [FakeStats(URL1, draining=[answer(row(status))] * 10 + [answer(row("DRAIN (agent)"))])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.stats[0].read_count(DRAINING) == 11
    assert h.journal_from("drain.done") == ["drain.done", *NORMAL_STOP]


@pytest.mark.parametrize("status", ["DOWN", "MAINT", "DRAIN (agent)", "NOLB", "MAINT (resolution)", "DOWN 1/2"])
def test_draining_out_of_rotation_with_zero_sessions_is_drained(h: Harness, status: str) -> None:
    h.stats = [FakeStats(URL1, draining=[answer(row(status))])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.stats[0].read_count(DRAINING) == 1
    assert "drain.done" in h.events()


def test_draining_every_row_of_this_instance_must_drain(h: Harness) -> None:
    """An instance in two backends has two rows with its address: both must be empty."""
    h.stats = [FakeStats(URL1, draining=[answer(row("DRAIN (agent)"), row("DRAIN (agent)", 1, backend="api"))] * 5
                         + [answer(row("DRAIN (agent)"), row("MAINT", backend="api"))])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.stats[0].read_count(DRAINING) == 6


def test_draining_timeout_signals_the_app_anyway(h: Harness) -> None:
    h.configure(drain_timeout_s=2.0)
    h.stats = [FakeStats(URL1, draining=[answer(row("DRAIN (agent)", 4, 1))])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.fields("drain.timeout")[0]["left"] == f"{URL1}=5"
    assert h.levels("drain.timeout") == ["WARNING"]
    assert h.journal_from("drain.timeout") == ["drain.timeout", *NORMAL_STOP]
    assert h.app.signals == ["SIGTERM"]


def test_draining_second_signal_cuts_the_drain(h: Harness) -> None:
    h.stats = [FakeStats(URL1, draining=[answer(row("DRAIN (agent)", 4))])]

    async def script(agent: Agent) -> None:
        await stop_when(h, READY)
        await asyncio.sleep(1.0)
        assert agent.state is DRAINING
        agent.on_stop_signal(SIGINT)

    assert h.run(script) == 0
    assert h.journal_from("signal.again") == ["signal.again", "drain.cut", *NORMAL_STOP]
    assert h.fields("drain.cut") == [{"reason": "second signal"}]
    assert h.fields("signal.again")[0]["signal"] == "SIGINT"
    assert h.app.signals == ["SIGTERM"]  # the first signal's, not forwarded during the drain
    assert h.metrics.drains[0] < 1.1


def test_draining_app_exits_cuts_the_drain_and_gets_no_signal(h: Harness) -> None:
    h.stats = [FakeStats(URL1, draining=[answer(row("DRAIN (agent)", 4))])]

    async def script(agent: Agent) -> None:
        await stop_when(h, READY)
        await asyncio.sleep(1.0)
        h.app.exit(1)

    assert h.run(script) == 1
    assert h.journal_from("app.exit:1") == ["app.exit:1", "drain.cut", ">stopping", "app.exited", ">exited"]
    assert h.fields("drain.cut") == [{"reason": "app exited"}]
    assert h.app.signals == []
    assert h.app.group_signals == ["SIGTERM"]


def test_draining_forwarded_signal_goes_to_the_app_and_the_drain_goes_on(h: Harness) -> None:
    h.stats = [FakeStats(URL1, draining=[answer(row("DRAIN (agent)", 1))] * 40 + [answer(row("DRAIN (agent)"))])]

    async def script(agent: Agent) -> None:
        await stop_when(h, READY)
        await asyncio.sleep(0.5)
        agent.on_forwarded_signal(SIGHUP)

    assert h.run(script) == 0
    assert h.app.signals == ["SIGHUP", "SIGTERM"]
    assert "drain.done" in h.events() and "drain.cut" not in h.events()


def test_two_haproxies_drain_only_when_both_show_zero(h: Harness) -> None:
    h.configure(haproxy_stats=(URL1, URL2))
    h.stats = [
        FakeStats(URL1, draining=[answer(row("DRAIN (agent)"))]),
        FakeStats(URL2, draining=[answer(row("DRAIN (agent)", 2))] * 20 + [answer(row("DRAIN (agent)"))]),
    ]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.stats[1].read_count(DRAINING) == 21
    assert h.journal_from("drain.done") == ["drain.done", *NORMAL_STOP]
    assert h.when("app<-SIGTERM") >= h.stats[1].reads[-1][1]
    assert h.metrics.drains == [pytest.approx(20 * CONFIG.poll_interval_s, abs=0.002)]


def test_two_haproxies_one_unreadable_is_never_taken_as_drained(h: Harness) -> None:
    h.configure(haproxy_stats=(URL1, URL2), drain_timeout_s=2.0)
    h.stats = [FakeStats(URL1, draining=[answer(row("DRAIN (agent)"))]),
               FakeStats(URL2, draining=[HAProxyConnectError("refused")])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert "drain.done" not in h.events()
    assert h.fields("drain.timeout")[0]["left"] == f"{URL2}=unread"
    assert [f["haproxy"] for f in h.fields("haproxy.error")] == [URL2]


def test_a_restarted_haproxy_back_up_mid_drain_keeps_the_drain_waiting(h: Harness) -> None:
    h.stats = [FakeStats(URL1, draining=[
        answer(row("DRAIN (agent)", 3)),
        *[answer(row("UP", 1))] * 5,  # restarted: UP until its first agent-check says drain
        *[answer(row("UP"))] * 5,
        answer(row("DRAIN (agent)", 1)),
        answer(row("DRAIN (agent)")),
    ])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.stats[0].read_count(DRAINING) == 13
    assert h.journal_from("drain.done") == ["drain.done", *NORMAL_STOP]


def test_a_haproxy_that_restarts_after_it_drained_is_read_again_before_the_signal(h: Harness) -> None:
    h.configure(haproxy_stats=(URL1, URL2))
    first = FakeStats(URL1, draining=[answer(row("DRAIN (agent)"))])
    second = FakeStats(URL2, draining=[answer(row("DRAIN (agent)", 2))] * 20 + [answer(row("DRAIN (agent)"))])
    h.stats = [first, second]

    async def script(agent: Agent) -> None:
        await stop_when(h, READY)
        await h.wait_for(lambda: first.read_count(DRAINING) >= 1, "first HAProxy drained")
        first.answers[DRAINING] = [answer(row("UP", 3))]  # restarted, taking requests again
        await asyncio.sleep(3.0)
        first.answers[DRAINING] = [answer(row("DRAIN (agent)"))] * 100  # its agent-check said drain

    assert h.run(script) == 0
    views = [[r for r in got if r.addr == MY_ADDR] for got in h.app.stats_at_signal if isinstance(got, list)]
    assert drained_now(h.app.stats_at_signal), f"app signalled while the HAProxies show {views}"


# == STOPPING ============================================================================


def test_stopping_app_outliving_stop_timeout_gets_sigkill(h: Harness) -> None:
    h.exits_on = {}  # ignores SIGTERM
    h.configure(stop_timeout_s=25.0)

    assert h.run(lambda agent: stop_when(h, READY)) == 137
    assert h.app.signals == ["SIGTERM", "SIGKILL"]
    assert h.when("app<-SIGKILL") - h.when("app<-SIGTERM") == pytest.approx(25.0)
    assert h.journal_from("drain.done") == ["drain.done", ">stopping", "app<-SIGTERM", "app.signalled", "app.kill",
                                            "app<-SIGKILL", "app.exit:137", "app.exited", ">exited"]
    assert h.levels("app.kill") == ["ERROR"]
    assert h.fields("app.exited")[0]["how"].startswith("killed by SIGKILL")
    assert h.fields("agent.state")[-1]["code"] == "137"


def test_stopping_app_exiting_by_its_signal_reports_it(h: Harness) -> None:
    h.exits_on = {SIGTERM: 128 + SIGTERM}

    assert h.run(lambda agent: stop_when(h, READY)) == 143
    assert h.fields("app.exited")[0]["how"] == "killed by SIGTERM"


@pytest.mark.parametrize("second", [SIGTERM, SIGINT])
def test_stopping_second_signal_is_passed_to_the_app(h: Harness, second: int) -> None:
    h.exits_on = {}
    h.configure(stop_timeout_s=25.0)

    async def script(agent: Agent) -> None:
        await stop_when(h, READY)
        await h.reach(STOPPING)
        await asyncio.sleep(1.0)
        agent.on_stop_signal(second)
        await asyncio.sleep(0.1)
        h.app.exit(0)  # the app gave up its own drain on the second signal

    assert h.run(script) == 0
    assert h.app.signals == ["SIGTERM", signal.Signals(second).name]
    assert h.journal_from("signal.again") == ["signal.again", f"app<-{signal.Signals(second).name}", "app.exit:0", "app.exited", ">exited"]
    assert "app.kill" not in h.events()


def test_stopping_forwarded_signal_reaches_the_app(h: Harness) -> None:
    h.exit_delay_s = 5.0

    async def script(agent: Agent) -> None:
        await stop_when(h, READY)
        await h.reach(STOPPING)
        agent.on_forwarded_signal(SIGHUP)

    assert h.run(script) == 0
    assert h.app.signals == ["SIGTERM", "SIGHUP"]
    assert h.fields("signal.forwarded") == [{"signal": "SIGHUP", "delivered": "True"}]


# == EXITED ==============================================================================


def test_exited_signals_find_no_app(h: Harness) -> None:
    async def script(agent: Agent) -> None:
        await stop_when(h, READY)

    assert h.run(script) == 0
    agent = h.agent
    assert agent.state is EXITED
    agent.on_forwarded_signal(SIGHUP)
    agent.on_stop_signal(SIGTERM)  # a late second signal: nothing left to signal
    assert h.app.signals == ["SIGTERM"]
    assert h.fields("signal.forwarded") == [{"signal": "SIGHUP", "delivered": "False"}]


# == what HAProxy is told ================================================================


@pytest.mark.parametrize(("state", "reply"), [
    (STARTING, "maint"), (READY, "ready"), (DRAINING, "drain"), (STOPPING, "maint"), (EXITED, "maint"),
])
def test_every_state_has_an_agent_check_reply(state: AgentState, reply: str) -> None:
    assert REPLIES[state.value] == reply


def test_replies_cover_exactly_the_states() -> None:
    assert set(REPLIES) == {state.value for state in AgentState}
    assert set(REPLIES.values()) <= {"ready", "drain", "maint"}  # admin states only: HAProxy's check says UP


def test_the_timeline_refuses_an_uncatalogued_event() -> None:
    with pytest.raises(ValueError, match=r"add it to agent\.events\.EVENTS"):
        Timeline("app/app1").event("drain.finished", logging.INFO, {})
    assert {"drain.done", "drain.cut", "drain.timeout", "haproxy.error", "app.kill"} <= set(EVENTS)


# == DRAINING after a HAProxy reload =====================================================
# The new worker's stats say 0 while the old worker still carries a session: the kernel's
# connections to the app's port, less the pools' idle ones, are what is left.


def reloaded(h: Harness, uptime: float | HAProxyError, connections: int, until: float,
             own: int = 0) -> None:
    h.stats[0].uptime = uptime
    h.stats[0].answers[DRAINING] = [answer(dataclasses.replace(row("DRAIN (agent)"), conns=own))]
    h.probes.connections, h.probes.connections_until = connections, until


def test_draining_after_a_reload_waits_for_the_old_workers_connections(h: Harness) -> None:
    reloaded(h, uptime=5.0, connections=1, until=12.0)

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.fields("drain.old_workers")[0]["connections"] == "2"  # and a health check, gone at once
    assert h.journal_from("drain.old_workers") == ["drain.old_workers", "drain.done", *NORMAL_STOP]
    assert h.when("app<-SIGTERM") >= 12.0
    assert h.stats[0].uptime_reads == 1  # once seen, the reload is remembered for the drain


def test_draining_long_after_a_reload_does_not_count_connections(h: Harness) -> None:
    reloaded(h, uptime=CONFIG.reload_window_s, connections=3, until=100.0)  # a scraper's keep-alive

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert "drain.old_workers" not in h.events()
    assert h.when("app<-SIGTERM") < 1.0


def test_draining_after_a_reload_counts_out_the_workers_own_connections(h: Harness) -> None:
    reloaded(h, uptime=5.0, connections=2, until=100.0, own=2)

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.when("app<-SIGTERM") < 1.0  # one more read, for the health check it saw


def test_draining_after_a_reload_ignores_a_read_that_claims_the_old_workers_connection(h: Harness) -> None:
    """Seen in CI: one read, 28 s into a 30 s POST, said the server had a connection of its own
    (answered by the old worker, whose count includes its session): that must not end the drain."""
    reloaded(h, uptime=5.0, connections=1, until=30.0)
    drained, claims = row("DRAIN (agent)"), dataclasses.replace(row("DRAIN (agent)"), conns=1)
    h.stats[0].answers[DRAINING] = [answer(drained)] * 5 + [answer(claims)] + [answer(drained)]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.when("app<-SIGTERM") >= 30.0


def test_draining_after_a_reload_never_waits_on_connections_opened_since(h: Harness) -> None:
    """A health check every read, each on a new connection: never a session of a drained server."""
    reloaded(h, uptime=5.0, connections=0, until=0.0)

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.when("app<-SIGTERM") < 1.0
    assert h.probes.reads == 2


def test_draining_with_an_unreadable_uptime_takes_it_as_a_reload(h: Harness) -> None:
    reloaded(h, uptime=HAProxyParseError("stats page: no 'uptime = ...'"), connections=1, until=4.0)

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.levels("haproxy.uptime_unknown") == ["WARNING"]
    assert h.journal_from("drain.old_workers") == ["drain.old_workers", "drain.done", *NORMAL_STOP]
    assert h.when("app<-SIGTERM") >= 4.0


def test_draining_with_the_reload_window_off_never_waits_on_connections(h: Harness) -> None:
    h.configure(reload_window_s=0.0)
    reloaded(h, uptime=1.0, connections=1, until=100.0)

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.stats[0].uptime_reads == 0
    assert h.when("app<-SIGTERM") < 1.0


def test_draining_old_workers_that_outlast_the_drain_timeout_are_named(h: Harness) -> None:
    h.configure(drain_timeout_s=5.0)
    reloaded(h, uptime=1.0, connections=2, until=100.0)

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.fields("drain.timeout")[0]["left"] == "old-workers=2"
    assert h.fields("drain.timeout")[0]["sessions"] == "2"
    assert h.journal_from("drain.timeout") == ["drain.timeout", *NORMAL_STOP]
