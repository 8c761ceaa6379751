"""bench's readers of hey's and wrk's output: the README's numbers come from these rows.

The samples are real output (hey 0.1.4, wrk 4.1.0) against a small server that answers some
requests 503 and closes some connections without an answer.
"""

from __future__ import annotations

import pytest

from bench.clients import LoadRow, parse_hey, parse_wrk

# hey -n 3000 -c 20 -t 5: keep-alive connections reset under it were re-sent (no errors).
HEY = """
Summary:
  Total:\t0.1616 secs
  Slowest:\t0.0235 secs
  Fastest:\t0.0000 secs
  Average:\t0.0010 secs
  Requests/sec:\t18567.7755
\x20\x20
  Total data:\t104301 bytes
  Size/request:\t34 bytes

Response time histogram:
  0.000 [1]\t|
  0.002 [2731]\t|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■
  0.005 [196]\t|■■■
  0.007 [41]\t|■
  0.009 [10]\t|
  0.012 [0]\t|
  0.014 [0]\t|
  0.016 [1]\t|
  0.019 [8]\t|
  0.021 [11]\t|
  0.023 [1]\t|


Latency distribution:
  10% in 0.0002 secs
  25% in 0.0003 secs
  50% in 0.0005 secs
  75% in 0.0010 secs
  90% in 0.0022 secs
  95% in 0.0036 secs
  99% in 0.0071 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0000 secs, 0.0000 secs, 0.0235 secs
  DNS-lookup:\t0.0000 secs, 0.0000 secs, 0.0000 secs
  req write:\t0.0000 secs, 0.0000 secs, 0.0017 secs
  resp wait:\t0.0010 secs, 0.0000 secs, 0.0197 secs
  resp read:\t0.0000 secs, 0.0000 secs, 0.0053 secs

Status code distribution:
  [200]\t2769 responses
  [503]\t231 responses



"""

# hey -n 500 -c 10 -t 5, one request per connection: fresh connections closed unanswered
# (the summary and the distributions; the histogram and the latencies left out).
HEY_ERRORS = """
Summary:
  Total:\t0.2592 secs
  Slowest:\t0.0793 secs
  Fastest:\t0.0003 secs
  Average:\t0.0049 secs
  Requests/sec:\t1929.0326
\x20\x20
  Total data:\t7800 bytes
  Size/request:\t20 bytes

Status code distribution:
  [200]\t312 responses
  [503]\t78 responses

Error distribution:
  [110]\tGet "http://127.0.0.1:23918/cms": EOF

"""

# wrk -t2 -c20 -d2s --latency --timeout 5s: resets and 503s.
WRK = """Running 2s test @ http://127.0.0.1:23917/cms
  2 threads and 20 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms    3.58ms  34.42ms   93.96%
    Req/Sec    32.97k    16.64k   70.30k    58.54%
  Latency Distribution
     50%  237.00us
     75%  427.00us
     90%    2.61ms
     99%   21.82ms
  134932 requests in 2.10s, 13.45MB read
  Socket errors: connect 0, read 1405, write 0, timeout 0
  Non-2xx or 3xx responses: 10379
Requests/sec:  64171.87
Transfer/sec:      6.40MB
"""

# wrk leaves both error lines out when nothing failed (as in `wrk -t2 -c10 -d1s --latency` on the
# same server without its faults).
WRK_CLEAN = "".join(line for line in WRK.splitlines(keepends=True)
                    if not line.startswith(("  Socket errors:", "  Non-2xx")))


def test_hey_counts_statuses_and_latencies() -> None:
    row = parse_hey(HEY, wall_s=9.9)
    assert row.client == "hey"
    assert (row.requests, row.ok, row.failed) == (3000, 2769, 231)
    assert row.failures == {"http 503": 231}
    assert row.elapsed_s == pytest.approx(0.1616)  # hey's own Total, not the wall clock
    assert row.rps == pytest.approx(3000 / 0.1616)
    assert row.p50_ms == pytest.approx(0.5)
    assert row.p99_ms == pytest.approx(7.1)
    assert row.max_ms == pytest.approx(23.5)


def test_hey_errors_are_failed_requests_by_their_message() -> None:
    row = parse_hey(HEY_ERRORS, wall_s=9.9)
    assert (row.requests, row.ok, row.failed) == (500, 312, 188)
    assert row.failures == {"http 503": 78, "error: EOF": 110}  # the URL is left out
    assert row.failed_pct == pytest.approx(37.6)
    assert row.rps == pytest.approx(390 / 0.2592)  # answered requests only
    assert row.max_ms == pytest.approx(79.3)
    assert row.p50_ms is None  # no latency distribution in this excerpt


def test_hey_errors_lose_their_url_and_addresses_and_add_up() -> None:
    text = HEY_ERRORS.replace(
        '[110]\tGet "http://127.0.0.1:23918/cms": EOF',
        '[98]\tGet "http://127.0.0.1:23918/cms": EOF\n'
        '  [4]\tGet "http://127.0.0.1:23918/cms": read tcp 127.0.0.1:50000->127.0.0.1:23918: '
        'read: connection reset by peer\n'
        '  [3]\tGet "http://127.0.0.1:23918/cms": read tcp 127.0.0.1:50001->127.0.0.1:23918: '
        'read: connection reset by peer\n'
        '  [2]\tGet "http://127.0.0.1:23918/cms": dial tcp 127.0.0.1:23918: connect: connection refused\n'
        '  [3]\tPost "http://127.0.0.1:23918/cms": EOF',
    )
    row = parse_hey(text, wall_s=9.9)
    assert row.failures == {
        "http 503": 78, "error: EOF": 101, "error: read: connection reset by peer": 7,
        "error: connect: connection refused": 2,
    }
    assert row.requests == 500


def test_hey_without_a_summary_falls_back_to_the_wall_clock() -> None:
    row = parse_hey("Status code distribution:\n  [200]\t10 responses\n", wall_s=2.0)
    assert (row.requests, row.ok, row.elapsed_s, row.rps) == (10, 10, 2.0, 5.0)
    assert row.p99_ms is None and row.max_ms is None


def test_wrk_socket_errors_are_failed_requests() -> None:
    row = parse_wrk(WRK, wall_s=9.9)
    assert row.client == "wrk"
    # 134932 completed (10379 of them non-2xx) + 1405 read errors, which are not among the completed
    assert (row.requests, row.ok, row.failed) == (134932 + 1405, 134932 - 10379, 10379 + 1405)
    assert row.failures == {"socket read": 1405, "non-2xx": 10379}
    assert row.extra == {"socket_errors": {"connect": 0, "read": 1405, "write": 0, "timeout": 0},
                         "non_2xx": 10379}
    assert row.elapsed_s == pytest.approx(2.10)
    assert row.rps == pytest.approx(134932 / 2.10)
    assert row.p50_ms == pytest.approx(0.237)  # 237.00us
    assert row.p99_ms == pytest.approx(21.82)
    assert row.max_ms == pytest.approx(34.42)  # the Latency line's Max column


def test_wrk_clean_run() -> None:
    row = parse_wrk(WRK_CLEAN, wall_s=9.9)
    assert (row.requests, row.ok, row.failed, row.failures) == (134932, 134932, 0, {})
    assert row.extra == {"socket_errors": {}, "non_2xx": 0}
    assert row.elapsed_s == pytest.approx(2.10)
    assert row.p99_ms == pytest.approx(21.82)


@pytest.mark.parametrize(("printed", "ms"), [
    # wrk right-aligns each time in 10 columns and pads a one-letter unit with a trailing space.
    ("    1.50s ", 1500.0), ("    2.00m ", 120_000.0), ("  950.00us", 0.95), ("   21.82ms", 21.82),
])
def test_wrk_time_units(printed: str, ms: float) -> None:
    text = WRK_CLEAN.replace("     99%   21.82ms\n", f"     99%{printed}\n").replace("2.10s,", "1.10m,")
    row = parse_wrk(text, wall_s=1.0)
    assert row.p99_ms == pytest.approx(ms)
    assert row.elapsed_s == pytest.approx(66.0)


def test_wrk_output_it_cannot_read_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot read wrk"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n", wall_s=1.0)


def test_row_shape() -> None:
    row = LoadRow("x", requests=0, ok=0, failed=0, failures={}, elapsed_s=0.0, rps=0.0,
                  p50_ms=None, p99_ms=None, max_ms=None)
    assert row.failed_pct == 0.0
    assert row.as_dict()["failed_pct"] == 0.0
