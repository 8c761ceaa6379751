"""The examples on a real Docker engine: any app, any image, with the one-file drain-agent as PID 1.

examples/node (server.js unchanged, node:18-bookworm-slim, no Python in the image) and
examples/gunicorn (a Flask app under gunicorn, 3 workers), each with its own compose file that
reuses the stack's HAProxy config. For each, under the strict load checker (nothing re-sent;
concurrency 100, 20% POSTs with echo checks, 10% slow requests):

- `COMPOSE_FILE=examples/<x>/docker-compose.yml ./deploy/deploy.sh v2`: 0 failed, every container
  replaced and on v2, every old one stopped by SIGTERM alone with exit code 0 (drained first);
- the README's "Adopt it in your service" steps, read from the README itself and run as they are
  written (only the image names are made unique) on a copy of the example's app files: build
  the agent image, build the app's image from the README's Dockerfile, run it behind the stack's
  HAProxy, restart every container one at a time: 0 failed.

Each test builds its images once, runs one stack under its own project name and free ports, and
tears everything down (containers, network, its image tags). Needs node:18-bookworm-slim, which
../shared/docker-sandbox/node-image.sh builds when it is missing (no registry here).
Run: .venv/bin/pytest -m docker tests/e2e/test_examples.py -s
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    REPO,
    ComposeStack,
    Container,
    DockerEvents,
    assert_no_failures,
    docker,
    load_during,
    require_docker,
)

pytestmark = pytest.mark.docker

EXAMPLES = REPO / "examples"
EXAMPLE_NAMES = ["node", "gunicorn"]
BASE_IMAGES = {"node": "node:18-bookworm-slim", "gunicorn": "python:3.12-slim"}
NODE_IMAGE_SCRIPT = REPO.parent / "shared" / "docker-sandbox" / "node-image.sh"
# The strict load of every test here: concurrency >= 100, 20% POSTs, 10% slow requests. The load
# runs until the deploy or the restarts are done; `requests` is only its minimum.
LOAD = {"concurrency": 100, "post_share": 0.2, "slow_share": 0.1}
DEPLOY_REQUESTS = 6000
RESTART_REQUESTS = 4000
BUILD_TIMEOUT_S = 900
# Files of an example that are not the app itself.
NOT_APP = {"Dockerfile", "docker-compose.yml", "README.md"}


def ensure_base_image(example: str) -> None:
    """The example's base image, local (there is no registry to pull from): node-image.sh builds
    node:18-bookworm-slim when it is missing; without the script, skip (fail in CI)."""
    image = BASE_IMAGES[example]
    if docker("image", "inspect", image, check=False).returncode == 0:
        return
    if image.startswith("node:") and NODE_IMAGE_SCRIPT.exists():
        began = time.monotonic()
        built = subprocess.run(["bash", str(NODE_IMAGE_SCRIPT)], capture_output=True, text=True,
                               timeout=600, check=False)
        print(f"\nnode-image.sh (exit {built.returncode}, {time.monotonic() - began:.0f}s): "
              f"{built.stdout.strip()}{built.stderr.strip()[-2000:]}")
        if docker("image", "inspect", image, check=False).returncode == 0:
            return
    message = f"no local {image} (for {example}: build it with {NODE_IMAGE_SCRIPT})"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class ExampleStack(ComposeStack):
    """An example's compose file under a test project, free ports and its own image name."""

    def __init__(self, example: str) -> None:
        super().__init__(EXAMPLES / example / "docker-compose.yml", prefix=f"zdh-ex-{example}")
        self.example = example
        self.version = "v1"

    def app_get(self, container: Container, path: str) -> dict[str, object]:
        """GET on the app's port from inside its container, with bash only (the Node image has
        no python and no curl)."""
        raw = docker("exec", container.name, "bash", "-c",
                     "exec 3<>/dev/tcp/127.0.0.1/8000 && "
                     f"printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && cat <&3").stdout
        head, _, body = raw.replace("\r\n", "\n").partition("\n\n")  # text mode may have eaten \r
        assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0], raw[:300]
        answer = json.loads(body)
        assert isinstance(answer, dict), body
        return answer

    def image_of(self, container: Container) -> str:
        return docker("inspect", "-f", "{{.Config.Image}}", container.id).stdout.strip()


@contextmanager
def example_stack(example: str) -> Iterator[ExampleStack]:
    stack = ExampleStack(example)
    try:
        yield stack
    finally:
        began = time.monotonic()
        stack.down()
        leftovers = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.project}",
                           check=False).stdout.split()
        print(f"\n[{stack.project}] down in {time.monotonic() - began:.1f}s")
        assert not leftovers, f"containers left behind: {leftovers}"


def assert_no_python(image: str) -> None:
    """Neither python3 nor python anywhere on the image's PATH, nor a python binary in the usual
    places: the agent in it is the one-file build."""
    found = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                   "command -v python3 python", check=False)
    assert found.stdout.strip() == "", f"python in {image}: {found.stdout}"
    listed = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                    "ls /usr/bin /usr/local/bin /bin", check=False).stdout.split()
    assert not [name for name in listed if name.startswith("python")], listed


def assert_agent_is_pid1(stack: ExampleStack, container: Container, app: list[str]) -> None:
    """PID 1 runs the one-file agent with the app's command after `--`; the agent answers `ready`."""
    cmdline = stack.exec(container, "cat", "/proc/1/cmdline").split("\0")
    assert cmdline[:2] == ["drain-agent", "--"] and cmdline[2:2 + len(app)] == app, cmdline
    # No drain notice the app did not ask for (an app without a SIGUSR1 handler dies of it).
    environ = stack.exec(container, "cat", "/proc/1/environ").split("\0")
    assert not [e for e in environ if e.startswith("DRAIN_AGENT_DRAIN_NOTIFY=")], environ
    state = stack.exec(container, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9200 && cat <&3")
    assert state == "ready\n", state
    # The app got the environment the agent was given, not the one-file bootloader's (its
    # LD_LIBRARY_PATH would make the app load the bundle's libraries instead of its own).
    listing = stack.exec(container, "bash", "-c",
                         "for p in /proc/[0-9]*; do [ -r $p/environ ] && printf '%s\\t%s\\n' "
                         "\"$(tr '\\0' ' ' < $p/cmdline)\" \"$(tr '\\0' ' ' < $p/environ)\"; done; true")
    app_env = [env for cmd, _, env in (line.partition("\t") for line in listing.splitlines())
               if " ".join(app) in cmd and not cmd.startswith("drain-agent ")]
    assert app_env, listing
    assert all("_PYI_" not in env and "_MEI" not in env and "LD_LIBRARY_PATH" not in env for env in app_env), app_env


def agent_stage(dockerfile: Path) -> list[str]:
    """The instructions of the Dockerfile's agent stage, comments left out."""
    lines = dockerfile.read_text().split("FROM ${PYTHON_IMAGE} AS ", 1)[1].splitlines()[1:]
    stage = []
    for line in lines:
        if line.startswith("FROM "):
            break
        if line.strip() and not line.startswith("#"):
            stage.append(line)
    return stage


def test_the_examples_agent_stage_is_agent_dockerfiles_build_stage() -> None:
    """The examples build drain-agent with exactly agent/Dockerfile's steps (the builder shares
    the layers, and a fix there must not be missed here)."""
    reference = agent_stage(REPO / "agent" / "Dockerfile")
    assert any("make agent-binary" in line for line in reference), reference
    for example in EXAMPLE_NAMES:
        assert agent_stage(EXAMPLES / example / "Dockerfile") == reference, example


# -- deploy.sh v2 ---------------------------------------------------------------------------------


APP_COMMANDS = {"node": ["node", "server.js"], "gunicorn": ["gunicorn", "--bind", "0.0.0.0:8000"]}


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_deploy_sh_rolls_the_example_to_v2_with_zero_failed(example: str) -> None:
    require_docker()
    ensure_base_image(example)
    with example_stack(example) as stack:
        began = time.monotonic()
        stack.up()  # builds the image once (the deploy's own build hits the cache)
        print(f"\n[{stack.project}] built and up in {time.monotonic() - began:.1f}s on {stack.url}")
        if example == "node":
            assert_no_python(f"{stack.image}:v1")
        old = stack.wait_up(3)
        assert_agent_is_pid1(stack, old[0], APP_COMMANDS[example])
        assert {stack.app_get(c, "/version")["version"] for c in old} == {"v1"}

        # deploy.sh as the README says, with nothing of its own inside the image (no python).
        env: dict[str, str] = {}
        events = DockerEvents(stack.project).start()
        try:
            began = time.monotonic()
            result, deployed = load_during(stack.url, lambda: stack.deploy("v2", **env),
                                           requests=DEPLOY_REQUESTS, **LOAD)
            print(f"[{stack.project}] deploy.sh v2 under load in {time.monotonic() - began:.1f}s")
        finally:
            events.stop()
        assert isinstance(deployed, subprocess.CompletedProcess)
        assert deployed.returncode == 0, deployed.stderr
        stack.version = "v2"

        assert_no_failures(result, DEPLOY_REQUESTS)
        assert result.posts_answered and not result.posts_failed
        # (Not "the last second was all v2": the last old container's drain may finish its own
        # requests in that second. answered_by() below checks that only v2 answers afterwards.)
        assert set(result.versions) == {"v1", "v2"}
        new = stack.wait_up(3, timeout=30)
        assert not {c.id for c in new} & {c.id for c in old}, "an old container survived"
        assert {c.id for c in stack.containers(all=True)} == {c.id for c in new}, "leftover containers"
        assert {stack.image_of(c) for c in new} == {f"{stack.image}:v2"}
        assert {stack.app_get(c, "/version")["version"] for c in new} == {"v2"}
        instances, versions = stack.answered_by(30)
        assert versions == {"v2"} and instances == {c.short for c in new}
        # Each old container: SIGTERM only (no SIGKILL), exit 0: drained, then the app stopped.
        events.assert_clean_stops([c.id for c in old])


# -- the README's adoption steps ---------------------------------------------------------------


def adoption_steps(readme: Path) -> list[tuple[str, str]]:
    """The fenced blocks of the README's "Adopt it in your service" section: (language, text)."""
    text = readme.read_text()
    section = text.split("## Adopt it in your service", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^( *)```(\w+)\n(.*?)^\1```", section, flags=re.S | re.M)
    return [(lang, "\n".join(line.removeprefix(indent) for line in body.splitlines()) + "\n")
            for indent, lang, body in blocks]


def renamed(text: str, agent: str, app: str) -> str:
    """The README's image names made unique for this run; nothing else changes."""
    text = re.sub(r"(-t |--from=)drain-agent(?=\s)", rf"\g<1>{agent}", text)
    return re.sub(r"\bmy-app\b", app, text)


def run_step(text: str, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    began = time.monotonic()
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    print(f"\n$ {text.strip()}\n(exit {done.returncode}, {time.monotonic() - began:.1f}s)")
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_readme_adoption_steps_on_a_copy_of_the_app(example: str, tmp_path: Path) -> None:
    require_docker()
    ensure_base_image(example)
    steps = adoption_steps(EXAMPLES / example / "README.md")
    assert [lang for lang, _ in steps] == ["sh", "dockerfile", "sh", "sh", "sh"], steps
    unique = f"zdh-ex-adopt-{secrets.token_hex(4)}"
    agent_image, app_image = f"{unique}-agent", f"{unique}-my-app"
    build_agent, dockerfile, build_app, run_app, restart_all = (
        renamed(text, agent_image, app_image) for _, text in steps)
    assert agent_image in build_agent and f"--from={agent_image} " in dockerfile
    assert f"{app_image}:v1" in build_app and f"ZDH_IMAGE={app_image} " in run_app

    # A copy of the example's app: its files, none of the kit's.
    app_dir = tmp_path / "my-app"
    app_dir.mkdir()
    for path in (EXAMPLES / example).iterdir():
        if path.is_file() and path.name not in NOT_APP:
            shutil.copy(path, app_dir / path.name)
    (app_dir / "Dockerfile").write_text(dockerfile)

    try:
        with example_stack(example) as stack:
            env = dict(stack.env)  # project name and free ports: where the README says 8785/8404
            run_step(build_agent, REPO, env, BUILD_TIMEOUT_S)  # 1. the agent image
            run_step(build_app, app_dir, env, BUILD_TIMEOUT_S)  # 2. + 3. the app's image
            if example == "node":
                assert_no_python(f"{app_image}:v1")
            run_step(run_app, REPO, env, 240)  # 4. behind the stack's HAProxy
            old = stack.wait_up(3)
            assert {stack.image_of(c) for c in old} == {f"{app_image}:v1"}
            assert_agent_is_pid1(stack, old[0], APP_COMMANDS[example])

            events = DockerEvents(stack.project).start()  # 5. restarts under strict load
            try:
                result, _ = load_during(stack.url, lambda: run_step(restart_all, REPO, env, 600),
                                        requests=RESTART_REQUESTS, **LOAD)
            finally:
                events.stop()
            assert_no_failures(result, RESTART_REQUESTS)
            assert result.posts_answered and not result.posts_failed
            # The same containers, each restarted once: SIGTERM only, exit 0, started again.
            after = stack.wait_up(3, timeout=60)
            assert {c.id for c in after} == {c.id for c in old}
            events.assert_clean_stops([c.id for c in old])
            assert all(len(events.of(c.id, "start")) == 1 for c in old), events.lines
            assert result.instances.keys() == {c.short for c in old}
    finally:  # after the stack is down: no container uses them any more
        docker("image", "rm", f"{app_image}:v1", agent_image, check=False)


# -- a compose project of one's own ------------------------------------------------------------


OWN_PROJECT = """\
# An adopter's project: its own file name and service names (web, lb), HAProxy's configs copied
# beside it, the Node example's image (its app and the one-file agent), nothing of this repo's.
services:
  lb:
    image: haproxy:2.8
    command: ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg",
              "-f", "/usr/local/etc/haproxy/servers-dns.cfg"]
    volumes: ["./proxy:/usr/local/etc/haproxy:ro"]
    environment:
      HAPROXY_FRONTEND_BIND: ":8785"
      HAPROXY_STATS_BIND: ":8404"
      HAPROXY_ADMIN_SOCKET: "ipv4@127.0.0.1:9999"
      HAPROXY_APP_HOST: web
      HAPROXY_CHECK_PATH: /healthz
    ports: ["127.0.0.1:{port}:8785", "127.0.0.1:{stats_port}:8404"]
  web:
    image: {image}:${{SERVICE_VERSION:-v1}}
    build: {{context: "{repo}", dockerfile: examples/node/Dockerfile, network: host}}
    tmpfs: ["/tmp:exec"]
    deploy: {{replicas: 3}}
    depends_on: [lb]
    stop_grace_period: 100s
    environment:
      SERVICE_VERSION: ${{SERVICE_VERSION:-v1}}
      DRAIN_AGENT_HAPROXY_STATS: "http://lb:8404/stats;csv"
      DRAIN_AGENT_READY_URL: http://127.0.0.1:8000/healthz
    healthcheck:
      test: ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9200 && read -r s <&3 && [ \\"$$s\\" = ready ]"]
      interval: 2s
      start_period: 120s
"""


def test_rollout_and_a_copied_deploy_sh_drive_a_compose_project_of_ones_own(tmp_path: Path) -> None:
    """`rollout --engine docker -f stack.yaml -p NAME --service web deploy v2`, installed with pip
    (not editable), from the project's directory (no COMPOSE_* set); `status` from elsewhere by
    COMPOSE_FILE / COMPOSE_PROJECT_NAME; then deploy.sh copied into the project, each deploy
    under the strict checker."""
    require_docker()
    ensure_base_image("node")
    stack = ComposeStack(tmp_path / "stack.yaml", prefix="shop")
    stack.services = ("web",)
    shutil.copytree(REPO / "haproxy", tmp_path / "proxy")
    for path in [tmp_path / "proxy", *(tmp_path / "proxy").iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # HAProxy reads them as uid 99
    (tmp_path / "stack.yaml").write_text(OWN_PROJECT.format(
        port=stack.port, stats_port=stack.stats_port, image=stack.image, repo=REPO))
    shutil.copy(REPO / "deploy" / "deploy.sh", tmp_path / "deploy.sh")
    plain = {k: v for k, v in stack.env.items() if not k.startswith(("COMPOSE_", "ZDH_"))}
    plain["SERVICE_VERSION"] = "v1"

    # rollout as a user installs it (`pip install <repo>`, not editable), beside the project.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(REPO)], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PIP_NO_INPUT": "1"}, check=False)
    assert pip.returncode == 0, pip.stderr[-2000:]
    installed = venv / "bin" / "rollout"

    def rollout(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(installed), "--engine", "docker", *args], capture_output=True, text=True,
                              cwd=cwd, env={**plain, **env}, timeout=300, check=False)

    try:
        stack.compose("up", "-d", "--wait", "--build", timeout=BUILD_TIMEOUT_S)
        old = stack.wait_up(3, service="web", backend="app")
        result, run = load_during(stack.url, lambda: rollout(
            "-f", "stack.yaml", "-p", stack.project, "--service", "web", "deploy", "v2", cwd=tmp_path),
            requests=DEPLOY_REQUESTS, **LOAD)
        assert isinstance(run, subprocess.CompletedProcess) and run.returncode == 0, run.stderr
        assert_no_failures(result, DEPLOY_REQUESTS)
        new = stack.wait_up(3, service="web", timeout=30, backend="app")
        assert not {c.id for c in new} & {c.id for c in old}
        assert {docker("inspect", "-f", "{{.Config.Image}}", c.id).stdout.strip() for c in new} == {
            f"{stack.image}:v2"}

        status = rollout("status", cwd=Path("/"), COMPOSE_FILE=str(tmp_path / "stack.yaml"),
                         COMPOSE_PROJECT_NAME=stack.project, ROLLOUT_SERVICE="web")
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[0].split()[:2] == ["SERVER", "LB"], status.stdout
        assert [line.split()[1:2] + line.split()[-1:] for line in status.stdout.splitlines()[1:]] == [
            ["UP", "v2"]] * 3, status.stdout

        env = {**plain, "COMPOSE_FILE": "stack.yaml", "COMPOSE_PROJECT_NAME": stack.project,
               "DEPLOY_SERVICE": "web", "SERVICE_VERSION": "v2"}
        result, run = load_during(stack.url, lambda: subprocess.run(
            ["./deploy.sh", "v3"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
            check=False), requests=DEPLOY_REQUESTS, **LOAD)
        assert isinstance(run, subprocess.CompletedProcess) and run.returncode == 0, run.stdout + run.stderr
        assert_no_failures(result, DEPLOY_REQUESTS)
        assert {docker("inspect", "-f", "{{.Config.Image}}", c.id).stdout.strip()
                for c in stack.wait_up(3, service="web", timeout=30, backend="app")} == {f"{stack.image}:v3"}
    finally:
        stack.down()
