"""
Back-pressure for one connection of a relay: the connection is a push
producer on its socket (below TLS, if any). While the socket's send buffer
is full, the peer is not reading: the relay stops reading from it, so that
it cannot make the relay queue more for it; events for it are bounded by its
C{subscriber_buffer} (the rest dropped, counted and logged), everything by
its C{send_buffer} (past it, the connection is closed).

While a peer is ejected for its silence (L{nswarm.relay.ejection}) its
events are held here instead of written (L{Backpressure.hold}): written,
they would sit in kernel buffers, where a reset loses them uncounted. Held,
they are bounded by the same C{subscriber_buffer}, written in order when it
answers again (L{Backpressure.release}), and counted as dropped if its
connection closes first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from nswarm import defaults
from nswarm.boxes import serialize
from nswarm.relay.turn import WAITING_BYTES, end_of_turn
from nswarm.sockets import no_delay, write_through


@implementer(IPushProducer)
class Backpressure:
    """Mix in before the AMP protocol of a relay connection (L{nswarm.relay.protocol.RelayProtocol})."""

    log: Logger
    transport: Any
    clock: Any
    role: str
    name: str
    subscriber_buffer: int
    send_buffer: int

    #: True while events for it count against C{subscriber_buffer}: the transport's buffer is full (the peer is
    #: not reading what is sent to it), or its events are held (it is ejected).
    paused = False
    #: True while the transport's buffer is full.
    _full = False
    #: The events held while it is ejected (None: not held), and their bytes.
    _held: list[bytes] | None = None
    _held_bytes = 0
    #: Bytes written since the transport's buffer filled.
    backlog = 0
    #: Events dropped because this peer was not reading them.
    events_dropped = 0
    #: Events written while its buffer was full: lost if the connection closes before it drains.
    events_waiting = 0
    _socket: Any = None
    #: The events written this reactor turn, to go out together at its end (see L{write}), and their bytes.
    _turn: list[bytes] | None = None
    _turn_bytes = 0
    _overflowed = False
    _reading_paused = False
    #: Whether it is at its calls-in-flight cap (and not read from).
    capped = False
    _drops_unlogged = 0
    _next_drop_log = 0.0

    if TYPE_CHECKING:

        @property
        def description(self) -> str:
            """How logs name this connection (provided by the protocol)."""

    def produce_into_socket(self) -> None:
        """Register as the producer of the socket under this connection (call once connected)."""
        # Registered below TLS: a TLS transport with a producer registered
        # does not close until it is unregistered, which Twisted's own
        # loseConnection calls (AMP's, on a fatal error) would not do.
        socket = write_through(no_delay(self.transport))
        self._socket = socket
        socket.registerProducer(self, True)

    def pauseProducing(self) -> None:
        """
        The socket's send buffer is full, the peer is not reading (or not
        yet): events for it now count against C{subscriber_buffer}, and
        answers and events against C{send_buffer}; past
        L{nswarm.defaults.READ_PAUSE_BACKLOG} of them, what the peer sends is
        no longer read (so that it cannot make us queue more for it) until
        the buffer drains.
        """
        self.paused = self._full = True

    def resumeProducing(self) -> None:
        """The socket's send buffer has drained: read from the peer again."""
        self._full = False
        held = self._held
        self.paused = held is not None
        self.backlog = self._held_bytes
        self.events_waiting = len(held) if held is not None else 0
        if self._socket.disconnecting:
            # A closing transport resumes a paused producer, instead of
            # closing, once its buffer has drained: let it close.
            self._socket.unregisterProducer()
        elif self._reading_paused:
            self._reading_paused = False
            if not self.capped:
                self._socket.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is lost: connectionLost follows."""

    def send(self, box: amp.AmpBox) -> None:
        """Send C{box} unless the connection is gone; while the peer is not reading, within C{send_buffer}."""
        if self._turn is not None:
            self.write_events()
        if self.transport is not None:
            data = serialize(box)
            if self._full:
                self._buffered(len(data))
            self.transport.write(data)

    def cap(self) -> None:
        """
        This peer has as many calls in flight as it may: read nothing more
        from it until one of them is done (L{uncap}), so that it cannot spin
        on Overloaded answers.
        """
        if not self.capped:
            self.capped = True
            if not self._reading_paused:
                self._socket.pauseProducing()

    def uncap(self) -> None:
        """One of its calls is done: read from it again."""
        self.capped = False
        if not self._reading_paused and not self._socket.disconnecting:
            self._socket.resumeProducing()

    def send_request(self, box: amp.AmpBox) -> None:
        """
        Send a request forwarded to this peer. It does not count against
        C{send_buffer}: what a relay forwards is bounded by its callers'
        calls in flight, and a busy implementer is not one that stopped
        reading (its callers' answers back up, and those are counted).
        """
        if self._turn is not None:
            self.write_events()
        if self.transport is not None:
            self.transport.write(serialize(box))

    def sendBox(self, box: amp.AmpBox) -> None:
        """Write C{box} (AMP's own commands and answers) after the events of this turn."""
        if self._turn is not None:
            self.write_events()
        super().sendBox(box)  # type: ignore[misc]

    def close_connection(self, abort: bool = False) -> None:
        """Close the connection: after the events of this turn, or (C{abort}) at once, dropping them."""
        if abort:
            self._turn = None
        else:
            self.write_events()
        super().close_connection(abort)  # type: ignore[misc]

    def _buffered(self, size: int) -> None:
        """C{size} more bytes wait for a peer that is not reading: past C{send_buffer}, close the connection."""
        self.backlog += size
        if not self._reading_paused and self.backlog > defaults.READ_PAUSE_BACKLOG:
            self._reading_paused = True
            if not self.capped:
                self._socket.pauseProducing()
        if self.backlog > self.send_buffer and not self._overflowed:
            self._overflowed = True
            self.log.warn(
                "closing the connection to {peer}: it has not read {backlog:,} bytes sent to it, over the "
                "limit of {limit:,} (send-buffer); it must read its answers and events",
                peer=self.description,
                backlog=self.backlog,
                limit=self.send_buffer,
                nswarm_event="send_buffer_full",
                role=self.role,
                name=self.name,
            )
            self.close_connection(abort=True)

    def write(self, data: bytes) -> None:
        """
        Write an already serialised box (an event) unless the connection is
        gone. The events of one reactor turn go out together at its end
        (L{nswarm.relay.turn}), in one write: a subscriber wakes once for
        them all, and a TLS connection sends them as one record. Whatever
        else is written to the connection first writes the events before
        it, so that its order is kept; past L{WAITING_BYTES} of them they
        are written at once.
        """
        if self.transport is None:
            return
        if self.paused:
            self.events_waiting += 1
            if self._held is not None:
                self._held.append(data)
                self._held_bytes += len(data)
                self.backlog += len(data)
                return
            self._buffered(len(data))
            if self._overflowed:
                return
        waiting = self._turn
        if waiting is None:
            self._turn = [data]
            self._turn_bytes = len(data)
            end_of_turn(self.clock).wait(self)
            return
        waiting.append(data)
        self._turn_bytes += len(data)
        if self._turn_bytes > WAITING_BYTES:
            self.write_events()

    def write_events(self) -> None:
        """Write the events of this turn that wait (see L{write}) now."""
        waiting = self._turn
        if waiting is not None:
            self._turn = None
            if self.transport is not None:
                self.transport.write(waiting[0] if len(waiting) == 1 else b"".join(waiting))

    def hold(self) -> None:
        """
        It is ejected for its silence: keep its events here, within
        C{subscriber_buffer}, until L{release} (or until its connection
        closes: then they are counted as dropped).
        """
        if self._held is None:
            self.write_events()  # taken before it was ejected
            self._held = []
            self.paused = True

    def release(self) -> None:
        """It answers again: write the events held for it, in order, and write the next ones as they come."""
        held = self._held
        if held is None:
            return
        self.backlog -= self._held_bytes
        self.events_waiting -= len(held)
        self._held = None
        self._held_bytes = 0
        self.paused = self._full
        for data in held:
            self.write(data)

    def may_buffer(self, size: int) -> bool:
        """
        The transport's buffer is full: may an event of C{size} bytes wait
        in it too? Up to C{subscriber_buffer} bytes may; past that the event
        is dropped, counted, and logged at most every
        L{nswarm.defaults.DROP_LOG_INTERVAL} seconds.
        """
        if self.backlog + size <= self.subscriber_buffer:
            return True
        self.events_dropped += 1
        self._drops_unlogged += 1
        now = self.clock.seconds()
        if now >= self._next_drop_log:
            self._next_drop_log = now + defaults.DROP_LOG_INTERVAL
            self._log_drops()
        return False

    def drop_waiting(self) -> int:
        """
        The connection is closed: count as dropped, and log, the events
        still waiting for it (held, or in its transport's full buffer); return how many.
        """
        waiting = self.events_waiting if self.paused else 0
        if waiting:
            self.events_dropped += waiting
            self.log.warn(
                "the connection to {peer} closed with {count} events still waiting for it: dropped, {total} in all",
                peer=self.description,
                count=waiting,
                total=self.events_dropped,
                nswarm_event="events_dropped",
                role=self.role,
                name=self.name,
            )
        return waiting

    def _log_drops(self) -> None:
        self.log.warn(
            "{peer} is not reading its events as fast as they come and {limit:,} bytes already wait for it: "
            "dropped {count} since the last warning, {total} in all; make it faster or raise subscriber-buffer",
            count=self._drops_unlogged,
            peer=self.description,
            total=self.events_dropped,
            limit=self.subscriber_buffer,
            nswarm_event="events_dropped",
            role=self.role,
            name=self.name,
        )
        self._drops_unlogged = 0
