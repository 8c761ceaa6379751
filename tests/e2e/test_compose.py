"""The `docker compose up` demo on a real Docker engine: round-robin, the agent as PID 1,
deploy.sh under load with zero failed requests and no SIGKILL, `docker compose restart`,
and a release that never gets ready halting the deploy while the others keep serving.

One stack for the module (tests/e2e/conftest.py); each test first makes sure all three
servers are UP, so a test that failed half-way does not take the next one down with it.
Run: .venv/bin/pytest -m docker tests/e2e -s   (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from deploy.check.loadcheck import LoadResult
from tests.conftest import load_during as shared_load_during
from tests.e2e.conftest import APPS, REPO, ComposeStack, DockerEvents

pytestmark = pytest.mark.docker


def load_during(stack: ComposeStack, action: Callable[[], object], requests: int = 20_000,
                start_after_s: float = 2.0) -> tuple[LoadResult, object]:
    """The shared strict load (tests.conftest.load_during) on this stack's frontend, reported."""
    result, outcome = shared_load_during(stack.url, action, requests, start_after_s, slow_ms=200)
    print(f"\nload: {result.total} requests in {result.elapsed_s:.1f}s, {result.failed} failed "
          f"{dict(result.failures)}, p50 {result.percentile(50):.1f} ms, "
          f"p99 {result.percentile(99):.1f} ms, max {max(result.latencies_ms, default=0):.0f} ms; "
          f"versions {dict(result.versions)}")
    return result, outcome


def test_up_round_robin_agent_is_pid1_and_locked_down(healthy_stack: ComposeStack) -> None:
    stack = healthy_stack
    assert stack.servers() == dict.fromkeys(APPS, "UP")

    with httpx.Client(base_url=stack.url, timeout=5) as client:
        answers = [client.get("/cms").json() for _ in range(30)]
    order = [a["instance"] for a in answers]
    assert Counter(order) == dict.fromkeys(APPS, 10), order
    # Round-robin: every three consecutive answers come from three different containers.
    assert all(len(set(order[i:i + 3])) == 3 for i in range(0, 30, 3)), order
    assert {a["version"] for a in answers} == {stack.env["SERVICE_VERSION"]}

    for app in APPS:
        cmdline = stack.exec(app, "cat", "/proc/1/cmdline").split("\0")
        assert "/drain-agent" in cmdline[1] and cmdline[2:5] == ["python", "-m", "service"], cmdline
        assert stack.exec(app, "id", "-u").strip() == "10001"

    # The Runtime API is on the compose network only; stats and frontend on loopback.
    assert stack.compose("port", "haproxy", "9999", check=False).stdout.strip() in ("", ":0")
    assert stack.compose("port", "haproxy", "8404").stdout.strip() == f"127.0.0.1:{stack.stats_port}"
    assert stack.compose("port", "haproxy", "8785").stdout.strip() == f"127.0.0.1:{stack.port}"
    for service in ("haproxy", *APPS):
        host = json.loads(subprocess.run(
            ["docker", "inspect", "--format", "{{json .HostConfig}}", stack.container_id(service)],
            capture_output=True, text=True, check=True, timeout=30).stdout)
        assert host["ReadonlyRootfs"] is True, service
        assert host["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service

    # The rollout CLI's docker engine sees the same stack.
    status = subprocess.run([str(REPO / ".venv" / "bin" / "rollout"), "--engine", "docker", "status"],
                            capture_output=True, text=True, env=stack.env, cwd=REPO, timeout=60,
                            check=False)
    assert status.returncode == 0, status.stderr
    for app in APPS:
        assert any(line.split()[:2] == [app, "UP"] and stack.env["SERVICE_VERSION"] in line
                   for line in status.stdout.splitlines()), status.stdout


def test_deploy_sh_under_load_zero_failures_no_sigkill(healthy_stack: ComposeStack) -> None:
    stack = healthy_stack
    old_ids = {app: stack.container_id(app) for app in APPS}
    events = DockerEvents(stack.project).start()
    try:
        result, deploy = load_during(stack, lambda: stack.deploy("e2e-v2"))
    finally:
        events.stop()
    assert isinstance(deploy, subprocess.CompletedProcess)
    print(deploy.stdout)
    assert deploy.returncode == 0, f"{deploy.stdout}\n{deploy.stderr}\n{stack.logs()}"
    assert "[app3] UP on e2e-v2" in deploy.stdout

    assert result.total >= 20_000
    assert result.failed == 0, result.failures
    assert set(result.kinds) == {"get", "get-slow", "post"}
    assert set(result.versions) == {"e2e-v1", "e2e-v2"}, result.versions

    for app in APPS:
        assert stack.container_id(app) not in ("", old_ids[app]), f"{app} was not recreated"
        assert stack.version(app) == "e2e-v2"
    assert stack.servers() == dict.fromkeys(APPS, "UP")
    # Every old container got SIGTERM only and exited 0: the agent drained and the app
    # stopped on its own, long before Docker's SIGKILL (stop_grace_period).
    for app, container in old_ids.items():
        kills = events.of(container, "kill")
        assert kills and {k.get("signal") for k in kills} == {"15"}, (app, kills)
        dies = events.of(container, "die")
        assert [d.get("exitCode") for d in dies] == ["0"], (app, dies)


def test_compose_restart_under_load_zero_failures(healthy_stack: ComposeStack) -> None:
    stack = healthy_stack
    container = stack.container_id("app2")
    events = DockerEvents(stack.project).start()

    def restart_until_back() -> subprocess.CompletedProcess[str]:
        restarted = stack.compose("restart", "app2", timeout=120)
        stack.wait_all_up(timeout=30)  # the load also covers app2's way back into rotation
        return restarted

    try:
        result, restart = load_during(stack, restart_until_back, requests=8_000, start_after_s=1.0)
    finally:
        events.stop()
    assert isinstance(restart, subprocess.CompletedProcess)
    assert result.failed == 0, result.failures
    assert stack.container_id("app2") == container  # restarted, not recreated
    assert [d.get("exitCode") for d in events.of(container, "die")] == ["0"]
    assert len(events.of(container, "start")) == 1
    assert "/drain-agent" in stack.exec("app2", "cat", "/proc/1/cmdline")


def test_release_that_never_gets_ready_halts_the_deploy(healthy_stack: ComposeStack) -> None:
    stack = healthy_stack
    before = {app: stack.version(app) for app in APPS}
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    seen: dict[str, dict[str, str]] = {}

    def bad_then_fixed() -> None:
        # The app stays 503 on /readyz; its agent gives up after 10 s; deploy.sh after 15 s.
        runs["bad"] = stack.deploy("e2e-bad", SERVICE_WARMUP_S="100000",
                                   DRAIN_AGENT_START_TIMEOUT="10", DEPLOY_TIMEOUT="15")
        seen["servers"] = stack.servers()
        seen["versions"] = {app: stack.version(app) for app in APPS[1:]}
        # Fixing forward is just another deploy.
        runs["fixed"] = stack.deploy("e2e-v3")

    result, _ = load_during(stack, bad_then_fixed, requests=10_000, start_after_s=1.0)

    bad = runs["bad"]
    print(bad.stdout, bad.stderr)
    assert bad.returncode == 1, f"{bad.stdout}\n{bad.stderr}"
    assert "[app1] not UP on e2e-bad within 15s" in bad.stderr
    assert "still on the old version: app2 app3" in bad.stderr
    assert "[app2]" not in bad.stdout  # it never touched the others
    servers = seen["servers"]
    assert servers["app1"] != "UP" and servers["app2"] == servers["app3"] == "UP", servers
    assert seen["versions"] == {"app2": before["app2"], "app3": before["app3"]}

    fixed = runs["fixed"]
    assert fixed.returncode == 0, f"{fixed.stdout}\n{fixed.stderr}"
    assert result.failed == 0, result.failures
    assert "e2e-bad" not in result.versions  # the broken release never got a request
    assert {app: stack.version(app) for app in APPS} == dict.fromkeys(APPS, "e2e-v3")
    assert stack.servers() == dict.fromkeys(APPS, "UP")
