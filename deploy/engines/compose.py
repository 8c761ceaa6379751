"""The compose engine: the same `rollout` commands over docker-compose.yml (HAProxy + the scaled
service `app`) or, for blue/green, docker-compose.bluegreen.yml (HAProxy + services blue, green).

An instance is a container; HAProxy knows it by its address (server-template slots filled by
Docker's DNS), as its agent does. Docker stops a container exactly as supervisor does a
program: SIGTERM to PID 1 (here drain-agent), wait `stop_grace_period`, SIGKILL. A restart
replaces the container, as deploy/deploy.sh --stop-first does: `docker stop` and `docker rm`,
then `docker compose up -d --no-deps --no-recreate --scale app=N app` with SERVICE_VERSION
(and any extra variables) in compose's environment: the compose file tags the image and sets
the app's version from it, so the new container is the new release. Ports are read back from
docker (`compose port`), so a stack started with other ZDH_PORT / ZDH_STATS_PORT values is
still found.

Blue/green: each pool takes its version from its own variable (BLUE_VERSION, GREEN_VERSION),
so recreating one pool never touches the other. The map file is a host file in a directory
bind-mounted (read-only) into HAProxy; a switch's `set map` reaches HAProxy's Runtime API,
which listens on the HAProxy container's own loopback, through `docker compose exec haproxy`
(engines/container_haproxy.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from deploy.colormap import COLORS
from deploy.engines.base import BACKEND, Finished, Instance, Release, read_stats
from deploy.engines.compose_access import (
    APP_PORT,
    BLUEGREEN_FILE,
    COMPOSE_FILE,
    LOG_LINES_KEPT,
    RECREATE_TIMEOUT_S,
    UP_TIMEOUT_S,
    ComposeAccess,
    ComposeProject,
    default_files,
    docker,
    find_lb,
)
from deploy.errors import RolloutError

__all__ = ["APP_PORT", "BLUEGREEN_FILE", "COMPOSE_FILE", "ComposeProject", "DockerEngine", "default_files",
           "docker", "find_lb", "find_stack"]


class DockerEngine(ComposeAccess):
    name = "docker"
    updates_itself = False  # an InstanceEngine: our rules replace its containers

    def instances(self) -> list[Instance]:
        """Every container of the app service(s), oldest first: running ones, and stopped ones
        too (address `?:8000`, no row in HAProxy), so that `status` shows them and a
        blue/green switch refuses a pool with one (prepare() refuses to deploy over them)."""
        found = []
        for service in self.services():
            ids = self.run("ps", "-a", "-q", service).split()
            found += [(created, Instance(name, address, service if self.blue_green else BACKEND))
                      for created, name, address in self.inspect(ids)]
        return [instance for _, instance in sorted(found, key=lambda item: item[0])]

    def inspect(self, ids: list[str]) -> list[tuple[str, str, str]]:
        """(created, name, ip:port) of each container; a stopped one has no address, and what
        stands in for it names it (`<name> (exited)`), matching no row in HAProxy."""
        if not ids:
            return []
        template = ("{{.Created}} {{.Name}} {{.State.Status}} "
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")
        result = docker("inspect", "--format", template, *ids)
        rows = []
        for line in result.splitlines():
            created, name, state, *addresses = line.split()
            name = name.lstrip("/")
            address = f"{addresses[0]}:{self.app_port}" if addresses else f"{name} ({state})"
            rows.append((created, name, address))
        return rows

    def up(self) -> None:
        if self.is_up():
            raise RolloutError(f"a compose stack from {self.compose_file} is already running; "
                               "`rollout --engine docker down` first")
        if not self.blue_green:
            self.run("up", "-d", "--wait", "--build", timeout_s=UP_TIMEOUT_S)
            self._addresses.clear()
            return
        self.ensure_color_map()
        # One build per distinct image tag (compose would build blue and green in parallel,
        # twice the work when both pools are on the same version).
        services = self.config().get("services", {})
        builders = {str(services[s].get("image")): s for s in reversed(COLORS)}
        self.run("build", *sorted(builders.values()), timeout_s=UP_TIMEOUT_S)
        self.run("up", "-d", "--wait", timeout_s=UP_TIMEOUT_S)
        self._addresses.clear()

    def down(self) -> None:
        self.run("down", "--remove-orphans", timeout_s=RECREATE_TIMEOUT_S + 30)
        self._addresses.clear()

    def prepare(self, version: str | None, env: Mapping[str, str]) -> None:
        """The new version's image, built (cached) before any container stops: the compose
        file tags the image with the version. Without a version each replacement keeps its
        container's version, whose image is built (if need be) as it is started."""
        self.check_passed_through(env)
        self.check_none_stopped()
        if version is not None:
            self.build(version, env)

    def settle(self) -> list[str]:
        """Containers a dead deploy stopped (its `docker stop` ends in the daemon) or created
        and never started: removed, as its retire or scale-up would have."""
        ids = [i for service in self.services()
               for i in self.run("ps", "-a", "-q", "--status", "exited", "--status", "created",
                                 "--status", "dead", service).split()]
        if not ids:
            return []
        names = [name for _, name, _ in self.inspect(ids)]
        docker("rm", *names)
        return [f"removed {', '.join(names)}: stopped or never started by the deploy that died"]

    def check_none_stopped(self) -> None:
        """Compose scales a service up by starting its stopped containers first (their old
        version and settings) before it creates any, and fails on a paused one: so refuse
        before anything is stopped or started."""
        for states, what, fix in (
            (("exited", "created", "dead"), "stopped", "Start them (docker start {names}) or remove "
             "them (docker rm {names}) first: a new container would be one of them started again"),
            (("paused",), "paused", "Unpause them (docker unpause {names}) or remove them "
             "(docker rm -f {names}) first: compose cannot scale the service around them"),
        ):
            found = []
            for service in self.services():
                status = [arg for state in states for arg in ("--status", state)]
                ids = self.run("ps", "-a", "-q", *status, service).split()
                found += [name for _, name, _ in self.inspect(ids)]
            if found:
                names = " ".join(sorted(found))
                raise RolloutError(f"{what} containers of the app: {names}. {fix.format(names=names)}")

    def build(self, version: str, env: Mapping[str, str]) -> None:
        """Once per version: the app services of a file share one build and one image name
        (`${ZDH_IMAGE}:<version>`), so building one of them tags the image for all."""
        if version in self._built:
            return
        service = self.services()[0]
        self.run("build", service, env={**env, self.version_variable(service): version},
                 timeout_s=UP_TIMEOUT_S)
        self._built.add(version)

    def replace(
        self, instances: list[Instance], version: str | None, env: Mapping[str, str]
    ) -> list[Instance]:
        """Stop-first, as deploy.sh --stop-first: stop and remove, then scale the service up again."""
        versions = [version or self.configured_version(i) for i in instances]
        self.retire(instances)
        return self.scale_up(instances, versions, env)

    def add(self, instances: list[Instance], version: str | None, env: Mapping[str, str]) -> list[Instance]:
        """Surge, as deploy.sh: one more container of the service per instance, old ones untouched.
        Refused (nothing started) when HAProxy has no free server slot for them: a container
        without a slot would never get UP."""
        self.check_free_slots(instances)
        return self.scale_up(instances, [version or self.configured_version(i) for i in instances], env)

    def check_free_slots(self, instances: list[Instance]) -> None:
        stats = read_stats(self.stats_url())
        for backend in sorted({i.backend for i in instances}):
            slots = [s for s in stats if s.backend == backend]
            needed = sum(1 for i in instances if i.backend == backend)
            free = sum(1 for s in slots if not s.addr)
            if slots and free < needed:
                raise RolloutError(
                    f"no room for a surge: {len(slots) - free} of the {len(slots)} server slots of "
                    f"{backend} in HAProxy hold containers, {needed} more needed; replace stop-first "
                    "(without --surge), or give HAProxy more slots (ZDH_SLOTS)")

    def retire(self, instances: list[Instance]) -> None:
        """Stop (each agent drains first) and remove; their last log lines are kept, so that
        log_tail still shows why a removed replacement never got UP."""
        names = [i.name for i in instances]
        # Each container's own grace period before SIGKILL (compose's stop_grace_period).
        docker("stop", *names, timeout_s=RECREATE_TIMEOUT_S)
        for name in names:
            self._removed_logs[name] = self.log_tail(Instance(name, ""), LOG_LINES_KEPT)
        docker("rm", *names)

    @property
    def stack_id(self) -> str:
        """The compose project's name, as compose resolves it (COMPOSE_PROJECT_NAME first, then
        the file's `name:`, then the directory): the history's and the deploy lock's file name."""
        return self.env.get("COMPOSE_PROJECT_NAME") or str(self.config().get("name") or self.root.name)

    def start_retire(self, instances: list[Instance]) -> Finished:
        """Compose counts containers to scale: a retire ends before the next step begins."""
        try:
            self.retire(instances)
        except RolloutError as exc:
            return Finished(str(exc))
        return Finished()

    def container_env(self, name: str) -> dict[str, str] | None:
        try:
            raw = docker("inspect", "--format", "{{json .Config.Env}}", name)
        except RolloutError:
            return None
        return dict(str(item).partition("=")[::2] for item in json.loads(raw or "[]"))

    def release_of(self, instance: Instance) -> Release | None:
        """The container's version, and the values it got for the variables the compose file
        passes through (`${VAR...}` in its environment): what a rollback passes again."""
        env = self.container_env(instance.name)
        if not env or not env.get("SERVICE_VERSION"):
            return None
        versions = {self.version_variable(s) for s in self.services()}
        text = "\n".join(f.read_text() for f in self.files)
        passed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
        extra = {k: env[k] for k in sorted(passed - versions) if k in env and not k.startswith("ZDH_")}
        return Release(env["SERVICE_VERSION"], extra)

    def incarnations(self, instances: list[Instance]) -> dict[str, str]:
        """Each container's restart count and start time: a restart changes them."""
        if not instances:
            return {}
        try:
            lines = docker("inspect", "--format", "{{.Name}} {{.RestartCount}} {{.State.StartedAt}}",
                           *[i.name for i in instances]).splitlines()
        except RolloutError:
            return {}
        found = (line.lstrip("/").split(" ", 1) for line in lines if " " in line)
        return {name: life for name, life in found}

    def scale_up(
        self, instances: list[Instance], versions: list[str | None], env: Mapping[str, str]
    ) -> list[Instance]:
        """As many new containers as `instances`, each in its service, on its version."""
        new: list[Instance] = []
        for instance, version in zip(instances, versions, strict=True):
            service = instance.backend if self.blue_green else self.app_service
            variable = self.version_variable(service)
            compose_env = {**env, variable: version or self.env.get(variable) or "v1"}
            self.prepare(compose_env[variable], env)
            before = set(self.run("ps", "-q", service).split())
            self.run("up", "-d", "--no-deps", "--no-recreate", "--scale", f"{service}={len(before) + 1}",
                     service, env=compose_env, timeout_s=RECREATE_TIMEOUT_S)
            ids = [i for i in self.run("ps", "-q", service).split() if i not in before]
            if not ids:
                raise RolloutError(f"[{instance.name}] no new container of {service} after scaling up")
            new += [Instance(name, address, instance.backend) for _, name, address in self.inspect(ids[:1])]
        return new

    def version_of(self, instance: Instance) -> str | None:
        """The version the container was created with (its SERVICE_VERSION, else its image's tag):
        nothing is asked of the app, whose image may hold nothing but itself and the agent."""
        return self.configured_version(instance)

    def start_failure(self, instance: Instance) -> str | None:
        return None  # a container that gives up is restarted by Docker; the timeout decides

    def ledgers(self) -> list[Path]:
        return []  # the containers' files are not ours to read; strict_http still counts every request

    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        try:
            return docker("logs", "--tail", str(lines), instance.name, merge=True).rstrip() \
                or f"(no logs for {instance.name})"
        except RolloutError as exc:
            if instance.name in self._removed_logs:  # retired by this engine: what it said last
                return "\n".join(self._removed_logs[instance.name].splitlines()[-lines:])
            return f"(no logs: {exc})"



    def configured_version(self, instance: Instance) -> str | None:
        """SERVICE_VERSION the instance's container was created with, else its image's tag
        (None for a container that is gone)."""
        env = self.container_env(instance.name)
        if env is None:
            return None
        if env.get("SERVICE_VERSION"):
            return env["SERVICE_VERSION"]
        try:
            image = docker("inspect", "--format", "{{.Config.Image}}", instance.name).strip()
        except RolloutError:
            return None
        name, _, tag = image.rpartition(":")
        return tag if name and "/" not in tag else None

    def check_release(self, version: str | None, env: Mapping[str, str]) -> None:
        self.check_passed_through(env)

    def check_passed_through(self, env: Mapping[str, str]) -> None:
        """Compose passes only the variables its file names: refuse others instead of dropping them."""
        text = "\n".join(f.read_text() for f in self.files)
        missing = [key for key in env if not re.search(r"\$\{" + re.escape(key) + r"\b", text)]
        if missing:
            raise RolloutError(
                f"--env {', '.join(missing)}: {self.compose_file.name} does not pass "
                f"{'it' if len(missing) == 1 else 'them'} to the containers; add "
                f"`{missing[0]}: ${{{missing[0]}:-default}}` to the app's environment there"
            )


def find_stack(env: Mapping[str, str], project: ComposeProject | None = None) -> DockerEngine:
    """The engine for commands on a running stack. Files named (-f, COMPOSE_FILE) or a compose
    file in the current directory: that project. This repository's own two files: blue/green or
    rolling by which of them has containers in the project."""
    project = project or ComposeProject()
    merged = {**os.environ, **env}
    separator = merged.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
    names = {p.name for p in project.files} | {
        Path(item).name for item in merged.get("COMPOSE_FILE", "").split(separator) if item}
    if names:
        return DockerEngine(env=env, blue_green=BLUEGREEN_FILE.name in names, project=project)
    rolling = DockerEngine(env=env, project=project)
    if rolling.compose_file != COMPOSE_FILE.resolve():
        return rolling  # the current directory's own project
    blue_green = DockerEngine(env=env, blue_green=True, project=project)
    if blue_green.has_containers():
        if rolling.has_containers():
            raise RolloutError(
                f"both {COMPOSE_FILE.name} and {BLUEGREEN_FILE.name} have a stack here; say which "
                f"with COMPOSE_FILE={BLUEGREEN_FILE.name} (or {COMPOSE_FILE.name})", exit_code=2)
        return blue_green
    return rolling
