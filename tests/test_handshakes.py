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


class Timer:
    """A timer that reads take time on: each read a L{Costly} connection handles advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Costly(TLS):
    """A TLS protocol whose reads each cost C{cost} seconds of C{timer}."""

    def __init__(self, name: str, log: list[tuple[str, bytes]], timer: Timer, cost: float) -> None:
        super().__init__(name, log)
        self.timer = timer
        self.cost = cost

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.timer.now += self.cost


def four_first_reads() -> tuple[Turns, Handshakes, list[TLS], list[tuple[str, bytes]]]:
    """Connections a to d, paced two reads a turn (reads cost no time), each with its first read waiting."""
    clock, log = Turns(), []
    handshakes = Handshakes(clock, per_turn=2, timer=lambda: 0.0)
    connections = [TLS(name, log) for name in "abcd"]
    for connection in connections:
        handshakes.pace(connection)
        connection.dataReceived(connection.name.encode())
    return clock, handshakes, connections, log


def test_reads_before_authentication_are_handled_a_few_a_turn_in_the_order_they_came() -> None:
    clock, handshakes, connections, log = four_first_reads()
    # One read waits per connection: nothing more is read from it.
    assert not any(connection.transport.reading for connection in connections)
    assert log == [] and handshakes.waiting() == 4
    clock.turn()
    assert log == [("a", b"a"), ("b", b"b")]
    assert [connection.transport.reading for connection in connections] == [True, True, False, False]
    clock.turn()
    assert log[2:] == [("c", b"c"), ("d", b"d")]
    assert clock.calls == [] and handshakes.waiting() == 0


def test_a_connection_whose_handshake_has_begun_goes_before_those_that_have_not_but_one_a_turn() -> None:
    clock, _, connections, log = four_first_reads()
    clock.turn()
    assert log == [("a", b"a"), ("b", b"b")]
    connections[1].dataReceived(b"b2")  # b's next read (its certificate, then its Authenticate)
    connections[0].dataReceived(b"a2")
    clock.turn()
    assert log[2:] == [("c", b"c"), ("b", b"b2")]  # a new connection's read first, then those begun
    clock.turn()
    assert log[4:] == [("d", b"d"), ("a", b"a2")]
    connections[0].dataReceived(b"a3")
    connections[1].dataReceived(b"b3")
    clock.turn()
    assert log[6:] == [("a", b"a3"), ("b", b"b3")]  # no new one waits: those begun only
    assert clock.calls == []


def test_handshakes_kept_going_cannot_hold_new_connections_off() -> None:
    clock, log = Turns(), []
    handshakes = Handshakes(clock, per_turn=3, timer=lambda: 0.0)
    tricklers = [TLS(f"t{number}", log) for number in range(5)]
    for trickler in tricklers:
        handshakes.pace(trickler)
        trickler.dataReceived(b"hello")
    clock.turn()
    clock.turn()
    newcomers = [TLS(f"n{number}", log) for number in range(3)]
    for newcomer in newcomers:
        handshakes.pace(newcomer)
        newcomer.dataReceived(b"hello")
    for turn in range(3):
        del log[:]
        for trickler in tricklers:
            if trickler.transport.reading:
                trickler.dataReceived(b"x")  # one more byte of its handshake, as soon as it is read again
        clock.turn()
        assert log[0] == (f"n{turn}", b"hello") and len(log) == 3
    assert all(newcomer.transport.reading for newcomer in newcomers)


def test_a_turn_ends_once_its_reads_have_taken_the_budget_and_takes_one_at_least() -> None:
    clock, log, timer = Turns(), [], Timer()
    handshakes = Handshakes(clock, per_turn=8, budget=0.002, timer=timer)
    cheap = [Costly(name, log, timer, 0.0008) for name in "abcd"]
    dear = Costly("dear", log, timer, 0.005)
    for connection in [dear, *cheap]:
        handshakes.pace(connection)
        connection.dataReceived(connection.name.encode())
    clock.turn()
    assert [name for name, _ in log] == ["dear"]  # over the budget alone: it still had its turn
    clock.turn()
    assert [name for name, _ in log][1:] == ["a", "b", "c"]  # 0.8 + 0.8 + 0.8 ms: the third crosses 2 ms
    clock.turn()
    assert [name for name, _ in log][4:] == ["d"]
    assert clock.calls == [] and all(connection.transport.reading for connection in [dear, *cheap])


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
