"""drain-agent's --drain-notify: the app hears once that no new work can arrive, before drain.done.

The harness (fakes, virtual time) is test_machine's.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest

from agent.config import AgentConfig, load_config, parse_notify_signal
from agent.errors import ConfigError
from agent.events import EVENTS
from tests.unit.test_machine import (
    NORMAL_STOP,
    READY,
    URL1,
    URL2,
    FakeStats,
    HAProxyConnectError,
    Harness,
    answer,
    row,
    stop_when,
)

USR1 = signal.SIGUSR1


@pytest.fixture
def h(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    """As test_machine's: the timeline read back with caplog."""
    monkeypatch.setattr(logging.getLogger("drain_agent"), "propagate", True)
    caplog.set_level(logging.INFO, logger="drain_agent")
    yield Harness(caplog)


def test_notify_comes_once_out_of_rotation_then_the_drain_waits_for_zero(h: Harness) -> None:
    h.configure(drain_notify="SIGUSR1")
    h.stats = [FakeStats(URL1, draining=[answer(row("UP", 40))] * 3 + [answer(row("DRAIN (agent)", 40))] * 5
                         + [answer(row("DRAIN (agent)", 3))] * 2 + [answer(row("DRAIN (agent)"))])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.app.signals == ["SIGUSR1", "SIGTERM"]
    assert h.journal_from(">draining") == [">draining", "app<-SIGUSR1", "drain.notify", "drain.done",
                                           *NORMAL_STOP]
    [notice] = h.fields("drain.notify")
    # Not while HAProxy still sent it work (3 reads UP): at the first read out of rotation,
    # with its 40 sessions still open; the drain then waits for them to end.
    assert notice["signal"] == "SIGUSR1" and notice["sessions"] == "40"
    assert int(notice["after_ms"]) == pytest.approx(3 * 50, abs=30)
    assert h.when("app<-SIGUSR1") < h.when("app<-SIGTERM")


def test_no_notice_while_any_haproxy_still_sends_work_or_cannot_be_read(h: Harness) -> None:
    h.configure(drain_notify="USR1", drain_timeout_s=5.0)
    h.stats = [
        FakeStats(URL1, draining=[answer(row("DRAIN (agent)", 2))]),
        FakeStats(URL2, draining=[answer(row("UP", 2))] * 4 + [HAProxyConnectError("refused")] * 4
                  + [answer(row("DRAIN (agent)", 2))]),
    ]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    # URL2: UP, then unreadable: no notice; only once both show the server out of rotation.
    [notice] = h.fields("drain.notify")
    assert notice["sessions"] == "4"
    assert h.app.signals == ["SIGUSR1", "SIGTERM"]
    assert h.journal_from("app<-SIGUSR1")[:2] == ["app<-SIGUSR1", "drain.notify"]
    # The sessions never ended: the drain timeout, which says how many it leaves to be cut.
    [timeout] = h.fields("drain.timeout")
    assert timeout["sessions"] == "4"
    assert timeout["left"] == f"{URL1}=2,{URL2}=2"


def test_notice_before_the_drain_timeout_and_never_when_never_out_of_rotation(h: Harness) -> None:
    h.configure(drain_notify="SIGUSR1", drain_timeout_s=3.0)
    h.stats = [FakeStats(URL1, draining=[answer(row("UP", 1))])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.app.signals == ["SIGTERM"]
    assert "drain.notify" not in h.events()
    # Still in rotation: no count of sessions to cut, the row says why.
    assert h.fields("drain.timeout")[0]["left"] == f"{URL1}=accepting"
    assert "sessions" not in h.fields("drain.timeout")[0]


def test_without_the_option_the_app_hears_only_its_stop_signal(h: Harness) -> None:
    h.stats = [FakeStats(URL1, draining=[answer(row("DRAIN (agent)", 5))] * 3 + [answer(row("DRAIN (agent)"))])]

    assert h.run(lambda agent: stop_when(h, READY)) == 0
    assert h.app.signals == ["SIGTERM"]
    assert "drain.notify" not in h.events()


def test_no_notice_for_an_app_that_never_got_ready(h: Harness) -> None:
    """Its signal handlers may not be installed yet: SIGUSR1's default action would kill it."""
    h.configure(drain_notify="SIGUSR1", drain_timeout_s=1.0)
    h.probes.ready_at = None

    async def script(agent: object) -> None:
        await h.wait_for(lambda: h.apps and h.apps[0].started_at is not None, "app started")
        h.agent.on_stop_signal(signal.SIGTERM)

    assert h.run(script) == 0
    assert h.app.signals == ["SIGTERM"]


@pytest.mark.parametrize(("given", "number"), [("SIGUSR1", USR1), ("usr1", USR1), ("USR2", signal.SIGUSR2),
                                               (str(int(signal.SIGHUP)), signal.SIGHUP)])
def test_notify_signal_by_name_or_number(given: str, number: int) -> None:
    assert parse_notify_signal(given) == number
    config = load_config(["--haproxy-stats", URL1, "--drain-notify", given, "--", "app"], env={})
    assert config.drain_notify_signal == number
    assert config.drain_notify == signal.Signals(number).name  # held, and logged, by its name
    from_env = load_config(["--haproxy-stats", URL1, "--", "app"], env={"DRAIN_AGENT_DRAIN_NOTIFY": given})
    assert from_env.drain_notify_signal == number


@pytest.mark.parametrize(("given", "message"), [
    ("TERM", "a stop signal"), ("SIGINT", "a stop signal"), ("KILL", "no app can handle it"),
    ("SIGSTOP", "no app can handle it"), ("USR9", "not a signal"), ("0", "not a signal"), ("", None),
])
def test_notify_signal_refused_with_a_reason(given: str, message: str | None) -> None:
    if message is None:  # empty: off
        assert AgentConfig(command=("x",), haproxy_stats=(URL1,), drain_notify=given).drain_notify_signal is None
        return
    with pytest.raises(ConfigError, match=message):
        AgentConfig(command=("x",), haproxy_stats=(URL1,), drain_notify=given)


def test_the_event_is_in_the_vocabulary() -> None:
    assert "drain.notify" in EVENTS
