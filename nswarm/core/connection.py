"""
The client end of one nswarm connection, sans IO: an API user's to the
master, or a service's to its node. A front end feeds it the bytes it read
(L{Connection.receive_data}) and the time (C{now}, on any monotonic clock
in seconds), writes what L{Connection.data_to_send} returns, and acts on
L{Connection.events} (see L{nswarm.core.events})::

    connection = Connection(now=loop.time())
    tag = connection.authenticate(key)
    transport.write(connection.data_to_send())
    ...
    connection.receive_data(data, loop.time())
    for event in connection.events():
        ...   # Answered(tag, value), Failed(tag, error), TimerWanted(at), ...

Every request gets a tag and a deadline (its timeout plus L{MARGIN}): past
it, on a L{Connection.tick}, it fails L{DeadlineExceeded} and a C{Cancel}
goes upstream, so that a stopped peer cannot leave a request unanswered.
Once L{Connection.start_heartbeats} is called, a C{Heartbeat} goes out every
interval and a peer silent for L{defaults.HEARTBEAT_MISSES} intervals ends
the connection (L{ConnectionClosed}). Streamed results: L{nswarm.core.streaming}
(the caller's side) and L{nswarm.core.running} (the service's).
"""

from __future__ import annotations

import heapq

from nswarm import defaults
from nswarm.caller import Caller
from nswarm.codec import decode
from nswarm.core import wire
from nswarm.core.answers import Parse, nothing
from nswarm.core.boxes import Box, error_box, get_payload, remote_error, serialize
from nswarm.core.events import (
    Answered,
    ConnectionClosed,
    Event,
    EventReceived,
    Failed,
    Refused,
    TimerWanted,
)
from nswarm.core.parser import BoxParser, Oversized, ProtocolViolation
from nswarm.core.requests import MakesRequests
from nswarm.core.running import Outgoing, RunsCalls
from nswarm.core.streaming import CallsStreams, Incoming
from nswarm.errors import (
    DeadlineExceeded,
    Draining,
    InternalError,
    NswarmError,
    PayloadTooLarge,
    UpstreamUnavailable,
)

#: How long past its deadline a request waits for the relay's own answer before this end fails it.
MARGIN = 0.05


class Connection(MakesRequests, CallsStreams, RunsCalls):
    """
    One connection's protocol state. C{peer} ("master" or "node") names the
    other end in error messages; C{timeout} is the default deadline of a
    request, C{max_payload} the largest payload sent or accepted, in bytes.
    """

    def __init__(
        self,
        *,
        now: float,
        peer: str = "master",
        timeout: float = defaults.CALL_TIMEOUT,
        max_payload: int = defaults.MAX_PAYLOAD,
        deadlines: bool = True,
    ) -> None:
        self.peer = peer
        #: Whether this end keeps its requests' deadlines (a front end with no clock yet turns it off).
        self.keeps_deadlines = deadlines
        #: Whether a request a draining peer refused (it did not run) comes as L{Refused}, to send elsewhere.
        self.takes_refused = False
        self.timeout = timeout
        self.max_payload = max_payload
        self.parser = BoxParser(max_payload + defaults.BOX_OVERHEAD)
        self.now = now
        #: Complete boxes received so far, and events that could not be decoded (dropped).
        self.boxes_received = 0
        self.dropped_events = 0
        self.closed = False
        self._tags = 0
        self._out: list[bytes] = []
        self._events: list[Event] = []
        #: Requests sent and not yet answered: tag -> (how to read the answer, the box sent, its deadline).
        self._waiting: dict[bytes, tuple[Parse, Box, float]] = {}
        #: A heap of (deadline, tag); entries of requests answered since are dropped as they reach the top.
        self._deadlines: list[tuple[float, bytes]] = []
        #: Calls received that want an answer and have none yet.
        self._running: set[bytes] = set()
        self._callers: dict[bytes, Caller | None] = {}
        #: Streamed calls made and not yet ended (their windows), and those received that are running.
        self._incoming: dict[bytes, Incoming] = {}
        self._outgoing: dict[bytes, Outgoing] = {}
        self._heartbeat: float | None = None
        self._next_beat: float | None = None
        self._heard = 0
        self._silent = 0
        self._wanted: float | None = None
        #: Whether the time wanted may have moved (the next look at the events works it out again).
        self._rearm = False
        #: The last timeout sent, and its text in a Call (most calls have the same).
        self._timeout_text: tuple[float, bytes] = (-1.0, b"")

    # -- I/O -----------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes to write to the peer now (and forget)."""
        out, self._out = self._out, []
        return b"".join(out)

    def take(self) -> tuple[bytes, list[Event]]:
        """L{data_to_send} and L{events} in one: what to write now, then what happened (and forget both)."""
        if self._rearm:
            self._want_timer()
        out = self._out
        if out:
            self._out = []
            data = b"".join(out)
        else:
            data = b""
        events = self._events
        if events:
            self._events = []
        return data, events

    def events(self) -> list[Event]:
        """What happened since the last look, in order (and forget it)."""
        if self._rearm:
            self._want_timer()
        events, self._events = self._events, []
        return events

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the peer, at time C{now}."""
        self.now = now
        if self.closed:
            return
        try:
            boxes = self.parser.feed(data)
        except ProtocolViolation as error:
            self._close(error)
            return
        for box in boxes:
            self.boxes_received += 1
            if isinstance(box, Oversized):
                self._oversized(box.box)
            else:
                self._box_received(box)

    def tick(self, now: float) -> None:
        """The time is C{now}: fail the requests past their deadlines, send and watch heartbeats."""
        self.now = now
        self._rearm = True
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, tag = heapq.heappop(deadlines)
            if self._waiting.pop(tag, None) is not None:
                self._incoming.pop(tag, None)
                self._send({wire.COMMAND: wire.CANCEL, wire.ID: tag})
                self._events.append(
                    Failed(
                        tag,
                        DeadlineExceeded(
                            f"the deadline passed with no answer from the {self.peer} (this client's own check): it "
                            "may be stopped or overloaded; the call may or may not have run"
                        ),
                    )
                )
        beat = self._next_beat
        if beat is not None and beat <= now and self._heartbeat is not None:
            if self.boxes_received != self._heard:
                self._heard, self._silent = self.boxes_received, 0
            else:
                self._silent += 1
                if self._silent >= defaults.HEARTBEAT_MISSES:
                    seconds = defaults.HEARTBEAT_MISSES * self._heartbeat
                    self._close(
                        UpstreamUnavailable(f"nothing heard from the {self.peer} for {seconds:g} s: it is gone")
                    )
                    return
            self._send({wire.COMMAND: wire.HEARTBEAT})
            self._next_beat = now + self._heartbeat

    def next_tick(self) -> float | None:
        """When L{tick} is next needed (the next deadline or heartbeat), or None."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in self._waiting:
            heapq.heappop(deadlines)
        times = [t for t in (deadlines[0][0] if deadlines else None, self._next_beat) if t is not None]
        return min(times) if times else None

    def start_heartbeats(self, interval: float) -> None:
        """Send a heartbeat every C{interval} seconds from now, and close once the peer is silent for three."""
        self._heartbeat = interval
        self._heard, self._silent = self.boxes_received, 0
        self._next_beat = self.now + interval
        self._rearm = True

    def stop_heartbeats(self) -> None:
        """Send and watch no more heartbeats (the connection is closing)."""
        self._heartbeat = self._next_beat = None
        self._rearm = True

    def connection_lost(self, error: BaseException | None = None) -> None:
        """
        The transport is gone: every request still waiting fails, with
        C{error} if given (a TLS failure says more), else L{UpstreamUnavailable}.
        """
        self.closed = True
        self._heartbeat = self._next_beat = None
        waiting, self._waiting = self._waiting, {}
        self._deadlines = []
        self._running.clear()
        self._incoming.clear()
        self._outgoing.clear()
        for tag in waiting:
            self._events.append(Failed(tag, error if error is not None else self.connection_gone()))

    def connection_gone(self) -> UpstreamUnavailable:
        """What a request fails with once the connection is gone."""
        return UpstreamUnavailable(
            f"the connection to the {self.peer} closed before an answer came: "
            "the request may or may not have been carried out; reconnect and retry if that is safe"
        )

    @property
    def in_flight(self) -> int:
        """How many requests sent have no answer yet."""
        return len(self._waiting)

    # -- requests ------------------------------------------------------------

    def request(self, box: Box, parse: Parse = nothing, timeout: float | None = None) -> bytes:
        """Send request C{box} with a new tag and a deadline C{timeout} seconds away; return the tag."""
        if self.closed:
            raise self.connection_gone()
        self._tags += 1
        tag = b"%x" % self._tags
        box[wire.ASK] = tag
        self._out.append(serialize(box))
        deadline = self.now + (self.timeout if timeout is None else timeout) + MARGIN
        waiting = self._waiting
        waiting[tag] = (parse, box, deadline)
        if wire.STREAM in box:
            self._incoming[tag] = Incoming(int(box[wire.STREAM]))
        if self.keeps_deadlines:
            deadlines = self._deadlines
            heapq.heappush(deadlines, (deadline, tag))
            if len(deadlines) > 2 * len(waiting) + 64:  # mostly answered: keep it to the requests that wait
                self._deadlines = [entry for entry in deadlines if entry[1] in waiting]
                heapq.heapify(self._deadlines)
            wanted = self._wanted
            if wanted is None or deadline < wanted:
                self._rearm = True
        return tag

    def cancel(self, tag: bytes) -> bool:
        """Give up on request C{tag}: forget it and send C{Cancel} upstream; False if it is not waiting."""
        if self._waiting.pop(tag, None) is None:
            return False
        self._incoming.pop(tag, None)
        self._send({wire.COMMAND: wire.CANCEL, wire.ID: tag})
        return True

    # -- inside ----------------------------------------------------------------

    def _send(self, box: Box) -> None:
        if not self.closed:
            self._out.append(serialize(box))

    def _close(self, error: NswarmError) -> None:
        self.connection_lost(error if isinstance(error, UpstreamUnavailable) else None)
        self._events.append(ConnectionClosed(error))

    def _want_timer(self) -> None:
        self._rearm = False
        wanted = None if self.closed else self.next_tick()
        if wanted is not None and wanted != self._wanted:
            self._events.append(TimerWanted(wanted))
        self._wanted = wanted

    def _answered(self, tag: bytes, box: Box) -> None:
        entry = self._waiting.pop(tag, None)
        if entry is None:
            return  # a late answer, to a request given up: dropped
        if self._incoming:
            self._incoming.pop(tag, None)
        if wire.ANSWER not in box:
            error = remote_error(box)
            if self.takes_refused and isinstance(error, Draining):
                sent = entry[1]
                del sent[wire.ASK]
                self._events.append(Refused(tag, error, sent, entry[0], entry[2] - MARGIN - self.now))
                return
            self._events.append(Failed(tag, error))
            return
        try:
            value = entry[0](box)
        except NswarmError as error:
            self._events.append(Failed(tag, error))
        except Exception as error:  # an answer that does not parse: not from an nswarm relay
            self._events.append(Failed(tag, InternalError(f"the answer could not be read ({error!r}): report it")))
        else:
            self._events.append(Answered(tag, value))

    def _box_received(self, box: Box) -> None:
        command = box.get(wire.COMMAND)
        if command is None:  # an answer or an error (or neither: answered below)
            tag = box.get(wire.ANSWER)
            if tag is None:
                tag = box.get(wire.ERROR)
            if tag is not None:
                self._answered(tag, box)
                return
        ask = box.get(wire.ASK)
        if command == wire.PUBLISH:
            if ask is not None:
                self._send({wire.ANSWER: ask})
            try:
                event = box[wire.EVENT].decode("utf-8")
                payload = box.get(wire.PAYLOAD)
                if payload is None or len(payload) >= wire.CHUNK:  # missing, or split across keys
                    payload = get_payload(box, wire.PAYLOAD)
                value = decode(payload)
            except (NswarmError, KeyError, UnicodeDecodeError):
                self.dropped_events += 1
                return
            self._events.append(EventReceived(event, value))
        elif command == wire.PART:
            self._part_received(box)
        elif command == wire.MORE:
            self._more_received(box)
        elif command == wire.CALL:
            self._call_received(box, ask)
        elif command == wire.CANCEL:
            self._cancel_received(box)
        elif command == wire.HEARTBEAT:
            if ask is not None:  # a relay's probe: is this end alive?
                self._send({wire.ANSWER: ask})
        elif ask is not None:
            self._send(
                {
                    wire.ERROR: ask,
                    wire.ERROR_CODE: wire.UNHANDLED_ERROR_CODE,
                    wire.ERROR_DESCRIPTION: b"this end does not handle " + (command or b"boxes without a command"),
                }
            )

    def _oversized(self, box: Box) -> None:
        tag = box.get(wire.ANSWER, box.get(wire.ERROR))
        if tag is not None and tag in self._waiting:
            del self._waiting[tag]
            self._incoming.pop(tag, None)
            error = PayloadTooLarge(f"the answer is over the limit of {self.max_payload:,} bytes: ask for less")
            self._events.append(Failed(tag, error))
        elif box.get(wire.COMMAND) == wire.PART:
            self._part_oversized(box)
        elif wire.COMMAND in box and wire.ASK in box:
            too_large = PayloadTooLarge(f"the request is over the limit of {self.max_payload:,} bytes: send less")
            self._send(error_box(box[wire.ASK], too_large))
