"""The agent's readiness probe against a tiny server: 200 is ready, anything else is not."""

from __future__ import annotations

import asyncio

import pytest

from agent.probe import ready


async def probe_reply(reply: bytes | None, path: str = "/readyz") -> tuple[bool, bytes]:
    seen = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.extend(await reader.readuntil(b"\r\n\r\n"))
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        else:
            await asyncio.sleep(5)  # never answers
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await ready(f"http://127.0.0.1:{port}{path}", timeout_s=0.5)
    return result, bytes(seen)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", False),
        (b"HTTP/1.1 2000 OK\r\n\r\n", False),
        (b"garbage\r\n", False),
        (b"", False),
        (None, False),  # timeout
    ],
)
def test_status_decides(reply: bytes | None, expected: bool) -> None:
    result, request = asyncio.run(probe_reply(reply))
    assert result is expected
    assert request.startswith(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:")


def test_query_is_sent_and_refused_connection_is_not_ready() -> None:
    _, request = asyncio.run(probe_reply(b"HTTP/1.1 200 OK\r\n\r\n", "/ready?deep=1"))
    assert request.startswith(b"GET /ready?deep=1 HTTP/1.1")
    assert asyncio.run(ready("http://127.0.0.1:1/readyz", timeout_s=0.5)) is False
