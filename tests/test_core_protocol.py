"""
The Twisted adapter of the sans-IO core (L{nswarm.core_protocol}), over a
fake transport: what it writes, and when.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from nswarm.api import APIClient
from nswarm.boxes import serialize
from nswarm.core.parser import BoxParser
from nswarm.errors import DeadlineExceeded

from .support import failure_of


class Recording(StringTransport):
    """A transport that keeps each write, and the moment the connection was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed_after: int | None = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def loseConnection(self) -> None:
        self.closed_after = len(self.writes)
        super().loseConnection()


def connected() -> tuple[APIClient, Recording]:
    client = APIClient()
    transport = Recording()
    client.makeConnection(transport)
    return client, transport


def boxes(data: bytes) -> list[dict[bytes, bytes]]:
    return BoxParser(1 << 20).feed(data)  # type: ignore[return-value]


def answer(tag: bytes, value: bytes) -> bytes:
    return serialize({b"_answer": tag, b"result": value})


def test_calls_made_by_the_callbacks_of_one_read_go_out_in_one_write() -> None:
    client, transport = connected()
    first, second = client.call("a"), client.call("b")
    tags = [box[b"_ask"] for box in boxes(b"".join(transport.writes))]
    assert len(transport.writes) == 2  # a call from outside any callback goes out at once
    transport.writes.clear()
    values: list[Any] = []
    again: list[Deferred[Any]] = []

    def call_again(value: Any, method: str) -> None:
        values.append(value)
        again.append(client.call(method))

    first.addCallback(call_again, "c")
    second.addCallback(call_again, "d")
    client.dataReceived(answer(tags[0], b"1") + answer(tags[1], b"2"))
    assert values == [1, 2] and len(again) == 2
    [write] = transport.writes
    assert [box[b"method"] for box in boxes(write)] == [b"c", b"d"]


def test_what_was_sent_before_a_close_is_written_before_it() -> None:
    client, transport = connected()
    first = client.call("a")
    [tag] = [box[b"_ask"] for box in boxes(b"".join(transport.writes))]

    def last_call_then_close(_: object) -> None:
        client.call("last")
        client.close_connection()

    first.addCallback(last_call_then_close)
    client.dataReceived(answer(tag, b"1"))
    assert transport.closed_after == len(transport.writes)
    assert boxes(transport.writes[-1])[0][b"method"] == b"last"


def test_deadlines_run_on_the_clock_from_start_heartbeats_and_cancel_upstream() -> None:
    client, transport = connected()
    clock = Clock()
    before = client.call_with_timeout(1.0, "a")  # no clock yet: only the relays keep its deadline
    client.start_heartbeats(clock, 30.0)
    late = client.call_with_timeout(1.0, "b")
    transport.writes.clear()
    clock.advance(1.0)
    assert not late.called
    clock.advance(0.05)
    assert isinstance(failure_of(late).value, DeadlineExceeded) and not before.called
    [cancel] = boxes(b"".join(transport.writes))
    assert cancel[b"_command"] == b"Cancel"
    client.stop_heartbeats()
    assert not clock.getDelayedCalls()


def test_cancelling_a_call_sends_cancel_and_drops_its_late_answer() -> None:
    client, transport = connected()
    call = client.call("a")
    [tag] = [box[b"_ask"] for box in boxes(b"".join(transport.writes))]
    call.cancel()
    failure_of(call)
    cancel = boxes(transport.writes[-1])[0]
    assert cancel == {b"_command": b"Cancel", b"id": tag}
    client.dataReceived(answer(tag, b"1"))  # late: dropped, nothing fires twice
    assert client.requests_in_flight() == 0


def test_a_hook_that_raises_is_logged_and_the_events_after_it_are_still_acted_on() -> None:
    class Broken(APIClient):
        def event_received(self, event: Any) -> None:
            raise RuntimeError("a bug in a hook")

    client, transport = Broken(), Recording()
    client.makeConnection(transport)
    call = client.call("a")
    [tag] = [box[b"_ask"] for box in boxes(b"".join(transport.writes))]
    event = serialize({b"_command": b"Publish", b"event": b"orders.created", b"payload": b"1"})
    with capturedLogs() as logged:
        client.dataReceived(event + answer(tag, b"7"))
    values: list[Any] = []
    call.addCallback(values.append)
    assert values == [7]
    assert [entry["event"] for entry in logged if entry.get("log_failure")] == ["EventReceived"]
