"""The reads of connections not yet authenticated wait their turn (nswarm.relay.handshakes)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from nswarm.relay.handshakes import Handshakes


class Turns:
    """Reactor turns: C{callLater(0, f)} runs at the next L{turn}, as in a reactor (a call added in a turn waits)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callLater(self, delay: float, f: Any) -> Any:
        self.calls.append(f)
        return f

    def turn(self) -> None:
        calls, self.calls = self.calls, []
        for f in calls:
            f()


class Transport:
    """What the pacing touches of a TCP transport: whether it is connected, and reading."""

    def __init__(self) -> None:
        self.connected = True
        self.reading = True

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True


class TLS:
    """A TLS protocol: its class's dataReceived records what reaches it."""

    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.log = log
        self.transport = Transport()

    def dataReceived(self, data: bytes) -> None:
        self.log.append((self.name, data))


def test_reads_before_authentication_are_handled_a_few_a_turn_in_the_order_they_came() -> None:
    clock, log = Turns(), []
    handshakes = Handshakes(clock, per_turn=2)
    connections = [TLS(name, log) for name in "abc"]
    for connection in connections:
        handshakes.pace(connection)
        connection.dataReceived(connection.name.encode())
        assert not connection.transport.reading  # one read waits per connection: nothing more is read from it
    assert log == []
    clock.turn()
    assert log == [("a", b"a"), ("b", b"b")]
    assert (
        connections[0].transport.reading and connections[1].transport.reading and not connections[2].transport.reading
    )
    connections[0].dataReceived(b"a2")  # its next read queues behind c's
    clock.turn()
    assert log[2:] == [("c", b"c"), ("a", b"a2")]
    assert clock.calls == []


def test_an_authenticated_connection_reads_straight_through_and_a_closed_ones_read_is_dropped() -> None:
    clock, log = Clock(), []
    handshakes = Handshakes(clock)
    done, gone = TLS("done", log), TLS("gone", log)
    for connection in (done, gone):
        handshakes.pace(connection)
    gone.dataReceived(b"hello")
    gone.transport.connected = False
    handshakes.release(done)
    done.dataReceived(b"call")
    assert log == [("done", b"call")]  # no turn waited for
    clock.advance(0)
    assert log == [("done", b"call")]
