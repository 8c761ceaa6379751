"""drain-agent's settings: flags, each with an environment variable, checked before anything starts."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.errors import ConfigError
from agent.haproxy import Address, check_name, parse_address

ENV_PREFIX = "DRAIN_AGENT_"


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    haproxy: tuple[Address, ...]
    backend: str
    server: str
    command: tuple[str, ...]
    ready_url: str = "http://127.0.0.1:8000/readyz"
    drain_timeout_s: float = 20.0  # longest wait for HAProxy to report 0 sessions
    stop_timeout_s: float = 25.0  # longest wait for the app after its signal, then SIGKILL
    start_timeout_s: float = 60.0  # longest wait for readiness and HAProxy UP
    poll_interval_s: float = 0.05  # drain and readiness polling
    watch_interval_s: float = 1.0  # while serving: notice HAProxy restarts and re-assert
    haproxy_wait_s: float = 10.0  # at start: how long HAProxy may take to answer
    api_timeout_s: float = 1.0  # per Runtime API call
    metrics_port: int = 0  # 0: no metrics endpoint

    def __post_init__(self) -> None:
        if not self.command:
            raise ConfigError("no app command: drain-agent [options] -- <app command...>")
        if not self.haproxy:
            raise ConfigError(
                "no HAProxy address: give --haproxy unix:///path or tcp://host:port "
                f"(or {ENV_PREFIX}HAPROXY)"
            )
        check_name("backend", self.backend)
        check_name("server", self.server)
        url = urlsplit(self.ready_url)
        try:
            url.port  # noqa: B018 - raises on a bad port
        except ValueError:
            url = url._replace(netloc="")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"--ready-url {self.ready_url!r}: expected http://host:port/path")
        for flag, value in (
            ("--drain-timeout", self.drain_timeout_s),
            ("--stop-timeout", self.stop_timeout_s),
            ("--start-timeout", self.start_timeout_s),
            ("--haproxy-wait", self.haproxy_wait_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{flag} {value}: must be a finite number of seconds >= 0")
        for flag, value in (
            ("--poll-interval", self.poll_interval_s),
            ("--watch-interval", self.watch_interval_s),
            ("--api-timeout", self.api_timeout_s),
        ):
            if not math.isfinite(value) or not 0.001 <= value <= 60:
                raise ConfigError(f"{flag} {value}: must be between 0.001 and 60 seconds")
        if not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"--metrics-port {self.metrics_port}: not a TCP port (0 = off)")

    @property
    def server_id(self) -> str:
        return f"{self.backend}/{self.server}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drain-agent",
        usage="drain-agent [options] -- <app command...>",
        description=(
            "Run an app as a container entrypoint (PID 1) behind HAProxy: mark the server "
            "ready once the app is, and on SIGTERM drain it in HAProxy before the app "
            "gets the signal. Every option has an environment variable: "
            f"{ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}DRAIN_TIMEOUT)."
        ),
    )
    add = parser.add_argument
    add("--haproxy", action="append", metavar="ADDR",
        help="Runtime API address, unix:///path or tcp://host:port; repeat for several "
             "HAProxy instances (env: comma-separated)")
    add("--backend", help="HAProxy backend name (default: app)")
    add("--server", help="this instance's server name in the backend (required)")
    add("--ready-url", help="the app's readiness URL (default http://127.0.0.1:8000/readyz)")
    add("--drain-timeout", type=float, metavar="S", help="max wait for 0 sessions (default 20)")
    add("--stop-timeout", type=float, metavar="S",
        help="max wait for the app to exit after its signal, then SIGKILL (default 25)")
    add("--start-timeout", type=float, metavar="S",
        help="max wait for readiness and HAProxy UP (default 60)")
    add("--poll-interval", type=float, metavar="S", help="drain/readiness polling (default 0.05)")
    add("--watch-interval", type=float, metavar="S",
        help="how often to check HAProxy while serving, to re-assert after its restarts (default 1)")
    add("--haproxy-wait", type=float, metavar="S",
        help="at start, how long HAProxy may take to answer (default 10)")
    add("--api-timeout", type=float, metavar="S", help="per Runtime API call (default 1)")
    add("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics (default off)")
    add("command", nargs=argparse.REMAINDER, help="the app command, after --")
    return parser


def load_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> AgentConfig:
    env = os.environ if env is None else env
    args = build_parser().parse_args(list(argv))
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]

    def text(flag_value: str | None, name: str, default: str) -> str:
        if flag_value is not None:
            return flag_value
        return env.get(ENV_PREFIX + name) or default

    def number(flag_value: float | None, name: str, default: float) -> float:
        if flag_value is not None:
            return flag_value
        raw = env.get(ENV_PREFIX + name)
        if not raw:
            return default
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{name}={raw!r}: expected a number") from None

    haproxy = args.haproxy or [
        a.strip() for a in env.get(ENV_PREFIX + "HAPROXY", "").split(",") if a.strip()
    ]
    server = text(args.server, "SERVER", "")
    if not server:
        raise ConfigError(f"no server name: give --server (or {ENV_PREFIX}SERVER)")
    return AgentConfig(
        haproxy=tuple(parse_address(a) for a in haproxy),
        backend=text(args.backend, "BACKEND", "app"),
        server=server,
        command=tuple(command),
        ready_url=text(args.ready_url, "READY_URL", "http://127.0.0.1:8000/readyz"),
        drain_timeout_s=number(args.drain_timeout, "DRAIN_TIMEOUT", 20.0),
        stop_timeout_s=number(args.stop_timeout, "STOP_TIMEOUT", 25.0),
        start_timeout_s=number(args.start_timeout, "START_TIMEOUT", 60.0),
        poll_interval_s=number(args.poll_interval, "POLL_INTERVAL", 0.05),
        watch_interval_s=number(args.watch_interval, "WATCH_INTERVAL", 1.0),
        haproxy_wait_s=number(args.haproxy_wait, "HAPROXY_WAIT", 10.0),
        api_timeout_s=number(args.api_timeout, "API_TIMEOUT", 1.0),
        metrics_port=int(number(args.metrics_port, "METRICS_PORT", 0)),
    )
