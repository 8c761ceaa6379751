"""The local stack's HAProxy: as deploy/door.py reaches it (engines/base.py: HAProxyHandle), and
the free slots it parks."""

from __future__ import annotations

import os
import subprocess
import xmlrpc.client
from typing import TYPE_CHECKING

from deploy.engines.local_stack import haproxy_binary
from deploy.errors import RolloutError
from deploy.model import Instance
from deploy.statefile import write_atomic

if TYPE_CHECKING:
    from deploy.engines.local import LocalEngine


class LocalHAProxy:
    """The stack's HAProxy under supervisor: its admin socket (mode 600), its files, its master
    signalled by supervisor."""

    name = "haproxy"

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine

    def command(self, line: str) -> str:
        return self.engine.haproxy_command(line)

    def config_alert(self) -> str | None:
        configs = [arg for cfg in self.engine.haproxy_configs() for arg in ("-f", str(cfg))]
        check = subprocess.run([haproxy_binary(), "-c", *configs], capture_output=True, text=True,
                               check=False, env={**os.environ, **self.engine.haproxy_env()})
        if check.returncode == 0:
            return None
        return next((line for line in (check.stdout + check.stderr).splitlines() if "[ALERT]" in line),
                    check.stderr.strip() or "haproxy -c failed")

    @property
    def state_file(self) -> str:
        return str(self.engine.server_state)

    def put_state(self, text: str) -> None:
        write_atomic(self.engine.server_state, text)

    def drop_state(self) -> None:
        self.engine.server_state.unlink(missing_ok=True)

    def park(self, slots: list[Instance]) -> None:
        """A free slot takes no traffic and is not polled: maint stops its health check, and its
        agent-check is disabled (at 64 instances the 64 empty spares made 768 of HAProxy's 1,119
        check connections a second). Parked once its program is stopped, unparked before one
        starts, so no instance is ever left parked; a HAProxy restarted from its files polls
        every slot again, which costs only those checks."""
        for slot in slots:
            self.runtime_api(f"set server {slot.backend}/{slot.name} state maint",
                             f"disable agent {slot.backend}/{slot.name}")

    def unpark(self, slots: list[Instance]) -> None:
        """Its agent is polled again; the slot stays in maintenance until the new agent says
        `ready` (an agent's answer lifts it). Setting it ready here would put it back UP on its
        old check result before its app listens (CI saw 42 requests answered 503)."""
        for slot in slots:
            self.runtime_api(f"enable agent {slot.backend}/{slot.name}")

    def runtime_api(self, *commands: str) -> None:
        for command in commands:
            reply = self.command(command).strip()
            if reply:
                raise RolloutError(f"HAProxy refused `{command}`: {reply[:200]}")

    def signal_reload(self) -> None:
        try:
            self.engine.supervisor("signalProcess", "haproxy", "USR2")
        except xmlrpc.client.Fault as fault:
            raise RolloutError(f"supervisor: {fault.faultString}") from None
