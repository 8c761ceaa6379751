"""The `docker service update` that a Swarm deploy is: rollout's flags mapped onto Swarm's own."""

from __future__ import annotations

import pytest

from deploy.engines.swarm_update import update_command
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
