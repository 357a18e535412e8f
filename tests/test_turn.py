"""
Tier 1: a relay writes the events of one reactor turn to a connection
together at the turn's end, in the order they came, before anything else
written to that connection after them; and a close writes them first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from nswarm.boxes import serialize
from nswarm.core.parser import BoxParser
from nswarm.relay.turn import WAITING_BYTES, end_of_turn
from nswarm.service import Service, subscribe

from .support import Cluster


class Events(Service):
    """Keeps the payloads of the events it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[Any] = []

    @subscribe("t.>")
    def seen(self, event: str, payload: Any) -> None:
        self.got.append(payload)


def event(n: int, size: int = 10) -> bytes:
    return serialize({b"_command": b"Publish", b"event": b"t.e", b"payload": b'"%d%s"' % (n, b"x" * size)})


def subscribed() -> tuple[Cluster, Events, Any, list[bytes]]:
    """A node with one subscriber, and the writes the node makes to that subscriber's connection from now on."""
    cluster = Cluster()
    node, _, _ = cluster.add_node("a")
    service = Events()
    _, server = cluster.add_service(node, service)
    writes: list[bytes] = []
    write = server.transport.write

    def recorded(data: bytes) -> None:
        writes.append(data)
        write(data)

    server.transport.write = recorded
    return cluster, service, server, writes


def boxes(writes: list[bytes]) -> list[dict[bytes, bytes]]:
    return [dict(box) for box in BoxParser().feed(b"".join(writes))]  # type: ignore[call-overload]


def test_the_events_of_a_turn_go_out_in_one_write_at_its_end_in_order() -> None:
    cluster, service, server, writes = subscribed()
    for n in range(5):
        server.write(event(n))
    assert writes == []  # the turn is not over
    cluster.clock.advance(0)
    assert len(writes) == 1 and writes[0] == b"".join(event(n) for n in range(5))
    cluster.flush()
    assert service.got == [f"{n}xxxxxxxxxx" for n in range(5)]


def test_what_is_written_after_events_goes_after_them() -> None:
    cluster, service, server, writes = subscribed()
    server.write(event(0))
    server.write(event(1))
    server.send_cancel(b"7")
    server.write(event(2))
    assert [box.get(b"_command") for box in boxes(writes)] == [b"Publish", b"Publish", b"Cancel"]
    cluster.clock.advance(0)
    assert [box.get(b"payload") for box in boxes(writes)] == [
        b'"0xxxxxxxxxx"',
        b'"1xxxxxxxxxx"',
        None,
        b'"2xxxxxxxxxx"',
    ]


def test_past_the_bytes_a_turn_may_hold_the_events_are_written_at_once() -> None:
    cluster, service, server, writes = subscribed()
    size = 10_000
    count = WAITING_BYTES // size + 1
    for n in range(count):
        server.write(event(n, size))
    assert len(writes) == 1 and len(boxes(writes)) == count
    server.write(event(count, size))
    assert len(writes) == 1
    cluster.flush()
    assert len(writes) == 2 and len(service.got) == count + 1


def test_a_close_writes_the_events_first_and_an_abort_drops_them() -> None:
    cluster, service, server, writes = subscribed()
    server.write(event(0))
    server.close_connection()
    assert boxes(writes) == [dict(BoxParser().feed(event(0))[0])]  # type: ignore[call-overload]
    cluster.flush()
    assert service.got == ["0xxxxxxxxxx"]

    cluster, service, server, writes = subscribed()
    server.write(event(0))
    server.close_connection(abort=True)
    cluster.flush()
    assert writes == [] and service.got == []


def test_a_peer_not_reading_counts_the_events_of_the_turn_and_gets_them_at_its_end() -> None:
    cluster, service, server, writes = subscribed()
    server.pauseProducing()  # its socket's buffer is full
    for n in range(3):
        server.write(event(n))
    assert server.events_waiting == 3 and server.backlog == 3 * len(event(0)) and writes == []
    cluster.clock.advance(0)
    assert len(writes) == 1 and len(boxes(writes)) == 3


def test_events_taken_before_a_peer_is_ejected_are_written_and_the_next_are_held() -> None:
    cluster, service, server, writes = subscribed()
    server.write(event(0))
    server.hold()
    server.write(event(1))
    assert boxes(writes) == [dict(BoxParser().feed(event(0))[0])]  # type: ignore[call-overload]
    server.release()
    cluster.flush()
    assert service.got == ["0xxxxxxxxxx", "1xxxxxxxxxx"]


class Connection:
    """Records when it was written, or raises."""

    def __init__(self, name: str, written: list[str], raises: bool = False) -> None:
        self.name, self.written, self.raises = name, written, raises

    def write_events(self) -> None:
        if self.raises:
            raise RuntimeError("a broken connection")
        self.written.append(self.name)


def test_one_call_a_turn_writes_every_waiting_connection_in_order_and_a_failure_is_logged() -> None:
    clock = Clock()
    turn = end_of_turn(clock)
    assert end_of_turn(clock) is turn and end_of_turn(Clock()) is not turn
    written: list[str] = []
    for connection in [Connection("a", written), Connection("b", written, raises=True), Connection("c", written)]:
        turn.wait(connection)
    assert len(clock.getDelayedCalls()) == 1 and written == []
    with capturedLogs() as logged:
        clock.advance(0)
    assert written == ["a", "c"] and clock.getDelayedCalls() == []
    assert [event["log_format"] for event in logged] == ["writing the events of a connection failed"]
    turn.wait(Connection("d", written))  # the next turn has a call of its own
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert written == ["a", "c", "d"]
