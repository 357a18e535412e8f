"""
The end of a reactor turn, for the events a relay writes: those written to
one connection during a turn go out together once the turn's reads are
handled, in one write: one TLS record and one system call for the
connection instead of one (and Twisted's bookkeeping of a buffered write)
per event. See L{nswarm.relay.backpressure.Backpressure.write}.

There is one L{EndOfTurn} per clock. The first connection to wait in a turn
schedules it with C{callLater(0)}: the reactor runs it once this turn's
reads are handled, before it polls again, which is when Twisted would have
sent a buffered write anyway. It then writes each waiting connection's
events, in the order the connections began waiting.
"""

from __future__ import annotations

from typing import Any, Protocol
from weakref import WeakKeyDictionary

from twisted.logger import Logger

log = Logger()

#: Bytes of events that may wait for the end of a turn on one connection: past them they are written at once,
#: so that the transport's buffer (64 KiB in Twisted) tells as soon as before whether the peer keeps up.
WAITING_BYTES = 65536


class WritesEvents(Protocol):
    """A connection whose events of a turn wait for its end."""

    def write_events(self) -> None:
        """Write the events that wait now."""


_turns: WeakKeyDictionary[Any, EndOfTurn] = WeakKeyDictionary()


def end_of_turn(clock: Any) -> EndOfTurn:
    """The L{EndOfTurn} of C{clock} (an C{IReactorTime}), made the first time it is asked for."""
    turn = _turns.get(clock)
    if turn is None:
        turn = _turns[clock] = EndOfTurn(clock)
    return turn


class EndOfTurn:
    """Writes, at the end of each reactor turn, the events of the connections that wait for it."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        #: The connections to write at the end of this turn, in the order they began waiting.
        self.waiting: list[WritesEvents] = []
        self._call: Any = None

    def wait(self, connection: WritesEvents) -> None:
        """
        Call C{connection.write_events()} at the end of this turn. A
        connection asks when its first event of the turn waits; one whose
        events were written early (something else was written after them)
        asks again for those that come after, and is called twice.
        """
        self.waiting.append(connection)
        if self._call is None:
            self._call = self.clock.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        waiting, self.waiting = self.waiting, []
        for connection in waiting:
            try:
                connection.write_events()
            except Exception:
                log.failure("writing the events of a connection failed")
