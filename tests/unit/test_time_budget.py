"""One time budget (deploy/budget.py), end to end: its own order, and every file that carries
one of its numbers says that number. Change one and this says which file must follow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import AgentConfig
from deploy import budget
from deploy.engines.local import LocalEngine
from deploy.engines.local_stack import LocalStack
from service.app import MAX_DELAY_MS
from service.config import ServiceConfig

REPO = Path(__file__).resolve().parents[2]
APP_FILES = ["docker-compose.yml", "docker-compose.bluegreen.yml", "deploy/stack.yml",
             "examples/node/docker-compose.yml", "examples/gunicorn/docker-compose.yml"]


def seconds(text: str) -> float:
    value, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text).groups()  # type: ignore[union-attr]
    return float(value) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def settings(text: str, name: str) -> list[float]:
    """Every value of `name` in a config file: `name: 70`, `name: "70"`, `name=70` or `name 70s`."""
    return [seconds(v) for v in re.findall(rf"^\s*{name}[:=\s]\s*\"?(\d[\w.]*)\"?", text, re.M)]


def test_the_budget_is_in_order() -> None:
    assert budget.LONGEST_REQUEST_S < budget.TIMEOUT_SERVER_S < budget.DRAIN_TIMEOUT_S
    assert budget.APP_SHUTDOWN_S < budget.APP_STOP_TIMEOUT_S
    assert budget.DRAIN_TIMEOUT_S + budget.APP_STOP_TIMEOUT_S < budget.GRACE_S


def test_the_code_that_carries_it() -> None:
    assert MAX_DELAY_MS == budget.LONGEST_REQUEST_S * 1000
    assert AgentConfig.__dataclass_fields__["drain_timeout_s"].default == budget.DRAIN_TIMEOUT_S


def test_haproxy_cfg() -> None:
    text = (REPO / "haproxy" / "haproxy.cfg").read_text()
    assert settings(text, "timeout server") == [budget.TIMEOUT_SERVER_S]
    assert settings(text, "hard-stop-after") == [budget.DRAIN_TIMEOUT_S]


@pytest.mark.parametrize("name", APP_FILES)
def test_compose_and_stack_files(name: str) -> None:
    text = (REPO / name).read_text()
    assert settings(text, "DRAIN_AGENT_DRAIN_TIMEOUT") == [budget.DRAIN_TIMEOUT_S]
    assert settings(text, "DRAIN_AGENT_STOP_TIMEOUT") == [budget.APP_STOP_TIMEOUT_S]
    assert budget.GRACE_S in settings(text, "stop_grace_period")  # the app's (HAProxy's is its own)
    shutdown = settings(text, "SERVICE_SHUTDOWN_TIMEOUT_S")
    assert shutdown in ([], [budget.APP_SHUTDOWN_S])


def test_the_image() -> None:
    text = (REPO / "service" / "Dockerfile").read_text()
    assert settings(text, "DRAIN_AGENT_DRAIN_TIMEOUT") == [budget.DRAIN_TIMEOUT_S]
    assert settings(text, "DRAIN_AGENT_STOP_TIMEOUT") == [budget.APP_STOP_TIMEOUT_S]


def test_the_local_stacks_supervisor_programs(tmp_path: Path) -> None:
    engine = LocalEngine(LocalStack(state_dir=str(tmp_path)))
    engine.write_configs()
    program = (tmp_path / "conf.d" / "app1.conf").read_text()
    assert settings(program, "stopwaitsecs") == [budget.GRACE_S]
    assert f'DRAIN_AGENT_DRAIN_TIMEOUT="{budget.DRAIN_TIMEOUT_S}"' in program  # env: --env may lower it
    assert f'DRAIN_AGENT_STOP_TIMEOUT="{budget.APP_STOP_TIMEOUT_S}"' in program
    assert f'SERVICE_SHUTDOWN_TIMEOUT_S="{budget.APP_SHUTDOWN_S}"' in program
    assert ServiceConfig.__dataclass_fields__["shutdown_timeout_s"].default <= budget.APP_STOP_TIMEOUT_S
