"""The `docker compose up` demo on a real Docker engine: one scaled service, `app`, behind
`server-template` slots that Docker's DNS fills; each container found in HAProxy by its address.

Under the strict load checker (deploy.check.loadcheck.run_load: nothing is ever re-sent, every
failure counts): deploy.sh (surge, --stop-first, no version = redeploy), a 6-container stack
made by `--scale app=6` with no file edited, `rollout --engine docker restart --version`, a
release HAProxy cannot reach halting both tools, the others-UP guard of both tools, and an
HAProxy reload. Controls: the UP count drops by one under --stop-first (so the surge's "never
below N" is measured, not assumed), and a plain HAProxy restart does fail requests.

One stack for the module (tests/e2e/conftest.py); each test first makes sure 3 containers are
UP, so a test that failed half-way does not take the next one down with it.
Run: .venv/bin/pytest -m docker tests/e2e -s
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from deploy.lock import deploy_lock
from tests.e2e.conftest import (
    DEPLOY_SH,
    REPO,
    ComposeStack,
    Container,
    DockerEvents,
    UpCount,
    assert_no_failures,
    docker,
    load_during,
    versions_now,
)

pytestmark = pytest.mark.docker


def ps_order(stack: ComposeStack) -> list[str]:
    """The container ids in the order deploy.sh replaces them (`docker compose ps -q app`)."""
    return stack.compose("ps", "-q", "app").stdout.split()


def assert_replaced(stack: ComposeStack, old: list[Container], version: str, count: int = 3) -> list[Container]:
    """`count` new containers (none of the old ones), each UP in HAProxy and on `version`, and the
    frontend answered by exactly them."""
    new = stack.wait_up(count, timeout=30)
    assert not {c.id for c in new} & {c.id for c in old}, "an old container survived"
    assert {c.id for c in stack.containers(all=True)} == {c.id for c in new}, "leftover containers"
    assert set(stack.versions().values()) == {version}
    instances, versions = stack.answered_by(10 * count)
    assert versions == {version}
    assert instances == {c.short for c in new}
    return new


def test_up_three_containers_found_by_address_round_robin_locked_down(healthy_stack: ComposeStack) -> None:
    stack = healthy_stack
    containers = stack.containers()
    assert len(containers) == 3
    # Ten slots: one per container (its address), the other seven empty until a scale-up.
    rows = stack.rows("app")
    assert [r.server for r in rows] == [f"app{i}" for i in range(1, 11)]
    assert stack.status_by_address() == {c.address: "UP" for c in containers}
    assert Counter(r.status for r in rows if not r.addr) == {"MAINT (resolution)": 7}

    with httpx.Client(base_url=stack.url, timeout=5) as client:
        answers = [client.get("/cms").json() for _ in range(30)]
    order = [a["instance"] for a in answers]
    assert Counter(order) == dict.fromkeys((c.short for c in containers), 10), order
    assert all(len(set(order[i:i + 3])) == 3 for i in range(0, 30, 3)), order  # round-robin
    assert {a["version"] for a in answers} == {stack.version}

    for container in containers:
        cmdline = stack.exec(container, "cat", "/proc/1/cmdline").split("\0")
        # The reference image's CMD: the drain notice its service handles, then the service.
        assert "/drain-agent" in cmdline[1] and cmdline[2:8] == [
            "--drain-notify", "SIGUSR1", "--", "python", "-m", "service"], cmdline
        assert stack.exec(container, "id", "-u").strip() == "10001"

    # Published: the frontend and the stats page, on loopback; the Runtime API is not.
    assert stack.compose("port", "haproxy", "9999", check=False).stdout.strip() in ("", ":0")
    assert stack.compose("port", "haproxy", "8404").stdout.strip() == f"127.0.0.1:{stack.stats_port}"
    assert stack.compose("port", "haproxy", "8785").stdout.strip() == f"127.0.0.1:{stack.port}"
    haproxy = stack.compose("ps", "-q", "haproxy").stdout.strip()
    for name in (haproxy, *(c.name for c in containers)):
        host = docker("inspect", "--format",
                      "{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} "
                      "{{json .HostConfig.SecurityOpt}}", name).stdout
        assert host.split() == ["true", '["ALL"]', '["no-new-privileges:true"]'], (name, host)

    # `rollout --engine docker status` sees the same containers, by name, UP, with their version.
    status = stack.rollout("status")
    assert status.returncode == 0, status.stderr
    for container in containers:
        assert any(line.split()[:2] == [container.name, "UP"] and line.split()[-1] == stack.version
                   for line in status.stdout.splitlines()), status.stdout


def test_deploy_sh_without_a_version_redeploys_the_running_one(healthy_stack: ComposeStack) -> None:
    stack = healthy_stack
    old = stack.containers()
    events = DockerEvents(stack.project).start()
    try:
        with UpCount(stack) as up:
            result, deploy = load_during(stack.url, lambda: stack.deploy(), requests=10_000)
    finally:
        events.stop()
    assert isinstance(deploy, subprocess.CompletedProcess)
    assert deploy.returncode == 0, f"{deploy.stdout}\n{deploy.stderr}\n{stack.logs()}"
    assert f"no version given: redeploying the running one, {stack.version}" in deploy.stdout
    assert "replacing 3 containers (surge)" in deploy.stdout
    assert_no_failures(result, 10_000)
    assert set(result.versions) == {stack.version}
    assert_replaced(stack, old, stack.version)
    events.assert_clean_stops([c.id for c in old])
    print(f"UP servers during the surge deploy: min {up.low}, samples {len(up.counts)}")
    assert up.low >= 3  # surge: the new one is UP before the old one drains


def test_scale_to_six_with_no_file_edited_then_deploy_sh_under_heavy_load(healthy_stack: ComposeStack) -> None:
    stack = healthy_stack
    first = stack.containers()
    stack.compose("up", "-d", "--wait", "--scale", "app=6", timeout=180)
    old = stack.wait_up(6, timeout=60)
    assert {c.id for c in first} <= {c.id for c in old}  # scaling up recreated nothing
    instances, _ = stack.answered_by(60)
    assert instances == {c.short for c in old}

    events = DockerEvents(stack.project).start()
    began = time.monotonic()
    try:
        with UpCount(stack) as up:
            result, deploy = load_during(stack.url, lambda: stack.deploy("e2e-v2"), requests=20_000,
                                         concurrency=200, post_share=0.2, slow_share=0.1)
    finally:
        events.stop()
    assert isinstance(deploy, subprocess.CompletedProcess)
    assert deploy.returncode == 0, f"{deploy.stdout}\n{deploy.stderr}\n{stack.logs()}"
    stack.version = "e2e-v2"
    print(f"6-container deploy: {time.monotonic() - began:.1f}s with the load's lead-in; "
          f"UP servers min {up.low}")
    assert "replacing 6 containers (surge)" in deploy.stdout
    assert_no_failures(result, 20_000)
    assert set(result.versions) == {"e2e-v1", "e2e-v2"}, result.versions
    assert versions_now(stack.url) == {"e2e-v2"}
    assert up.low >= 6
    new = assert_replaced(stack, old, "e2e-v2", count=6)
    assert len(stack.rows("app")) == 10 and len(stack.status_by_address()) == 6
    events.assert_clean_stops([c.id for c in old])

    # Back to 3 (compose stops 3 of them: each drains first), under load too.
    result, _ = load_during(stack.url, lambda: stack.compose("up", "-d", "--wait", "--scale", "app=3",
                                                            timeout=180), requests=5_000)
    assert_no_failures(result, 5_000)
    assert {c.id for c in stack.wait_up(3)} < {c.id for c in new}


def test_deploy_sh_stop_first_under_load(healthy_stack: ComposeStack) -> None:
    stack = healthy_stack
    old = stack.containers()
    events = DockerEvents(stack.project).start()
    try:
        with UpCount(stack) as up:
            result, deploy = load_during(stack.url, lambda: stack.deploy("e2e-v3", "--stop-first"),
                                         requests=10_000)
    finally:
        events.stop()
    assert isinstance(deploy, subprocess.CompletedProcess)
    assert deploy.returncode == 0, f"{deploy.stdout}\n{deploy.stderr}\n{stack.logs()}"
    stack.version = "e2e-v3"
    assert "replacing 3 containers (stop-first)" in deploy.stdout
    assert_no_failures(result, 10_000)
    assert versions_now(stack.url) == {"e2e-v3"}
    assert_replaced(stack, old, "e2e-v3")
    events.assert_clean_stops([c.id for c in old])
    # The control for the surge tests' "never below N": here one server is out at a time.
    assert up.low == 2, Counter(up.counts)


def test_rollout_restart_to_a_version_under_load(healthy_stack: ComposeStack) -> None:
    stack = healthy_stack
    old = stack.containers()
    events = DockerEvents(stack.project).start()
    try:
        with UpCount(stack) as up:
            result, restart = load_during(
                stack.url, lambda: stack.rollout("restart", "--version", "e2e-v4"), requests=10_000)
    finally:
        events.stop()
    assert isinstance(restart, subprocess.CompletedProcess)
    assert restart.returncode == 0, f"{restart.stderr}\n{stack.logs()}"
    stack.version = "e2e-v4"
    assert "deploy done" in restart.stderr
    assert_no_failures(result, 10_000)
    assert set(result.versions) == {"e2e-v3", "e2e-v4"}, result.versions
    assert versions_now(stack.url) == {"e2e-v4"}
    new = assert_replaced(stack, old, "e2e-v4")
    for container in new:  # each replacement named in the progress lines, UP before the next
        assert re.search(rf"\[{re.escape(container.name)}\] ready UP in [0-9.]+s", restart.stderr), container
    events.assert_clean_stops([c.id for c in old])
    assert up.low == 2  # stop-first, one at a time


def test_deploy_sh_and_rollout_half_a_second_apart_the_second_is_refused_naming_the_first(
        healthy_stack: ComposeStack) -> None:
    """Both tools take the same lock (beside the compose file, named after the project): a
    rollout deploy half a second after deploy.sh's is refused within a second, naming it, and
    deploy.sh's completes under load with 0 failed; deploy.sh is refused while rollout's lock
    (the same code as a rollout deploy takes, here held by the test) is held."""
    stack = healthy_stack
    seen: dict[str, Any] = {}

    def race() -> None:
        first = subprocess.Popen([str(DEPLOY_SH), "e2e-lock-a"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=stack.env, cwd=REPO)
        time.sleep(0.5)
        began = time.monotonic()
        seen["second"] = stack.rollout("deploy", "e2e-lock-b")
        seen["took"], seen["pid"] = time.monotonic() - began, first.pid
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, f"{out}\n{err}"

    result, _ = load_during(stack.url, race, requests=8_000)
    second = seen["second"]
    # One Python start and no compose call before the lock, on 2 loaded cores (the local
    # stack's test holds it to 1 s).
    assert second.returncode == 1 and seen["took"] < 2.5, (seen["took"], second.stderr)
    assert f"another deploy holds this stack: pid {seen['pid']} " in second.stderr, second.stderr
    assert "deploy.sh e2e-lock-a" in second.stderr
    stack.version = "e2e-lock-a"
    assert_no_failures(result, 8_000)
    assert "e2e-lock-b" not in result.versions
    assert set(stack.versions().values()) == {"e2e-lock-a"}

    project = stack.compose("config", "--format", "json").stdout
    lock = REPO / f".zdh-deploy-{json.loads(project)['name']}.lock"
    with deploy_lock(lock, "rollout deploy e2e-lock-c"):
        refused = stack.deploy("e2e-lock-c")
    assert refused.returncode == 1 and "another deploy holds this stack" in refused.stderr, refused.stderr
    assert f'"pid": {os.getpid()}' in refused.stderr and "rollout deploy e2e-lock-c" in refused.stderr
    assert set(stack.versions().values()) == {"e2e-lock-a"}


@pytest.mark.parametrize("stop_first", [False, True])
def test_deploy_sh_rolls_back_a_release_that_crashes_after_up(healthy_stack: ComposeStack,
                                                               stop_first: bool) -> None:
    """The crash comes 2 s after ready: the watch (between steps and in the final window) sees
    the restart, and every replaced container goes back to the old image, with the old
    containers' variables (the crash setting does not come back with it)."""
    stack = healthy_stack
    # c=30: a crash cuts what is in flight on its container, and HAProxy never re-sends it
    # (the app may have done the work); with ~10 in flight each, the crashes before the
    # rollback cut a few dozen at most.
    result, run = load_during(stack.url, lambda: stack.deploy(
        "e2e-crash-sh", *(["--stop-first"] if stop_first else []), "--watch", "8",
        SERVICE_FAULT_CRASH_AFTER_S="2"), requests=8_000, concurrency=30)
    assert isinstance(run, subprocess.CompletedProcess)
    assert run.returncode == 1, f"{run.stdout}\n{run.stderr}"
    # a restarted container may come back on another address: "gone from HAProxy"
    assert re.search(r"watch failed: (\[\w{12}\] (restarted|left UP|went DOWN|is gone from HAProxy)|error share)",
                     run.stderr), run.stderr
    assert f"rolled back to {stack.version}" in run.stderr
    assert "rollback FAILED" not in run.stderr
    containers = stack.wait_up(3, timeout=60)
    assert len(stack.containers(all=True)) == 3
    assert set(stack.versions().values()) == {stack.version}
    assert versions_now(stack.url) == {stack.version}
    time.sleep(3)  # a rolled-back container that kept the crash setting would be restarting by now
    assert {c.id for c in stack.wait_up(3, timeout=10)} == {c.id for c in containers}
    assert result.failed < 60, dict(result.failures)  # what was in flight on crashing apps
    assert set(result.failures) <= {"closed without response", "http 502"}, dict(result.failures)


def test_rollout_deploy_of_a_release_that_crashes_after_up_rolls_back_by_itself(
        healthy_stack: ComposeStack) -> None:
    """Surge, each batch held 5 s (--min-ready): the new container crashes 2 s after it is
    ready, Docker restarts it, the watch sees the restart and the tool removes it; the old
    containers never stopped serving."""
    stack = healthy_stack
    old = stack.containers()
    result, run = load_during(stack.url, lambda: stack.rollout(
        "deploy", "e2e-crash", "--surge", "--min-ready", "5", "--watch-for", "5",
        "--env", "SERVICE_FAULT_CRASH_AFTER_S=2"), requests=8_000, concurrency=30)
    assert isinstance(run, subprocess.CompletedProcess)
    assert run.returncode == 1, run.stderr
    assert "deploy failed and was rolled back" in run.stderr
    # the crash is seen by its restart, or first by the responses it cut (error share)
    assert re.search(r"watch failed: \[[\w-]+\] (restarted|left UP|went DOWN|is gone from HAProxy|error share)", run.stderr), run.stderr
    assert "untouched: " + ", ".join(c.name for c in old) in run.stderr
    assert {c.id for c in stack.wait_up(3, timeout=60)} == {c.id for c in old}
    assert set(stack.versions().values()) == {stack.version}
    assert versions_now(stack.url) == {stack.version}
    # Cut: at most what was in flight on the crashing container (c=30 over 4 containers), never
    # re-sent (it may have done the work); none once it was taken away.
    assert set(result.failures) <= {"closed without response", "http 502"}, dict(result.failures)
    assert result.failed < 30, dict(result.failures)
    history = stack.rollout("history").stdout.splitlines()
    assert history[-1].split()[-1] == "rolled-back", history


# The two tools, each in both orders. Same rules: a stop only while another server is UP; a
# replacement not UP on the new version in time halts the deploy, and what was not touched is
# named; surge removes the failed new container (the old one still serves).
DEPLOYS: dict[str, Callable[..., subprocess.CompletedProcess[str]]] = {
    "deploy.sh": lambda stack, version, timeout, **env: stack.deploy(
        version, "--timeout", str(timeout), "--no-rollback", **env),
    "deploy.sh --stop-first": lambda stack, version, timeout, **env: stack.deploy(
        version, "--stop-first", "--timeout", str(timeout), "--no-rollback", **env),
    # --no-rollback: the halt these tests compare (the rollback has its own test below)
    "rollout restart --surge": lambda stack, version, timeout, **env: stack.rollout(
        "restart", "--surge", "--version", version, "--restart-timeout", str(timeout), "--no-rollback",
        *(f"--env={key}={value}" for key, value in env.items())),
    "rollout restart": lambda stack, version, timeout, **env: stack.rollout(
        "restart", "--version", version, "--restart-timeout", str(timeout), "--no-rollback",
        *(f"--env={key}={value}" for key, value in env.items())),
}


def in_order(stack: ComposeStack, tool: str) -> list[Container]:
    """The containers in the order the tool replaces them: deploy.sh by `docker compose ps`,
    rollout by age."""
    containers = stack.containers()
    if tool.startswith("deploy.sh"):
        by_id = {c.id: c for c in containers}
        return [by_id[i] for i in ps_order(stack)]
    return containers


def slot_of(stack: ComposeStack, container: Container) -> str:
    return next(f"{r.backend}/{r.server}" for r in stack.rows("app") if r.addr == container.address)


@pytest.mark.parametrize("tool", ["deploy.sh --stop-first", "rollout restart"])
def test_with_only_one_server_up_both_tools_refuse_to_stop_it(healthy_stack: ComposeStack, tool: str) -> None:
    """Stop-first's guard (a surge adds a server before it stops one, so it never stops the
    last). The others are out of rotation the operator's way: `disable agent` (or the agent's
    next `ready` would lift it) and `set server ... state maint` on the Runtime API."""
    stack = healthy_stack
    before = in_order(stack, tool)
    target, others = before[0], before[1:]
    slots = [slot_of(stack, c) for c in others]
    for slot in slots:
        assert stack.haproxy_command(f"disable agent {slot}").strip() == ""
        assert stack.haproxy_command(f"set server {slot} state maint").strip() == ""
    try:
        time.sleep(0.5)  # several agent-check periods: nothing lifts the maint
        statuses = stack.status_by_address()
        assert [statuses[c.address] for c in others] == ["MAINT", "MAINT"], statuses
        assert statuses[target.address] == "UP"

        run = DEPLOYS[tool](stack, "e2e-guard", 30)

        assert run.returncode == 1, f"{run.stdout}\n{run.stderr}"
        if tool.startswith("deploy.sh"):
            assert (f"[{target.short}] no other server is UP in HAProxy: stopping it would cut service; "
                    f"nothing done to {' '.join(c.short for c in before)}") in run.stderr
        else:
            assert (f"[{target.name}] no other server of app is UP in HAProxy: stopping it would cut "
                    f"service\nrollout halted; untouched: {', '.join(c.name for c in before)}") in run.stderr
        # Nothing changed: the same containers (no new one, none stopped), the same version.
        assert stack.containers(all=True) == sorted(before, key=lambda c: c.created)
        assert stack.version_of(target) == stack.version
        assert stack.status_by_address()[target.address] == "UP"
    finally:
        for slot in slots:
            stack.haproxy_command(f"set server {slot} state ready")
            stack.haproxy_command(f"enable agent {slot}")
    assert {c.id for c in stack.wait_up(3)} == {c.id for c in before}


@pytest.mark.parametrize("state", ["paused", "stopped"])
@pytest.mark.parametrize("tool", ["deploy.sh", "rollout restart"])
def test_with_a_paused_or_stopped_container_both_tools_refuse_to_start(
        healthy_stack: ComposeStack, tool: str, state: str) -> None:
    """Compose scales up by starting a stopped container (old version, old settings) before it
    creates one, and fails on a paused one: both tools refuse up front, having changed nothing,
    and `rollout status` shows a stopped one."""
    stack = healthy_stack
    before = stack.containers()
    out = before[1]
    docker("pause" if state == "paused" else "stop", out.name, timeout=90)
    try:
        if state == "stopped":
            status = stack.rollout("status")
            assert any(line.split()[:2] == [out.name, "missing"] for line in status.stdout.splitlines()), \
                status.stdout
        run = DEPLOYS[tool](stack, f"e2e-{state}", 30)
        assert run.returncode == 1, f"{run.stdout}\n{run.stderr}"
        assert re.search(rf"{state} containers of (the app|'app'): {re.escape(out.name)}[;.] ", run.stderr), run.stderr
        after = stack.containers(all=True)
        expected = {(c.id, "exited" if c is out and state == "stopped" else state if c is out else "running")
                    for c in before}
        assert {(c.id, c.state) for c in after} == expected
    finally:
        docker("unpause" if state == "paused" else "start", out.name, check=False)
    assert {c.id for c in stack.wait_up(3)} == {c.id for c in before}
    assert set(stack.versions().values()) == {stack.version}


@pytest.mark.parametrize("tool", DEPLOYS)
def test_a_release_haproxy_cannot_reach_halts_the_deploy(healthy_stack: ComposeStack, tool: str) -> None:
    """SERVICE_HOST=127.0.0.1: the new app is ready on its own loopback (its agent says ready),
    but HAProxy's check at the container's address fails, so it never gets UP. Then the same
    command without it (the control, and the fix forward) goes through."""
    stack = healthy_stack
    before = in_order(stack, tool)
    versions_before = stack.versions()
    surge = "stop-first" not in tool and tool != "rollout restart"
    fixed = "e2e-fix-" + re.sub(r"[^a-z]+", "-", tool).strip("-")
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    seen: dict[str, Any] = {}

    def bad_then_fixed() -> None:
        runs["bad"] = DEPLOYS[tool](stack, "e2e-bad", 8, SERVICE_HOST="127.0.0.1")
        seen["containers"] = stack.containers(all=True)
        seen["statuses"] = stack.status_by_address()
        seen["versions"] = stack.versions()
        runs["fixed"] = DEPLOYS[tool](stack, fixed, 60)

    result, _ = load_during(stack.url, bad_then_fixed, requests=8_000)
    bad = runs["bad"]
    assert bad.returncode == 1, f"{bad.stdout}\n{bad.stderr}"
    assert_no_failures(result, 8_000)
    assert "e2e-bad" not in result.versions  # the broken release never got a request

    containers_after: list[Container] = seen["containers"]
    statuses: dict[str, str] = seen["statuses"]
    versions: dict[str, str] = seen["versions"]
    after = {c.id: c for c in containers_after}
    untouched = before if surge else before[1:]
    if tool.startswith("deploy.sh"):
        assert re.search(r"\] not UP on e2e-bad within 8s \(HAProxy status: (DOWN|MAINT)", bad.stderr), bad.stderr
        broken = re.findall(r"--- last log lines of (\w{12}):", bad.stderr)
        assert len(broken) == 1 and broken[0] not in {c.short for c in before}, broken
        assert "event=" in bad.stderr.split("--- last log lines of", 1)[1]  # the agent's own lines
        fate = "it was removed" if surge else "it stays (DOWN in HAProxy, sent nothing) for the next deploy to replace"
        assert (f"[{broken[0]}] not UP on e2e-bad" in bad.stderr
                and f"{fate}; deploy halted, still on the old version: "
                + " ".join(c.short for c in untouched) + "\n" in bad.stderr), bad.stderr
    else:
        assert re.search(r"not ready and UP within [0-9.]+s \(HAProxy status: (DOWN|MAINT)", bad.stderr), bad.stderr
        assert "rollout halted; untouched: " + ", ".join(c.name for c in untouched) + "\n" in bad.stderr
        assert "event=" in bad.stderr.split("last log lines of ", 1)[1]  # the agent's own lines
    if not surge:
        assert before[0].id not in after  # stop-first: the first old one went before its replacement failed
    for container in untouched:
        assert after[container.id].state == "running", container
        assert statuses[container.address] == "UP", (container, statuses)
        assert versions[container.name] == versions_before[container.name], versions
    # After the halt the service still has N containers: a broken surge container was removed
    # (its old one still serves); a broken stop-first replacement stays, sent nothing, for the
    # fix forward to replace.
    leftover = [c for c in containers_after if c.id not in {b.id for b in before}]
    assert len(containers_after) == len(before), containers_after
    assert len(leftover) == (0 if surge else 1), leftover
    assert all(c.state == "running" and versions[c.name] == "e2e-bad" for c in leftover), (leftover, versions)
    assert not any(statuses.get(c.address, "").startswith("UP") for c in leftover), (leftover, statuses)

    fixed_run = runs["fixed"]
    assert fixed_run.returncode == 0, f"{fixed_run.stdout}\n{fixed_run.stderr}"
    stack.version = fixed
    assert set(stack.versions().values()) == {fixed}
    assert {c.id for c in stack.containers(all=True)}.isdisjoint(c.id for c in containers_after)  # all replaced
    stack.wait_up(len(before))  # every container UP, the old ones' rows gone: N again


def test_no_free_slot_deploy_sh_replaces_stop_first_and_rollout_surge_refuses(healthy_stack: ComposeStack) -> None:
    """A surge needs a free server slot for its extra container: with every slot taken
    (ZDH_SLOTS=3, 3 containers), deploy.sh falls back to stop-first and rollout --surge
    refuses before it starts anything."""
    stack = healthy_stack
    stack.compose("up", "-d", "--wait", "haproxy", env={"ZDH_SLOTS": "3"})
    try:
        before = stack.wait_up(3)
        assert len(stack.rows("app")) == 3
        refused = stack.rollout("restart", "--surge", "--version", "e2e-slots")
        assert refused.returncode == 1
        assert "no room for a surge: 3 of the 3 server slots of app in HAProxy hold containers, 1 more needed" \
            in refused.stderr
        assert stack.containers(all=True) == before

        result, deploy = load_during(stack.url, lambda: stack.deploy("e2e-slots"), requests=8_000)
        assert isinstance(deploy, subprocess.CompletedProcess)
        assert deploy.returncode == 0, f"{deploy.stdout}\n{deploy.stderr}"
        stack.version = "e2e-slots"
        assert "all 3 server slots in HAProxy hold the 3 containers: no room for a surge container; " \
               "replacing stop-first" in deploy.stdout
        assert "replacing 3 containers (stop-first)" in deploy.stdout
        assert_no_failures(result, 8_000)
        assert_replaced(stack, before, "e2e-slots")
    finally:
        stack.compose("up", "-d", "--wait", "haproxy")
    stack.wait_up(3)
    assert len(stack.rows("app")) == 10


def worker_pid(stack: ComposeStack) -> str:
    info = stack.haproxy_command("show info")
    return next(line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("Pid: "))


def test_control_a_plain_haproxy_restart_does_fail_requests(healthy_stack: ComposeStack) -> None:
    """The checker sees what a stop of the front door costs: the reload test below means something."""
    stack = healthy_stack

    def restart() -> None:
        stack.compose("restart", "haproxy", timeout=120)
        stack.wait_up(3, timeout=60)

    result, _ = load_during(stack.url, restart, requests=4_000)
    assert result.failed > 0, "a HAProxy restart under load failed nothing: is the checker blind?"


def test_haproxy_reload_usr2_under_load(healthy_stack: ComposeStack) -> None:
    """The official image's reload (master-worker, SIGUSR2 to PID 1): the old worker finishes
    what it has (idle-close-on-response, hard-stop-after), the new one takes new connections.
    Its server slots are empty until its first DNS answer (a few ms): servers-dns.cfg holds a
    request meanwhile (without that hold, 79 of 45,143 requests got 503 <NOSRV> over 8 reloads)."""
    stack = healthy_stack
    haproxy = stack.compose("ps", "-q", "haproxy").stdout.strip()
    pids = [worker_pid(stack)]

    def reloads() -> None:
        for _ in range(8):
            stack.compose("kill", "-s", "USR2", "haproxy")
            deadline = time.monotonic() + 15
            while worker_pid(stack) == pids[-1]:
                assert time.monotonic() < deadline, "no new worker after SIGUSR2"
                time.sleep(0.05)
            pids.append(worker_pid(stack))
            time.sleep(1.0)

    result, _ = load_during(stack.url, reloads, requests=12_000)
    assert len(set(pids)) == 9, pids  # eight reloads, each a new worker
    assert stack.compose("ps", "-q", "haproxy").stdout.strip() == haproxy  # reloaded, not restarted
    assert_no_failures(result, 12_000)
    stack.wait_up(3)


def test_rollout_reload_under_load(healthy_stack: ComposeStack) -> None:
    """`rollout --engine docker reload`: `haproxy -c`, the servers' states handed to the new
    worker (server-state-file), SIGUSR2; three times under strict load."""
    stack = healthy_stack
    haproxy = stack.compose("ps", "-q", "haproxy").stdout.strip()

    def reloads() -> list[subprocess.CompletedProcess[str]]:
        runs = []
        for _ in range(3):
            runs.append(stack.rollout("reload"))
            time.sleep(1.0)
        return runs

    result, runs = load_during(stack.url, reloads, requests=8_000)
    assert isinstance(runs, list)
    workers = []
    for run in runs:
        assert run.returncode == 0, run.stderr
        found = re.search(r"haproxy: reloaded \(master-worker, SIGUSR2\): worker (\d+) -> (\d+)",
                          run.stdout + run.stderr)
        assert found, run.stdout + run.stderr
        workers.append(found.groups())
    assert len({w for pair in workers for w in pair}) == 4, workers  # a new worker each time
    assert stack.compose("ps", "-q", "haproxy").stdout.strip() == haproxy
    assert_no_failures(result, 8_000)
    stack.wait_up(3)
