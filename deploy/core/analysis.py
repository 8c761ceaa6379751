"""Judging a new release from HAProxy's own per-server counters, new against old.

HAProxy counts, per server, the requests it sent (`req_tot`), the 5xx answers (`hrsp_5xx`),
the failed connections (`econ`) and the cut or missing responses (`eresp`), and keeps the
average response time of the last 1024 requests (`rtime`). Counters only grow, except when a
HAProxy restarts or reloads (a new worker starts from zero): a counter that went down is
counted from zero again, never as a negative.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.haproxy import ServerStat

LATENCY_FLOOR_MS = 50  # a slower new version fails only when it is also this much slower


@dataclass(frozen=True)
class Thresholds:
    """When a new release is worse than the old one (flags: --max-error-rate, --max-latency-ratio)."""

    max_error_rate: float = 0.01  # the new error share may exceed the old one by this much (absolute)
    max_latency_ratio: float = 3.0  # the new average response time may be this many times the old
    min_latency_requests: int = 20  # fewer requests to the new servers: latency is not judged

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"--max-error-rate {self.max_error_rate}: must be 0..1 (0.01 is 1%)")
        if not 1 <= self.max_latency_ratio <= 1000:
            raise ValueError(f"--max-latency-ratio {self.max_latency_ratio}: must be 1..1000")


@dataclass(frozen=True)
class Figures:
    """A group of servers over a window: requests, errors, and request-weighted response time."""

    requests: int = 0
    errors: int = 0
    rtime_ms: float | None = None

    @property
    def error_share(self) -> float:
        return self.errors / max(self.requests, self.errors, 1)

    def __add__(self, other: Figures) -> Figures:
        requests = self.requests + other.requests
        times = [(f.rtime_ms, f.requests) for f in (self, other) if f.rtime_ms is not None and f.requests]
        weight = sum(n for _, n in times)
        rtime = sum(t * n for t, n in times) / weight if weight else (self.rtime_ms or other.rtime_ms)
        return Figures(requests, self.errors + other.errors, rtime)

    def __str__(self) -> str:
        rtime = f", {self.rtime_ms:.0f} ms" if self.rtime_ms is not None and self.requests else ""
        return f"{self.errors} errors in {self.requests} requests ({self.error_share:.1%}){rtime}"


def grown(now: int, then: int) -> int:
    """How much a counter grew; a counter that went down restarted from zero."""
    return now - then if now >= then else now


def delta(now: ServerStat, then: ServerStat | None) -> Figures:
    """One server's figures between two reads of its row."""
    if then is None:
        return Figures(now.req_tot, now.hrsp_5xx + now.econ + now.eresp, float(now.rtime))
    requests = grown(now.req_tot, then.req_tot)
    errors = (grown(now.hrsp_5xx, then.hrsp_5xx) + grown(now.econ, then.econ)
              + grown(now.eresp, then.eresp))
    return Figures(requests, errors, float(now.rtime) if requests else None)


def total(figures: Iterable[Figures]) -> Figures:
    out = Figures()
    for figure in figures:
        out = out + figure
    return out


def judge(new: Figures, old: Figures, thresholds: Thresholds, latency: bool = True) -> str | None:
    """Why the new release is worse than the old one, in one line; None while it is not.

    Errors are judged at once: one 500 in ten requests is a signal, not noise, so no minimum
    count applies. Latency only with enough requests (and `latency`: at the end of a hold,
    not on every read, where the first requests of a cold process would dominate)."""
    if new.errors and new.error_share > old.error_share + thresholds.max_error_rate:
        return (f"error share {new.error_share:.1%} ({new.errors} of {new.requests} requests: 5xx, "
                f"failed connections, cut responses) against {old.error_share:.1%} on the old version; "
                f"allowed: +{thresholds.max_error_rate:.1%} (--max-error-rate)")
    if (latency and new.requests >= thresholds.min_latency_requests and new.rtime_ms is not None
            and old.rtime_ms is not None):
        limit = max(old.rtime_ms * thresholds.max_latency_ratio, old.rtime_ms + LATENCY_FLOOR_MS)
        if new.rtime_ms > limit:
            return (f"average response time {new.rtime_ms:.0f} ms against {old.rtime_ms:.0f} ms on the "
                    f"old version; allowed: x{thresholds.max_latency_ratio:g} "
                    f"(--max-latency-ratio, and at least {LATENCY_FLOOR_MS} ms more)")
    return None


def canary_weights(percent: float, new: int, old: int, top: int = 256) -> tuple[int, int]:
    """HAProxy weights (0..256) for `new` servers to take `percent` of the traffic from `old`
    ones: (each new one's weight, each old one's weight), the closest integer split."""
    if not 0 < percent <= 100 or new < 1 or old < 0:
        raise ValueError(f"canary: {percent}% to {new} new of {old} old servers")
    if percent == 100 or old == 0:
        return top, 0

    def share(w_new: int, w_old: int) -> float:
        return 100 * new * w_new / (new * w_new + old * w_old)

    candidates = [(top, 0)]  # everything to the new ones: the last resort at a high share
    for w in range(1, top + 1):
        candidates.append((w, round((100 - percent) * new * w / (percent * old))))
        candidates.append((round(percent * old * w / ((100 - percent) * new)), w))
    valid = [(n, o) for n, o in candidates if 1 <= n <= top and 0 <= o <= top]
    return min(valid, key=lambda c: (round(abs(share(*c) - percent), 6), c[0] + c[1]))


def canary_count(percent: float, instances: int) -> int:
    """How many new instances a canary step at `percent` runs: its share of the fleet, at least 1."""
    return max(1, min(instances, -(-round(percent * instances) // 100)))
