"""Runtime API addresses and replies: the parsing the drain depends on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError, HAProxyCommandError, HAProxyError, HAProxyParseError
from agent.haproxy import Address, parse_address, parse_info, parse_stat_csv, server_stat

HEADER = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n"
STAT = HEADER + (
    "app,app1,0,0,3,5,,10,0,0,,0,,0,0,0,0,DRAIN,1\n"
    "app,app2,2,2,1,4,,10,0,0,,0,,0,0,0,0,UP,1\n"
    "app,app3,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT (resolution),1\n"
)


def test_addresses() -> None:
    assert parse_address("unix:///run/haproxy/admin.sock") == Address(path="/run/haproxy/admin.sock")
    assert parse_address("tcp://haproxy:9999") == Address(host="haproxy", port=9999)
    assert str(parse_address("tcp://127.0.0.1:1")) == "tcp://127.0.0.1:1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("haproxy:9999", "expected unix:///path or tcp://host:port"),
        ("unix://relative.sock", "absolute path"),
        ("tcp://haproxy", "expected tcp://host:port"),
        ("tcp://haproxy:notaport", "expected tcp://host:port"),
        ("tcp://haproxy:99999", "expected tcp://host:port"),
        ("tcp://:9999", "expected tcp://host:port"),
    ],
)
def test_bad_addresses(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_address(text)


def test_server_stat_reads_sessions_queue_and_state() -> None:
    rows = parse_stat_csv(STAT)
    drain = server_stat(rows, "app", "app1")
    assert (drain.status, drain.scur, drain.qcur, drain.busy, drain.admin_state) == ("DRAIN", 3, 0, 3, "drain")
    up = server_stat(rows, "app", "app2")
    assert (up.busy, up.admin_state) == (3, "ready")  # queued requests count as busy
    assert server_stat(rows, "app", "app3").admin_state == "maint"


@pytest.mark.parametrize(
    ("status", "state"),
    [("UP", "ready"), ("UP 1/2", "down"), ("DOWN", "down"), ("DOWN 1/2", "down"), ("NOLB", "down"),
     ("DRAIN (agent)", "drain"), ("MAINT(via)", "maint")],
)
def test_status_strings_match_by_prefix(status: str, state: str) -> None:
    rows = parse_stat_csv(HEADER + f"app,app1,0,0,0,0,,0,0,0,,0,,0,0,0,0,{status},1\n")
    assert server_stat(rows, "app", "app1").admin_state == state


def test_unknown_server_names_the_known_ones() -> None:
    with pytest.raises(HAProxyCommandError, match=r"no server app/app9 \(servers there: app1, app2, app3\)"):
        server_stat(parse_stat_csv(STAT), "app", "app9")
    with pytest.raises(HAProxyCommandError, match="no such backend"):
        server_stat(parse_stat_csv(STAT), "web", "app1")


@pytest.mark.parametrize(
    "reply",
    ["", "No such proxy.\n", "pxname,svname\n", "# foo,bar\n", HEADER + "app,app1,0\n",
     HEADER + "app,app1,0,0,x,5,,10,0,0,,0,,0,0,0,0,UP,1\n"],
)
def test_garbage_and_truncated_replies_are_parse_errors(reply: str) -> None:
    with pytest.raises(HAProxyError):
        server_stat(parse_stat_csv(reply), "app", "app1")


@given(st.text(max_size=400))
def test_any_reply_either_parses_or_raises_our_error(reply: str) -> None:
    try:
        rows = parse_stat_csv(reply)
        for row in rows:
            if row.get("pxname") == "app" and row.get("svname") == "app1":
                server_stat(rows, "app", "app1")
    except HAProxyError:
        pass


@given(st.integers(min_value=0, max_value=len(STAT)))
def test_truncated_stat_never_misreads_a_server(cut: int) -> None:
    """A reply cut anywhere gives the right numbers or an error, never wrong numbers."""
    try:
        stat = server_stat(parse_stat_csv(STAT[:cut]), "app", "app1")
    except HAProxyError:
        return
    assert (stat.scur, stat.qcur) == (3, 0)


def test_info() -> None:
    assert parse_info("Name: HAProxy\nPid: 7\nUptime_sec: 12\n")["Pid"] == "7"
    with pytest.raises(HAProxyParseError):
        parse_info("Unknown command\n")
