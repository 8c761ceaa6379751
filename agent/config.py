"""drain-agent's settings: flags, each with an environment variable, checked before anything starts.

Each default is written once, on `AgentConfig`; the flags' help text reads it from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.errors import ConfigError
from agent.haproxy import check_name, check_stats_url

ENV_PREFIX = "DRAIN_AGENT_"
# Settings of the push-based agent that no longer exist: say so instead of ignoring them.
GONE = {
    "HAPROXY": "agents no longer use HAProxy's Runtime API: HAProxy polls them (agent-check); "
               f"give the read-only stats instead: {ENV_PREFIX}HAPROXY_STATS=http://haproxy:8404/stats;csv",
    "HAPROXY_WAIT": "there is no start-up wait for HAProxy any more; remove it",
    "WATCH_INTERVAL": "HAProxy re-learns the state by itself after a restart; remove it",
    "API_TIMEOUT": f"renamed {ENV_PREFIX}STATS_TIMEOUT",
}


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    command: tuple[str, ...]
    haproxy_stats: tuple[str, ...]  # each HAProxy's read-only stats CSV URL
    agent_port: int = 9200  # where HAProxy's agent-check polls this instance's state
    agent_bind: str = "0.0.0.0"
    backend: str = ""  # '': any backend
    server: str = ""  # '': find this instance's rows by address (ip:server_port)
    server_port: int = 0  # 0: the readiness URL's port
    ready_url: str = "http://127.0.0.1:8000/readyz"
    drain_timeout_s: float = 70.0  # longest wait for 0 sessions: > HAProxy's timeout server (65 s)
    stop_timeout_s: float = 25.0  # longest wait for the app after its signal, then SIGKILL
    start_timeout_s: float = 60.0  # longest wait for the app's readiness
    poll_interval_s: float = 0.05  # drain and readiness polling
    stats_timeout_s: float = 1.0  # per stats read
    metrics_port: int = 0  # 0: no metrics endpoint
    drain_notify: str = ""  # '': off; else the signal the app gets once out of rotation (SIGUSR1)
    reload_window_s: float = 70.0  # HAProxy's hard-stop-after: how long an old worker may live
    agent_hold_s: float = 1.5  # a poll of a known state waits this long for a change (< timeout check)

    def __post_init__(self) -> None:
        if not self.command:
            raise ConfigError("no app command: drain-agent [options] -- <app command...>")
        if not self.haproxy_stats:
            raise ConfigError(
                "no HAProxy stats URL: give --haproxy-stats http://haproxy:8404/stats;csv "
                f"(or {ENV_PREFIX}HAPROXY_STATS, comma-separated for several HAProxies)"
            )
        for stats_url in self.haproxy_stats:
            check_stats_url(stats_url)
        if self.backend:
            check_name("backend", self.backend)
        if self.server:
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
            ("--reload-window", self.reload_window_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{flag} {value}: must be a finite number of seconds >= 0")
        if not math.isfinite(self.agent_hold_s) or not 0 <= self.agent_hold_s <= 60:
            raise ConfigError(f"--agent-hold {self.agent_hold_s}: must be between 0 and 60 seconds")
        for flag, value in (
            ("--poll-interval", self.poll_interval_s),
            ("--stats-timeout", self.stats_timeout_s),
        ):
            if not math.isfinite(value) or not 0.001 <= value <= 60:
                raise ConfigError(f"{flag} {value}: must be between 0.001 and 60 seconds")
        for flag, port, low in (
            ("--agent-port", self.agent_port, 1),
            ("--metrics-port", self.metrics_port, 0),
            ("--server-port", self.server_port, 0),
        ):
            if not low <= port < 65536:
                raise ConfigError(f"{flag} {port}: not a TCP port")
        if self.drain_notify:  # held as its canonical name: 'usr1' -> 'SIGUSR1'
            canonical = signal.Signals(parse_notify_signal(self.drain_notify)).name
            object.__setattr__(self, "drain_notify", canonical)

    @property
    def drain_notify_signal(self) -> int | None:
        """The signal number of --drain-notify, or None when it is off."""
        return parse_notify_signal(self.drain_notify) if self.drain_notify else None

    @property
    def app_port(self) -> int:
        """The port the app listens on here (the readiness URL's)."""
        parts = urlsplit(self.ready_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def port(self) -> int:
        """The app's port as HAProxy sees it."""
        parts = urlsplit(self.ready_url)
        return self.server_port or parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def server_id(self) -> str:
        """How the logs name this instance."""
        if self.server:
            return f"{self.backend or '*'}/{self.server}"
        return f"*:{self.port}"


# The stop signals end the app at the end of the drain; KILL and STOP cannot be handled.
NOT_A_NOTICE = {signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGSTOP}


def parse_notify_signal(text: str) -> int:
    """`SIGUSR1`, `USR1`, `usr1` or `10` -> 10; a stop signal, or no signal at all, is refused."""
    name = text.strip().upper()
    try:
        sig = signal.Signals(int(name)) if name.isdigit() else signal.Signals[
            name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise ConfigError(f"--drain-notify {text!r}: not a signal; e.g. SIGUSR1") from None
    if sig in NOT_A_NOTICE:
        why = ("a stop signal: the app gets it at the end of the drain"
               if sig in (signal.SIGTERM, signal.SIGINT) else "no app can handle it")
        raise ConfigError(f"--drain-notify {sig.name}: {why}; give a signal the app handles as "
                          "'close your long-lived connections', e.g. SIGUSR1")
    return int(sig)


# flag -> (field, type); the env variable is ENV_PREFIX + the flag in capitals.
FLAGS = {
    "--haproxy-stats": ("haproxy_stats", str),
    "--agent-port": ("agent_port", int),
    "--agent-bind": ("agent_bind", str),
    "--backend": ("backend", str),
    "--server": ("server", str),
    "--server-port": ("server_port", int),
    "--ready-url": ("ready_url", str),
    "--drain-timeout": ("drain_timeout_s", float),
    "--stop-timeout": ("stop_timeout_s", float),
    "--start-timeout": ("start_timeout_s", float),
    "--poll-interval": ("poll_interval_s", float),
    "--stats-timeout": ("stats_timeout_s", float),
    "--metrics-port": ("metrics_port", int),
    "--drain-notify": ("drain_notify", str),
    "--reload-window": ("reload_window_s", float),
    "--agent-hold": ("agent_hold_s", float),
}
HELP = {
    "--haproxy-stats": "a HAProxy's read-only stats CSV, http://host:port/stats;csv; repeat it "
                       "or separate with commas for several HAProxies",
    "--agent-port": "port HAProxy's agent-check polls for this instance's state",
    "--agent-bind": "address the agent port binds",
    "--backend": "only look at this HAProxy backend",
    "--server": "this instance's server name (default: found by its address)",
    "--server-port": "the app's port as HAProxy sees it (default: the readiness URL's)",
    "--ready-url": "the app's readiness URL",
    "--drain-timeout": "max seconds to wait for 0 sessions in every HAProxy",
    "--stop-timeout": "max seconds for the app to exit after its signal, then SIGKILL",
    "--start-timeout": "max seconds for the app to become ready",
    "--poll-interval": "seconds between drain and readiness polls",
    "--stats-timeout": "max seconds for one stats read",
    "--metrics-port": "serve Prometheus metrics on this port (0: off)",
    "--drain-notify": "once every HAProxy sends this server no new work, send the app this "
                      "signal (e.g. SIGUSR1) so it closes its WebSockets and event streams; the "
                      "drain then waits for 0 sessions as before (default: off)",
    "--agent-hold": "an agent-check from a HAProxy that knows the current state waits up to "
                    "this many seconds for it to change, so HAProxy learns a drain or readiness "
                    "at once and an idle instance is polled once per hold; keep it under "
                    "HAProxy's `timeout check` (0: answer at once)",
    "--reload-window": "for this many seconds after a HAProxy reload (its hard-stop-after) an "
                       "old worker may still carry sessions no stats page shows: a drain then "
                       "also waits until the app's port holds no connection from HAProxy that its "
                       "stats do not account for (0: off)",
}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(AgentConfig)}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drain-agent",
        allow_abbrev=False,
        usage="drain-agent [options] -- <app command...>",
        description=(
            "Run an app as a container entrypoint (PID 1) behind HAProxy. HAProxy polls the "
            "agent's state on --agent-port (agent-check): ready once the app is, drain on "
            "SIGTERM; the app gets its signal only when every HAProxy shows zero sessions. "
            "Every option has an environment variable: "
            f"{ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}DRAIN_TIMEOUT)."
        ),
    )
    for flag, (field, kind) in FLAGS.items():
        default = DEFAULTS.get(field)
        shown = f" (default {default})" if default not in (None, "", 0, dataclasses.MISSING) else ""
        parser.add_argument(
            flag, action="append" if flag == "--haproxy-stats" else "store", type=kind,
            metavar=field.upper().removesuffix("_S") if kind is not str else None,
            help=f"{HELP[flag]}{shown}; env {env_name(flag)}",
        )
    from agent import __version__

    parser.add_argument("--version", action="version", version=f"drain-agent {__version__}")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the app command, after --")
    return parser


def load_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> AgentConfig:
    env = os.environ if env is None else env
    for name, why in GONE.items():
        if env.get(ENV_PREFIX + name):
            raise ConfigError(f"{ENV_PREFIX}{name} is no longer read: {why}")
    args = vars(build_parser().parse_args(list(argv)))
    command = list(args.pop("command"))
    if command and command[0] == "--":
        command = command[1:]
    values: dict[str, object] = {}
    for flag, (field, kind) in FLAGS.items():
        given = args[flag.lstrip("-").replace("-", "_")]
        if given is None:
            raw = env.get(env_name(flag), "")
            if not raw:
                continue
            if flag == "--haproxy-stats":
                given = [raw]
            else:
                try:
                    given = kind(raw)
                except ValueError:
                    raise ConfigError(f"{env_name(flag)}={raw!r}: expected {kind.__name__}") from None
        if flag == "--haproxy-stats":  # repeated, or comma-separated like its env variable
            given = [part.strip() for item in given for part in item.split(",") if part.strip()]
        values[field] = tuple(given) if flag == "--haproxy-stats" else given
    values.setdefault("haproxy_stats", ())
    return AgentConfig(command=tuple(command), **values)  # type: ignore[arg-type]
