"""One deploy at a time per stack: an flock(2) lock on a file beside the stack's state.

The kernel releases an flock when its holder dies, however it dies (Ctrl-C, SIGKILL, the power),
so a lock is never left behind; the file only says who holds it (pid, host, command, since) and
who held it last. deploy.sh takes the same lock with flock(1) on the same file, so `rollout` and
`deploy.sh` exclude each other too. Reads (`status`, `history`) never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from deploy.errors import RolloutError

LOCK_NAME = ".zdh-deploy.lock"


def holder_of(text: str) -> str:
    """The lock file's words about its holder, in one line."""
    try:
        info = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} on {info['host']}, `{str(info['command'])[:200]}`, since {since}"
    except (ValueError, KeyError, TypeError):
        return text.strip()[:300] or "unknown (the lock file says nothing)"


@contextlib.contextmanager
def deploy_lock(path: Path, command: str | None = None) -> Iterator[None]:
    """Hold the stack's deploy lock for the block, or refuse at once naming the holder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise RolloutError(f"cannot open the deploy lock {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_of(os.pread(fd, 4096, 0).decode(errors="replace"))
            raise RolloutError(f"another deploy holds this stack: {holder}; wait for it, or stop that "
                               f"process (the lock goes with it: {path})") from None
        before = os.pread(fd, 4096, 0).decode(errors="replace")
        if before.strip() and not finished(before):
            print(f"rollout: taking over the deploy lock of a holder that is gone ({holder_of(before)}); "
                  "its deploy did not finish: `rollout status` and `rollout history` show where it "
                  "stopped", file=sys.stderr, flush=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "command": command or " ".join(sys.argv)}
        try:
            write(fd, json.dumps(info))
        except OSError as exc:
            raise RolloutError(f"cannot write the deploy lock {path}: {exc.strerror or exc}") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # the flock still goes with the descriptor
                write(fd, json.dumps(info | {"done": True, "ended": time.time()}))
    finally:
        os.close(fd)  # releases the flock


def holder(path: Path) -> str | None:
    """Who holds the lock now (None: nobody), asked without waiting and without taking it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder_of(os.pread(fd, 4096, 0).decode(errors="replace"))
    finally:
        os.close(fd)
    return None


def finished(text: str) -> bool:
    try:
        return bool(json.loads(text).get("done"))
    except (ValueError, AttributeError):
        return False


def write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode() + b"\n", 0)
