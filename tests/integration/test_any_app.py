"""Any app on the local stack (`rollout up --app-command`), and the package installed, not checked out."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from deploy.check.loadcheck import LoadPlan, run_load
from deploy.engines.local import LocalEngine, LocalStack, pid_alive, port_in_use
from deploy.strategies.rolling import rolling_restart
from tests.conftest import REPO, free_port, free_port_run, load_during, wait_for

NODE_EXAMPLE = REPO / "examples" / "node"
needs_node = pytest.mark.skipif(shutil.which("node") is None and not os.environ.get("CI"),
                                reason="no node on PATH")


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that name `text` (a stack's state directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and pid_alive(int(proc.name)):
                line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if text in line:
                    found.append(line)
        except OSError:
            continue
    return found


def ports() -> list[str]:
    """Ports for `rollout up` with its default 3 instances: 6 slots each (3 spares for surges)."""
    return ["--port", str(free_port()), "--stats-port", str(free_port()),
            "--app-base-port", str(free_port_run(6)), "--agent-base-port", str(free_port_run(6))]


@needs_node
def test_node_app_rolls_with_zero_failed(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine: LocalEngine = stack_factory(app_command=f"node {NODE_EXAMPLE / 'server.js'} {{port}}",
                                        ready_path="/healthz")
    result, outcome = load_during(engine.frontend_url(), lambda: rolling_restart(engine, "v2", {}, 60, print))
    assert outcome.error is None  # type: ignore[attr-defined]
    assert result.failed == 0, result.failures
    assert result.versions.keys() == {"v1", "v2"} and result.posts_answered
    assert [engine.version_of(i) for i in engine.instances()] == ["v2", "v2", "v2"]


@pytest.mark.parametrize(
    ("command", "cause"),
    [
        ("no-such-program-xyz {port}", "[app1] app command not found: 'no-such-program-xyz'"),
        (f"{sys.executable} -c 'raise SystemExit(3)'", "[app1] the app exited with code 3 before it was ready"),
        (f"{sys.executable} -c 'import time; time.sleep(600)'",
         "app not ready at http://127.0.0.1:"),
    ],
)
def test_a_bad_app_command_is_one_line_and_leaves_nothing_running(tmp_path: Path, command: str, cause: str) -> None:
    state = tmp_path / "state"
    flags = ports()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("rollout")), "--state-dir", str(state), "up", "-d", *flags,
         "--app-command", command, "--ready-path", "/healthz", "--start-timeout", "2"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 1
    error = [line for line in done.stderr.splitlines() if line.startswith("rollout: ")]
    assert len(error) == 1 and cause in error[0], done.stderr
    assert not processes_mentioning(str(state))
    used = [int(flags[i + 1]) for i in range(0, len(flags), 2)]
    assert not [port for port in [*used, used[2] + 1, used[2] + 2] if port_in_use(port)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_rollout_up_in_the_foreground_stops_the_stack_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    state = tmp_path / "state"
    log = tmp_path / "up.log"
    with log.open("w") as out:
        up = subprocess.Popen([str(Path(sys.executable).with_name("rollout")), "--state-dir", str(state), "up",
                               *ports()], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for(lambda: "running in the foreground" in log.read_text() or up.poll() is not None,
                 timeout=60, what="the stack up")
        assert up.poll() is None, log.read_text()
        assert processes_mentioning(str(state))  # control: the stack runs
        up.send_signal(sig)
        assert up.wait(timeout=60) == 0, log.read_text()
    finally:
        if up.poll() is None:
            up.kill()
            subprocess.run([str(Path(sys.executable).with_name("rollout")), "--state-dir", str(state), "down"],
                           capture_output=True, timeout=60)
    assert "stopping ..." in log.read_text()
    assert not processes_mentioning(str(state))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package installed the way a user installs it: `pip install '<repo>[local]'`, not editable,
    into a fresh venv (pip's cache makes it quick)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{REPO}[local]"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PIP_NO_INPUT": "1"})
    assert pip.returncode == 0, pip.stderr[-2000:]
    yield venv / "bin"


def rollout(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(bin_dir / "rollout"), *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def test_installed_rollout_works_from_any_directory(installed: Path, tmp_path: Path) -> None:
    site = next(installed.parent.glob("lib/python*/site-packages"))
    assert (site / "deploy" / "haproxy" / "haproxy.cfg").is_file()  # the configs ship as package data
    assert not (site / "__editable__.zero_downtime_haproxy-0.1.0.pth").exists()
    up = rollout(installed, tmp_path, "up", "-d", *ports())
    try:
        assert up.returncode == 0, up.stderr
        assert f"from {tmp_path / '.rollout'}" in up.stderr  # it says where its state lives
        check = rollout(installed, tmp_path, "check", "-n", "8000", "-c", "100", "--restart", "--version", "v2")
        assert check.returncode == 0, check.stderr + check.stdout
        assert "failed     0" in check.stdout and "each processed exactly once" in check.stdout
    finally:
        down = rollout(installed, tmp_path, "down")
    assert down.returncode == 0, down.stderr
    assert not processes_mentioning(str(tmp_path))


@needs_node
def test_adopt_it_in_your_service_local_steps(installed: Path, tmp_path: Path) -> None:
    """README, "Adopt it in your service", the local stack: exactly those steps, on a copy of the
    Node example (pip install is the `installed` fixture)."""
    app = tmp_path / "my-service"
    shutil.copytree(NODE_EXAMPLE, app)
    up = rollout(installed, app, "up", "-d", "--app-command", "node server.js {port}", "--ready-path", "/healthz",
                 *ports())
    try:
        assert up.returncode == 0, up.stderr
        check = rollout(installed, app, "check", "--restart", "--path", "/healthz")
        assert check.returncode == 0, check.stderr + check.stdout
        assert "does not speak the reference service's contract" in check.stderr
        assert "failed     0" in check.stdout
    finally:
        assert rollout(installed, app, "down").returncode == 0


def plain_load(url: str, until: Callable[[], bool], clients: int = 8) -> tuple[int, list[str]]:
    """The strict checker in its any-app mode (a status in 2xx/3xx is an answer; nothing is
    re-sent) on `url` until `until()`: the answers, and every failure by cause."""
    plan = LoadPlan(url=url, requests=1, concurrency=clients, contract=False, timeout_s=10)
    result = uvloop.run(run_load(plan, keep_going=lambda: not until()))
    return result.ok, [cause for cause, n in result.failures.items() for _ in range(n)]


def test_an_app_that_knows_nothing_of_versions_is_deployed_with_zero_failed(tmp_path: Path) -> None:
    """`python3 -m http.server`: no /version, no /readyz, no JSON. The version gate is what
    rollout started (and HAProxy's own UP), not the app's word."""
    state, flags = tmp_path / "state", ports()
    rollout_bin = str(Path(sys.executable).with_name("rollout"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([rollout_bin, "--state-dir", str(state), *args], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)

    up = run("up", "-d", *flags, "--app-command", "python3 -m http.server {port} --bind 127.0.0.1",
             "--ready-path", "/")
    try:
        assert up.returncode == 0, up.stderr
        url = f"http://127.0.0.1:{flags[1]}/"
        done: list[subprocess.CompletedProcess[str]] = []
        loader = threading.Thread(target=lambda: done.append(run("deploy", "v2", "--watch-for", "1")))
        loader.start()
        answered, failures = plain_load(url, lambda: bool(done))
        loader.join()
        assert done[0].returncode == 0, done[0].stderr
        assert answered > 200 and failures == [], (answered, failures[:10])
        status = run("status").stdout.splitlines()
        assert [line.split()[-1] for line in status[1:]] == ["v2", "v2", "v2"], status
        # Control: the same load on a port nothing listens on counts every request as failed.
        stop_at = time.monotonic() + 1
        _, cut = plain_load(f"http://127.0.0.1:{free_port()}/", lambda: time.monotonic() > stop_at, clients=1)
        assert cut and all(cause.startswith("connect error") for cause in cut), set(cut)
    finally:
        run("down")
    assert not processes_mentioning(str(state))


def test_rollout_check_on_an_app_that_knows_nothing_of_the_contract(tmp_path: Path) -> None:
    """`rollout check --restart --path /` on `python3 -m http.server`: success by status alone,
    0 failed, exit 0. Control, same app and harness: every instance SIGKILLed at once under the
    load (a crash, not a drain: nothing left to retry on) is counted failed, exit 1."""
    state, flags = tmp_path / "state", ports()
    rollout_bin = str(Path(sys.executable).with_name("rollout"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([rollout_bin, "--state-dir", str(state), *args], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)

    up = run("up", "-d", *flags, "--app-command", "python3 -m http.server {port} --bind 127.0.0.1",
             "--ready-path", "/")
    try:
        assert up.returncode == 0, up.stderr
        check = run("check", "-n", "4000", "-c", "20", "--path", "/", "--restart", "--version", "v2")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "does not speak the reference service's contract" in check.stderr
        assert re.search(r"failed\s+0\b", check.stdout), check.stdout

        engine = LocalEngine(LocalStack.load(str(state)))

        def crash() -> None:
            time.sleep(1)
            for info in engine.supervisor("getAllProcessInfo"):
                if info["name"].startswith("app") and info["statename"] == "RUNNING":
                    for child in Path(f"/proc/{info['pid']}/task/{info['pid']}/children").read_text().split():
                        os.kill(int(child), signal.SIGKILL)  # the app under the agent, not the agent
        killer = threading.Thread(target=crash)
        killer.start()
        control = run("check", "--duration", "4", "-c", "20", "--path", "/")
        killer.join()
        assert control.returncode == 1, control.stdout + control.stderr
        failed = re.search(r"failed\s+(\d+)", control.stdout)
        assert failed and int(failed[1]) > 0, control.stdout
    finally:
        run("down")
