"""The values `rollout`'s flags take: each parsed and checked as it is read (argparse types),
so a bad one is a usage error naming the flag, never a traceback later."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from deploy.engines.base import check_env, check_version
from deploy.errors import RolloutError

READY_PATH = re.compile(r"/[A-Za-z0-9/._~-]*")


def duration(text: str) -> float:
    """'10', '10s', '500ms', '2m' -> seconds."""
    match = re.fullmatch(r"(\d{1,6}(?:\.\d{1,3})?)(ms|s|m)?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected a duration such as 10s, 500ms or 2m")
    value = float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match[2]]
    if value > 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: at most 1 hour")
    return value


def seconds(text: str) -> float:
    """A timeout in seconds: a number in (0, 86400] (never nan or inf: a deadline must come)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected seconds, such as 90") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected seconds in (0, 86400]")
    return value


def seconds_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else seconds(text)


def path_share(text: str) -> tuple[str, float]:
    path, _, share = text.rpartition(":") if re.fullmatch(r".*:\d+(\.\d+)?", text) else (text, "", "1")
    if not READY_PATH.fullmatch(path.split("?")[0]) or len(path) > 2000:
        raise argparse.ArgumentTypeError(f"{text[:60]!r}: expected a path such as /api/items[:SHARE]")
    value = float(share)
    if not 0 < value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text[:60]!r}: the share must be above 0")
    return path, value


def http_method(text: str) -> str:
    if not re.fullmatch(r"[A-Z]{1,16}", text):
        raise argparse.ArgumentTypeError(f"{text[:20]!r}: expected a method such as GET or POST")
    return text


def http_header(text: str) -> tuple[str, str]:
    name, _, value = text.partition(":")
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", name) or not value.strip() or any(
            c in value for c in "\r\n\0") or len(value) > 4096:
        raise argparse.ArgumentTypeError(f"{text[:60]!r}: expected 'Name: value' on one line")
    return name.lower(), value.strip()


def statuses(text: str) -> frozenset[int]:
    codes: set[int] = set()
    for item in text.split(","):
        item = item.strip().lower()
        if re.fullmatch(r"[1-5]xx", item):
            codes |= set(range(int(item[0]) * 100, int(item[0]) * 100 + 100))
        elif re.fullmatch(r"[1-5]\d\d", item):
            codes.add(int(item))
        else:
            raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected codes such as 2xx,3xx,404")
    return frozenset(codes)


def percents(text: str) -> tuple[float, ...]:
    """'5,25,100' -> (5, 25, 100): rising shares in (0, 100]."""
    try:
        steps = tuple(float(part) for part in text.split(","))
    except ValueError:
        steps = ()
    if (not steps or len(steps) > 10 or any(not 0 < p <= 100 for p in steps)
            or list(steps) != sorted(set(steps))):
        raise argparse.ArgumentTypeError(f"{text[:60]!r}: expected rising percentages in 0..100 "
                                         "such as 5,25,100 (at most 10 steps)")
    return steps


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RolloutError(f"--env {pair[:80]!r}: expected KEY=VALUE", exit_code=2)
        env[key] = value
    check_env(env)
    return env


def byte_range(text: str) -> tuple[int, int]:
    """'20k-1m' -> (20480, 1048576)."""
    units = {"": 1, "k": 1024, "m": 1024 * 1024}
    match = re.fullmatch(r"(\d{1,9})([km]?)-(\d{1,9})([km]?)", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MIN-MAX such as 20k-1m")
    return int(match[1]) * units[match[2]], int(match[3]) * units[match[4]]


def version_arg(text: str) -> str:
    try:
        return check_version(text)
    except RolloutError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
