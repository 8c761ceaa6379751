"""The agent port, with real sockets: `ready`, once a HAProxy was told it, waits for a change
(a long poll) up to the hold; everything else is answered at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agent.responder import EARLY_CLOSES_OFF, MAX_HELD, Responder

HOLD_S = 0.4


class Box:
    state = "ready"


def run(scenario: Any) -> Any:
    return asyncio.run(scenario)


async def serving(box: Box, hold_s: float = HOLD_S, said: list[str] | None = None) -> Responder:
    responder = Responder("127.0.0.1", 0, lambda: box.state, hold_s,
                          lambda name, **fields: (said if said is not None else []).append(name))
    await responder.start()
    assert responder.server is not None
    responder.port = responder.server.sockets[0].getsockname()[1]
    return responder


async def poll(responder: Responder, source: str = "127.0.0.1") -> tuple[str, float]:
    began = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.port, local_addr=(source, 0))
    line = await reader.read(100)
    writer.close()
    return line.decode(), time.monotonic() - began


def test_ready_and_starting_are_held_once_told_and_every_other_state_answered_at_once() -> None:
    async def scenario() -> None:
        box = Box()
        responder = await serving(box)
        for state, reply in (("starting", "maint\n"), ("ready", "ready\n")):
            box.state = state
            line, took = await poll(responder)  # news: at once
            assert line == reply and took < HOLD_S / 2
            line, took = await poll(responder)  # known: at the end of the hold
            assert line == reply and HOLD_S <= took < HOLD_S + 0.3
        for state, reply in (("draining", "drain\n"), ("stopping", "maint\n"), ("exited", "maint\n")):
            box.state = state
            for _ in range(2):
                line, took = await poll(responder)
                assert (line, took < HOLD_S / 2) == (reply, True)
        responder.close()

    run(scenario())


def test_a_held_start_is_answered_ready_the_moment_the_app_is() -> None:
    async def scenario() -> None:
        box = Box()
        box.state = "starting"
        responder = await serving(box, hold_s=5)
        assert (await poll(responder))[0] == "maint\n"
        held = asyncio.ensure_future(poll(responder))
        await asyncio.sleep(0.2)
        assert not held.done()
        box.state = "ready"
        responder.state_changed()
        line, took = await held
        assert line == "ready\n" and 0.2 <= took < 1.0
        responder.close()

    run(scenario())


def test_a_held_poll_is_answered_at_once_with_a_new_state() -> None:
    async def scenario() -> None:
        box = Box()
        responder = await serving(box, hold_s=5)
        await poll(responder)
        held = asyncio.ensure_future(poll(responder))
        await asyncio.sleep(0.2)
        assert not held.done()
        box.state = "draining"
        responder.state_changed()
        line, took = await held
        assert line == "drain\n" and 0.2 <= took < 1.0
        responder.close()

    run(scenario())


def test_without_a_hold_every_poll_is_answered_at_once() -> None:
    async def scenario() -> None:
        off = await serving(Box(), hold_s=0)
        for _ in range(2):
            line, took = await poll(off)
            assert line == "ready\n" and took < 0.2
        off.close()

    run(scenario())


def test_a_reloaded_haproxys_new_worker_is_told_at_once() -> None:
    """Its address is the old worker's: its poll comes while the old one's is held, or after the
    old worker closed its held poll."""
    async def scenario() -> None:
        responder = await serving(Box(), hold_s=5)
        await poll(responder)
        old_worker = asyncio.ensure_future(poll(responder))
        await asyncio.sleep(0.1)
        line, took = await poll(responder)  # the new worker, while the old one's poll is held
        assert line == "ready\n" and took < 0.2
        old_worker.cancel()  # the old worker goes away, closing its held poll
        await asyncio.sleep(0.1)
        line, took = await poll(responder)
        assert line == "ready\n" and took < 0.2
        responder.close()

    run(scenario())


def test_a_haproxy_that_does_not_wait_is_answered_at_once_after_three_early_closes() -> None:
    async def scenario() -> None:
        said: list[str] = []
        responder = await serving(Box(), said=said)
        for _ in range(EARLY_CLOSES_OFF):
            await poll(responder)  # told: the next poll is held...
            _, writer = await asyncio.open_connection("127.0.0.1", responder.port)
            await asyncio.sleep(0.05)
            writer.close()  # ...and closed first, as HAProxy does when its `timeout check` ends
            await asyncio.sleep(0.05)
        assert said == ["agent.hold_off"]
        for _ in range(2):
            line, took = await poll(responder)
            assert line == "ready\n" and took < HOLD_S / 2
        responder.close()

    run(scenario())


def test_at_most_max_held_polls_wait_and_the_rest_are_answered_at_once() -> None:
    async def scenario() -> None:
        responder = await serving(Box(), hold_s=5)
        peers = [f"127.0.0.{n}" for n in range(2, MAX_HELD + 3)]
        for peer in peers:
            await poll(responder, peer)
        held = [asyncio.ensure_future(poll(responder, peer)) for peer in peers[:MAX_HELD]]
        await asyncio.sleep(0.2)
        assert responder.held == MAX_HELD
        line, took = await poll(responder, peers[-1])
        assert line == "ready\n" and took < 0.2
        responder.state_changed()
        assert {line for line, _ in await asyncio.gather(*held)} == {"ready\n"}
        responder.close()

    run(scenario())


def test_only_a_haproxys_poll_is_held_and_a_probe_is_answered_at_once() -> None:
    async def scenario() -> None:
        async def haproxies() -> frozenset[str]:
            return frozenset({"127.0.0.9"})

        responder = Responder("127.0.0.1", 0, lambda: "ready", HOLD_S, haproxies=haproxies)
        await responder.start()
        assert responder.server is not None
        responder.port = responder.server.sockets[0].getsockname()[1]
        for _ in range(2):  # a probe, a container's health check: never held
            line, took = await poll(responder, "127.0.0.1")
            assert line == "ready\n" and took < HOLD_S / 2
        await poll(responder, "127.0.0.9")
        line, took = await poll(responder, "127.0.0.9")  # HAProxy, told: held
        assert line == "ready\n" and took >= HOLD_S
        responder.close()

    run(scenario())
