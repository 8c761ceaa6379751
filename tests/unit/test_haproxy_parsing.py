"""HAProxy's stats CSV and Runtime API replies: the parsing the drain depends on.

The rows are built on the real header of HAProxy 2.8 (`show stat -1 4 -1`, the same
columns as the stats page's `;csv`), so the tests see the column order the agent meets.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError, HAProxyCommandError, HAProxyError, HAProxyParseError
from agent.haproxy import (
    Address,
    ServerStat,
    find_server,
    parse_address,
    parse_info,
    parse_stat_csv,
    parse_uptime,
    stat_from_row,
)

# HAProxy 2.8.25, `show stat -1 4 -1`: every line ends with a ',' (one more, empty, field).
HEADER_2_8 = (
    "pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,"
    "act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,"
    "rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,"
    "hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,"
    "last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,"
    "check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,"
    "conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,"
    "src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,"
    "need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,srid,sess_other,h1sess,"
    "h2sess,h3sess,req_other,h1req,h2req,h3req,proto,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,"
    "h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,"
    "h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,"
    "h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,"
    "h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,"
    "h1_spliced_bytes_in,h1_spliced_bytes_out"
)
COLUMNS = HEADER_2_8.split(",")
HEADER = "# " + ",".join(COLUMNS) + ",\n"


def line(pxname: str, svname: str, **values: str | int) -> str:
    """One CSV line with these columns set (the rest empty), as HAProxy writes it."""
    row = dict.fromkeys(COLUMNS, "")
    row.update(pxname=pxname, svname=svname, scur="0", qcur="0", type="2")
    for key, value in values.items():
        assert key in row, key
        row[key] = str(value)
    return ",".join(row.values()) + ",\n"


STAT = HEADER + "".join([
    line("fe", "FRONTEND", scur=40, status="OPEN"),
    line("app", "app1", scur=3, status="DRAIN (agent)", addr="10.0.0.5:8000", check_desc="Layer7 check passed"),
    line("app", "app2", qcur=2, scur=1, status="UP", addr="10.0.0.6:8000"),
    line("app", "app3", status="MAINT (resolution)", addr=""),
    line("app", "BACKEND", scur=4, status="UP"),
])


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


def test_a_real_haproxy_row() -> None:
    """Verbatim from HAProxy 2.8.25: a server whose port refuses connections."""
    real = HEADER + (
        "app,app1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,2,2,,1,3,1,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,"
        ",,,,-1,Connection refused,Connection refused,0,0,0,0,L4CON,,0,Layer4 connection problem,"
        "Layer4 connection problem,2,3,0,1,1,1,127.0.0.1:1,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,0,,,,"
        ",,,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n\n"
    )
    assert parse_stat_csv(real) == [ServerStat("app", "app1", "DOWN", 0, 0, "127.0.0.1:1", "Layer4 connection problem",
                                               chkdown=1, weight=1)]


def test_server_rows_only_with_sessions_queue_state_and_address() -> None:
    rows = parse_stat_csv(STAT)
    assert [(r.backend, r.server) for r in rows] == [("app", "app1"), ("app", "app2"), ("app", "app3")]
    drain = find_server(rows, "app", "app1")
    assert (drain.status, drain.scur, drain.qcur, drain.busy) == ("DRAIN (agent)", 3, 0, 3)
    assert (drain.admin_state, drain.accepting) == ("drain", False)
    assert (drain.addr, drain.check) == ("10.0.0.5:8000", "Layer7 check passed")
    up = find_server(rows, "app", "app2")
    assert (up.busy, up.admin_state, up.accepting) == (3, "ready", True)  # queued requests count as busy
    empty_slot = find_server(rows, "app", "app3")
    assert (empty_slot.admin_state, empty_slot.addr, empty_slot.accepting) == ("maint", "", False)


def test_crlf_line_ends_and_empty_numbers() -> None:
    text = (HEADER + line("app", "app1", status="UP", scur="", qcur="", addr="10.0.0.5:8000")).replace("\n", "\r\n")
    assert parse_stat_csv(text) == [ServerStat("app", "app1", "UP", 0, 0, "10.0.0.5:8000")]


def test_a_quoted_field_may_hold_a_comma() -> None:
    text = HEADER + line("app", "app1", status="DOWN", check_desc='"Layer7 wrong status, 503"', addr="10.0.0.5:8000")
    (stat,) = parse_stat_csv(text)
    assert (stat.check, stat.addr) == ("Layer7 wrong status, 503", "10.0.0.5:8000")


@pytest.mark.parametrize(
    ("status", "state", "accepting"),
    [("UP", "ready", True), ("UP 1/2", "down", True), ("no check", "down", True), ("DOWN", "down", False),
     ("DOWN 1/2", "down", False), ("NOLB", "down", False), ("DRAIN", "drain", False),
     ("DRAIN (agent)", "drain", False), ("MAINT", "maint", False), ("MAINT (resolution)", "maint", False),
     ("MAINT (via app/app2)", "maint", False)],
)
def test_status_strings_match_by_prefix(status: str, state: str, accepting: bool) -> None:
    stat = find_server(parse_stat_csv(HEADER + line("app", "app1", status=status)), "app", "app1")
    assert (stat.admin_state, stat.accepting) == (state, accepting)


def test_unknown_server_names_the_known_ones() -> None:
    with pytest.raises(HAProxyCommandError, match=r"no server app/app9 \(servers there: app1, app2, app3\)"):
        find_server(parse_stat_csv(STAT), "app", "app9")
    with pytest.raises(HAProxyCommandError, match="no such backend"):
        find_server(parse_stat_csv(STAT), "web", "app1")


@pytest.mark.parametrize(
    "reply",
    ["", "No such proxy.\n", "pxname,svname\n", "# foo,bar\n", HEADER + "app,app1,0\n",
     HEADER + line("app", "app1", status="UP").replace(",0,", ",x,", 1)],
)
def test_garbage_and_truncated_replies_are_parse_errors(reply: str) -> None:
    with pytest.raises(HAProxyParseError):
        parse_stat_csv(reply)


def test_an_oversized_field_is_a_parse_error() -> None:
    """A garbled reply (an unbalanced quote swallowing the rest of a big stats page) must be our error:
    Agent.my_rows retries HAProxyError only, anything else ends the agent mid-drain."""
    with pytest.raises(HAProxyParseError):
        parse_stat_csv(HEADER + 'app,"app1' + "x" * 140_000 + "\n")


# Characters str.splitlines() breaks at, besides '\n' and '\r': none may end a row.
SPLITLINES_ONLY = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", SPLITLINES_ONLY)
def test_a_line_separator_inside_a_field_does_not_split_the_row(char: str) -> None:
    text = HEADER + line("app", "app1", status=f"DOWN{char}", scur=2, check_desc=f"Layer7{char}wrong status",
                         addr="10.0.0.5:8000")
    (stat,) = parse_stat_csv(text)
    assert (stat.status, stat.check, stat.scur, stat.addr) == (f"DOWN{char}", f"Layer7{char}wrong status", 2,
                                                              "10.0.0.5:8000")


field_text = st.text(alphabet=st.characters(blacklist_characters=',"\r\n'), max_size=30)


@given(
    rows=st.lists(
        st.tuples(field_text, field_text, st.sampled_from(SPLITLINES_ONLY), st.integers(0, 999)),
        min_size=1, max_size=4,
    )
)
def test_rows_end_at_newlines_only(rows: list[tuple[str, str, str, int]]) -> None:
    """Whatever a status or a check's description holds (but '\\n'), each row stays one server."""
    text = HEADER + "".join(
        line("app", f"app{i}", status=status, check_desc=f"{desc}{sep}{desc}", scur=scur, addr=f"10.0.0.{i}:80")
        for i, (status, desc, sep, scur) in enumerate(rows)
    )
    parsed = parse_stat_csv(text)
    assert [(s.server, s.status, s.check, s.scur, s.addr) for s in parsed] == [
        (f"app{i}", status, f"{desc}{sep}{desc}", scur, f"10.0.0.{i}:80")
        for i, (status, desc, sep, scur) in enumerate(rows)
    ]


@given(st.text(max_size=400))
def test_any_reply_either_parses_or_raises_our_error(reply: str) -> None:
    try:
        rows = parse_stat_csv(reply)
    except HAProxyError:
        return
    assert all(isinstance(row, ServerStat) for row in rows)


@given(st.text(max_size=400))
def test_any_text_after_the_header_either_parses_or_raises_our_error(body: str) -> None:
    with contextlib.suppress(HAProxyError):
        parse_stat_csv(HEADER + body)


@given(st.integers(min_value=0, max_value=len(STAT)))
def test_truncated_stat_never_misreads_a_server(cut: int) -> None:
    """A reply cut anywhere gives each server it shows exactly as the whole reply does, or an error."""
    whole = {(s.backend, s.server): s for s in parse_stat_csv(STAT)}
    try:
        rows = parse_stat_csv(STAT[:cut])
    except HAProxyError:
        return
    for stat in rows:
        assert stat == whole[(stat.backend, stat.server)]


def test_info() -> None:
    assert parse_info("Name: HAProxy\nPid: 7\nUptime_sec: 12\n")["Pid"] == "7"
    with pytest.raises(HAProxyParseError):
        parse_info("Unknown command\n")


def test_a_workers_connections_are_those_in_use_and_idle_in_its_pools() -> None:
    row = {"pxname": "app", "svname": "app1", "status": "DRAIN (agent)", "scur": "0", "qcur": "0",
           "used_conn_cur": "1", "idle_conn_cur": "3", "safe_conn_cur": "2"}
    assert stat_from_row(row).conns == 6
    assert stat_from_row({**row, "used_conn_cur": "", "idle_conn_cur": "", "safe_conn_cur": ""}).conns == 0


def test_the_serving_workers_uptime_from_the_stats_page() -> None:
    html = "<b>pid = </b> 7 (process #1, nbproc = 1, nbthread = 2)<br>\n<b>uptime = </b> 1d 2h03m04s; warnings = 0"
    assert parse_uptime(html) == ((24 + 2) * 60 + 3) * 60 + 4
    with pytest.raises(HAProxyParseError, match="no 'uptime = "):
        parse_uptime("<html>a page that is not HAProxy's</html>")
