"""deploy/stack.yml on a real single-node Docker Swarm: two HAProxies, three tasks of `app`.

Under the strict load checker (deploy.check.loadcheck.run_load: nothing is ever re-sent, every
failure counts) on BOTH frontends at once (c=100 each): a release by plain `docker service
update` (Swarm's own rolling update), a release that never gets healthy and that Swarm rolls
back, `rollout --engine swarm` (status, check --restart --report), HAProxy reloads (SIGUSR2,
both HAProxies, three times), and a control: a HAProxy restart (not a reload) does fail the
requests on its own frontend, and only there.

One swarm, one image build and one stack for the module. The swarm is initialised only if this
engine is in none (and left again at the end); the stack has its own name (zdh-swarm-<hex>),
free host ports and its own image tags (zero-downtime-haproxy-app:swarm-*), all removed at the
end, even on failure. Without a Docker engine the tests are skipped, unless CI is set.
Run: .venv/bin/pytest -m docker tests/e2e/test_swarm.py -s
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvloop

from deploy.check.loadcheck import LoadPlan, LoadResult, run_load
from deploy.door import reload_all
from deploy.engines.swarm import APP, HAPROXIES, SwarmEngine, Task, up_everywhere
from tests.conftest import free_port
from tests.e2e.conftest import (
    BUILD_TIMEOUT_S,
    REPO,
    assert_no_failures,
    docker,
    require_docker,
    versions_now,
)

pytestmark = pytest.mark.docker

ROLLOUT = Path(sys.executable).parent / "rollout"
STACK_FILE = REPO / "deploy" / "stack.yml"
IMAGE = "zero-downtime-haproxy-app"
V1, V2, V3, BAD = "swarm-v1", "swarm-v2", "swarm-v3", "swarm-bad"
TAGS = (V1, V2, V3, BAD)
UP_TIMEOUT_S = 180.0
UPDATE_TIMEOUT_S = 300.0
CONCURRENCY = 100  # per frontend: 200 in all


class SwarmStack:
    """deploy/stack.yml deployed as its own stack, on free ports."""

    def __init__(self) -> None:
        self.name = f"zdh-swarm-{secrets.token_hex(4)}"
        self.ports = {var: free_port() for var in ("ZDH_PORT", "ZDH_PORT_B", "ZDH_STATS_PORT", "ZDH_STATS_PORT_B")}
        self.env = {**os.environ, "ZDH_STACK": self.name, "ZDH_IMAGE": IMAGE, "SERVICE_VERSION": V1,
                    **{var: str(port) for var, port in self.ports.items()}}
        for name in ("SERVICE_WARMUP_S", "DRAIN_AGENT_START_TIMEOUT", "ZDH_REPLICAS", "ZDH_SLOTS", "ZDH_HOST",
                     "ROLLOUT_ENGINE", "ROLLOUT_PORT", "ROLLOUT_STATS_PORT", "HAPROXY_IMAGE", "DOCKER_CONTEXT"):
            self.env.pop(name, None)
        self.engine = SwarmEngine(env=self.env)

    @property
    def app(self) -> str:
        return f"{self.name}_{APP}"

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.ports[v]}" for v in ("ZDH_PORT", "ZDH_PORT_B")]

    def deploy(self) -> None:
        """As the stack file's comment says: `docker stack deploy`, then wait until it serves."""
        result = subprocess.run(["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE),
                                 self.name], capture_output=True, text=True, env=self.env, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        self.engine.wait_serving(UP_TIMEOUT_S)

    def down(self) -> None:
        try:
            self.engine.down()
        finally:  # whatever happened above: nothing of ours stays
            if docker("stack", "services", "-q", self.name, check=False).stdout.strip():
                docker("stack", "rm", self.name, check=False)
            with contextlib.suppress(Exception):
                self.engine.wait_network_gone(60)
            if network := self.engine.network_id():
                docker("network", "rm", network, check=False)

    def rollout(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        began = time.monotonic()
        result = subprocess.run([str(ROLLOUT), "--engine", "swarm", *args], capture_output=True, text=True,
                                env=self.env, cwd=REPO, timeout=timeout, check=False)
        print(f"\n$ rollout --engine swarm {' '.join(args)}  (exit {result.returncode}, "
              f"{time.monotonic() - began:.1f}s)\n{result.stderr}{result.stdout}", end="")
        return result

    def live(self) -> list[Task]:
        return [t for t in self.engine.tasks() if t.live]

    def wait_release(self, version: str, timeout: float = 120) -> list[Task]:
        """Until every replica runs `version` (spec and answer) and is UP in both HAProxies, and
        Swarm is not updating any more."""
        deadline = time.monotonic() + timeout
        seen: object = None
        while time.monotonic() < deadline:
            tasks = self.live()
            rows = self.engine.rows()
            status = self.engine.update_status()
            seen = ([(t.name, t.state, t.version, up_everywhere(rows, t.address)) for t in tasks],
                    status and status.state)
            if (len(tasks) == 3 and all(t.state == "running" and t.version == version
                                        and up_everywhere(rows, t.address) for t in tasks)
                    and (status is None or status.state in ("completed", "rollback_completed"))
                    and all(self.engine.version_of(self.engine.instance(t)) == version for t in tasks)):
                return tasks
            time.sleep(0.3)
        raise AssertionError(f"not 3 tasks on {version} UP in both HAProxies within {timeout}s: {seen}")

    def container_logs(self, task: Task) -> str:
        out = docker("logs", task.container, check=False)
        return out.stdout + out.stderr

    def haproxy_logs(self, service: str, since: str) -> str:
        task = self.engine.running_container(service)
        out = docker("logs", "--since", since, task.container, check=False)
        return out.stdout + out.stderr


@pytest.fixture(scope="module")
def swarm() -> Iterator[None]:
    """A single-node swarm: this engine's own if it is a manager already (then left as it
    was), else one initialised here and left at the end, unless someone else's services came
    to run on it meanwhile."""
    require_docker()
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}").stdout.split()
    ours = False
    # `swarm init` also creates docker_gwbridge, which `swarm leave` keeps: ours to remove if it
    # was not there before.
    gwbridge = bool(docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$").stdout.strip())
    if state[0] == "inactive":
        init = docker("swarm", "init", "--advertise-addr", "127.0.0.1", check=False)
        ours = init.returncode == 0
        assert ours or "already part of a swarm" in init.stderr, init.stderr
    elif state != ["active", "true"]:
        pytest.fail(f"this Docker engine is in a swarm but not a manager ({state}): the swarm tests need one",
                    pytrace=False)
    try:
        yield
    finally:
        if ours:
            others = docker("service", "ls", "--format", "{{.Name}}", check=False).stdout.split()
            if others:
                print(f"\nswarm left active: services not ours run on it: {others}")
            else:
                docker("swarm", "leave", "--force", check=False)
                if not gwbridge:
                    docker("network", "rm", "docker_gwbridge", check=False)


@pytest.fixture(scope="module")
def stack(swarm: None) -> Iterator[SwarmStack]:
    """The image built once (the versions are tags of it: the version a task answers is its
    SERVICE_VERSION), one stack for the module."""
    began = time.monotonic()
    docker("build", "--network", "host", "-f", str(REPO / "service" / "Dockerfile"), "-t", f"{IMAGE}:{V1}",
           str(REPO), timeout=BUILD_TIMEOUT_S)
    for tag in TAGS[1:]:
        docker("tag", f"{IMAGE}:{V1}", f"{IMAGE}:{tag}")
    built = time.monotonic()
    swarm_stack = SwarmStack()
    try:
        swarm_stack.deploy()
        print(f"\n[{swarm_stack.name}] image {built - began:.1f}s, deployed and serving in "
              f"{time.monotonic() - built:.1f}s on {swarm_stack.urls}")
        yield swarm_stack
    finally:
        downing = time.monotonic()
        try:
            swarm_stack.down()
            print(f"\n[{swarm_stack.name}] down in {time.monotonic() - downing:.1f}s")
        finally:
            docker("image", "rm", *(f"{IMAGE}:{tag}" for tag in TAGS), check=False)  # untag: layers stay


@pytest.fixture
def serving(stack: SwarmStack) -> SwarmStack:
    """Before each test: 3 tasks, all UP in both HAProxies."""
    stack.engine.wait_serving(120)
    return stack


# -- strict load on both frontends ------------------------------------------------------------


def load_both(urls: list[str], action: Callable[[], object], *, requests: int = 6_000,
              start_after_s: float = 1.0) -> tuple[list[LoadResult], object]:
    """The strict checker on every frontend at once (c=100 each, 20% POSTs, 10% slow GETs) while
    `action` runs in a thread; the load goes on until the action is done."""
    plans = [LoadPlan(url=f"{url}/cms", requests=requests, concurrency=CONCURRENCY, post_share=0.2,
                      slow_share=0.1, slow_ms=200) for url in urls]
    outcome: list[object] = []
    done = threading.Event()

    def run() -> None:
        try:
            time.sleep(start_after_s)
            outcome.append(action())
        except BaseException as exc:  # re-raised below, not lost in the thread
            outcome.append(exc)
        finally:
            done.set()

    async def loads() -> list[LoadResult]:
        return list(await asyncio.gather(*(run_load(plan, keep_going=lambda: not done.is_set())
                                           for plan in plans)))

    thread = threading.Thread(target=run)
    thread.start()
    results = uvloop.run(loads())
    thread.join()
    for url, result in zip(urls, results, strict=True):
        print(f"\nload {url}: {result.total} requests (c={CONCURRENCY}) in {result.elapsed_s:.1f}s, "
              f"{result.failed} failed {dict(result.failures)}, p50 {result.percentile(50):.1f} ms, "
              f"p99 {result.percentile(99):.1f} ms, max {max(result.latencies_ms, default=0):.0f} ms; "
              f"versions {dict(result.versions)}")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return results, outcome[0]


class UpCount:
    """The fewest servers UP in either HAProxy, sampled every 100 ms inside the `with`."""

    def __init__(self, stack: SwarmStack) -> None:
        self.stack = stack
        self.counts: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            rows = self.stack.engine.rows()
            if len(rows) == len(HAPROXIES) and all(rows):
                self.counts.append(min(sum(s.status == "UP" for s in haproxy) for haproxy in rows))

    def __enter__(self) -> UpCount:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def assert_drained_and_exited_cleanly(stack: SwarmStack, tasks: list[Task]) -> None:
    """Each replaced task: its agent's drain ended at zero in both HAProxies (never by its
    timeout) before the app got its SIGTERM, and its container exited 0 (no SIGKILL)."""
    for task in tasks:
        log = stack.container_logs(task)
        assert "event=drain.done" in log and "event=drain.timeout" not in log, (task.name, log[-2000:])
        assert "haproxy-a:8404" in log and "haproxy-b:8404" in log, task.name  # both HAProxies read
        code = docker("inspect", "--format", "{{.State.ExitCode}}", task.container).stdout.strip()
        assert code == "0", (task.name, code)


# -- the tests --------------------------------------------------------------------------------


def test_stack_two_haproxies_each_with_every_task(serving: SwarmStack) -> None:
    stack = serving
    tasks = stack.live()
    assert len(tasks) == 3 and {t.version for t in tasks} == {V1}
    rows = stack.engine.rows()
    assert len(rows) == 2
    for haproxy in rows:  # each task by its address, UP, in both; the other slots empty
        assert sorted(s.addr for s in haproxy if s.addr) == sorted(t.address for t in tasks)
        assert {s.status for s in haproxy if s.addr} == {"UP"}
    for url in stack.urls:
        with httpx.Client(base_url=url, timeout=5) as client:
            answers = [client.get("/cms").json() for _ in range(9)]
            assert client.get("/version").status_code == 404  # not served through the frontend
        assert {a["instance"] for a in answers} == {t.container[:12] for t in tasks}
    for service in HAPROXIES:  # the Runtime API is on each HAProxy's own loopback, not published
        spec = stack.engine.require_service(service)["Spec"]
        published = {p["TargetPort"]: p["PublishMode"] for p in spec["EndpointSpec"]["Ports"]}
        assert published == {8785: "host", 8404: "host"}
        assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    spec = stack.engine.require_service(APP)["Spec"]
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    assert spec["UpdateConfig"]["Order"] == "start-first" and spec["UpdateConfig"]["FailureAction"] == "rollback"
    assert spec["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 100 * 10**9


def test_release_by_docker_service_update_under_load_on_both_frontends(serving: SwarmStack) -> None:
    """The release is Swarm's own rolling update, i.e. plain task restarts: 0 failed on both."""
    stack = serving
    old = stack.live()

    def release() -> float:
        began = time.monotonic()
        result = subprocess.run(
            ["docker", "service", "update", "--detach=false", "--no-resolve-image", "--image", f"{IMAGE}:{V2}",
             "--env-add", f"SERVICE_VERSION={V2}", stack.app],
            capture_output=True, text=True, timeout=UPDATE_TIMEOUT_S, check=False)
        assert result.returncode == 0, result.stderr
        stack.wait_release(V2)
        return time.monotonic() - began

    with UpCount(stack) as up:
        results, seconds = load_both(stack.urls, release)
    print(f"update to {V2}: {seconds:.1f}s; fewest servers UP in a HAProxy: {min(up.counts)}")
    for result, url in zip(results, stack.urls, strict=True):
        assert_no_failures(result, 6_000)
        assert set(result.versions) == {V1, V2}
        assert versions_now(url) == {V2}
    status = stack.engine.update_status()
    assert status is not None and status.state == "completed", status
    new = stack.live()
    assert not {t.id for t in new} & {t.id for t in old}
    assert {t.image for t in new} == {f"{IMAGE}:{V2}"}
    assert_drained_and_exited_cleanly(stack, old)
    assert min(up.counts) >= 2  # start-first: never more than the one draining task out


def test_release_that_never_gets_healthy_is_rolled_back_by_swarm(serving: SwarmStack) -> None:
    """A release whose app never gets ready: its first task never gets healthy, so it is never in
    the DNS and HAProxy never sends it a request; Swarm fails it and rolls the update back."""
    stack = serving
    before = stack.live()
    version = before[0].version
    assert version is not None

    def bad_release() -> float:
        began = time.monotonic()
        docker("service", "update", "--detach", "--no-resolve-image", "--image", f"{IMAGE}:{BAD}",
               "--env-add", f"SERVICE_VERSION={BAD}", "--env-add", "SERVICE_WARMUP_S=600",
               "--health-start-period", "3s", "--health-retries", "2", stack.app)
        deadline = time.monotonic() + UPDATE_TIMEOUT_S
        while (status := stack.engine.update_status()) is None or status.state != "rollback_completed":
            assert time.monotonic() < deadline, status
            assert status is None or status.state not in ("paused", "rollback_paused"), status
            time.sleep(0.3)
        stack.wait_release(version)
        return time.monotonic() - began

    results, seconds = load_both(stack.urls, bad_release, requests=4_000)
    status = stack.engine.update_status()
    print(f"bad release rolled back in {seconds:.1f}s: {status}")
    for result in results:
        assert_no_failures(result, 4_000)
        assert set(result.versions) == {version}  # the bad release served nothing
    assert status is not None and "rollback" in status.message, status
    bad = [t for t in stack.engine.tasks() if t.version == BAD]
    assert bad and all(not t.live for t in bad), bad
    spec = stack.engine.require_service(APP)["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert f"SERVICE_VERSION={version}" in spec["Env"] and "SERVICE_WARMUP_S=600" not in spec["Env"]
    assert spec["Healthcheck"]["Retries"] == 5  # the stack's own, back


def test_rollout_on_swarm_status_and_check_with_restart_and_report(serving: SwarmStack, tmp_path: Path) -> None:
    """`rollout --engine swarm`: status, then the same proof as on the other engines: the strict
    checker with a restart (here Swarm's update) in the middle, and the report's timeline with
    each task's own events (drain, drained, stopped, started, up) read from the agents' logs."""
    stack = serving
    status = stack.rollout("status")
    assert status.returncode == 0, status.stderr
    tasks = stack.live()
    assert status.stdout.splitlines()[0].split()[:3] == ["SERVER", "HAPROXY-A", "HAPROXY-B"], status.stdout
    for task in tasks:  # UP in both HAProxies
        assert any(line.split()[:3] == [task.name, "UP", "UP"] and line.split()[-1] == task.version
                   for line in status.stdout.splitlines()), status.stdout

    report = tmp_path / "report"
    check = stack.rollout("check", "-n", "6000", "-c", "100", "--restart", "--version", V3,
                          "--report", str(report))
    assert check.returncode == 0, check.stderr
    assert "failed     0" in check.stdout
    data = json.loads((report / "report.json").read_text())
    assert data["failed"] == 0 and data["restart"]["error"] is None, data["restart"]
    assert (report / "timeline.png").stat().st_size > 10_000
    ready = [e for e in data["events"] if e["event"] == "ready"]
    assert len(ready) == 3 and len(data["restart"]["seconds"]) == 3, data["events"]
    marks = {(e["instance"], e["event"]) for e in data["instance_events"]}
    for task in tasks:  # each replaced task's own drain, read back from its (stopped) container
        assert {(task.name, name) for name in ("drain", "drained", "stopped")} <= marks, (task.name, marks)
    assert sum(1 for _, name in marks if name == "up") >= 3
    stack.wait_release(V3)


def test_rollout_restart_on_swarm_says_swarm_rolled_back_a_release_that_never_gets_ready(
    serving: SwarmStack,
) -> None:
    """Through rollout this time: the app never gets ready, its agent gives up after its start
    timeout (exit 3), Swarm fails the task and rolls back; rollout says so and exits 1."""
    stack = serving
    version = stack.live()[0].version
    assert version is not None
    results, restart = load_both(stack.urls, lambda: stack.rollout(
        "restart", "--version", BAD, "--env", "SERVICE_WARMUP_S=600", "--env", "DRAIN_AGENT_START_TIMEOUT=5"),
        requests=3_000)
    assert isinstance(restart, subprocess.CompletedProcess)
    assert restart.returncode == 1, restart.stderr
    assert "Swarm rolled the update back" in restart.stderr
    assert "] failed task: non-zero exit (3)" in restart.stderr  # the agent's start timeout
    for result in results:
        assert_no_failures(result, 3_000)
        assert set(result.versions) == {version}
    stack.wait_release(version)


def test_rollout_deploy_on_swarm_rolls_back_a_release_that_crashes_after_up(serving: SwarmStack) -> None:
    """The release gets ready, then exits 2 s after every start: Swarm's monitor (the stack's
    5 s) sees the task fail and its failure_action rolls the update back; rollout says so."""
    stack = serving
    version = stack.live()[0].version
    assert version is not None
    results, run = load_both(stack.urls, lambda: stack.rollout(
        "deploy", "e2e-crash", "--env", "SERVICE_FAULT_CRASH_AFTER_S=2"), requests=3_000)
    assert isinstance(run, subprocess.CompletedProcess)
    assert run.returncode == 1, run.stderr
    assert "Swarm rolled the update back" in run.stderr
    stack.wait_release(version)
    # Known and open: while Swarm's own monitor and rollback handle a crash loop, HAProxy may
    # have no usable task for a while and answer 503 (one CI run: 3,400 of 38,542; another: 0).
    # What holds: no connection is reset by HAProxy; a request the crash cut is never re-sent
    # (the app may have done its work): a 502, or on a kept-alive client connection past its
    # first request, HAProxy's silent close (which lets a client re-send what it safely can);
    # and the old version serves after.
    for result in results:
        assert set(result.failures) <= {"http 503", "http 502", "closed without response"}, dict(result.failures)
        print(f"Swarm's rollback of a crash loop: {result.failed} of {result.total} failed")


def test_rollout_undo_on_swarm_is_swarms_own_rollback_under_load(serving: SwarmStack) -> None:
    stack = serving
    before = stack.live()[0].version
    assert before is not None
    deployed = stack.rollout("deploy", "e2e-undo")
    assert deployed.returncode == 0, deployed.stderr
    stack.wait_release("e2e-undo")
    results, run = load_both(stack.urls, lambda: stack.rollout("undo"), requests=3_000)
    assert isinstance(run, subprocess.CompletedProcess)
    assert run.returncode == 0, run.stderr
    assert f"Swarm's rollback of {stack.name}_app to its previous spec ({before})" in run.stderr
    for result in results:
        assert_no_failures(result, 3_000)
    stack.wait_release(before)


def test_haproxy_reloads_under_load_fail_nothing(serving: SwarmStack) -> None:
    """Three reloads of both HAProxies (master-worker, SIGUSR2, listeners handed over): each a
    new worker, no task restarted, nothing failed on either frontend.

    Known bug while haproxy/servers-dns.cfg has no hold for an empty backend (as in the compose
    test): a new worker starts with every slot empty until its first DNS answer and answers
    503 <NOSRV> meanwhile. Such 503s (and only those) make this an xfail."""
    stack = serving
    tasks = {service: stack.engine.running_container(service).id for service in HAPROXIES}
    since = docker("info", "--format", "{{json .SystemTime}}").stdout.strip().strip('"')
    reloads: list[str] = []

    def reload_three_times() -> None:
        for _ in range(3):
            reloads.extend(reload_all(stack.engine))
            time.sleep(1.0)

    results, _ = load_both(stack.urls, reload_three_times, requests=5_000)
    print("\n" + "\n".join(reloads))
    assert len(reloads) == 6
    assert {s: stack.engine.running_container(s).id for s in HAPROXIES} == tasks  # reloaded, not restarted
    failed = sum(r.failed for r in results)
    holds = "nbsrv" in (REPO / "haproxy" / "servers-dns.cfg").read_text()
    if failed and not holds and all(set(r.failures) <= {"http 503"} for r in results):
        nosrv = sum(line.count("<NOSRV>") for s in HAPROXIES for line in stack.haproxy_logs(s, since).splitlines()
                    if " 503 " in line)
        assert nosrv >= failed, (nosrv, failed)
        pytest.xfail(f"{failed} requests got 503 <NOSRV> from new workers with empty server slots over "
                     "6 reloads: haproxy/servers-dns.cfg needs a hold for an empty backend")
    for result in results:
        assert_no_failures(result, 5_000)


def test_control_a_haproxy_restart_fails_its_own_frontend_only(serving: SwarmStack) -> None:
    """What a restart (not a reload) of one HAProxy costs: the requests on its own frontend while
    it is away; the other HAProxy fails nothing. A client that can use both (DNS with both
    addresses and a retry on connect, or a load balancer with health checks in front) never
    notices; this checker never re-sends, so it sees the cost."""
    stack = serving

    def restart_a() -> None:
        result = subprocess.run(["docker", "service", "update", "--force", "--detach=false",
                                 f"{stack.name}_{HAPROXIES[0]}"],
                                capture_output=True, text=True, timeout=UPDATE_TIMEOUT_S, check=False)
        assert result.returncode == 0, result.stderr
        stack.engine.wait_serving(120)

    results, _ = load_both(stack.urls, restart_a, requests=4_000)
    assert results[0].failed > 0, "a HAProxy restart under load failed nothing: is the checker blind?"
    assert_no_failures(results[1], 4_000)
