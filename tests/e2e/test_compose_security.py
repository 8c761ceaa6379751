"""HAProxy pulls, apps cannot push: from inside an app container, nothing changes HAProxy.

The control plane is pull-based: HAProxy polls each container's drain-agent (agent-check on
9200) and each agent answers for its own server only; agents read HAProxy's read-only stats.
The admin Runtime API listens on the HAProxy container's own loopback. So an app container
(a compromised app, say) that tries every port HAProxy listens on, and every unix socket it
can find, with admin commands gets a refusal or no connection, and no server, weight,
frontend or map changes. Each detector is checked against a real admin command sent the
operator's way (`docker compose exec haproxy`), so "nothing changed" is measured, not assumed.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import (
    AGENT_PORT,
    ComposeStack,
    Container,
    StateWatch,
    cli_answered,
    docker,
    hex_ipv4,
    listening_ports,
    probe_from,
)

pytestmark = pytest.mark.docker

STATS_FORM = "s=app2&action=maint&b=%233"
ADMIN_PAYLOADS = [
    "show info\n",
    "set server app/app2 state maint\n",
    "disable agent app/app2\n",
    "set weight app/app2 0\n",
    "set map /dev/null active app\n",
    "shutdown frontend web\n",
    "set server app/app2 state maint\nshow info\nshutdown frontend web\n",
    # The stats page's own admin form (only with `stats admin`, which haproxy.cfg never sets).
    ("POST /stats HTTP/1.1\r\nHost: haproxy\r\nContent-Type: application/x-www-form-urlencoded\r\n"
     f"Content-Length: {len(STATS_FORM)}\r\nConnection: close\r\n\r\n{STATS_FORM}"),
]


def haproxy_ip(stack: ComposeStack) -> str:
    container = stack.compose("ps", "-q", "haproxy").stdout.strip()
    return docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                  container).stdout.split()[0]


def offenders(report: dict[str, object]) -> list[str]:
    results = report["results"]
    assert isinstance(results, list)
    return [f"{r['target']} {r['payload'][:40]!r} -> {r.get('reply', '')[:120]!r}"
            for r in results if r["connected"] and cli_answered(str(r.get("reply", "")))]


def test_every_haproxy_port_and_unix_socket_refuses_admin_commands_from_an_app(stack: ComposeStack) -> None:
    containers = stack.ensure(3)
    ports = listening_ports(stack, "haproxy")
    print(f"\nHAProxy's container listens on: { {p: hex_ipv4(a) for p, a in ports.items()} }")
    assert {8785, 8404, 9999} <= set(ports), ports
    assert hex_ipv4(ports[9999]) == "127.0.0.1"  # the admin socket: its own loopback only
    ip = haproxy_ip(stack)
    targets = sorted({(ip, p) for p in ports} | {("haproxy", p) for p in ports}
                     | {("127.0.0.1", p) for p in ports})

    # Controls first: the detectors see a real admin command, sent the operator's way.
    assert cli_answered(stack.haproxy_command("show info"))
    with StateWatch(stack) as control:
        assert stack.haproxy_command("set server app/app2 state maint").strip() == ""
        assert stack.haproxy_command("set weight app/app2 7").strip() == ""
    # MAINT lasts until the agent's next `ready` (its long poll: at most 1.6 s), which a sample
    # may or may not see: HAProxy's log has it. A weight stays until it is set again, so the
    # samples see it for sure.
    assert any(change.startswith("('app', 'app2'): ('UP', '1') -> (") and change.endswith(", '7')")
               for change in control.changes()), control.changes()
    assert any("maintenance" in line for line in control.log_lines()), control.log_lines()
    assert stack.haproxy_command("set weight app/app2 1").strip() == ""
    stack.wait_up(3)  # its agent's next `ready` lifted the maint (see docs/compose.md)

    prober = containers[0]
    with StateWatch(stack) as watch:
        report = probe_from(stack, prober, targets, ADMIN_PAYLOADS)
    results = report["results"]
    assert isinstance(results, list)
    print(f"from {prober.name} (uid {report['uid']}): {len(results)} attempts, unix sockets found: "
          f"{report['unix']}, connected: {sum(bool(r['connected']) for r in results)}")
    assert report["uid"] == 10001
    assert len(results) >= len(targets) * len(ADMIN_PAYLOADS)
    assert offenders(report) == []
    # Not vacuous: the listeners apps must reach (frontend, stats) took every payload.
    for port in (8785, 8404):
        assert all(r["connected"] for r in results if r["target"] == f"{ip}:{port}"), port
    # The admin port is out of reach altogether, at HAProxy's address and at the app's loopback.
    assert not any(r["connected"] for r in results if r["target"].endswith(":9999")), \
        [r for r in results if r["target"].endswith(":9999")]
    # The stats page answered its admin form with a refusal.
    stats_posts = [r for r in results if r["target"] in (f"{ip}:8404", "haproxy:8404")
                   and r["payload"].startswith("POST /stats")]
    assert stats_posts and all("st=DENY" in r["reply"] for r in stats_posts), stats_posts
    # And nothing changed: no server, weight or frontend status, no admin line in HAProxy's log.
    assert watch.changes() == []
    assert watch.log_lines() == []
    assert stack.status_by_address() == {c.address: "UP" for c in containers}
    instances, _ = stack.answered_by(9)
    assert instances == {c.short for c in containers}  # the frontend still serves, all three


def test_app_containers_hold_no_runtime_api_address(stack: ComposeStack) -> None:
    containers = stack.ensure(3)
    haproxy = stack.compose("ps", "-q", "haproxy").stdout.strip()
    # Control: the address exists, in HAProxy's own container.
    haproxy_env = json.loads(docker("inspect", "--format", "{{json .Config.Env}}", haproxy).stdout)
    assert "HAPROXY_ADMIN_SOCKET=ipv4@127.0.0.1:9999" in haproxy_env
    for container in containers:
        config_env = json.loads(docker("inspect", "--format", "{{json .Config.Env}}", container.name).stdout)
        agent_env = stack.exec(container, "cat", "/proc/1/environ").split("\0")
        cmdline = stack.exec(container, "cat", "/proc/1/cmdline").split("\0")
        for env in (config_env, [item for item in agent_env if item]):
            names = {item.partition("=")[0] for item in env}
            assert not names & {"HAPROXY_ADMIN_SOCKET", "DRAIN_AGENT_HAPROXY", "DRAIN_AGENT_SERVER"}, names
            assert not [item for item in env if "9999" in item or "admin" in item.lower()
                        or ".sock" in item], env
            assert "DRAIN_AGENT_HAPROXY_STATS=http://haproxy:8404/stats;csv" in env
        assert not any("9999" in arg or "admin" in arg for arg in cmdline), cmdline
        mounts = json.loads(docker("inspect", "--format", "{{json .Mounts}}", container.name).stdout)
        assert mounts == [], mounts  # no socket (docker's or HAProxy's) mounted in


def test_an_agent_port_answers_only_its_own_state_and_ignores_input(stack: ComposeStack) -> None:
    containers = stack.ensure(3)
    prober, target = containers[0], containers[1]
    payloads = ["", "maint\n", "drain\n", "down\n", "stopped\n", "set server app/app2 state maint\n",
                "x" * 200_000]
    with StateWatch(stack) as watch:
        report = probe_from(stack, prober, [(target.ip, AGENT_PORT)] * 3, payloads)
    results = report["results"]
    assert isinstance(results, list) and len(results) == 3 * len(payloads)
    assert {(r["connected"], r["reply"]) for r in results} == {(True, "ready\n")}, results
    assert watch.changes() == []
    assert watch.log_lines() == []
    assert stack.status_by_address()[target.address] == "UP"

    # Control: the line is the agent's own state, not a constant. A container that is not
    # ready yet (readiness 503 during a 60 s warm-up) answers maint, and HAProxy keeps it out.
    before = {c.id for c in containers}
    stack.compose("up", "-d", "--no-deps", "--no-recreate", "--scale", "app=4", "app",
                  env={"SERVICE_WARMUP_S": "60"})
    starting: Container = next(c for c in stack.containers() if c.id not in before)
    try:
        deadline = time.monotonic() + 20
        while starting.address not in stack.status_by_address():  # Docker's DNS fills a slot
            assert time.monotonic() < deadline, stack.rows("app")
            time.sleep(0.2)
        report = probe_from(stack, prober, [(starting.ip, AGENT_PORT)], ["", "ready\n"])
        assert [r["reply"] for r in report["results"]] == ["maint\n", "maint\n"]  # type: ignore[index]
        # HAProxy's own check may take it DOWN (readiness 503) before its first agent-check
        # reaches the agent: MAINT follows within a few agent-checks.
        seen = set()
        deadline = time.monotonic() + 5
        while not any(status.startswith("MAINT") for status in seen) and time.monotonic() < deadline:
            seen.add(stack.status_by_address()[starting.address])
            time.sleep(0.1)
        assert any(status.startswith("MAINT") for status in seen), (seen, stack.rows("app"))
    finally:
        docker("rm", "-f", starting.name, check=False)
