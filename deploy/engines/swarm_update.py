"""Swarm's own rolling update (`docker service update`), watched: SwarmEngine.update and .undo.

Our rules (deploy.core.deploy) drive each instance themselves: stop, start, wait until UP. On
Swarm that is the orchestrator's job (a task stopped by hand is replaced at once), so a restart
here is one `docker service update --force` of the app service, with the new image and
SERVICE_VERSION, and Swarm does the rest by the service's update_config (deploy/stack.yml):
`parallelism` tasks at a time, `start-first` (a new task must be healthy before an old one is
stopped), `failure_action: rollback`, `monitor`. Each task stops as any instance does: SIGTERM
to its drain-agent, which drains it in every HAProxy first.

This module watches the update and turns each step into the events a rolling restart reports
(restart, started, ready, stopped, failed), for the progress lines and the report's timeline.
It returns once every task runs the new spec, answers the new version and is UP in every
HAProxy, and Swarm has called the update complete; or, when Swarm rolled the release back
(a task that never got healthy), once the previous spec serves again, with the reason as the
result's error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from agent.haproxy import ServerStat
from deploy.engines.base import BACKEND, check_version, read_stats
from deploy.engines.swarm_model import APP, LIVE, Task, UpdateStatus, check_slot_budget, up_everywhere
from deploy.errors import RolloutError
from deploy.model import Event, RestartResult

if TYPE_CHECKING:  # swarm.py calls this module: its engine is only named here
    from deploy.engines.swarm import SwarmEngine

POLL_S = 0.2
ORDERS = ("start-first", "stop-first")
ROLLED_BACK = "rollback_completed"
STOPPED = ("paused", "rollback_paused")
SLOT_WAIT_S = 90.0  # > the stack's hold obsolete (75 s): the longest a departed task keeps its slot


def wait_for_slots(rows: Callable[[], list[list[ServerStat]]], needed: int, say: Callable[[str], None],
                   wait_s: float = SLOT_WAIT_S, sleep: Callable[[float], None] = time.sleep,
                   now: Callable[[], float] = time.monotonic) -> None:
    """Every new task needs an empty server slot in each HAProxy, and the tasks an update
    replaces keep theirs for the stack's hold obsolete (75 s) after they leave: an update
    soon after another (an undo right after a deploy) waits here until the last one's
    addresses are let go. Started at once, Swarm would stop each old task once its new one is
    healthy, while HAProxy had no slot to route to the new one (CI: every old task drained, no
    new one UP for 20 s, 1,400 requests answered 503 on each frontend)."""
    deadline = now() + wait_s
    said = False
    while True:
        free = [sum(1 for row in page if not row.addr) for page in rows() if page]
        if not free or min(free) >= needed:  # a HAProxy that does not answer has no rows to count
            return
        if now() >= deadline:
            raise RolloutError(f"{needed} new tasks need {needed} empty server slots in every HAProxy; "
                               f"after {wait_s:g}s one still has {min(free)} (addresses of tasks that "
                               "left are held for the stack's HAPROXY_DNS_HOLD_OBSOLETE): raise "
                               "ZDH_SLOTS and redeploy the stack")
        if not said:
            say(f"waiting for {needed} empty server slots in every HAProxy ({min(free)} now): the "
                "tasks the last update replaced keep theirs for the stack's hold obsolete")
            said = True
        sleep(1.0)


def update_command(
    engine: SwarmEngine, version: str | None, env: Mapping[str, str], order: str | None,
    parallelism: int | None, monitor: float | None = None, failure_action: str | None = None,
) -> list[str]:
    """The `docker service update` that is the whole release. `--force`: every task is
    replaced even when nothing else changed (a restart on the same version)."""
    args = ["service", "update", "--detach", "--force"]
    if version is not None:
        image = engine.image_ref(check_version(version))
        args += ["--image", image, "--env-add", f"SERVICE_VERSION={version}"]
        if engine.resolve_mode(image) == "never":
            args.append("--no-resolve-image")
    for key, value in env.items():
        args += ["--env-add", f"{key}={value}"]
    if order is not None:
        if order not in ORDERS:
            raise RolloutError(f"update order {order!r}: start-first or stop-first", exit_code=2)
        args += ["--update-order", order]
    if parallelism is not None:
        args += ["--update-parallelism", str(parallelism)]
    if monitor is not None:  # rollout's --watch-for: how long Swarm watches each updated task
        args += ["--update-monitor", f"{int(monitor * 1000)}ms"]
    if failure_action is not None:  # rollback, or pause (rollout's --no-rollback)
        args += ["--update-failure-action", failure_action]
    return [*args, engine.full_name(APP)]


def service_update(
    engine: SwarmEngine,
    version: str | None,
    env: Mapping[str, str],
    timeout_s: float,
    report: Callable[[Event], None],
    order: str | None = None,
    parallelism: int | None = None,
    monitor: float | None = None,
    failure_action: str | None = None,
    undo: bool = False,
) -> RestartResult:
    """Release `version` (None: the running one again) with Swarm's rolling update and watch it.
    `undo`: `docker service rollback` instead, Swarm's own return to the previous spec (its
    version and environment), which must be `version`.

    `order` and `parallelism` (rollout's --surge and --max-unavailable) change the service's
    update_config for this and later updates; None keeps the stack's; so do `monitor` (rollout's
    --watch-for) and `failure_action` (rollback, or pause for --no-rollback). `timeout_s` is per batch
    of `parallelism` tasks, as rollout's --restart-timeout is per instance."""
    result = RestartResult()

    def emit(instance: str, name: str, detail: str = "") -> None:
        event = Event(time.time(), instance, name, detail)
        result.events.append(event)
        report(event)

    service = engine.require_service(APP)
    config = service["Spec"].get("UpdateConfig") or {}
    replicas = engine.replicas()
    step = parallelism or int(config.get("Parallelism") or replicas)  # 0: all at once
    slots = sum(1 for row in read_stats(engine.stats_url()) if row.backend == BACKEND)
    check_slot_budget(replicas, step, slots, "HAProxy has")
    wait_for_slots(engine.rows, replicas, lambda detail: emit(engine.full_name(APP), "waiting", detail))
    engine.prepare(version, env)
    known = {task.id: task for task in engine.tasks()}  # old tasks and Swarm's task history
    old = {task.id for task in known.values() if task.live}
    versions = sorted({task.version or "?" for task in known.values() if task.live})
    previous = engine.update_status()
    began = time.monotonic()
    watched = monitor if monitor is not None else monitor_s(config)
    deadline = began + (timeout_s + watched) * (math.ceil(replicas / max(1, step)) + 1)
    command = (["service", "rollback", "--detach", engine.full_name(APP)] if undo
               else update_command(engine, version, env, order, parallelism, monitor, failure_action))
    engine.docker(*command, timeout_s=60)
    target = version
    emit(engine.full_name(APP), "restart",
         f"{', '.join(versions) or '?'} -> {version or 'the same version'}: Swarm's "
         f"{'rollback to the previous spec' if undo else 'rolling update'}, "
         f"{step} at a time, {order or config.get('Order') or 'stop-first'}")

    finished = ROLLED_BACK if undo else "completed"
    seen: dict[str, str] = {}  # task id -> the last event emitted for it
    asked: dict[str, float] = {}  # old task id -> when Swarm was seen stopping it
    status: UpdateStatus | None = None
    while True:
        status = engine.update_status()
        current = status if status and (previous is None or status.started > previous.started) else None
        tasks = engine.tasks()
        rows = engine.rows()
        if current is not None and current.state.startswith("rollback") and not undo:
            target = None  # the previous spec's tasks: whatever version it had
        for task in tasks:
            if task.id in old:
                if task.desired != "running" and task.id not in asked:
                    asked[task.id] = time.monotonic()
                    emit(task.name, "restart", f"Swarm stops it ({task.version or '?'}): its agent "
                         "drains it first")
                if task.state not in LIVE and seen.get(task.id) != "stopped":
                    seen[task.id] = "stopped"
                    waited = time.monotonic() - asked.get(task.id, began)
                    emit(task.name, "stopped", f"{task.state} {waited:.2f}s after Swarm began stopping it")
            elif task.id not in known:
                watch_new(engine, task, rows, target, seen, result, emit)
        live = [task for task in tasks if task.live]
        serving = len(live) == replicas and all(task.state == "running" and up_everywhere(rows, task.address)
                                                for task in live)
        released = (serving and not any(task.id in old for task in live)
                    and all(seen.get(task.id) == "ready" for task in live))
        running = sorted({task.version or "?" for task in live})
        if (current is not None and current.state == finished and serving and version is not None
                and running != [version]):
            # Seen on Docker 20.10: a task that crashed within the monitor made Swarm put the
            # previous spec back, and it then called the update "completed" (the tasks it had not
            # reached yet are still the old ones).
            emit(engine.full_name(APP), "failed", f"Swarm rolled the update back: the tasks run "
                 f"{', '.join(running)}, not {version}")
            result.error = (f"Swarm rolled the update back: its tasks run {', '.join(running)} again, not "
                            f"{version} (Swarm says {current.state}: {current.message or 'no message'}); "
                            f"see docker service ps {engine.full_name(APP)}")
            return result
        if current is not None and current.state == finished and released:
            emit(engine.full_name(APP), "done", f"{replicas} tasks on {version or 'the same version'}, "
                 f"UP in every HAProxy; Swarm's update took {current.completed - current.started:.1f}s "
                 f"(with its {monitor_s(config):g}s monitor)")
            return result
        if current is not None and current.state == ROLLED_BACK and serving and not undo:
            emit(engine.full_name(APP), "failed", f"Swarm rolled the update back ({current.message})")
            result.error = (f"Swarm rolled the update back ({current.message}); the previous spec "
                            f"serves again: {len(live)} tasks UP in every HAProxy")
            return result
        if current is not None and current.state in STOPPED:
            emit(engine.full_name(APP), "failed", f"{current.state}: {current.message}")
            result.error = (f"Swarm's update is {current.state}: {current.message}; resume it with "
                            f"docker service update --rollback {engine.full_name(APP)} (or fix and "
                            "release again)")
            return result
        if time.monotonic() > deadline:
            ready = sum(1 for task in live if seen.get(task.id) == "ready")
            result.error = (f"Swarm's update did not finish within {deadline - began:.0f}s (state "
                            f"{current.state if current else 'not started'}; {ready} of {replicas} "
                            "new tasks UP in every HAProxy); Swarm goes on by itself: docker service "
                            f"ps {engine.full_name(APP)}")
            emit(engine.full_name(APP), "failed", "timeout")
            return result
        time.sleep(POLL_S)


def watch_new(
    engine: SwarmEngine, task: Task, rows: list[list[ServerStat]], target: str | None,
    seen: dict[str, str], result: RestartResult, emit: Callable[[str, str, str], None],
) -> None:
    """A task the update created: started (running, i.e. healthy for Swarm), ready (UP in every
    HAProxy and answering the target version), or failed/stopped."""
    before = seen.get(task.id)
    if task.state in ("failed", "rejected") and before != "failed":
        seen[task.id] = "failed"
        emit(task.name, "failed", task.error or task.state)
    elif task.state == "running" and before is None:
        seen[task.id] = "started"
        emit(task.name, "started", f"running and healthy {time.time() - task.created:.2f}s after "
             f"Swarm created it ({task.version or '?'})")
    elif task.state not in LIVE and before in ("started", "ready"):
        seen[task.id] = "stopped"
        emit(task.name, "stopped", task.state)
    if seen.get(task.id) == "started" and task.live and up_everywhere(rows, task.address):
        answered = engine.version_of(engine.instance(task))
        if answered is not None and (target is None or answered == target):
            seen[task.id] = "ready"
            result.seconds[task.name] = time.time() - task.created
            emit(task.name, "ready", f"{answered}, UP in all {len(rows)} HAProxies "
                 f"{result.seconds[task.name]:.2f}s after Swarm created it")


def monitor_s(config: Mapping[str, object]) -> float:
    """update_config.monitor in seconds (Swarm's default: 5 s)."""
    value = config.get("Monitor")
    return int(value) / 1e9 if isinstance(value, int) and value else 5.0

