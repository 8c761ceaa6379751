"""The load check's summary: what a deploy cost, in numbers a reader can check."""

from __future__ import annotations

from deploy.loadcheck import LedgerCheck, LoadResult
from deploy.rolling import RestartResult


def summary(
    result: LoadResult, ledger: LedgerCheck | None, restart: RestartResult | None, concurrency: int
) -> str:
    rate = result.total / result.elapsed_s if result.elapsed_s else 0.0
    lines = [
        f"requests   {result.total} in {result.elapsed_s:.1f}s ({rate:.0f} req/s, "
        f"concurrency {concurrency}; " + ", ".join(f"{k} {v}" for k, v in sorted(result.kinds.items()))
        + ")",
        f"ok         {result.ok}",
        f"failed     {result.failed}"
        + (" (" + ", ".join(f"{cause}: {n}" for cause, n in result.failures.most_common()) + ")"
           if result.failed else ""),
        f"latency    p50 {result.percentile(50):.1f} ms, p99 {result.percentile(99):.1f} ms, "
        f"max {max(result.latencies_ms, default=0):.0f} ms",
        "versions   " + (", ".join(f"{v}: {n}" for v, n in sorted(result.versions.items())) or "none"),
        "instances  " + (", ".join(f"{i}: {n}" for i, n in sorted(result.instances.items())) or "none"),
    ]
    if ledger is not None:
        verdict = "each processed exactly once" if ledger.ok else (
            f"NOT exactly once: {ledger.missing} answered but not recorded, {ledger.duplicated} "
            f"processed twice, {ledger.failed_but_processed} failed yet processed"
        )
        lines.append(
            f"POSTs      {ledger.answered} answered, {verdict}; {ledger.failed} failed"
            + (", none of them processed" if ledger.failed and not ledger.failed_but_processed else "")
        )
    if restart is not None:
        per = ", ".join(f"{name} {s:.2f}s" for name, s in restart.seconds.items())
        state = "halted: " + (restart.error or "").splitlines()[0] if restart.error else "done"
        lines.append(f"restart    {per or 'none'} ({state})")
    return "\n".join(lines)
