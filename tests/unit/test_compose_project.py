"""Which compose project the docker engine works on, and which of its services is HAProxy:
compose's own inputs (-f, -p, COMPOSE_FILE) and the project's model, not this repository's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.engines.compose import COMPOSE_FILE, ComposeProject, DockerEngine, default_files, find_lb
from deploy.errors import RolloutError

REPO_CONFIG = {"services": {"haproxy": {"image": "haproxy:2.8", "command": ["haproxy", "-f", "x"]},
                            "app": {"image": "zero-downtime-haproxy-app:v1"}}}


@pytest.mark.parametrize(("services", "lb"), [
    (REPO_CONFIG["services"], "haproxy"),
    ({"lb": {"image": "registry.example/haproxytech/haproxy-debian:2.8"}, "web": {"image": "my-haproxy-app"}}, "lb"),
    ({"front": {"image": "custom", "command": ["haproxy", "-W", "-f", "/cfg"]}, "web": {"image": "w"}}, "front"),
])
def test_the_haproxy_service_is_found_by_image_or_command(services: dict[str, object], lb: str) -> None:
    assert find_lb({"services": services}, Path("stack.yaml")) == lb


@pytest.mark.parametrize(("services", "says"), [
    ({"web": {"image": "node"}}, "no service runs HAProxy"),
    ({"a": {"image": "haproxy"}, "b": {"image": "haproxy:2.9"}}, "several services run HAProxy (a, b)"),
])
def test_no_haproxy_or_two_is_one_line_naming_the_flag(services: dict[str, object], says: str) -> None:
    with pytest.raises(RolloutError, match=rf"stack.yaml: {re.escape(says)} .*--lb-service"):
        find_lb({"services": services}, Path("stack.yaml"))


def test_files_come_from_flags_then_compose_file_then_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "stack.yaml"
    mine.write_text("services: {}\n")
    engine = DockerEngine(env={}, project=ComposeProject(files=(mine,), name="shop", service="web"))
    assert engine.files == (mine,) and engine.root == tmp_path and engine.services() == ("web",)
    monkeypatch.chdir(tmp_path)
    assert default_files({"COMPOSE_FILE": f"{mine}:{tmp_path / 'b.yaml'}"}, False) == (mine, tmp_path / "b.yaml")
    assert default_files({}, False) == (COMPOSE_FILE.resolve(),)  # no compose file here: the repo's
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    assert default_files({}, False) == ((tmp_path / "compose.yaml").resolve(),)


def test_the_compose_command_carries_the_files_and_the_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def run(argv: list[str], **kwargs: object) -> object:
        seen.append(argv)
        import subprocess

        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr("deploy.engines.compose_access.subprocess.run", run)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    engine = DockerEngine(env={}, project=ComposeProject(files=(a, b), name="shop", service="web", lb_service="lb"))
    engine.compose("ps", "-q", engine.lb)
    assert seen == [["docker", "compose", "-f", str(a), "-f", str(b), "-p", "shop", "ps", "-q", "lb"]]
    assert engine.services() == ("web",)


def test_swarm_takes_its_stack_file_and_name_from_the_same_flags(tmp_path: Path) -> None:
    from deploy.cli_args import build_parser
    from deploy.cli_stack import make_engine
    from deploy.engines.swarm import SwarmEngine

    stack_file = tmp_path / "shop.yml"
    stack_file.write_text("services: {}\n")
    args = build_parser().parse_args(["--engine", "swarm", "-f", str(stack_file), "-p", "shop", "status"])
    engine = make_engine(args)
    assert isinstance(engine, SwarmEngine) and engine.stack == "shop" and engine.stack_file == stack_file
    for argv, says in ((["--engine", "swarm", "--service", "web", "status"], "on Swarm only -f"),
                       (["-f", str(stack_file), "status"], "for --engine docker"),
                       (["--engine", "swarm", "-f", "nope.yml", "status"], "no such file")):
        with pytest.raises(RolloutError, match=says):
            make_engine(build_parser().parse_args(argv))
