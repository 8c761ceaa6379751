"""The local stack's HAProxy as deploy/door.py reaches it (engines/base.py: HAProxyHandle)."""

from __future__ import annotations

import os
import subprocess
import xmlrpc.client
from typing import TYPE_CHECKING

from deploy.engines.local_stack import haproxy_binary
from deploy.errors import RolloutError
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

    def signal_reload(self) -> None:
        try:
            self.engine.supervisor("signalProcess", "haproxy", "USR2")
        except xmlrpc.client.Fault as fault:
            raise RolloutError(f"supervisor: {fault.faultString}") from None
