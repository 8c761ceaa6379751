"""The deploy lock (deploy.lock): refused at once naming the holder; gone with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.errors import RolloutError
from deploy.lock import deploy_lock

HOLD = """
import sys, time
from pathlib import Path
from deploy.lock import deploy_lock
with deploy_lock(Path(sys.argv[1]), "rollout deploy v2"):
    print("held", flush=True)
    time.sleep(60)
"""


def holder(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_deploy_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    proc = holder(path)
    try:
        began = time.monotonic()
        with pytest.raises(RolloutError, match=rf"another deploy holds this stack: pid {proc.pid} on .*"
                                               r"`rollout deploy v2`, since "), deploy_lock(path):
            pass
        assert time.monotonic() - began < 1.0
    finally:
        proc.kill()
        proc.wait()


def test_a_holder_killed_by_sigkill_leaves_no_lock_and_is_named(tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lock"
    proc = holder(path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with deploy_lock(path, "rollout deploy v3"):
        assert f"taking over the deploy lock of a holder that is gone (pid {proc.pid}" in capfd.readouterr().err
    with deploy_lock(path):  # a holder that finished: nothing to say
        assert "taking over" not in capfd.readouterr().err


def test_a_damaged_lock_file_does_not_stop_a_deploy(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.write_bytes(b"\x00garbage")
    with deploy_lock(path):
        pass
    assert b'"done": true' in path.read_bytes()
