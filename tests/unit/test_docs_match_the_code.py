"""The README and docs/ say what the code does: every rollout and drain-agent flag they name
exists, every environment variable they name is read somewhere, and the defaults they state
for the agent's flags and the service's settings are the code's."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from agent.config import DEFAULTS, FLAGS, env_name
from agent.config import build_parser as agent_parser
from deploy.cli_args import build_parser as rollout_parser
from service.config import ServiceConfig

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "examples").glob("*/README.md"))]
# Where a variable can be read or set: code, configs, compose and stack files, scripts, images.
SOURCES = [*REPO.glob("agent/*.py"), *REPO.glob("service/*.py"), *REPO.glob("deploy/**/*.py"),
           *REPO.glob("haproxy/*.cfg"), *REPO.glob("docker-compose*.yml"), REPO / "deploy" / "stack.yml",
           REPO / "deploy" / "deploy.sh", REPO / "service" / "Dockerfile", *REPO.glob("examples/*/docker-compose.yml"),
           *REPO.glob("bench/*.py")]
OURS = re.compile(r"\b(?:SERVICE|DRAIN_AGENT|ROLLOUT|DEPLOY|HAPROXY|ZDH)_[A-Z0-9_]*[A-Z0-9]\b")
# Flags of other tools the docs quote (docker, compose, haproxy, hey, wrk, pip, pytest, curl...).
FOREIGN = {"--advertise-addr", "--resolve-image", "--scale", "--wait", "--no-deps", "--no-recreate",
           "--build", "--detach", "--remove-orphans", "--update-parallelism", "--update-order",
           "--update-failure-action", "--update-monitor", "--env-add", "--image", "--network",
           "--no-build", "--format", "--filter", "--tail", "--stop-timeout", "--timeout-keep-alive",
           "--timeout-graceful-shutdown", "--graceful-timeout", "--bind", "--workers", "--onefile",
           "--status", "--quiet", "--rm", "--entrypoint", "--init", "--help", "--durations",
           "--max-time", "--build-arg", "--force", "--all", "--no-cache", "--output", "--volumes",
           "--from", "--chown", "--context", "--signal", "--with-registry-auth", "--keep-alive",
           "--no-control-socket"}


def parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    found = {flag for action in parser._actions for flag in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= parser_flags(sub)
    return found


def deploy_sh_flags() -> set[str]:
    return set(re.findall(r"^\s+(--[a-z-]+)\)", (REPO / "deploy" / "deploy.sh").read_text(), re.M))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_named_exists(doc: Path) -> None:
    known = parser_flags(rollout_parser()) | parser_flags(agent_parser()) | deploy_sh_flags() | FOREIGN
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", doc.read_text()))
    assert not named - known, f"{doc.name} names flags no command has: {sorted(named - known)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_variable_named_is_read_somewhere(doc: Path) -> None:
    code = "\n".join(path.read_text() for path in SOURCES)
    agent_env = {env_name(flag) for flag in FLAGS}
    # rollout's own: ROLLOUT_ + the name its env_default/env_int/env_duration reads
    agent_env |= {f"ROLLOUT_{name}" for name in re.findall(r'env_(?:default|int|duration)\("([A-Z_]+)"', code)}
    named = set(OURS.findall(doc.read_text()))
    missing = {name for name in named - agent_env if name not in code}
    assert not missing, f"{doc.name} names variables nothing reads: {sorted(missing)}"


def test_the_agent_table_states_the_codes_defaults() -> None:
    rows = re.findall(r"^\| `(--[a-z-]+)[^`]*`[^|]*\| `(DRAIN_AGENT_[A-Z_]+)`[^|]*\| ([^|]+)\|",
                      (REPO / "README.md").read_text(), re.M)
    assert len(rows) >= 10
    for flag, variable, stated in rows:
        assert env_name(flag) == variable, (flag, variable)
        default = DEFAULTS[FLAGS[flag][0]]
        stated = stated.strip().strip("`")
        if stated in ("off", "required", "found by address", "the readiness URL's"):
            assert default in (0, None, "", (), dataclasses.MISSING), (flag, default)
        else:
            if isinstance(default, str):
                assert stated == default, (flag, stated, default)
            else:
                number = re.match(r"[\d.]+", stated)
                assert number and float(number[0]) == float(default), (flag, stated, default)


def test_the_services_settings_state_the_codes_defaults() -> None:
    text = (REPO / "README.md").read_text().split("## The service's settings", 1)[1].split("\n## ", 1)[0]
    fields = {f.name: f.default for f in ServiceConfig.__dataclass_fields__.values()}
    checked = 0
    for variable, stated, _ in re.findall(r"`(SERVICE_[A-Z_]+)` \(([\d.]+)( MiB)?", text):
        field = variable.removeprefix("SERVICE_").lower()
        assert field in fields, variable
        default = fields[field]
        if isinstance(default, str):
            assert stated == default, (variable, stated, default)
        else:
            scale = 1024 * 1024 if variable.endswith("_BYTES") else 1
            assert float(stated) * scale == float(default), (variable, stated, default)
        checked += 1
    assert checked >= 5
