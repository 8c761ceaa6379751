"""Bad flags and bad environment give one clear message, before anything starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.config import DEFAULTS, ENV_PREFIX, FLAGS, AgentConfig, build_parser, env_name, load_config
from agent.errors import ConfigError
from service.config import ConfigError as ServiceConfigError
from service.config import ServiceConfig

STATS = "http://haproxy:8404/stats;csv"
GOOD = ["--haproxy-stats", STATS, "--", "python", "-m", "service"]
OPTS, CMD = GOOD[:2], GOOD[2:]


def test_minimal_flags_take_every_default_from_agent_config() -> None:
    config = load_config(GOOD, env={})
    assert config.command == ("python", "-m", "service")
    assert config.haproxy_stats == (STATS,)
    defaults = AgentConfig(command=("x",), haproxy_stats=(STATS,))
    for field in dataclasses.fields(AgentConfig):
        if field.name not in ("command", "haproxy_stats"):
            assert getattr(config, field.name) == getattr(defaults, field.name) == DEFAULTS[field.name], field.name
    assert (config.agent_port, config.server, config.backend) == (9200, "", "")
    assert config.poll_interval_s <= 0.1


def test_server_is_optional_and_names_the_logs() -> None:
    assert load_config(GOOD, env={}).server_id == "*:8000"  # found by address: the readiness URL's port
    assert load_config([*OPTS, "--server-port", "8080", *CMD], env={}).server_id == "*:8080"
    assert load_config([*OPTS, "--ready-url", "https://10.0.0.5/ready", *CMD], env={}).port == 443
    assert load_config([*OPTS, "--server", "app1", *CMD], env={}).server_id == "*/app1"
    assert load_config([*OPTS, "--server", "app1", "--backend", "web", *CMD], env={}).server_id == "web/app1"


def test_haproxy_stats_repeats_and_its_environment_is_comma_separated() -> None:
    second = "http://haproxy-2:8404/stats;csv"
    assert load_config([*OPTS, "--haproxy-stats", second, *CMD], env={}).haproxy_stats == (STATS, second)
    from_env = load_config(CMD, env={"DRAIN_AGENT_HAPROXY_STATS": f" {STATS}, {second},,"})
    assert from_env.haproxy_stats == (STATS, second)
    # Flags win over the environment, the whole list.
    assert load_config(GOOD, env={"DRAIN_AGENT_HAPROXY_STATS": second}).haproxy_stats == (STATS,)


def test_the_command_is_everything_after_the_double_dash() -> None:
    config = load_config([*OPTS, "--", "app", "--drain-timeout", "3", "--", "x"], env={})
    assert config.command == ("app", "--drain-timeout", "3", "--", "x")
    assert config.drain_timeout_s == DEFAULTS["drain_timeout_s"]


SAMPLES = {  # flag -> (a valid value, what the config holds)
    "--drain-notify": ("usr1", "SIGUSR1"),
    "--haproxy-stats": (STATS, (STATS,)),
    "--agent-port": ("9300", 9300),
    "--agent-bind": ("127.0.0.1", "127.0.0.1"),
    "--backend": ("web", "web"),
    "--server": ("app1", "app1"),
    "--server-port": ("8080", 8080),
    "--ready-url": ("http://127.0.0.1:9000/healthz", "http://127.0.0.1:9000/healthz"),
    "--drain-timeout": ("7.5", 7.5),
    "--stop-timeout": ("3", 3.0),
    "--start-timeout": ("0", 0.0),
    "--poll-interval": ("0.2", 0.2),
    "--stats-timeout": ("2", 2.0),
    "--metrics-port": ("9100", 9100),
    "--reload-window": ("0", 0.0),
    "--agent-hold": ("0.5", 0.5),
}


def test_every_flag_has_a_sample() -> None:
    assert set(SAMPLES) == set(FLAGS)


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_every_flag_and_its_environment_variable(flag: str) -> None:
    field, _ = FLAGS[flag]
    value, held = SAMPLES[flag]
    base = [] if flag == "--haproxy-stats" else OPTS
    assert getattr(load_config([*base, flag, value, *CMD], env={}), field) == held
    env = {env_name(flag): value}
    assert env_name(flag) == ENV_PREFIX + flag[2:].replace("-", "_").upper()
    assert getattr(load_config([*base, *CMD], env=env), field) == held
    assert env_name(flag) in build_parser().format_help()


def test_a_flag_wins_over_its_environment_variable_and_empty_env_is_unset() -> None:
    env = {"DRAIN_AGENT_DRAIN_TIMEOUT": "9"}
    assert load_config([*OPTS, "--drain-timeout", "3", *CMD], env=env).drain_timeout_s == 3
    assert load_config(GOOD, env=env).drain_timeout_s == 9
    assert load_config(GOOD, env={"DRAIN_AGENT_DRAIN_TIMEOUT": ""}).drain_timeout_s == DEFAULTS["drain_timeout_s"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("DRAIN_AGENT_HAPROXY", r"DRAIN_AGENT_HAPROXY is no longer read: .*DRAIN_AGENT_HAPROXY_STATS=http://"),
        ("DRAIN_AGENT_HAPROXY_WAIT", "DRAIN_AGENT_HAPROXY_WAIT is no longer read"),
        ("DRAIN_AGENT_WATCH_INTERVAL", "DRAIN_AGENT_WATCH_INTERVAL is no longer read"),
        ("DRAIN_AGENT_API_TIMEOUT", "renamed DRAIN_AGENT_STATS_TIMEOUT"),
    ],
)
def test_removed_environment_variables_are_errors_not_ignored(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(GOOD, env={name: "1"})


@pytest.mark.parametrize(
    "argv",
    [
        ["--haproxy", "x", *GOOD],  # the removed Runtime API flag
        ["--haproxy", "unix:///run/haproxy/admin.sock", "--", "app"],
        ["--haproxy-stat", STATS, *CMD],  # no abbreviations
        [*OPTS, "--drain", "3", *CMD],
        [*OPTS, "--watch-interval", "1", *CMD],
        [*OPTS, "--drain-timeout", "soon", *CMD],
        [*OPTS, "--agent-port", "9200.5", *CMD],
        [*OPTS, "--metrics-port", "x", *CMD],
    ],
)
def test_unknown_abbreviated_or_non_numeric_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        load_config(argv, env={})
    assert exit_.value.code == 2
    assert "usage: drain-agent" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (OPTS, {}, "no app command"),
        ([*OPTS, "--"], {}, "no app command"),
        (CMD, {}, "no HAProxy stats URL: give --haproxy-stats"),
        (CMD, {"DRAIN_AGENT_HAPROXY_STATS": " , "}, "no HAProxy stats URL"),
        (["--haproxy-stats", "haproxy:8404/stats", *CMD], {}, "HAProxy stats URL 'haproxy:8404/stats'"),
        (["--haproxy-stats", "https://haproxy:8404/stats;csv", *CMD], {}, "expected http://host:port/stats;csv"),
        (["--haproxy-stats", "http://haproxy:99999/stats", *CMD], {}, "HAProxy stats URL"),
        (CMD, {"DRAIN_AGENT_HAPROXY_STATS": f"{STATS},unix:///run/h.sock"}, "'unix:///run/h.sock'"),
        ([*OPTS, "--backend", "a b", *CMD], {}, "backend name 'a b'"),
        ([*OPTS, "--server", "app/1", *CMD], {}, "server name 'app/1'"),
        ([*OPTS, "--ready-url", "localhost:8000/readyz", *CMD], {}, "--ready-url"),
        ([*OPTS, "--ready-url", "http://127.0.0.1:99999/readyz", *CMD], {}, "--ready-url"),
        ([*OPTS, "--drain-timeout", "-1", *CMD], {}, "--drain-timeout -1.0: must be a finite number"),
        ([*OPTS, "--stop-timeout", "nan", *CMD], {}, "--stop-timeout nan"),
        ([*OPTS, "--start-timeout", "inf", *CMD], {}, "--start-timeout inf"),
        ([*OPTS, "--poll-interval", "0", *CMD], {}, "--poll-interval 0.0: must be between 0.001 and 60"),
        ([*OPTS, "--stats-timeout", "61", *CMD], {}, "--stats-timeout"),
        ([*OPTS, "--agent-port", "0", *CMD], {}, "--agent-port 0: not a TCP port"),
        ([*OPTS, "--agent-port", "65536", *CMD], {}, "--agent-port 65536"),
        ([*OPTS, "--metrics-port", "-1", *CMD], {}, "--metrics-port -1"),
        ([*OPTS, "--server-port", "70000", *CMD], {}, "--server-port 70000"),
        (GOOD, {"DRAIN_AGENT_STOP_TIMEOUT": "soon"}, "DRAIN_AGENT_STOP_TIMEOUT='soon': expected float"),
        (GOOD, {"DRAIN_AGENT_AGENT_PORT": "9200.0"}, "DRAIN_AGENT_AGENT_PORT='9200.0': expected int"),
        (GOOD, {"DRAIN_AGENT_DRAIN_TIMEOUT": "inf"}, "--drain-timeout inf"),
        (GOOD, {"DRAIN_AGENT_POLL_INTERVAL": "0.0001"}, "--poll-interval"),
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


def test_the_drain_notice_belongs_to_the_reference_image_not_to_what_adopters_copy() -> None:
    """An app with no SIGUSR1 handler dies of it: the compose files and the stack file (which
    adopters point at their own image) send none; the reference image's CMD asks for it, and a
    CMD of one's own replaces it whole."""
    root = Path(__file__).parents[2]
    for name in ("docker-compose.yml", "docker-compose.bluegreen.yml", "deploy/stack.yml",
                 "examples/node/docker-compose.yml", "examples/gunicorn/docker-compose.yml"):
        assert "DRAIN_NOTIFY" not in (root / name).read_text(), name
    cmd = [line for line in (root / "service/Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert cmd == ['CMD ["--drain-notify", "SIGUSR1", "--", "python", "-m", "service"]']


def test_version_flags_say_the_distributions_version(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    from agent import __version__
    from deploy.cli import main

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert __version__ == pyproject["project"]["version"]
    for parse, name in ((lambda: load_config(["--version"], env={})), "drain-agent"), \
                       ((lambda: main(["--version"])), "rollout"):
        with pytest.raises(SystemExit) as exited:
            parse()
        assert exited.value.code == 0 and capsys.readouterr().out == f"{name} {__version__}\n"
