"""HAProxy re-sends only what provably never reached the app (haproxy.cfg's retry-on): a POST
the app may have processed is never run twice, whatever the app does after its work. Each
test has its control: the old `retry-on conn-failure empty-response 503`, which the same
harness catches running POSTs twice."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import HAProxy, Processes, free_port, wait_for

APPS = Path(__file__).parent / "apps"
REPLAYING = "conn-failure empty-response 503"  # the control: what this project used to retry


def post_all(url: str, ids: list[str], delay_ms: int = 0) -> Counter[int]:
    """POST each id once (never re-sent by the client); the statuses, 0 for a transport error."""
    def post(request_id: str) -> int:
        try:
            return httpx.post(f"{url}/cms?delay_ms={delay_ms}", content=b"{}", timeout=30,
                              headers={"x-request-id": request_id}).status_code
        except httpx.HTTPError:
            return 0

    with ThreadPoolExecutor(len(ids)) as pool:
        return Counter(pool.map(post, ids))


def runs(ledgers: list[Path]) -> Counter[str]:
    """How many times each POST id was processed, over every instance's ledger."""
    return Counter(line for ledger in ledgers if ledger.exists() for line in ledger.read_text().split())


def haproxy_with(procs: Processes, tmp_path: Path, retry_on: str | None) -> HAProxy:
    return HAProxy(procs, tmp_path, [free_port() for _ in range(3)],
                   **({"HAPROXY_RETRY_ON": retry_on} if retry_on else {}))


@pytest.mark.parametrize("retry_on", [None, REPLAYING], ids=["ours", "control"])
def test_an_app_that_answers_503_after_its_work_is_never_sent_a_post_twice(
        procs: Processes, tmp_path: Path, retry_on: str | None) -> None:
    haproxy = haproxy_with(procs, tmp_path, retry_on)
    ledgers = [tmp_path / f"ledger-app{i}.txt" for i in (1, 2, 3)]
    for i, (port, ledger) in enumerate(zip(haproxy.app_ports, ledgers, strict=True), 1):
        procs.start([sys.executable, str(APPS / "after_work.py")],
                    {"AFTER_WORK_PORT": str(port), "AFTER_WORK_LEDGER": str(ledger)}, f"app{i}")
    for name in ("app1", "app2", "app3"):
        wait_for(lambda name=name: haproxy.server(name).status == "UP", what=f"{name} UP")  # type: ignore[misc]

    ids = [f"after-work-{n}" for n in range(30)]
    statuses = post_all(haproxy.url, ids)
    counted = runs(ledgers)
    assert set(counted) == set(ids)  # every POST was processed...
    if retry_on is None:
        assert statuses == {503: 30}  # ...the client sees the app's own answer...
        assert max(counted.values()) == 1, counted.most_common(3)  # ...and none ran twice
    else:
        assert max(counted.values()) > 1  # the control: 503s re-sent, POSTs run again


@pytest.mark.parametrize("retry_on", [None, REPLAYING], ids=["ours", "control"])
def test_an_app_killed_after_its_work_before_its_answer_never_gets_a_post_twice(
        procs: Processes, tmp_path: Path, retry_on: str | None) -> None:
    """30 POSTs, each recorded at once and answered 3 s later; app1 is SIGKILLed in between.
    Its POSTs were processed and are cut: the clients get an error, and no other instance
    runs them again. (A crash is not a planned restart: these requests fail.)"""
    haproxy = haproxy_with(procs, tmp_path, retry_on)
    ledgers = [tmp_path / f"ledger-app{i}.txt" for i in (1, 2, 3)]
    services = [
        procs.start([sys.executable, "-m", "service"],
                    {"SERVICE_PORT": str(port), "SERVICE_INSTANCE": f"app{i}",
                     "SERVICE_POST_LEDGER": str(ledger)}, f"app{i}")
        for i, (port, ledger) in enumerate(zip(haproxy.app_ports, ledgers, strict=True), 1)
    ]
    for name in ("app1", "app2", "app3"):
        wait_for(lambda name=name: haproxy.server(name).status == "UP", what=f"{name} UP")  # type: ignore[misc]

    ids = [f"killed-{n}" for n in range(30)]
    with ThreadPoolExecutor(1) as pool:
        answers = pool.submit(post_all, haproxy.url, ids, 3000)
        # Kill only once every POST is processed and none answered: a POST app1 had received
        # but not yet run would be cut too, and rightly run nowhere (a crash is not a restart).
        wait_for(lambda: sum(runs(ledgers).values()) == len(ids), timeout=2.5,
                 what="every POST processed before its answer")
        cut = len(ledgers[0].read_text().split())
        os.kill(services[0].pid, signal.SIGKILL)
        statuses = answers.result(timeout=60)
    time.sleep(0.2)
    counted = runs(ledgers)
    assert set(counted) == set(ids)
    print(f"\napp1 SIGKILLed with {cut} processed POSTs unanswered: {dict(statuses)}; "
          f"run twice: {sum(1 for n in counted.values() if n > 1)}")
    if retry_on is None:
        assert max(counted.values()) == 1, counted.most_common(3)
        assert statuses[200] == 30 - cut and cut >= 5  # exactly app1's processed POSTs failed
    else:
        assert max(counted.values()) > 1  # the control: the cut POSTs ran again elsewhere
