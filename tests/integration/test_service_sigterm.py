"""The service alone, as a real uvicorn process: SIGTERM during slow requests."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import Processes, free_port, http_ok, wait_for


def test_sigterm_finishes_in_flight_refuses_new_and_exits_0(procs: Processes) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = procs.start([sys.executable, "-m", "service"], {"SERVICE_PORT": str(port), "SERVICE_INSTANCE": "app"}, "service")
    wait_for(lambda: http_ok(f"{base}/readyz"), what="service ready")

    with ThreadPoolExecutor(8) as pool, httpx.Client(timeout=10) as client:
        slow = [pool.submit(httpx.get, f"{base}/cms?delay_ms=1500", timeout=10) for _ in range(8)]
        wait_for(lambda: "service_in_flight_requests 8.0" in client.get(f"{base}/metrics").text,
                 what="8 requests in flight")
        app.send_signal(signal.SIGTERM)
        wait_for(lambda: client.get(f"{base}/readyz").status_code == 503, what="readiness 503")

        late = httpx.get(f"{base}/cms")  # a new connection, while the slow ones run
        assert late.status_code == 503
        assert late.headers["connection"] == "close"
        assert late.headers["retry-after"] == "1"
        assert httpx.get(f"{base}/healthz").status_code == 200  # still alive while draining
        assert app.poll() is None

        assert [f.result().status_code for f in slow] == [200] * 8
    assert app.wait(timeout=10) == 0
    log = procs.log("service")
    assert "event=service.draining instance=app in_flight=8" in log
    assert "event=service.drained" in log


def test_a_repeated_sigterm_keeps_draining_and_a_second_ctrl_c_forces_the_exit(procs: Processes) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = procs.start([sys.executable, "-m", "service"], {"SERVICE_PORT": str(port), "SERVICE_INSTANCE": "app"}, "service")
    wait_for(lambda: http_ok(f"{base}/readyz"), what="service ready")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"{base}/cms?delay_ms=30000", timeout=40)
        wait_for(lambda: "service_in_flight_requests 1.0" in httpx.get(f"{base}/metrics").text,
                 what="request in flight")
        app.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 503, what="draining")
        app.send_signal(signal.SIGTERM)  # as the agent's parent-death signal repeats, per thread
        time.sleep(1.5)
        assert app.poll() is None  # still draining: the slow request is not cut
        app.send_signal(signal.SIGINT)  # a second Ctrl-C
        assert app.wait(timeout=5) == 0  # did not wait 30 s for the slow request
        with contextlib.suppress(httpx.HTTPError):
            slow.result()
