"""`drain-agent [options] -- <app command...>`: wires the state machine to the real world."""

from __future__ import annotations

import signal
import sys

# PID 1 ignores every signal it has no handler for: catch stop signals from the first instant,
# before the imports and the config, and hand them to the machine once it runs.
EARLY_SIGNALS: list[int] = []
for _sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_sig, lambda sig, _frame: EARLY_SIGNALS.append(sig))

# asyncio imports ssl at once, and with it OpenSSL (5 MiB of RSS in every container's PID 1),
# though only an https readiness URL needs it in asyncio: given none, asyncio goes without.
# (ssl may still load later for what imports it itself: prometheus_client, with --metrics-port.)
import os  # noqa: E402

_NO_TLS = not any("https://" in arg for arg in sys.argv) and not any(
    "https://" in value for name, value in os.environ.items() if name.startswith("DRAIN_AGENT_"))
if _NO_TLS:
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import asyncio  # noqa: E402

if _NO_TLS and sys.modules.get("ssl") is None:
    del sys.modules["ssl"]

import functools  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from agent import probe  # noqa: E402
from agent.config import AgentConfig, load_config  # noqa: E402
from agent.connections import established_to  # noqa: E402
from agent.errors import AgentError  # noqa: E402
from agent.events import Timeline, setup_logging  # noqa: E402
from agent.haproxy import ServerStat, StatsPage  # noqa: E402
from agent.machine import Agent  # noqa: E402
from agent.metrics import Metrics, NoMetrics, PrometheusMetrics  # noqa: E402
from agent.responder import Responder  # noqa: E402
from agent.supervise import Child, become_subreaper  # noqa: E402

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARDED_SIGNALS = (
    signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
    signal.SIGCONT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
)


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@functools.cache
def is_local_address(ip: str) -> bool:
    """Is `ip` one of this host's (this container's) addresses? Only those can be bound."""
    try:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((ip, 0))
    except (OSError, ValueError):
        return False
    return True


class HAProxyAddresses:
    """The HAProxies' addresses, from the host names of their stats URLs; resolved again after
    RESOLVE_S (a HAProxy container may come back on another address). None: a name does not
    resolve now."""

    RESOLVE_S = 10.0

    def __init__(self, urls: Sequence[str]) -> None:
        self.hosts = [urlsplit(url).hostname or "" for url in urls]
        self.found: frozenset[str] | None = None
        self.at = -self.RESOLVE_S

    async def __call__(self) -> frozenset[str] | None:
        if self.found is not None and time.monotonic() - self.at < self.RESOLVE_S:
            return self.found
        loop = asyncio.get_running_loop()
        peers: set[str] = set()
        for host in self.hosts:
            try:
                found = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:
                return None
            peers.update(str(ipaddress.ip_address(info[4][0])) for info in found)
        self.found, self.at = frozenset(peers), time.monotonic()
        return self.found


class HostProbes:
    """The app's readiness URL, and which HAProxy rows are this instance's."""

    def __init__(self, config: AgentConfig, haproxies: HAProxyAddresses) -> None:
        self.config = config
        self.haproxies = haproxies

    async def app_ready(self) -> bool:
        return await probe.ready(self.config.ready_url, timeout_s=max(1.0, self.config.poll_interval_s))

    async def port_taken(self) -> bool:
        return await probe.listening(self.config.ready_url, timeout_s=1.0)

    async def app_connections(self) -> frozenset[str] | None:
        """Connections to the app's port from the HAProxies' addresses (all peers, if a
        HAProxy's name does not resolve)."""
        return established_to(self.config.app_port, await self.haproxies())

    def is_mine(self, stat: ServerStat) -> bool:
        if self.config.backend and stat.backend != self.config.backend:
            return False
        if self.config.server:
            return stat.server == self.config.server
        host, _, port = stat.addr.rpartition(":")
        return port == str(self.config.port) and bool(host) and is_local_address(host.strip("[]"))


async def serve(config: AgentConfig, metrics: Metrics) -> int:
    timeline = Timeline(config.server_id)
    loop = asyncio.get_running_loop()
    children: list[Child] = []

    def spawn() -> Child:
        child = Child(config.command)
        children.append(child)
        loop.add_signal_handler(signal.SIGCHLD, child.reap)
        return child

    def warn(name: str, **fields: object) -> None:
        agent.event(name, logging.WARNING, **fields)

    haproxies = HAProxyAddresses(config.haproxy_stats)
    responder = Responder(config.agent_bind, config.agent_port, lambda: agent.state.value,
                          config.agent_hold_s, warn, haproxies)
    agent = Agent(
        config,
        spawn=spawn,
        haproxies=[StatsPage(url, config.stats_timeout_s) for url in config.haproxy_stats],
        probes=HostProbes(config, haproxies),
        clock=RealClock(),
        timeline=timeline,
        metrics=metrics,
        on_state=responder.state_changed,
    )
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, agent.on_stop_signal, sig)
    for sig in FORWARDED_SIGNALS:
        loop.add_signal_handler(sig, agent.on_forwarded_signal, sig)
    for early in EARLY_SIGNALS:
        agent.on_stop_signal(early)
    try:
        await responder.start()
    except OSError as exc:
        raise AgentError(f"cannot listen on {config.agent_bind}:{config.agent_port} "
                         f"(--agent-port): {exc.strerror or exc}") from None
    try:
        await metrics.start()
    except OSError as exc:
        responder.close()
        raise AgentError(f"cannot listen on 0.0.0.0:{config.metrics_port} (--metrics-port): "
                         f"{exc.strerror or exc}") from None
    agent.event("agent.listening", port=config.agent_port,
                haproxies=",".join(config.haproxy_stats))
    try:
        return await agent.run()
    finally:
        responder.close()


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    try:
        config = load_config(sys.argv[1:] if argv is None else argv)
    except AgentError as exc:
        print(f"drain-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    if not become_subreaper():  # pragma: no cover - not Linux
        print("drain-agent: warning: cannot reap orphans here; run it as PID 1 "
              "(container ENTRYPOINT)", file=sys.stderr)
    metrics: Metrics = PrometheusMetrics(config.metrics_port) if config.metrics_port else NoMetrics()
    try:
        code = asyncio.run(serve(config, metrics))
    except AgentError as exc:
        print(f"drain-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
