"""The swarm engine: the same `rollout` commands over deploy/stack.yml on Docker Swarm.

The stack (`docker stack deploy -c deploy/stack.yml zdh`) has three services: `app` (N tasks, each
run by drain-agent as PID 1, found by HAProxy as `tasks.app`, endpoint mode dnsrr) and two
HAProxies, `haproxy-a` and `haproxy-b`, each publishing its frontend and stats in host mode.
An instance is a task; HAProxy knows it by its address on the stack's overlay network, as its
agent does.

Swarm replaces tasks itself, so there is no per-instance restart here: `replace`, `add` and
`retire` refuse, and a restart is Swarm's own rolling update (`docker service update`), run
and watched by deploy.strategies.service_update. What Swarm does on a task's stop, and why
the stack holds an address that left the DNS (HAPROXY_DNS_HOLD_OBSOLETE), is in
docs/swarm.md.

Everything goes through the `docker` CLI (so DOCKER_HOST and contexts apply). What needs a
container (`docker exec`: a version, HAProxy's Runtime API, a reload) works for the tasks on
this node; a task on another node answers with its configured version and `docker service
logs`, and HAProxies elsewhere are reloaded on their own nodes (docs/swarm.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.errors import HAProxyError
from agent.haproxy import ServerStat, StatsPage
from deploy.engines.base import BACKEND, Finished, Instance, Release, check_version
from deploy.engines.compose_access import RUNTIME_API_SCRIPT, STATE_DUMP_SCRIPT
from deploy.errors import RolloutError

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_FILE = REPO_ROOT / "deploy" / "stack.yml"
DOCKERFILE = REPO_ROOT / "service" / "Dockerfile"
DEFAULT_STACK = "zdh"
APP = "app"
HAPROXIES = ("haproxy-a", "haproxy-b")
NETWORK = "zdh"  # the stack's overlay network (deploy/stack.yml), named <stack>_zdh by Swarm
DEFAULT_IMAGE = "zero-downtime-haproxy-app"
APP_PORT = 8000  # inside each app task
FRONTEND_PORT = 8785  # inside each HAProxy task; published in host mode
STATS_PORT = 8404
# What the stack file publishes each HAProxy port on: (variable, its default).
PUBLISHED = {
    ("haproxy-a", FRONTEND_PORT): ("ZDH_PORT", 8785), ("haproxy-a", STATS_PORT): ("ZDH_STATS_PORT", 8404),
    ("haproxy-b", FRONTEND_PORT): ("ZDH_PORT_B", 8786), ("haproxy-b", STATS_PORT): ("ZDH_STATS_PORT_B", 8405),
}
STOP_GRACE_S = 100.0  # the app's stop_grace_period: > drain 70 s + app stop 25 s
UP_TIMEOUT_S = 180.0
BUILD_TIMEOUT_S = 600.0
QUICK_TIMEOUT_S = 20.0
RELOAD_TIMEOUT_S = 15.0
POLL_S = 0.2
LIVE = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")


def timestamp(text: str) -> float:
    """Docker's RFC 3339 time (nanoseconds, Z) as seconds since the epoch; 0 when unset."""
    if not text or text.startswith("0001-"):
        return 0.0
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text)).timestamp()


@dataclass(frozen=True)
class Task:
    """One Swarm task of a service, as `docker inspect --type task` shows it."""

    id: str
    service: str  # app, haproxy-a, haproxy-b (without the stack's prefix)
    slot: int
    state: str  # Swarm's task state: starting, running, shutdown, failed, rejected...
    desired: str  # running, shutdown...
    created: float
    changed: float  # the last state change
    image: str
    env: dict[str, str]
    address: str  # ip:port on the stack's network ("" before one is assigned)
    container: str  # container id ("" before the container exists)
    node: str
    error: str

    @property
    def name(self) -> str:
        """Its name in rollout's output: service, slot and the first 10 characters of the task id
        (`docker service ps --no-trunc` shows the whole id; the container is named
        <stack>_<service>.<slot>.<task id>)."""
        return f"{self.service}.{self.slot}.{self.id[:10]}"

    @property
    def version(self) -> str | None:
        return self.env.get("SERVICE_VERSION")

    @property
    def live(self) -> bool:
        return self.desired == "running" and self.state in LIVE


@dataclass(frozen=True)
class UpdateStatus:
    """The service's last update or rollback, as Swarm reports it."""

    state: str  # updating, paused, completed, rollback_started, rollback_paused, rollback_completed
    started: float
    completed: float
    message: str


@dataclass
class Reload:
    service: str
    old_pid: str
    new_pid: str
    seconds: float

    def __str__(self) -> str:
        return (f"{self.service}: reloaded (master-worker, SIGUSR2): worker {self.old_pid} -> "
                f"{self.new_pid} in {self.seconds:.2f}s")


class SwarmEngine:
    """`rollout --engine swarm`: the stack `stack` (ZDH_STACK, default zdh) from deploy/stack.yml."""

    name = "swarm"

    def __init__(self, env: Mapping[str, str] | None = None, stack: str | None = None,
                 stack_file: Path = STACK_FILE) -> None:
        self.env = {**os.environ, **(env or {})}
        self.stack = stack or self.env.get("ZDH_STACK") or DEFAULT_STACK
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", self.stack):
            raise RolloutError(f"stack name {self.stack[:80]!r}: letters, digits, '_', '.', '-'",
                               exit_code=2)
        self.stack_file = stack_file.resolve()
        self.since = time.time()  # tasks that stop from now on stay in instances(): see there
        self._tasks: dict[str, Task] = {}
        self._node: str | None = None
        self._published: dict[tuple[str, int], int] = {}

    # -- docker --------------------------------------------------------------------------

    def run(self, *args: str, timeout_s: float = QUICK_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """A docker command in this engine's environment (DOCKER_HOST, DOCKER_CONTEXT apply)."""
        try:
            return subprocess.run(["docker", *args], capture_output=True, text=True, check=False,
                                  env=self.env, cwd=self.root, timeout=timeout_s)
        except FileNotFoundError:
            raise RolloutError("no `docker` command on PATH; the swarm engine needs Docker") from None
        except subprocess.TimeoutExpired:
            raise RolloutError(f"`docker {' '.join(args[:3])}` did not finish within "
                               f"{timeout_s:g}s") from None

    def docker(self, *args: str, timeout_s: float = QUICK_TIMEOUT_S, check: bool = True,
               merge: bool = False) -> str:
        """A docker command's output; unless `check` is off, its failure becomes one line."""
        result = self.run(*args, timeout_s=timeout_s)
        if check and result.returncode != 0:
            raise RolloutError(f"`docker {' '.join(args[:3])}` failed: {last_line(result.stderr)}")
        return result.stdout + (result.stderr if merge else "")

    def inspect(self, kind: str, *ids: str) -> list[dict[str, Any]]:
        """`docker inspect` of those that still exist (Swarm prunes its task history at any time)."""
        if not ids:
            return []
        result = self.run("inspect", "--type", kind, *ids)
        try:
            found = json.loads(result.stdout or "[]")
        except ValueError:
            raise RolloutError(f"`docker inspect --type {kind}` gave no JSON: "
                               f"{last_line(result.stderr)}") from None
        return [item for item in found if isinstance(item, dict)]

    def full_name(self, service: str) -> str:
        return f"{self.stack}_{service}"

    def service(self, name: str = APP) -> dict[str, Any] | None:
        """`docker service inspect` of one of the stack's services; None when it does not exist."""
        out = self.docker("service", "inspect", self.full_name(name), check=False)
        found = json.loads(out or "[]")
        return found[0] if found and isinstance(found[0], dict) else None

    def require_service(self, name: str = APP) -> dict[str, Any]:
        service = self.service(name)
        if service is None:
            raise RolloutError(f"no service {self.full_name(name)}: is the stack {self.stack} deployed "
                               f"(`rollout --engine swarm up`, or docker stack deploy -c "
                               f"{self.stack_file} {self.stack})?")
        return service

    def swarm_state(self) -> tuple[str, bool]:
        """(LocalNodeState, whether this node is a manager)."""
        out = self.docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}")
        state, _, manager = out.strip().partition(" ")
        return state, manager == "true"

    def require_manager(self) -> None:
        state, manager = self.swarm_state()
        if state != "active" or not manager:
            raise RolloutError(
                f"this Docker engine is not a swarm manager (swarm state: {state or 'unknown'}); "
                "on one machine: docker swarm init --advertise-addr 127.0.0.1")

    @property
    def node(self) -> str:
        """This engine's node id (tasks elsewhere cannot be `docker exec`ed from here)."""
        if self._node is None:
            self._node = self.docker("info", "--format", "{{.Swarm.NodeID}}").strip()
        return self._node

    # -- tasks -----------------------------------------------------------------------------

    def tasks(self, service: str = APP) -> list[Task]:
        """Every task of the service Swarm still remembers (running, and its task history),
        oldest first."""
        out = self.docker("service", "ps", "--no-trunc", "-q", self.full_name(service), check=False)
        ids = sorted(set(out.split()))
        tasks = [self.task(raw, service) for raw in self.inspect("task", *ids)]
        for task in tasks:
            self._tasks[task.name] = task
        return sorted(tasks, key=lambda t: t.created)

    def task(self, raw: dict[str, Any], service: str) -> Task:
        spec = raw.get("Spec", {}).get("ContainerSpec", {})
        status = raw.get("Status", {})
        address = ""
        network = self.full_name(NETWORK)
        for attachment in raw.get("NetworksAttachments") or []:
            if attachment.get("Network", {}).get("Spec", {}).get("Name") == network:
                addresses = attachment.get("Addresses") or []
                if addresses:
                    address = f"{str(addresses[0]).partition('/')[0]}:{APP_PORT}"
        env = dict(item.partition("=")[::2] for item in spec.get("Env") or [])
        return Task(
            id=str(raw.get("ID", "")), service=service, slot=int(raw.get("Slot") or 0),
            state=str(status.get("State", "")), desired=str(raw.get("DesiredState", "")),
            created=timestamp(str(raw.get("CreatedAt", ""))),
            changed=timestamp(str(status.get("Timestamp", ""))),
            image=str(spec.get("Image", "")), env=env, address=address,
            container=str((status.get("ContainerStatus") or {}).get("ContainerID") or ""),
            node=str(raw.get("NodeID", "")), error=str(status.get("Err") or ""),
        )

    def task_of(self, instance: Instance) -> Task | None:
        if instance.name not in self._tasks:
            self.tasks()
        return self._tasks.get(instance.name)

    def running_container(self, service: str) -> Task:
        """The running task of a one-replica service (a HAProxy) whose container is on this node."""
        for task in reversed(self.tasks(service)):
            if task.desired == "running" and task.state == "running" and task.container:
                if task.node != self.node:
                    raise RolloutError(f"{self.full_name(service)} runs on node {task.node[:12]}, not "
                                       "this one: run this on that node (docs/swarm.md)")
                return task
        raise RolloutError(f"{self.full_name(service)} has no running task")

    @staticmethod
    def instance(task: Task) -> Instance:
        return Instance(task.name, task.address or f"{task.name} ({task.state})", BACKEND)

    # -- Engine ------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.stack_file.parent

    @property
    def blue_green(self) -> bool:
        return False

    @property
    def color_map(self) -> Path:
        raise RolloutError("the swarm stack has one pool (no blue/green)", exit_code=2)

    @property
    def color_map_ref(self) -> str:
        raise RolloutError("the swarm stack has one pool (no blue/green)", exit_code=2)

    def instances(self) -> list[Instance]:
        """The app's tasks that run (or start), oldest first, and those that stopped since this
        engine was made: so the timeline of a `check --restart` also reads the logs of the
        tasks the update replaced (Swarm keeps their containers in its task history)."""
        return [self.instance(task) for task in self.tasks()
                if task.live or (task.container and task.changed >= self.since)]

    def live_tasks(self) -> list[Task]:
        return [task for task in self.tasks() if task.live]

    def is_up(self) -> bool:
        try:
            if self.swarm_state()[0] != "active" or self.service(APP) is None:
                return False
            return any(t.live and t.state == "running" for t in self.tasks(HAPROXIES[0]))
        except RolloutError:
            return False

    def up(self) -> None:
        self.require_manager()
        if self.service(APP) is not None or self.service(HAPROXIES[0]) is not None:
            raise RolloutError(f"the stack {self.stack} is already deployed; `rollout --engine swarm "
                               "down` first")
        version = check_version(self.env.get("SERVICE_VERSION") or "v1")
        replicas, slots = (int(self.env.get(k) or d) for k, d in (("ZDH_REPLICAS", 3), ("ZDH_SLOTS", 10)))
        check_slot_budget(replicas, 1, slots, "ZDH_SLOTS is")
        self.prepare(version, {})
        self.wait_network_gone()  # a stack removed a moment ago: its network goes asynchronously
        self.docker("stack", "deploy", "--resolve-image", self.resolve_mode(self.image_ref(version)),
                    "-c", str(self.stack_file), self.stack, timeout_s=120)
        self._published.clear()
        self.wait_serving(UP_TIMEOUT_S)

    def wait_serving(self, timeout_s: float) -> None:
        """Until every replica of the app runs and is UP in every HAProxy (by address)."""
        deadline = time.monotonic() + timeout_s
        seen = "nothing yet"
        while time.monotonic() < deadline:
            replicas = self.replicas()
            tasks = [t for t in self.live_tasks() if t.state == "running"]
            rows = self.rows()
            up = [t for t in tasks if up_everywhere(rows, t.address)]
            if len(up) == replicas and len(tasks) == replicas:
                return
            failed = [t for t in self.tasks()
                      if t.state in ("failed", "rejected") and t.changed >= self.since]
            seen = (f"{len(up)} of {replicas} tasks UP in {len(rows)} HAProxies"
                    + (f"; {failed[-1].name} {failed[-1].state}: {failed[-1].error}" if failed else ""))
            time.sleep(POLL_S)
        raise RolloutError(f"the stack {self.stack} is not serving within {timeout_s:g}s: {seen}")

    def down(self) -> None:
        """The app first (scaled to 0: each agent drains while both HAProxies still run), then
        the stack; returns once its network is gone too, so a new `up` can follow at once."""
        if self.service(APP) is not None:
            self.docker("service", "scale", "--detach", f"{self.full_name(APP)}=0")
            deadline = time.monotonic() + STOP_GRACE_S + 30
            while any(t.live or t.state in ("running", "starting") for t in self.tasks()):
                if time.monotonic() > deadline:
                    raise RolloutError(f"the tasks of {self.full_name(APP)} did not stop within "
                                       f"{STOP_GRACE_S + 30:g}s")
                time.sleep(POLL_S)
        # `stack rm` removes the services, then tries the network, which fails while a stopping
        # HAProxy still has an endpoint on it: what is left is removed here once it can be.
        self.docker("stack", "rm", self.stack, timeout_s=60, check=False)
        deadline = time.monotonic() + 120
        while True:
            services = self.docker("stack", "services", "-q", self.stack, check=False).strip()
            network = self.network_id()
            if not services and not network:
                break
            if time.monotonic() > deadline:
                raise RolloutError(f"the stack {self.stack} is not gone after 120s (services: "
                                   f"{services.split() or 'none'}, network: {network or 'none'})")
            if network and not services:
                self.docker("network", "rm", network, check=False)
            time.sleep(0.5)
        self._published.clear()

    def network_id(self) -> str:
        network = self.full_name(NETWORK)
        return self.docker("network", "ls", "-q", "--filter", f"name=^{network}$", check=False).strip()

    def wait_network_gone(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.network_id():
            if time.monotonic() > deadline:
                raise RolloutError(f"the network {self.full_name(NETWORK)} is still there after "
                                   f"{timeout_s:g}s")
            time.sleep(POLL_S)

    # -- addresses ------------------------------------------------------------------------

    def published(self, service: str, port: int) -> int:
        """The host port a HAProxy service publishes `port` on (host mode), from its spec."""
        key = (service, port)
        if key not in self._published:
            spec = self.service(service)
            ports = ((spec or {}).get("Spec", {}).get("EndpointSpec") or {}).get("Ports") or []
            for item in ports:
                if item.get("TargetPort") == port and item.get("PublishedPort"):
                    self._published[key] = int(item["PublishedPort"])
            if key not in self._published:  # not deployed (yet): what the stack file would publish
                variable, default = PUBLISHED[key]
                return int(self.env.get(variable) or default)
        return self._published[key]

    def host(self) -> str:
        """Where the published ports answer: this machine, or ZDH_HOST (a node's address)."""
        return self.env.get("ZDH_HOST") or "127.0.0.1"

    def stats_urls(self) -> list[str]:
        return [f"http://{self.host()}:{self.published(h, STATS_PORT)}/stats;csv;norefresh"
                for h in HAPROXIES]

    def frontend_urls(self) -> list[str]:
        return [f"http://{self.host()}:{self.published(h, FRONTEND_PORT)}" for h in HAPROXIES]

    def rows(self) -> list[list[ServerStat]]:
        """The app's server rows in each HAProxy's stats (an empty list for one that does not
        answer: it has nothing UP)."""

        async def read(url: str) -> list[ServerStat]:
            try:
                return [s for s in await StatsPage(url, timeout_s=2.0).servers() if s.backend == BACKEND]
            except HAProxyError:
                return []

        async def read_all() -> list[list[ServerStat]]:
            return list(await asyncio.gather(*(read(url) for url in self.stats_urls())))

        return asyncio.run(read_all())

    def stats_url(self) -> str:
        """haproxy-a's stats (status and the rolling checks read one HAProxy; the service
        update waits for every HAProxy: stats_urls())."""
        return self.stats_urls()[0]

    def stats_pages(self) -> dict[str, str]:
        return dict(zip(HAPROXIES, self.stats_urls(), strict=True))

    def frontend_url(self) -> str:
        return self.frontend_urls()[0]

    # -- images and versions --------------------------------------------------------------

    def image_name(self) -> str:
        """The app's image without its tag: the running service's, else ZDH_IMAGE's."""
        service = self.service(APP)
        if service is not None:
            image = str(service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]).partition("@")[0]
            name, _, tag = image.rpartition(":")
            return name if name and "/" not in tag else image
        return self.env.get("ZDH_IMAGE") or DEFAULT_IMAGE

    def image_ref(self, version: str) -> str:
        return f"{self.image_name()}:{version}"

    def local_image(self, ref: str) -> dict[str, Any] | None:
        found = self.inspect_quiet("image", ref)
        return found[0] if found else None

    def inspect_quiet(self, kind: str, ref: str) -> list[dict[str, Any]]:
        out = self.docker("inspect", "--type", kind, ref, check=False)
        found = json.loads(out or "[]")
        return [item for item in found if isinstance(item, dict)]

    def resolve_mode(self, ref: str) -> str:
        """`never` for an image that exists only here (built, never pushed or pulled): no
        registry knows it. Otherwise `always`: Swarm pins the registry's digest, so every node
        runs the same image."""
        image = self.local_image(ref)
        return "never" if image is not None and not image.get("RepoDigests") else "always"

    def settle(self) -> list[str]:
        """Nothing to do: Swarm's manager carries on an update after the client is gone."""
        return []

    def check_release(self, version: str | None, env: Mapping[str, str]) -> None:
        if version is not None:
            check_version(version)

    def prepare(self, version: str | None, env: Mapping[str, str]) -> None:
        """The version's image: here already, or built from service/Dockerfile when its name has
        no registry (one machine). An image from a registry is left to Swarm to pull on each node."""
        if version is None:
            return
        ref = self.image_ref(check_version(version))
        if self.local_image(ref) is not None:
            return
        first = ref.partition("/")[0]
        if "/" in ref and ("." in first or ":" in first or first == "localhost"):
            return  # a registry's image: each node pulls it
        if not DOCKERFILE.exists():
            raise RolloutError(f"no image {ref} here and no {DOCKERFILE} to build it from")
        self.docker("build", "--network", "host", "-f", str(DOCKERFILE), "-t", ref, str(REPO_ROOT),
                    timeout_s=BUILD_TIMEOUT_S)

    def replicas(self) -> int:
        service = self.require_service(APP)
        return int(service["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas") or 0)

    def update_status(self) -> UpdateStatus | None:
        status = self.require_service(APP).get("UpdateStatus")
        if not isinstance(status, dict):
            return None
        return UpdateStatus(str(status.get("State", "")), timestamp(str(status.get("StartedAt", ""))),
                            timestamp(str(status.get("CompletedAt", ""))), str(status.get("Message", "")))

    def version_of(self, instance: Instance) -> str | None:
        """The version the task was created with (its spec): nothing is asked of the app."""
        task = self.task_of(instance)
        return task.version if task is not None and task.container else None
    def start_failure(self, instance: Instance) -> str | None:
        task = self.task_of(instance)
        if task is not None and task.state in ("failed", "rejected", "orphaned"):
            return f"task {task.name} {task.state}: {task.error or 'no error given'}"
        return None

    def ledgers(self) -> list[Path]:
        return []  # the tasks' files are not ours to read; strict_http still counts every request

    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        task = self.task_of(instance)
        if task is None:
            return f"(no task {instance.name})"
        try:
            if task.container and task.node == self.node:
                out = self.docker("logs", "--tail", str(lines), task.container, merge=True)
            else:
                out = self.docker("service", "logs", "--raw", "--tail", str(lines), task.id, merge=True)
        except RolloutError as exc:
            return f"(no logs: {exc})"
        return out.rstrip() or f"(no logs for {instance.name})"

    # -- no per-instance restarts: Swarm replaces tasks itself ---------------------------------

    def replace(
        self, instances: list[Instance], version: str | None, env: Mapping[str, str]
    ) -> list[Instance]:
        raise self.not_by_hand()

    def add(self, instances: list[Instance], version: str | None, env: Mapping[str, str]) -> list[Instance]:
        raise self.not_by_hand()

    def retire(self, instances: list[Instance]) -> None:
        raise self.not_by_hand()

    @property
    def stack_id(self) -> str:
        return self.stack

    def start_retire(self, instances: list[Instance]) -> Finished:
        raise self.not_by_hand()

    def release_of(self, instance: Instance) -> Release | None:
        return None  # Swarm keeps the previous spec itself: its rollback restores it

    def previous_version(self) -> str | None:
        """SERVICE_VERSION of the spec Swarm would go back to (`docker service rollback`)."""
        spec = self.require_service(APP).get("PreviousSpec") or {}
        env = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Env") or []
        for item in env:
            key, _, value = str(item).partition("=")
            if key == "SERVICE_VERSION":
                return value or None
        return None

    def incarnations(self, instances: list[Instance]) -> dict[str, str]:
        return {}  # a task that fails is a new task (a new name): Swarm's monitor counts it

    @staticmethod
    def not_by_hand() -> RolloutError:
        return RolloutError("on Swarm a restart is Swarm's own rolling update (`rollout --engine swarm "
                            "restart` runs `docker service update`); Swarm would replace a task "
                            "stopped by hand at once", exit_code=2)

    # -- HAProxy --------------------------------------------------------------------------

    def haproxy_command(self, line: str, service: str = HAPROXIES[0]) -> str:
        """One Runtime API command, sent inside the HAProxy's container (never published)."""
        task = self.running_container(service)
        out = self.docker("exec", task.container, "bash", "-c", RUNTIME_API_SCRIPT, "_",
                          self.admin_port(service), line)
        return out

    def admin_port(self, service: str) -> str:
        env = self.container_spec(service).get("Env") or []
        address = next((item.partition("=")[2] for item in env
                        if item.startswith("HAPROXY_ADMIN_SOCKET=")), "")
        port = address.rpartition(":")[2]
        if not port.isdigit():
            raise RolloutError(f"HAPROXY_ADMIN_SOCKET {address!r} of {self.full_name(service)}: "
                               "expected a TCP address such as ipv4@127.0.0.1:9999")
        return port

    def container_spec(self, service: str) -> dict[str, Any]:
        return dict(self.require_service(service)["Spec"]["TaskTemplate"]["ContainerSpec"])

    def worker_pid(self, service: str) -> str:
        info = self.haproxy_command("show info", service)
        for line in info.splitlines():
            if line.startswith("Pid: "):
                return line.split(": ", 1)[1].strip()
        raise RolloutError(f"{self.full_name(service)}: no Pid in `show info`: {info.strip()[:200]!r}")

    def reload(self) -> list[str]:
        return [str(done) for done in self.reload_haproxies()]

    def reload_haproxies(self) -> list[Reload]:
        """Each HAProxy in turn: check its configuration (a HAProxy whose configuration does not
        load is not signalled), leave the servers' states and addresses for the new worker
        (HAPROXY_SERVER_STATE_FILE), then SIGUSR2 to its master (PID 1 of its container): the new
        worker takes the listeners over (expose-fd listeners) and the old one finishes what it
        has. Nothing is restarted; each reload is confirmed by a new worker's pid."""
        done = []
        for service in HAPROXIES:
            task = self.running_container(service)
            spec = self.container_spec(service)
            args = [str(a) for a in spec.get("Args") or []]
            if args[:1] == ["haproxy"]:
                check = self.run("exec", task.container, "haproxy", "-c", *args[1:])
                if check.returncode != 0:
                    alert = next((line for line in (check.stdout + check.stderr).splitlines()
                                  if "[ALERT]" in line), last_line(check.stderr))
                    raise RolloutError(f"{self.full_name(service)}: its configuration does not load, so "
                                       f"nothing was reloaded: {alert.strip()[:300]}")
            env = dict(str(item).partition("=")[::2] for item in spec.get("Env") or [])
            state = env.get("HAPROXY_SERVER_STATE_FILE", "")
            old = self.worker_pid(service)
            began = time.monotonic()
            try:
                if state:
                    self.docker("exec", task.container, "bash", "-c", STATE_DUMP_SCRIPT, "_",
                                self.admin_port(service), state)
                self.docker("kill", "--signal", "USR2", task.container)
                new = self.wait_new_worker(service, old)
            finally:
                if state:  # read at the new worker's start: never left to go stale
                    self.docker("exec", task.container, "rm", "-f", state, check=False)
            done.append(Reload(self.full_name(service), old, new, time.monotonic() - began))
        return done

    def wait_new_worker(self, service: str, old: str) -> str:
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                pid = self.worker_pid(service)
            except RolloutError:
                pid = old  # the old worker let go of the socket, the new one not there yet
            if pid != old:
                return pid
            time.sleep(0.05)
        raise RolloutError(f"{self.full_name(service)}: no new worker {RELOAD_TIMEOUT_S:g}s after "
                           f"SIGUSR2 (worker {old} still answers); see docker service logs "
                           f"{self.full_name(service)}")


def up_everywhere(rows: list[list[ServerStat]], address: str) -> bool:
    """Whether every HAProxy has the server at `address` UP."""
    return bool(rows) and all(any(s.addr == address and s.status == "UP" for s in haproxy)
                              for haproxy in rows)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no error output)"


def slots_needed(replicas: int, parallelism: int) -> int:
    """HAProxy server slots an update of `parallelism` tasks at a time needs: every old task
    keeps its row while it drains (`hold obsolete`), every new one takes one, and a
    start-first batch runs beside them."""
    return 2 * replicas + parallelism


def check_slot_budget(replicas: int, parallelism: int, slots: int, where: str) -> None:
    """Refused in one line before anything changes: a task without a slot never gets UP."""
    if slots_needed(replicas, parallelism) > slots:
        raise RolloutError(f"{replicas} replicas updated {parallelism} at a time need "
                           f"{slots_needed(replicas, parallelism)} server slots in HAProxy (the tasks "
                           f"an update stops keep theirs while they drain); {where} {slots}",
                           exit_code=2)
