"""Which local slots are parked, read from HAProxy's own `show servers state` (a sample of its
2.8 output): only a parked slot is set ready by us, never one its agent took out."""

from __future__ import annotations

from typing import Any

import pytest

from deploy.engines.local_haproxy import LocalHAProxy
from deploy.errors import RolloutError
from deploy.model import Instance

STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
4 app 1 app1 127.0.0.1 2 0 1 1 1 15 3 3 6 23 0 0 - 24202 - 0 0 - - 24206
4 app 2 app2 127.0.0.1 0 1 1 1 1 15 3 0 14 22 0 0 - 24203 - 0 0 - - 24207
4 app 3 app3 127.0.0.1 0 1 1 1 2 1 0 0 14 18 0 0 - 24204 - 0 0 - - 24208
"""


class Engine:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def haproxy_command(self, line: str) -> str:
        self.sent.append(line)
        return STATE if line.startswith("show servers state") else ""


def slot(name: str) -> Instance:
    return Instance(name, "127.0.0.1:1", "app")


def haproxy() -> tuple[LocalHAProxy, Engine]:
    engine = Engine()
    return LocalHAProxy(engine), engine  # type: ignore[arg-type]


def test_only_a_slot_whose_agent_check_is_off_is_parked() -> None:
    local, _ = haproxy()
    assert [local.parked(slot(name)) for name in ("app1", "app2", "app3")] == [False, False, True]
    with pytest.raises(RolloutError, match="no server app/app9"):
        local.parked(slot("app9"))


def test_unpark_sets_ready_only_what_was_parked() -> None:
    local, engine = haproxy()
    local.unpark([slot("app2"), slot("app3")])
    changes: list[Any] = [line for line in engine.sent if not line.startswith("show")]
    assert changes == ["enable agent app/app3", "set server app/app3 state ready"]


def test_park_takes_a_slot_out_then_stops_polling_it() -> None:
    local, engine = haproxy()
    local.park([slot("app1")])
    assert engine.sent == ["set server app/app1 state maint", "disable agent app/app1"]
