"""The agent's HTTP GET (readiness URL, stats CSV) against a tiny server on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from agent.probe import dechunk, get, listening, ready

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def serve_once(reply: bytes | None, call: str = "ready", path: str = "/readyz",
                     max_bytes: int = 65536) -> tuple[object, bytes]:
    """Run one probe against a server answering `reply` (None: never answers); (result, request seen)."""
    seen = bytearray()
    never = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.extend(await reader.readuntil(b"\r\n\r\n"))
        if reply is None:
            await never.wait()
        else:
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}{path}"
    async with server:
        result: object
        if call == "ready":
            result = await ready(url, timeout_s=0.2)
        else:
            try:
                result = await get(url, timeout_s=0.2, max_bytes=max_bytes)
            except (OSError, TimeoutError) as exc:
                result = exc
    return result, bytes(seen)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (OK, True),
        (b"HTTP/1.0 200 OK\r\n\r\n", True),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", False),
        (b"HTTP/1.1 2000 OK\r\n\r\n", False),
        (b"garbage\r\n", False),
        (b"", False),
        (None, False),  # timeout
    ],
)
def test_status_decides(reply: bytes | None, expected: bool) -> None:
    result, request = asyncio.run(serve_once(reply))
    assert result is expected
    assert request.startswith(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1:")
    assert b"\r\nUser-Agent: drain-agent\r\n" in request


def test_query_is_sent_and_refused_connection_is_not_ready() -> None:
    _, request = asyncio.run(serve_once(OK, path="/ready?deep=1"))
    assert request.startswith(b"GET /ready?deep=1 HTTP/1.0\r\n")
    assert asyncio.run(ready("http://127.0.0.1:1/readyz", timeout_s=0.5)) is False


def test_get_reads_the_body_to_the_end() -> None:
    body = b"# pxname,svname\n" + b"app,app1\n" * 5000  # several reads' worth
    result, request = asyncio.run(serve_once(b"HTTP/1.0 200 OK\r\n\r\n" + body, "get", "/stats;csv", 1 << 20))
    assert result == (200, body)
    assert request.startswith(b"GET /stats;csv HTTP/1.0\r\n")


def test_get_decodes_a_chunked_body() -> None:
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"10\r\n# pxname,svname\n\r\n" b"9;ext=1\r\napp,app1\n\r\n" b"0\r\n\r\n")
    result, _ = asyncio.run(serve_once(reply, "get", "/stats;csv"))
    assert result == (200, b"# pxname,svname\napp,app1\n")


def test_get_refuses_a_cut_chunked_body() -> None:
    reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\n# pxname,svname\n\r\n9\r\napp,"
    result, _ = asyncio.run(serve_once(reply, "get", "/stats;csv"))
    assert isinstance(result, OSError) and "truncated or malformed chunked answer" in str(result)


@pytest.mark.parametrize(("size", "fits"), [(1000, True), (1001, False), (50_000, False)])
def test_get_refuses_an_answer_over_max_bytes(size: int, fits: bool) -> None:
    head = b"HTTP/1.0 200 OK\r\n\r\n"
    reply = head + b"x" * (size - len(head))
    result, _ = asyncio.run(serve_once(reply, "get", "/stats;csv", max_bytes=1000))
    if fits:
        assert result == (200, b"x" * (size - len(head)))
    else:
        assert isinstance(result, OSError) and "is over 1000 bytes" in str(result)


@pytest.mark.parametrize("reply", [b"", b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 OK\r\n\r\n"])
def test_get_refuses_what_is_not_http(reply: bytes) -> None:
    result, _ = asyncio.run(serve_once(reply, "get"))
    assert isinstance(result, OSError) and "not an HTTP answer" in str(result)


def test_get_times_out() -> None:
    result, _ = asyncio.run(serve_once(None, "get"))
    assert isinstance(result, TimeoutError)


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"0\r\n\r\n", b""), (b"3\r\nabc\r\n0\r\n\r\n", b"abc"), (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789")],
)
def test_dechunk(body: bytes, expected: bytes) -> None:
    assert dechunk(body, "u") == expected


@pytest.mark.parametrize("body", [b"", b"3\r\nab", b"zz\r\nabc\r\n0\r\n\r\n", b"-1\r\n\r\n", b"3\r\nabc\r\n",
                                  b"3\r\nabcd\r\n0\r\n\r\n"])
def test_dechunk_refuses_a_cut_or_garbled_body(body: bytes) -> None:
    with pytest.raises(OSError, match="truncated or malformed chunked answer from u"):
        dechunk(body, "u")


def test_listening() -> None:
    async def check() -> tuple[bool, bool]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            taken = await listening(f"http://127.0.0.1:{port}/readyz", timeout_s=0.5)
        return taken, await listening("http://127.0.0.1:1/readyz", timeout_s=0.5)

    assert asyncio.run(check()) == (True, False)
