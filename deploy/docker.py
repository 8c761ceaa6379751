"""The compose engine: the same `rollout` commands over docker-compose.yml (HAProxy + app1..app3)
or, for blue/green, docker-compose.bluegreen.yml (HAProxy + blue1 blue2 green1 green2).

Docker restarts a container exactly as supervisor does a program: SIGTERM to PID 1 (here
drain-agent), wait `stop_grace_period`, SIGKILL. A restart is `docker compose up -d --no-deps
--force-recreate appN` with SERVICE_VERSION (and any extra variables) in compose's
environment: the compose file tags the image and sets the app's version from it, so the
new container is the new release. Ports are read back from docker (`compose port`), so a
stack started with other ZDH_PORT / ZDH_STATS_PORT values is still found.

Blue/green: each pool takes its version from its own variable (BLUE_VERSION, GREEN_VERSION),
so recreating one pool never touches the other. The map file is a host file in a directory
bind-mounted (read-only) into HAProxy; a switch's `set map` reaches HAProxy's Runtime API,
which is never published, through `docker compose exec haproxy` and bash's /dev/tcp (the
image has no socat).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploy import bluegreen
from deploy.engine import Instance
from deploy.errors import RolloutError

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
BLUEGREEN_FILE = REPO_ROOT / "docker-compose.bluegreen.yml"
SERVICES = ("app1", "app2", "app3")
POOL_SERVICES = tuple(f"{color}{i}" for color in bluegreen.COLORS for i in (1, 2))
POOL_BUILDER = {color: f"{color}1" for color in bluegreen.COLORS}  # the pool's service with build:
FRONTEND_PORT = 8785  # inside the haproxy container; published as ${ZDH_PORT:-8785}
STATS_PORT = 8404  # published as 127.0.0.1:${ZDH_STATS_PORT:-8404}
UP_TIMEOUT_S = 600.0  # a cold build downloads the dependencies
# --force-recreate waits for the old container: stop_grace_period (60 s) and then some.
RECREATE_TIMEOUT_S = 120.0
QUICK_TIMEOUT_S = 15.0
VERSION_SCRIPT = """
import json, os, urllib.request as u
port = os.environ.get("SERVICE_PORT", "8000")
opener = u.build_opener(u.ProxyHandler({}))
print(json.load(opener.open(f"http://127.0.0.1:{port}/version", timeout=2))["version"])
"""
# One Runtime API command, run inside the haproxy container: HAProxy answers and closes.
RUNTIME_API_SCRIPT = 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; printf "%s\\n" "$2" >&3; cat <&3'


class DockerEngine:
    name = "docker"

    def __init__(
        self,
        compose_file: Path | None = None,
        project: str | None = None,
        env: Mapping[str, str] | None = None,
        blue_green: bool = False,
    ) -> None:
        """`blue_green`: the two-pool stack; its compose file is then docker-compose.bluegreen.yml."""
        self.blue_green = blue_green
        self.compose_file = (compose_file or (BLUEGREEN_FILE if blue_green else COMPOSE_FILE)).resolve()
        self.root = self.compose_file.parent
        self.project = project
        self.env = {**os.environ, **(env or {})}
        self._addresses: dict[int, str] = {}
        self._built: set[tuple[str, str]] = set()
        self._config: dict[str, Any] | None = None

    # -- docker compose ----------------------------------------------------------------

    def compose(
        self, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = QUICK_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-f", str(self.compose_file)]
        if self.project:
            command += ["-p", self.project]
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

    def instances(self) -> list[Instance]:
        if self.blue_green:
            return [Instance(name, name, name.rstrip("0123456789")) for name in POOL_SERVICES]
        return [Instance(name, name) for name in SERVICES]

    def is_up(self) -> bool:
        try:
            result = self.compose("ps", "-q", "--status", "running", "haproxy")
        except RolloutError:
            return False
        return result.returncode == 0 and bool(result.stdout.strip())

    def up(self) -> None:
        if self.is_up():
            raise RolloutError(f"a compose stack from {self.compose_file} is already running; "
                               "`rollout --engine docker down` first")
        if not self.blue_green:
            self.run("up", "-d", "--wait", "--build", "--pull", "never", timeout_s=UP_TIMEOUT_S)
            self._addresses.clear()
            return
        self.ensure_color_map()
        # One build per distinct image tag (compose would build blue1 and green1 in parallel,
        # twice the work when both pools are on the same version).
        services = self.config().get("services", {})
        builders = {str(services[s].get("image")): s for s in reversed(POOL_BUILDER.values())}
        self.run("build", *sorted(builders.values()), timeout_s=UP_TIMEOUT_S)
        self.run("up", "-d", "--wait", "--pull", "never", timeout_s=UP_TIMEOUT_S)
        self._addresses.clear()

    def down(self) -> None:
        self.run("down", "--remove-orphans", timeout_s=RECREATE_TIMEOUT_S + 30)
        self._addresses.clear()

    def published(self, port: int) -> str:
        """host:port where docker publishes the haproxy container's `port` (cached once found)."""
        if port not in self._addresses:
            result = self.compose("port", "haproxy", str(port))
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

    def frontend_url(self) -> str:
        return f"http://{self.published(FRONTEND_PORT)}"

    def restart(self, instance: Instance, version: str | None, env: Mapping[str, str]) -> None:
        self.check_passed_through(env)
        variable = self.version_variable(instance)
        new_version = version or self.configured_version(instance) or self.env.get(variable) or "v1"
        compose_env = {**env, variable: new_version}
        if (variable, new_version) not in self._built:
            # The compose file tags the image with the version: build it (cached) before use.
            # Blue/green: only this pool's builder, so the other pool's tag stays as it is.
            builder = (POOL_BUILDER[instance.backend],) if self.blue_green else ()
            self.run("build", *builder, env=compose_env, timeout_s=UP_TIMEOUT_S)
            self._built.add((variable, new_version))
        self.run("up", "-d", "--no-deps", "--force-recreate", "--pull", "never", instance.name,
                 env=compose_env, timeout_s=RECREATE_TIMEOUT_S)

    def version_of(self, instance: Instance) -> str | None:
        try:
            result = self.compose("exec", "-T", instance.name, "python", "-c", VERSION_SCRIPT,
                                  timeout_s=5.0)
        except RolloutError:
            return None
        answer = result.stdout.strip()
        return answer if result.returncode == 0 and answer else None

    def ledgers(self) -> list[Path]:
        return []  # the containers' files are not ours to read; strict_http still counts every request

    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        try:
            result = self.compose("logs", "--no-log-prefix", "--tail", str(lines), instance.name)
        except RolloutError as exc:
            return f"(no logs: {exc})"
        return (result.stdout + result.stderr).rstrip() or f"(no logs for {instance.name})"

    # -- blue/green (deploy.bluegreen.BlueGreenEngine) ------------------------------------

    @property
    def color_map(self) -> Path:
        """The map file on this machine: HAPROXY_COLOR_MAP under the bind mount's source."""
        return self.color_map_paths()[0]

    @property
    def color_map_ref(self) -> str:
        """HAPROXY_COLOR_MAP: the map file's path inside the haproxy container."""
        return self.color_map_paths()[1]

    def haproxy_command(self, line: str) -> str:
        """One Runtime API command, sent from inside the haproxy container (never published)."""
        address = str(self.haproxy_environment().get("HAPROXY_ADMIN_SOCKET", ""))
        port = address.rpartition(":")[2]
        if not port.isdigit():
            raise RolloutError(f"HAPROXY_ADMIN_SOCKET {address!r} in {self.compose_file.name}: "
                               "expected a TCP address such as ipv4@0.0.0.0:9999")
        result = self.compose("exec", "-T", "haproxy", "bash", "-c", RUNTIME_API_SCRIPT, "_", port, line)
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
            bluegreen.write_map(path, bluegreen.COLORS[0])
            path.chmod(0o644)
        for item, bits, fix in ((path.parent, 0o005, "o+rx"), (path, 0o004, "o+r")):
            if item.stat().st_mode & bits != bits:
                raise RolloutError(f"{item} must be readable by HAProxy in its container (uid 99): "
                                   f"chmod {fix} {item}")
        bluegreen.file_color(self)  # a damaged file: refuse now, not with HAProxy sending 503s

    def color_map_paths(self) -> tuple[Path, str]:
        ref = str(self.haproxy_environment().get("HAPROXY_COLOR_MAP") or "")
        if not self.blue_green or not ref:
            raise RolloutError(f"{self.compose_file.name} is not a blue/green stack "
                               "(no HAPROXY_COLOR_MAP)", exit_code=2)
        for volume in self.config()["services"]["haproxy"].get("volumes", []):
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
        environment = self.config().get("services", {}).get("haproxy", {}).get("environment")
        return dict(environment) if isinstance(environment, dict) else {}

    def version_variable(self, instance: Instance) -> str:
        """The compose variable that sets the instance's image tag and version."""
        return f"{instance.backend.upper()}_VERSION" if self.blue_green else "SERVICE_VERSION"

    def has_containers(self) -> bool:
        """Whether this file's instances have containers (in any state) in the project."""
        try:
            result = self.compose("ps", "-a", "-q", *(i.name for i in self.instances()))
        except RolloutError:
            return False
        return result.returncode == 0 and bool(result.stdout.strip())

    def configured_version(self, instance: Instance) -> str | None:
        """SERVICE_VERSION the instance's container was created with (None if it has none)."""
        try:
            ids = self.run("ps", "-q", instance.name).split()
        except RolloutError:
            return None
        if not ids:
            return None
        result = subprocess.run(
            ["docker", "inspect", "--format", "{{json .Config.Env}}", ids[0]],
            capture_output=True, text=True, check=False, timeout=QUICK_TIMEOUT_S,
        )
        if result.returncode != 0:
            return None
        for item in json.loads(result.stdout or "[]"):
            key, _, value = str(item).partition("=")
            if key == "SERVICE_VERSION":
                return value or None
        return None

    def check_passed_through(self, env: Mapping[str, str]) -> None:
        """Compose passes only the variables its file names: refuse others instead of dropping them."""
        text = self.compose_file.read_text()
        missing = [key for key in env if not re.search(r"\$\{" + re.escape(key) + r"\b", text)]
        if missing:
            raise RolloutError(
                f"--env {', '.join(missing)}: {self.compose_file.name} does not pass "
                f"{'it' if len(missing) == 1 else 'them'} to the containers; add "
                f"`{missing[0]}: ${{{missing[0]}:-default}}` under x-app-env there"
            )


def find_stack(env: Mapping[str, str]) -> DockerEngine:
    """The engine for commands on a running stack: blue/green or rolling, by COMPOSE_FILE if it
    names one of the two files, else by which of them has containers in the project."""
    merged = {**os.environ, **env}
    separator = merged.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
    names = {Path(item).name for item in merged.get("COMPOSE_FILE", "").split(separator) if item}
    if BLUEGREEN_FILE.name in names or COMPOSE_FILE.name in names:
        return DockerEngine(env=env, blue_green=BLUEGREEN_FILE.name in names)
    rolling, blue_green = DockerEngine(env=env), DockerEngine(env=env, blue_green=True)
    if blue_green.has_containers():
        if rolling.has_containers():
            raise RolloutError(
                f"both {COMPOSE_FILE.name} and {BLUEGREEN_FILE.name} have a stack here; say which "
                f"with COMPOSE_FILE={BLUEGREEN_FILE.name} (or {COMPOSE_FILE.name})", exit_code=2)
        return blue_green
    return rolling


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no error output)"
