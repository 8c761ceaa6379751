"""What the stream clients saw, proven and told: the WebSocket ledgers' exactly-once check, the
summary lines, the reconnect bursts and timeline marks, and the report's streams section."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploy.check.loadcheck import percentile
from deploy.check.streams import RECONNECT_BUDGET_S, Reconnect, StreamsResult
from deploy.model import Event

# -- proving it from the ledgers ----------------------------------------------------------------


@dataclass
class WsLedgerCheck:
    """WebSocket messages sent vs. processed, from the instances' ledgers (`ws:<client>:<seq>`)."""

    sent: int
    processed_once: int
    missing: int  # sent (and echoed), yet no instance recorded it
    duplicated: int  # recorded more than once: processed twice
    unexpected: int  # recorded, never sent

    @property
    def ok(self) -> bool:
        return self.processed_once == self.sent and not (self.missing or self.duplicated or self.unexpected)


def check_ws_ledgers(result: StreamsResult, ledgers: list[Path]) -> WsLedgerCheck:
    sent = {tally.client: tally.sent for tally in result.ws}
    prefix = f"ws:{result.ws[0].client.rsplit('-', 1)[0]}-" if result.ws else None
    seen: Counter[tuple[str, int]] = Counter()
    for path in ledgers:
        with path.open() as lines:
            for line in lines:
                if prefix is None or not line.startswith(prefix):
                    continue
                _, client, seq = line.strip().split(":")
                seen[(client, int(seq))] += 1
    expected = {(client, seq) for client, count in sent.items() for seq in range(1, count + 1)}
    return WsLedgerCheck(
        sent=len(expected),
        processed_once=sum(1 for key in expected if seen[key] == 1),
        missing=sum(1 for key in expected if seen[key] == 0),
        duplicated=sum(1 for key in seen if seen[key] > 1),
        unexpected=sum(1 for key in seen if key not in expected),
    )


# -- reporting ----------------------------------------------------------------------------------


def latency_text(values: list[float]) -> str:
    if not values:
        return "none"
    return (f"{len(values)}, p50 {percentile(values, 50):.0f} ms, p99 {percentile(values, 99):.0f} ms, "
            f"max {max(values):.0f} ms")


def summary(result: StreamsResult, ledger: WsLedgerCheck | None = None) -> str:
    lines = []
    if result.ws:
        sent = sum(t.sent for t in result.ws)
        verdict = "each echoed exactly once" if result.ws_exactly_once else (
            f"NOT exactly once: {sum(t.sent - t.echoed for t in result.ws)} without echo, "
            f"{sum(t.duplicates for t in result.ws)} echoed twice, "
            f"{sum(t.unknown for t in result.ws)} unknown")
        lines.append(f"websocket  {len(result.ws)} clients, {sent} messages, {verdict}; "
                     f"{sum(t.resent for t in result.ws)} resent after a reconnect")
        if ledger is not None:
            lines.append("           ledgers: " + ("each processed exactly once" if ledger.ok else (
                f"NOT exactly once: {ledger.missing} missing, {ledger.duplicated} processed twice, "
                f"{ledger.unexpected} unexpected")))
        lines.append(f"           reconnects {latency_text(result.reconnect_ms('ws'))}")
    if result.sse:
        events = sum(t.events for t in result.sse)
        verdict = "in order, no gap" if result.sse_in_order else (
            f"{sum(t.gaps for t in result.sse)} gaps, {sum(t.repeats for t in result.sse)} repeats, "
            f"{sum(t.bad_values for t in result.sse)} bad values")
        lines.append(f"sse        {len(result.sse)} clients, {events} events, {verdict}")
        lines.append(f"           reconnects {latency_text(result.reconnect_ms('sse'))}")
    if result.slow_reconnects:
        lines.append(f"           {len(result.slow_reconnects)} reconnects over {RECONNECT_BUDGET_S:g} s")
    if result.failures:
        lines.append("           attempts failed: " + ", ".join(
            f"{cause} {n}" for cause, n in result.failures.most_common()))
    return "\n".join(lines)


def bursts(result: StreamsResult, window_s: float = 2.0) -> list[list[Reconnect]]:
    """Reconnects grouped by kind and the instance left, a burst being closes within `window_s`:
    one per instance restarted, in a rolling restart."""
    groups: list[list[Reconnect]] = []
    for reconnect in sorted(result.reconnects, key=lambda r: r.closed_at):
        for group in groups:
            first = group[0]
            if ((first.kind, first.left) == (reconnect.kind, reconnect.left)
                    and reconnect.closed_at - first.closed_at <= window_s):
                group.append(reconnect)
                break
        else:
            groups.append([reconnect])
    return groups


def timeline_events(result: StreamsResult) -> list[Event]:
    """One mark per burst, for the report's timeline (`write_report(instance_events=...)`)."""
    return [
        Event(group[0].closed_at, group[0].left or "?", f"{group[0].kind}-reconnect",
              f"{len(group)} clients, max {max(r.ms for r in group):.0f} ms")
        for group in bursts(result)
    ]


def reconnect_stats(values: list[float]) -> dict[str, float]:
    return {"count": len(values), "p50": round(percentile(values, 50), 1),
            "p99": round(percentile(values, 99), 1), "max": round(max(values, default=0), 1)}


def report_data(result: StreamsResult, ledger: WsLedgerCheck | None, since: float) -> dict[str, Any]:
    return {
        "ws_clients": len(result.ws),
        "sse_clients": len(result.sse),
        "ws_messages": sum(t.sent for t in result.ws),
        "ws_exactly_once": result.ws_exactly_once,
        "ws_resent": sum(t.resent for t in result.ws),
        "ws_ledger": asdict(ledger) if ledger else None,
        "sse_events": sum(t.events for t in result.sse),
        "sse_in_order": result.sse_in_order,
        "failures": dict(result.failures),
        "closes": dict(result.closes),
        "reconnect_ms": {kind: reconnect_stats(result.reconnect_ms(kind)) for kind in ("ws", "sse")},
        "bursts": [{"t": round(g[0].closed_at - since, 3), "kind": g[0].kind, "left": g[0].left,
                    "clients": len(g), "max_ms": round(max(r.ms for r in g), 1),
                    "reached": dict(Counter(r.reached for r in g))} for g in bursts(result)],
    }


def markdown(result: StreamsResult, ledger: WsLedgerCheck | None, data: dict[str, Any]) -> list[str]:
    """The report's streams section; `data` is `report_data`'s, as report.json has it."""
    lines = ["## Long-lived connections", "", "```", summary(result, ledger), "```", ""]
    if data["bursts"]:
        lines += ["| t (s) | kind | left | clients | reached | max reconnect ms |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {b['t']} | {b['kind']} | {b['left']} | {b['clients']} | "
                  + ", ".join(f"{k}: {n}" for k, n in sorted(b["reached"].items())) + f" | {b['max_ms']} |"
                  for b in data["bursts"]]
        lines.append("")
    return lines
