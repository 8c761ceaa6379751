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
and bash's /dev/tcp (the image has no socat).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.colormap import COLORS, read_map, write_map
from deploy.engines.base import (
    BACKEND,
    Finished,
    Instance,
    Release,
    read_stats,
    wait_new_worker,
    worker_pid,
)
from deploy.errors import RolloutError

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
BLUEGREEN_FILE = REPO_ROOT / "docker-compose.bluegreen.yml"
SERVICE = "app"
APP_PORT = 8000  # inside each app container
FRONTEND_PORT = 8785  # inside the haproxy container; published as ${ZDH_PORT:-8785}
STATS_PORT = 8404  # published as 127.0.0.1:${ZDH_STATS_PORT:-8404}
UP_TIMEOUT_S = 600.0  # a cold build downloads the dependencies
STOP_GRACE_S = 100.0  # as the compose file's stop_grace_period: > drain 70 s + app stop 25 s
RECREATE_TIMEOUT_S = STOP_GRACE_S + 60
QUICK_TIMEOUT_S = 15.0
LOG_LINES_KEPT = 40  # of each container this engine removes
# One Runtime API command, run inside the haproxy container: HAProxy answers and closes.
RUNTIME_API_SCRIPT = 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; printf "%s\\n" "$2" >&3; cat <&3'
# Before a reload, inside the haproxy container: the servers' states and addresses, where the
# new worker reads them (HAPROXY_SERVER_STATE_FILE: server-state-file in haproxy.cfg).
STATE_DUMP_SCRIPT = ('exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; printf "show servers state\\n" >&3; '
                     'cat <&3 > "$2.new" && mv -f "$2.new" "$2"')


@dataclass(frozen=True)
class ComposeProject:
    """A compose project as `docker compose` takes it (-f files, -p name; empty: compose's own
    defaults, COMPOSE_FILE and COMPOSE_PROJECT_NAME), the service to roll, the HAProxy service
    (None: found in the project), and the port the app listens on in its containers."""

    files: tuple[Path, ...] = ()
    name: str | None = None
    service: str | None = None
    lb_service: str | None = None
    app_port: int = APP_PORT


COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")


def default_files(env: Mapping[str, str], blue_green: bool) -> tuple[Path, ...]:
    """COMPOSE_FILE; else the compose file of the current directory (compose's own names);
    else this repository's (a checkout's demo)."""
    separator = env.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
    named = [Path(item) for item in env.get("COMPOSE_FILE", "").split(separator) if item]
    if named:
        return tuple(path.resolve() for path in named)
    if not blue_green:
        here = next((Path.cwd() / name for name in COMPOSE_NAMES if (Path.cwd() / name).is_file()), None)
        if here is not None:
            return (here.resolve(),)
    repo = (BLUEGREEN_FILE if blue_green else COMPOSE_FILE).resolve()
    if not repo.is_file():
        raise RolloutError("no compose file: give -f FILE (or COMPOSE_FILE), or run from the "
                           "directory of your docker-compose.yml", exit_code=2)
    return (repo,)


def find_lb(config: Mapping[str, Any], where: Path) -> str:
    """The one service of the project that runs HAProxy: its image or its command says so."""
    found = [name for name, spec in (config.get("services") or {}).items()
             if str(spec.get("image") or "").rpartition("/")[2].startswith("haproxy")
             or str((spec.get("command") or [""])[0]) == "haproxy"]
    if len(found) != 1:
        which = f"several services run HAProxy ({', '.join(found)})" if found else "no service runs HAProxy"
        raise RolloutError(f"{where.name}: {which} (by its image or command); say which with "
                           "--lb-service", exit_code=2)
    return str(found[0])


class DockerEngine:
    name = "docker"

    def __init__(self, env: Mapping[str, str] | None = None, blue_green: bool = False,
                 project: ComposeProject | None = None) -> None:
        """`blue_green`: this repository's two-pool stack (docker-compose.bluegreen.yml).
        `project`: which compose project, as compose takes it (files, name), and which of its
        services is the app and which HAProxy; default: COMPOSE_FILE, else the compose file of
        the current directory, else this repository's."""
        self.blue_green = blue_green
        self.env = {**os.environ, **(env or {})}
        self.project = project or ComposeProject()
        self.files = self.project.files or default_files(self.env, blue_green)
        self.compose_file = self.files[0]
        self.root = self.compose_file.parent
        self.app_service = self.project.service or SERVICE
        self._lb = self.project.lb_service
        self._addresses: dict[int, str] = {}
        self._built: set[str] = set()  # versions whose image this engine built
        self._config: dict[str, Any] | None = None
        self._removed_logs: dict[str, str] = {}  # container name -> its last lines, before `docker rm`

    @property
    def lb(self) -> str:
        """The HAProxy service: as given, else the one service of the project that runs HAProxy
        (its image or its command says haproxy)."""
        if self._lb is None:
            self._lb = find_lb(self.config(), self.compose_file)
        return self._lb

    @property
    def app_port(self) -> int:
        return self.project.app_port

    # -- docker compose ----------------------------------------------------------------

    def compose(
        self, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = QUICK_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", *(arg for f in self.files for arg in ("-f", str(f))),
                   *(("-p", self.project.name) if self.project.name else ())]
        try:
            return subprocess.run(
                [*command, *args], capture_output=True, text=True, check=False,
                env={**self.env, **(env or {})}, cwd=self.root, timeout=timeout_s,
            )
        except FileNotFoundError:
            raise RolloutError("no `docker` command on PATH; the docker engine needs Docker "
                               "with the compose plugin") from None
        except subprocess.TimeoutExpired:
            raise RolloutError(f"`docker compose {' '.join(args)}` did not finish within "
                               f"{timeout_s:g}s") from None

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = QUICK_TIMEOUT_S
    ) -> str:
        """A compose command that must succeed; its error becomes a one-line RolloutError."""
        result = self.compose(*args, env=env, timeout_s=timeout_s)
        if result.returncode != 0:
            raise RolloutError(f"`docker compose {' '.join(args)}` failed: {last_line(result.stderr)}")
        return result.stdout

    # -- Engine --------------------------------------------------------------------------

    def services(self) -> tuple[str, ...]:
        return COLORS if self.blue_green else (self.app_service,)

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

    def is_up(self) -> bool:
        try:
            result = self.compose("ps", "-q", "--status", "running", self.lb)
        except RolloutError:
            return False
        return result.returncode == 0 and bool(result.stdout.strip())

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

    def reload(self) -> list[str]:
        """The official image's reload: SIGUSR2 to the haproxy container's PID 1 (the master,
        -W), after `haproxy -c` in the container on the same files and with the servers' states
        left for the new worker (HAPROXY_SERVER_STATE_FILE, on the container's tmpfs)."""
        command = [str(arg) for arg in self.config()["services"][self.lb].get("command") or []]
        if command[:1] == ["haproxy"]:
            check = self.compose("exec", "-T", self.lb, "haproxy", "-c", *command[1:])
            if check.returncode != 0:
                alert = next((line for line in (check.stdout + check.stderr).splitlines()
                              if "[ALERT]" in line), last_line(check.stderr))
                raise RolloutError(f"HAProxy's configuration does not load, so nothing was "
                                   f"reloaded: {alert.strip()[:300]}")
        state = str(self.haproxy_environment().get("HAPROXY_SERVER_STATE_FILE") or "")
        old = worker_pid(self.haproxy_command("show info"))
        began = time.monotonic()
        try:
            if state:
                self.run("exec", "-T", self.lb, "bash", "-c", STATE_DUMP_SCRIPT, "_", self.admin_port(),
                         state)
            self.run("kill", "-s", "USR2", self.lb)
            new = wait_new_worker(lambda: self.haproxy_command("show info"), old)
        finally:
            if state:  # read at the new worker's start: never left to go stale
                self.compose("exec", "-T", self.lb, "rm", "-f", state)
        return [f"haproxy: reloaded (master-worker, SIGUSR2): worker {old} -> {new} "
                f"in {time.monotonic() - began:.2f}s"]

    def down(self) -> None:
        self.run("down", "--remove-orphans", timeout_s=RECREATE_TIMEOUT_S + 30)
        self._addresses.clear()

    def published(self, port: int) -> str:
        """host:port where docker publishes the haproxy container's `port` (cached once found)."""
        if port not in self._addresses:
            result = self.compose("port", self.lb, str(port))
            lines = result.stdout.split() if result.returncode == 0 else []
            address = lines[0] if lines else ""
            if not address:
                default = self.env.get("ZDH_PORT" if port == FRONTEND_PORT else "ZDH_STATS_PORT") or port
                return f"127.0.0.1:{default}"  # not up (yet): what the compose file would publish
            host, _, host_port = address.rpartition(":")
            if host in ("0.0.0.0", "::", "[::]"):  # published on all addresses: use loopback
                host = "127.0.0.1"
            self._addresses[port] = f"{host}:{host_port}"
        return self._addresses[port]

    def stats_url(self) -> str:
        return f"http://{self.published(STATS_PORT)}/stats;csv;norefresh"

    def stats_pages(self) -> dict[str, str]:
        return {self.lb: self.stats_url()}

    def frontend_url(self) -> str:
        return f"http://{self.published(FRONTEND_PORT)}"

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

    # -- blue/green (the Engine members deploy.strategies.bluegreen uses) ---------------------

    @property
    def color_map(self) -> Path:
        """The map file on this machine: HAPROXY_COLOR_MAP under the bind mount's source."""
        return self.color_map_paths()[0]

    @property
    def color_map_ref(self) -> str:
        """HAPROXY_COLOR_MAP: the map file's path inside the haproxy container."""
        return self.color_map_paths()[1]

    def admin_port(self) -> str:
        address = str(self.haproxy_environment().get("HAPROXY_ADMIN_SOCKET", ""))
        port = address.rpartition(":")[2]
        if not port.isdigit():
            raise RolloutError(f"HAPROXY_ADMIN_SOCKET {address!r} in {self.compose_file.name}: "
                               "expected a TCP address such as ipv4@0.0.0.0:9999")
        return port

    def haproxy_command(self, line: str) -> str:
        """One Runtime API command, sent from inside the haproxy container (never published)."""
        result = self.compose("exec", "-T", self.lb, "bash", "-c", RUNTIME_API_SCRIPT, "_",
                              self.admin_port(), line)
        if result.returncode != 0:
            raise RolloutError(f"HAProxy's Runtime API (`{line}`) through `docker compose exec "
                               f"haproxy` failed: {last_line(result.stderr)}")
        return result.stdout

    def ensure_color_map(self) -> None:
        """Before HAProxy starts: the map file must exist (HAProxy refuses to start without it)
        and be readable by HAProxy's user in the container (uid 99). A missing one is created
        with blue active; an existing one is kept, so the last switch survives `down` and `up`."""
        path = self.color_map
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
            path.parent.chmod(0o755)
        if not path.exists():
            write_map(path, COLORS[0])
            path.chmod(0o644)
        for item, bits, fix in ((path.parent, 0o005, "o+rx"), (path, 0o004, "o+r")):
            if item.stat().st_mode & bits != bits:
                raise RolloutError(f"{item} must be readable by HAProxy in its container (uid 99): "
                                   f"chmod {fix} {item}")
        read_map(self.color_map)  # a damaged file: refuse now, not with HAProxy sending 503s

    def color_map_paths(self) -> tuple[Path, str]:
        ref = str(self.haproxy_environment().get("HAPROXY_COLOR_MAP") or "")
        if not self.blue_green or not ref:
            raise RolloutError(f"{self.compose_file.name} is not a blue/green stack "
                               "(no HAPROXY_COLOR_MAP)", exit_code=2)
        for volume in self.config()["services"][self.lb].get("volumes", []):
            target = str(volume.get("target", "")).rstrip("/")
            if volume.get("type") == "bind" and ref.startswith(target + "/"):
                return Path(str(volume["source"])) / ref[len(target) + 1 :], ref
        raise RolloutError(f"{self.compose_file.name}: HAPROXY_COLOR_MAP {ref} is not in a "
                           "directory bind-mounted from this machine")

    # -- helpers -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The compose file as compose resolves it (variables, .env, relative paths); cached."""
        if self._config is None:
            try:
                self._config = dict(json.loads(self.run("config", "--format", "json")))
            except ValueError as exc:
                raise RolloutError(f"`docker compose config` gave no JSON: {exc}") from None
        return self._config

    def haproxy_environment(self) -> dict[str, Any]:
        environment = self.config().get("services", {}).get(self.lb, {}).get("environment")
        return dict(environment) if isinstance(environment, dict) else {}

    def version_variable(self, service: str) -> str:
        """The compose variable that sets a service's image tag and version."""
        return f"{service.upper()}_VERSION" if self.blue_green else "SERVICE_VERSION"

    def has_containers(self) -> bool:
        """Whether this file's services have containers (in any state) in the project."""
        try:
            result = self.compose("ps", "-a", "-q", *self.services())
        except RolloutError:
            return False
        return result.returncode == 0 and bool(result.stdout.strip())

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


def docker(*args: str, timeout_s: float = QUICK_TIMEOUT_S, merge: bool = False) -> str:
    """A plain docker command that must succeed (`merge`: stderr too, as `docker logs` writes both)."""
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False,
                                timeout=timeout_s)
    except FileNotFoundError:
        raise RolloutError("no `docker` command on PATH") from None
    except subprocess.TimeoutExpired:
        raise RolloutError(f"`docker {args[0]}` did not finish within {timeout_s:g}s") from None
    if result.returncode != 0:
        raise RolloutError(f"`docker {' '.join(args[:2])}` failed: {last_line(result.stderr)}")
    return result.stdout + (result.stderr if merge else "")


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no error output)"
