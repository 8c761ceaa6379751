"""This machine's processes and ports, by pid and number: never by name."""

from __future__ import annotations

import os
import socket
from pathlib import Path


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
