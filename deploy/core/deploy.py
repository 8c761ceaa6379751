"""Rolling, surge, K-at-a-time and canary deploys, watched, and rolled back on failure.

The rules (deploy/deploy.sh follows the same ones):
- Stop-first: an instance is stopped only while another server of its backend is UP.
- Surge: the new instances start beside the old ones and must be UP before the old ones drain.
- A new instance counts as started once HAProxy's own check has it UP and it runs the new
  version; otherwise the deploy halts within the timeout.
- Watch (`watch_s` > 0): every new instance, from UP until the deploy ends and for a final
  window after it, fails the deploy when it leaves UP, restarts, or does worse than the old
  version in the same seconds (deploy.core.analysis). Watching never pauses a good deploy:
  the next batch goes on while the earlier ones are watched.
- Canary steps (`canary`, surge only): the first new instances get that share of the traffic
  by HAProxy weights, for one watch window each, judged at its end.
- On a halt, with `rollback`: every instance already changed is put back on the release it
  ran (its version and environment), by the same rules (drained first, surge where the
  deploy surged); the untouched ones are never touched. Without it the deploy stops where
  it is, as before.
Everything here acts through seams (deploy.core.seams), so it is unit-tested on virtual time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

from agent.haproxy import ServerStat
from deploy.core.analysis import canary_count, canary_weights
from deploy.core.converge import converge
from deploy.core.plan import Change, Halt, Plan, batch_size, others_up, row_of
from deploy.core.seams import Clock, Door, Fleet, Pending
from deploy.core.watch import Watch
from deploy.errors import RolloutError
from deploy.model import Event, Instance, Release, RestartResult

POLL_S = 0.05
LIVES_EVERY_S = 0.5  # how often the engine is asked whether a watched instance restarted


class Deploy:
    """One deploy of `plan` on a fleet; `run()` once."""

    def __init__(self, plan: Plan, fleet: Fleet, door: Door, clock: Clock,
                 report: Callable[[Event], None]) -> None:
        self.plan, self.fleet, self.door, self.clock, self.report = plan, fleet, door, clock, report
        self.result = RestartResult()
        self.watch = Watch(plan.thresholds)
        self.changes: list[Change] = []
        self.weighted: set[tuple[str, str]] = set()  # (backend, server) whose weight we set
        self.stats: list[ServerStat] = []
        self.target: str | None = None  # the version new instances must run
        self.watching = plan.watch_s > 0 or plan.min_ready_s > 0  # off while rolling back
        self.lives_asked = float("-inf")

    # -- the deploy ----------------------------------------------------------------------

    def run(self) -> RestartResult:
        plan = self.plan
        try:
            try:
                if plan.repair is not None:
                    converge(self, plan.repair)
            except Halt as halt:
                self.result.error = f"{halt.why}\nrollout halted before it began{halt.tail}"
                return self.result
            self.fleet.prepare(plan.version, plan.env)
            instances = list(plan.instances) if plan.instances is not None else self.fleet.instances()
            if not instances:
                raise RolloutError("no instances to deploy to")
            size = batch_size(plan.max_unavailable, len(instances))
            self.stats = self.read()
            self.watch.observe(self.stats, {})  # the old servers' counters from here on
            try:
                rest = self.canary(instances) if plan.canary else instances
                for start in range(0, len(rest), size):
                    self.step(rest[start : start + size])
                if self.watching and self.watch.new:
                    self.hold(plan.watch_s, "final window")
                self.finish_retires()
            except Halt as halt:
                # Untouched: never replaced, or replaced by a surge whose old one still serves.
                touched = {c.old for c in self.changes if not c.old_serving or c.pending is not None}
                self.halted(halt, [i for i in instances if i not in touched])
        finally:
            self.restore_weights()
        return self.result

    def step(self, batch: list[Instance]) -> None:
        """Replace one batch; its new instances join the watch once UP."""
        began = self.clock.monotonic()
        news = self.start(batch)
        self.wait_ready(news, began)
        if self.plan.min_ready_s > 0:
            self.hold(self.plan.min_ready_s, f"min-ready {', '.join(i.name for i in news)}")
        if self.plan.surge:
            self.retire_old([c for c in self.changes if c.new in news])

    def start(self, batch: list[Instance]) -> list[Instance]:
        """Start the batch's replacements (surge: beside them; stop-first: in their place)."""
        plan = self.plan
        previous = {i.name: self.fleet.release_of(i) for i in batch}
        before = self.fleet.version_of(batch[0]) or (previous[batch[0].name] or Release("?")).version
        target = plan.version or before
        for old in batch:
            self.emit(old, "restart", f"{before or '?'} -> {target or '?'}")
        began = self.clock.monotonic()
        if plan.surge:
            news = self.fleet.add(batch, target, plan.env)
            for new in news:
                self.emit(new, "started",
                          f"new, beside the old one, in {self.clock.monotonic() - began:.2f}s")
        else:
            self.stats = self.read()
            if plan.guard and not others_up(self.stats, batch):
                self.emit(batch[0], "failed", "no other server UP")
                raise Halt(f"[{batch[0].name}] no other server of {batch[0].backend} is UP in HAProxy: "
                           "stopping it would cut service")
            news = self.fleet.replace(batch, plan.version, plan.env)
            for new in news:
                self.emit(new, "started", f"old one stopped and this one started in "
                          f"{self.clock.monotonic() - began:.2f}s")
        self.changes += [Change(old, new, previous[old.name], plan.surge)
                         for old, new in zip(batch, news, strict=True)]
        for new in news:
            self.watch.expect(new)
        self.target = target
        return news

    def wait_ready(self, news: list[Instance], began: float) -> None:
        """Until each new instance is UP on the target version; it is watched from then on.
        The watch of earlier batches goes on meanwhile."""
        deadline = self.clock.monotonic() + self.plan.timeout_s
        waiting = list(news)
        status: dict[str, str] = {}
        while waiting:
            self.tick()
            for instance in list(waiting):
                row = row_of(self.stats, instance)
                status[instance.name] = (row.status + (f", check: {row.check}" if row.check else "")
                                         if row and row.status != "UP" else row.status if row else "missing")
                if row is not None and row.status == "UP":
                    seen = self.fleet.version_of(instance)
                    if seen is not None and (self.target is None or seen == self.target):
                        waiting.remove(instance)
                        self.result.seconds[instance.name] = self.clock.monotonic() - began
                        self.emit(instance, "ready", f"UP in {self.result.seconds[instance.name]:.2f}s")
                        if self.watching:
                            incarnation = self.fleet.incarnations([instance]).get(instance.name)
                            self.watch.add(instance, row, incarnation)
                        continue
                    status[instance.name] = f"UP, version answered: {seen or 'none'}"
                elif (why := self.fleet.start_failure(instance)) is not None:
                    self.not_ready(instance, why)
            if waiting and self.clock.monotonic() >= deadline:
                instance = waiting[0]
                self.not_ready(instance, f"not ready and UP within {self.plan.timeout_s:g}s (HAProxy "
                                         f"status: {status.get(instance.name, '?')})")
            if waiting:
                self.clock.sleep(POLL_S)

    def not_ready(self, instance: Instance, why: str) -> None:
        self.emit(instance, "failed", why)
        raise Halt(f"[{instance.name}] {why}",
                   f"\nlast log lines of {instance.name}:\n{self.fleet.log_tail(instance, 8)}")

    def retire_old(self, changes: list[Change]) -> None:
        """Surge: drain and stop the old ones of these changes (in the background where the
        engine can; the watch and the next batch go on meanwhile)."""
        olds = [c.old for c in changes]
        pending = self.fleet.start_retire(olds)
        for change in changes:
            change.pending = pending

    def finish_retires(self) -> None:
        """Until every old instance that is being retired is gone (the watch goes on)."""
        while any(c.pending is not None for c in self.changes):
            self.tick()
            if any(c.pending is not None for c in self.changes):
                self.clock.sleep(POLL_S)

    def hold(self, seconds: float, what: str) -> None:
        """Watch for `seconds`; judge the window at its end, latency included."""
        self.emit_all("watch", f"{what}: {seconds:g}s")
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end:
            self.tick()
            self.clock.sleep(min(POLL_S, max(0.0, end - self.clock.monotonic())))
        self.stats = self.read()
        why = self.watch.observe(self.stats, self.fleet.incarnations(self.watch.instances), latency=True)
        if why is not None:
            self.emit_all("watch-failed", why)
            raise Halt(f"watch failed: {why}")
        self.emit_all("watch-passed", f"{what}: {self.watch.describe(self.stats)}")

    def tick(self) -> None:
        """One read of HAProxy: retires that ended, and the watch (which may halt the deploy)."""
        self.stats = self.read()
        for change in self.changes:
            if change.pending is not None and change.pending.done():
                error, change.pending = change.pending.error, None
                change.old_serving = False
                if error:
                    raise Halt(f"stopping {change.old.name} failed ({error}); "
                               "its replacement is UP and serves")
                self.emit(change.old, "stopped", "drained and stopped")
        if self.watching:
            lives: Mapping[str, str] = {}
            if self.watch.new and self.clock.monotonic() - self.lives_asked >= LIVES_EVERY_S:
                lives = self.fleet.incarnations(self.watch.instances)
                self.lives_asked = self.clock.monotonic()
            why = self.watch.observe(self.stats, lives)
            if why is not None:
                self.emit_all("watch-failed", why)
                raise Halt(f"watch failed: {why}")

    def read(self) -> list[ServerStat]:
        try:
            return self.door.servers()
        except RolloutError:
            return self.stats  # HAProxy restarting: the last read stands, deadlines still run

    # -- canary ----------------------------------------------------------------------------

    def canary(self, instances: list[Instance]) -> list[Instance]:
        """Each step: enough new instances for its share (surge), HAProxy weights that send
        them that share, one watch window. Then the old ones they replace are retired, and
        the rest of the fleet follows in ordinary batches. Returns that rest."""
        count = 0
        for percent in self.plan.canary:
            want = canary_count(percent, len(instances))
            began = self.clock.monotonic()
            starting = self.start(instances[count:want]) if want > count else []
            count = max(count, want)
            # The weights go on before the new ones are UP: they never get more than their share.
            self.stats = self.read()
            news = [c.new for c in self.changes]
            olds = [i for i in instances if row_of(self.stats, i) is not None]
            w_new, w_old = canary_weights(percent, len(news), len(olds))
            for instance, weight in [(n, w_new) for n in news] + [(o, w_old) for o in olds]:
                self.set_weight(instance, weight)
            self.emit_all("canary", f"{percent:g}% of the traffic to {len(news)} new instance(s): "
                                    f"weight {w_new} each, {w_old} for each of {len(olds)} old")
            self.wait_ready(starting, began)
            self.watch.mark(self.read())
            self.hold(self.plan.watch_s, f"canary {percent:g}%")
        self.restore_weights()
        self.retire_old(list(self.changes))
        return instances[count:]

    def set_weight(self, instance: Instance, weight: int) -> None:
        row = row_of(self.stats, instance)
        if row is None:
            raise Halt(f"[{instance.name}] has no row in HAProxy: cannot set its weight")
        try:
            self.door.set_weight(row.backend, row.server, weight)
        except RolloutError as exc:
            raise Halt(f"[{instance.name}] weight {weight}: {exc}") from None
        self.weighted.add((row.backend, row.server))

    def restore_weights(self) -> None:
        for backend, server in sorted(self.weighted):
            try:
                self.door.reset_weight(backend, server)
            except RolloutError as exc:
                self.result.error = "\n".join(filter(None, [
                    self.result.error, f"could not reset the weight of {backend}/{server}: {exc}"]))
        self.weighted.clear()

    # -- halt and roll back --------------------------------------------------------------------

    def halted(self, halt: Halt, untouched: list[Instance]) -> None:
        names = ", ".join(i.name for i in untouched) or "none"
        # A failed new instance beside an old one that still serves takes no new request from
        # now on; its requests in flight finish while it drains. (Weights are reset at the end.)
        for change in self.changes:
            if change.old_serving and change.pending is None:
                with contextlib.suppress(Halt):  # no row: nothing is sent to it anyway
                    self.set_weight(change.new, 0)
        if not self.plan.rollback or not self.changes:
            self.result.error = f"{halt.why}\nrollout halted; untouched: {names}{halt.tail}"
            self.finish_retires_quietly()
            if self.plan.surge:
                self.drop_failed_surge()
            return
        self.result.error = f"{halt.why}{halt.tail}"
        self.finish_retires_quietly()
        self.roll_back(names)

    def drop_failed_surge(self) -> None:
        """Without rollback, a surge halt still stops the new instances whose old ones serve."""
        beside = [c for c in self.changes if c.old_serving]
        if beside:
            self.wait_pending(self.fleet.start_retire([c.new for c in beside]))
            self.result.error = (self.result.error or "").replace(
                "\nrollout halted", "; the new instances were stopped\nrollout halted", 1)

    def finish_retires_quietly(self) -> None:
        """After a halt: let retires in flight end (their errors join the result's)."""
        for change in self.changes:
            if change.pending is not None:
                self.wait_pending(change.pending)
                if change.pending.error:
                    self.result.error = "\n".join(filter(None, [
                        self.result.error, f"stopping {change.old.name} failed ({change.pending.error})"]))
                else:
                    change.old_serving = False
                    self.emit(change.old, "stopped", "drained and stopped")
                change.pending = None

    def wait_pending(self, pending: Pending) -> None:
        while not pending.done():
            self.clock.sleep(POLL_S)

    def roll_back(self, untouched: str) -> None:
        """Put every changed instance back on the release it ran, batch by batch as deployed."""
        self.watching = False
        self.emit_all("rollback", f"{len(self.changes)} instance(s) back to their previous release")
        back: list[str] = []
        failed: list[str] = []
        size = batch_size(self.plan.max_unavailable, max(1, len(self.changes)))
        changes = list(self.changes)
        for start in range(0, len(changes), size):
            batch = changes[start : start + size]
            try:
                back += self.roll_back_batch(batch)
            except (Halt, RolloutError) as exc:
                failed.append(f"{', '.join(c.new.name for c in batch)}: {exc}")
        self.result.rolled_back = not failed
        versions = sorted({str(c.previous) for c in changes if c.previous})
        summary = (f"\nrolled back: {', '.join(back) or 'none'} on "
                   f"{', '.join(versions) or 'the previous release'}; untouched: {untouched}")
        if failed:
            summary += "\nrollback FAILED for " + "; ".join(failed)
        self.result.error = (self.result.error or "") + summary

    def roll_back_batch(self, batch: list[Change]) -> list[str]:
        beside = [c for c in batch if c.old_serving]
        for change in beside:  # surge, old one still serving: just take the new one away
            self.emit(change.new, "rollback", f"stopped; {change.old.name} still serves")
        if beside:
            self.wait_pending(self.fleet.start_retire([c.new for c in beside]))
        gone = [c for c in batch if not c.old_serving]
        names = [c.new.name for c in beside]
        if not gone:
            return names
        unknown = [c.new.name for c in gone if c.previous is None]
        if unknown:
            raise Halt(f"the previous release of {', '.join(unknown)} is not known to this engine")
        by_release: dict[tuple[str, tuple[tuple[str, str], ...]], list[Change]] = {}
        for change in gone:
            assert change.previous is not None
            release_key = (change.previous.version, tuple(sorted(change.previous.env.items())))
            by_release.setdefault(release_key, []).append(change)
        for group in by_release.values():
            release = group[0].previous
            assert release is not None
            news = [c.new for c in group]
            for instance in news:
                self.emit(instance, "rollback", f"-> {release}")
            began = self.clock.monotonic()
            self.target = release.version
            if self.plan.surge:
                backs = self.fleet.add(news, release.version, release.env)
                self.wait_ready(backs, began)
                self.wait_pending(self.fleet.start_retire(news))
            else:
                self.stats = self.read()
                if self.plan.guard and not others_up(self.stats, news):
                    raise Halt(f"[{news[0].name}] no other server is UP: rolling it back would cut service")
                backs = self.fleet.replace(news, release.version, release.env)
                self.wait_ready(backs, began)
            names += [n.name for n in news]
        return names

    # -- events ------------------------------------------------------------------------------

    def emit(self, instance: Instance, name: str, detail: str = "") -> None:
        event = Event(self.clock.time(), instance.name, name, detail)
        self.result.events.append(event)
        self.report(event)

    def emit_all(self, name: str, detail: str) -> None:
        event = Event(self.clock.time(), "deploy", name, detail)
        self.result.events.append(event)
        self.report(event)


def deploy(plan: Plan, fleet: Fleet, door: Door, clock: Clock,
           report: Callable[[Event], None]) -> RestartResult:
    return Deploy(plan, fleet, door, clock, report).run()
