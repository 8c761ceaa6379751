"""The local stack's free slots are parked: HAProxy neither sends them traffic nor polls them
(no health check, no agent-check), through surge deploys and reloads; a slot is unparked before
an instance starts in it. The control: the same listener counts an unparked slot's polls."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deploy.cli import main
from deploy.engines.local import LocalEngine
from deploy.model import Instance
from deploy.strategies.rolling import read_servers
from tests.conftest import load_during


@contextmanager
def counting_connects(ports: list[int]) -> Iterator[list[int]]:
    """Listen on the slot's ports (nothing else does: it is free) and count who connects."""
    count = [0]
    listeners = []
    for port in ports:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.settimeout(0.1)
        listeners.append(listener)
    done = threading.Event()

    def accept(listener: socket.socket) -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            count[0] += 1
            connection.close()

    threads = [threading.Thread(target=accept, args=(listener,)) for listener in listeners]
    for thread in threads:
        thread.start()
    try:
        yield count
    finally:
        done.set()
        for thread in threads:
            thread.join()
        for listener in listeners:
            listener.close()


def polls_in_a_second(engine: LocalEngine, slot: Instance) -> int:
    with counting_connects([engine.agent_port(slot), engine.app_port(slot)]) as count:
        time.sleep(1.0)
    return count[0]


def test_free_slots_are_parked_through_a_surge_deploy_and_a_reload(
    stack_factory: Callable[..., LocalEngine],
) -> None:
    engine = stack_factory(instances=2)
    app1, _app2, app3, app4 = engine.slots()
    statuses = {row.server: row.status for row in read_servers(engine)}
    assert statuses == {"app1": "UP", "app2": "UP", "app3": "MAINT", "app4": "MAINT"}
    assert polls_in_a_second(engine, app4) == 0

    engine.haproxy().unpark([app4])  # the control: the same count sees an unparked slot's polls
    assert polls_in_a_second(engine, app4) >= 5  # agent-check every 100 ms, health every 500 ms
    engine.haproxy().park([app4])

    def surge_then_reload() -> None:
        assert main(["--state-dir", str(engine.root), "deploy", "v2", "--surge", "--watch-for", "0.5"]) == 0
        assert main(["--state-dir", str(engine.root), "reload"]) == 0

    result, _ = load_during(engine.frontend_url(), surge_then_reload, requests=3_000)
    assert result.failed == 0, dict(result.failures)
    assert [i.name for i in engine.instances()] == [app3.name, app4.name]
    statuses = {row.server: row.status for row in read_servers(engine)}
    assert statuses == {"app1": "MAINT", "app2": "MAINT", "app3": "UP", "app4": "UP"}
    assert polls_in_a_second(engine, app1) == 0
