"""`rollout`: bring the stack up and down, show it, deploy and restart it one batch at a time
(watched, rolled back on failure), keep its history, check it under load."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from deploy import door
from deploy.cli_args import (
    RESTART_TIMEOUT_S,
    WATCH_FLAGS,
    WATCH_FOR_S,
    build_parser,
    env_duration,
    parse_env,
)
from deploy.cli_stack import MUTATING, history_of, lock_path, make_engine
from deploy.cli_status import cmd_status
from deploy.core.analysis import Thresholds
from deploy.core.plan import Plan, Repair
from deploy.engines.base import (
    Engine,
    InstanceEngine,
    Release,
    SelfUpdatingEngine,
    by_instance,
    self_updating,
)
from deploy.errors import RolloutError
from deploy.history import table
from deploy.lock import deploy_lock
from deploy.model import Event, RestartResult
from deploy.strategies import bluegreen
from deploy.strategies.rolling import batch_size, run_plan, wait_ready

T = TypeVar("T")


def say(message: str) -> None:
    """Progress goes to stderr; results to stdout."""
    print(message, file=sys.stderr, flush=True)


def is_deploy(args: argparse.Namespace) -> bool:
    """A deploy changes the release (a version or extra environment); a restart does not."""
    changes = getattr(args, "version", None) or getattr(args, "env", None)
    return args.command in ("deploy", "undo") or bool(changes)


def watch_flags_given(args: argparse.Namespace) -> list[str]:
    return [f"--{flag.replace('_', '-')}" for flag in WATCH_FLAGS if getattr(args, flag, None) is not None]


def make_plan(args: argparse.Namespace, version: str | None, env: dict[str, str]) -> Plan:
    """The deploy's rules from the flags, checked here; a restart without a change is not watched."""
    given = watch_flags_given(args)
    if not is_deploy(args):
        if given or args.no_rollback:
            raise RolloutError(f"{', '.join(given) or '--no-rollback'}: for deploys (a new --version or "
                               "--env, or `rollout deploy VERSION`); a plain restart changes nothing "
                               "to roll back", exit_code=2)
        return Plan(version, env, args.restart_timeout, surge=args.surge,
                    max_unavailable=args.max_unavailable)
    watch_s = args.watch_for if args.watch_for is not None else env_duration("WATCH_FOR", WATCH_FOR_S)
    if args.canary and watch_s <= 0:
        raise RolloutError("--canary needs a watch window: each step is held and judged for "
                           "--watch-for (not 0)", exit_code=2)
    try:
        thresholds = Thresholds(
            max_error_rate=Thresholds.max_error_rate if args.max_error_rate is None else args.max_error_rate,
            max_latency_ratio=(Thresholds.max_latency_ratio if args.max_latency_ratio is None
                               else args.max_latency_ratio))
    except ValueError as exc:
        raise RolloutError(str(exc), exit_code=2) from None
    return Plan(version, env, args.restart_timeout, surge=args.surge or bool(args.canary),
                max_unavailable=args.max_unavailable, watch_s=watch_s,
                min_ready_s=args.min_ready or 0.0, canary=args.canary or (), thresholds=thresholds,
                rollback=not args.no_rollback)


def run_restart(engine: Engine, args: argparse.Namespace, env: dict[str, str],
                version: str | None = None) -> RestartResult:
    """Every instance restarted or deployed, the engine's way: where the engine updates itself
    (Swarm), its own rolling update (--surge: start-first; --max-unavailable: its parallelism;
    --watch-for: its monitor; --no-rollback: pause instead of its rollback); elsewhere our rules
    (deploy.core.deploy). A deploy is recorded in the stack's history."""
    version = version or getattr(args, "version", None)
    engine.check_release(version, env)
    if self_updating(engine):
        return own_update(engine, args, env, version)
    if not by_instance(engine):
        raise RolloutError(f"the {engine.name} engine neither updates itself nor lets rollout replace "
                           "its instances", exit_code=2)
    plan = make_plan(args, version, env)
    history = history_of(engine, args)
    instances = engine.instances()
    previous = engine.release_of(instances[0]) if instances else None
    interrupted = history.interrupted()
    if interrupted is not None:  # we hold the lock: its tool is gone
        repair = Repair(size=interrupted.size or len(instances),
                        fill=interrupted.previous or interrupted.release, interrupted=interrupted.release)
        plan = replace(plan, repair=repair)
        previous = interrupted.release  # what the fleet was moving to (a second undo returns there)
        say(f"#{interrupted.number} ({interrupted.action} {interrupted.release}, begun "
            f"{time.strftime('%H:%M:%S', time.localtime(interrupted.started))}) did not finish: the tool "
            f"died during it. Converging to {repair.size} instances first")
        history.end(interrupted, "interrupted", "the tool died during it; the next deploy converged")
    action = "restart" if not is_deploy(args) else "undo" if args.command == "undo" else "deploy"
    release = Release(version or (previous.version if previous else "?"), env if is_deploy(args) else
                      (previous.env if previous else {}))
    entry = history.begin(action, release, previous, size=plan.repair.size if plan.repair else len(instances))
    if is_deploy(args):
        say(f"deploying {release} (was {previous or 'unknown'}): "
            + (f"watch {plan.watch_s:g}s" if plan.watch_s else "no watch")
            + (f", canary {','.join(f'{p:g}%' for p in plan.canary)}" if plan.canary else "")
            + ("" if plan.rollback else ", no rollback"))
    try:
        result = run_plan(engine, plan, print_event)
    except BaseException as exc:
        history.end(entry, "halted", f"{type(exc).__name__}: {exc}")
        raise
    outcome = "ok" if result.error is None else "rolled-back" if result.rolled_back else "halted"
    history.end(entry, outcome, result.error or "")
    return result


def own_update(engine: SelfUpdatingEngine, args: argparse.Namespace, env: dict[str, str],
               version: str | None) -> RestartResult:
    given = [flag for flag in watch_flags_given(args) if flag != "--watch-for"]
    if given:
        raise RolloutError(f"{', '.join(given)}: not on {engine.name}, whose own update watches each "
                           "instance for --watch-for and rolls back by itself", exit_code=2)
    parallelism = (batch_size(args.max_unavailable, engine.replicas())
                   if args.max_unavailable != "1" else None)
    return engine.update(version, env, args.restart_timeout, print_event,
                         order="start-first" if args.surge else None, parallelism=parallelism,
                         monitor=getattr(args, "watch_for", None),
                         failure_action="pause" if getattr(args, "no_rollback", False) else None)


def print_event(event: Event) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at)) + f".{int(event.at * 1000) % 1000:03d}"
    say(f"{stamp} [{event.instance}] {event.name} {event.detail}".rstrip())


def cmd_up(engine: Engine, args: argparse.Namespace) -> int:
    with deploy_lock(lock_path(engine, args)):  # while it starts; not for a foreground up's life
        start_stack(engine, args)
    return 0 if args.detach else run_in_foreground(engine)


def start_stack(engine: Engine, args: argparse.Namespace) -> None:
    if engine.is_up():
        raise RolloutError(f"a stack is already running from {engine.root}; `rollout down` first")
    say(f"starting HAProxy and the instances from {engine.root} ...")
    try:
        engine.up()
        for instance in engine.instances():
            wait_ready(engine, instance, None, RESTART_TIMEOUT_S)
            say(f"[{instance.name}] UP")
    except (RolloutError, KeyboardInterrupt):
        engine.down()  # nothing half-started is left behind
        raise
    release = Release(args.version)
    history = history_of(engine, args)
    history.end(history.begin("up", release, None), "ok")
    say(f"up: {engine.frontend_url()}/cms  (stats {engine.stats_url().split(';')[0]})")


def run_in_foreground(engine: Engine) -> int:
    say("running in the foreground; Ctrl-C stops the stack")
    # A plain list, not an Event: a handler that ran while Event.wait held its own lock would
    # deadlock on set().
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda sig, _frame: stopping.append(sig))
    while not stopping:
        if not engine.is_up():
            raise RolloutError(f"the {engine.name} stack went away")
        time.sleep(1.0)
    say("stopping ...")
    engine.down()
    return 0


def cmd_restart(engine: Engine, args: argparse.Namespace, version: str | None = None,
                env: dict[str, str] | None = None) -> int:
    env = parse_env(args.env) if env is None else env
    began = time.monotonic()
    result = run_restart(engine, args, env, version)
    what = "deploy" if is_deploy(args) else "rolling restart"
    if result.error:
        if result.rolled_back:
            raise RolloutError(f"{what} failed and was rolled back:\n{result.error}")
        raise RolloutError(result.error)
    say(f"{what} done in {time.monotonic() - began:.1f}s")
    return 0


def cmd_undo(engine: Engine, args: argparse.Namespace) -> int:
    if self_updating(engine):  # its orchestrator keeps the spec before the last update
        if watch_flags_given(args) or args.no_rollback:
            raise RolloutError(f"undo on {engine.name} is its own rollback: it takes no watch flags",
                               exit_code=2)
        began = time.monotonic()
        result = engine.undo(args.restart_timeout, print_event)
        if result.error:
            raise RolloutError(result.error)
        say(f"undo done in {time.monotonic() - began:.1f}s")
        return 0
    entry, release = history_of(engine, args).undo_target()
    say(f"undo #{entry.number} ({entry.release}): back to {release}")
    return cmd_restart(engine, args, release.version, dict(release.env))


def cmd_history(engine: Engine, args: argparse.Namespace) -> int:
    entries = history_of(engine, args).entries()
    if not entries:
        say("no deploys recorded yet")
        return 0
    print(table(entries))
    return 0


def cmd_switch(engine: Engine, args: argparse.Namespace) -> int:
    bluegreen.switch(blue_green(engine), args.color, say, args.drain_timeout)
    return 0


def cmd_release(engine: Engine, args: argparse.Namespace) -> int:
    pools = blue_green(engine)
    plan = make_plan(args, args.version, parse_env(args.env))
    bluegreen.release(pools, args.version, plan.env, args.restart_timeout, print_event, say,
                      watch_s=plan.watch_s, thresholds=plan.thresholds, switch_back=plan.rollback)
    return 0


def blue_green(engine: Engine) -> InstanceEngine:
    if not engine.blue_green or not by_instance(engine):
        raise RolloutError("this stack has one pool; start it with `rollout up --blue-green`", exit_code=2)
    return engine


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "report", None) and importlib.util.find_spec("matplotlib") is None:
            raise RolloutError("--report draws timeline.png with matplotlib, which is not installed: "
                               "pip install 'zero-downtime-haproxy[report]'", exit_code=2)
        if args.command in ("deploy", "restart", "undo") or (args.command == "check" and args.restart):
            # Every flag checked before the stack is looked at: a typo costs nothing.
            make_plan(args, getattr(args, "version", None), parse_env(getattr(args, "env", None) or []))
            batch_size(args.max_unavailable, 1)
        engine = make_engine(args)
        if args.command in MUTATING or (args.command == "check" and args.restart):
            with deploy_lock(lock_path(engine, args)):
                return dispatch(engine, args)
        return dispatch(engine, args)
    except RolloutError as exc:
        say(f"rollout: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def dispatch(engine: Engine, args: argparse.Namespace) -> int:
    """One command on the stack (a mutating one holds the stack's deploy lock)."""
    if args.command == "up":
        return cmd_up(engine, args)
    if args.command == "down":
        engine.down()
        say("down")
        return 0
    if args.command == "history":  # a record: readable while the stack is down too
        return cmd_history(engine, args)
    if not engine.is_up():
        raise RolloutError(f"the stack in {engine.root} is not running; `rollout up` first")
    if args.command == "status":
        return cmd_status(engine, args)
    if args.command == "reload":
        for haproxy in engine.haproxies():  # one line as each is done
            print(door.reload(haproxy), flush=True)
        return 0
    if args.command == "restart":
        return cmd_restart(engine, args)
    if args.command == "deploy":
        return cmd_restart(engine, args, args.version)
    if args.command == "undo":
        return cmd_undo(engine, args)
    if args.command in ("switch", "release"):
        return cmd_switch(engine, args) if args.command == "switch" else cmd_release(engine, args)
    from deploy.cli_check import cmd_check  # the load checker and its clients: only when asked

    return cmd_check(engine, args)
