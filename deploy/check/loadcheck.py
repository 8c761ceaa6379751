"""A strict load checker: every request counts, nothing is ever re-sent.

hey (Go's net/http) silently re-sends a request whose kept-alive connection was
closed under it, which hides exactly the failures a deploy causes. Our client
(strict_http) never does: a reset, an empty reply or a refused connect is a failure,
classified by cause. POSTs carry a unique X-Request-Id; the service records the ids it
processed, so after the run every answered POST can be proven processed exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from deploy.check.strict_http import RequestFailed, Response, StrictClient


@dataclass(frozen=True, kw_only=True)
class LoadPlan:
    url: str
    requests: int | None = 20_000  # stop after this many, or
    duration_s: float | None = None  # after this long
    concurrency: int = 100
    post_share: float = 0.2
    slow_share: float = 0.1
    slow_ms: int = 200
    post_bytes: tuple[int, int] = (0, 2048)  # each POST's padding, drawn from this range
    timeout_s: float = 30.0
    seed: int = 1
    # Any app: `contract` False sends `method` to `paths` (each with its share of the requests),
    # with `headers` and `body`, and counts as answered any status in `accept` (default 2xx and
    # 3xx); no POST echo, no slow GETs, no version. True: the reference service's contract.
    contract: bool = True
    paths: tuple[tuple[str, float], ...] = ()
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    accept: frozenset[int] = frozenset(range(200, 400))

    def __post_init__(self) -> None:
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError("give either a number of requests or a duration, not both")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests {self.requests}: must be >= 1")
        if self.duration_s is not None and not 0 < self.duration_s <= 3600:
            raise ValueError(f"duration {self.duration_s}: must be in (0, 3600] seconds")
        if not 1 <= self.concurrency <= 2000:
            raise ValueError(f"concurrency {self.concurrency}: must be 1..2000")
        for name, share in (("post share", self.post_share), ("slow share", self.slow_share)):
            if not 0 <= share <= 1:
                raise ValueError(f"{name} {share}: must be between 0 and 1")
        if self.post_share + self.slow_share > 1:
            raise ValueError("post share + slow share must not exceed 1")
        if not 0 <= self.slow_ms <= 60_000:
            raise ValueError(f"slow ms {self.slow_ms}: must be 0..60000")
        low, high = self.post_bytes
        if not 0 <= low <= high <= 64 * 1024 * 1024:
            raise ValueError(f"post bytes {low}-{high}: must be 0 <= min <= max <= 64 MiB")
        if self.paths and (any(share <= 0 for _, share in self.paths)
                           or any(not path.startswith("/") for path, _ in self.paths)):
            raise ValueError("paths: each one /-rooted, with a share above 0")
        if not self.accept:
            raise ValueError("accept: at least one status")


def pick_path(paths: tuple[tuple[str, float], ...], roll: float) -> str:
    """The path whose share `roll` (0..1) falls in: shares are relative to their sum."""
    total, passed = sum(share for _, share in paths), 0.0
    for path, share in paths:
        passed += share / total
        if roll < passed:
            return path
    return paths[-1][0]


@dataclass
class Second:
    """One per-second bucket of the run (by completion time)."""

    ok: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)


@dataclass
class LoadResult:
    started: float = 0.0  # time.time() at start
    elapsed_s: float = 0.0
    total: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    instances: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # answered requests, any status
    seconds: dict[int, Second] = field(default_factory=dict)
    posts_answered: set[str] = field(default_factory=set)
    posts_failed: set[str] = field(default_factory=set)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def run_load(
    plan: LoadPlan,
    progress: Callable[[LoadResult], None] | None = None,
    keep_going: Callable[[], bool] = lambda: False,
    client_factory: Callable[[str, float], StrictClient] = StrictClient,
) -> LoadResult:
    """Closed-loop load: `concurrency` workers, each sending its next request when answered.

    `keep_going()` extends the run past its planned end (used while a restart is still running).
    `client_factory(url, timeout_s)` makes each worker's client (the benchmarks pass a
    StrictClient subclass that also notes each request's wall-clock times).
    """
    result = LoadResult(started=time.time())
    rng = random.Random(plan.seed)
    started = time.monotonic()
    budget = plan.requests
    deadline = started + plan.duration_s if plan.duration_s else None

    def take() -> bool:
        nonlocal budget
        if deadline is not None:
            planned = time.monotonic() < deadline
        else:
            assert budget is not None
            planned = budget > 0
            budget -= 1
        return planned or keep_going()

    def record(began: float, kind: str, failure: str | None, body: dict[str, object] | None) -> None:
        now = time.monotonic()
        bucket = result.seconds.setdefault(int(now - started), Second())
        result.total += 1
        result.kinds[kind] += 1
        if failure is None:
            result.ok += 1
            bucket.ok += 1
        else:
            result.failures[failure] += 1
            bucket.failed += 1
        if body is not None:
            latency = (now - began) * 1000
            result.latencies_ms.append(latency)
            bucket.latencies_ms.append(latency)
            version = str(body.get("version", "?"))
            result.versions[version] += 1
            bucket.versions[version] += 1
            result.instances[str(body.get("instance", "?"))] += 1

    path = urlsplit(plan.url).path or "/"

    async def any_app(client: StrictClient) -> None:
        began = time.monotonic()
        target = pick_path(plan.paths, rng.random()) if plan.paths else path
        try:
            response = await client.request(plan.method, target, plan.body, dict(plan.headers))
        except RequestFailed as exc:
            record(began, plan.method.lower(), exc.cause, None)
            return
        failure = None if response.status in plan.accept else f"http {response.status}"
        record(began, plan.method.lower(), failure, {})

    async def one(client: StrictClient) -> None:
        if not plan.contract:
            await any_app(client)
            return
        roll = rng.random()
        began = time.monotonic()
        if roll < plan.post_share:
            await post(client, began)
            return
        slow = roll < plan.post_share + plan.slow_share
        kind = "get-slow" if slow else "get"
        target = f"{path}?delay_ms={plan.slow_ms}" if slow else path
        try:
            response = await client.request("GET", target)
        except RequestFailed as exc:
            record(began, kind, exc.cause, None)
            return
        body = parse(response)
        failure = None if response.status == 200 else f"http {response.status}"
        if failure is None and body is None:
            failure = "bad response"
        record(began, kind, failure, body or {})

    async def post(client: StrictClient, began: float) -> None:
        request_id = uuid.uuid4().hex
        payload = json.dumps({"id": request_id, "pad": "x" * rng.randint(*plan.post_bytes)}).encode()
        try:
            response = await client.request(
                "POST", path, payload,
                {"content-type": "application/json", "x-request-id": request_id},
            )
        except RequestFailed as exc:
            result.posts_failed.add(request_id)
            record(began, "post", exc.cause, None)
            return
        body = parse(response)
        if response.status != 200:
            failure: str | None = f"http {response.status}"
        elif (
            body is None
            or body.get("request_id") != request_id
            or body.get("sha256") != hashlib.sha256(payload).hexdigest()
        ):
            failure = "bad response"
        else:
            failure = None
        (result.posts_answered if failure is None else result.posts_failed).add(request_id)
        record(began, "post", failure, body or {})

    async def worker() -> None:
        client = client_factory(plan.url, plan.timeout_s)
        try:
            while take():
                await one(client)
        finally:
            client.close()

    async def report_progress() -> None:
        while progress is not None:
            await asyncio.sleep(1.0)
            progress(result)

    reporter = asyncio.create_task(report_progress())
    try:
        await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    finally:
        reporter.cancel()
    result.elapsed_s = time.monotonic() - started
    return result


def parse(response: Response) -> dict[str, object] | None:
    try:
        body = json.loads(response.body)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@dataclass
class LedgerCheck:
    """POSTs answered vs. processed, from the instances' ledgers."""

    answered: int
    failed: int
    processed_once: int
    missing: int  # answered, but no instance recorded it
    duplicated: int  # recorded more than once
    failed_but_processed: int  # the client saw a failure, yet an instance processed it

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.failed_but_processed)


def check_ledgers(result: LoadResult, ledgers: list[Path]) -> LedgerCheck:
    seen: Counter[str] = Counter()
    ours = result.posts_answered | result.posts_failed
    for path in ledgers:
        with path.open() as lines:
            for line in lines:
                request_id = line.strip()
                if request_id in ours:
                    seen[request_id] += 1
    return LedgerCheck(
        answered=len(result.posts_answered),
        failed=len(result.posts_failed),
        processed_once=sum(1 for r in result.posts_answered if seen[r] == 1),
        missing=sum(1 for r in result.posts_answered if seen[r] == 0),
        duplicated=sum(1 for r in ours if seen[r] > 1),
        failed_but_processed=sum(1 for r in result.posts_failed if seen[r] > 0),
    )
