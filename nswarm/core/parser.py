"""
The incremental AMP box parser of the sans-IO core: bytes in, complete
boxes out, with the size limits. Wire-compatible with Twisted's parser,
and the same loop as L{nswarm.framing.FastBoxes.dataReceived} (which the
relays keep inline, with their per-box hooks, for speed): each complete key
or value is consumed at once, so a large value split over many reads is
copied only once.
"""

from __future__ import annotations

from dataclasses import dataclass

from nswarm import defaults
from nswarm.core.wire import (
    ANSWER,
    ASK,
    COMMAND,
    ERROR,
    ERROR_CODE,
    ERROR_DESCRIPTION,
    ID,
    MAX_KEY_LENGTH,
    MAX_VALUE_LENGTH,
)
from nswarm.errors import NswarmError

Box = dict[bytes, bytes]

#: The keys an oversized box keeps, so that it can still be answered (and an oversized Part still names its call).
CONTROL = frozenset({COMMAND, ASK, ANSWER, ERROR, ERROR_CODE, ERROR_DESCRIPTION, ID})


class ProtocolViolation(NswarmError):
    """The peer sent bytes that are not AMP (a key over 255 bytes): close the connection; it is not an nswarm peer."""

    code = b"PROTOCOL_VIOLATION"


@dataclass(frozen=True)
class Oversized:
    """A box over the limits arrived: C{box} holds only its AMP control keys, so that it can be answered."""

    box: Box


def control(box: Box) -> Box:
    """The AMP control keys of C{box}: what answering it needs."""
    return {key: value for key, value in box.items() if key in CONTROL}


class BoxParser:
    """
    Parses a stream of AMP boxes. C{max_box_size} bytes (keys and values)
    and C{max_keys} keys bound one box: a larger one is read to its end but
    handed over as L{Oversized}, keeping only its control keys.
    """

    def __init__(
        self,
        max_box_size: int = defaults.MAX_PAYLOAD + defaults.BOX_OVERHEAD,
        max_keys: int = defaults.MAX_PAYLOAD // MAX_VALUE_LENGTH + defaults.EXTRA_KEYS,
    ) -> None:
        self.max_box_size = max_box_size
        self.max_keys = max_keys
        self._unparsed = b""
        self._box: Box | None = None
        self._key: bytes | None = None
        self._size = 0
        self._oversized = False

    def feed(self, data: bytes) -> list[Box | Oversized]:
        """
        The boxes completed by C{data}, in order; L{ProtocolViolation} if
        the stream is not AMP. Limits are checked once per box and once per
        chunk of data, as the relays' parser does.
        """
        buffer = self._unparsed + data if self._unparsed else data
        end = len(buffer)
        offset = 0
        box, key, oversized = self._box, self._key, self._oversized
        begun = -self._size
        out: list[Box | Oversized] = []
        while offset + 2 <= end:
            start = offset + 2
            stop = start + ((buffer[offset] << 8) | buffer[offset + 1])
            if key is None and stop - start > MAX_KEY_LENGTH:
                raise ProtocolViolation("the peer sent a key over AMP's 255 bytes: it is not an nswarm peer")
            if stop > end:
                break
            offset = stop
            if key is not None:
                if not oversized or key in CONTROL:
                    box[key] = buffer[start:stop]  # type: ignore[index]
                key = None
            elif stop > start:
                key = buffer[start:stop]
                if box is None:
                    box = {}
            else:  # an empty key ends the box
                complete = box if box is not None else {}
                if oversized or offset - begun > self.max_box_size or len(complete) > self.max_keys:
                    out.append(Oversized(control(complete)))
                    oversized = False
                else:
                    out.append(complete)
                box, begun = None, offset
        if box is not None and not oversized and (offset - begun > self.max_box_size or len(box) > self.max_keys):
            oversized = True
            box = control(box)
        self._unparsed = buffer[offset:]
        self._box, self._key, self._size, self._oversized = box, key, offset - begun, oversized
        return out
