"""A minimal, strict HTTP/1.1 keep-alive client for load checks (asyncio + httptools).

Why not httpx here: on this 2-core machine httpx's AsyncClient reached 103 req/s at
concurrency 100 with one shared pool and 610 req/s with a client per worker, while
hey did 8,048 req/s against the same stack. A load check must load the stack.
This client parses responses with httptools (llhttp) and does one thing httpx also
does, never re-sending a request, but at hey's speed. Each worker owns one connection,
reused while the server keeps it alive; any failure ends that connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools


class RequestFailed(Exception):
    """The request got no complete response; `cause` says what the client saw."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


@dataclass
class Response:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    keep_alive: bool = True


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response = Response()
        self.waiter: asyncio.Future[Response] | None = None
        self.received_any = False
        self.closed = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but they have write() and close().
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"bad response ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if isinstance(exc, ConnectionResetError):
            self._fail("connection reset")
        elif self.received_any:
            self._fail("truncated response")
        else:
            self._fail("closed without response")

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.response.body += body

    def on_message_complete(self) -> None:
        self.response.status = self.parser.get_status_code()
        self.response.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.response)

    def _fail(self, cause: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(RequestFailed(cause))

    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.response = Response()
        self.received_any = False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


class StrictClient:
    """One keep-alive connection to one origin; requests go one at a time."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url {url!r}: only http://host[:port]/path is supported")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_header = parts.netloc.encode()
        self.timeout_s = timeout_s
        self.protocol: _Protocol | None = None

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        if self.protocol is None or self.protocol.closed:
            self.protocol = await self._connect()
        protocol = self.protocol
        lines = [f"{method} {target} HTTP/1.1", f"host: {self.host_header.decode()}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method == "POST":
            lines.append(f"content-length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await protocol.send(data)
        except TimeoutError:
            self.close()
            raise RequestFailed("timeout") from None
        except RequestFailed:
            self.close()
            raise
        if not response.keep_alive:
            self.close()
        return response

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
        except TimeoutError:
            raise RequestFailed("connect timeout") from None
        except OSError as exc:
            raise RequestFailed(f"connect error ({exc.strerror or exc})") from None
        return protocol

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None
