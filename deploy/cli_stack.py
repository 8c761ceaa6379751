"""Which stack a `rollout` command works on, from the flags: its engine, its deploy lock and
its history file."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from deploy.cli_args import READY_PATH, env_int
from deploy.engines.base import Engine
from deploy.engines.compose import ComposeProject, DockerEngine, find_stack
from deploy.engines.local import REFERENCE_SERVICE, LocalEngine, LocalStack, app_argv
from deploy.engines.swarm import SwarmEngine
from deploy.errors import RolloutError
from deploy.history import History
from deploy.lock import LOCK_NAME

SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # compose checks the rest


def make_engine(args: argparse.Namespace) -> Engine:
    """The one place `--engine` is read: every command works on the Engine this returns."""
    project_flags = [flag for flag, value in (("-f", args.file), ("-p", args.project_name),
                                              ("--service", args.service), ("--lb-service", args.lb_service),
                                              ("--app-port", args.app_port)) if value]
    if project_flags and args.engine == "local":
        raise RolloutError(f"{', '.join(project_flags)}: for --engine docker (a compose project) or "
                           "swarm (-f the stack file, -p the stack name)", exit_code=2)
    swarm_only = [flag for flag in project_flags if flag not in ("-f", "-p")]
    if args.engine == "swarm" and (swarm_only or len(args.file or ()) > 1):
        raise RolloutError(f"{', '.join(swarm_only) or '-f twice'}: on Swarm only -f (one stack file) "
                           "and -p (the stack name)", exit_code=2)
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
        version_path = (args.version_path if args.version_path is not None
                        else "/version" if args.app_command == REFERENCE_SERVICE else "")
        if version_path and not READY_PATH.fullmatch(version_path):
            raise RolloutError(f"--version-path {version_path[:80]!r}: expected a path such as /version "
                               "(or '' not to ask the app)", exit_code=2)
        if args.no_agent and not version_path:
            raise RolloutError("--no-agent needs --version-path: without the agent holding a new process "
                               "out until it is ready, only the app's own word tells it from the old one",
                               exit_code=2)
        if not 0 < args.start_timeout <= 3600:
            raise RolloutError(f"--start-timeout {args.start_timeout}: must be 0..3600 s", exit_code=2)
        stack = LocalStack(
            state_dir=args.state_dir, port=args.port, stats_port=args.stats_port,
            instances=args.instances,
            app_base_port=args.app_base_port, agent_base_port=args.agent_base_port,
            version=args.version, agent=not args.no_agent,
            app_command=args.app_command, app_dir=os.getcwd(), ready_path=args.ready_path,
            start_timeout_s=args.start_timeout, version_path=version_path,
            blue_green=args.blue_green,
            retry_on=args.retry_on, retries=args.retries,
        )
        return LocalEngine(stack)
    try:
        return LocalEngine(LocalStack.load(args.state_dir))
    except RolloutError:
        if args.command != "down":
            raise
        # `down` always works: what runs is found from the state directory alone.
        return LocalEngine(LocalStack(state_dir=args.state_dir))


def make_docker_engine(args: argparse.Namespace) -> DockerEngine:
    """`up` flags become the compose file's variables (ZDH_PORT, ZDH_STATS_PORT, SERVICE_VERSION,
    or BLUE_VERSION and GREEN_VERSION with --blue-green); a flag left at its default does not
    override the variable already in the environment. `up --blue-green` uses
    docker-compose.bluegreen.yml; the other commands find which of the two files has the stack."""
    env: dict[str, str] = {}
    project = compose_project(args)
    if args.command != "up":
        return find_stack(env, project)
    if args.no_agent or args.instances != 3:
        raise RolloutError("--no-agent and --instances: local engine only (the compose files run "
                           "the app service(s) under drain-agent; scale with `docker compose up "
                           "--scale app=N`)", exit_code=2)
    versions = ("BLUE_VERSION", "GREEN_VERSION") if args.blue_green else ("SERVICE_VERSION",)
    for value, default, var in (
        (args.port, env_int("PORT", 8785), "ZDH_PORT"),
        (args.stats_port, env_int("STATS_PORT", 8404), "ZDH_STATS_PORT"),
        *((args.version, "v1", version) for version in versions),
    ):
        if value != default or var not in os.environ:
            env[var] = str(value)
    return DockerEngine(env=env, blue_green=args.blue_green, project=project)


def compose_project(args: argparse.Namespace) -> ComposeProject:
    """-f/-p as compose takes them, the service to roll and the HAProxy service."""
    port = args.app_port or env_int("APP_PORT", 8000)
    if not 0 < port < 65536:
        raise RolloutError(f"--app-port {port}: not a TCP port", exit_code=2)
    for flag, name in (("--service", args.service), ("--lb-service", args.lb_service),
                       ("-p", args.project_name)):
        if name is not None and not SERVICE_NAME.fullmatch(name):
            raise RolloutError(f"{flag} {name[:80]!r}: not a compose service or project name", exit_code=2)
    files = tuple(Path(f).resolve() for f in args.file or ())
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RolloutError(f"-f {missing[0]}: no such file", exit_code=2)
    return ComposeProject(files=files, name=args.project_name,
                          service=args.service or os.environ.get("ROLLOUT_SERVICE") or None,
                          lb_service=args.lb_service or os.environ.get("ROLLOUT_LB_SERVICE") or None,
                          app_port=port)


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
            (args.port, env_int("PORT", 8785), "ZDH_PORT"),
            (args.stats_port, env_int("STATS_PORT", 8404), "ZDH_STATS_PORT"),
            (args.version, "v1", "SERVICE_VERSION"),
            (args.instances, 3, "ZDH_REPLICAS"),
        ):
            if value != default or var not in os.environ:
                env[var] = str(value)
    if args.file and not Path(args.file[0]).is_file():
        raise RolloutError(f"-f {args.file[0]}: no such file", exit_code=2)
    return SwarmEngine(env=env, stack=args.project_name,
                       **({"stack_file": Path(args.file[0])} if args.file else {}))


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
