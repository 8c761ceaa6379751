"""`rollout` never answers with a traceback: every flag of every subcommand, given values a
hurried operator or a script could pass, and every ROLLOUT_* variable set to nonsense, ends
in a one-line error (exit 1 or 2) or argparse's usage (exit 2). Runs in-process on the local
engine, with a state directory that cannot exist (beneath a file), so nothing starts."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import cli
from deploy.cli_args import build_parser

VALUES = ["", " ", "0", "-1", "1", "3", "65536", "1e309", "nan", "inf", "-inf", "abc", "²", "1,2",
          "50,5", "5,25,100", "25%", "101%", "0%", "9" * 400, "'\"", "%(x)s", "$HOME", "é中",
          "a" * 5000, "--", "-", "=", "X=", "=x", "X=1", "blue", "1s", "ten", "1.5", "/", "/../x"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


GLOBAL = {"--engine", "--state-dir", "--file", "--project-name", "--service", "--lb-service", "--app-port"}


def flags(parser: argparse.ArgumentParser) -> Iterator[tuple[str, bool]]:
    """(flag, takes a value) for each option of a subcommand (the global ones, which a subcommand
    also takes, are fuzzed once, below: with --engine docker they would run docker)."""
    for action in parser._actions:
        if (action.option_strings and not isinstance(action, argparse._HelpAction)
                and action.option_strings[-1] not in GLOBAL):
            yield action.option_strings[-1], action.nargs != 0


def run(argv: list[str], nowhere: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(["--state-dir", str(nowhere), *argv])
        except SystemExit as exc:  # argparse's usage error
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory that cannot exist; and the test runs in tmp_path, so that a relative
    one a value names (`--state-dir 3`) could never land in the checkout."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "state"


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_flag_with_every_value_is_an_error_not_a_traceback(command: str, nowhere: Path) -> None:
    parser = subcommands()[command]
    positional = ["v2"] if command == "deploy" else ["green"] if command == "switch" else []
    cases = [[command, *positional]] + [
        [command, *positional, flag, *([value] if takes else [])]
        for flag, takes in flags(parser) for value in (VALUES if takes else [""])]
    if positional:
        cases += [[command, value] for value in VALUES]
    for argv in cases:
        code, said = run(argv, nowhere)
        assert "Traceback" not in said, (argv, said)
        assert code in (0, 1, 2), (argv, code, said)
        if code:
            assert said.strip(), argv


@pytest.mark.parametrize("name", ["ENGINE", "STATE_DIR", "PORT", "STATS_PORT", "APP_BASE_PORT",
                                  "WATCH_FOR", "RESTART_TIMEOUT", "INSTANCES"])
@pytest.mark.parametrize("value", ["", "abc", "-1", "1e309", "99999999999999999999"])
def test_nonsense_in_the_environment_is_an_error_not_a_traceback(
        name: str, value: str, nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"ROLLOUT_{name}", value)
    for argv in (["status"], ["up", "--detach"], ["deploy", "v2"]):
        code, said = run(argv, nowhere)
        assert "Traceback" not in said and code in (1, 2), (argv, code, said)


@pytest.mark.parametrize("flag", sorted(GLOBAL - {"--engine"}))
def test_global_flags_with_nonsense_on_the_local_engine_are_errors_not_tracebacks(flag: str, nowhere: Path) -> None:
    for value in VALUES:
        for argv in ([flag, value, "status"], ["status", flag, value]):
            code, said = run(argv, nowhere)
            assert "Traceback" not in said and code in (1, 2), (argv, code, said)


def test_global_flags_are_taken_after_the_subcommand_and_win_there() -> None:
    parser = build_parser()
    args = parser.parse_args(["--state-dir", "a", "status", "--state-dir", "b", "--engine", "swarm"])
    assert (args.state_dir, args.engine) == ("b", "swarm")
    args = parser.parse_args(["--engine", "docker", "-f", "x.yaml", "deploy", "v2", "--service", "web"])
    assert (args.engine, args.file, args.service, args.version) == ("docker", ["x.yaml"], "web", "v2")
    args = parser.parse_args(["--state-dir", "a", "deploy", "v2"])
    assert args.state_dir == "a"  # not undone by the subcommand's own (unused) copy


def test_every_subcommand_says_what_it_does_with_examples() -> None:
    for name, parser in subcommands().items():
        text = parser.format_help()
        assert parser.description and "examples:\n  rollout " in text, name
