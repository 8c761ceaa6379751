"""What one `rollout check` found, built once: the summary, the report and the exit code all
read this, and nothing re-reads a file another step wrote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.check.loadcheck import LedgerCheck, LoadPlan, LoadResult, check_ledgers
from deploy.check.streams import StreamsResult
from deploy.check.streams_report import WsLedgerCheck, check_ws_ledgers
from deploy.model import RestartResult


@dataclass
class Outcome:
    plan: LoadPlan
    result: LoadResult
    ledger: LedgerCheck | None = None  # the POSTs, where the instances keep ledgers
    restart: RestartResult | None = None
    clients: StreamsResult | None = None  # WebSocket and SSE clients, if asked for
    ws_ledger: WsLedgerCheck | None = None

    @property
    def ok(self) -> bool:
        return (self.result.failed == 0
                and (self.ledger is None or self.ledger.ok)
                and (self.clients is None or self.clients.ok)
                and (self.ws_ledger is None or self.ws_ledger.ok)
                and not (self.restart is not None and self.restart.error))


def outcome_of(plan: LoadPlan, result: LoadResult, restart: RestartResult | None,
               clients: StreamsResult | None, ledgers: list[Path]) -> Outcome:
    """The proofs from the instances' ledgers (each read once), beside what the clients saw."""
    return Outcome(
        plan, result,
        ledger=check_ledgers(result, ledgers) if ledgers else None,
        restart=restart,
        clients=clients,
        ws_ledger=check_ws_ledgers(clients, ledgers) if clients and ledgers else None,
    )
