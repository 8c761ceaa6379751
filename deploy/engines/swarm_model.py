"""What the swarm engine knows of a stack: its names and ports, a task and a service update as
Docker reports them, a reload's outcome, and the rules on them (the slot budget, UP in every
HAProxy)."""


from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.haproxy import ServerStat
from deploy.errors import RolloutError

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_FILE = REPO_ROOT / "deploy" / "stack.yml"
DOCKERFILE = REPO_ROOT / "service" / "Dockerfile"
DEFAULT_STACK = "zdh"
APP = "app"
HAPROXIES = ("haproxy-a", "haproxy-b")
NETWORK = "zdh"  # the stack's overlay network (deploy/stack.yml), named <stack>_zdh by Swarm
DEFAULT_IMAGE = "zero-downtime-haproxy-app"
APP_PORT = 8000  # inside each app task
FRONTEND_PORT = 8785  # inside each HAProxy task; published in host mode
STATS_PORT = 8404
# What the stack file publishes each HAProxy port on: (variable, its default).
PUBLISHED = {
    ("haproxy-a", FRONTEND_PORT): ("ZDH_PORT", 8785), ("haproxy-a", STATS_PORT): ("ZDH_STATS_PORT", 8404),
    ("haproxy-b", FRONTEND_PORT): ("ZDH_PORT_B", 8786), ("haproxy-b", STATS_PORT): ("ZDH_STATS_PORT_B", 8405),
}
STOP_GRACE_S = 100.0  # the app's stop_grace_period: > drain 70 s + app stop 25 s
UP_TIMEOUT_S = 180.0
BUILD_TIMEOUT_S = 600.0
QUICK_TIMEOUT_S = 20.0
POLL_S = 0.2
LIVE = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")


def timestamp(text: str) -> float:
    """Docker's RFC 3339 time (nanoseconds, Z) as seconds since the epoch; 0 when unset."""
    if not text or text.startswith("0001-"):
        return 0.0
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text)).timestamp()


@dataclass(frozen=True)
class Task:
    """One Swarm task of a service, as `docker inspect --type task` shows it."""

    id: str
    service: str  # app, haproxy-a, haproxy-b (without the stack's prefix)
    slot: int
    state: str  # Swarm's task state: starting, running, shutdown, failed, rejected...
    desired: str  # running, shutdown...
    created: float
    changed: float  # the last state change
    image: str
    env: dict[str, str]
    address: str  # ip:port on the stack's network ("" before one is assigned)
    container: str  # container id ("" before the container exists)
    node: str
    error: str

    @property
    def name(self) -> str:
        """Its name in rollout's output: service, slot and the first 10 characters of the task id
        (`docker service ps --no-trunc` shows the whole id; the container is named
        <stack>_<service>.<slot>.<task id>)."""
        return f"{self.service}.{self.slot}.{self.id[:10]}"

    @property
    def version(self) -> str | None:
        return self.env.get("SERVICE_VERSION")

    @property
    def live(self) -> bool:
        return self.desired == "running" and self.state in LIVE


@dataclass(frozen=True)
class UpdateStatus:
    """The service's last update or rollback, as Swarm reports it."""

    state: str  # updating, paused, completed, rollback_started, rollback_paused, rollback_completed
    started: float
    completed: float
    message: str


def up_everywhere(rows: list[list[ServerStat]], address: str) -> bool:
    """Whether every HAProxy has the server at `address` UP."""
    return bool(rows) and all(any(s.addr == address and s.status == "UP" for s in haproxy)
                              for haproxy in rows)


def slots_needed(replicas: int, parallelism: int) -> int:
    """HAProxy server slots an update of `parallelism` tasks at a time needs: every old task
    keeps its row while it drains (`hold obsolete`), every new one takes one, and a
    start-first batch runs beside them."""
    return 2 * replicas + parallelism


def check_slot_budget(replicas: int, parallelism: int, slots: int, where: str) -> None:
    """Refused in one line before anything changes: a task without a slot never gets UP."""
    if slots_needed(replicas, parallelism) > slots:
        raise RolloutError(f"{replicas} replicas updated {parallelism} at a time need "
                           f"{slots_needed(replicas, parallelism)} server slots in HAProxy (the tasks "
                           f"an update stops keep theirs while they drain); {where} {slots}",
                           exit_code=2)
