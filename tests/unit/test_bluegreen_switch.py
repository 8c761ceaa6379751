"""A blue/green `set map` that gets no answer: whether HAProxy applied it is read back from
HAProxy's map, never guessed, and the map file is left saying what HAProxy uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.haproxy import ServerStat
from deploy.colormap import read_map, write_map
from deploy.errors import RolloutError
from deploy.strategies import bluegreen


class SilentHAProxy:
    """Times out on `set map`, after applying it or not; `show map` then works, or not."""

    def __init__(self, tmp_path: Path, applies: bool, readable: bool = True) -> None:
        self.color_map = tmp_path / "colors.map"
        self.color_map_ref = "/maps/colors.map"
        self.live, self.applies, self.readable, self.timed_out = "blue", applies, readable, False
        write_map(self.color_map, "blue")

    def haproxy_command(self, line: str) -> str:
        if line.startswith("set map"):
            self.live = line.split()[-1] if self.applies else self.live
            self.timed_out = True
            raise RolloutError("HAProxy's Runtime API did not answer within 2s")
        if self.timed_out and not self.readable:
            raise RolloutError("HAProxy's Runtime API did not answer within 2s")
        return f"0x55d1 active {self.live}\n"

    def instances(self) -> list[object]:
        return []


@pytest.fixture(autouse=True)
def every_server_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bluegreen, "read_servers", lambda engine, backend=None: [
        ServerStat(backend or "green", f"{backend}1", "UP", 0, 0, "10.0.0.1:8000")])


def test_applied_although_unanswered_is_a_switch(tmp_path: Path) -> None:
    engine = SilentHAProxy(tmp_path, applies=True)
    result = bluegreen.switch(engine, "green", lambda line: None)  # type: ignore[arg-type]
    assert (result.old, result.new) == ("blue", "green")
    assert read_map(engine.color_map) == "green" == engine.live


def test_not_applied_is_an_error_and_the_file_stays_old(tmp_path: Path) -> None:
    engine = SilentHAProxy(tmp_path, applies=False)
    with pytest.raises(RolloutError, match="did not answer"):
        bluegreen.switch(engine, "green", lambda line: None)  # type: ignore[arg-type]
    assert read_map(engine.color_map) == "blue" == engine.live


def test_unknown_says_so_and_what_the_file_says(tmp_path: Path) -> None:
    engine = SilentHAProxy(tmp_path, applies=True, readable=False)
    with pytest.raises(RolloutError, match=r"cannot be read back; .*colors.map says green: check `rollout status`"):
        bluegreen.switch(engine, "green", lambda line: None)  # type: ignore[arg-type]
