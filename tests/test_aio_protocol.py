"""
Tier 1: the asyncio adapter of the sans-IO core, on a real event loop but
with a fake transport (no sockets) and no waiting on the clock: requests
resolve from the bytes fed in, a cancelled await cancels upstream, a lost
connection fails what waits, and an asyncio service answers, fails and
cancels its handlers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import pytest
from twisted.protocols import amp

from nswarm import aio
from nswarm.aio.protocol import CoreProtocol
from nswarm.core.boxes import put_payload
from nswarm.core.connection import Connection
from nswarm.errors import HandlerFailed, NoSuchMethod, UpstreamUnavailable


class FakeTransport(asyncio.Transport):
    """Keeps what is written; closing it loses the connection at once."""

    def __init__(self, protocol: CoreProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def boxes(self) -> list[amp.AmpBox]:
        out, self.written = list(amp.parseString(self.written)), b""
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)

    abort = close


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def connected(**callbacks: Any) -> tuple[CoreProtocol, FakeTransport]:
    protocol = CoreProtocol(Connection(now=asyncio.get_running_loop().time()), **callbacks)
    transport = FakeTransport(protocol)
    protocol.connection_made(transport)
    return protocol, transport


def answer(protocol: CoreProtocol, tag: bytes, value: Any) -> None:
    box: dict[bytes, bytes] = {b"_answer": tag}
    put_payload(box, b"result", json.dumps(value).encode())
    protocol.data_received(amp.AmpBox(box).serialize())


def test_a_request_resolves_with_its_answer() -> None:
    async def main() -> Any:
        protocol, transport = connected()
        call = asyncio.ensure_future(protocol.request(lambda c: c.call("greet", ("x",))))
        await asyncio.sleep(0)  # the task sends its box
        [box] = transport.boxes()
        assert box[b"_command"] == b"Call"
        answer(protocol, box[b"_ask"], "hello x")
        return await call

    assert run(main()) == "hello x"


def test_cancelling_the_await_cancels_the_call_upstream() -> None:
    async def main() -> list[amp.AmpBox]:
        protocol, transport = connected()
        call = asyncio.ensure_future(protocol.request(lambda c: c.call("slow")))
        await asyncio.sleep(0)
        [box] = transport.boxes()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        answer(protocol, box[b"_ask"], "late")  # dropped
        return [box, *transport.boxes()]

    box, cancel = run(main())
    assert cancel == {b"_command": b"Cancel", b"id": box[b"_ask"]}


def test_a_lost_connection_fails_what_waits() -> None:
    async def main() -> None:
        protocol, transport = connected()
        call = asyncio.ensure_future(protocol.request(lambda c: c.publish("orders.created", 1)))
        await asyncio.sleep(0)
        transport.close()
        with pytest.raises(UpstreamUnavailable):
            await call
        assert protocol.lost.done()

    run(main())


class Shop(aio.Service):
    @aio.implement
    async def slow(self) -> str:
        await asyncio.Event().wait()
        return "never"

    @aio.implement
    def boom(self) -> None:
        raise KeyError("k")

    @aio.implement("who")
    async def whoami(self) -> str:
        return str(aio.current_caller())


def call_box(tag: bytes, method: bytes, caller: bytes = b"api:alice") -> bytes:
    box = {b"_command": b"Call", b"_ask": tag, b"method": method, b"caller": caller}
    put_payload(box, b"args", b'{"args":[],"kwargs":{}}')
    return amp.AmpBox(box).serialize()


def test_an_asyncio_service_runs_answers_fails_and_cancels_its_handlers() -> None:
    async def main() -> dict[bytes | None, amp.AmpBox]:
        service = Shop()
        protocol, transport = connected(on_call=service._call, on_cancel=service._cancel)
        service.connection = protocol
        protocol.data_received(call_box(b"1", b"who") + call_box(b"2", b"boom") + call_box(b"3", b"nobody"))
        protocol.data_received(call_box(b"4", b"slow"))
        for _ in range(3):
            await asyncio.sleep(0)
        running = service.running[b"4"]
        protocol.data_received(amp.AmpBox({b"_command": b"Cancel", b"id": b"4"}).serialize())
        await asyncio.gather(running, return_exceptions=True)
        assert running.cancelled() and not service.running
        return {box.get(b"_answer", box.get(b"_error")): box for box in transport.boxes()}

    answers = run(main())
    assert json.loads(answers[b"1"][b"result"]) == "API user 'alice'"
    assert answers[b"2"][b"_error_code"] == HandlerFailed.code
    assert answers[b"3"][b"_error_code"] == NoSuchMethod.code
    assert b"4" not in answers  # cancelled: the relay answers it
    assert Shop.nswarm_methods == {"slow": "slow", "boom": "boom", "who": "whoami"}
