"""
The caller's side of streamed results, mixed into
L{nswarm.core.connection.Connection}: a call sent with C{stream=window}
(see L{nswarm.core.connection.Connection.call}) gets its parts as
L{PartReceived} events, in order, then its L{Answered} (the number of parts)
or L{Failed}. The front end tells the core each time its consumer takes a
part (L{CallsStreams.consumed}); once it has taken half the window since
the last grant, a C{More} for that many goes upstream. The producer never
has more than the window on its way, so what waits here is bounded by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nswarm.codec import decode
from nswarm.core import wire
from nswarm.core.boxes import Box, get_payload
from nswarm.core.events import Event, Failed, PartReceived
from nswarm.errors import InternalError, NswarmError, PayloadTooLarge


@dataclass
class Incoming:
    """A streamed call this end made: its window, parts taken since the last grant, parts it may still receive."""

    window: int
    taken: int = 0
    allowed: int = 0

    def __post_init__(self) -> None:
        self.allowed = self.window

    @property
    def step(self) -> int:
        """How many parts each C{More} grants: half the window (at least one)."""
        return max(1, self.window // 2)


class CallsStreams:
    """Mix in before the connection's own class: the parts of streamed calls, and the grants of more."""

    _incoming: dict[bytes, Incoming]
    _waiting: dict[bytes, Any]
    _events: list[Event]
    _send: Any
    max_payload: int

    def consumed(self, tag: bytes, count: int = 1) -> None:
        """The consumer of streamed call C{tag} took C{count} more parts: grant the producer more once due."""
        incoming = self._incoming.get(tag)
        if incoming is None or tag not in self._waiting:
            return
        incoming.taken += count
        step = incoming.step
        while incoming.taken >= step:
            incoming.taken -= step
            incoming.allowed += step
            self._send({wire.COMMAND: wire.MORE, wire.ID: tag, wire.COUNT: b"%d" % step})

    def _stream_failed(self, tag: bytes, error: NswarmError) -> None:
        """Give up on streamed call C{tag} at this end: fail it, and cancel it upstream."""
        self._waiting.pop(tag, None)
        self._incoming.pop(tag, None)
        self._send({wire.COMMAND: wire.CANCEL, wire.ID: tag})
        self._events.append(Failed(tag, error))

    def _part_received(self, box: Box) -> None:
        tag = box.get(wire.ID, b"")
        incoming = self._incoming.get(tag)
        if incoming is None or tag not in self._waiting:
            return  # a part of a call given up: dropped
        if incoming.allowed <= 0:
            error = InternalError("the service sent more parts than this caller's window allows: report it")
            self._stream_failed(tag, error)
            return
        try:
            value = decode(get_payload(box, wire.RESULT))
        except NswarmError as error:
            self._stream_failed(tag, error)
            return
        incoming.allowed -= 1
        self._events.append(PartReceived(tag, value))

    def _part_oversized(self, box: Box) -> None:
        tag = box.get(wire.ID, b"")
        if tag in self._incoming and tag in self._waiting:
            too_large = PayloadTooLarge(f"a part is over the limit of {self.max_payload:,} bytes: ask for less")
            self._stream_failed(tag, too_large)
