"""
What the two SDKs share: the client end of an AMP connection, which encodes
calls and events as JSON and turns failures into nswarm's typed errors.
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from nswarm._boxes import DEFAULT_MAX_PAYLOAD, HEARTBEAT, FastBoxes
from nswarm.amp_commands import (
    Authenticate,
    InvalidRequest,
    NswarmError,
    PayloadTooLarge,
    UpstreamUnavailable,
    error_box,
    get_payload,
    parse_frames,
    put_payload,
    remote_error,
)

ASK, ANSWER, COMMAND, ERROR = amp.ASK, amp.ANSWER, amp.COMMAND, amp.ERROR
CALL, CALL_ALL, PUBLISH, CANCEL = b"Call", b"CallAll", b"Publish", b"Cancel"


# One encoder and decoder for every payload: json.dumps with options builds a
# new encoder per call, and json.loads of bytes sniffs their encoding first.
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_decoder = json.JSONDecoder()


def encode(value: Any) -> bytes:
    """JSON bytes of C{value}, or L{InvalidRequest} if it is not JSON-compatible."""
    try:
        return _encoder.encode(value).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise InvalidRequest(f"cannot encode {type(value).__name__} as JSON ({error}): send JSON-compatible values")


def decode(data: bytes) -> Any:
    """The value in JSON bytes C{data}, or L{InvalidRequest}."""
    try:
        return _decoder.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidRequest(f"payload is not JSON ({error}): send it with an nswarm SDK")


def encode_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        return _encoder.encode({"args": args, "kwargs": kwargs}).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise InvalidRequest(f"cannot encode the call's arguments as JSON ({error}): pass JSON-compatible values")


def decode_arguments(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    value = decode(data)
    if not (isinstance(value, dict) and isinstance(value.get("args"), list) and isinstance(value.get("kwargs"), dict)):
        raise InvalidRequest('call arguments must be {"args": [...], "kwargs": {...}}: send them with an nswarm SDK')
    return value["args"], value["kwargs"]


def reconnecting(
    reactor: Any,
    endpoint: IStreamClientEndpoint,
    factory: IProtocolFactory,
    prepare: Callable[[Any], Deferred[Any]],
    what: str,
    max_delay: float,
) -> ClientService:
    """
    A ClientService that keeps a connection up, running C{prepare} (which
    authenticates and registers) on each new connection, with exponential
    backoff and jitter between attempts.

    A failed C{prepare} is logged, closes the connection and counts as a
    failed attempt. It does not fail ClientService's prepareConnection:
    ClientService has no state transition for a connection that closes after
    its preparation failed, and would log a spurious traceback.
    """
    log = Logger(namespace="nswarm.reconnecting")
    # A quick first retry, with up to a quarter second of jitter so that many
    # nodes reconnecting to a restarted master spread out, then backing off.
    backoff = backoffPolicy(initialDelay=0.25, maxDelay=max_delay, jitter=lambda: random.random() / 4)
    failures = 0

    def prepared(protocol: Any) -> Deferred[None]:
        def succeeded(_: object) -> None:
            nonlocal failures
            failures = 0

        def failed(failure: Failure) -> Deferred[None] | None:
            nonlocal failures
            protocol.transport.loseConnection()
            if failure.check(CancelledError):
                # The service is stopping and ClientService cancelled this
                # attempt. The connection's loss completes the stop; after
                # that ClientService has no transition for this attempt's
                # outcome, whatever it is, so it never gets one.
                return Deferred()
            failures += 1
            log.error("{what} could not connect: {error}; retrying", what=what, error=failure.getErrorMessage())
            return None

        return maybeDeferred(prepare, protocol).addCallbacks(succeeded, failed)

    return ClientService(
        endpoint,
        factory,
        retryPolicy=lambda attempt: backoff(max(attempt, failures)),
        clock=reactor,
        prepareConnection=prepared,
    )


def _detached(d: Deferred[Any]) -> Deferred[Any]:
    """
    A new Deferred with C{d}'s outcome. AMP drops the whole connection when a
    callRemote Deferred ends in an unhandled failure; handing the caller a
    separate Deferred keeps one caller's unhandled error from cutting off
    every other call on the connection.
    """
    detached: Deferred[Any] = Deferred()
    d.chainDeferred(detached)
    return detached


class ClientProtocol(FastBoxes, amp.AMP):
    """
    The SDK end of a connection to the master (API SDK) or a node (service
    SDK). Calls and events are sent as boxes built here, and their answers
    are matched by tag here, without AMP's Command and Deferred machinery
    per request: the SDK ends are where most of a call's CPU goes.
    """

    peer = "master"
    #: Seconds a call may take when the caller gives no timeout.
    timeout = 30.0
    #: The largest arguments, result or event payload sent or accepted, in bytes.
    max_payload = DEFAULT_MAX_PAYLOAD

    def __init__(self) -> None:
        super().__init__()
        self._requests: dict[bytes, tuple[Deferred[Any], Callable[[amp.AmpBox], Any]]] = {}
        self._timeout_cache: tuple[float, bytes] | None = None

    def authenticate(self, key: bytes, name: str | None = None) -> Deferred[Any]:
        kwargs = {"name": name} if name else {}
        return _detached(self.callRemote(Authenticate, key=key, **kwargs))

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
            data = self._checked(encode_arguments(args, kwargs), "call's arguments")
        except NswarmError:
            return fail()
        box = amp.AmpBox({COMMAND: CALL, b"method": method.encode("utf-8"), b"timeout": self._timeout_value(timeout)})
        put_payload(box, b"args", data)
        return self._request(box, _call_result)

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
            data = self._checked(encode_arguments(args, kwargs), "call's arguments")
        except NswarmError:
            return fail()
        box = amp.AmpBox(
            {COMMAND: CALL_ALL, b"method": method.encode("utf-8"), b"timeout": repr(float(self.timeout)).encode()}
        )
        put_payload(box, b"args", data)
        return self._request(box, _gathered)

    def publish(self, event: str, payload: Any = None, *, exclude_self: bool = False) -> Deferred[None]:
        """
        Publish C{event} with a JSON-compatible C{payload} to every subscriber
        (but this connection, with C{exclude_self}); the Deferred fires once
        the master has handed it on.
        """
        try:
            data = self._checked(encode(payload), "event's payload")
        except NswarmError:
            return fail()
        box = amp.AmpBox({COMMAND: PUBLISH, b"event": event.encode("utf-8")})
        if exclude_self:
            box[b"exclude"] = b"1"
        put_payload(box, b"payload", data)
        return self._request(box, _nothing)

    def _checked(self, data: bytes, what: str) -> bytes:
        """C{data}, or L{PayloadTooLarge} if it is over L{max_payload}."""
        if len(data) > self.max_payload:
            raise PayloadTooLarge(
                f"the {what} take {len(data):,} bytes, over the limit of {self.max_payload:,}: send less"
            )
        return data

    def box_too_large(self, box: amp.AmpBox) -> None:
        """An oversized answer fails its request with L{PayloadTooLarge}; the connection stays up."""
        tag = box.get(ANSWER, box.get(ERROR))
        request = self._requests.pop(tag, None) if tag is not None else None
        if request is not None:
            if not request[0].called:
                request[0].errback(PayloadTooLarge(f"the answer is over the limit of {self.max_payload:,} bytes"))
        elif COMMAND in box and ASK in box:
            self.send(error_box(box[ASK], PayloadTooLarge(f"the request is over the limit of {self.max_payload:,} bytes")))

    def _request(self, box: amp.AmpBox, parse: Callable[[amp.AmpBox], Any]) -> Deferred[Any]:
        if self.transport is None:
            return fail(self._lost())
        tag = self._nextTag()
        box[ASK] = tag
        try:
            self.sendBox(box)
        except amp.TooLong as error:
            return fail(InvalidRequest(f"a name is too long for AMP ({error}): use names of at most 255 characters"))
        d: Deferred[Any] = Deferred(lambda _: self.send(amp.AmpBox({COMMAND: CANCEL, b"id": tag})))
        self._requests[tag] = (d, parse)
        return d

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        tag = box.get(ANSWER)
        if tag is None:
            tag = box.get(ERROR)
        request = self._requests.pop(tag, None) if tag is not None else None
        if request is None:
            if box.get(COMMAND) != HEARTBEAT:
                super().ampBoxReceived(box)
            return
        d, parse = request
        if d.called:  # the caller gave up (cancelled): the answer is moot
            return
        if ANSWER in box:
            try:
                result = parse(box)
            except Exception:
                d.errback()
            else:
                d.callback(result)
        else:
            d.errback(remote_error(box))

    def _lost(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"the connection to the {self.peer} closed before an answer came: "
            "the request may or may not have been carried out; reconnect and retry if that is safe"
        )

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.stop_heartbeats()
        requests, self._requests = self._requests, {}
        super().connectionLost(reason)
        for d, _ in requests.values():
            if not d.called:
                d.errback(self._lost())


def _call_result(box: amp.AmpBox) -> Any:
    return decode(get_payload(box, b"result"))


def _gathered(box: amp.AmpBox) -> list[Any]:
    return [
        outcome if isinstance(outcome, NswarmError) else decode(outcome)
        for outcome in parse_frames(get_payload(box, b"results"))
    ]


def _nothing(box: amp.AmpBox) -> None:
    return None
