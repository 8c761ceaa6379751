"""Blue/green on compose (docker-compose.bluegreen.yml) driven by `rollout --engine docker`:
a release to green and the rollback to blue under strict load with zero failed requests, a
switch to a pool with a stopped container refused, and a switch that survives
`docker compose restart haproxy` (HAProxy reads the map file again).

One stack for the module, under its own project name, free ports, its own image name and a
map directory in pytest's tmp; teardown is `docker compose down -v` and untagging the images.
Run: .venv/bin/pytest -m docker tests/e2e/test_compose_bluegreen.py -s   (about a minute, image cached)
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.haproxy import parse_stat_csv
from deploy.engines.compose import BLUEGREEN_FILE, DockerEngine, find_stack
from deploy.strategies import bluegreen
from tests.e2e.conftest import REPO, ComposeStack, require_docker
from tests.e2e.test_compose import load_during

pytestmark = pytest.mark.docker

POOLS = {"blue": ("blue1", "blue2"), "green": ("green1", "green2")}
SERVERS = (*POOLS["blue"], *POOLS["green"])
ROLLOUT = REPO / ".venv" / "bin" / "rollout"
DRAINED = re.compile(r"(\w+) drained in ([0-9.]+)s")


class BlueGreenStack(ComposeStack):
    """docker-compose.bluegreen.yml under a test project; `rollout --engine docker` drives it."""

    def __init__(self, color_dir: Path) -> None:
        super().__init__()
        self.project = self.project.replace("zdh-test-", "zdh-test-bg-")
        self.image = f"{self.project}-app"
        self.color_dir = color_dir
        self.env.pop("SERVICE_VERSION", None)
        self.env.update({
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_FILE": str(BLUEGREEN_FILE),  # also tells `rollout` which of the two stacks
            "ZDH_IMAGE": self.image,
            "ZDH_COLOR_DIR": str(color_dir),
            "BLUE_VERSION": "e2e-v1",
            "GREEN_VERSION": "e2e-v1",
        })
        for name in ("ROLLOUT_ENGINE", "ROLLOUT_PORT", "ROLLOUT_STATS_PORT"):
            self.env.pop(name, None)
        self.engine = DockerEngine(env=self.env, blue_green=True)

    @property
    def color_map(self) -> Path:
        return self.color_dir / "colors.map"

    def rollout(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(ROLLOUT), "--engine", "docker", *args], capture_output=True,
                                text=True, env=self.env, cwd=REPO, timeout=timeout, check=False)
        print(f"$ rollout --engine docker {' '.join(args)}  (exit {result.returncode})\n"
              f"{result.stderr}{result.stdout}", end="")
        return result

    def up(self) -> None:
        started = self.rollout("up", "--detach", "--blue-green", timeout=600)
        assert started.returncode == 0, f"{started.stderr}\n{self.logs()}"

    def servers(self) -> dict[str, str]:
        text = httpx.get(self.stats_url, timeout=3).text
        return {row["svname"]: row["status"] for row in parse_stat_csv(text)
                if row["pxname"] in POOLS and row["svname"] in SERVERS}

    def sessions(self, color: str) -> int:
        text = httpx.get(self.stats_url, timeout=3).text
        return sum(int(row["scur"] or 0) + int(row["qcur"] or 0) for row in parse_stat_csv(text)
                   if row["pxname"] == color and row["svname"] in POOLS[color])

    def wait_servers(self, expected: dict[str, str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        servers: dict[str, str] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                servers = self.servers()
                if all(servers.get(name) == status for name, status in expected.items()):
                    return
            time.sleep(0.2)
        raise AssertionError(f"servers not {expected} within {timeout}s: {servers}")

    def answered_by(self, count: int = 8) -> set[str]:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            return {client.get("/cms").json()["instance"] for _ in range(count)}

    def colors(self) -> tuple[str, str]:
        """(HAProxy's color, the map file's color)."""
        return bluegreen.active_color(self.engine), bluegreen.file_color(self.engine)


@pytest.fixture(scope="module")
def bg_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlueGreenStack]:
    require_docker()
    # A directory rollout has to create: the fixture checks that `up` makes it readable by uid 99.
    stack = BlueGreenStack(tmp_path_factory.mktemp("bluegreen") / "colors")
    try:
        began = time.monotonic()
        stack.up()
        print(f"[{stack.project}] up in {time.monotonic() - began:.1f}s on {stack.url}")
        yield stack
    finally:
        stack.down()


@pytest.fixture
def bg(bg_stack: BlueGreenStack) -> BlueGreenStack:
    """Before each test: all four UP and blue active; a test that failed half-way is repaired."""
    stack = bg_stack
    try:
        stack.wait_servers(dict.fromkeys(SERVERS, "UP"), timeout=20)
    except AssertionError:
        stack.compose("start", timeout=120)
        stack.wait_servers(dict.fromkeys(SERVERS, "UP"), timeout=60)
    if stack.colors() != ("blue", "blue"):
        assert stack.rollout("switch", "blue").returncode == 0
    return stack


def test_up_created_a_readable_map_and_serves_blue(bg: BlueGreenStack) -> None:
    assert bg.color_map.read_text() == "active blue\n"
    assert bg.color_map.stat().st_mode & 0o777 == 0o644
    assert bg.color_dir.stat().st_mode & 0o777 == 0o755
    assert bg.answered_by() == set(POOLS["blue"])
    # Only the frontend and stats are published, on loopback; the Runtime API is not.
    assert bg.compose("port", "haproxy", "9999", check=False).stdout.strip() in ("", ":0")
    assert bg.compose("port", "haproxy", "8785").stdout.strip() == f"127.0.0.1:{bg.port}"
    assert bg.compose("port", "haproxy", "8404").stdout.strip() == f"127.0.0.1:{bg.stats_port}"
    status = bg.rollout("status")
    assert status.returncode == 0
    assert status.stdout.splitlines()[0] == "active: blue"
    for color, names in POOLS.items():
        for name in names:
            assert any(line.split()[:3] == [color, name, "UP"] and line.split()[-1] == "e2e-v1"
                       for line in status.stdout.splitlines()), status.stdout
    # Without COMPOSE_FILE, rollout finds the stack by its containers: this project has the pools.
    assert find_stack({**bg.env, "COMPOSE_FILE": ""}).blue_green
    assert not find_stack({**bg.env, "COMPOSE_FILE": "", "COMPOSE_PROJECT_NAME": f"{bg.project}-x"}).blue_green


def test_release_to_green_and_rollback_under_load(bg: BlueGreenStack) -> None:
    old_blue = {name: bg.container_id(name) for name in POOLS["blue"]}
    old_green = {name: bg.container_id(name) for name in POOLS["green"]}
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    sessions_after: dict[str, int] = {}

    def release_then_rollback() -> None:
        # Recreates green1 and green2 on e2e-v2 (idle: no traffic), then switches to green.
        runs["release"] = bg.rollout("release", "--version", "e2e-v2")
        sessions_after["blue"] = bg.sessions("blue")
        time.sleep(2.0)  # green serves for a while
        runs["rollback"] = bg.rollout("switch", "blue")
        sessions_after["green"] = bg.sessions("green")
        time.sleep(1.0)

    result, _ = load_during(bg, release_then_rollback, requests=20_000, start_after_s=2.0)

    release, rollback = runs["release"], runs["rollback"]
    assert release.returncode == 0, release.stderr
    assert rollback.returncode == 0, rollback.stderr
    assert "switched: blue -> green" in release.stderr
    assert "switched: green -> blue" in rollback.stderr
    drained = dict(DRAINED.findall(release.stderr) + DRAINED.findall(rollback.stderr))
    print(f"drain after the switch: blue {drained.get('blue')} s, green {drained.get('green')} s")
    assert float(drained["blue"]) < 5 and float(drained["green"]) < 5, drained
    assert "warning" not in release.stderr + rollback.stderr
    assert sessions_after == {"blue": 0, "green": 0}  # each old pool had no session left

    assert result.total >= 20_000
    assert result.failed == 0, result.failures
    assert set(result.kinds) == {"get", "get-slow", "post"}
    assert set(result.versions) == {"e2e-v1", "e2e-v2"}, result.versions
    assert set(result.instances) == set(SERVERS), result.instances
    # Responses moved: blue's v1, then green's v2, then blue's v1 again.
    served = [max(b.versions, key=b.versions.__getitem__)
              for _, b in sorted(result.seconds.items()) if b.versions]
    assert served[0] == "e2e-v1" and "e2e-v2" in served and served[-1] == "e2e-v1", served

    # Green was recreated on the new version; blue was not touched.
    for name in POOLS["green"]:
        assert bg.container_id(name) not in ("", old_green[name])
        assert bg.version(name) == "e2e-v2"
    assert {name: bg.container_id(name) for name in POOLS["blue"]} == old_blue
    assert bg.colors() == ("blue", "blue")
    assert bg.color_map.stat().st_mode & 0o004  # still readable by HAProxy (uid 99)


def test_switch_to_a_pool_with_a_stopped_container_is_refused(bg: BlueGreenStack) -> None:
    bg.compose("stop", "green1", timeout=120)  # its agent puts green1 in maint on the way out
    try:
        refused = bg.rollout("switch", "green")
        assert refused.returncode == 1
        assert re.search(r"refusing to switch to green: not UP and ready: green1 \(MAINT", refused.stderr)
        assert bg.colors() == ("blue", "blue")
        assert bg.answered_by() == set(POOLS["blue"])
    finally:
        bg.compose("start", "green1", timeout=120)
    bg.wait_servers({"green1": "UP"})


def test_a_switch_survives_docker_compose_restart_haproxy(bg: BlueGreenStack) -> None:
    assert bg.rollout("switch", "green").returncode == 0
    assert bg.color_map.read_text() == "active green\n"
    began = time.monotonic()
    bg.compose("restart", "haproxy", timeout=120)
    bg.wait_servers(dict.fromkeys(POOLS["green"], "UP"), timeout=60)
    print(f"haproxy restarted and green UP again in {time.monotonic() - began:.1f}s")
    assert bg.colors() == ("green", "green")
    assert bg.answered_by() == set(POOLS["green"])
    assert bg.rollout("switch", "blue").returncode == 0  # leave it as found

