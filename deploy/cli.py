"""`rollout`: bring the stack up and down, show it, deploy and restart it one batch at a time
(watched, rolled back on failure), keep its history, check it under load."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from deploy.check import streams
from deploy.check.loadcheck import LoadPlan, LoadResult, check_ledgers, run_load
from deploy.check.report import summary, write_report
from deploy.check.streams import StreamsResult
from deploy.check.timeline import instance_timeline
from deploy.core.analysis import Thresholds
from deploy.core.deploy import Plan
from deploy.engines.base import Engine, Release, check_env, check_version
from deploy.engines.compose import DockerEngine, find_stack
from deploy.engines.local import REFERENCE_SERVICE, LocalEngine, LocalStack, app_argv
from deploy.engines.swarm import SwarmEngine
from deploy.errors import RolloutError
from deploy.history import History, table
from deploy.lock import LOCK_NAME, deploy_lock
from deploy.model import Event, RestartResult
from deploy.strategies import bluegreen
from deploy.strategies.rolling import batch_size, read_servers, row_of, run_plan, wait_ready
from deploy.strategies.service_update import service_update

RESTART_TIMEOUT_S = 90.0
WATCH_FOR_S = 10.0
T = TypeVar("T")
READY_PATH = re.compile(r"/[A-Za-z0-9/._~-]*")


def say(message: str) -> None:
    """Progress goes to stderr; results to stdout."""
    print(message, file=sys.stderr, flush=True)


def env_default(name: str, default: str) -> str:
    return os.environ.get(f"ROLLOUT_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rollout",
        description="Deploy a service behind HAProxy by plain restarts, with zero failed requests.",
    )
    parser.add_argument("--engine", choices=["local", "docker", "swarm"],
                        default=env_default("ENGINE", "local"),
                        help="local: processes under supervisor (default); docker: the "
                             "docker-compose.yml stack; swarm: deploy/stack.yml on Docker Swarm, "
                             "stack ZDH_STACK (default zdh) (env ROLLOUT_ENGINE)")
    parser.add_argument("--state-dir", default=env_default("STATE_DIR", ".rollout"),
                        help="where the local stack keeps its files (default .rollout; env "
                             "ROLLOUT_STATE_DIR)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start HAProxy and the instances; wait until all are UP")
    up.add_argument("--detach", "-d", action="store_true",
                    help="return once up (default: stay in the foreground, Ctrl-C stops)")
    up.add_argument("--port", type=int, default=int(env_default("PORT", "8785")),
                    help="frontend port (default 8785)")
    up.add_argument("--stats-port", type=int, default=int(env_default("STATS_PORT", "8404")),
                    help="HAProxy stats and metrics port, loopback only (default 8404)")
    up.add_argument("--app-base-port", type=int, default=int(env_default("APP_BASE_PORT", "8001")),
                    help="app1 listens here, app2 on the next port... (default 8001)")
    up.add_argument("--version", default="v1", type=version_arg,
                    help="version the instances start with (default v1)")
    up.add_argument("--app-command", default=REFERENCE_SERVICE, metavar="COMMAND",
                    help="your app instead of the reference service, e.g. 'node server.js {port}': "
                         "{port} is each instance's port (also in $PORT); run from the current "
                         "directory (default: the reference service)")
    up.add_argument("--ready-path", default="/readyz",
                    help="the app's readiness path: HAProxy's health check and the agent's probe "
                         "(default /readyz)")
    up.add_argument("--start-timeout", type=float, default=60.0,
                    help="max seconds for an instance to become ready (default 60)")
    up.add_argument("--agent-base-port", type=int, default=int(env_default("AGENT_BASE_PORT", "9201")),
                    help="app1's drain-agent answers HAProxy's agent-check here, app2's on the "
                         "next port... (default 9201)")
    up.add_argument("--instances", type=int, default=3, help="number of instances, 2..64 (default 3)")
    up.add_argument("--blue-green", action="store_true",
                    help="two pools, blue1-2 and green1-2, behind a map switch (blue active)")
    up.add_argument("--no-agent", action="store_true",
                    help="run the app without drain-agent (only to reproduce the usual ways)")
    up.add_argument("--retry-on", default="conn-failure empty-response 503",
                    help="HAProxy retry-on (default 'conn-failure empty-response 503')")
    up.add_argument("--retries", type=int, default=3, help="HAProxy retries (default 3)")

    sub.add_parser("down", help="stop everything (instances drain first)")
    sub.add_parser("status", help="table of servers: HAProxy state, sessions, version")
    sub.add_parser("reload", help="reload HAProxy's configuration without a restart (master-worker, "
                                  "SIGUSR2; every HAProxy of the stack, one after the other)")

    deploy = sub.add_parser(
        "deploy", help="deploy a new version: rolling (or surge, K at a time, canary), watched, "
                       "rolled back by itself if the new version fails",
        description="Deploy VERSION one batch at a time. Each new instance is watched from the "
                    "moment HAProxy has it UP until the deploy ends and for --watch-for after it: "
                    "if one leaves UP, restarts, or answers worse than the old version in the same "
                    "seconds (HAProxy's own per-server counters), every instance already changed "
                    "goes back to its previous release and the command exits 1.",
        epilog="examples:\n  rollout deploy v2\n  rollout deploy v2 --surge --canary 5,25,100\n"
               "  rollout deploy v2 --env FEATURE_X=on --min-ready 5\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    deploy.add_argument("version", type=version_arg, help="the version to deploy")
    add_restart_options(deploy, version=False)
    add_watch_options(deploy)

    restart = sub.add_parser(
        "restart", help="rolling restart without a change (with --version: the same as `deploy`)",
        description="Restart every instance one batch at a time, on the release it runs. With "
                    "--version (or --env) it is a deploy: watched and rolled back as `rollout deploy`.")
    add_restart_options(restart)
    add_watch_options(restart)

    undo = sub.add_parser(
        "undo", help="deploy the release that ran before the last successful deploy",
        description="As `kubectl rollout undo`: the previous release from `rollout history`, "
                    "deployed with the same rules (watched, rolled back on failure).")
    add_restart_options(undo, version=False, env=False)
    add_watch_options(undo)
    sub.add_parser("history", help="the deploys of this stack: release, previous release, result")

    switch = sub.add_parser("switch", help="blue/green: move all traffic to the other pool")
    switch.add_argument("color", help="blue or green")
    switch.add_argument("--drain-timeout", type=float, default=60.0,
                        help="max wait for the old pool's sessions to end (default 60 s)")

    release = sub.add_parser("release", help="blue/green: deploy to the idle pool, switch to it, "
                                             "watch it, switch back if it fails")
    add_restart_options(release)
    add_watch_options(release)

    check = sub.add_parser("check", help="load the frontend, optionally restarting in the middle")
    group = check.add_mutually_exclusive_group()
    group.add_argument("--requests", "-n", type=int, help="number of requests (default 20000)")
    group.add_argument("--duration", "-z", type=float, help="or run this many seconds")
    check.add_argument("--concurrency", "-c", type=int, default=100, help="default 100")
    check.add_argument("--post-share", type=float, default=0.2, help="share of POSTs (default 0.2)")
    check.add_argument("--slow-share", type=float, default=0.1,
                       help="share of slow GETs (default 0.1)")
    check.add_argument("--slow-ms", type=int, default=200, help="delay of slow GETs (default 200)")
    check.add_argument("--post-bytes", type=byte_range, default=(0, 2048), metavar="MIN-MAX",
                       help="size of each POST's body, e.g. 20k-1m (default 0-2k)")
    check.add_argument("--ws-clients", type=int, default=0,
                       help="WebSocket clients alongside, reconnecting on close (default 0)")
    check.add_argument("--ws-rate", type=float, default=20.0,
                       help="messages/s per WebSocket client (default 20)")
    check.add_argument("--sse-clients", type=int, default=0,
                       help="server-sent-event clients alongside, resuming from the last id (default 0)")
    check.add_argument("--sse-interval-ms", type=int, default=100, help="event period asked (default 100)")
    check.add_argument("--timeout", type=float, default=30.0, help="per request (default 30 s)")
    check.add_argument("--url", help="target (default: the stack's frontend /cms)")
    check.add_argument("--report", metavar="DIR",
                       help="write report.json, report.md and timeline.png there")
    check.add_argument("--restart", action="store_true",
                       help="run a rolling restart while the load runs")
    check.add_argument("--restart-after", type=float, default=2.0,
                       help="seconds of load before the restart begins (default 2)")
    add_restart_options(check)
    add_watch_options(check)
    return parser


def add_restart_options(parser: argparse.ArgumentParser, version: bool = True, env: bool = True) -> None:
    if version:
        parser.add_argument("--version", type=version_arg,
                            help="new version: a deploy, watched and rolled back as `rollout deploy` "
                                 "(default: keep each instance's version)")
    if env:
        parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                            help="extra environment for the new instances (repeatable)")
    parser.add_argument("--restart-timeout", type=float, default=RESTART_TIMEOUT_S,
                        help=f"per instance: max wait for ready + UP (default {RESTART_TIMEOUT_S:g} s)")
    parser.add_argument("--surge", action="store_true",
                        help="start each new instance (in a spare slot / one more container) and "
                             "wait until it is UP before the old one drains: capacity never drops")
    parser.add_argument("--max-unavailable", default="1", metavar="K",
                        help="replace K instances at a time, a count or a share such as 25%% "
                             "(default 1); with --surge, K new ones start before K old ones drain")


def add_watch_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("watch and rollback (deploys)")
    group.add_argument("--watch-for", type=duration, metavar="DURATION",
                       help=f"watch each new instance from UP until the deploy ends and this long "
                            f"after it, e.g. 10s or 1m; 0 turns the watch off (default "
                            f"{WATCH_FOR_S:g}s; env ROLLOUT_WATCH_FOR)")
    group.add_argument("--min-ready", type=duration, metavar="DURATION",
                       help="each batch stays UP, watched, this long before the next one starts "
                            "(as Kubernetes' minReadySeconds; default 0)")
    group.add_argument("--canary", type=percents, metavar="PERCENT[,PERCENT...]",
                       help="send that share of the traffic to the first new instance(s) by HAProxy "
                            "weights, one watch window per step, e.g. 5,25,100 (implies --surge)")
    group.add_argument("--max-error-rate", type=float, metavar="SHARE",
                       help="the new version's share of errors (5xx, failed connections, cut "
                            "responses) may exceed the old one's by this much (default 0.01: 1%%)")
    group.add_argument("--max-latency-ratio", type=float, metavar="RATIO",
                       help="its average response time may be this many times the old one's "
                            "(default 3, and at least 50 ms more)")
    group.add_argument("--no-rollback", action="store_true",
                       help="on a failure, stop where the deploy is (the changed instances stay) "
                            "instead of putting them back")


WATCH_FLAGS = ("watch_for", "min_ready", "canary", "max_error_rate", "max_latency_ratio")


def duration(text: str) -> float:
    """'10', '10s', '500ms', '2m' -> seconds."""
    match = re.fullmatch(r"(\d{1,6}(?:\.\d{1,3})?)(ms|s|m)?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected a duration such as 10s, 500ms or 2m")
    value = float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match[2]]
    if value > 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: at most 1 hour")
    return value


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


def make_engine(args: argparse.Namespace) -> Engine:
    """The one place `--engine` is read: every command works on the Engine this returns."""
    if args.engine == "docker":
        return make_docker_engine(args)
    if args.engine == "swarm":
        return make_swarm_engine(args)
    return make_local_engine(args)


def make_local_engine(args: argparse.Namespace) -> LocalEngine:
    """`up`: a new stack from the flags (checked here); the other commands: the saved one."""
    if args.command == "up":
        if not 2 <= args.instances <= 64:
            raise RolloutError(f"--instances {args.instances}: must be 2..64", exit_code=2)
        for flag, port, count in (("--port", args.port, 1), ("--stats-port", args.stats_port, 1),
                                  ("--app-base-port", args.app_base_port, args.instances),
                                  ("--agent-base-port", args.agent_base_port, args.instances)):
            if not 0 < port <= 65536 - count:
                raise RolloutError(f"{flag} {port}: not a usable TCP port", exit_code=2)
        if not app_argv(args.app_command, 1):
            raise RolloutError("--app-command is empty", exit_code=2)
        if not READY_PATH.fullmatch(args.ready_path):
            raise RolloutError(f"--ready-path {args.ready_path[:80]!r}: expected a path such as "
                               "/healthz (letters, digits, '/', '.', '_', '-', '~')", exit_code=2)
        if not 0 < args.start_timeout <= 3600:
            raise RolloutError(f"--start-timeout {args.start_timeout}: must be 0..3600 s", exit_code=2)
        stack = LocalStack(
            state_dir=args.state_dir, port=args.port, stats_port=args.stats_port,
            instances=args.instances,
            app_base_port=args.app_base_port, agent_base_port=args.agent_base_port,
            version=args.version, agent=not args.no_agent,
            app_command=args.app_command, app_dir=os.getcwd(), ready_path=args.ready_path,
            start_timeout_s=args.start_timeout,
            blue_green=args.blue_green,
            retry_on=args.retry_on, retries=args.retries,
        )
        return LocalEngine(stack)
    return LocalEngine(LocalStack.load(args.state_dir))


def make_docker_engine(args: argparse.Namespace) -> DockerEngine:
    """`up` flags become the compose file's variables (ZDH_PORT, ZDH_STATS_PORT, SERVICE_VERSION,
    or BLUE_VERSION and GREEN_VERSION with --blue-green); a flag left at its default does not
    override the variable already in the environment. `up --blue-green` uses
    docker-compose.bluegreen.yml; the other commands find which of the two files has the stack."""
    env: dict[str, str] = {}
    if args.command != "up":
        return find_stack(env)
    if args.no_agent or args.instances != 3:
        raise RolloutError("--no-agent and --instances: local engine only (the compose files run "
                           "the app service(s) under drain-agent; scale with `docker compose up "
                           "--scale app=N`)", exit_code=2)
    versions = ("BLUE_VERSION", "GREEN_VERSION") if args.blue_green else ("SERVICE_VERSION",)
    for value, default, var in (
        (args.port, int(env_default("PORT", "8785")), "ZDH_PORT"),
        (args.stats_port, int(env_default("STATS_PORT", "8404")), "ZDH_STATS_PORT"),
        *((args.version, "v1", version) for version in versions),
    ):
        if value != default or var not in os.environ:
            env[var] = str(value)
    return DockerEngine(env=env, blue_green=args.blue_green)


def make_swarm_engine(args: argparse.Namespace) -> SwarmEngine:
    """`up` flags become deploy/stack.yml's variables: ZDH_PORT and ZDH_STATS_PORT (haproxy-a;
    haproxy-b's are ZDH_PORT_B and ZDH_STATS_PORT_B), SERVICE_VERSION, ZDH_REPLICAS
    (--instances); a flag left at its default does not override the variable already set."""
    env: dict[str, str] = {}
    if args.command == "up":
        if args.no_agent or args.blue_green:
            raise RolloutError("--no-agent and --blue-green: not on Swarm (deploy/stack.yml runs "
                               "one app service, each task under drain-agent)", exit_code=2)
        for value, default, var in (
            (args.port, int(env_default("PORT", "8785")), "ZDH_PORT"),
            (args.stats_port, int(env_default("STATS_PORT", "8404")), "ZDH_STATS_PORT"),
            (args.version, "v1", "SERVICE_VERSION"),
            (args.instances, 3, "ZDH_REPLICAS"),
        ):
            if value != default or var not in os.environ:
                env[var] = str(value)
    return SwarmEngine(env=env)


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
    watch_s = args.watch_for if args.watch_for is not None else float(
        duration(env_default("WATCH_FOR", str(WATCH_FOR_S))))
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
    """Every instance restarted or deployed, the engine's way: on Swarm, Swarm's own rolling
    update (--surge: start-first; --max-unavailable: its parallelism; its monitor and rollback
    are the stack file's); elsewhere our rules (deploy.core.deploy). A deploy is recorded in
    the stack's history."""
    version = version or getattr(args, "version", None)
    if isinstance(engine, SwarmEngine):
        given = [flag for flag in watch_flags_given(args) if flag != "--watch-for"]
        if given:
            raise RolloutError(f"{', '.join(given)}: not on Swarm, whose own update watches each task "
                               "for --watch-for (its monitor) and rolls back (its failure_action)",
                               exit_code=2)
        parallelism = (batch_size(args.max_unavailable, engine.replicas())
                       if args.max_unavailable != "1" else None)
        return service_update(engine, version, env, args.restart_timeout, print_event,
                              order="start-first" if args.surge else None, parallelism=parallelism,
                              monitor=getattr(args, "watch_for", None),
                              failure_action="pause" if getattr(args, "no_rollback", False) else None)
    plan = make_plan(args, version, env)
    if not is_deploy(args):
        return run_plan(engine, plan, print_event)
    history = history_of(engine, args)
    instances = engine.instances()
    previous = engine.release_of(instances[0]) if instances else None
    release = Release(version or (previous.version if previous else "?"), env)
    entry = history.begin(args.command if args.command == "undo" else "deploy", release, previous)
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


MUTATING = ("down", "deploy", "restart", "undo", "release", "switch", "reload")  # `up`: while it starts


def lock_path(engine: Engine, args: argparse.Namespace) -> Path:
    """The stack's deploy lock: beside the local stack's state; beside the compose file, named
    after the project (deploy.sh takes the same one); in --state-dir for a Swarm stack."""
    if engine.name == "local":
        return engine.root / LOCK_NAME
    if isinstance(engine, DockerEngine):
        return engine.compose_file.parent / f".zdh-deploy-{engine.stack_id}.lock"
    return Path(args.state_dir) / f".zdh-deploy-{engine.name}-{engine.stack_id}.lock"


def history_of(engine: Engine, args: argparse.Namespace) -> History:
    """Where the stack's history lives: the local stack's state directory; for the other
    engines a file named after the engine and the stack (compose project, Swarm stack) in
    --state-dir."""
    if engine.name == "local":
        return History(engine.root / "history.json")
    return History(Path(args.state_dir) / f"{engine.name}-{engine.stack_id}-history.json")


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


def cmd_status(engine: Engine) -> int:
    servers = read_servers(engine)
    blue_green = engine.blue_green
    if blue_green:
        live, saved = bluegreen.active_color(engine), bluegreen.file_color(engine)
        note = "" if live == saved else f" (map file says {saved}: a HAProxy restart would switch!)"
        print(f"active: {live}{note}")
    rows: list[tuple[str, ...]] = [("SERVER", "HAPROXY", "SESSIONS", "QUEUED", "VERSION")]
    if blue_green:
        rows = [("POOL", *rows[0])]
    for instance in engine.instances():
        stat = row_of(servers, instance)
        pool = (instance.backend,) if blue_green else ()
        rows.append((
            *pool,
            instance.name,
            stat.status if stat else "missing",
            str(stat.scur) if stat else "-",
            str(stat.qcur) if stat else "-",
            engine.version_of(instance) or "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
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
    require_blue_green(engine)
    bluegreen.switch(engine, args.color, say, args.drain_timeout)
    return 0


def cmd_release(engine: Engine, args: argparse.Namespace) -> int:
    require_blue_green(engine)
    if not args.version:
        raise RolloutError("release needs --version", exit_code=2)
    ignored = [flag for flag, given in (("--surge", args.surge),
                                        ("--max-unavailable", args.max_unavailable != "1"),
                                        ("--canary", args.canary), ("--min-ready", args.min_ready))
               if given]
    if ignored:
        raise RolloutError(f"{', '.join(ignored)}: not for a blue/green release, which makes the idle "
                           "pool one instance at a time and then moves all traffic at once", exit_code=2)
    plan = make_plan(args, args.version, parse_env(args.env))
    bluegreen.release(engine, args.version, plan.env, args.restart_timeout, print_event, say,
                      watch_s=plan.watch_s, thresholds=plan.thresholds, switch_back=plan.rollback)
    return 0


def require_blue_green(engine: Engine) -> None:
    if not engine.blue_green:
        raise RolloutError("this stack has one pool; start it with `rollout up --blue-green`", exit_code=2)


def cmd_check(engine: Engine, args: argparse.Namespace) -> int:
    env = parse_env(args.env)
    try:
        plan = LoadPlan(
            url=args.url or f"{engine.frontend_url()}/cms",
            requests=None if args.duration else (args.requests or 20_000),
            duration_s=args.duration, concurrency=args.concurrency, post_share=args.post_share,
            slow_share=args.slow_share, slow_ms=args.slow_ms, post_bytes=args.post_bytes,
            timeout_s=args.timeout,
        )
        streams_plan = streams.StreamsPlan(
            url=engine.frontend_url(), ws_clients=args.ws_clients, ws_rate=args.ws_rate,
            sse_clients=args.sse_clients, sse_interval_ms=args.sse_interval_ms,
        ) if args.ws_clients or args.sse_clients else None
    except ValueError as exc:
        raise RolloutError(f"check: {exc}", exit_code=2) from None
    if args.restart and not engine.is_up():
        raise RolloutError("the stack is not up: `rollout up --detach` first")
    restart: RestartResult | None = None
    restart_done = threading.Event()

    def restart_in_background() -> None:
        nonlocal restart
        try:
            time.sleep(args.restart_after)
            say(f"rolling restart to {args.version or 'the same version'} begins")
            restart = run_restart(engine, args, env)
        except RolloutError as exc:
            restart = RestartResult(error=str(exc))
        finally:
            restart_done.set()

    def progress(result: LoadResult) -> None:
        say(f"[load] {result.total} requests, {result.failed} failed")

    if args.restart:
        threading.Thread(target=restart_in_background, daemon=True).start()
    say(f"load: {plan.requests or plan.duration_s} {'requests' if plan.requests else 's'} "
        f"at concurrency {plan.concurrency} on {plan.url}")
    load = run_load(plan, progress, keep_going=lambda: args.restart and not restart_done.is_set())
    clients: StreamsResult | None = None
    if streams_plan is None:
        result = run_event_loop(load)
    else:
        result, clients = run_event_loop(streams.alongside(streams_plan, load))
    ledger = check_ledgers(result, engine.ledgers()) if engine.ledgers() else None
    print(summary(result, ledger, restart, plan.concurrency))
    ws_ledger = streams.check_ws_ledgers(clients, engine.ledgers()) if clients and engine.ledgers() else None
    if clients is not None:
        print(streams.summary(clients, ws_ledger))
    if args.report:
        timeline = instance_timeline(engine, result.started)
        if clients is not None:
            timeline = sorted(timeline + streams.timeline_events(clients), key=lambda e: e.at)
        written = write_report(Path(args.report), result, ledger, restart, plan, timeline)
        if clients is not None:
            streams.append_to_report(Path(args.report), clients, ws_ledger, result.started)
        say("report: " + ", ".join(str(path) for path in written))
    failed = result.failed > 0 or (ledger is not None and not ledger.ok)
    failed = failed or (clients is not None and not clients.ok)
    failed = failed or (ws_ledger is not None and not ws_ledger.ok)
    if restart is not None and restart.error:
        say(restart.error)
        failed = True
    return 1 if failed else 0


def run_event_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coroutine)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "report", None) and importlib.util.find_spec("matplotlib") is None:
            raise RolloutError("--report draws timeline.png with matplotlib, which is not installed: "
                               "pip install 'zero-downtime-haproxy[report]'", exit_code=2)
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
    if not engine.is_up():
        raise RolloutError(f"the stack in {engine.root} is not running; `rollout up` first")
    if args.command == "status":
        return cmd_status(engine)
    if args.command == "reload":
        for line in engine.reload():
            print(line)
        return 0
    if args.command == "restart":
        return cmd_restart(engine, args)
    if args.command == "deploy":
        return cmd_restart(engine, args, args.version)
    if args.command == "undo":
        return cmd_undo(engine, args)
    if args.command == "history":
        return cmd_history(engine, args)
    if args.command in ("switch", "release"):
        return cmd_switch(engine, args) if args.command == "switch" else cmd_release(engine, args)
    return cmd_check(engine, args)
