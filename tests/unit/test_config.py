"""Bad flags and bad environment give one clear message, before anything starts."""

from __future__ import annotations

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from service.config import ConfigError as ServiceConfigError
from service.config import ServiceConfig

GOOD = ["--haproxy", "unix:///tmp/h.sock", "--server", "app1", "--", "python", "-m", "service"]


def test_flags_and_environment() -> None:
    config = load_config(GOOD, env={})
    assert config.command == ("python", "-m", "service")
    assert config.server_id == "app/app1"
    assert config.poll_interval_s <= 0.1
    from_env = load_config(
        ["--", "app"],
        env={
            "DRAIN_AGENT_HAPROXY": "unix:///a.sock, tcp://h:1",
            "DRAIN_AGENT_SERVER": "s1",
            "DRAIN_AGENT_BACKEND": "web",
            "DRAIN_AGENT_DRAIN_TIMEOUT": "7.5",
        },
    )
    assert [str(a) for a in from_env.haproxy] == ["unix:///a.sock", "tcp://h:1"]
    assert (from_env.server_id, from_env.drain_timeout_s) == ("web/s1", 7.5)
    # A flag wins over its environment variable.
    assert load_config([*GOOD[:4], "--drain-timeout", "3", "--", "x"], env={"DRAIN_AGENT_DRAIN_TIMEOUT": "9"}).drain_timeout_s == 3


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (GOOD[:4], {}, "no app command"),
        ([*GOOD[:4], "--"], {}, "no app command"),
        (GOOD[2:], {}, "no HAProxy address"),
        (GOOD[:2] + GOOD[4:], {}, "no server name"),
        (["--haproxy", "localhost:9999", *GOOD[2:]], {}, "expected unix:///path or tcp://host:port"),
        ([*GOOD[:4], "--backend", "a b", *GOOD[4:]], {}, "backend name 'a b'"),
        ([*GOOD[:4], "--ready-url", "localhost:8000/readyz", *GOOD[4:]], {}, "--ready-url"),
        ([*GOOD[:4], "--drain-timeout", "-1", *GOOD[4:]], {}, "--drain-timeout"),
        ([*GOOD[:4], "--poll-interval", "0", *GOOD[4:]], {}, "--poll-interval"),
        (GOOD, {"DRAIN_AGENT_STOP_TIMEOUT": "soon"}, "DRAIN_AGENT_STOP_TIMEOUT='soon'"),
    ],
)
def test_agent_config_errors(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(argv, env=env)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SERVICE_PORT": "eighty"}, "SERVICE_PORT='eighty' is not an integer"),
        ({"SERVICE_PORT": "70000"}, "not a TCP port"),
        ({"SERVICE_WARMUP_S": "-1"}, "SERVICE_WARMUP_S"),
        ({"SERVICE_SHUTDOWN_TIMEOUT_S": "inf"}, "finite"),
        ({"SERVICE_VERSION": ""}, "must not be empty"),
        ({"SERVICE_MAX_BODY_BYTES": "0"}, "SERVICE_MAX_BODY_BYTES"),
    ],
)
def test_service_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ServiceConfigError, match=message):
        ServiceConfig.from_env(env)
