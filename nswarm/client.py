"""
What the two SDKs share: the client end of an AMP connection (to the master
for the API SDK, to a node for the service SDK), which sends calls and
events as JSON and turns failures into nswarm's typed errors.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.protocols import amp
from twisted.python.failure import Failure

from nswarm import defaults
from nswarm.amp_commands import (
    ANSWER,
    ARGS,
    ASK,
    CALL,
    CALL_ALL,
    CANCEL,
    COMMAND,
    ERROR,
    EVENT,
    EXCLUDE,
    HANDED_TO,
    HEARTBEAT,
    ID,
    METHOD,
    PART,
    PAYLOAD,
    PUBLISH,
    RESULT,
    RESULTS,
    STREAM,
    TIMEOUT,
    Authenticate,
    NswarmError,
    PayloadTooLarge,
    UpstreamUnavailable,
)
from nswarm.boxes import error_box, get_payload, parse_frames, put_payload
from nswarm.codec import decode, encode, encode_arguments
from nswarm.deadlines import MARGIN, LocalDeadlines
from nswarm.framing import FastBoxes
from nswarm.requests import Parse, Requests
from nswarm.sockets import no_delay
from nswarm.streams import Stream


def check_key(key: Any) -> bytes:
    """C{key} if it is an auth key (bytes), else a TypeError saying how to pass one."""
    if not isinstance(key, bytes) or not key:
        raise TypeError(
            f"the auth key must be non-empty bytes, not {type(key).__name__}: "
            "read it with nswarm.config.read_secret_file(PATH), or pass key.encode()"
        )
    return key


class Keeper(Protocol):
    """
    What keeps a client's requests across its connections: an API client
    that reconnects (L{nswarm.api_reconnect.Reconnector}).
    """

    def send(self, box: amp.AmpBox, parse: Parse, timeout: float, method: str | None) -> Deferred[Any]:
        """
        Send request C{box} now, or once a connection is ready if none is
        (within C{timeout} seconds); send it again after a lost connection if
        C{method} may be. Fires as L{Requests.request_box} does.
        """

    def refused(self, box: amp.AmpBox) -> bool:
        """
        Error box C{box} came, before it fails its request: True if that
        request is to be sent again (a draining master refused it before it
        ran), through L{send}.
        """


class ClientProtocol(LocalDeadlines, Requests, FastBoxes, amp.AMP):
    """
    The SDK end of a connection to the master (API SDK) or a node (service
    SDK). Calls and events are sent as boxes built here, and their answers
    are matched by tag, without AMP's Command and Deferred machinery per
    request: the SDK ends are where most of a call's CPU goes.
    """

    peer = "master"
    #: Seconds a call may take when the caller gives no timeout.
    timeout = defaults.CALL_TIMEOUT
    #: The largest arguments, result or event payload sent or accepted, in bytes.
    max_payload = defaults.MAX_PAYLOAD
    #: Keeps the requests across connections (an API client that reconnects), or None: they go out or fail.
    keeper: Keeper | None = None
    #: Whether requests go to the keeper to wait (no connection is ready) rather than out at once.
    holding = False
    #: The methods whose calls the keeper sends again after a lost connection (the user declared them idempotent).
    idempotent: frozenset[str] = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self._timeout_cache: tuple[float, bytes] | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        no_delay(self.transport)

    def authenticate(self, key: bytes, name: str | None = None) -> Deferred[Any]:
        """Send L{Authenticate} with C{key} (and the name the server logs this end by)."""
        arguments: dict[str, Any] = {"key": check_key(key)}
        if name:
            arguments["name"] = name
        return self.request(Authenticate, **arguments)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Call C{method} on some service in the cluster; the Deferred fires with
        its result or fails with a typed L{nswarm.amp_commands.NswarmError}.
        """
        return self.call_with_timeout(self.timeout, method, *args, **kwargs)

    def _timeout_value(self, timeout: float) -> bytes:
        """C{timeout} as the Call box carries it (cached: most calls use the default)."""
        cached = self._timeout_cache
        if cached is None or cached[0] != timeout:
            cached = self._timeout_cache = (timeout, repr(float(timeout)).encode("ascii"))
        return cached[1]

    def call_with_timeout(self, timeout: float, method: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        L{call} with a deadline C{timeout} seconds away: past it the call
        fails with L{nswarm.amp_commands.DeadlineExceeded} and is cancelled
        all the way to its handler. Cancelling the returned Deferred cancels
        the call the same way.
        """
        try:
            data = self.checked(encode_arguments(args, kwargs), "call arguments")
        except NswarmError:
            return fail()
        box = amp.AmpBox({COMMAND: CALL, METHOD: method.encode("utf-8"), TIMEOUT: self._timeout_value(timeout)})
        put_payload(box, ARGS, data)
        if self.holding or method in self.idempotent:
            return self._kept(box, _call_result, timeout, method)
        d = self.request_box(box, _call_result)
        self.keep_deadline(box, timeout)
        return d

    def stream(
        self, method: str, /, *args: Any, window: int | None = None, timeout: float | None = None, **kwargs: Any
    ) -> Stream:
        """
        Call C{method}, whose handler streams its result (a generator), and
        return the L{Stream} of its parts: C{async for part in
        client.stream(...)}, or L{Stream.next}. At most C{window} parts (16
        by default, at most 1024) are on their way at once: a reader that
        does not take them holds the service back. C{timeout} (by default
        L{timeout}) is the deadline of the whole stream.
        """
        window = defaults.STREAM_WINDOW if window is None else window
        if not 0 < window <= defaults.MAX_STREAM_WINDOW:
            raise ValueError(f"window must be 1 to {defaults.MAX_STREAM_WINDOW} parts, not {window!r}")
        timeout = self.timeout if timeout is None else timeout
        stream = Stream(window)
        try:
            data = self.checked(encode_arguments(args, kwargs), "call arguments")
        except NswarmError:
            stream.started(fail())
            return stream
        box = amp.AmpBox(
            {
                COMMAND: CALL,
                METHOD: method.encode("utf-8"),
                TIMEOUT: self._timeout_value(timeout),
                STREAM: b"%d" % window,
            }
        )
        put_payload(box, ARGS, data)
        if self.holding:
            stream.started(self._kept(box, stream.answered, timeout, None))  # never sent again once it ran
        else:
            stream.started(self.request_box(box, stream.answered))
            self.keep_deadline(box, timeout)
        return stream

    def _part(self, box: amp.AmpBox) -> None:
        """A part of a streamed result: to its L{Stream} (the parse of its request), if it is still waited for."""
        tag = box.get(ID, b"")
        request = self._waiting.get(tag)
        stream = getattr(request[1], "__self__", None) if request is not None else None
        if isinstance(stream, Stream):
            try:
                stream.part(box, self.send)
            except NswarmError as error:  # a part that is not valid JSON: not from an nswarm SDK
                self.send(amp.AmpBox({COMMAND: CANCEL, ID: tag}))
                self.fail_request(tag, error)

    def call_all(self, method: str, /, *args: Any, **kwargs: Any) -> Deferred[list[Any]]:
        """
        Call C{method} on every service that implements it now; the Deferred
        fires with one entry per service, in no particular order: its result,
        or the L{nswarm.amp_commands.NswarmError} it failed with (a handler's
        exception arrives as L{nswarm.amp_commands.HandlerFailed}, a service
        that did not answer in time as L{nswarm.amp_commands.DeadlineExceeded}).
        The call has the default deadline (L{timeout}); it fails as a whole only
        if nobody implements C{method} or the connection is lost.
        """
        try:
            data = self.checked(encode_arguments(args, kwargs), "call arguments")
        except NswarmError:
            return fail()
        box = amp.AmpBox(
            {COMMAND: CALL_ALL, METHOD: method.encode("utf-8"), TIMEOUT: self._timeout_value(self.timeout)}
        )
        put_payload(box, ARGS, data)
        if self.holding or method in self.idempotent:
            return self._kept(box, _gathered, self.timeout, method)
        d = self.request_box(box, _gathered)
        self.keep_deadline(box, self.timeout)
        return d

    def publish(self, event: str, payload: Any = None, *, exclude_self: bool = False) -> Deferred[Any]:
        """
        Publish C{event} with a JSON-compatible C{payload} to every subscriber
        (but this connection, with C{exclude_self}); the Deferred fires once
        the master has handed it on, with the number of connections (nodes
        and API users) it was handed to, or None if the answer does not say.
        """
        try:
            data = self.checked(encode(payload), "event payload")
        except NswarmError:
            return fail()
        box = amp.AmpBox({COMMAND: PUBLISH, EVENT: event.encode("utf-8")})
        if exclude_self:
            box[EXCLUDE] = b"1"
        put_payload(box, PAYLOAD, data)
        if self.holding:
            return self._kept(box, _handed_to, self.timeout, None)
        d = self.request_box(box, _handed_to)
        self.keep_deadline(box, self.timeout)
        return d

    def _kept(self, box: amp.AmpBox, parse: Parse, timeout: float, method: str | None) -> Deferred[Any]:
        """Request C{box} through the keeper (see L{Keeper.send}), or as usual if there is none."""
        keeper = self.keeper
        if keeper is None:
            return self.request_box(box, parse)
        return keeper.send(box, parse, timeout, method)

    def requests_in_flight(self) -> int:
        """How many requests sent on this connection have no answer yet."""
        return len(self._waiting)

    def forget_connection(self) -> None:
        """
        Before this protocol takes a new connection (an API client
        reconnecting): drop what the last one left behind, a partly read box
        (L{FastBoxes}' parser state) and AMP's table of C{callRemote}
        requests, which AMP closes for good when a connection is lost.
        """
        for name in ("_unparsed", "_box", "_key", "_size", "_oversized", "_discarding", "traffic", "heard_at"):
            self.__dict__.pop(name, None)
        amp.BoxDispatcher.__init__(self, self)
        self._failAllReason = None

    def checked(self, data: bytes, what: str) -> bytes:
        """C{data}, or L{PayloadTooLarge} if it is over L{max_payload}."""
        if len(data) > self.max_payload:
            raise PayloadTooLarge(
                f"{len(data):,} bytes of {what}, over the limit of {self.max_payload:,} bytes: send less"
            )
        return data

    def box_too_large(self, box: amp.AmpBox) -> None:
        """An oversized answer fails its request with L{PayloadTooLarge}; the connection stays up."""
        tag = box.get(ANSWER, box.get(ERROR))
        error = PayloadTooLarge(f"the answer is over the limit of {self.max_payload:,} bytes")
        if tag is not None and self.fail_request(tag, error):
            return
        if COMMAND in box and ASK in box:
            self.send(
                error_box(box[ASK], PayloadTooLarge(f"the request is over the limit of {self.max_payload:,} bytes"))
            )

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        tag = box.get(ANSWER)
        if tag is None:
            tag = box.get(ERROR)
            if tag is not None and self.keeper is not None and self.keeper.refused(box) and self._again(tag):
                return
        if tag is not None:
            self.answered(tag, box)  # an unknown tag: a late answer, dropped
        elif box.get(COMMAND) == PART:
            self._part(box)
        elif box.get(COMMAND) != HEARTBEAT:
            super().ampBoxReceived(box)
        elif ASK in box:  # a relay's probe: is this end alive?
            self.send(amp.AmpBox({ANSWER: box[ASK]}))

    def _again(self, tag: bytes) -> bool:
        """Send request C{tag}, which did not run, again through the keeper, within the time it has left."""
        keeper = self.keeper
        assert keeper is not None
        deadline = self._deadlines.pop(tag, None) if self._deadline_clock is not None else None
        timeout = self.timeout if deadline is None else deadline - MARGIN - self._deadline_clock.seconds()

        def send(box: amp.AmpBox, parse: Parse) -> Deferred[Any]:
            method = box[METHOD].decode("utf-8") if box.get(COMMAND) in (CALL, CALL_ALL) else None
            return keeper.send(box, parse, timeout, method)

        return self.move(tag, send)

    def connection_gone(self) -> UpstreamUnavailable:
        """What a request fails with once the connection is gone."""
        return UpstreamUnavailable(
            f"the connection to the {self.peer} closed before an answer came: "
            "the request may or may not have been carried out; reconnect and retry if that is safe"
        )

    def start_heartbeats(self, clock: Any, interval: float) -> None:
        """Heartbeats (see L{FastBoxes.start_heartbeats}), and this end's own sweep of its requests' deadlines."""
        super().start_heartbeats(clock, interval)
        self.watch_deadlines(clock)

    def stop_heartbeats(self) -> None:
        """Stop the heartbeats and the deadline sweep."""
        super().stop_heartbeats()
        self.stop_watching_deadlines()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.stop_heartbeats()
        super().connectionLost(reason)
        self.fail_requests(reason)


def _call_result(box: amp.AmpBox) -> Any:
    return decode(get_payload(box, RESULT))


def _gathered(box: amp.AmpBox) -> list[Any]:
    return [
        outcome if isinstance(outcome, NswarmError) else decode(outcome)
        for outcome in parse_frames(get_payload(box, RESULTS))
    ]


def _handed_to(box: amp.AmpBox) -> int | None:
    handed_to = box.get(HANDED_TO)
    return None if handed_to is None else int(handed_to)
