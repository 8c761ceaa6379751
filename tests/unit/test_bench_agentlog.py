"""bench's readers of the agents' log and of HAProxy's backend counters, on real line shapes."""

from __future__ import annotations

import calendar
import json

import pytest

from agent.events import parse_line
from bench.agentlog import agents, restart_costs
from bench.stacks import COUNTERS, parse_backend_counters
from bench.tracing import Trace
from deploy.errors import RolloutError

# One slot's log across a restart: the old agent (pid 100) drains and stops its app, the new one
# (pid 200) starts it; uvicorn's and the service's own lines are mixed in, as in logs/appN.log.
LOG = """\
2026-11-26T10:00:00.000Z drain-agent[100] event=agent.listening server=*:20002 t_ms=5 port=20012
INFO:     Uvicorn running on http://127.0.0.1:20002 (Press CTRL+C to quit)
2026-11-26T10:00:10.000Z drain-agent[100] event=signal.received server=app/app1 t_ms=10000 signal=SIGTERM state=ready
2026-11-26T10:00:10.000Z drain-agent[100] event=agent.state server=app/app1 t_ms=10000 from=ready to=draining signal=SIGTERM
2026-11-26T10:00:10.180Z drain-agent[100] event=drain.done server=app/app1 t_ms=10180
2026-11-26T10:00:10.180Z drain-agent[100] event=agent.state server=app/app1 t_ms=10180 from=draining to=stopping drain_ms=180
2026-11-26T10:00:10.181Z drain-agent[100] event=app.signalled server=app/app1 t_ms=10181 signal=SIGTERM pid=101
2026-11-26T10:00:10.182Z service[101] event=service.draining instance=app1 in_flight=0
2026-11-26T10:00:10.400Z drain-agent[100] event=app.exited server=app/app1 t_ms=10400 code=0 how="exited 0"
2026-11-26T10:00:10.401Z drain-agent[100] event=agent.state server=app/app1 t_ms=10401 from=stopping to=exited code=0
2026-11-26T10:00:10.600Z drain-agent[200] event=agent.listening server=*:20002 t_ms=3 port=20012
2026-11-26T10:00:10.610Z drain-agent[200] event=app.started server=*:20002 t_ms=13 pid=201 command="python -m service"
2026-11-26T10:00:10.900Z drain-agent[200] event=app.ready server=*:20002 t_ms=303
2026-11-26T10:00:10.900Z drain-agent[200] event=agent.state server=*:20002 t_ms=303 from=starting to=ready time_to_ready_ms=290
2026-11-26T10:00:11.020Z drain-agent[200] event=haproxy.up server=app/app1 t_ms=423 since_start_ms=420
"""
SIGNAL_AT = parse_line(LOG.splitlines()[2]).at  # type: ignore[union-attr]


def test_parse_line_reads_stamp_event_and_fields() -> None:
    event = parse_line(LOG.splitlines()[8])
    assert event is not None
    assert event.event == "app.exited"
    assert event.fields == {"server": "app/app1", "t_ms": "10400", "code": "0", "how": "exited 0"}
    assert (event.program, event.pid) == ("drain-agent", 100)
    assert event.at == pytest.approx(calendar.timegm((2026, 11, 26, 10, 0, 10)) + 0.4, abs=1e-6)  # UTC
    assert parse_line(LOG.splitlines()[1]) is None


def test_agents_splits_the_log_by_process_and_skips_other_programs() -> None:
    old, new = agents(LOG)
    assert {e.pid for e in old} == {100} and {e.pid for e in new} == {200}
    assert [e.event for e in new] == ["agent.listening", "app.started", "app.ready", "agent.state", "haproxy.up"]
    assert "service.draining" not in [e.event for e in old]


def test_restart_cost_from_the_two_agents() -> None:
    (cost,) = restart_costs(LOG, "app1", SIGNAL_AT - 1, SIGNAL_AT + 1, idle=True)
    assert cost.instance == "app1"
    assert cost.signal_at == pytest.approx(SIGNAL_AT)
    assert cost.stop_path_ms == 181  # signal.received -> app.signalled, by the agent's t_ms
    assert cost.drain_ms == 180
    assert cost.ready_ms == 120  # app.ready -> haproxy.up
    assert cost.app_stop_ms == 220  # app.signalled -> the old agent's last line
    assert cost.respawn_ms == 199  # old agent's last line -> the new one's first, by the clock
    assert cost.app_start_ms == 290  # app.started -> app.ready
    assert cost.in_flight_ms == 0.0
    assert cost.overhead_ms == 181 + 120  # idle: the whole stop path is overhead


def test_only_requests_sent_before_the_signal_are_subtracted() -> None:
    def body(instance: str) -> bytes:
        return json.dumps({"instance": instance, "version": "v1"}).encode()

    trace = Trace(raw=[
        (SIGNAL_AT - 1.0, SIGNAL_AT - 0.9, body("app1")),  # over before the signal
        (SIGNAL_AT - 0.05, SIGNAL_AT + 0.15, body("app1")),  # in flight at the signal: 150 ms
        (SIGNAL_AT + 0.05, SIGNAL_AT + 0.17, body("app1")),  # sent before HAProxy's next agent-check
        (SIGNAL_AT - 0.05, SIGNAL_AT + 0.30, body("app2")),  # another server
        (SIGNAL_AT - 0.05, SIGNAL_AT + 0.50, b"not json"),
    ])
    assert trace.in_flight_ms("app1", SIGNAL_AT) == pytest.approx(150)
    (cost,) = restart_costs(LOG, "app1", SIGNAL_AT - 1, SIGNAL_AT + 1, trace)
    assert cost.in_flight_ms == pytest.approx(150)
    assert cost.ready_ms == cost.up_ms == 120  # no watch of HAProxy: until haproxy.up
    assert cost.overhead_ms == pytest.approx(181 - 150 + 120)


def test_when_haproxy_drained_and_took_back_the_server_comes_from_the_watch() -> None:
    """HAProxy routes to a server leaving maintenance at once ('UP 1/2'); it shows UP, and the
    agent logs haproxy.up, only after its next passing check."""
    ready_at = SIGNAL_AT + 0.9
    states = [(SIGNAL_AT - 5.0, "UP"), (SIGNAL_AT + 0.062, "DRAIN (agent)"), (SIGNAL_AT + 0.19, "MAINT"),
              (ready_at + 0.041, "UP 1/2"), (ready_at + 0.7, "UP")]
    (cost,) = restart_costs(LOG, "app1", SIGNAL_AT - 1, SIGNAL_AT + 1, idle=True, states=states)
    assert cost.drain_seen_ms == 62  # the pull: HAProxy's next agent-check after the SIGTERM
    assert (cost.ready_ms, cost.up_ms) == (41, 120)
    assert cost.overhead_ms == 181 + 41
    # Later than haproxy.up (a slow watch): haproxy.up it is; no watch at all: the same.
    late = [*states[:3], (ready_at + 0.3, "UP")]
    (cost,) = restart_costs(LOG, "app1", SIGNAL_AT - 1, SIGNAL_AT + 1, idle=True, states=late)
    assert cost.ready_ms == 120
    (cost,) = restart_costs(LOG, "app1", SIGNAL_AT - 1, SIGNAL_AT + 1, idle=True)
    assert (cost.drain_seen_ms, cost.ready_ms) == (None, 120)


def test_in_flight_longer_than_the_stop_path_is_no_negative_overhead() -> None:
    trace = Trace(raw=[(SIGNAL_AT - 0.01, SIGNAL_AT + 0.5, b'{"instance": "app1"}')])
    (cost,) = restart_costs(LOG, "app1", SIGNAL_AT - 1, SIGNAL_AT + 1, trace)
    assert cost.overhead_ms == 120


def test_restarts_outside_the_window_and_unknown_in_flight() -> None:
    assert restart_costs(LOG, "app1", SIGNAL_AT + 1, SIGNAL_AT + 5) == []
    (cost,) = restart_costs(LOG, "app1", SIGNAL_AT - 1, SIGNAL_AT + 1)  # no trace, not idle
    assert cost.in_flight_ms is None and cost.overhead_ms is None


def test_a_restart_whose_new_agent_never_came_up() -> None:
    old_only = "\n".join(LOG.splitlines()[:10])
    (cost,) = restart_costs(old_only, "app1", SIGNAL_AT - 1, SIGNAL_AT + 1, idle=True)
    assert (cost.ready_ms, cost.respawn_ms, cost.app_start_ms, cost.overhead_ms) == (None, None, None, None)


# HAProxy 2.8.25, `show stat app 2 -1` on a bench stack (the app backend's BACKEND row).
SHOW_STAT_HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,statu"
    "s,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rat"
    "e,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_"
    "5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,co"
    "mp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,che"
    "ck_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie"
    ",mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,c"
    "ache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur"
    ",used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,srid"
    ",sess_other,h1sess,h2sess,h3sess,req_other,h1req,h2req,h3req,proto,-,ssl_sess,ssl_reused_sess,ssl_fa"
    "iled_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_de"
    "tected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_op"
    "en_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connect"
    "ions,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes"
    "_in,h1_spliced_bytes_out,"
)
SHOW_STAT_ROW = (
    "app,BACKEND,0,0,0,100,1,26426,7633518,5135683,0,0,,0,0,0,0,UP,3,3,0,,1,39,2,,1,4,0,,26426,,1,0,,4458"
    ",,,,0,26426,0,0,0,0,,,,26426,0,0,0,0,0,0,24,,,0,0,34,67,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,345,260"
    "81,0,0,,,0,15,300,497,0,,,,,3,0,0,0,,,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,49,0,708,26789,50738"
    "50,7409036,0,0,"
)


def show_stat(**values: int) -> str:
    header = SHOW_STAT_HEADER.removeprefix("# ").split(",")
    row = SHOW_STAT_ROW.split(",")
    for name, value in values.items():
        row[header.index(name)] = str(value)
    return f"{SHOW_STAT_HEADER}\n{','.join(row)}\n\n"


def test_backend_counters() -> None:
    assert parse_backend_counters(show_stat()) == dict.fromkeys(COUNTERS, 0)
    counters = parse_backend_counters(show_stat(eresp=3, wretr=1446, wredis=4449, hrsp_5xx=7, econ=2))
    assert counters == {"econ": 2, "eresp": 3, "wretr": 1446, "wredis": 4449, "hrsp_5xx": 7,
                        "srv_abrt": 0, "cli_abrt": 0}


@pytest.mark.parametrize("reply", ["", "Unknown command.\n", f"{SHOW_STAT_HEADER}\n\n"])
def test_backend_counters_without_a_backend_row(reply: str) -> None:
    with pytest.raises(RolloutError, match="no BACKEND row"):
        parse_backend_counters(reply)
