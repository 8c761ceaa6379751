"""The operator's side of safety on the local stack: a deploy the tool did not live to finish
(`rollout` SIGKILLed at every event it prints, under the strict checker), state files damaged
in turn, a full disk, and --env values that a config file could mangle.

After each kill the next `rollout deploy` finds what the dead one left (its history entry
still 'running'), converges (deploy.core.converge) and completes: every instance UP on the
new version, as many as before, nothing left running beside them. Meanwhile HAProxy never
has fewer than N-1 servers UP and not one request fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.engines.local import IN_USE, LocalEngine, processes_of
from deploy.errors import RolloutError
from deploy.strategies.rolling import read_servers
from tests.conftest import BIN, load_during, wait_for

EVENT = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \[")


def rollout(engine: LocalEngine, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "rollout"), "--state-dir", str(engine.root), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def killed_at(engine: LocalEngine, event: int, *args: str) -> bool:
    """Run `rollout *args` and SIGKILL it as it prints its `event`-th event; False when it
    ended before that many. A `restart` event announces a stop (stop-first) that begins a little
    later: the kill then waits for supervisor to be stopping that instance, so that it lands in
    the middle of the stop, before the start."""
    proc = subprocess.Popen([str(BIN / "rollout"), "--state-dir", str(engine.root), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = 0
    for line in proc.stderr:
        seen += bool(EVENT.match(line))
        if seen == event:
            if "--surge" not in args and (restarted := re.search(r"\] restart ", line)):
                name = line[line.index("[") + 1 : restarted.start()]
                wait_for(lambda name=name: state(engine, name) in ("STOPPING", "STOPPED"), what=f"{name} stopping")
            proc.kill()
            proc.wait()
            return True
    assert proc.wait(timeout=60) == 0
    return False


def state(engine: LocalEngine, name: str) -> str:
    return str(engine.supervisor("getProcessInfo", name)["statename"])


def in_use(engine: LocalEngine) -> list[str]:
    return sorted(p["name"] for p in engine.supervisor("getAllProcessInfo")
                  if p["statename"] in IN_USE and p["name"] != "haproxy")


@pytest.mark.parametrize("surge", [False, True], ids=["stop-first", "surge"])
def test_rollout_killed_at_every_event_then_run_again_converges(stack_factory, surge: bool) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory(instances=2)
    flags = ["--watch-for", "0.5", *(["--surge"] if surge else [])]
    fewest_up: list[int] = [2]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            try:
                rows = read_servers(engine, "app")
            except RolloutError:  # a read that missed: the next one counts
                continue
            fewest_up[0] = min(fewest_up[0], sum(r.status == "UP" for r in rows))

    def kill_at_each_event() -> list[str]:
        said = []
        event = 1
        while True:
            version = f"v{event + 1}"
            if not killed_at(engine, event, "deploy", version, *flags):
                return said
            # The kill lands just after the event's line: after the last one, the dead tool may
            # already have recorded its deploy as done, and then there is nothing to converge.
            finished = json.loads((engine.root / "history.json").read_text())[-1]["result"] == "ok"
            again = rollout(engine, "deploy", version, *flags)
            assert again.returncode == 0, (event, again.stderr)
            if not finished:
                assert "did not finish: the tool died during it" in again.stderr, again.stderr
                said.append(again.stderr)
            assert len(in_use(engine)) == 2, (event, in_use(engine))  # nothing left beside them
            assert [engine.version_of(i) for i in engine.instances()] == [version] * 2, event
            event += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result, said = load_during(engine.frontend_url(), kill_at_each_event, requests=5_000, slow_ms=100)
    finally:
        done.set()
        sampler.join()
    assert isinstance(said, list) and len(said) >= (6 if not surge else 8), len(said)
    assert result.failed == 0, result.failures
    assert fewest_up[0] >= 1, fewest_up
    history = json.loads((engine.root / "history.json").read_text())
    assert {e["result"] for e in history} == {"ok", "interrupted"}
    # The stop-first kills left a stopped instance at least once, and the surge ones an extra:
    # the convergence had work to do, not only a redeploy.
    wanted = "starting 1 on" if not surge else "retiring"
    assert any(wanted in text for text in said), [x for t in said for x in t.splitlines() if "converge" in x or "restart" in x or "did not" in x]


def test_status_names_an_interrupted_deploy_and_undo_returns_to_the_release_before(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory(instances=2)
    assert killed_at(engine, 2, "deploy", "v2", "--watch-for", "0.5")  # app1 stopped, started on v2
    status = rollout(engine, "status")
    assert "interrupted: #1 (deploy v2) did not finish" in status.stdout, status
    undo = rollout(engine, "undo", "--watch-for", "0.5")
    assert undo.returncode == 0, undo.stderr
    assert "back to v1" in undo.stderr
    assert [engine.version_of(i) for i in engine.instances()] == ["v1", "v1"]
    lines = rollout(engine, "history").stdout.splitlines()
    assert [line.split()[3:] for line in lines[1:]] == [
        ["deploy", "v2", "v1", "interrupted"], ["undo", "v1", "v2", "ok"]]


@pytest.mark.parametrize("name", ["stack.json", "releases.json", "history.json"])
def test_a_damaged_state_file_is_one_line_and_down_always_works(stack_factory, name: str) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory(instances=2)
    assert rollout(engine, "deploy", "v2", "--watch-for", "0").returncode == 0
    (engine.root / name).write_text('{"version": "v')  # torn, by something other than rollout
    run = rollout(engine, "deploy", "v3", "--watch-for", "0")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and f"{name} is damaged" in run.stderr, run.stderr
    assert [engine.version_of(i) for i in engine.instances()] == ["v2", "v2"]  # nothing changed
    down = rollout(engine, "down")
    assert down.returncode == 0, down.stderr
    assert processes_of(engine.root.resolve()) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/stack on a 4 MiB tmpfs (stack_factory puts the state directory there)."""
    where = tmp_path / "stack"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_refuses_the_deploy_in_one_line_and_changes_nothing(small_disk: Path, stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory(instances=2)
    assert engine.root.resolve() == small_disk.resolve()
    filler = small_disk / "filler"
    with filler.open("wb") as out:  # every block taken
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    before = {p.name: p.read_bytes() for p in small_disk.glob("*.json")}
    run = rollout(engine, "deploy", "v2", "--watch-for", "0")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "No space left on device" in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert {p.name: p.read_bytes() for p in small_disk.glob("*.json")} == before
    assert [engine.version_of(i) for i in engine.instances()] == ["v1", "v1"]
    filler.unlink()
    run = rollout(engine, "deploy", "v2", "--watch-for", "0")
    assert run.returncode == 0, run.stderr
    assert [engine.version_of(i) for i in engine.instances()] == ["v2", "v2"]


ODD_VALUES = ["it's", "100% sure", "$HOME and ${PATH}", "é ü 中 🚀", "a,b=c", "back\\slash", " spaced ",
              "%(ENV_HOME)s", ""]
REFUSED_VALUES = ['say "hi"', "'quoted'", "both ' and \""]


def test_env_values_reach_the_app_byte_for_byte_or_are_refused_in_one_line(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory(instances=2)
    for value in REFUSED_VALUES:
        run = rollout(engine, "deploy", "v2", "--env", f"ODD={value}", "--watch-for", "0")
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and "--env ODD:" in run.stderr, run.stderr
    assert [engine.version_of(i) for i in engine.instances()] == ["v1", "v1"]  # unchanged
    args = [arg for n, value in enumerate(ODD_VALUES) for arg in ("--env", f"ODD{n}={value}")]
    run = rollout(engine, "deploy", "v2", *args, "--watch-for", "0")
    assert run.returncode == 0, run.stderr
    for info in engine.supervisor("getAllProcessInfo"):
        if info["name"] in {i.name for i in engine.instances()}:
            environ = Path(f"/proc/{info['pid']}/environ").read_bytes().split(b"\0")
            for n, value in enumerate(ODD_VALUES):
                assert f"ODD{n}={value}".encode() in environ, (value, info["name"])


def test_status_as_json_and_wait_until_a_deploy_is_done(stack_factory) -> None:  # type: ignore[no-untyped-def]
    engine = stack_factory(instances=2)
    state = json.loads(rollout(engine, "status", "--json").stdout)
    assert state["deploying"] is None and state["interrupted"] is None
    assert [(i["haproxy"], i["version"]) for i in state["instances"]] == [({"haproxy": "UP"}, "v1")] * 2
    deploy = subprocess.Popen([str(BIN / "rollout"), "--state-dir", str(engine.root), "deploy", "v2",
                               "--watch-for", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert deploy.stderr is not None and "deploying v2" in deploy.stderr.readline()
    waited = rollout(engine, "status", "--wait", "--json", "--timeout", "120")
    assert deploy.poll() is not None, "status --wait returned while the deploy ran"
    assert waited.returncode == 0 and "waiting: a deploy holds the stack (pid " in waited.stderr, waited.stderr
    assert [i["version"] for i in json.loads(waited.stdout)["instances"]] == ["v2", "v2"]
    deploy.wait()
    short = rollout(engine, "status", "--wait", "--timeout", "0.5")
    assert short.returncode == 0  # nothing to wait for
