"""
Tier 1: streamed results in the sans-IO core, bytes in and bytes out, both
ends: the caller gets parts as events and grants more with C{More}; the
service sends no more than it was granted, ends with the number of parts,
and a C{Cancel}, a part over the limit or a deadline end the stream.
Twisted's AMP parses the bytes and the L{nswarm.amp_commands} commands
check them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from nswarm import amp_commands, defaults
from nswarm.core.boxes import put_payload
from nswarm.core.connection import MARGIN, Connection
from nswarm.core.events import Answered, CallReceived, CancelReceived, Failed, MoreReceived, PartReceived
from nswarm.errors import DeadlineExceeded, HandlerFailed, InternalError, InvalidRequest, PayloadTooLarge

from .test_core import reply, sent


def part(tag: bytes, value: Any) -> dict[bytes, bytes]:
    box = {b"_command": b"Part", b"id": tag}
    put_payload(box, b"result", json.dumps(value).encode())
    return box


def streamed_call(tag: bytes, window: bytes = b"2", method: bytes = b"count") -> dict[bytes, bytes]:
    box = {b"_command": b"Call", b"_ask": tag, b"method": method, b"stream": window}
    put_payload(box, b"args", b'{"args":[5],"kwargs":{}}')
    return box


def test_a_streamed_call_carries_its_window_and_gets_parts_then_its_end() -> None:
    connection = Connection(now=0.0)
    tag = connection.call("count", (5,), timeout=5, stream=4)
    [box] = sent(connection)
    assert amp_commands.Call.parseArguments(box, None)["stream"] == 4
    assert reply(connection, part(tag, 0)) == [PartReceived(tag, 0)]
    assert reply(connection, {**part(tag, [1]), b"_command": b"Part"}) == [PartReceived(tag, [1])]
    assert reply(connection, part(b"other", 9)) == []  # no such stream: dropped
    assert reply(connection, {b"_answer": tag, b"result": b"2"}) == [Answered(tag, 2)]
    assert reply(connection, part(tag, 3)) == []  # after the end: dropped
    with pytest.raises(ValueError, match="1 to 1024"):
        connection.call("count", stream=defaults.MAX_STREAM_WINDOW + 1)


def test_the_caller_grants_half_its_window_each_time_its_consumer_took_that_many() -> None:
    connection = Connection(now=0.0)
    tag = connection.call("count", stream=4)
    connection.data_to_send()
    for value in range(4):
        reply(connection, part(tag, value))
    connection.consumed(tag)
    assert connection.data_to_send() == b""
    connection.consumed(tag)
    [more] = sent(connection)
    assert more == {b"_command": b"More", b"id": tag, b"count": b"2"}
    assert amp_commands.More.parseArguments(more, None) == {"id": tag, "count": 2}
    one = connection.call("count", stream=1)
    connection.data_to_send()
    reply(connection, part(one, "a"))
    connection.consumed(one)
    assert sent(connection) == [{b"_command": b"More", b"id": one, b"count": b"1"}]


def test_a_producer_past_the_window_fails_the_stream_and_is_cancelled() -> None:
    connection = Connection(now=0.0)
    tag = connection.call("count", stream=2)
    connection.data_to_send()
    reply(connection, part(tag, 0))
    reply(connection, part(tag, 1))
    [event] = reply(connection, part(tag, 2))
    assert isinstance(event, Failed) and isinstance(event.error, InternalError)
    assert sent(connection) == [{b"_command": b"Cancel", b"id": tag}]


def test_an_error_after_parts_fails_the_stream_and_an_oversized_part_is_refused() -> None:
    connection = Connection(now=0.0, max_payload=1000)
    tag = connection.call("big", stream=8)
    connection.data_to_send()
    assert reply(connection, part(tag, "a")) == [PartReceived(tag, "a")]
    error = {b"_error": tag, b"_error_code": b"PAYLOAD_TOO_LARGE", b"_error_description": b"too big"}
    [event] = reply(connection, error)
    assert isinstance(event, Failed) and isinstance(event.error, PayloadTooLarge)
    tag = connection.call("big", stream=8)
    connection.data_to_send()
    [event] = reply(connection, part(tag, "x" * 200_000))
    assert isinstance(event, Failed) and isinstance(event.error, PayloadTooLarge)
    assert sent(connection) == [{b"_command": b"Cancel", b"id": tag}]


def test_the_deadline_covers_the_whole_stream_and_cancel_ends_it() -> None:
    connection = Connection(now=10.0)
    tag = connection.call("ticks", timeout=1.0, stream=16)
    connection.data_to_send()
    reply(connection, part(tag, 0), now=10.5)
    connection.tick(11.0 + MARGIN)
    [event] = [e for e in connection.events() if isinstance(e, Failed)]
    assert isinstance(event.error, DeadlineExceeded)
    assert sent(connection) == [{b"_command": b"Cancel", b"id": tag}]
    assert reply(connection, part(tag, 1)) == []
    tag = connection.call("ticks", stream=16)
    connection.data_to_send()
    assert connection.cancel(tag)
    assert sent(connection) == [{b"_command": b"Cancel", b"id": tag}]
    connection.consumed(tag, 10)
    assert connection.data_to_send() == b""  # no More for a stream given up


def test_a_service_sends_parts_while_it_has_credit_then_its_end() -> None:
    connection = Connection(now=0.0, peer="node")
    [call] = reply(connection, streamed_call(b"c1", b"2"))
    assert isinstance(call, CallReceived) and call.stream == 2
    assert connection.credit(b"c1") == 2
    assert connection.part(b"c1", 0) and connection.part(b"c1", 1)
    assert connection.credit(b"c1") == 0
    with pytest.raises(RuntimeError, match="no credit"):
        connection.part(b"c1", 2)
    parts = sent(connection)
    assert [(p[b"_command"], p[b"id"], json.loads(p[b"result"])) for p in parts] == [
        (b"Part", b"c1", 0),
        (b"Part", b"c1", 1),
    ]
    assert amp_commands.Part.parseArguments(parts[0], None) == {"id": b"c1", "result": b"0"}
    assert reply(connection, {b"_command": b"More", b"id": b"c1", b"count": b"1"}) == [MoreReceived(b"c1")]
    assert reply(connection, {b"_command": b"More", b"id": b"nobody", b"count": b"1"}) == []
    assert connection.credit(b"c1") == 1 and connection.part(b"c1", 2)
    connection.end(b"c1")
    *_, end = sent(connection)
    assert end == {b"_answer": b"c1", b"result": b"3"}
    assert not connection.part(b"c1", 3) and connection.credit(b"c1") == 0


def test_a_plain_value_answers_a_streamed_call_as_one_part() -> None:
    connection = Connection(now=0.0, peer="node")
    reply(connection, streamed_call(b"c1"))
    connection.answer(b"c1", {"all": "at once"})
    first, end = sent(connection)
    assert json.loads(first[b"result"]) == {"all": "at once"} and end == {b"_answer": b"c1", b"result": b"1"}


def test_a_part_over_the_limit_or_not_json_ends_the_stream_with_a_typed_error() -> None:
    connection = Connection(now=0.0, peer="node", max_payload=1000)
    reply(connection, streamed_call(b"c1", b"8"))
    assert connection.part(b"c1", "small")
    assert not connection.part(b"c1", "x" * 2000)
    small, error = sent(connection)
    assert error[b"_error"] == b"c1" and error[b"_error_code"] == PayloadTooLarge.code
    assert b"part 2 of the result" in error[b"_error_description"]
    reply(connection, streamed_call(b"c2", b"8"))
    assert not connection.part(b"c2", object())
    [error] = sent(connection)
    assert error[b"_error_code"] == HandlerFailed.code and b"InvalidResult" in error[b"_error_description"]


def test_a_cancel_ends_a_stream_and_a_bad_window_is_refused() -> None:
    connection = Connection(now=0.0, peer="node")
    reply(connection, streamed_call(b"c1"))
    assert reply(connection, {b"_command": b"Cancel", b"id": b"c1"}) == [CancelReceived(b"c1")]
    assert not connection.part(b"c1", 0) and connection.credit(b"c1") == 0
    connection.end(b"c1")
    assert connection.data_to_send() == b""  # the relay has answered it
    for window in (b"0", b"1025", b"many"):
        assert reply(connection, streamed_call(b"c2", window)) == []
        [error] = sent(connection)
        assert error[b"_error_code"] == InvalidRequest.code and b"window" in error[b"_error_description"]


def test_both_ends_in_memory_back_pressure_the_producer() -> None:
    """The caller's core and the service's core wired together: a slow consumer holds the producer to its window."""
    caller, service = Connection(now=0.0), Connection(now=0.0, peer="node")
    tag = caller.call("count", (100,), stream=4)
    service.receive_data(caller.data_to_send(), 0.0)
    [call] = service.events()
    got: list[Any] = []
    produced = 0
    ended: list[Any] = []
    while not ended:
        while produced < 100 and service.credit(call.tag):
            assert service.part(call.tag, produced)
            produced += 1
        if produced == 100:
            service.end(call.tag)
        caller.receive_data(service.data_to_send(), 0.0)
        events = caller.events()
        parts = [e.value for e in events if isinstance(e, PartReceived)]
        ended += [e.value for e in events if isinstance(e, Answered)]
        assert len(parts) <= 4  # never more than the window waits at the caller
        for value in parts:
            got.append(value)
            caller.consumed(tag)
        service.receive_data(caller.data_to_send(), 0.0)
        service.events()
    assert got == list(range(100)) and ended == [100]
