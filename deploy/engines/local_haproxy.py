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

AGENT_ENABLED = 0x04  # CHK_ST_ENABLED, in `show servers state`'s srv_agent_state


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
        """Only a parked slot: a slot its agent took out (maint) stays out until its new agent
        says ready, never `ready` from us before its app listens."""
        for slot in slots:
            if self.parked(slot):
                self.runtime_api(f"enable agent {slot.backend}/{slot.name}",
                                 f"set server {slot.backend}/{slot.name} state ready")

    def parked(self, slot: Instance) -> bool:
        """Its agent-check is off (`show servers state`: srv_agent_state without CHK_ST_ENABLED)."""
        lines = self.command(f"show servers state {slot.backend}").splitlines()
        header = next((line.lstrip("# ").split() for line in lines if line.startswith("# ")), [])
        for line in lines:
            fields = line.split()
            if "srv_agent_state" in header and len(fields) == len(header) and fields[3] == slot.name:
                return not int(fields[header.index("srv_agent_state")]) & AGENT_ENABLED
        raise RolloutError(f"HAProxy has no server {slot.backend}/{slot.name} (show servers state)")

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
