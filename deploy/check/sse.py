"""The server-sent-events wire, for the stream clients: a decoder of the event stream (split
chunks, CRLF, comments, `retry:`) and the one-response HTTP protocol that feeds it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httptools


@dataclass
class SseEvent:
    id: str | None  # the last event id, as an EventSource keeps it
    event: str
    data: str


class SseDecoder:
    """The text/event-stream format (WHATWG HTML, "Server-sent events"): fields up to a blank line.
    `retry_ms` is the stream's reconnection time, as its last `retry:` field set it."""

    def __init__(self) -> None:
        self.buffer = b""
        self.id: str | None = None
        self.event = ""
        self.data: list[str] = []
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self.buffer += chunk
        events: list[SseEvent] = []
        while True:
            cut = min((i for i in (self.buffer.find(b"\n"), self.buffer.find(b"\r")) if i >= 0), default=-1)
            if cut < 0 or (self.buffer[cut:cut + 1] == b"\r" and cut + 1 == len(self.buffer)):
                return events  # no line end yet, or a \r whose \n may be in the next chunk
            line = self.buffer[:cut].decode(errors="replace")
            end = cut + (2 if self.buffer[cut : cut + 2] == b"\r\n" else 1)
            self.buffer = self.buffer[end:]
            if not line:
                if self.data:
                    events.append(SseEvent(self.id, self.event or "message", "\n".join(self.data)))
                self.event, self.data = "", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self.data.append(value)
            elif name == "event":
                self.event = value
            elif name == "id" and "\0" not in value:
                self.id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)


class SseProtocol(asyncio.Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.parser = httptools.HttpResponseParser(self)
        self.decoder = SseDecoder()
        self.headers: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.events: asyncio.Queue[SseEvent] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.finish(f"bad response ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish("reset" if isinstance(exc, ConnectionResetError) else "cut")

    def on_headers_complete(self) -> None:
        if not self.headers.done():
            self.headers.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.headers.done() and self.headers.result() == 200:
            for event in self.decoder.feed(body):
                self.events.put_nowait(event)

    def on_message_complete(self) -> None:
        self.finish("end")

    def finish(self, how: str) -> None:
        if not self.headers.done():
            self.headers.set_exception(ConnectionError(how))
        if not self.done.done():
            self.done.set_result(how)
        if self.transport is not None and how != "end":
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
