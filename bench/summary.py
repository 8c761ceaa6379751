"""Medians over runs, and how they are printed: `median (min-max)`, as in the baseline notes."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

Record = dict[str, Any]


def number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def pick(records: Iterable[Record], *path: str) -> list[float]:
    """The number at `path` (e.g. "load", "p99_ms") of each record that has one; others are skipped."""
    found = []
    for record in records:
        value: object = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        as_number = number(value)
        if as_number is not None:
            found.append(as_number)
    return found


def where(records: Iterable[Record], **match: object) -> list[Record]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def per_run(records: Iterable[Record], *path: str) -> list[float]:
    """One value per run index: the mean of that run's measurements (a run may measure a variant twice)."""
    means = _run_means(records, path)
    return [means[run] for run in sorted(means, key=str)]


def paired(without: Iterable[Record], with_: Iterable[Record], *path: str) -> list[float]:
    """Per run index: 1 - with/without of the run means (the relative cost, paired within a run)."""
    a = {r: v for r, v in _run_means(without, path).items() if v}
    b = _run_means(with_, path)
    return [1 - b[run] / a[run] for run in sorted(a, key=str) if run in b]


def _run_means(records: Iterable[Record], path: tuple[str, ...]) -> dict[object, float]:
    by_run: dict[object, list[float]] = {}
    for record in records:
        found = pick([record], *path)
        if found:
            by_run.setdefault(record.get("run"), []).extend(found)
    return {run: sum(v) / len(v) for run, v in by_run.items()}


def median(numbers: Sequence[float]) -> float | None:
    return statistics.median(numbers) if numbers else None


def spread(numbers: Sequence[float], digits: int = 0) -> str:
    """'12 (10-15)' for several runs ('2 (-3 to 9)' with negatives), '12' for one, '-' for none."""
    if not numbers:
        return "-"
    mid = statistics.median(numbers)
    if len(numbers) == 1:
        return f"{mid:.{digits}f}"
    low, high = min(numbers), max(numbers)
    dash = " to " if low < 0 else "-"
    return f"{mid:.{digits}f} ({low:.{digits}f}{dash}{high:.{digits}f})"


def costs(records: Iterable[Record]) -> list[Record]:
    """The agent's per-restart costs of every record that has them."""
    return [cost for record in records for cost in record.get("agent_costs") or []]
