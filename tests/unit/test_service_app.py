"""The service's routes and its drain middleware, through ASGI (no network)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.config import NO_NOTICE_LINGER_S, ServiceConfig
from service.drain import DrainState
from service.server import build_server


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def call(app, method: str, path: str, **kwargs):  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, **kwargs)


def ready_app(tmp_path: Path | None = None, **config: object) -> tuple[object, DrainState]:
    state = DrainState()
    state.ready = True
    ledger = str(tmp_path / "ledger.log") if tmp_path else None
    app = create_app(ServiceConfig(instance="app1", version="v9", post_ledger=ledger, **config), state)  # type: ignore[arg-type]
    return app, state


def test_get_cms_reports_identity_and_delay() -> None:
    app, _ = ready_app()
    body = run(call(app, "GET", "/cms?delay_ms=5")).json()
    assert (body["instance"], body["version"], body["delay_ms"]) == ("app1", "v9", 5)


@pytest.mark.parametrize("value", ["-1", "abc", "60001", "1.5", "", "%C2%B2", "%D9%A3", "9" * 5000, "+5", " 5"])
def test_bad_delay_is_a_400_with_a_clear_message(value: str) -> None:
    app, _ = ready_app()
    response = run(call(app, "GET", f"/cms?delay_ms={value}"))
    assert response.status_code == 400
    assert "delay_ms must be an integer from 0 to 60000" in response.json()["error"]


@pytest.mark.parametrize(("length", "status"), [("²", 400), ("-1", 400), ("1e3", 400), ("9" * 5000, 413),
                                                ("99999999999999999999", 413)])
def test_a_content_length_that_is_not_ascii_digits_is_a_400_and_a_huge_one_a_413(length: str, status: int) -> None:
    app, _ = ready_app()
    headers = [(b"content-length", length.encode()), (b"content-type", b"application/json")]
    scope_call = call(app, "POST", "/cms", content=b"{}", headers=headers)
    assert run(scope_call).status_code == status


def test_post_is_recorded_once_with_length_and_hash(tmp_path: Path) -> None:
    app, _ = ready_app(tmp_path)
    payload = json.dumps({"a": 1}).encode()
    response = run(call(app, "POST", "/cms", content=payload, headers={"x-request-id": "abc-1"}))
    body = response.json()
    assert response.status_code == 200
    assert (body["request_id"], body["length"], body["sha256"]) == ("abc-1", len(payload), hashlib.sha256(payload).hexdigest())
    assert (tmp_path / "ledger.log").read_text() == "abc-1\n"


def test_post_errors(tmp_path: Path) -> None:
    app, _ = ready_app(tmp_path, max_body_bytes=100)
    assert run(call(app, "POST", "/cms", content=b"{not json")).status_code == 400
    assert run(call(app, "POST", "/cms", content=b"[" + b"1," * 100 + b"1]")).status_code == 413
    assert run(call(app, "GET", "/nope")).status_code == 404
    assert not (tmp_path / "ledger.log").read_text()  # nothing processed


def test_readiness_follows_start_and_drain() -> None:
    app, state = ready_app()
    state.ready = False
    assert run(call(app, "GET", "/readyz")).json()["error"] == "starting"
    state.ready = True
    assert run(call(app, "GET", "/readyz")).status_code == 200
    state.start_draining()
    assert run(call(app, "GET", "/readyz")).json()["error"] == "draining"
    assert run(call(app, "GET", "/healthz")).status_code == 200  # liveness stays up


def test_draining_refuses_new_work_before_any_handler(tmp_path: Path) -> None:
    app, state = ready_app(tmp_path)
    state.start_draining()
    response = run(call(app, "POST", "/cms", content=b"{}", headers={"x-request-id": "late"}))
    assert response.status_code == 503
    assert response.headers["connection"] == "close"
    assert response.headers["retry-after"] == "1"
    assert not (tmp_path / "ledger.log").read_text()  # the handler never ran: safe to retry


def test_draining_marks_its_refusal_425_only_where_the_proxy_asks() -> None:
    app, state = ready_app()
    state.start_draining()
    asked = {"x-drain-refusal-status": "425"}
    assert run(call(app, "GET", "/cms", headers=asked)).status_code == 425
    assert run(call(app, "GET", "/cms", headers={"x-drain-refusal-status": "500"})).status_code == 503
    assert run(call(app, "GET", "/events", headers=asked)).status_code == 425


@pytest.mark.parametrize("size", [20_000, 1_000_000])
def test_draining_serves_a_body_haproxy_could_not_resend(tmp_path: Path, size: int) -> None:
    """HAProxy holds at most 16 KiB of a request: a larger POST refused while draining could
    not be sent elsewhere, so it is served (the drain waits for it as for any in flight)."""
    app, state = ready_app(tmp_path)
    state.start_draining()
    big = json.dumps({"pad": "x" * size}).encode()
    headers = {"x-drain-refusal-status": "425"}
    served = run(call(app, "POST", "/cms", content=big, headers={**headers, "x-request-id": "big"}))
    assert (served.status_code, served.headers["connection"]) == (200, "close")
    small = run(call(app, "POST", "/cms", content=b"{}", headers={**headers, "x-request-id": "small"}))
    assert small.status_code == 425
    async def parts():  # type: ignore[no-untyped-def]
        yield b"{"
        yield b"}"

    chunked = run(call(app, "POST", "/cms", content=parts(), headers={**headers, "x-request-id": "chunked"}))
    assert chunked.status_code == 200  # no declared length: HAProxy may not hold it whole
    assert (tmp_path / "ledger.log").read_text() == "big\nchunked\n"


def test_post_delay_comes_after_the_work() -> None:
    """`POST /cms?delay_ms=` records the request, then waits: a crash in between cuts a
    request that was processed (what HAProxy must never re-send)."""
    app, state = ready_app()

    async def scenario() -> None:
        slow = asyncio.create_task(call(app, "POST", "/cms?delay_ms=300", content=b"{}",
                                        headers={"x-request-id": "p1"}))
        await asyncio.sleep(0.1)
        assert state.in_flight == 1
        assert (await slow).json()["request_id"] == "p1"

    run(scenario())
    assert run(call(app, "POST", "/cms?delay_ms=%C2%B2", content=b"{}")).status_code == 400


def test_in_flight_request_finishes_and_closes_its_connection() -> None:
    app, state = ready_app()

    async def scenario() -> httpx.Response:
        slow = asyncio.create_task(call(app, "GET", "/cms?delay_ms=200"))
        while state.in_flight == 0:
            await asyncio.sleep(0.005)
        state.start_draining()
        late = await call(app, "GET", "/cms")
        assert late.status_code == 503
        assert state.in_flight == 1
        return await slow

    response = run(scenario())
    assert response.status_code == 200
    assert response.headers["connection"] == "close"
    assert state.in_flight == 0


def test_metrics_count_requests_by_route_and_status() -> None:
    app, _ = ready_app()
    run(call(app, "GET", "/cms"))
    run(call(app, "GET", "/cms?delay_ms=x"))
    text = run(call(app, "GET", "/metrics")).text
    assert 'service_requests_total{method="GET",route="/cms",status="200"} 1.0' in text
    assert 'service_requests_total{method="GET",route="/cms",status="400"} 1.0' in text
    assert "service_draining 0.0" in text
    assert "service_request_duration_seconds_bucket" in text


def test_deeply_nested_json_is_a_400_not_a_500() -> None:
    app, _ = ready_app()
    answer = run(call(app, "POST", "/cms", content=b"[" * 50_000 + b"]" * 50_000))
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]


@pytest.mark.parametrize(("linger", "notice", "expected"), [
    (None, False, NO_NOTICE_LINGER_S),  # no agent (or no notice): HAProxy's checks must see it first
    (None, True, 0.0),  # the agent's notice came: HAProxy sends nothing here any more
    (2.5, True, 2.5),  # an explicit SERVICE_DRAIN_LINGER_S wins
])
def test_the_503_phase_lingers_until_haproxy_has_taken_the_instance_out(
        linger: float | None, notice: bool, expected: float) -> None:
    server = build_server(ServiceConfig(instance="app1", drain_linger_s=linger))
    if notice:
        server.state.streams.request_release("SIGUSR1")
    server.state.start_draining()
    assert server.linger_s() == expected


def test_a_repeated_sigterm_never_cuts_the_drain_and_a_second_ctrl_c_does() -> None:
    """The agent's parent-death SIGTERM arrives once per thread of the app: the second one must
    not force the exit (it cut in-flight requests when the agent was SIGKILLed)."""
    import signal

    server = build_server(ServiceConfig(instance="app1"))
    for _ in range(3):
        server.handle_exit(signal.SIGTERM, None)
    assert server.state.draining and not server.should_exit and not server.force_exit
    server.handle_exit(signal.SIGINT, None)
    assert server.should_exit and server.force_exit
