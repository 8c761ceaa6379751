"""The three load clients, each run bounded in requests and time, on 127.0.0.1 only, as one row shape.

- strict: our checker (deploy.check.loadcheck), never re-sends, classifies every failure.
- hey: the original design's check; its Go client re-sends GETs whose kept-alive
  connection was reset, so its 0 errors can hide resets.
- wrk: does not re-send; resets show up as `Socket errors: read N`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import uvloop

from deploy.check.loadcheck import LedgerCheck, LoadPlan, LoadResult, run_load
from deploy.check.strict_http import StrictClient

# A child load generator may run this much longer than planned before it is cut off.
SLACK_S = 120


@dataclass
class LoadRow:
    client: str
    requests: int  # responses plus transport errors
    ok: int  # 2xx (strict: 200 with a correct body)
    failed: int
    failures: dict[str, int]  # by cause
    elapsed_s: float
    rps: float  # all responses per second
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def failed_pct(self) -> float:
        return 100.0 * self.failed / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "failed_pct": self.failed_pct}


def available(tool: str) -> bool:
    return shutil.which(tool) is not None


def _loopback_only(url: str) -> None:
    if urlsplit(url).hostname != "127.0.0.1":
        raise ValueError(f"{url}: the bench loads 127.0.0.1 only")


# -- strict ------------------------------------------------------------------------------


def run_strict(plan: LoadPlan, keep_going: Callable[[], bool] = lambda: False,
               client_factory: Callable[[str, float], StrictClient] = StrictClient) -> LoadResult:
    _loopback_only(plan.url)
    return uvloop.run(run_load(plan, keep_going=keep_going, client_factory=client_factory))


def strict_row(result: LoadResult, ledger: LedgerCheck | None = None) -> LoadRow:
    latencies = result.latencies_ms
    extra: dict[str, object] = {
        "kinds": dict(result.kinds),
        "versions": dict(result.versions),
        "instances": dict(result.instances),
    }
    if ledger is not None:
        extra["posts"] = asdict(ledger) | {"exactly_once": ledger.ok}
    return LoadRow(
        client="strict",
        requests=result.total,
        ok=result.ok,
        failed=result.failed,
        failures=dict(result.failures),
        elapsed_s=result.elapsed_s,
        rps=result.total / result.elapsed_s if result.elapsed_s else 0.0,
        p50_ms=result.percentile(50) if latencies else None,
        p99_ms=result.percentile(99) if latencies else None,
        max_ms=max(latencies) if latencies else None,
        extra=extra,
    )


# -- hey ---------------------------------------------------------------------------------


def run_hey(url: str, requests: int, concurrency: int, timeout_s: int = 100) -> LoadRow:
    """`hey -n N -c C -t T URL`, exactly as the original design ran it."""
    return _run(["hey", "-n", str(requests), "-c", str(concurrency), "-t", str(timeout_s), url], timeout_s,
                parse_hey)


def _run(command: list[str], planned_s: float, parse: Callable[[str, float], LoadRow]) -> LoadRow:
    """Run a load generator on 127.0.0.1, cut off SLACK_S after it planned to end, and read its output."""
    _loopback_only(command[-1])
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=planned_s + SLACK_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-500:]}")
    return parse(done.stdout, time.monotonic() - began)


def parse_hey(text: str, wall_s: float) -> LoadRow:
    def number(pattern: str) -> float | None:
        match = re.search(pattern, text)
        return float(match.group(1)) if match else None

    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    errors: dict[str, int] = {}
    if "Error distribution:" in text:
        listed = text.split("Error distribution:", 1)[1]
        for count, message in re.findall(r"^\s+\[(\d+)\]\s+(.+)$", listed, re.M):
            errors[_short_error(message)] = errors.get(_short_error(message), 0) + int(count)
    responses = sum(statuses.values())
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    failures = {f"http {code}": n for code, n in statuses.items() if not 200 <= code < 300} | errors
    elapsed = number(r"Total:\s+([\d.]+) secs") or wall_s
    p50, p99, slowest = (number(r"50% in ([\d.]+) secs"), number(r"99% in ([\d.]+) secs"),
                         number(r"Slowest:\s+([\d.]+) secs"))
    return LoadRow(
        client="hey",
        requests=responses + sum(errors.values()),
        ok=ok,
        failed=sum(failures.values()),
        failures=failures,
        elapsed_s=elapsed,
        rps=responses / elapsed if elapsed else 0.0,
        p50_ms=p50 * 1000 if p50 is not None else None,
        p99_ms=p99 * 1000 if p99 is not None else None,
        max_ms=slowest * 1000 if slowest is not None else None,
    )


def _short_error(message: str) -> str:
    """Go's error text without the URL and the socket's addresses (one cause, not one per source
    port), e.g. 'EOF' or 'read: connection reset by peer'."""
    message = re.sub(r'^\w+ "[^"]*":\s*', "", message.strip())
    message = re.sub(r"^\w+ tcp \S+: ", "", message)
    return f"error: {message[:80]}"


# -- wrk ---------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def run_wrk(
    url: str, threads: int, connections: int, duration_s: int, timeout_s: int | None = None
) -> LoadRow:
    """`wrk -tT -cC -dDs --latency [--timeout Ns] URL`."""
    timeout = ["--timeout", f"{timeout_s}s"] if timeout_s is not None else []
    return _run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", *timeout, url],
                duration_s, parse_wrk)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"wrk time {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(text: str, wall_s: float) -> LoadRow:
    completed = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if not completed:
        raise ValueError(f"cannot read wrk's output:\n{text}")
    responses = int(completed.group(1))
    elapsed = _ms(completed.group(2) + completed.group(3)) / 1000
    non2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(non2xx_match.group(1)) if non2xx_match else 0
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors: dict[str, int] = {}
    if socket:
        kinds = ("connect", "read", "write", "timeout")
        socket_errors = dict(zip(kinds, map(int, socket.groups()), strict=True))
    failures = {f"socket {kind}": n for kind, n in socket_errors.items() if n}
    if non2xx:
        failures["non-2xx"] = non2xx
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", text)
    # wrk pads a one-letter unit with a space: "     99%    1.02s " (but "   21.82ms").
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+) ?$", text, re.M))
    # Requests that got a socket error (a reset, a timeout) are not among the completed ones.
    transport = sum(socket_errors.values())
    return LoadRow(
        client="wrk",
        requests=responses + transport,
        ok=responses - non2xx,
        failed=non2xx + transport,
        failures=failures,
        elapsed_s=elapsed or wall_s,
        rps=responses / elapsed if elapsed else 0.0,
        p50_ms=_ms(percentiles["50"]) if "50" in percentiles else None,
        p99_ms=_ms(percentiles["99"]) if "99" in percentiles else None,
        max_ms=_ms(latency.group(3)) if latency else None,
        extra={"socket_errors": socket_errors, "non_2xx": non2xx},
    )
