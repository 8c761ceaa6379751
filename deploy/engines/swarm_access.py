"""The Swarm stack as `rollout` reaches it: the docker CLI, its services and tasks, the published
ports and stats of each HAProxy, reloads and the Runtime API inside their containers, and the
app's image. SwarmEngine (swarm.py) builds the fleet operations on top."""


from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.errors import HAProxyError
from agent.haproxy import ServerStat, StatsPage
from deploy.engines.base import BACKEND, HAProxyHandle, Instance
from deploy.engines.container_haproxy import ContainerHAProxy
from deploy.engines.swarm_model import (
    APP,
    APP_PORT,
    DEFAULT_IMAGE,
    DEFAULT_STACK,
    FRONTEND_PORT,
    HAPROXIES,
    NETWORK,
    POLL_S,
    PUBLISHED,
    QUICK_TIMEOUT_S,
    STACK_FILE,
    STATS_PORT,
    Task,
    timestamp,
)
from deploy.errors import RolloutError, last_line


class SwarmAccess:
    """The stack, its tasks and its HAProxies, for SwarmEngine."""

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

    @property
    def root(self) -> Path:
        return self.stack_file.parent

    def run(self, *args: str, timeout_s: float = QUICK_TIMEOUT_S,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """A docker command in this engine's environment (DOCKER_HOST, DOCKER_CONTEXT apply)."""
        try:
            return subprocess.run(["docker", *args], capture_output=True, text=True, check=False,
                                  input=stdin, env=self.env, cwd=self.root, timeout=timeout_s)
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

    def haproxy_command(self, line: str, service: str = HAPROXIES[0]) -> str:
        return self.haproxy(service).command(line)

    def haproxies(self) -> list[HAProxyHandle]:
        return [self.haproxy(service) for service in HAPROXIES]

    def haproxy(self, service: str) -> ContainerHAProxy:
        """One of the stack's HAProxies, through `docker exec` into its running container on
        this node (its master is the container's PID 1: `docker kill --signal USR2` reloads it)."""
        container = self.running_container(service).container
        spec = self.container_spec(service)

        def run_in(argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
            return self.run("exec", *(("-i",) if stdin is not None else ()), container, *argv, stdin=stdin)

        def kill(signal: str) -> None:
            self.docker("kill", "--signal", signal, container)

        env = dict(str(item).partition("=")[::2] for item in spec.get("Env") or [])
        return ContainerHAProxy(self.full_name(service), run_in, kill, spec.get("Args") or [], env,
                                str(self.stack_file.name))

    def container_spec(self, service: str) -> dict[str, Any]:
        return dict(self.require_service(service)["Spec"]["TaskTemplate"]["ContainerSpec"])

