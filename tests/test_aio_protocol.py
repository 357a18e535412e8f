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
from nswarm.aio.stream import Stream
from nswarm.core.boxes import put_payload
from nswarm.core.connection import Connection
from nswarm.errors import HandlerFailed, NoSuchMethod, PayloadTooLarge, UpstreamUnavailable


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


def connected(max_payload: int = 16 * 1024 * 1024, **callbacks: Any) -> tuple[CoreProtocol, FakeTransport]:
    protocol = CoreProtocol(Connection(now=asyncio.get_running_loop().time(), max_payload=max_payload), **callbacks)
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


def call_box(
    tag: bytes, method: bytes, caller: bytes = b"api:alice", args: bytes = b"[]", stream: bytes | None = None
) -> bytes:
    box = {b"_command": b"Call", b"_ask": tag, b"method": method, b"caller": caller}
    if stream is not None:
        box[b"stream"] = stream
    put_payload(box, b"args", b'{"args":%s,"kwargs":{}}' % args)
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


def part_box(tag: bytes, value: Any) -> bytes:
    box = {b"_command": b"Part", b"id": tag}
    put_payload(box, b"result", json.dumps(value).encode())
    return amp.AmpBox(box).serialize()


def stream_on(protocol: CoreProtocol, method: str = "count", window: int = 2) -> Stream:
    async def connection(deadline: float) -> CoreProtocol:
        return protocol

    return Stream(connection, method, (), {}, window=window, timeout=30)


def test_a_stream_yields_its_parts_in_order_and_grants_more_as_they_are_taken() -> None:
    async def main() -> tuple[list[Any], list[amp.AmpBox], int | None]:
        protocol, transport = connected()
        stream = stream_on(protocol, window=2)
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)
        [call] = transport.boxes()
        assert call[b"_command"] == b"Call" and call[b"stream"] == b"2"
        tag = call[b"_ask"]
        protocol.data_received(part_box(tag, "a") + part_box(tag, "b"))
        got = [await first]
        mores = transport.boxes()  # one part taken of a window of 2: More for 1
        protocol.data_received(part_box(tag, "c") + amp.AmpBox({b"_answer": tag, b"result": b"3"}).serialize())
        got += [part async for part in stream]
        return got, mores + transport.boxes(), stream.count

    got, mores, count = run(main())
    assert got == ["a", "b", "c"] and count == 3
    assert [m[b"count"] for m in mores] == [b"1"]  # after "a"; none once the end has come


def test_a_stream_raises_its_error_after_the_parts_before_it() -> None:
    async def main() -> list[Any]:
        protocol, transport = connected()
        stream = stream_on(protocol, window=4)
        await stream.start()
        [call] = transport.boxes()
        tag = call[b"_ask"]
        error = {b"_error": tag, b"_error_code": b"PAYLOAD_TOO_LARGE", b"_error_description": b"part 2 too big"}
        protocol.data_received(part_box(tag, 1) + amp.AmpBox(error).serialize())
        got = [await stream.__anext__()]
        with pytest.raises(PayloadTooLarge, match="part 2"):
            await stream.__anext__()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        return got

    assert run(main()) == [1]


def test_closing_a_stream_early_or_cancelling_its_reader_cancels_the_call() -> None:
    async def main() -> list[list[amp.AmpBox]]:
        protocol, transport = connected()
        out = []
        async with stream_on(protocol) as stream:
            [call] = transport.boxes()
            protocol.data_received(part_box(call[b"_ask"], 0))
            async for _ in stream:
                break
        out.append([call, *transport.boxes()])
        stream = stream_on(protocol)
        reader = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)
        [call] = transport.boxes()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        protocol.data_received(part_box(call[b"_ask"], "late"))  # dropped
        out.append([call, *transport.boxes()])
        assert stream.closed
        return out

    for call, *rest in run(main()):
        assert {b"_command": b"Cancel", b"id": call[b"_ask"]} in rest


def test_a_stream_dropped_unfinished_is_cancelled_and_a_bad_window_is_refused() -> None:
    async def main() -> list[amp.AmpBox]:
        protocol, transport = connected()
        stream = stream_on(protocol)
        await stream.start()
        del stream
        await asyncio.sleep(0)  # the Cancel is written on the loop, from the stream's finaliser
        return transport.boxes()

    call, cancel = run(main())
    assert cancel == {b"_command": b"Cancel", b"id": call[b"_ask"]}
    with pytest.raises(ValueError, match="1 to 1024"):
        Stream(None, "count", (), {}, window=0)  # type: ignore[arg-type]


class Streamer(aio.Service):
    def __init__(self) -> None:
        super().__init__()
        self.produced = 0
        self.closed = 0

    @aio.implement
    async def count(self, n: int) -> Any:
        try:
            for value in range(n):
                self.produced += 1
                yield value
        finally:
            self.closed += 1

    @aio.implement
    def letters(self, word: str) -> Any:
        try:
            yield from word
        finally:
            self.closed += 1

    @aio.implement
    async def broken(self) -> Any:
        yield 1
        raise KeyError("k")

    @aio.implement
    def big(self) -> Any:
        try:
            yield "small"
            yield "x" * 2000
            yield "never"
        finally:
            self.closed += 1

    @aio.implement
    async def single(self) -> str:
        return "one"


def serving(max_payload: int = 16 * 1024 * 1024) -> tuple[Streamer, CoreProtocol, FakeTransport]:
    service = Streamer()
    protocol, transport = connected(
        max_payload, on_call=service._call, on_cancel=service._cancel, on_more=service._more
    )
    service.connection = protocol
    return service, protocol, transport


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_generator_handler_sends_no_more_than_its_caller_granted() -> None:
    async def main() -> None:
        service, protocol, transport = serving()
        protocol.data_received(call_box(b"1", b"count", args=b"[10]", stream=b"2"))
        await settle()
        parts = transport.boxes()
        assert [json.loads(p[b"result"]) for p in parts] == [0, 1] and {p[b"id"] for p in parts} == {b"1"}
        assert service.produced == 2  # the generator is held: no credit left
        protocol.data_received(amp.AmpBox({b"_command": b"More", b"id": b"1", b"count": b"3"}).serialize())
        await settle()
        assert [json.loads(p[b"result"]) for p in transport.boxes()] == [2, 3, 4]
        assert service.produced in (5, 6)
        protocol.data_received(amp.AmpBox({b"_command": b"Cancel", b"id": b"1"}).serialize())
        await settle()
        assert transport.boxes() == [] and service.closed == 1 and not service.running and not service.credit

    run(main())


def test_generators_end_with_the_number_of_parts_and_plain_calls_get_the_list() -> None:
    async def main() -> dict[bytes, list[amp.AmpBox]]:
        service, protocol, transport = serving()
        protocol.data_received(call_box(b"1", b"letters", args=b'["abc"]', stream=b"16"))
        protocol.data_received(call_box(b"2", b"count", args=b"[3]"))
        protocol.data_received(call_box(b"3", b"single", stream=b"4"))
        await settle()
        boxes: dict[bytes, list[amp.AmpBox]] = {}
        for box in transport.boxes():
            boxes.setdefault(box.get(b"id", box.get(b"_answer", box.get(b"_error"))), []).append(box)
        assert service.closed == 2
        return boxes

    boxes = run(main())
    assert [json.loads(b[b"result"]) for b in boxes[b"1"]] == ["a", "b", "c", 3]
    assert [b[b"_command"] for b in boxes[b"1"][:3]] == [b"Part"] * 3 and b"_answer" in boxes[b"1"][3]
    assert [json.loads(b[b"result"]) for b in boxes[b"2"]] == [[0, 1, 2]]
    assert [json.loads(b[b"result"]) for b in boxes[b"3"]] == ["one", 1]


def test_a_generator_that_raises_or_yields_too_much_ends_its_stream_with_a_typed_error() -> None:
    async def main() -> tuple[list[amp.AmpBox], list[amp.AmpBox], int]:
        service, protocol, transport = serving(max_payload=1000)
        protocol.data_received(call_box(b"1", b"broken", stream=b"8"))
        await settle()
        broken = transport.boxes()
        protocol.data_received(call_box(b"2", b"big", stream=b"8"))
        await settle()
        return broken, transport.boxes(), service.closed

    broken, big, closed = run(main())
    assert [b.get(b"_command") for b in broken] == [b"Part", None]
    assert broken[1][b"_error_code"] == HandlerFailed.code and b"KeyError" in broken[1][b"_error_description"]
    assert json.loads(big[0][b"result"]) == "small" and big[1][b"_error_code"] == PayloadTooLarge.code
    assert len(big) == 2 and closed == 1  # the generator was closed, "never" was not produced
