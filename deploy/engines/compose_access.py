"""The compose project as `rollout` reaches it: which files and services it is (ComposeProject),
the `docker compose` command for it, its model (`config`), and its HAProxy: published ports,
stats, reload, the Runtime API and the blue/green map. DockerEngine (compose.py) builds the
deploy's fleet operations on top."""


from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.colormap import COLORS, read_map, write_map
from deploy.engines.base import HAProxyHandle
from deploy.engines.container_haproxy import ContainerHAProxy
from deploy.errors import RolloutError, last_line

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


class ComposeAccess:
    """The project and its HAProxy, for DockerEngine."""

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

    def compose(
        self, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = QUICK_TIMEOUT_S,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", *(arg for f in self.files for arg in ("-f", str(f))),
                   *(("-p", self.project.name) if self.project.name else ())]
        try:
            return subprocess.run(
                [*command, *args], capture_output=True, text=True, check=False, input=stdin,
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

    def services(self) -> tuple[str, ...]:
        return COLORS if self.blue_green else (self.app_service,)

    def is_up(self) -> bool:
        try:
            result = self.compose("ps", "-q", "--status", "running", self.lb)
        except RolloutError:
            return False
        return result.returncode == 0 and bool(result.stdout.strip())

    def haproxies(self) -> list[HAProxyHandle]:
        return [self.haproxy()]

    def haproxy(self) -> ContainerHAProxy:
        """The project's HAProxy, reached through `docker compose exec` (the official image's
        master is the container's PID 1: `docker compose kill -s USR2` reloads it)."""
        def run_in(argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
            return self.compose("exec", "-T", self.lb, *argv, stdin=stdin)

        def kill(signal: str) -> None:
            self.run("kill", "-s", signal, self.lb)

        command = self.config()["services"][self.lb].get("command") or []
        return ContainerHAProxy(self.lb, run_in, kill, command, self.haproxy_environment(),
                                self.compose_file.name)

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

    @property
    def color_map(self) -> Path:
        """The map file on this machine: HAPROXY_COLOR_MAP under the bind mount's source."""
        return self.color_map_paths()[0]

    @property
    def color_map_ref(self) -> str:
        """HAPROXY_COLOR_MAP: the map file's path inside the haproxy container."""
        return self.color_map_paths()[1]

    def haproxy_command(self, line: str) -> str:
        return self.haproxy().command(line)

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
