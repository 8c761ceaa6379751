"""The compose stacks as fixtures: real stacks under their own project names, ports and images.

Nothing here clashes with a demo someone left running (`docker compose up` from the repo
root) or with another test run: the project is `zdh-test-<random>`, the host ports are free
ones, and the image is tagged `<project>-app:<version>`. Teardown always runs `docker compose
down -v` and removes those tags (the layers stay cached). Without a Docker engine the tests
are skipped, unless CI is set: then they fail.

The app service is scaled (`app`, or `blue` and `green`): a container is known by its name and
its address, and HAProxy's row for it is found by that address (server-template slots filled
by Docker's DNS), as its drain-agent and the deploy tools find it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent.haproxy import ServerStat, parse_stat_csv
from deploy.check.loadcheck import LoadResult
from deploy.engines.compose import DockerEngine
from tests.conftest import free_port
from tests.conftest import load_during as shared_load_during

REPO = Path(__file__).resolve().parents[2]
DEPLOY_SH = REPO / "deploy" / "deploy.sh"
ROLLOUT = Path(sys.executable).parent / "rollout"
COMPOSE_FILE = REPO / "docker-compose.yml"
BLUEGREEN_FILE = REPO / "docker-compose.bluegreen.yml"
BUILD_TIMEOUT_S = 600  # cold: the dependencies come from PyPI
UP_TIMEOUT_S = 180
APP_PORT = 8000
AGENT_PORT = 9200


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


def docker(*args: str, timeout: float = 60, check: bool = True,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                            check=False, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


# -- strict load -------------------------------------------------------------------------------


def load_during(url: str, action: Callable[[], object] | None, *, requests: int = 12_000,
                concurrency: int = 100, post_share: float = 0.2, slow_share: float = 0.1,
                slow_ms: int = 200, start_after_s: float = 1.0) -> tuple[LoadResult, object]:
    """Strict load (deploy.check.loadcheck.run_load: no retries, every request counted) on
    `url`/cms while `action` runs in a thread; the load goes on until the action is done.

    tests.conftest.load_during, with this module's defaults, and a line about the load."""
    result, outcome = shared_load_during(url, action, requests=requests, start_after_s=start_after_s,
                                         slow_ms=slow_ms, concurrency=concurrency, post_share=post_share,
                                         slow_share=slow_share)
    print(f"\nload: {result.total} requests (c={concurrency}) in {result.elapsed_s:.1f}s, "
          f"{result.failed} failed {dict(result.failures)}, p50 {result.percentile(50):.1f} ms, "
          f"p99 {result.percentile(99):.1f} ms, max {max(result.latencies_ms, default=0):.0f} ms; "
          f"versions {dict(result.versions)}")
    return result, outcome


def assert_no_failures(result: LoadResult, requests: int) -> None:
    assert result.total >= requests, result.total
    assert result.failed == 0, dict(result.failures)
    assert set(result.kinds) == {"get", "get-slow", "post"}, result.kinds


def versions_now(url: str, count: int = 30) -> set[str]:
    """The versions that answer `count` sequential GETs on the frontend, after a deploy.
    (Not "the load's last second": the last old instance's drain may finish its own requests
    in that second, as it should.)"""
    with httpx.Client(base_url=url, timeout=5) as client:
        return {client.get("/cms").json()["version"] for _ in range(count)}


# -- docker events ------------------------------------------------------------------------------


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

    def assert_clean_stops(self, container_ids: list[str]) -> None:
        """Each container got SIGTERM only (no SIGKILL) and exited 0: its agent drained and
        the app stopped on its own, long before Docker's stop_grace_period ran out."""
        for container in container_ids:
            kills = self.of(container, "kill")
            assert kills and {k.get("signal") for k in kills} == {"15"}, (container[:12], kills)
            dies = self.of(container, "die")
            assert [d.get("exitCode") for d in dies] == ["0"], (container[:12], dies)


# -- the stack ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    service: str
    address: str  # ip:8000, as HAProxy's row and the agent know it
    created: str
    state: str  # running, paused, exited...

    @property
    def short(self) -> str:
        """The first 12 hex digits: the container's hostname, the app's `instance`, and how
        deploy.sh names it."""
        return self.id[:12]

    @property
    def ip(self) -> str:
        return self.address.rpartition(":")[0]


class ComposeStack:
    """One compose file under a test project; every call has a timeout."""

    services: tuple[str, ...] = ("app",)

    def __init__(self, compose_file: Path = COMPOSE_FILE, prefix: str = "zdh-test") -> None:
        self.compose_file = compose_file
        self.project = f"{prefix}-{secrets.token_hex(4)}"
        self.port = free_port()
        self.stats_port = free_port()
        self.image = f"{self.project}-app"
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_FILE": str(compose_file),  # also tells `rollout` which of the two stacks
            "ZDH_PORT": str(self.port),
            "ZDH_STATS_PORT": str(self.stats_port),
            "ZDH_IMAGE": self.image,
            "SERVICE_VERSION": "e2e-v1",
            # Every deploy is watched, for 3 s after it here (the default 10 s is tested locally).
            "ROLLOUT_WATCH_FOR": "3",
            "DEPLOY_WATCH": "3",
        }
        for name in ("SERVICE_WARMUP_S", "SERVICE_HOST", "DRAIN_AGENT_START_TIMEOUT", "DEPLOY_TIMEOUT",
                     "ZDH_BIND", "ZDH_COLOR_DIR", "BLUE_VERSION", "GREEN_VERSION", "ROLLOUT_ENGINE",
                     "ROLLOUT_PORT", "ROLLOUT_STATS_PORT", "COMPOSE_PROFILES"):
            self.env.pop(name, None)
        self._engine: DockerEngine | None = None

    # -- commands --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}/stats;csv;norefresh"

    @property
    def version(self) -> str:
        """The version compose would give a new container (SERVICE_VERSION): kept equal to the
        running one after each deploy, as the compose file's comment asks of users."""
        return self.env["SERVICE_VERSION"]

    @version.setter
    def version(self, value: str) -> None:
        self.env["SERVICE_VERSION"] = value

    @property
    def engine(self) -> DockerEngine:
        if self._engine is None:
            self._engine = DockerEngine(env=self.env, blue_green=self.compose_file == BLUEGREEN_FILE)
        return self._engine

    def compose(self, *args: str, timeout: float = 120, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["docker", "compose", *args], capture_output=True, text=True,
                                env={**self.env, **(env or {})}, cwd=REPO, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def deploy(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        """./deploy/deploy.sh [args], as a user would run it (with this stack's variables)."""
        began = time.monotonic()
        result = subprocess.run([str(DEPLOY_SH), *args], capture_output=True, text=True,
                                env={**self.env, **env}, cwd=REPO, timeout=timeout, check=False)
        print(f"\n$ deploy.sh {' '.join(args)}  (exit {result.returncode}, "
              f"{time.monotonic() - began:.1f}s)\n{result.stdout}{result.stderr}", end="")
        return result

    def rollout(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        began = time.monotonic()
        result = subprocess.run([str(ROLLOUT), "--engine", "docker", *args], capture_output=True,
                                text=True, env={**self.env, **env}, cwd=REPO, timeout=timeout,
                                check=False)
        print(f"\n$ rollout --engine docker {' '.join(args)}  (exit {result.returncode}, "
              f"{time.monotonic() - began:.1f}s)\n{result.stderr}{result.stdout}", end="")
        return result

    def up(self) -> None:
        self.compose("build", self.services[0], timeout=BUILD_TIMEOUT_S)  # once: the rest hit the cache
        self.compose("up", "-d", "--wait", timeout=UP_TIMEOUT_S)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=180, check=False)
        tags = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
                      "--filter", f"reference={self.image}", check=False).stdout.split()
        if tags:  # untag only: the layers stay cached for the next run
            docker("image", "rm", *tags, check=False)

    def logs(self, *services: str, tail: int = 40) -> str:
        return self.compose("logs", "--tail", str(tail), *services, check=False).stdout

    # -- containers --------------------------------------------------------------------------

    def containers(self, service: str | None = None, all: bool = False) -> list[Container]:
        """The service's containers (running and paused; `all`: stopped ones too), oldest first."""
        found: list[Container] = []
        for name in (service,) if service else self.services:
            ids = self.compose("ps", "-q", *(["-a"] if all else []), name).stdout.split()
            found += self.inspect(ids, name)
        return sorted(found, key=lambda c: c.created)

    def inspect(self, ids: list[str], service: str) -> list[Container]:
        if not ids:
            return []
        template = ("{{.Id}} {{.Name}} {{.Created}} {{.State.Status}} "
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")
        rows = []
        for line in docker("inspect", "--format", template, *ids).stdout.splitlines():
            cid, name, created, state, *ips = line.split()
            rows.append(Container(cid, name.lstrip("/"), service, f"{ips[0] if ips else '?'}:{APP_PORT}",
                                  created, state))
        return rows

    def container_ids(self, service: str | None = None, all: bool = True) -> set[str]:
        return {c.id for c in self.containers(service, all=all)}

    def exec(self, container: Container | str, *command: str, input: str | None = None,
             user: str | None = None) -> str:
        name = container.name if isinstance(container, Container) else container
        return docker("exec", "-i", *(["-u", user] if user else []), name, *command,
                      input=input, timeout=60).stdout

    def version_of(self, container: Container) -> str:
        """What the app in the container answers on /version ('?' if it does not)."""
        answer = docker("exec", container.name, "python", "-c",
                        "import json, urllib.request as u; print(json.load(u.build_opener("
                        "u.ProxyHandler({})).open('http://127.0.0.1:8000/version', timeout=2))"
                        "['version'])", check=False)
        return answer.stdout.strip() if answer.returncode == 0 else "?"

    def versions(self, service: str | None = None) -> dict[str, str]:
        return {c.name: self.version_of(c) for c in self.containers(service)}

    # -- HAProxy ----------------------------------------------------------------------------

    def stats_rows(self) -> list[dict[str, str]]:
        """Every row of the published stats CSV (frontends and backends too), as dicts."""
        text = httpx.get(self.stats_url, timeout=3).text
        header, _, body = text.partition("\n")
        return list(csv.DictReader(io.StringIO(body), fieldnames=header[2:].split(",")))

    def rows(self, backend: str | None = None) -> list[ServerStat]:
        text = httpx.get(self.stats_url, timeout=3).text
        return [r for r in parse_stat_csv(text) if backend is None or r.backend == backend]

    def status_by_address(self, backend: str = "app") -> dict[str, str]:
        """HAProxy's status per server address (rows of empty slots left out)."""
        found: dict[str, str] = {}
        for row in self.rows(backend):
            if row.addr:
                assert row.addr not in found, f"two rows with address {row.addr}: {self.rows(backend)}"
                found[row.addr] = row.status
        return found

    def wait_up(self, count: int, service: str = "app", timeout: float = 60,
                backend: str | None = None) -> list[Container]:
        """Until the service has `count` running containers and HAProxy has each UP (by address),
        with no other row of the backend holding an address."""
        deadline = time.monotonic() + timeout
        seen: object = None
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                containers = self.containers(service)
                statuses = self.status_by_address(backend or service)
                seen = (sorted(c.address for c in containers), statuses)
                if (len(containers) == count and all(c.state == "running" for c in containers)
                        and statuses == {c.address: "UP" for c in containers}):
                    return containers
            time.sleep(0.2)
        raise AssertionError(f"not {count} containers of {service} UP within {timeout}s: {seen}"
                             f"{self.dns_diagnosis(service)}")

    def dns_diagnosis(self, service: str) -> str:
        """Whether Docker's embedded DNS still answers in the HAProxy container: a `docker swarm
        init`/`leave` on the same engine breaks it for running bridge-network containers
        (moby/moby#45144), and then no server slot is ever filled again."""
        answer = self.compose("exec", "-T", "haproxy", "getent", "hosts", service, check=False, timeout=30)
        if answer.returncode == 0:
            return ""
        swarm = docker("info", "--format", "{{.Swarm.LocalNodeState}}", check=False).stdout.strip()
        return (f"\nDocker's embedded DNS does not resolve {service!r} in the haproxy container "
                f"(getent exit {answer.returncode}; this engine's swarm state: {swarm}): a swarm "
                "init/leave on this engine while the stack ran breaks it (moby/moby#45144)")

    def haproxy_command(self, line: str) -> str:
        """A Runtime API command as an operator sends it: inside the haproxy container."""
        return self.engine.haproxy_command(line)

    def answered_by(self, count: int = 30) -> tuple[set[str], set[str]]:
        """(instances, versions) that answered `count` sequential GETs on the frontend."""
        with httpx.Client(base_url=self.url, timeout=5) as client:
            answers = [client.get("/cms").json() for _ in range(count)]
        return {a["instance"] for a in answers}, {a["version"] for a in answers}

    # -- repair between tests ----------------------------------------------------------------

    def ensure(self, count: int = 3, service: str = "app") -> list[Container]:
        """`count` containers of the service UP on the stack's version; a test that failed
        half-way (paused or broken containers, a different scale) is repaired first."""
        self.sync_version(service)
        try:
            return self.wait_up(count, service, timeout=10)
        except AssertionError:
            pass
        for container in self.containers(service, all=True):
            if container.state == "paused":
                docker("unpause", container.name, check=False)
        with contextlib.suppress(AssertionError):
            return self.wait_up(count, service, timeout=10)
        statuses = self.status_by_address(service)
        for container in self.containers(service, all=True):  # broken, stopped: not ours to keep
            if statuses.get(container.address) != "UP":
                print(f"repair: removing {container.name} ({container.state}, "
                      f"{statuses.get(container.address, 'no row')})")
                docker("rm", "-f", container.name, check=False)
        self.compose("up", "-d", "--wait", "--scale", f"{service}={count}", timeout=UP_TIMEOUT_S)
        return self.wait_up(count, service, timeout=60)

    def sync_version(self, service: str = "app") -> None:
        """Set the service's version variable to what its containers run, when they agree: a
        test that failed after a deploy must not leave a stale one (compose would then
        recreate every container on the next `up`)."""
        variable = "SERVICE_VERSION" if service == "app" else f"{service.upper()}_VERSION"
        found = set()
        for container in self.containers(service):
            env = json.loads(docker("inspect", "--format", "{{json .Config.Env}}", container.name).stdout)
            found |= {item.partition("=")[2] for item in env if item.startswith("SERVICE_VERSION=")}
        if len(found) == 1:
            self.env[variable] = found.pop()


def swarm_node() -> str:
    """This engine's swarm node id ('' outside a swarm)."""
    return docker("info", "--format", "{{.Swarm.NodeID}}", check=False).stdout.strip()


SWARM_CHANGES: list[str] = []


@pytest.fixture(autouse=True)
def note_swarm_changes(request: pytest.FixtureRequest) -> Iterator[None]:
    """A `docker swarm leave` on this engine while a compose stack runs breaks Docker's embedded
    DNS for its containers (moby/moby#45144): HAProxy's slots, the agents' stats reads and the
    tests' waits then fail for a reason outside the project. Note it, for the summary."""
    before = swarm_node() if "docker" in request.keywords else ""
    yield
    if "docker" in request.keywords and (after := swarm_node()) != before:
        SWARM_CHANGES.append(f"{request.node.nodeid}: swarm node {before or '-'} -> {after or '-'}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SWARM_CHANGES:
        terminalreporter.write_sep("=", "this engine's swarm changed during these tests", yellow=True)
        terminalreporter.write_line("Docker's embedded DNS breaks for running bridge-network containers on "
                                    "`docker swarm leave` (moby/moby#45144); failures in these tests may "
                                    "come from that:")
        for line in SWARM_CHANGES:
            terminalreporter.write_line(f"  {line}")


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeStack]:
    """docker-compose.yml, 3 containers of app, for the whole module."""
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
    """Before each test: 3 containers, all UP in HAProxy."""
    stack.ensure(3)
    return stack


# -- probes from inside an app container --------------------------------------------------------

# Runs in an app container (python3, stdlib only): connects to every target and sends every
# payload, then reports what came back. Nothing here needs more than the container's own rights.
PROBE_SCRIPT = r"""
import json, os, socket, stat, sys
plan = json.loads(sys.stdin.read())

def talk(family, address, data):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(plan["timeout"])
    try:
        sock.connect(address)
    except OSError as exc:
        sock.close()
        return {"connected": False, "error": f"{type(exc).__name__}: {exc}"}
    sent, reply, end = True, b"", "closed"
    try:
        sock.sendall(data.encode("latin-1"))
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        sent = f"{type(exc).__name__}"
    try:
        while len(reply) < 65536:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    except TimeoutError:
        end = "timeout"
    except OSError as exc:
        end = type(exc).__name__
    sock.close()
    return {"connected": True, "sent": sent, "reply": reply.decode("latin-1")[:4000], "end": end}

unix = set()
with open("/proc/net/unix") as table:
    for line in table.read().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8:
            unix.add(fields[7])
for root, dirs, files in os.walk("/"):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
    for name in files:
        path = os.path.join(root, name)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                unix.add(path)
        except OSError:
            pass

results = []
for host, port in plan["tcp"]:
    for payload in plan["payloads"]:
        results.append({"target": f"{host}:{port}", "payload": payload,
                        **talk(socket.AF_INET, (host, port), payload)})
for path in sorted(unix):
    address = "\0" + path[1:] if path.startswith("@") else path
    for payload in plan["payloads"]:
        results.append({"target": f"unix:{path}", "payload": payload,
                        **talk(socket.AF_UNIX, address, payload)})
print(json.dumps({"uid": os.getuid(), "unix": sorted(unix), "results": results}))
"""


def probe_from(stack: ComposeStack, container: Container, tcp: list[tuple[str, int]],
               payloads: list[str], timeout: float = 2.0) -> dict[str, object]:
    plan = {"tcp": tcp, "payloads": payloads, "timeout": timeout}
    out = stack.exec(container, "python", "-c", PROBE_SCRIPT, input=json.dumps(plan))
    return dict(json.loads(out))


def cli_answered(reply: str) -> bool:
    """Whether a reply came from HAProxy's Runtime API (any level), not from an HTTP listener.

    A CLI answers a command with plain text lines (`show info`: "Name: HAProxy", "Pid: ...";
    a refused one: "Permission denied", "Unknown command"); an HTTP listener answers HTTP or
    closes. An HTTP answer that is an admin action's success (the stats page's `st=DONE`)
    counts too."""
    if reply.startswith("HTTP/1."):
        return "st=DONE" in reply or "st=PART" in reply
    return reply.strip() != "" or reply == "\n"


def listening_ports(stack: ComposeStack, service: str = "haproxy") -> dict[int, str]:
    """TCP ports a container listens on (port -> local address as hex), from its /proc/net/tcp{,6}."""
    ports: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        text = stack.compose("exec", "-T", service, "cat", table).stdout
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # LISTEN
                address, _, port = fields[1].rpartition(":")
                ports[int(port, 16)] = address
    return ports


def hex_ipv4(address: str) -> str:
    """/proc/net/tcp's little-endian hex address as dotted quad."""
    return ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)) if len(address) == 8 else address


class StateWatch:
    """Every server's and frontend's status and weight, sampled every 20 ms from the stats CSV,
    and HAProxy's own log lines over the same time: a change that an agent's next `ready`
    undoes within 100 ms is still seen."""

    CHANGES = ("maintenance", "administratively", "changed its weight", "changed its IP",
               "stopped", "Stopping", "is going DOWN", "enters drain", "Proxy web")

    def __init__(self, stack: ComposeStack) -> None:
        self.stack = stack
        self.samples: list[dict[tuple[str, str], tuple[str, str]]] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.since = ""

    def snapshot(self) -> dict[tuple[str, str], tuple[str, str]]:
        return {(r["pxname"], r["svname"]): (r["status"], r["weight"]) for r in self.stack.stats_rows()}

    def run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(httpx.HTTPError):
                self.samples.append(self.snapshot())
            time.sleep(0.02)

    def __enter__(self) -> StateWatch:
        self.since = docker("info", "--format", "{{json .SystemTime}}").stdout.strip().strip('"')
        self.samples.append(self.snapshot())
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # an agent-check period and a bit: a change would show by now
        self.stop_event.set()
        self.thread.join(timeout=5)
        self.samples.append(self.snapshot())

    def changes(self) -> list[str]:
        first = self.samples[0]
        seen = [f"{key}: {first.get(key)} -> {value}" for sample in self.samples[1:]
                for key, value in sample.items() if first.get(key) != value]
        return sorted(set(seen))

    def log_lines(self) -> list[str]:
        container = self.stack.compose("ps", "-q", "haproxy").stdout.strip()
        logs = docker("logs", "--since", self.since, container, check=False)
        return [line for line in (logs.stdout + logs.stderr).splitlines()
                if any(word in line for word in self.CHANGES)]


class UpCount:
    """How many servers of a backend HAProxy has UP, sampled every 50 ms inside the `with`."""

    def __init__(self, stack: ComposeStack, backend: str = "app") -> None:
        self.stack = stack
        self.backend = backend
        self.counts: list[int] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(httpx.HTTPError):
                self.counts.append(sum(r.status == "UP" for r in self.stack.rows(self.backend)))
            time.sleep(0.05)

    def __enter__(self) -> UpCount:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)

    @property
    def low(self) -> int:
        return min(self.counts)
