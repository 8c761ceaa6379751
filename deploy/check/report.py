"""The load check's summary: what a deploy cost, in numbers a reader can check."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deploy.check import streams_report
from deploy.check.loadcheck import LedgerCheck, LoadResult, Second, percentile
from deploy.check.outcome import Outcome
from deploy.model import Event, RestartResult


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


def buckets(result: LoadResult) -> list[dict[str, object]]:
    """Every second of the run: throughput, failures, latency and versions served."""
    last = max(result.seconds, default=-1)
    rows = []
    for second in range(last + 1):
        bucket = result.seconds.get(second, Second())
        rows.append({
            "t": second,
            "ok": bucket.ok,
            "failed": bucket.failed,
            "p50_ms": round(percentile(bucket.latencies_ms, 50), 2),
            "p99_ms": round(percentile(bucket.latencies_ms, 99), 2),
            "versions": dict(bucket.versions),
        })
    return rows


def write_report(directory: Path, outcome: Outcome, instance_events: list[Event] | None = None) -> list[Path]:
    """report.json (every bucket and event), report.md (summary) and timeline.png, each
    written once, the streams' section included.

    `instance_events` (from the agents' logs) are the marks on the plot when there are any;
    rollout's own restart events are kept in the JSON and the table either way."""
    directory.mkdir(parents=True, exist_ok=True)
    result, ledger, restart, plan = outcome.result, outcome.ledger, outcome.restart, outcome.plan

    def as_dicts(events: list[Event]) -> list[dict[str, object]]:
        return [
            {"t": round(e.at - result.started, 3), "instance": e.instance, "event": e.name,
             "detail": e.detail}
            for e in events
        ]

    events = as_dicts(restart.events if restart else [])
    # The deploy's own steps (watch windows, canary shares, a failed watch, the rollback) are
    # marked too, beside the agents' events.
    steps = [e for e in events if e["instance"] == DEPLOY_STEP]
    marks = (sorted(as_dicts(instance_events) + steps, key=lambda e: float(str(e["t"])))
             if instance_events else events)
    data = {
        "plan": {**asdict(plan), "body": len(plan.body), "accept": sorted(plan.accept)},
        "started": result.started,
        "elapsed_s": round(result.elapsed_s, 3),
        "total": result.total,
        "ok": result.ok,
        "failed": result.failed,
        "failures": dict(result.failures),
        "kinds": dict(result.kinds),
        "versions": dict(result.versions),
        "p50_ms": round(result.percentile(50), 2),
        "p99_ms": round(result.percentile(99), 2),
        "max_ms": round(max(result.latencies_ms, default=0), 2),
        "ledger": asdict(ledger) if ledger else None,
        "restart": {"seconds": restart.seconds, "error": restart.error} if restart else None,
        "events": events,
        "instance_events": marks,
        "seconds": buckets(result),
    }
    streams = (streams_report.report_data(outcome.clients, outcome.ws_ledger, result.started)
               if outcome.clients is not None else None)
    if streams is not None:
        data["streams"] = streams
    written = [directory / "report.json", directory / "report.md"]
    written[0].write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        "# Load check report",
        "",
        f"Target `{plan.url}`, concurrency {plan.concurrency}, POST share {plan.post_share}, "
        f"slow share {plan.slow_share} ({plan.slow_ms} ms).",
        "",
        "| requests | ok | failed | req/s | p50 ms | p99 ms | max ms | versions |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result.total} | {result.ok} | {result.failed} "
        f"| {result.total / max(result.elapsed_s, 1e-9):.0f} "
        f"| {data['p50_ms']} | {data['p99_ms']} | {data['max_ms']} | "
        + ", ".join(f"{v}: {n}" for v, n in sorted(result.versions.items())) + " |",
        "",
    ]
    if result.failures:
        lines += ["Failures by cause: " + ", ".join(f"{c} {n}" for c, n in result.failures.most_common()), ""]
    if ledger:
        lines += [f"POSTs: {ledger.answered} answered, {ledger.processed_once} processed exactly once, "
                  f"{ledger.missing} missing, {ledger.duplicated} duplicated, {ledger.failed} failed "
                  f"({ledger.failed_but_processed} of them processed).", ""]
    if events:
        lines += ["| t (s) | instance | event | detail |", "|---|---|---|---|"]
        lines += [f"| {e['t']} | {e['instance']} | {e['event']} | {e['detail']} |" for e in events]
        lines.append("")
    png = directory / "timeline.png"
    plot_timeline(data, png)
    lines += ["![timeline](timeline.png)", ""]
    if outcome.clients is not None and streams is not None:
        lines += streams_report.markdown(outcome.clients, outcome.ws_ledger, streams)
    written.append(png)
    written[1].write_text("\n".join(lines))
    return written


DEPLOY_STEP = "deploy"  # Event.instance of the deploy's own steps (deploy.core.deploy.emit_all)


def mark_label(event: dict[str, Any]) -> str:
    if event["instance"] == DEPLOY_STEP:
        detail = str(event.get("detail", ""))
        return f"{event['event']} {detail.split(' of the traffic')[0].split(':')[0]}"[:40]
    return f"{event['instance']} {event['event']}"


def plot_timeline(data: dict[str, Any], path: Path) -> None:
    """Requests/s, failures and p99 per second; restart events as marks; versions as a band.
    Needs matplotlib (the `report` extra; `rollout check --report` says so before it starts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The last second is usually cut short by the end of the run: it would look like a dip.
    seconds = [row for row in data["seconds"] if row["t"] + 1 <= data["elapsed_s"]] or data["seconds"]
    t = [row["t"] + 0.5 for row in seconds]
    fig, (ax, band) = plt.subplots(
        2, 1, sharex=True, figsize=(11, 5.5), gridspec_kw={"height_ratios": [5, 1]}
    )
    ax.plot(t, [row["ok"] for row in seconds], color="tab:blue", label="ok req/s")
    ax.bar(t, [row["failed"] for row in seconds], color="tab:red", label="failed req/s")
    ax.set_ylabel("requests per second")
    ax.set_ylim(bottom=0)
    latency = ax.twinx()
    latency.plot(t, [row["p99_ms"] for row in seconds], color="tab:orange", label="p99 ms")
    latency.set_ylabel("p99 latency (ms)")
    latency.set_ylim(bottom=0)
    colors = {"restart": "tab:purple", "drain": "tab:purple", "drained": "tab:blue", "stopped": "tab:gray",
              "started": "tab:gray", "ready": "tab:green", "up": "tab:green", "failed": "tab:red",
              "drain-timeout": "tab:red",
              "notify": "tab:cyan", "ws-reconnect": "tab:olive", "sse-reconnect": "tab:olive",
              "watch": "tab:brown", "watch-passed": "tab:green", "watch-failed": "tab:red",
              "canary": "tab:pink", "rollback": "tab:red"}
    for event in data["instance_events"]:
        ax.axvline(event["t"], color=colors.get(event["event"], "black"), linestyle="--", linewidth=0.8)
        ax.annotate(mark_label(event), (event["t"], 0), rotation=90, fontsize=7,
                    xytext=(2, 4), textcoords="offset points", va="bottom")
    handles = ax.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_title(
        f"{data['total']} requests, {data['failed']} failed, p99 {data['p99_ms']} ms "
        f"(concurrency {data['plan']['concurrency']})"
    )
    versions = sorted({v for row in seconds for v in row["versions"]})
    bottom = [0.0] * len(seconds)
    for version in versions:
        shares = []
        for row in seconds:
            served = sum(row["versions"].values())
            shares.append(row["versions"].get(version, 0) / served if served else 0.0)
        band.bar(t, shares, bottom=bottom, width=1.0, label=version)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    band.set_ylabel("versions")
    band.set_yticks([])
    band.set_xlabel("seconds since the load began")
    band.legend(loc="upper right", fontsize=8, ncols=max(1, len(versions)))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
