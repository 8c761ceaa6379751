"""The tool's own state on disk: written atomically (write, fsync, rename), read with one clear
error when damaged, so a crash or a full disk never leaves half a file behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from deploy.errors import RolloutError


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Readers see the old file or the new one, never a part; on error the old one stays."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise RolloutError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise RolloutError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, fix: str) -> Any:
    """The file's JSON; a damaged file is one line that names it and says `fix`."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise RolloutError(f"{path} is damaged ({str(exc)[:120]}); {fix}") from None
