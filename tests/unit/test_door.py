"""The reload every engine shares (deploy/door.py), on a fake HAProxy handle, and the one way
into a HAProxy in a container (engines/container_haproxy.py), on a fake `docker exec`."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from deploy import door
from deploy.engines.container_haproxy import ContainerHAProxy
from deploy.errors import RolloutError


class FakeHAProxy:
    """A master that starts worker `pid + 1` on SIGUSR2 unless `stuck`; records every step."""

    name = "haproxy-a"

    def __init__(self, alert: str | None = None, state: str | None = "/tmp/state", stuck: bool = False) -> None:
        self.alert = alert
        self.state_file = state
        self.stuck = stuck
        self.pid = 100
        self.steps: list[str] = []

    def command(self, line: str) -> str:
        self.steps.append(line)
        if line == "show servers state":
            return "1\n# be_id be_name ...\n"
        return f"Name: HAProxy\nPid: {self.pid}\n"

    def config_alert(self) -> str | None:
        self.steps.append("check")
        return self.alert

    def put_state(self, text: str) -> None:
        self.steps.append(f"put {text.splitlines()[0]}")

    def drop_state(self) -> None:
        self.steps.append("drop")

    def signal_reload(self) -> None:
        self.steps.append("USR2")
        if not self.stuck:
            self.pid += 1


def test_a_reload_checks_hands_the_states_over_signals_and_waits_for_a_new_worker() -> None:
    haproxy = FakeHAProxy()
    line = door.reload(haproxy)
    assert line.startswith("haproxy-a: reloaded (master-worker, SIGUSR2): worker 100 -> 101 in ")
    assert haproxy.steps == ["check", "show info", "show servers state", "put 1", "USR2", "show info", "drop"]


def test_a_configuration_that_does_not_load_is_never_signalled() -> None:
    haproxy = FakeHAProxy(alert="[ALERT] (1) : config : parsing [x.cfg:3] : unknown keyword 'bogus'")
    with pytest.raises(RolloutError, match=r"haproxy-a: its configuration does not load, so nothing was "
                                           r"reloaded: .*unknown keyword 'bogus'"):
        door.reload(haproxy)
    assert haproxy.steps == ["check"]


def test_no_state_file_no_dump() -> None:
    haproxy = FakeHAProxy(state=None)
    door.reload(haproxy)
    assert "show servers state" not in haproxy.steps


def test_no_new_worker_says_so_and_leaves_no_state_behind() -> None:
    haproxy = FakeHAProxy(stuck=True)
    with pytest.raises(RolloutError, match=r"haproxy-a: no new worker 0\.2s after SIGUSR2 \(worker 100 still"):
        door.reload(haproxy, timeout_s=0.2)
    assert haproxy.steps[-1] == "drop"


def test_every_haproxy_of_the_stack_in_turn_and_the_first_bad_one_stops_it() -> None:
    class Stack:
        def __init__(self, *haproxies: FakeHAProxy) -> None:
            self.list = list(haproxies)

        def haproxies(self) -> list[FakeHAProxy]:
            return self.list

    first, second, third = FakeHAProxy(), FakeHAProxy(alert="[ALERT] bad"), FakeHAProxy()
    with pytest.raises(RolloutError, match="does not load"):
        door.reload_all(Stack(first, second, third))  # type: ignore[arg-type]
    assert "USR2" in first.steps and "USR2" not in second.steps and third.steps == []


def test_worker_pid_refuses_an_answer_without_one() -> None:
    with pytest.raises(RolloutError, match="no Pid in HAProxy's `show info`"):
        door.worker_pid("Unknown command\n")


class FakeDocker:
    """`docker exec` into a container whose programs answer as given: argv[0] -> (code, out, err)."""

    def __init__(self, **programs: tuple[int, str, str]) -> None:
        self.programs = programs
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), stdin))
        code, out, err = self.programs.get(argv[0], (127, "", f'exec: "{argv[0]}": executable file not found'))
        return subprocess.CompletedProcess(list(argv), code, out, err)


def container(run_in: FakeDocker, **env: str) -> ContainerHAProxy:
    return ContainerHAProxy("haproxy", run_in, lambda signal: None, ["haproxy", "-f", "/etc/h.cfg"],
                            {"HAPROXY_ADMIN_SOCKET": "ipv4@127.0.0.1:9999", **env}, "compose.yaml")


def test_the_runtime_api_goes_to_the_admin_port_on_the_containers_loopback() -> None:
    run_in = FakeDocker(bash=(0, "Pid: 7\n", ""))
    assert container(run_in).command("show info") == "Pid: 7\n"
    argv, stdin = run_in.calls[0]
    assert argv[:2] == ["bash", "-c"] and argv[-2:] == ["9999", "show info"] and stdin is None


def test_an_image_without_bash_is_named_not_a_mystery() -> None:
    with pytest.raises(RolloutError, match="its image has no bash"):
        container(FakeDocker()).command("show info")


def test_an_admin_socket_that_is_no_tcp_port_is_refused_with_where_it_is_set() -> None:
    haproxy = container(FakeDocker(), HAPROXY_ADMIN_SOCKET="/var/run/haproxy.sock")
    with pytest.raises(RolloutError, match=r"HAPROXY_ADMIN_SOCKET '/var/run/haproxy\.sock' of haproxy in compose\.yaml"):
        haproxy.command("show info")


def test_the_states_reach_the_file_through_stdin_whole_or_not_at_all() -> None:
    run_in = FakeDocker(sh=(0, "", ""), haproxy=(1, "", "[ALERT] (1) : config : bad\nfatal"))
    haproxy = container(run_in, HAPROXY_SERVER_STATE_FILE="/tmp/haproxy.state")
    haproxy.put_state("1\nstates\n")
    argv, stdin = run_in.calls[0]
    assert argv[0] == "sh" and argv[-1] == "/tmp/haproxy.state" and stdin == "1\nstates\n"
    assert 'mv -f "$1.new" "$1"' in argv[2]
    assert haproxy.config_alert() == "[ALERT] (1) : config : bad"
