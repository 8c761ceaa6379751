"""The compose demo as a fixture: a real stack under its own project name, ports and image name.

Nothing here clashes with a demo someone left running (`docker compose up` from the repo
root): the project is `zdh-test-<random>`, the host ports are free ones, and the image is
tagged `<project>-app:<version>`. Teardown always runs `docker compose down -v` and removes
those tags. Without a Docker engine the tests are skipped, unless CI is set: then they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent.haproxy import parse_stat_csv
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY_SH = REPO / "deploy" / "deploy.sh"
COMPOSE_FILE = REPO / "docker-compose.yml"
APPS = ("app1", "app2", "app3")
BUILD_TIMEOUT_S = 600  # cold: the dependencies come from PyPI
UP_TIMEOUT_S = 180


def require_docker() -> None:
    """Skip without a Docker engine that answers; in CI, a missing engine is a failure."""
    reason = ""
    try:
        result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                                capture_output=True, text=True, timeout=20, check=False)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["docker info failed"])[-1]
        else:
            compose = subprocess.run(["docker", "compose", "version"], capture_output=True,
                                     text=True, timeout=20, check=False)
            if compose.returncode != 0:
                reason = "the docker compose plugin is missing"
    except FileNotFoundError:
        reason = "no docker command on PATH"
    except subprocess.TimeoutExpired:
        reason = "docker info did not answer within 20 s"
    if not reason:
        return
    message = f"no Docker engine: {reason} (start dockerd; the compose demo needs Docker with the compose plugin)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so the docker tests must run", pytrace=False)
    pytest.skip(message)


@dataclass
class DockerEvents:
    """`docker events` for one compose project, recorded from start() until stop()."""

    project: str
    lines: list[dict[str, object]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None

    def start(self) -> DockerEvents:
        self.proc = subprocess.Popen(
            ["docker", "events", "--format", "{{json .}}",
             "--filter", "type=container",
             "--filter", f"label=com.docker.compose.project={self.project}",
             "--filter", "event=kill", "--filter", "event=die", "--filter", "event=start"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        time.sleep(0.3)  # docker events subscribes asynchronously
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))

    def stop(self) -> None:
        time.sleep(0.3)  # let the last events arrive
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # by its PID: ours
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)

    def of(self, container_id: str, action: str) -> list[dict[str, str]]:
        found = []
        for event in self.lines:
            actor = event.get("Actor")
            if not isinstance(actor, dict) or actor.get("ID") != container_id:
                continue
            if event.get("Action") == action or event.get("status") == action:
                attributes = actor.get("Attributes")
                found.append(dict(attributes) if isinstance(attributes, dict) else {})
        return found


class ComposeStack:
    """docker-compose.yml under a test project name; every call has a timeout."""

    def __init__(self) -> None:
        self.project = f"zdh-test-{secrets.token_hex(4)}"
        self.port = free_port()
        self.stats_port = free_port()
        self.image = f"{self.project}-app"
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_FILE": str(COMPOSE_FILE),
            "ZDH_PORT": str(self.port),
            "ZDH_STATS_PORT": str(self.stats_port),
            "ZDH_IMAGE": self.image,
            "SERVICE_VERSION": "e2e-v1",
        }
        for name in ("SERVICE_WARMUP_S", "DRAIN_AGENT_START_TIMEOUT", "DEPLOY_TIMEOUT", "ZDH_BIND"):
            self.env.pop(name, None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}/stats;csv;norefresh"

    def compose(self, *args: str, timeout: float = 120, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["docker", "compose", *args], capture_output=True, text=True,
                                env={**self.env, **(env or {})}, cwd=REPO, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def deploy(self, version: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        """./deploy/deploy.sh <version>, as a user would run it (with this stack's variables)."""
        return subprocess.run([str(DEPLOY_SH), version], capture_output=True, text=True,
                              env={**self.env, **env}, cwd=REPO, timeout=timeout, check=False)

    def up(self) -> None:
        self.compose("build", timeout=BUILD_TIMEOUT_S)
        self.compose("up", "-d", "--wait", "--pull", "never", timeout=UP_TIMEOUT_S)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=180, check=False)
        tags = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
                               "--filter", f"reference={self.image}"],
                              capture_output=True, text=True, timeout=30, check=False).stdout.split()
        if tags:  # untag only: the layers stay cached for the next run
            subprocess.run(["docker", "image", "rm", *tags], capture_output=True, timeout=60, check=False)

    def container_id(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def exec(self, service: str, *command: str) -> str:
        return self.compose("exec", "-T", service, *command, timeout=30).stdout

    def version(self, service: str) -> str:
        return self.exec(service, "python", "-c",
                         "import json, urllib.request as u; "
                         "print(json.load(u.urlopen('http://127.0.0.1:8000/version', timeout=2))['version'])"
                         ).strip()

    def servers(self) -> dict[str, str]:
        """HAProxy's status per app server, from the published stats CSV."""
        text = httpx.get(self.stats_url, timeout=3).text
        return {row["svname"]: row["status"] for row in parse_stat_csv(text)
                if row["pxname"] == "app" and row["svname"] in APPS}

    def wait_all_up(self, timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        servers: dict[str, str] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                servers = self.servers()
                if all(servers.get(app) == "UP" for app in APPS):
                    return servers
            time.sleep(0.2)
        raise AssertionError(f"not all servers UP within {timeout}s: {servers}")

    def ensure_healthy(self) -> None:
        """Before each test: all three UP; a test that failed half-way gets a fresh rollout."""
        try:
            self.wait_all_up(timeout=20)
        except AssertionError:
            repair = self.deploy(f"e2e-repair-{secrets.token_hex(2)}", timeout=300)
            assert repair.returncode == 0, f"could not repair the stack:\n{repair.stdout}\n{repair.stderr}"
            self.wait_all_up(timeout=60)

    def logs(self, *services: str, tail: int = 40) -> str:
        return self.compose("logs", "--tail", str(tail), *services, check=False).stdout


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeStack]:
    require_docker()
    compose = ComposeStack()
    try:
        began = time.monotonic()
        compose.up()
        print(f"\n[{compose.project}] up in {time.monotonic() - began:.1f}s on {compose.url}")
        yield compose
    finally:
        compose.down()


@pytest.fixture
def healthy_stack(stack: ComposeStack) -> ComposeStack:
    stack.ensure_healthy()
    return stack
