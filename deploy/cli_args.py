"""`rollout`'s flags: the parser, each flag's default and its environment variable (the values'
types and checks: deploy/cli_types.py)."""

from __future__ import annotations

import argparse
import os
import re

from deploy.cli_types import (
    READY_PATH,
    byte_range,
    duration,
    http_header,
    http_method,
    parse_env,
    path_share,
    percents,
    seconds,
    seconds_or_zero,
    statuses,
    version_arg,
)
from deploy.engines.local import REFERENCE_SERVICE
from deploy.errors import RolloutError

__all__ = ["READY_PATH", "RESTART_TIMEOUT_S", "WATCH_FLAGS", "WATCH_FOR_S", "build_parser", "duration",
           "env_default", "env_duration", "env_int", "parse_env"]

RESTART_TIMEOUT_S = 90.0
WATCH_FOR_S = 10.0


def add_global_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """--engine, --state-dir and the compose project's flags (before or after the subcommand)."""
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--engine", choices=["local", "docker", "swarm"],
                        default=default(env_default("ENGINE", "local")),
                        help="local: processes under supervisor (default); docker: the "
                             "docker-compose.yml stack; swarm: deploy/stack.yml on Docker Swarm, "
                             "stack ZDH_STACK (default zdh) (env ROLLOUT_ENGINE)")
    parser.add_argument("--state-dir", default=default(env_default("STATE_DIR", ".rollout")),
                        help="where the local stack keeps its files (default .rollout; env "
                             "ROLLOUT_STATE_DIR)")
    compose = parser.add_argument_group("your compose project (--engine docker) or Swarm stack")
    compose.add_argument("-f", "--file", action="append", metavar="FILE",
                         help="compose file(s), as `docker compose -f` (default: COMPOSE_FILE, else "
                              "the current directory's compose file, else this repository's); "
                              "Swarm: the stack file (default deploy/stack.yml)")
    compose.add_argument("-p", "--project-name", metavar="NAME",
                         help="the compose project (default: COMPOSE_PROJECT_NAME, as compose does); "
                              "Swarm: the stack name (default ZDH_STACK, else zdh)")
    compose.add_argument("--service", metavar="NAME",
                         help="the service to roll (default app; env ROLLOUT_SERVICE)")
    compose.add_argument("--lb-service", metavar="NAME",
                         help="the HAProxy service (default: the one whose image or command is "
                              "haproxy; env ROLLOUT_LB_SERVICE)")
    compose.add_argument("--app-port", type=int, metavar="PORT",
                         help="the port the app listens on in its containers, as in HAProxy's "
                              "server lines (default 8000; env ROLLOUT_APP_PORT)")


def env_default(name: str, default: str) -> str:
    return os.environ.get(f"ROLLOUT_{name}", default)


def env_int(name: str, default: int) -> int:
    """A ROLLOUT_* port or count: a whole number, or one line that names the variable."""
    text = env_default(name, str(default))
    if not re.fullmatch(r"[0-9]{1,9}", text.strip()):
        raise RolloutError(f"ROLLOUT_{name}={text[:40]!r}: expected a whole number", exit_code=2)
    return int(text)


def env_duration(name: str, default: float) -> float:
    text = env_default(name, f"{default:g}")
    try:
        return duration(text)
    except argparse.ArgumentTypeError as exc:
        raise RolloutError(f"ROLLOUT_{name}: {exc}", exit_code=2) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rollout",
        description="Deploy a service behind HAProxy by plain restarts, with zero failed requests.",
    )
    from agent import __version__

    parser.add_argument("--version", action="version", version=f"rollout {__version__}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start HAProxy and the instances; wait until all are UP")
    up.add_argument("--detach", "-d", action="store_true",
                    help="return once up (default: stay in the foreground, Ctrl-C stops)")
    up.add_argument("--port", type=int, default=env_int("PORT", 8785),
                    help="frontend port (default 8785)")
    up.add_argument("--stats-port", type=int, default=env_int("STATS_PORT", 8404),
                    help="HAProxy stats and metrics port, loopback only (default 8404)")
    up.add_argument("--app-base-port", type=int, default=env_int("APP_BASE_PORT", 8001),
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
    up.add_argument("--version-path", metavar="PATH",
                    help="local: where the app answers {\"version\": ...}, asked as each new instance "
                         "comes UP (default /version for the reference service; for another app "
                         "none: the version is the one rollout started it with)")
    up.add_argument("--start-timeout", type=seconds, default=60.0,
                    help="max seconds for an instance to become ready (default 60)")
    up.add_argument("--agent-base-port", type=int, default=env_int("AGENT_BASE_PORT", 9201),
                    help="app1's drain-agent answers HAProxy's agent-check here, app2's on the "
                         "next port... (default 9201)")
    up.add_argument("--instances", type=int, default=3, help="number of instances, 2..64 (default 3)")
    up.add_argument("--blue-green", action="store_true",
                    help="two pools, blue1-2 and green1-2, behind a map switch (blue active)")
    up.add_argument("--no-agent", action="store_true",
                    help="run the app without drain-agent (only to reproduce the usual ways)")
    up.add_argument("--retry-on", default="conn-failure 425",
                    help="HAProxy retry-on (default 'conn-failure 425')")
    up.add_argument("--retries", type=int, default=3, help="HAProxy retries (default 3)")

    sub.add_parser("down", help="stop everything (instances drain first)")
    status = sub.add_parser("status", help="table of servers: HAProxy state, sessions, version",
                            description="Each instance: its state in HAProxy, sessions, queue and "
                                        "version; a deploy in progress or one the tool did not finish.",
                            epilog="examples:\n  rollout status\n"
                                   "  rollout status --json | python -m json.tool\n"
                                   "  rollout status --wait --timeout 300   # as `kubectl rollout status`",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    status.add_argument("--wait", action="store_true",
                        help="block until no deploy holds the stack and every instance is UP "
                             "(exit 1 after --timeout)")
    status.add_argument("--timeout", type=seconds, default=300.0, help="for --wait (default 300 s)")
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
    switch.add_argument("--drain-timeout", type=seconds, default=60.0,
                        help="max wait for the old pool's sessions to end (default 60 s)")

    release = sub.add_parser("release", help="blue/green: deploy to the idle pool, switch to it, "
                                             "watch it, switch back if it fails")
    release.add_argument("--version", type=version_arg, required=True,
                         help="the version the idle pool gets, one instance at a time, before the switch")
    release.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                         help="extra environment for the idle pool's new instances (repeatable)")
    release.add_argument("--restart-timeout", type=seconds, default=RESTART_TIMEOUT_S,
                         help=f"per instance: max wait for ready + UP (default {RESTART_TIMEOUT_S:g} s)")
    add_watch_options(release, steps=False)
    release.set_defaults(surge=False, max_unavailable="1", canary=None, min_ready=None)

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
    check.add_argument("--timeout", type=seconds, default=30.0, help="per request (default 30 s)")
    check.add_argument("--url", help="target (default: the stack's frontend /cms)")
    anyapp = check.add_argument_group("any app (the reference service's contract is detected)")
    anyapp.add_argument("--contract", choices=["auto", "on", "off"], default="auto",
                        help="on: the reference service's (JSON identity, POST echo and ledgers, "
                             "slow GETs); off: any app, success by status alone; auto (default): "
                             "on if a GET of the target answers the reference service's JSON")
    anyapp.add_argument("--path", action="append", type=path_share, metavar="PATH[:SHARE]",
                        help="with --contract off: where to send the requests, repeatable with a "
                             "share each, e.g. --path /:3 --path /api/items:1 (default: --url's path)")
    anyapp.add_argument("--method", default="GET", type=http_method, help="default GET")
    anyapp.add_argument("--header", action="append", default=[], type=http_header, metavar="NAME: VALUE",
                        help="repeatable, e.g. --header 'host: shop.example'")
    anyapp.add_argument("--body-file", type=argparse.FileType("rb"), metavar="FILE",
                        help="each request's body (at most 1 MiB)")
    anyapp.add_argument("--accept", type=statuses, default=frozenset(range(200, 400)), metavar="CODES",
                        help="statuses that count as answered, e.g. 2xx,3xx,404 (default 2xx,3xx)")
    check.add_argument("--report", metavar="DIR",
                       help="write report.json, report.md and timeline.png there")
    check.add_argument("--restart", action="store_true",
                       help="run a rolling restart while the load runs")
    check.add_argument("--restart-after", type=seconds_or_zero, default=2.0,
                       help="seconds of load before the restart begins (default 2)")
    add_restart_options(check)
    add_watch_options(check)
    for action in sub._choices_actions:  # one description and examples for each subcommand
        command = sub.choices[action.dest]
        summary = str(action.help or action.dest)
        command.description = command.description or f"{summary[0].upper()}{summary[1:]}."
        command.epilog = command.epilog or "examples:\n" + "\n".join(
            f"  {line}" for line in EXAMPLES[action.dest])
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        # The global flags after the subcommand too (`rollout status --engine docker`): there,
        # given or not, they never undo what was given before it.
        command.argument_default = argparse.SUPPRESS
        add_global_options(command, suppress=True)
    return parser


EXAMPLES = {
    "up": ["rollout up --detach", "rollout up -d --instances 5 --app-command 'node server.js {port}' "
           "--ready-path /healthz", "rollout --engine docker up -d"],
    "down": ["rollout down", "rollout --engine docker -f stack.yaml -p shop down"],
    "reload": ["rollout reload", "rollout --engine swarm reload"],
    "restart": ["rollout restart", "rollout restart --surge --max-unavailable 25%"],
    "undo": ["rollout undo", "rollout undo --watch-for 30s"],
    "history": ["rollout history", "rollout --engine docker -f stack.yaml history"],
    "switch": ["rollout switch green", "rollout switch blue --drain-timeout 30"],
    "release": ["rollout release --version v2", "rollout release --version v2 --watch-for 30s"],
    "check": ["rollout check -n 50000 -c 200 --restart --version v2 --report reports/run1",
              "rollout check --restart --path / --accept 2xx,3xx   # any app"],
}


def add_restart_options(parser: argparse.ArgumentParser, version: bool = True, env: bool = True) -> None:
    if version:
        parser.add_argument("--version", type=version_arg,
                            help="new version: a deploy, watched and rolled back as `rollout deploy` "
                                 "(default: keep each instance's version)")
    if env:
        parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                            help="extra environment for the new instances (repeatable)")
    parser.add_argument("--restart-timeout", type=seconds, default=RESTART_TIMEOUT_S,
                        help=f"per instance: max wait for ready + UP (default {RESTART_TIMEOUT_S:g} s)")
    parser.add_argument("--surge", action="store_true",
                        help="start each new instance (in a spare slot / one more container) and "
                             "wait until it is UP before the old one drains: capacity never drops")
    parser.add_argument("--max-unavailable", default="1", metavar="K",
                        help="replace K instances at a time, a count or a share such as 25%% "
                             "(default 1); with --surge, K new ones start before K old ones drain")


def add_watch_options(parser: argparse.ArgumentParser, steps: bool = True) -> None:
    """The watch's flags; `steps` False (blue/green's release, which switches all at once):
    no --min-ready and no --canary."""
    group = parser.add_argument_group("watch and rollback (deploys)")
    group.add_argument("--watch-for", type=duration, metavar="DURATION",
                       help=f"watch each new instance from UP until the deploy ends and this long "
                            f"after it, e.g. 10s or 1m; 0 turns the watch off (default "
                            f"{WATCH_FOR_S:g}s; env ROLLOUT_WATCH_FOR)")
    if steps:
        group.add_argument("--min-ready", type=duration, metavar="DURATION",
                           help="each batch stays UP, watched, this long before the next one starts "
                                "(as Kubernetes' minReadySeconds; default 0)")
        group.add_argument("--canary", type=percents, metavar="PERCENT[,PERCENT...]",
                           help="send that share of the traffic to the first new instance(s) by "
                                "HAProxy weights, one watch window per step, e.g. 5,25,100 (implies "
                                "--surge)")
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
