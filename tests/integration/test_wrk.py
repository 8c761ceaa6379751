"""The zero, checked by a second client that never re-sends: wrk, during a rolling restart.

(hey is not used for proofs: its Go client silently re-sends a request whose kept-alive
connection was reset, so it can report 0 errors where a client saw a failure.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading

import pytest

from deploy.engines.local import LocalEngine
from deploy.strategies.rolling import rolling_restart

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None and not os.environ.get("CI"),
                                reason="wrk is not installed (apt-get install wrk)")


def wrk_during_restart(engine: LocalEngine) -> tuple[int, int, int]:
    """(requests, non-2xx/3xx, socket errors) of wrk -c 200 over a whole rolling restart."""
    wrk = subprocess.Popen(["wrk", "-t2", "-c200", "-d12s", "--timeout", "10s", f"{engine.frontend_url()}/cms"],
                           stdout=subprocess.PIPE, text=True)
    restart = threading.Timer(1.0, lambda: rolling_restart(engine, "v2", {}, 60, lambda e: None))
    restart.start()
    out, _ = wrk.communicate(timeout=60)
    restart.join()
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return requests, int(non_2xx.group(1)) if non_2xx else 0, sum(map(int, socket.groups())) if socket else 0


def test_wrk_sees_no_error_during_a_rolling_restart(stack_factory) -> None:  # type: ignore[no-untyped-def]
    requests, non_2xx, socket_errors = wrk_during_restart(stack_factory())
    assert requests > 10_000
    assert (non_2xx, socket_errors) == (0, 0)


def test_negative_control_wrk_sees_the_errors_of_plain_restarts(stack_factory) -> None:  # type: ignore[no-untyped-def]
    _, non_2xx, socket_errors = wrk_during_restart(stack_factory(agent=False, retry_on="none", retries=0))
    assert non_2xx + socket_errors > 0
