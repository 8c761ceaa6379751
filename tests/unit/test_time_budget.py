"""One time budget, end to end, read from the files that set it: the longest request the service
allows ends before HAProxy gives up on it, which is before the drain gives up, and the drain plus
the app's stop end before anything SIGKILLs the instance. Change one number and this says which
other one must move."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import AgentConfig
from deploy.engines import local
from service.app import MAX_DELAY_MS

REPO = Path(__file__).resolve().parents[2]


def seconds(text: str) -> float:
    value, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text).groups()  # type: ignore[union-attr]
    return float(value) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def timeout_server() -> float:
    match = re.search(r"^\s*timeout server (\S+)", (REPO / "haproxy" / "haproxy.cfg").read_text(), re.M)
    assert match
    return seconds(match.group(1))


def compose_setting(path: Path, name: str) -> float:
    match = re.search(rf"^\s*{name}:\s*\"?([^\"\s]+)", path.read_text(), re.M)
    assert match, f"{path.name} has no {name}"
    return seconds(match.group(1))


def test_the_longest_request_fits_haproxy_and_the_drain() -> None:
    longest = MAX_DELAY_MS / 1000
    assert longest < timeout_server() < AgentConfig.__dataclass_fields__["drain_timeout_s"].default
    assert timeout_server() < local.DRAIN_TIMEOUT_S


def test_local_stack_drain_and_stop_fit_supervisors_grace() -> None:
    assert local.DRAIN_TIMEOUT_S + local.APP_STOP_TIMEOUT_S < local.STOP_WAIT_S


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.bluegreen.yml", "deploy/stack.yml"])
def test_compose_drain_and_stop_fit_the_stop_grace_period(name: str) -> None:
    path = REPO / name
    drain = compose_setting(path, "DRAIN_AGENT_DRAIN_TIMEOUT")
    stop = compose_setting(path, "DRAIN_AGENT_STOP_TIMEOUT")
    assert timeout_server() < drain
    text = path.read_text()
    graces = [seconds(g) for g in re.findall(r"stop_grace_period:\s*(\S+)", text)]
    app_grace = max(graces)
    assert drain + stop < app_grace, f"{name}: drain {drain} + stop {stop} must fit stop_grace_period {app_grace}"
