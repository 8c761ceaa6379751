"""The pieces every part of RESULTS.md is written with: its prose (bench/notes.md), tables,
failure causes, counts."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.summary import Record, pick, spread

NOTES = Path(__file__).with_name("notes.md")


@functools.cache
def all_notes() -> dict[str, str]:
    parts = re.split(r"^## (\w+)\n", NOTES.read_text(), flags=re.M)
    return {key: text.strip() for key, text in zip(parts[1::2], parts[2::2], strict=True)}


def notes(key: str) -> list[str]:
    """A part's notes from bench/notes.md (a missing one is an error, never a silent gap)."""
    try:
        return [*all_notes()[key].splitlines(), ""]
    except KeyError:
        raise KeyError(f"{NOTES} has no '## {key}' part") from None


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def causes(records: Sequence[Record]) -> str:
    """Failures by cause, summed over the runs."""
    total: dict[str, int] = {}
    for record in records:
        for cause, n in (record.get("load") or {}).get("failures", {}).items():
            total[cause] = total.get(cause, 0) + int(n)
    return ", ".join(f"{cause}: {n}" for cause, n in sorted(total.items(), key=lambda kv: -kv[1])) or "none"


def split_failures(record: Record) -> tuple[int, int]:
    """(non-2xx responses, transport errors) of one run, whatever the client."""
    failures = (record.get("load") or {}).get("failures", {})
    non2xx = sum(n for cause, n in failures.items() if cause.startswith("http ") or cause == "non-2xx")
    return non2xx, sum(failures.values()) - non2xx


def counter(records: Sequence[Record], name: str) -> str:
    return spread(pick(records, "counters", name))


def deploy_seconds(records: Sequence[Record]) -> str:
    return spread(pick(records, "deploy", "seconds"), 2)


def covered(records: Sequence[Record]) -> str:
    deploys = [r for r in records if "deploy" in r]
    if not deploys:
        return "-"
    return f"{sum(1 for r in deploys if r.get('covered'))}/{len(deploys)}"


def posts_ok(records: Sequence[Record]) -> str:
    checks = [r["load"]["extra"]["posts"] for r in records
              if isinstance((r.get("load") or {}).get("extra", {}).get("posts"), dict)]
    if not checks:
        return "-"
    good = sum(1 for c in checks if c["exactly_once"])
    return f"{good}/{len(checks)} runs"


# -- the parts ---------------------------------------------------------------------------


def header(data: dict[str, Any], number: int) -> list[str]:
    lines = [f"## {number}. {data.get('title')}", ""]
    lines.append(f"Measured {data.get('measured_at')}, {data.get('runs_per_variant')} run(s) per variant, "
                 f"{data.get('seconds')} s; load average (1 min) after: {data.get('load_average_after')}.")
    lines.append("")
    for client, text in (data.get("loads") or {}).items():
        lines.append(f"- {client}: `{text}`")
    for note in data.get("notes") or []:
        lines.append(f"- note: {note}")
    if data.get("error"):
        lines += ["", "**This section failed:**", "", "```", str(data["error"]).strip(), "```"]
    return [*lines, ""]
