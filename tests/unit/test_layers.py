"""deploy/ imports downwards only (docs/architecture.md): the shared types and files at the
bottom, the pure deploy rules above them, then the engines and the HAProxy door, then what
drives them (strategies, the load check), the CLI on top. agent/ stands alone, and neither
imports the reference service, the bench or the tests."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = [  # lowest first; a module imports its own layer or those below
    {"deploy.errors", "deploy.model", "deploy.statefile", "deploy.colormap", "deploy.budget",
     "deploy.lock", "deploy.history"},
    {"deploy.core"},
    {"deploy.engines", "deploy.door"},
    {"deploy.strategies", "deploy.check"},
    {"deploy.cli", "deploy.cli_args", "deploy.cli_types", "deploy.cli_stack", "deploy.cli_status",
     "deploy.cli_check", "deploy.__main__"},
]
FOREIGN = ("service", "bench", "tests")


def layer(module: str) -> int:
    for rank, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", sources("deploy"), ids=lambda p: module_name(p))
def test_deploy_imports_downwards_only(path: Path) -> None:
    here = module_name(path)
    if here == "deploy":
        return
    for target in imports(path):
        top = target.split(".")[0]
        assert top not in FOREIGN, f"{here} imports {target}"
        if top == "deploy" and target != "deploy":
            assert layer(target) <= layer(here), f"{here} (layer {layer(here)}) imports {target} " \
                                                 f"(layer {layer(target)}): upwards"


@pytest.mark.parametrize("path", sources("agent"), ids=lambda p: module_name(p))
def test_agent_stands_alone(path: Path) -> None:
    for target in imports(path):
        assert target.split(".")[0] not in (*FOREIGN, "deploy"), f"{module_name(path)} imports {target}"


def test_the_rule_catches_an_upward_import() -> None:
    """The control: an engine importing a strategy is what the test above exists to refuse."""
    assert layer("deploy.strategies.rolling") > layer("deploy.engines.local")
    assert layer("deploy.cli") > layer("deploy.check.report") > layer("deploy.core.deploy")
