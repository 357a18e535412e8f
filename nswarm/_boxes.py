"""
A faster AMP box parser, wire-compatible with Twisted's.

Twisted's BinaryBoxProtocol reads every key and every value through
Int16StringReceiver, one method dispatch per string (stringReceived, then
proto_key / proto_value looked up by name). L{FastBoxParsing} replaces its
dataReceived with one loop over the buffer that does the same work inline.
It consumes each complete key or value at once, like the stock parser, so a
large value split over many reads is copied only once.
"""

from __future__ import annotations

from twisted.internet.interfaces import ITransport
from twisted.protocols import amp

MAX_KEY_LENGTH = amp.MAX_KEY_LENGTH


class FastBoxParsing:
    """Mix in before L{amp.AMP}: parses incoming bytes into boxes in one loop."""

    boxReceiver: amp.IBoxReceiver
    transport: ITransport | None
    _keyLengthLimitExceeded: bool

    _unparsed = b""
    _box: amp.AmpBox | None = None
    _key: bytes | None = None

    def dataReceived(self, data: bytes) -> None:
        buffer = self._unparsed + data if self._unparsed else data
        end = len(buffer)
        offset = 0
        box = self._box
        key = self._key
        received = self.boxReceiver.ampBoxReceived
        while offset + 2 <= end:
            start = offset + 2
            stop = start + ((buffer[offset] << 8) | buffer[offset + 1])
            if key is None and stop - start > MAX_KEY_LENGTH:
                self._keyLengthLimitExceeded = True
                if self.transport is not None:
                    self.transport.loseConnection()
                return
            if stop > end:
                break
            offset = stop
            if key is not None:
                box[key] = buffer[start:stop]  # type: ignore[index]
                key = None
            elif stop > start:
                key = buffer[start:stop]
                if box is None:
                    box = amp.AmpBox()
            else:
                # An empty key ends the box.
                self._box = None
                received(box if box is not None else amp.AmpBox())
                box = None
                if self.transport is None or getattr(self.transport, "disconnecting", False):
                    return
        self._unparsed = buffer[offset:]
        self._box = box
        self._key = key
