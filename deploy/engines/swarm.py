"""The swarm engine: the same `rollout` commands over deploy/stack.yml on Docker Swarm.

The stack (`docker stack deploy -c deploy/stack.yml zdh`) has three services: `app` (N tasks, each
run by drain-agent as PID 1, found by HAProxy as `tasks.app`, endpoint mode dnsrr) and two
HAProxies, `haproxy-a` and `haproxy-b`, each publishing its frontend and stats in host mode.
An instance is a task; HAProxy knows it by its address on the stack's overlay network, as its
agent does.

Swarm replaces tasks itself, so this is a SelfUpdatingEngine (engines/base.py): it has no
per-instance restart (a task stopped by hand is replaced at once), and a restart is Swarm's own
rolling update (`docker service update`), run and watched by swarm_update.py. What Swarm does
on a task's stop, and why the stack holds an address that left the DNS
(HAPROXY_DNS_HOLD_OBSOLETE), is in docs/swarm.md.

Everything goes through the `docker` CLI (so DOCKER_HOST and contexts apply). What needs a
container (`docker exec`: a version, HAProxy's Runtime API, a reload) works for the tasks on
this node; a task on another node answers with its configured version and `docker service
logs`, and HAProxies elsewhere are reloaded on their own nodes (docs/swarm.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from deploy.engines.base import Instance, check_version
from deploy.engines.swarm_access import SwarmAccess
from deploy.engines.swarm_model import (
    APP,
    BUILD_TIMEOUT_S,
    DOCKERFILE,
    HAPROXIES,
    LIVE,
    POLL_S,
    REPO_ROOT,
    STOP_GRACE_S,
    UP_TIMEOUT_S,
    Task,
    UpdateStatus,
    check_slot_budget,
    timestamp,
    up_everywhere,
)
from deploy.engines.swarm_update import service_update
from deploy.errors import RolloutError
from deploy.model import Event, RestartResult

__all__ = ["APP", "HAPROXIES", "LIVE", "SwarmEngine", "Task", "UpdateStatus", "check_slot_budget",
           "up_everywhere"]

class SwarmEngine(SwarmAccess):
    """`rollout --engine swarm`: the stack `stack` (ZDH_STACK, default zdh) from deploy/stack.yml."""

    name = "swarm"
    updates_itself = True  # a SelfUpdatingEngine: no replace, add or retire by hand

    @property
    def blue_green(self) -> bool:
        return False

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

    @property
    def stack_id(self) -> str:
        return self.stack

    def update(self, version: str | None, env: Mapping[str, str], timeout_s: float,
               report: Callable[[Event], None], *, order: str | None = None, parallelism: int | None = None,
               monitor: float | None = None, failure_action: str | None = None) -> RestartResult:
        return service_update(self, version, env, timeout_s, report, order=order, parallelism=parallelism,
                              monitor=monitor, failure_action=failure_action)

    def undo(self, timeout_s: float, report: Callable[[Event], None]) -> RestartResult:
        """`docker service rollback`: Swarm keeps the spec before the last update (its version
        and environment)."""
        version = self.previous_version()
        if version is None:
            raise RolloutError(f"nothing to undo: {self.full_name(APP)} has no previous spec")
        report(Event(time.time(), self.full_name(APP), "undo",
                     f"Swarm's rollback of {self.full_name(APP)} to its previous spec ({version})"))
        return service_update(self, version, {}, timeout_s, report, undo=True)

    def previous_version(self) -> str | None:
        """SERVICE_VERSION of the spec Swarm would go back to (`docker service rollback`)."""
        spec = self.require_service(APP).get("PreviousSpec") or {}
        env = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Env") or []
        for item in env:
            key, _, value = str(item).partition("=")
            if key == "SERVICE_VERSION":
                return value or None
        return None
