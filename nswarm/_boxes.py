"""
A faster AMP box parser and serialiser, wire-compatible with Twisted's.

Twisted's BinaryBoxProtocol reads every key and every value through
Int16StringReceiver, one method dispatch per string (stringReceived, then
proto_key / proto_value looked up by name). L{FastBoxes} replaces its
dataReceived with one loop over the buffer that does the same work inline.
It consumes each complete key or value at once, like the stock parser, so a
large value split over many reads is copied only once. Its sendBox writes
boxes with L{serialize}, which skips the stock serialiser's sorting and
per-key struct calls. (The protocols using it never switch protocols or
start TLS inside AMP, which the stock sendBox also handles.)
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp

log = Logger()
HEARTBEAT = b"Heartbeat"
#: Seconds between heartbeats; three silent intervals close a connection.
DEFAULT_HEARTBEAT = 10.0
_HEARTBEAT = amp.AmpBox({amp.COMMAND: HEARTBEAT})
#: The largest call argument, result or event payload a daemon or SDK accepts by default.
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
#: The keys an oversized box keeps, so that it can still be answered.
_CONTROL = frozenset({amp.COMMAND, amp.ASK, amp.ANSWER, amp.ERROR, amp.ERROR_CODE, amp.ERROR_DESCRIPTION})

MAX_KEY_LENGTH = amp.MAX_KEY_LENGTH
MAX_VALUE_LENGTH = amp.MAX_VALUE_LENGTH
_END = b"\x00\x00"


def _control(box: amp.AmpBox) -> amp.AmpBox:
    """The AMP control keys of C{box}: what answering it needs."""
    return amp.AmpBox({key: value for key, value in box.items() if key in _CONTROL})


def serialize(box: dict[bytes, bytes]) -> bytes:
    """The wire bytes of C{box}, or L{amp.TooLong} if a key or value is too long for AMP."""
    parts: list[bytes] = []
    for key, value in box.items():
        if len(key) > MAX_KEY_LENGTH:
            raise amp.TooLong(True, True, key, None)
        if len(value) > MAX_VALUE_LENGTH:
            raise amp.TooLong(False, True, value, key)
        parts += (len(key).to_bytes(2, "big"), key, len(value).to_bytes(2, "big"), value)
    parts.append(_END)
    return b"".join(parts)


class FastBoxes:
    """Mix in before L{amp.AMP}: parses incoming bytes into boxes in one loop, and serialises boxes quickly."""

    boxReceiver: amp.IBoxReceiver
    transport: ITransport | None
    _keyLengthLimitExceeded: bool

    _unparsed = b""
    _box: amp.AmpBox | None = None
    _key: bytes | None = None
    #: The most bytes (keys and values) and keys one incoming box may hold.
    max_box_size = DEFAULT_MAX_PAYLOAD + 64 * 1024
    max_keys = DEFAULT_MAX_PAYLOAD // MAX_VALUE_LENGTH + 64
    _size = 0
    _oversized = False
    #: Complete boxes received so far (heartbeats watch it move).
    boxes_received = 0
    _heartbeat: LoopingCall | None = None

    def dataReceived(self, data: bytes) -> None:
        # Limits are checked once per box and once per chunk of data, not per
        # key: a box can outgrow them by one chunk (at most 64 KiB from a
        # socket) before the excess is dropped.
        buffer = self._unparsed + data if self._unparsed else data
        end = len(buffer)
        offset = 0
        box, key, oversized = self._box, self._key, self._oversized
        # The box being read began at offset `begun` of this buffer (before
        # it, if it began in earlier data).
        begun = -self._size
        received = self.boxReceiver.ampBoxReceived
        while offset + 2 <= end:
            start = offset + 2
            stop = start + ((buffer[offset] << 8) | buffer[offset + 1])
            if key is None and stop - start > MAX_KEY_LENGTH:
                self._keyLengthLimitExceeded = True
                self.close_connection()
                return
            if stop > end:
                break
            offset = stop
            if key is not None:
                if not oversized or key in _CONTROL:
                    box[key] = buffer[start:stop]  # type: ignore[index]
                key = None
            elif stop > start:
                key = buffer[start:stop]
                if box is None:
                    box = amp.AmpBox()
            else:
                # An empty key ends the box.
                self.boxes_received += 1
                self._box = None
                complete = box if box is not None else amp.AmpBox()
                try:
                    if oversized or offset - begun > self.max_box_size or len(complete) > self.max_keys:
                        oversized = False
                        self.box_too_large(_control(complete))
                    else:
                        received(complete)
                except Exception:
                    self._malformed(complete)
                box, begun = None, offset
                if self.transport is None or getattr(self.transport, "disconnecting", False):
                    return
        if box is not None and not oversized and (offset - begun > self.max_box_size or len(box) > self.max_keys):
            # Too big: read the rest of the box, keeping only what is needed
            # to answer it, and hand it over as too large.
            oversized = True
            box = _control(box)
        self._unparsed = buffer[offset:]
        self._box, self._key, self._size, self._oversized = box, key, offset - begun, oversized

    def _malformed(self, box: amp.AmpBox) -> None:
        """
        Handling C{box} raised (an empty box, an answer to nothing, a command
        name that is not ASCII, ...): log it, answer its request with an AMP
        error if it has one, and go on with the connection's other boxes.
        """
        log.failure("a box from {peer} could not be handled", peer=self._peer())
        tag = box.get(amp.ASK)
        if tag is not None and self.transport is not None:
            self.transport.write(
                serialize(
                    {
                        amp.ERROR: tag,
                        amp.ERROR_CODE: amp.UNKNOWN_ERROR_CODE,
                        amp.ERROR_DESCRIPTION: b"this request could not be handled: see the receiver's log",
                    }
                )
            )

    def box_too_large(self, box: amp.AmpBox) -> None:
        """
        A box over L{max_box_size} or L{max_keys} arrived; C{box} holds only
        its AMP control keys. By default the connection is closed; protocols
        that can answer a typed error instead override this.
        """
        log.warn("closing the connection to {peer}: it sent a box over the size limit", peer=self._peer())
        self.close_connection()

    def close_connection(self, abort: bool = False) -> None:
        """Close the connection (at once, dropping buffered data, if C{abort})."""
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection() if abort else transport.loseConnection()

    def _peer(self) -> Any:
        return self.transport.getPeer() if self.transport is not None else None

    def sendBox(self, box: amp.AmpBox) -> None:
        if self.transport is None:
            raise ConnectionLost()
        self.transport.write(serialize(box))

    def send(self, box: amp.AmpBox) -> None:
        """Send C{box} unless the connection is gone (an answer is then moot)."""
        if self.transport is not None:
            self.transport.write(serialize(box))

    def start_heartbeats(self, clock: IReactorTime, interval: float) -> None:
        """
        Send a L{Heartbeat} every C{interval} seconds, and abort the
        connection once no box has arrived for three intervals in a row.
        """
        heard = [self.boxes_received]
        silent = [0]

        def beat() -> None:
            if self.boxes_received != heard[0]:
                heard[0], silent[0] = self.boxes_received, 0
            else:
                silent[0] += 1
                if silent[0] >= 3:
                    log.warn(
                        "closing the connection to {peer}: nothing heard for {seconds:g}s",
                        peer=self.transport.getPeer() if self.transport is not None else None,
                        seconds=3 * interval,
                    )
                    self.stop_heartbeats()
                    self.close_connection(abort=True)
                    return
            self.send(_HEARTBEAT)

        self.stop_heartbeats()
        self._heartbeat = LoopingCall(beat)
        self._heartbeat.clock = clock
        self._heartbeat.start(interval, now=False)

    def stop_heartbeats(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
