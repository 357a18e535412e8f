"""
Handshakes wait their turn: what a connection sends before it has
authenticated (its TLS handshake and its C{Authenticate}) is handled a few
connections per reactor turn, so that a crowd of nodes registering at once
cannot make the turns of the connections already open long. A handshake
costs the master about a millisecond of CPU; two hundred of them read in one
turn would hold every call of every other node for a fifth of a second.

Only the reads of connections not yet authenticated are paced: once a
connection authenticates, L{Handshakes.release} takes it out, and its reads
go straight to its TLS protocol as before (nothing is added to them).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from nswarm import defaults


class Handshakes:
    """
    The reads of one listener's unauthenticated connections, queued in the
    order they came and handed on C{per_turn} at a time, one reactor turn
    (C{clock.callLater(0)}) after another. A connection with a read queued
    is not read from (its transport is paused) until that read is handled,
    so that what waits is at most one read per connection.
    """

    def __init__(self, clock: Any, per_turn: int = defaults.HANDSHAKE_READS_PER_TURN) -> None:
        self.clock = clock
        self.per_turn = per_turn
        self.queue: deque[tuple[Any, bytes]] = deque()
        self._scheduled: Any = None

    def pace(self, protocol: Any) -> None:
        """Queue C{protocol}'s reads (the TLS protocol of a connection just accepted) until L{release}."""

        def arrived(data: bytes) -> None:
            self.queue.append((protocol, data))
            protocol.transport.pauseProducing()
            if self._scheduled is None:
                self._scheduled = self.clock.callLater(0, self._turn)

        protocol.dataReceived = arrived

    def release(self, protocol: Any) -> None:
        """C{protocol}'s connection has authenticated: its reads go straight to it from now on."""
        vars(protocol).pop("dataReceived", None)

    def _turn(self) -> None:
        self._scheduled = None
        queue = self.queue
        for _ in range(min(self.per_turn, len(queue))):
            protocol, data = queue.popleft()
            transport = protocol.transport
            if transport is None or not transport.connected:
                continue  # it closed while its read waited
            type(protocol).dataReceived(protocol, data)
            if transport.connected:
                transport.resumeProducing()
        if queue:
            self._scheduled = self.clock.callLater(0, self._turn)
