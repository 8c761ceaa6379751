"""HAProxy Runtime API client: the one place that talks to HAProxy's admin socket.

One command per connection (HAProxy's non-interactive mode): connect, send a line,
read to EOF. Every call has a deadline, so a stuck HAProxy can never hang a drain.
The parsers are pure functions, shared with `rollout` (which reads the same CSV).
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.errors import ConfigError, HAProxyCommandError, HAProxyConnectError, HAProxyParseError

API_TIMEOUT_S = 1.0
MAX_REPLY_BYTES = 4 * 1024 * 1024
NAME = re.compile(r"[A-Za-z0-9._:-]+")
# Replies to `set server` are empty on success; anything else is HAProxy's error text.
SERVER_STATES = ("ready", "drain", "maint")


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
    """One server's row of `show stat`: what a drain needs to know."""

    backend: str
    server: str
    status: str  # UP, DOWN, DRAIN, MAINT, NOLB, 'UP 1/2', 'MAINT (resolution)', ...
    scur: int  # current sessions
    qcur: int  # requests queued for this server

    @property
    def busy(self) -> int:
        return self.scur + self.qcur

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


def parse_stat_csv(text: str) -> list[dict[str, str]]:
    """Rows of `show stat` (or the stats page's `;csv`) as dicts keyed by column name."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        first = lines[0][:80] if lines else ""
        raise HAProxyParseError(f"show stat: expected a '# pxname,...' header, got {first!r}")
    header = lines[0][2:].split(",")
    if header[:2] != ["pxname", "svname"]:
        raise HAProxyParseError(f"show stat: unexpected columns {header[:3]!r}")
    rows = []
    for fields in csv.reader(io.StringIO("\n".join(line for line in lines[1:] if line))):
        if len(fields) < len(header) - 1:
            raise HAProxyParseError(f"show stat: truncated row {','.join(fields)[:80]!r}")
        rows.append(dict(zip(header, fields, strict=False)))
    return rows


def server_stat(rows: list[dict[str, str]], backend: str, server: str) -> ServerStat:
    for row in rows:
        if row.get("pxname") == backend and row.get("svname") == server:
            return stat_from_row(row)
    known = sorted(r["svname"] for r in rows if r.get("pxname") == backend)
    known = [s for s in known if s not in ("FRONTEND", "BACKEND")]
    where = f"servers there: {', '.join(known)}" if known else "no such backend"
    raise HAProxyCommandError(f"HAProxy has no server {backend}/{server} ({where})")


def stat_from_row(row: dict[str, str]) -> ServerStat:
    try:
        return ServerStat(
            backend=row["pxname"],
            server=row["svname"],
            status=row["status"],
            scur=int(row["scur"] or 0),
            qcur=int(row["qcur"] or 0),
        )
    except (KeyError, ValueError) as exc:
        raise HAProxyParseError(f"show stat: bad row for {row.get('svname')!r}: {exc}") from exc


def parse_info(text: str) -> dict[str, str]:
    """`show info` is 'Key: value' lines."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            info[key] = value
    if "Pid" not in info or "Uptime_sec" not in info:
        raise HAProxyParseError(f"show info: no Pid/Uptime_sec in {text[:80]!r}")
    return info


class RuntimeAPI:
    def __init__(self, address: Address, timeout_s: float = API_TIMEOUT_S) -> None:
        self.address = address
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"RuntimeAPI({self.address})"

    async def command(self, line: str) -> str:
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

    async def stats(self, backend: str) -> list[dict[str, str]]:
        reply = await self.command(f"show stat {backend} 4 -1")
        if not reply.startswith("# "):
            raise HAProxyCommandError(f"HAProxy at {self.address}: {reply.strip()[:200]}")
        return parse_stat_csv(reply)

    async def server_stat(self, backend: str, server: str) -> ServerStat:
        try:
            rows = await self.stats(backend)
        except HAProxyCommandError as exc:
            if "No such proxy" in str(exc):
                raise HAProxyCommandError(
                    f"HAProxy at {self.address} has no backend {backend!r}"
                ) from None
            raise
        return server_stat(rows, backend, server)

    async def info(self) -> dict[str, str]:
        return parse_info(await self.command("show info"))

    async def set_server(self, backend: str, server: str, setting: str) -> None:
        """`set server <b>/<s> <setting>`, e.g. 'state drain' or 'health up'."""
        reply = (await self.command(f"set server {backend}/{server} {setting}")).strip()
        if reply:
            raise HAProxyCommandError(
                f"HAProxy at {self.address} refused 'set server {backend}/{server} {setting}': "
                f"{reply[:200]}"
            )
