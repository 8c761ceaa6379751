"""The compose engine: the same `rollout` commands over docker-compose.yml (HAProxy + app1..app3).

Docker restarts a container exactly as supervisor does a program: SIGTERM to PID 1 (here
drain-agent), wait `stop_grace_period`, SIGKILL. A restart is `docker compose up -d --no-deps
--force-recreate appN` with SERVICE_VERSION (and any extra variables) in compose's
environment: the compose file tags the image and sets the app's version from it, so the
new container is the new release. Ports are read back from docker (`compose port`), so a
stack started with other ZDH_PORT / ZDH_STATS_PORT values is still found.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from deploy.engine import Instance
from deploy.errors import RolloutError

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SERVICES = ("app1", "app2", "app3")
FRONTEND_PORT = 8785  # inside the haproxy container; published as ${ZDH_PORT:-8785}
STATS_PORT = 8404  # published as 127.0.0.1:${ZDH_STATS_PORT:-8404}
UP_TIMEOUT_S = 600.0  # a cold build downloads the dependencies
# --force-recreate waits for the old container: stop_grace_period (60 s) and then some.
RECREATE_TIMEOUT_S = 120.0
QUICK_TIMEOUT_S = 15.0
VERSION_SCRIPT = """
import json, os, urllib.request as u
port = os.environ.get("SERVICE_PORT", "8000")
opener = u.build_opener(u.ProxyHandler({}))
print(json.load(opener.open(f"http://127.0.0.1:{port}/version", timeout=2))["version"])
"""


class DockerEngine:
    name = "docker"

    def __init__(
        self,
        compose_file: Path = COMPOSE_FILE,
        project: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.compose_file = compose_file.resolve()
        self.root = self.compose_file.parent
        self.project = project
        self.env = {**os.environ, **(env or {})}
        self._addresses: dict[int, str] = {}
        self._built: set[str] = set()

    # -- docker compose ----------------------------------------------------------------

    def compose(
        self, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = QUICK_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-f", str(self.compose_file)]
        if self.project:
            command += ["-p", self.project]
        try:
            return subprocess.run(
                [*command, *args], capture_output=True, text=True, check=False,
                env={**self.env, **(env or {})}, cwd=self.root, timeout=timeout_s,
            )
        except FileNotFoundError:
            raise RolloutError("no `docker` command on PATH; the docker engine needs Docker "
                               "with the compose plugin") from None
        except subprocess.TimeoutExpired:
            raise RolloutError(f"`docker compose {' '.join(args)}` did not finish within "
                               f"{timeout_s:g}s") from None

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = QUICK_TIMEOUT_S
    ) -> str:
        """A compose command that must succeed; its error becomes a one-line RolloutError."""
        result = self.compose(*args, env=env, timeout_s=timeout_s)
        if result.returncode != 0:
            raise RolloutError(f"`docker compose {' '.join(args)}` failed: {last_line(result.stderr)}")
        return result.stdout

    # -- Engine --------------------------------------------------------------------------

    def instances(self) -> list[Instance]:
        return [Instance(name, name) for name in SERVICES]

    def is_up(self) -> bool:
        try:
            result = self.compose("ps", "-q", "--status", "running", "haproxy")
        except RolloutError:
            return False
        return result.returncode == 0 and bool(result.stdout.strip())

    def up(self) -> None:
        if self.is_up():
            raise RolloutError(f"a compose stack from {self.compose_file} is already running; "
                               "`rollout --engine docker down` first")
        self.run("up", "-d", "--wait", "--build", "--pull", "never", timeout_s=UP_TIMEOUT_S)
        self._addresses.clear()

    def down(self) -> None:
        self.run("down", "--remove-orphans", timeout_s=RECREATE_TIMEOUT_S + 30)
        self._addresses.clear()

    def published(self, port: int) -> str:
        """host:port where docker publishes the haproxy container's `port` (cached once found)."""
        if port not in self._addresses:
            result = self.compose("port", "haproxy", str(port))
            lines = result.stdout.split() if result.returncode == 0 else []
            address = lines[0] if lines else ""
            if not address:
                default = self.env.get("ZDH_PORT" if port == FRONTEND_PORT else "ZDH_STATS_PORT") or port
                return f"127.0.0.1:{default}"  # not up (yet): what the compose file would publish
            host, _, host_port = address.rpartition(":")
            if host in ("0.0.0.0", "::", "[::]"):  # published on all addresses: use loopback
                host = "127.0.0.1"
            self._addresses[port] = f"{host}:{host_port}"
        return self._addresses[port]

    def stats_url(self) -> str:
        return f"http://{self.published(STATS_PORT)}/stats;csv;norefresh"

    def frontend_url(self) -> str:
        return f"http://{self.published(FRONTEND_PORT)}"

    def restart(self, instance: Instance, version: str | None, env: Mapping[str, str]) -> None:
        self.check_passed_through(env)
        new_version = (
            version or self.configured_version(instance) or self.env.get("SERVICE_VERSION") or "v1"
        )
        compose_env = {**env, "SERVICE_VERSION": new_version}
        if new_version not in self._built:
            # The compose file tags the image with the version: build it (cached) before use.
            self.run("build", env=compose_env, timeout_s=UP_TIMEOUT_S)
            self._built.add(new_version)
        self.run("up", "-d", "--no-deps", "--force-recreate", "--pull", "never", instance.name,
                 env=compose_env, timeout_s=RECREATE_TIMEOUT_S)

    def version_of(self, instance: Instance) -> str | None:
        try:
            result = self.compose("exec", "-T", instance.name, "python", "-c", VERSION_SCRIPT,
                                  timeout_s=5.0)
        except RolloutError:
            return None
        answer = result.stdout.strip()
        return answer if result.returncode == 0 and answer else None

    def ledgers(self) -> list[Path]:
        return []  # the containers' files are not ours to read; strict_http still counts every request

    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        try:
            result = self.compose("logs", "--no-log-prefix", "--tail", str(lines), instance.name)
        except RolloutError as exc:
            return f"(no logs: {exc})"
        return (result.stdout + result.stderr).rstrip() or f"(no logs for {instance.name})"

    # -- helpers -------------------------------------------------------------------------

    def configured_version(self, instance: Instance) -> str | None:
        """SERVICE_VERSION the instance's container was created with (None if it has none)."""
        try:
            ids = self.run("ps", "-q", instance.name).split()
        except RolloutError:
            return None
        if not ids:
            return None
        result = subprocess.run(
            ["docker", "inspect", "--format", "{{json .Config.Env}}", ids[0]],
            capture_output=True, text=True, check=False, timeout=QUICK_TIMEOUT_S,
        )
        if result.returncode != 0:
            return None
        for item in json.loads(result.stdout or "[]"):
            key, _, value = str(item).partition("=")
            if key == "SERVICE_VERSION":
                return value or None
        return None

    def check_passed_through(self, env: Mapping[str, str]) -> None:
        """Compose passes only the variables its file names: refuse others instead of dropping them."""
        text = self.compose_file.read_text()
        missing = [key for key in env if not re.search(r"\$\{" + re.escape(key) + r"\b", text)]
        if missing:
            raise RolloutError(
                f"--env {', '.join(missing)}: {self.compose_file.name} does not pass "
                f"{'it' if len(missing) == 1 else 'them'} to the containers; add "
                f"`{missing[0]}: ${{{missing[0]}:-default}}` under x-app-env there"
            )


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no error output)"
