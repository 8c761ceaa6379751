"""The one HAProxy client: its read-only stats CSV, and the admin Runtime API for operators.

Agents only ever read stats (`StatsPage`): HAProxy learns their state by polling them
(agent-check), so no app needs, or can get, admin rights. `RuntimeAPI` is for the
operator's tools (`rollout status`, blue/green `set map`), over a socket no app can open.
Every call has a deadline, so a stuck HAProxy can never hang a drain or a deploy.
The parsers are pure functions, shared with `rollout`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent import probe
from agent.errors import ConfigError, HAProxyCommandError, HAProxyConnectError, HAProxyParseError

API_TIMEOUT_S = 1.0
MAX_REPLY_BYTES = 4 * 1024 * 1024
NAME = re.compile(r"[A-Za-z0-9._:-]+")
COUNTERS = ("req_tot", "hrsp_5xx", "econ", "eresp", "rtime", "chkdown", "weight")
CONNECTIONS = ("used_conn_cur", "idle_conn_cur", "safe_conn_cur")  # a worker's, to one server


@dataclass(frozen=True)
class Address:
    """Where a Runtime API listens: a unix socket path, or host and port."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.path else f"tcp://{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """`unix:///run/haproxy/admin.sock` or `tcp://host:port`."""
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/"):
            raise ConfigError(f"HAProxy address {text!r}: a unix socket needs an absolute path, "
                              "as in unix:///run/haproxy/admin.sock")
        return Address(path=path)
    if text.startswith("tcp://"):
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ConfigError(f"HAProxy address {text!r}: expected tcp://host:port")
        return Address(host=parts.hostname, port=port)
    raise ConfigError(f"HAProxy address {text!r}: expected unix:///path or tcp://host:port")


def check_name(kind: str, name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConfigError(f"{kind} name {name!r}: use letters, digits, '.', '_', ':' or '-'")
    return name


@dataclass(frozen=True)
class ServerStat:
    """One server's row of the stats CSV: what a drain and a deploy need to know."""

    backend: str
    server: str
    status: str  # UP, DOWN, 'DRAIN (agent)', MAINT, NOLB, 'UP 1/2', 'MAINT (resolution)', ...
    scur: int  # current sessions
    qcur: int  # requests queued for this server
    addr: str = ""  # ip:port as HAProxy sees it ('' while a DNS slot is empty)
    check: str = ""  # the last health check's description, e.g. 'Layer4 connection problem'
    # Counters since HAProxy started (a deploy's watch compares their growth, new against old):
    req_tot: int = 0  # HTTP requests sent to this server
    hrsp_5xx: int = 0  # its 5xx responses
    econ: int = 0  # failed connections to it
    eresp: int = 0  # responses it cut or never sent
    rtime: int = 0  # average response time (ms) over its last 1024 requests
    chkdown: int = 0  # UP -> DOWN transitions
    weight: int = 0
    # Connections this worker holds to it, in use or idle in its pools (used_conn_cur +
    # idle_conn_cur + safe_conn_cur): what the kernel shows on the app's port, less an old worker's.
    conns: int = 0

    @property
    def busy(self) -> int:
        return self.scur + self.qcur

    @property
    def accepting(self) -> bool:
        """Would HAProxy send this server a new request? (UP, or 'UP 1/2' on its way down.)"""
        return self.status.startswith("UP") or self.status == "no check"

    @property
    def admin_state(self) -> str:
        """The state a deploy cares about: ready, drain, maint or down."""
        if self.status.startswith("MAINT"):
            return "maint"
        if self.status.startswith("DRAIN"):
            return "drain"
        if self.status == "UP":
            return "ready"
        return "down"  # DOWN, NOLB, transitional 'UP 1/2' / 'DOWN 1/2', no check yet


def parse_stat_csv(text: str) -> list[ServerStat]:
    """Server rows (not FRONTEND/BACKEND) of `show stat` or the stats page's `;csv`."""
    return [stat_from_row(row) for row in stat_rows(text) if row["svname"] not in ("FRONTEND", "BACKEND")]


def stat_rows(text: str) -> list[dict[str, str]]:
    """Every row of `show stat` or the stats page's `;csv`, by column name.

    Rows end at '\\n' only: a health check's reason phrase may hold a form feed or another
    character that `str.splitlines` would take for a line break.
    """
    header_line, _, body = text.partition("\n")
    if not header_line.startswith("# "):
        raise HAProxyParseError(f"stats: expected a '# pxname,...' header, got {header_line[:80]!r}")
    header = header_line[2:].rstrip("\r").split(",")
    if header[:2] != ["pxname", "svname"]:
        raise HAProxyParseError(f"stats: unexpected columns {header[:3]!r}")
    rows = []
    try:
        for fields in csv.reader(io.StringIO(body, newline="")):
            if not fields:
                continue
            if len(fields) < len(header) - 1:
                raise HAProxyParseError(f"stats: truncated row {','.join(fields)[:80]!r}")
            rows.append(dict(zip(header, fields, strict=False)))
    except csv.Error as exc:
        raise HAProxyParseError(f"stats: not CSV ({exc})") from None
    return rows


def stat_from_row(row: dict[str, str]) -> ServerStat:
    try:
        return ServerStat(
            backend=row["pxname"],
            server=row["svname"],
            status=row["status"],
            scur=int(row["scur"] or 0),
            qcur=int(row["qcur"] or 0),
            addr=row.get("addr", ""),
            check=row.get("check_desc", ""),
            **{name: int(row.get(name) or 0) for name in COUNTERS},
            conns=sum(int(row.get(name) or 0) for name in CONNECTIONS),
        )
    except (KeyError, ValueError) as exc:
        raise HAProxyParseError(f"stats: bad row for {row.get('svname')!r}: {exc}") from exc


def find_server(stats: list[ServerStat], backend: str, server: str) -> ServerStat:
    for stat in stats:
        if stat.backend == backend and stat.server == server:
            return stat
    known = sorted(s.server for s in stats if s.backend == backend)
    where = f"servers there: {', '.join(known)}" if known else "no such backend"
    raise HAProxyCommandError(f"HAProxy has no server {backend}/{server} ({where})")


def parse_info(text: str) -> dict[str, str]:
    """`show info` is 'Key: value' lines."""
    info = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(": ")
        if sep:
            info[key] = value
    if "Pid" not in info or "Uptime_sec" not in info:
        raise HAProxyParseError(f"show info: no Pid/Uptime_sec in {text[:80]!r}")
    return info


UPTIME = re.compile(r"uptime = </b>\s*(\d+)d (\d+)h(\d+)m(\d+)s")


def parse_uptime(html: str) -> float:
    """The serving worker's uptime from the stats page's HTML ('uptime = </b> 0d 0h00m05s')."""
    found = UPTIME.search(html)
    if found is None:
        raise HAProxyParseError(f"stats page: no 'uptime = ...' in {html[:80]!r}")
    days, hours, minutes, seconds = (int(part) for part in found.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def check_stats_url(url: str) -> str:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"HAProxy stats URL {url!r}: expected http://host:port/stats;csv")
    return url


class StatsPage:
    """HAProxy's read-only stats CSV over HTTP (`http://haproxy:8404/stats;csv`)."""

    def __init__(self, url: str, timeout_s: float = API_TIMEOUT_S) -> None:
        self.url = check_stats_url(url)
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"StatsPage({self.url})"

    async def servers(self) -> list[ServerStat]:
        try:
            status, body = await probe.get(self.url, self.timeout_s, MAX_REPLY_BYTES)
        except (OSError, TimeoutError) as exc:
            raise HAProxyConnectError(
                f"HAProxy stats at {self.url} unreachable: {exc or 'timeout'}"
            ) from None
        if status != 200:
            raise HAProxyCommandError(f"HAProxy stats at {self.url} answered {status}")
        return parse_stat_csv(body.decode(errors="replace"))

    async def uptime_s(self) -> float:
        """How long the worker serving this page has run: a reload starts a new one, and the
        old one may still carry sessions that this page cannot show."""
        url = self.url.replace(";csv", "")
        try:
            status, body = await probe.get(url, self.timeout_s, MAX_REPLY_BYTES)
        except (OSError, TimeoutError) as exc:
            raise HAProxyConnectError(f"HAProxy stats at {url} unreachable: {exc or 'timeout'}") from None
        if status != 200:
            raise HAProxyCommandError(f"HAProxy stats at {url} answered {status}")
        return parse_uptime(body.decode(errors="replace"))


class RuntimeAPI:
    """The admin Runtime API: one command per connection, read to EOF. Operators only."""

    def __init__(self, address: Address, timeout_s: float = API_TIMEOUT_S) -> None:
        self.address = address
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"RuntimeAPI({self.address})"

    async def command(self, line: str) -> str:
        if "\n" in line or "\r" in line:
            raise HAProxyCommandError(f"refusing a Runtime API command with a line break: {line!r}")
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._exchange(line)
        except TimeoutError:
            raise HAProxyConnectError(
                f"HAProxy at {self.address} did not answer {line!r} within {self.timeout_s}s"
            ) from None
        except OSError as exc:
            raise HAProxyConnectError(
                f"HAProxy at {self.address} unreachable: {exc.strerror or exc}; is HAProxy "
                "running with 'stats socket ... level admin' there?"
            ) from exc

    async def _exchange(self, line: str) -> str:
        if self.address.path:
            reader, writer = await asyncio.open_unix_connection(self.address.path)
        else:
            reader, writer = await asyncio.open_connection(self.address.host, self.address.port)
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            reply = await reader.read(MAX_REPLY_BYTES)
            while chunk := await reader.read(MAX_REPLY_BYTES):
                reply += chunk
            return reply.decode(errors="replace")
        finally:
            writer.close()

    async def servers(self, backend: str = "-1") -> list[ServerStat]:
        reply = await self.command(f"show stat {backend} 4 -1")
        if not reply.startswith("# "):
            raise HAProxyCommandError(f"HAProxy at {self.address}: {reply.strip()[:200]}")
        return parse_stat_csv(reply)

    async def info(self) -> dict[str, str]:
        return parse_info(await self.command("show info"))

    async def set_server(self, backend: str, server: str, setting: str) -> None:
        """`set server <b>/<s> <setting>`, e.g. 'state drain': an operator's manual override."""
        reply = (await self.command(f"set server {backend}/{server} {setting}")).strip()
        if reply:
            raise HAProxyCommandError(
                f"HAProxy at {self.address} refused 'set server {backend}/{server} {setting}': "
                f"{reply[:200]}"
            )
