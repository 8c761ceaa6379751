"""After a deploy the tool did not live to finish (Ctrl-C, SIGKILL, the power): back to a
whole fleet before the next deploy begins, as Kubernetes and Swarm converge to their desired
state.

What such a deploy can leave, and what is done about it, in this order:
- a stop or a removal it began: the engine lets it end and removes what it left (`settle`);
- weights a canary step set: every server back to its configured weight;
- fewer instances than the stack had (stopped, not yet replaced): the missing ones start on
  the release that ran before, and must be UP before anything else is stopped;
- more (a surge's new one beside its old one): the extras are retired, those on the
  interrupted release first, never the last UP server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deploy.core.plan import Halt, Repair, others_up, row_of
from deploy.errors import RolloutError
from deploy.model import Instance

if TYPE_CHECKING:
    from deploy.core.deploy import Deploy


def converge(deploy: Deploy, repair: Repair) -> None:
    """Until the fleet has its size and every instance is UP, or the deploy's timeout. Settled
    again each round: a stop the dead deploy began may end only now (a container still draining
    looks like a running one until it exits), and then its place is filled."""
    fleet, clock = deploy.fleet, deploy.clock
    reset_all_weights(deploy)
    deadline = clock.monotonic() + deploy.plan.timeout_s
    acted = False
    while True:
        for line in fleet.settle():
            deploy.emit_all("converge", line)
        instances = fleet.instances()
        if len(instances) < repair.size:
            start_missing(deploy, repair, instances)
            acted = True
            continue
        if len(instances) > repair.size:
            retire_extras(deploy, repair, instances)
            acted = True
            continue
        deploy.stats = deploy.read()
        down = [i.name for i in instances if (row := row_of(deploy.stats, i)) is None or row.status != "UP"]
        if not down:
            if not acted:
                deploy.emit_all("converge", f"{len(instances)} of {repair.size} instances run")
            return
        if clock.monotonic() >= deadline:
            deploy.emit_all("converge", f"not UP after {deploy.plan.timeout_s:g}s: {', '.join(down)}")
            return
        clock.sleep(0.1)


def reset_all_weights(deploy: Deploy) -> None:
    for row in deploy.read():
        if row.addr:
            try:
                deploy.door.reset_weight(row.backend, row.server)
            except RolloutError as exc:
                raise Halt(f"could not reset the weight of {row.backend}/{row.server}: {exc}") from None


def start_missing(deploy: Deploy, repair: Repair, instances: list[Instance]) -> None:
    missing = repair.size - len(instances)
    if not instances:
        raise Halt(f"no instance of the stack runs (it had {repair.size}): start it again "
                   "(`rollout down` and `up`, or your engine's own way)")
    deploy.emit_all("converge", f"{len(instances)} of {repair.size} instances run: starting "
                                f"{missing} on {repair.fill}")
    began = deploy.clock.monotonic()
    watching, deploy.watching, deploy.target = deploy.watching, False, repair.fill.version
    try:
        news = deploy.fleet.add((instances * missing)[:missing], repair.fill.version, repair.fill.env)
        deploy.wait_ready(news, began)
    finally:
        deploy.watching, deploy.target = watching, None


def retire_extras(deploy: Deploy, repair: Repair, instances: list[Instance]) -> None:
    """The extras on the interrupted release first (they were never judged), newest first."""
    order = sorted(enumerate(instances),
                   key=lambda item: (deploy.fleet.release_of(item[1]) == repair.interrupted, item[0]),
                   reverse=True)
    extras = [instance for _, instance in order[: len(instances) - repair.size]]
    deploy.stats = deploy.read()
    if not others_up(deploy.stats, extras):
        raise Halt(f"{len(instances)} instances run where the stack had {repair.size}, and no other "
                   f"server is UP besides {', '.join(i.name for i in extras)}: not stopping them")
    deploy.emit_all("converge", f"{len(instances)} of {repair.size} instances run: retiring "
                                f"{', '.join(i.name for i in extras)}")
    pending = deploy.fleet.start_retire(extras)
    deploy.wait_pending(pending)
    if pending.error:
        raise Halt(f"retiring {', '.join(i.name for i in extras)} failed: {pending.error}")
