"""
Framing: a faster AMP box parser (wire-compatible with Twisted's), with the
payload limits, and heartbeats, mixed into every nswarm connection.

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
from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from twisted.protocols import amp

from nswarm import defaults
from nswarm.amp_commands import ASK, COMMAND, ERROR, ERROR_CODE, ERROR_DESCRIPTION, HEARTBEAT
from nswarm.boxes import MAX_KEY_LENGTH, MAX_VALUE_LENGTH, serialize
from nswarm.core.parser import CONTROL
from nswarm.failures import address_text
from nswarm.heartbeat_wheel import Wheel, wheel
from nswarm.sockets import socket_counters

log = Logger()
_HEARTBEAT = amp.AmpBox({COMMAND: HEARTBEAT})
#: The counts of malformed boxes at which a connection's are logged again.
_DECADES = frozenset(10**power for power in range(1, 12))
#: The keys an oversized box keeps, so that it can still be answered (the sans-IO parser's set).
_CONTROL = CONTROL


def _control(box: amp.AmpBox) -> amp.AmpBox:
    """The AMP control keys of C{box}: what answering it needs."""
    return amp.AmpBox({key: value for key, value in box.items() if key in _CONTROL})


class FastBoxes:
    """Mix in before C{amp.AMP}: parses incoming bytes into boxes in one loop, and serialises boxes quickly."""

    boxReceiver: amp.IBoxReceiver
    transport: ITransport | None

    _unparsed = b""
    _box: amp.AmpBox | None = None
    _key: bytes | None = None
    #: The most bytes (keys and values) and keys one incoming box may hold.
    max_box_size = defaults.MAX_PAYLOAD + defaults.BOX_OVERHEAD
    max_keys = defaults.MAX_PAYLOAD // MAX_VALUE_LENGTH + defaults.EXTRA_KEYS
    _size = 0
    _oversized = False
    #: Complete boxes received so far (heartbeats watch it move).
    boxes_received = 0
    #: Boxes received that could not be handled.
    malformed = 0
    #: When the heartbeat last saw a box arrive (it looks once an interval).
    heard_at = 0.0
    #: The socket's byte counts (received, sent) when the heartbeat last looked (see L{socket_counters}).
    traffic: tuple[int, int] | None = None
    _discarding = False
    _heartbeat: Wheel | None = None

    def makeConnection(self, transport: ITransport) -> None:
        """
        Start the connection as AMP does, without AMP's own log line, which
        shows the addresses' reprs: nswarm logs its connections itself
        ("connected", "disconnected"), as C{HOST:PORT}.
        """
        amp.BinaryBoxProtocol.makeConnection(self, transport)  # type: ignore[arg-type]

    def connectionLost(self, reason: Any) -> None:
        """End the connection as AMP does (the transport is gone), without its log line (see L{makeConnection})."""
        amp.BinaryBoxProtocol.connectionLost(self, reason)  # type: ignore[arg-type]
        self.transport = None

    def dataReceived(self, data: bytes) -> None:
        # Limits are checked once per box and once per chunk of data, not per
        # key: a box can outgrow them by one chunk (at most 64 KiB from a
        # socket) before the excess is dropped.
        if self._discarding:
            return
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
                log.warn("closing the connection to {peer}: it sent a key over AMP's 255 bytes", peer=self._peer())
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
                    self._discarding = True  # nothing more is read from a closing connection
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
        Only the first one of a connection is logged with its traceback; then
        a line at the 10th, 100th, 1000th, ..., so that a flood of them cannot
        flood the log.
        """
        self.malformed += 1
        if self.malformed == 1:
            log.failure("a box from {peer} could not be handled", peer=self._peer())
        elif self.malformed in _DECADES:
            log.warn(
                "{peer} has sent {count:,} boxes that could not be handled: not all are logged",
                peer=self._peer(),
                count=self.malformed,
                nswarm_event="malformed_boxes",
            )
        tag = box.get(ASK)
        if tag is not None:
            self.send(
                amp.AmpBox(
                    {
                        ERROR: tag,
                        ERROR_CODE: amp.UNKNOWN_ERROR_CODE,
                        ERROR_DESCRIPTION: b"this request could not be handled: see the receiver's log",
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

    def _peer(self) -> str:
        """The peer, for logs: its address as C{HOST:PORT} (or a socket path), never an object's repr."""
        return address_text(self.transport.getPeer() if self.transport is not None else None)

    def sendBox(self, box: amp.AmpBox) -> None:
        """Write C{box}, or raise C{ConnectionLost} if the connection is gone (as AMP's own does)."""
        if self.transport is None:
            raise ConnectionLost()
        self.transport.write(serialize(box))

    def send(self, box: amp.AmpBox) -> None:
        """Send C{box} unless the connection is gone (an answer is then moot)."""
        if self.transport is not None:
            self.transport.write(serialize(box))

    def start_heartbeats(self, clock: Any, interval: float) -> None:
        """
        Send a L{nswarm.amp_commands.Heartbeat} every C{interval} seconds (on
        C{clock}, an C{IReactorTime}), and
        abort the connection once no box has arrived for
        L{nswarm.defaults.HEARTBEAT_MISSES} intervals in a row.
        """
        heard = [self.boxes_received]
        silent = [0]

        def beat() -> None:
            self.traffic = socket_counters(self.transport) or self.traffic
            if self.boxes_received != heard[0]:
                heard[0], silent[0] = self.boxes_received, 0
                self.heard_at = clock.seconds()
            else:
                silent[0] += 1
                if silent[0] >= defaults.HEARTBEAT_MISSES:
                    log.warn(
                        "closing the connection to {peer}: nothing heard for {seconds:g}s",
                        peer=self._peer(),
                        seconds=defaults.HEARTBEAT_MISSES * interval,
                    )
                    self.stop_heartbeats()
                    self.close_connection(abort=True)
                    return
            self.send(_HEARTBEAT)

        self.stop_heartbeats()
        self._heartbeat = wheel(clock, interval)
        self._heartbeat.join(self, beat)

    def stop_heartbeats(self) -> None:
        """Stop sending and watching heartbeats (the connection is closing)."""
        if self._heartbeat is not None:
            self._heartbeat.leave(self)
        self._heartbeat = None
