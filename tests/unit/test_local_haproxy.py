"""Parking a local slot: out of rotation and not polled; unparking only lets its agent be polled
again, and the new agent's `ready` is what lifts the maintenance."""

from __future__ import annotations

from deploy.engines.local_haproxy import LocalHAProxy
from deploy.model import Instance


class Engine:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def haproxy_command(self, line: str) -> str:
        self.sent.append(line)
        return ""


def slot(name: str) -> Instance:
    return Instance(name, "127.0.0.1:1", "app")


def haproxy() -> tuple[LocalHAProxy, Engine]:
    engine = Engine()
    return LocalHAProxy(engine), engine  # type: ignore[arg-type]


def test_unpark_only_lets_the_agent_be_polled_again_its_ready_lifts_the_maint() -> None:
    local, engine = haproxy()
    local.unpark([slot("app3")])
    assert engine.sent == ["enable agent app/app3"]


def test_park_takes_a_slot_out_then_stops_polling_it() -> None:
    local, engine = haproxy()
    local.park([slot("app1")])
    assert engine.sent == ["set server app/app1 state maint", "disable agent app/app1"]
