"""PID 1 duties: spawn the app, forward signals to it, reap every child, report its exit code.

Modelled on tini: the app runs in its own process group (a terminal's Ctrl-C reaches
the agent, not the app, so the drain comes first), orphans are reaped with
waitpid(-1) on every SIGCHLD, and the exit status becomes a shell-style exit code.
Like `tini -p`, the app gets a parent-death signal: SIGTERM, so an agent killed with
SIGKILL leaves no orphan, and the app still finishes what it has in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from agent.errors import EXIT_EXEC_FAILED, EXIT_NOT_FOUND, AgentError

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Outside a container (not PID 1), adopt the app's orphans so they are reaped too."""
    if os.getpid() == 1:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def exit_code(status: int) -> int:
    """waitpid status -> what a shell would report: the code, or 128 + signal number."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def describe(code: int) -> str:
    if code > 128 and code - 128 in signal.valid_signals():
        name = signal.Signals(code - 128).name
        hint = " (out of memory, or killed after a stop timeout?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


def app_environment() -> dict[str, str] | None:
    """The app's environment: ours, less what a one-file build (PyInstaller) added for itself,
    so the app loads its own libraries, not the agent's bundle. None: inherit as it is."""
    if not getattr(sys, "frozen", False):
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("_PYI_") and k != "_MEIPASS2"}
    original = env.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        env.pop("LD_LIBRARY_PATH", None)
    else:
        env["LD_LIBRARY_PATH"] = original
    return env


def die_with_parent(parent: int) -> None:
    """In the app, before exec: SIGTERM when the agent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Child:
    """The app process. `exited` resolves to its exit code once it has been reaped."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self.pid: int | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def start(self) -> int:
        parent = os.getpid()
        try:
            # process_group=0: own group, so terminal signals reach only the agent.
            process = subprocess.Popen(
                self.command, env=app_environment(), process_group=0,
                preexec_fn=lambda: die_with_parent(parent),
            )
        except FileNotFoundError:
            raise AgentError(f"app command not found: {self.command[0]!r}", EXIT_NOT_FOUND) from None
        except PermissionError:
            raise AgentError(
                f"app command not executable: {self.command[0]!r}", EXIT_EXEC_FAILED
            ) from None
        # We reap with waitpid(-1) ourselves; Popen must never wait on it.
        process.returncode = 0
        self.pid = process.pid
        self.reap()
        return process.pid

    def send(self, sig: int) -> bool:
        """Signal the app; False if it is already gone."""
        if self.pid is None or self.exited.done():
            return False
        try:
            os.kill(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def signal_group(self, sig: int) -> None:
        """Signal what is left of the app's process group (its forked helpers)."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def reap(self) -> None:
        """Collect every exited child; resolve `exited` when it is the app."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid and not self.exited.done():
                self.exited.set_result(exit_code(status))
