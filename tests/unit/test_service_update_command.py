"""The `docker service update` that a Swarm deploy is: rollout's flags mapped onto Swarm's own."""

from __future__ import annotations

import pytest

from agent.haproxy import ServerStat
from deploy.engines.swarm_update import update_command, wait_for_slots
from deploy.errors import RolloutError


class Stack:
    @staticmethod
    def full_name(service: str) -> str:
        return f"zdh_{service}"


def test_watch_for_and_no_rollback_become_swarms_monitor_and_failure_action() -> None:
    command = update_command(Stack(), None, {}, "start-first", 2, monitor=7.5, failure_action="pause")  # type: ignore[arg-type]
    assert command == ["service", "update", "--detach", "--force", "--update-order", "start-first",
                       "--update-parallelism", "2", "--update-monitor", "7500ms",
                       "--update-failure-action", "pause", "zdh_app"]


def test_without_them_the_stack_files_settings_stay() -> None:
    command = update_command(Stack(), None, {"A": "b c"}, None, None)  # type: ignore[arg-type]
    assert command == ["service", "update", "--detach", "--force", "--env-add", "A=b c", "zdh_app"]
    with pytest.raises(RolloutError, match="start-first or stop-first"):
        update_command(Stack(), None, {}, "sideways", None)  # type: ignore[arg-type]


def test_the_slot_budget_counts_the_parallelism_asked_for() -> None:
    from deploy.engines.swarm import check_slot_budget

    check_slot_budget(3, 1, 7, "HAProxy has")  # 3 old rows held while they drain, 3 new, 1 beside
    with pytest.raises(RolloutError, match=r"3 replicas updated 3 at a time need 9 server slots .*; HAProxy has 8"):
        check_slot_budget(3, 3, 8, "HAProxy has")


def slots(*addresses: str) -> list[ServerStat]:
    return [ServerStat("app", f"app{i}", "UP" if addr else "MAINT (resolution)", 0, 0, addr=addr)
            for i, addr in enumerate(addresses, 1)]


class Pages:
    """Each HAProxy's rows as the update would read them, one answer per read; a clock that
    moves one second per sleep."""

    def __init__(self, *reads: list[list[ServerStat]]) -> None:
        self.reads = list(reads)
        self.t = 0.0
        self.said: list[str] = []

    def rows(self) -> list[list[ServerStat]]:
        return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_an_update_waits_for_the_slots_its_new_tasks_need_in_every_haproxy() -> None:
    held = slots("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000", "", "")  # 2 free
    freed = slots("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "", "", "")  # 3 free
    pages = Pages([freed, held], [freed, held], [freed, freed])
    wait_for_slots(pages.rows, 3, pages.said.append, sleep=pages.sleep, now=lambda: pages.t)
    assert pages.t == 2.0 and len(pages.said) == 1 and "(2 now)" in pages.said[0]


def test_enough_slots_start_at_once_and_too_few_for_too_long_is_one_line() -> None:
    free = slots("10.0.0.1:8000", "", "", "")
    pages = Pages([free, free])
    wait_for_slots(pages.rows, 3, pages.said.append, sleep=pages.sleep, now=lambda: pages.t)
    assert pages.t == 0.0 and pages.said == []
    short = Pages([free, slots("10.0.0.1:8000", "10.0.0.2:8000", "", "")])
    with pytest.raises(RolloutError, match=r"after 5s one still has 2 .*raise ZDH_SLOTS"):
        wait_for_slots(short.rows, 3, short.said.append, wait_s=5, sleep=short.sleep, now=lambda: short.t)
    assert short.t == 5.0
