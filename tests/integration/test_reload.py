"""`rollout reload` on the local stack: HAProxy's master-worker reload (SIGUSR2 through
supervisor), under the strict checker, fails nothing; a configuration that does not load is
refused before anything is signalled."""

from __future__ import annotations

import time
from collections.abc import Callable

from deploy.check.loadcheck import check_ledgers
from deploy.cli import main
from deploy.door import worker_pid
from deploy.engines.local import LocalEngine
from tests.conftest import load_during


def test_rollout_reload_three_times_under_load_fails_nothing(
    stack_factory: Callable[..., LocalEngine],
) -> None:
    """Three reloads, each a new worker, the master kept. The local stack has spare slots whose
    programs are stopped: a new worker that started with every server UP would send requests to
    them (14 of 20,000 failed that way); it starts from the old worker's server states instead."""
    engine = stack_factory()
    master = engine.supervisor("getProcessInfo", "haproxy")["pid"]
    pids = [worker_pid(engine.haproxy_command("show info"))]

    def reloads() -> None:
        for _ in range(3):
            assert main(["--state-dir", str(engine.root), "reload"]) == 0
            pids.append(worker_pid(engine.haproxy_command("show info")))
            time.sleep(1.0)

    result, _ = load_during(engine.frontend_url(), reloads, requests=20_000)
    print(f"\nload: {result.total} requests, {result.failed} failed, p99 {result.percentile(99):.1f} ms; "
          f"workers {pids}")
    assert len(set(pids)) == 4, pids  # three reloads, each a new worker
    assert engine.supervisor("getProcessInfo", "haproxy")["pid"] == master  # reloaded, not restarted
    assert result.total >= 20_000 and result.failed == 0, dict(result.failures)
    assert check_ledgers(result, engine.ledgers()).ok
    assert not (engine.root / "haproxy.state").exists()  # never left to go stale


def test_rollout_reload_refuses_a_configuration_that_does_not_load(
    stack_factory: Callable[..., LocalEngine],
) -> None:
    engine = stack_factory()
    servers = engine.root / "servers.cfg"
    good = servers.read_text()
    before = worker_pid(engine.haproxy_command("show info"))
    servers.write_text(good + "    no-such-keyword here\n")
    try:
        assert main(["--state-dir", str(engine.root), "reload"]) == 1
    finally:
        servers.write_text(good)
    assert worker_pid(engine.haproxy_command("show info")) == before  # nothing was signalled
    assert main(["--state-dir", str(engine.root), "reload"]) == 0
    assert worker_pid(engine.haproxy_command("show info")) != before
