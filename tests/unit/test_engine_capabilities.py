"""An engine declares what it can do (engines/base.py): an engine whose orchestrator updates
itself (Swarm) has no instance-by-instance commands, and the CLI hands it the whole release or
refuses in one line; it never reaches a method that is not there. A fake engine stands in for
Swarm: only the CLI's dispatch is under test (tests/e2e/test_swarm.py runs the real one)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from deploy import cli
from deploy.engines.base import Engine, by_instance, self_updating
from deploy.model import Event, RestartResult


class Orchestra:
    """The parts of a SelfUpdatingEngine the CLI may touch, recording what it was asked."""

    name = "orchestra"
    updates_itself = True
    blue_green = False
    stack_id = "s"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.asked: list[tuple[str, Any]] = []

    def is_up(self) -> bool:
        return True

    def check_release(self, version: str | None, env: Mapping[str, str]) -> None:
        self.asked.append(("check_release", version))

    def replicas(self) -> int:
        return 4

    def update(self, version: str | None, env: Mapping[str, str], timeout_s: float,
               report: Callable[[Event], None], **how: Any) -> RestartResult:
        self.asked.append(("update", (version, dict(env), how)))
        return RestartResult()

    def undo(self, timeout_s: float, report: Callable[[Event], None]) -> RestartResult:
        self.asked.append(("undo", None))
        return RestartResult()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the CLI asked an engine that updates itself for {name}")


@pytest.fixture
def orchestra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Orchestra:
    engine = Orchestra(tmp_path)
    monkeypatch.setattr(cli, "make_engine", lambda args: engine)
    return engine


def run(*argv: str, state_dir: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["--state-dir", str(state_dir), *argv])
    return code, err.getvalue()


def test_the_declaration_is_what_the_guards_read(orchestra: Orchestra) -> None:
    engine: Engine = orchestra  # type: ignore[assignment]
    assert self_updating(engine) and not by_instance(engine)


def test_a_deploy_is_the_orchestrators_own_update_with_the_flags_in_its_terms(orchestra: Orchestra) -> None:
    code, err = run("deploy", "v2", "--surge", "--max-unavailable", "50%", "--watch-for", "3s",
                    "--no-rollback", state_dir=orchestra.root)
    assert code == 0, err
    assert orchestra.asked == [("check_release", "v2"), ("update", ("v2", {}, {
        "order": "start-first", "parallelism": 2, "monitor": 3.0, "failure_action": "pause"}))]


def test_a_plain_restart_keeps_the_stacks_own_settings(orchestra: Orchestra) -> None:
    assert run("restart", state_dir=orchestra.root)[0] == 0
    assert orchestra.asked[-1] == ("update", (None, {}, {
        "order": None, "parallelism": None, "monitor": None, "failure_action": None}))


@pytest.mark.parametrize(("argv", "refusal"), [
    (("deploy", "v2", "--canary", "10,100", "--watch-for", "2s"), "--canary: not on orchestra"),
    (("deploy", "v2", "--min-ready", "5s"), "--min-ready: not on orchestra"),
    (("undo", "--watch-for", "3s"), "undo on orchestra is its own rollback"),
    (("switch", "green"), "this stack has one pool"),
    (("release", "--version", "v2"), "this stack has one pool"),
])
def test_what_it_cannot_do_is_refused_in_one_line(orchestra: Orchestra, argv: tuple[str, ...],
                                                  refusal: str) -> None:
    code, err = run(*argv, state_dir=orchestra.root)
    assert code == 2 and err.count("\n") == 1 and refusal in err, err
    assert not any(what in ("update", "undo") for what, _ in orchestra.asked)


def test_undo_is_the_orchestrators_own_rollback(orchestra: Orchestra) -> None:
    assert run("undo", state_dir=orchestra.root)[0] == 0
    assert orchestra.asked == [("undo", None)]
