"""
The Twisted adapter of the sans-IO core, under both Twisted SDKs (as
L{nswarm.aio.protocol} is under the asyncio one): a protocol that feeds a
L{nswarm.core.connection.Connection} the bytes it reads and the reactor's
time, writes what the core has to send, keeps one timer at the time the
core asks for, and turns the core's events into Deferreds fired and hooks
called. The protocol rules (tags, answers, typed errors, deadlines,
heartbeats, payload limits, streamed parts) are the core's, the same for
every front end; nothing here decides them.
"""

from __future__ import annotations

from inspect import iscoroutine
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from nswarm import defaults
from nswarm.core import wire
from nswarm.core.answers import Parse
from nswarm.core.connection import Connection
from nswarm.core.events import (
    Answered,
    CallReceived,
    CancelReceived,
    ConnectionClosed,
    EventReceived,
    Failed,
    MoreReceived,
    PartReceived,
    Refused,
    TimerWanted,
)
from nswarm.errors import NoSuchMethod, NswarmError, UpstreamUnavailable
from nswarm.failures import TLS_FAILURES, address_text
from nswarm.sockets import no_delay, write_through
from nswarm.streams import Stream

__all__ = ["CoreProtocol", "Keeper", "call_handler"]


def call_handler(handler: Any, event: str, payload: Any, failed: Any, *args: Any) -> None:
    """
    Call event handler C{handler(event, payload)}; if it raises, or returns
    a Deferred or coroutine that fails, call C{failed(failure, *args)}. A
    plain value needs no Deferred: most handlers return None.
    """
    try:
        result = handler(event, payload)
    except Exception:
        failed(Failure(), *args)
        return
    if result is None:  # most handlers; and isinstance() of Deferred, an ABC, is a Python call
        return
    if iscoroutine(result):
        result = Deferred.fromCoroutine(result)
    if isinstance(result, Deferred):
        result.addErrback(failed, *args)


class Keeper(Protocol):
    """
    What keeps a client's requests across its connections: an API client
    that reconnects (L{nswarm.api_reconnect.Reconnector}).
    """

    def send(self, box: dict[bytes, bytes], parse: Parse, timeout: float, method: str | None) -> Deferred[Any]:
        """
        Send request C{box} now, or once a connection is ready if none is
        (within C{timeout} seconds); send it again after a lost connection if
        C{method} may be. Fires as L{ClientProtocol.request_box} does.
        """

    def refused(self, error: NswarmError) -> bool:
        """
        A request was refused with C{error} (a draining master: it did not
        run): True if it is to be sent again, through L{send}.
        """


class CoreProtocol(TwistedProtocol):
    """
    One connection of an SDK end. The protocol state is L{core}'s, a new
    one per connection; the requests' Deferreds are kept here, by tag.
    Deadlines and heartbeats run once L{start_heartbeats} gives the
    reactor's clock. Subclasses override the hooks (L{event_received},
    L{call_received}, ...) for what the peer sends.
    """

    log = Logger()
    peer = "master"
    #: Seconds a call may take when the caller gives no timeout.
    timeout = defaults.CALL_TIMEOUT
    #: Keeps the requests across connections (an API client that reconnects), or None: they go out or fail.
    keeper: Keeper | None = None
    #: Whether requests go to the keeper to wait (no connection is ready) rather than out at once.
    holding = False
    #: The methods whose calls the keeper sends again after a lost connection (the user declared them idempotent).
    idempotent: frozenset[str] = frozenset()
    #: The C{IReactorTime} deadlines and heartbeats run on, once L{start_heartbeats} gives it.
    clock: Any = None

    def __init__(self) -> None:
        self._max_payload = defaults.MAX_PAYLOAD
        self.core = self._new_core()
        #: The requests sent and not answered yet, by tag: the Deferreds their callers hold.
        self._deferreds: dict[bytes, Deferred[Any]] = {}
        #: Streamed calls made, by tag.
        self._streams: dict[bytes, Stream] = {}
        #: Requests refused without running and sent again: their new Deferreds, by their old tags.
        self._moved: dict[bytes, Deferred[Any]] = {}
        self._timer: Any = None
        self._dropped = 0
        #: Whether the core's events are being acted on now (see L{flush}).
        self._handling = False

    @property
    def max_payload(self) -> int:
        """The largest arguments, result or event payload sent, in bytes."""
        return self._max_payload

    @max_payload.setter
    def max_payload(self, value: int) -> None:
        """Change the limit, for this connection and the next ones."""
        self._max_payload = self.core.max_payload = value

    def _new_core(self) -> Connection:
        core = Connection(now=0.0, peer=self.peer, timeout=self.timeout, max_payload=self._max_payload, deadlines=False)
        core.takes_refused = True  # a request a draining master refused goes to the keeper (L{_refused})
        return core

    # -- Twisted's Protocol ----------------------------------------------------

    def connectionMade(self) -> None:
        write_through(no_delay(self.transport))

    def dataReceived(self, data: bytes) -> None:
        core = self.core
        clock = self.clock
        core.receive_data(data, clock.seconds() if clock is not None else 0.0)
        self.flush()
        if core.dropped_events != self._dropped:
            self._dropped = core.dropped_events
            self.log.warn("dropped an event that is not valid: it was not sent by an nswarm SDK")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.transport = None
        self._stop_timer()
        error = reason.value if reason is not None and reason.check(*TLS_FAILURES) else None
        self.core.connection_lost(error)
        self.flush()

    def forget_connection(self) -> None:
        """Before this protocol takes a new connection (an API client reconnecting): a new core."""
        self._stop_timer()
        self.clock = None
        self.core = self._new_core()
        self._dropped = 0

    def close_connection(self, abort: bool = False) -> None:
        """Close the connection (at once, dropping buffered data, if C{abort})."""
        transport: Any = self.transport
        if transport is None:
            return
        if abort:
            transport.abortConnection()
            return
        self.write_pending()  # what was sent before the close goes first (an answer in a drain)
        transport.loseConnection()

    def write_pending(self) -> None:
        """Write what the core has to send now, without acting on its events (see L{flush})."""
        data = self.core.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    # -- requests ----------------------------------------------------------------

    def request_box(self, box: dict[bytes, bytes], parse: Parse, timeout: float | None = None) -> Deferred[Any]:
        """
        Send request C{box} with a new tag, due within C{timeout} seconds (by
        default L{timeout}); the Deferred fires with C{parse(answer)}, or
        fails with the typed error answered. Cancelling it sends
        L{nswarm.amp_commands.Cancel} for the request. A box with a stream
        window is a streamed call, whose L{Stream} is C{parse}'s object.
        """
        if self.transport is None:
            return fail(self.core.connection_gone())
        try:
            tag = self.core.request(box, parse, self.timeout if timeout is None else timeout)
        except NswarmError:
            return fail()
        stream = getattr(parse, "__self__", None)
        if isinstance(stream, Stream):
            self._streams[tag] = stream
            stream.consume = lambda: self._consumed(tag)
        return self._deferred(tag)

    def requests_in_flight(self) -> int:
        """How many requests sent on this connection have no answer yet."""
        return self.core.in_flight

    def connection_gone(self) -> UpstreamUnavailable:
        """What a request fails with once the connection is gone."""
        return self.core.connection_gone()

    def _deferred(self, tag: bytes) -> Deferred[Any]:
        """The Deferred of request C{tag}, just made; what it made goes out now."""
        d: Deferred[Any] = Deferred(lambda _: self._cancel(tag))
        self._deferreds[tag] = d
        self.flush()
        return d

    def _cancel(self, tag: bytes) -> None:
        """The caller cancelled its request C{tag}: cancel it upstream, or where it was moved to."""
        moved = self._moved.pop(tag, None) if self._moved else None
        if moved is not None:
            moved.cancel()
            return
        self._deferreds.pop(tag, None)
        self._streams.pop(tag, None)
        if self.core.cancel(tag):
            self.flush()

    def _consumed(self, tag: bytes) -> None:
        """The reader of streamed call C{tag} took a part: the core grants more once due."""
        self.core.consumed(tag)
        self.flush()

    # -- heartbeats and the timer ------------------------------------------------

    def start_heartbeats(self, clock: Any, interval: float) -> None:
        """
        On C{clock} (an C{IReactorTime}): keep the deadlines of the requests
        sent from now on, send a heartbeat every C{interval} seconds, and
        close the connection once the peer is silent for
        L{nswarm.defaults.HEARTBEAT_MISSES} of them.
        """
        self.clock = clock
        core = self.core
        core.now = clock.seconds()
        core.keeps_deadlines = True
        core.start_heartbeats(interval)
        self.flush()

    def stop_heartbeats(self) -> None:
        """Stop the heartbeats (the connection is closing)."""
        self.core.stop_heartbeats()
        self._stop_timer()

    def _want(self, at: float) -> None:
        """The core wants a tick at C{at}: move the timer there if it is later."""
        clock = self.clock
        if clock is None or self.transport is None:
            return
        timer = self._timer
        delay = max(at - clock.seconds(), 0.0)
        if timer is not None and timer.active():
            if timer.getTime() > at:
                timer.reset(delay)
            return
        self._timer = clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        core = self.core
        core.tick(self.clock.seconds())
        self.flush()
        wanted = core.next_tick()
        if wanted is not None:
            self._want(wanted)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- what the core says --------------------------------------------------------

    def flush(self) -> None:
        """
        Write what the core has to send, and act on its events, until it has
        neither. Called while events are being acted on (a callback that
        calls again, a handler that answers), it leaves that to the loop
        already running: what they send goes out in one write, after them.
        """
        if self._handling:
            return
        core = self.core
        while True:
            data, events = core.take()
            if data and self.transport is not None:
                self.transport.write(data)
            if not events:
                return
            self._handling = True
            try:
                self._handle(events)
            finally:
                self._handling = False

    def _handle(self, events: list[Any]) -> None:  # the core's Events (Any: the kinds are told apart by type)
        deferreds = self._deferreds
        for event in events:
            try:
                kind = type(event)
                if kind is Answered or kind is Failed:
                    tag = event.tag
                    d = deferreds.pop(tag, None)
                    if self._streams:
                        self._streams.pop(tag, None)
                    if d is not None and not d.called:
                        d.callback(event.value) if kind is Answered else d.errback(event.error)
                elif kind is EventReceived:
                    self.event_received(event)
                elif kind is CallReceived:
                    self.call_received(event)
                elif kind is PartReceived:
                    stream = self._streams.get(event.tag)
                    if stream is not None:
                        stream.part(event.value)
                elif kind is TimerWanted:
                    self._want(event.at)
                elif kind is Refused:
                    self._refused(event)
                elif kind is CancelReceived:
                    self.cancel_received(event)
                elif kind is MoreReceived:
                    self.more_received(event)
                elif kind is ConnectionClosed:
                    self.log.warn(
                        "closing the connection to {peer}: {reason}",
                        peer=address_text(self.transport.getPeer() if self.transport is not None else None),
                        reason=event.error,
                    )
                    self.close_connection(abort=True)
            except Exception:  # a hook's bug: logged, and the other events are still acted on
                self.log.failure("acting on {event} raised", event=type(event).__name__)

    def _refused(self, event: Refused) -> None:
        """A draining master refused request C{event.tag} before it ran: to the keeper, to send again."""
        tag = event.tag
        d = self._deferreds.pop(tag, None)
        stream = self._streams.pop(tag, None) if self._streams else None
        if d is None or d.called:
            return
        keeper = self.keeper
        if keeper is None or not keeper.refused(event.error):
            d.errback(event.error)
            return
        box = event.box
        command = box.get(wire.COMMAND)
        method = box[wire.METHOD].decode("utf-8") if stream is None and command in (wire.CALL, wire.CALL_ALL) else None
        again = keeper.send(box, event.parse, max(event.seconds, 0.001), method)
        self._moved[tag] = again

        def fired(outcome: Any) -> None:
            self._moved.pop(tag, None)
            if not d.called:
                d.callback(outcome)  # a Failure errbacks it

        again.addBoth(fired)

    # -- hooks for what the peer sends -------------------------------------------

    def event_received(self, event: EventReceived) -> None:
        """An event for this connection's subscriptions (an API user's, a service's)."""

    def call_received(self, call: CallReceived) -> None:
        """A call to run: only a service runs calls."""
        self.core.fail(call.tag, NoSuchMethod("this connection is an API client, which runs no calls: call a service"))

    def cancel_received(self, cancel: CancelReceived) -> None:
        """A call this end runs was cancelled by its caller (or its deadline)."""

    def more_received(self, more: MoreReceived) -> None:
        """The caller of a streamed call this end runs took more parts."""
