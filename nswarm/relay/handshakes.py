"""
Handshakes wait their turn: what a connection sends before it has
authenticated (its TLS handshake and its C{Authenticate}) is handled a few
connections per reactor turn, so that a crowd of nodes registering at once
cannot make the turns of the connections already open long. A handshake
costs the master about a millisecond of CPU; two hundred of them read in one
turn would hold every call of every other node for a fifth of a second.

A turn handles reads until it has spent L{defaults.HANDSHAKE_TURN_BUDGET}
seconds on them (at least one, at most L{defaults.HANDSHAKE_READS_PER_TURN}):
what a read costs varies tenfold (a ClientHello's key exchange and
signature, a certificate to verify, an C{Authenticate}), and more on a busy
machine, so a count alone let a turn run to tens of milliseconds.

Only the reads of connections not yet authenticated are paced: once a
connection authenticates, L{Handshakes.release} takes it out, and its reads
go straight to its TLS protocol as before (nothing is added to them).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from nswarm import defaults


class Handshakes:
    """
    The reads of one listener's unauthenticated connections, queued in the
    order they came and handed on a few at a time, one reactor turn
    (C{clock.callLater(0)}) after another: in each turn, until C{budget}
    seconds have gone on them (by C{timer}), and at most C{per_turn}. A
    connection with a read queued is not read from (its transport is paused)
    until that read is handled, so that what waits is at most one read per
    connection.
    """

    def __init__(
        self,
        clock: Any,
        per_turn: int = defaults.HANDSHAKE_READS_PER_TURN,
        budget: float = defaults.HANDSHAKE_TURN_BUDGET,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.clock = clock
        self.per_turn = per_turn
        self.budget = budget
        self.timer = timer
        #: The first reads of connections (their ClientHellos), and the later reads of those already begun.
        self.fresh: deque[tuple[Any, bytes]] = deque()
        self.begun: deque[tuple[Any, bytes]] = deque()
        self._scheduled: Any = None

    def pace(self, protocol: Any) -> None:
        """Queue C{protocol}'s reads (the TLS protocol of a connection just accepted) until L{release}."""
        queue = self.fresh

        def arrived(data: bytes) -> None:
            nonlocal queue
            queue.append((protocol, data))
            queue = self.begun
            protocol.transport.pauseProducing()
            if self._scheduled is None:
                self._scheduled = self.clock.callLater(0, self._turn)

        protocol.dataReceived = arrived

    def release(self, protocol: Any) -> None:
        """C{protocol}'s connection has authenticated: its reads go straight to it from now on."""
        vars(protocol).pop("dataReceived", None)

    def waiting(self) -> int:
        """How many reads wait."""
        return len(self.fresh) + len(self.begun)

    def _turn(self) -> None:
        # The reads of connections already begun go first, so that those
        # finish (and free their slot under the listener's HANDSHAKES_AT_ONCE)
        # before more begin: a crowd then registers a steady stream of nodes,
        # instead of all of them slowly at once, each nearer its deadline.
        # But a turn's first read is a new connection's, if one waits: peers
        # that keep their handshakes going (a byte at a time, say) cannot
        # hold every new connection off until their deadlines.
        self._scheduled = None
        fresh, begun = self.fresh, self.begun
        timer = self.timer
        ends = timer() + self.budget
        for handled in range(min(self.per_turn, len(fresh) + len(begun))):
            protocol, data = (fresh if handled == 0 and fresh else begun or fresh).popleft()
            transport = protocol.transport
            if transport is None or not transport.connected:
                continue  # it closed while its read waited
            type(protocol).dataReceived(protocol, data)
            if transport.connected:
                transport.resumeProducing()
            if timer() >= ends:
                break
        if fresh or begun:
            self._scheduled = self.clock.callLater(0, self._turn)
