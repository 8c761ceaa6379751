"""What the numbers were measured on: a 2-vCPU shared VM gives different figures than a laptop."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata

from bench.deployer import REPO_ROOT
from deploy.engines.local import haproxy_binary

# The code under test: a change to any of these during a run makes its sections incomparable.
CODE_GLOBS = ("agent/*.py", "service/*.py", "deploy/**/*.py", "haproxy/*.cfg")


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def tool_version(name: str) -> str | None:
    path = shutil.which(name)
    if path is None:
        return None
    if name == "wrk":
        return _first_line([path, "--version"])
    # hey has no --version; Debian's package says which one it is.
    version = _first_line(["dpkg-query", "-W", "-f", "${Version}", name])
    return f"hey {version}" if version != "unknown" else path


def code_fingerprint() -> str:
    """sha256 over the code under test (other people may edit the tree while the bench runs)."""
    digest = hashlib.sha256()
    for pattern in CODE_GLOBS:
        for path in sorted(REPO_ROOT.glob(pattern)):
            digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def git_head() -> str:
    """The commit checked out (read only: `git rev-parse`)."""
    return _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])


def describe() -> dict[str, object]:
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "haproxy": _first_line([haproxy_binary(), "-v"]),
        "uvicorn": metadata.version("uvicorn"),
        "starlette": metadata.version("starlette"),
        "uvloop": metadata.version("uvloop"),
        "hey": tool_version("hey"),
        "wrk": tool_version("wrk"),
        "load_average_start": load_average(),
        "git_head": git_head(),
        "code_fingerprint": code_fingerprint(),
    }
