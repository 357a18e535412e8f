"""
Box forwarding, shared by both relays (the master and the node).

A relay reads only the keys it routes on (the command name and the method or
event name), gives a forwarded request a new C{_ask} tag on the next hop,
remembers in L{PendingCalls} which caller and tag it came from, and maps the
answer or error box back. It never parses a L{Call} or L{Publish} into a
Command nor builds a Deferred for it: that keeps a relay hop a few
microseconds of CPU (see DESIGN.md, principle 2).
"""

from __future__ import annotations

import hmac
from typing import Any, Container, Iterable, cast

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from nswarm._boxes import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_PAYLOAD,
    HEARTBEAT,
    FastBoxes,
    serialize,
)
from nswarm.amp_commands import (
    Authenticate,
    AuthenticationFailed,
    Cancelled,
    DeadlineExceeded,
    Implement,
    ImplementerLost,
    InternalError,
    InvalidRequest,
    NoSuchMethod,
    NotAuthenticated,
    NswarmError,
    Overloaded,
    PayloadTooLarge,
    Subscribe,
    Unimplement,
    Unsubscribe,
    error_box,
    error_frame,
    get_payload,
    put_payload,
    remote_error,
    result_frame,
)
from nswarm.config import count
from nswarm.routing import PendingCalls, Registry, Request, check_event, check_name

ASK = amp.ASK
ANSWER = amp.ANSWER
COMMAND = amp.COMMAND
ERROR = amp.ERROR

CALL = b"Call"
CALL_ALL = b"CallAll"
PUBLISH = b"Publish"
CANCEL = b"Cancel"
AUTHENTICATE = b"Authenticate"
TIMEOUT = b"timeout"
EXCLUDE = b"exclude"
#: The commands a relay routes as boxes.
ROUTED = frozenset({CALL, CALL_ALL, PUBLISH, CANCEL})

DEFAULT_AUTH_TIMEOUT = 10.0
#: The largest box a connection may send before it has authenticated.
UNAUTHENTICATED_MAX_BOX = 64 * 1024
#: A call's deadline when its caller gives none, and the longest allowed, in seconds.
DEFAULT_CALL_TIMEOUT = 30.0
MAX_CALL_TIMEOUT = 24 * 3600.0
#: How often a relay with calls in flight looks for passed deadlines.
SWEEP_INTERVAL = 0.05
#: Bytes of events that may wait for a subscriber that is not reading them.
DEFAULT_SUBSCRIBER_BUFFER = 8 * 1024 * 1024
#: Seconds between two warnings about events dropped for one subscriber.
DROP_LOG_INTERVAL = 10.0


def limit_parameters(subscriber: str) -> list[list[Any]]:
    """The C{--max-payload} and C{--subscriber-buffer} options of a daemon whose subscribers are C{subscriber}s."""
    return [
        [
            "max-payload", None, str(DEFAULT_MAX_PAYLOAD),
            "Largest call arguments, result or event payload in bytes; larger ones get PayloadTooLarge",
            count,
        ],
        [
            "subscriber-buffer", None, str(DEFAULT_SUBSCRIBER_BUFFER),
            f"Bytes of events that may wait for {subscriber} that is not reading them; past it they are dropped",
            count,
        ],
    ]


def time_left(box: amp.AmpBox) -> float:
    """
    The seconds left before the deadline of the request in C{box}; a box
    without one gets the default, which is written into it for the next hops.
    """
    raw = box.get(TIMEOUT)
    if raw is None:
        box[TIMEOUT] = repr(DEFAULT_CALL_TIMEOUT).encode("ascii")
        return DEFAULT_CALL_TIMEOUT
    try:
        left = float(raw)
    except ValueError:
        raise InvalidRequest("the call's timeout is not a number: send seconds, such as 5.0")
    if not 0 < left <= MAX_CALL_TIMEOUT:
        if left <= 0:
            raise DeadlineExceeded("the call's deadline had passed when it reached this relay")
        raise InvalidRequest(f"the call's timeout must be at most {MAX_CALL_TIMEOUT:g} seconds")
    return left


def routed_name(box: amp.AmpBox, key: bytes, kind: str, known: Container[str] = ()) -> str:
    """
    The method or event name a relay routes C{box} on, or L{InvalidRequest}.
    A name in C{known} (registered, so checked already) is not checked again.
    """
    try:
        name = box[key].decode("utf-8")
        if name in known:
            return name
        return check_event(name) if kind == "event" else check_name(kind, name)
    except (KeyError, UnicodeDecodeError):
        raise InvalidRequest(f"the {kind} name is missing or not UTF-8: send it as AMP Unicode")


# How the logs say what a registration command does (nswarm.local reads these lines).
_VERBS = {Implement: "implements", Unimplement: "withdraws", Subscribe: "subscribes to", Unsubscribe: "unsubscribes from"}


# Errors with which an implementer turns a call down without running it.
_NOT_RUN = {NoSuchMethod.code, Overloaded.code}


class Relay:
    """
    What the master and the node have in common: forwarding requests to a
    chosen connection and mapping the answers back, fanning events out, and
    failing the requests pending on a lost connection at once, and the
    registry of what its downstream connections (the master's nodes, the
    node's services) implement and subscribe to. Subclasses decide where
    things go (L{route_call}, L{route_publish}) and may act on registry
    changes (L{changed}).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.pending: PendingCalls[RelayProtocol] = PendingCalls()
        self.registry: Registry[RelayProtocol] = Registry()
        self._sweeper: IDelayedCall | None = None
        #: The call_all requests being gathered, by caller and caller tag.
        self.gathers: dict[tuple[RelayProtocol, bytes], Gather] = {}

    def implement(
        self, peer: RelayProtocol, methods: list[str], idempotent: list[str] = [], limits: list[int] = []
    ) -> None:
        by_method = dict(zip(methods, limits))
        self._registration(peer, Implement, methods, self.registry.implement(peer, methods, idempotent, by_method))

    def choose(self, method: str, exclude: RelayProtocol | None = None) -> RelayProtocol | None:
        """The implementer of C{method} with the fewest calls in flight that is below its limit."""
        busy = None
        if self.registry.limits:
            busy = lambda peer, limit: self.pending.in_flight_for(peer, method) >= limit  # noqa: E731
        return self.registry.choose(method, self.pending.in_flight, exclude, busy)

    def request_done(self, request: Request[RelayProtocol]) -> None:
        """Hook: C{request} is no longer in flight (answered, lost, cancelled or expired)."""

    def unimplement(self, peer: RelayProtocol, methods: list[str]) -> None:
        self._registration(peer, Unimplement, methods, self.registry.unimplement(peer, methods))

    def subscribe(self, peer: RelayProtocol, events: list[str]) -> None:
        self._registration(peer, Subscribe, events, self.registry.subscribe(peer, events))

    def unsubscribe(self, peer: RelayProtocol, events: list[str]) -> None:
        self._registration(peer, Unsubscribe, events, self.registry.unsubscribe(peer, events))

    def _registration(
        self, peer: RelayProtocol, command: type[amp.Command], names: list[str], changed: list[str]
    ) -> None:
        if names:
            self.log.info("{peer} {verb} {names}", peer=peer.description, verb=_VERBS[command], names=names)
        self.changed(command, changed)

    def changed(self, command: type[amp.Command], names: list[str]) -> None:
        """
        Hook: C{command} (L{Implement}, L{Unimplement}, L{Subscribe} or
        L{Unsubscribe}) changed whether anybody here has C{names}.
        """

    def peer_authenticated(self, peer: RelayProtocol) -> None:
        """Hook: C{peer} has just authenticated."""

    def route_call(self, caller: RelayProtocol, box: amp.AmpBox) -> None:
        raise NotImplementedError

    def route_call_all(self, caller: RelayProtocol, box: amp.AmpBox) -> None:
        raise NotImplementedError

    def gather(
        self, caller: RelayProtocol, box: amp.AmpBox, callees: list[RelayProtocol], command: bytes
    ) -> None:
        """
        Send C{caller}'s call_all C{box} to every one of C{callees} as
        C{command} (CallAll to nodes, Call to services) and answer C{caller}
        once each has answered, failed, or run out of time.
        """
        if ASK not in box:
            raise InvalidRequest("call_all needs an answer: send it with an _ask tag")
        time_left(box)
        gather = Gather(self, box[ASK], caller, len(callees))
        self.gathers[(caller, box[ASK])] = gather
        for index, callee in enumerate(callees):
            request = amp.AmpBox(box)
            request[COMMAND] = command
            request[ASK] = b"%d" % index
            self.forward(gather, request, callee)  # type: ignore[arg-type]

    def _drop_gather(self, gather: Gather) -> None:
        """Cancel what is left of C{gather} downstream."""
        _, asked_by = self.pending.lost(gather)  # type: ignore[arg-type]
        for request in asked_by:
            request.callee.send_cancel(request.tag)
            self.request_done(request)

    def route_publish(self, publisher: RelayProtocol, box: amp.AmpBox) -> None:
        raise NotImplementedError

    def box_received(self, peer: RelayProtocol, command: bytes, box: amp.AmpBox) -> None:
        """A routed command (L{CALL}, L{PUBLISH} or L{CANCEL}) arrived from an authenticated peer."""
        try:
            if command == CALL:
                self.route_call(peer, box)
            elif command == CALL_ALL:
                self.route_call_all(peer, box)
            elif command == PUBLISH:
                self.route_publish(peer, box)
            else:
                self.cancel_received(peer, box.get(b"id", b""))
        except NswarmError as error:
            peer.send_error(box.get(ASK), error)
        except Exception:
            # A bug here must cost one request, not the connection and every
            # other request on it.
            self.log.failure(
                "routing a {command} from {peer} failed", command=command.decode("ascii"), peer=peer.description
            )
            peer.send_error(box.get(ASK), InternalError("the relay failed to route this request: see its log"))

    def forward(
        self, caller: RelayProtocol, box: amp.AmpBox, callee: RelayProtocol, method: str | None = None
    ) -> None:
        """
        Send C{caller}'s request C{box} on to C{callee} and remember where its
        answer goes, and until when it may take. A call to C{method} is kept
        until answered, to be sent once more elsewhere if C{callee} turns it
        down without running it (it has no implementer any more, or all are
        busy) or, for an idempotent call, if C{callee} is lost.
        """
        if ASK in box:
            try:  # the usual case, inline: a valid timeout given
                left = float(box[TIMEOUT])
                if not 0 < left <= MAX_CALL_TIMEOUT:
                    raise ValueError
            except (KeyError, ValueError):
                left = time_left(box)
            caller_tag = box[ASK]
            tag = callee._nextTag()
            idempotent = bool(self.registry.idempotent) and method is not None and self.registry.is_idempotent(callee, method)
            expires = self.clock.seconds() + left
            self.pending.add(Request(callee, tag, caller, caller_tag, expires, method, box if method else None, idempotent))
            box[ASK] = tag
            if self._sweeper is None:
                self._sweeper = self.clock.callLater(SWEEP_INTERVAL, self._sweep)
        callee.send(box)

    def _sweep(self) -> None:
        """
        Answer L{DeadlineExceeded} to every request past its deadline, and
        cancel it downstream. Runs while anything is in flight (it is not
        cancelled when the last answer comes: re-arming a timer per call
        would cost more than one idle tick).
        """
        self._sweeper = None
        for request in self.pending.expired(self.clock.seconds()):
            request.caller.send_error(
                request.caller_tag,
                DeadlineExceeded(f"{request.callee.description} did not answer before the deadline: it was cancelled"),
            )
            request.callee.send_cancel(request.tag)
            self.request_done(request)
        if len(self.pending):
            self._sweeper = self.clock.callLater(SWEEP_INTERVAL, self._sweep)

    def stop(self) -> None:
        """Stop the relay's timers (the daemon is stopping)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _retry(self, request: Request[RelayProtocol], error: Exception) -> None:
        """
        Send C{request} once more, to another implementer, within its
        deadline; answer C{error} if there is none (or no time).
        """
        self.request_done(request)
        now = self.clock.seconds()
        if request.retry is not None and request.method is not None and request.expires > now:
            other = self.choose(request.method, exclude=request.callee)
            if other is not None and other.transport is not None:
                self.log.info("retrying a call to {method!r} on {peer}", method=request.method, peer=other.description)
                box = request.retry
                box[ASK] = request.caller_tag
                box[TIMEOUT] = repr(request.expires - now).encode("ascii")
                self.forward(request.caller, box, other)
                return
        request.caller.send_error(request.caller_tag, cast(NswarmError, error))

    def cancel_received(self, caller: RelayProtocol, caller_tag: bytes) -> None:
        """C{caller} cancelled its request C{caller_tag}: cancel it downstream and answer L{Cancelled}."""
        gather = self.gathers.pop((caller, caller_tag), None)
        if gather is not None:
            self._drop_gather(gather)
            caller.send_error(caller_tag, Cancelled("the caller cancelled the call"))
            return
        request = self.pending.cancel(caller, caller_tag)
        if request is not None:
            request.callee.send_cancel(request.tag)
            caller.send_error(caller_tag, Cancelled("the caller cancelled the call"))
            self.request_done(request)

    def answer_received(self, callee: RelayProtocol, tag: bytes, box: amp.AmpBox) -> bool:
        """
        Map C{callee}'s answer or error C{box} back to its caller. Return False
        if C{tag} is not one this relay forwarded (the box is the connection's own).
        """
        request = self.pending.pop(callee, tag)
        if request is None:
            return False
        if ERROR in box and request.retry is not None:
            code = box.get(amp.ERROR_CODE)
            if code in _NOT_RUN or (code == ImplementerLost.code and request.idempotent):
                self._retry(request, remote_error(box))
                return True
        box[ANSWER if ANSWER in box else ERROR] = request.caller_tag
        request.caller.send(box)
        self.request_done(request)
        return True

    def fan_out(self, box: amp.AmpBox, peers: Iterable[RelayProtocol], exclude: RelayProtocol | None = None) -> None:
        """
        Send event C{box} to every peer but C{exclude}, without asking for an
        answer. The box is serialised once and the same bytes written to every
        connection. A peer whose connection is not keeping up may drop it
        (see L{RelayProtocol.may_buffer}); nobody else waits for that.
        """
        box.pop(ASK, None)
        data = serialize(box)
        for peer in peers:
            if peer is not exclude and (not peer.paused or peer.may_buffer(len(data))):
                peer.write(data)

    def peer_lost(self, peer: RelayProtocol) -> None:
        """
        C{peer} disconnected: withdraw what it registered, so that nothing new
        is routed to it, and fail every request still pending on it.
        """
        methods, events = self.registry.remove(peer)
        self.log.info("{peer} disconnected", peer=peer.description)
        self.changed(Unimplement, methods)
        self.changed(Unsubscribe, events)
        what = peer.description
        answered_by, asked_by = self.pending.lost(peer)
        for request in answered_by:
            error = ImplementerLost(f"{what} disconnected before answering: the call may or may not have run")
            if request.idempotent:
                self._retry(request, error)
            else:
                request.caller.send_error(request.caller_tag, error)
                self.request_done(request)
        for request in asked_by:
            request.callee.send_cancel(request.tag)
            self.request_done(request)
        for key in [key for key in self.gathers if key[0] is peer]:
            self._drop_gather(self.gathers.pop(key))


class Gather:
    """
    The caller, for the relay, of the requests one call_all sends: it
    collects their answers as frames, without decoding them, and answers
    the real caller once all are in.
    """

    def __init__(self, relay: Relay, tag: bytes, caller: RelayProtocol, count: int) -> None:
        self.relay = relay
        self.tag = tag
        self.caller = caller
        self.remaining = count
        self.parts: list[bytes] = []
        self.description = f"call_all of {caller.description}"

    def send(self, box: amp.AmpBox) -> None:
        """One implementer's answer (a node's gathered results, or a service's result) or error."""
        if ANSWER in box:
            self.parts.append(get_payload(box, b"results") if b"results" in box else result_frame(get_payload(box, b"result")))
        else:
            self.parts.append(error_frame(box.get(amp.ERROR_CODE, b""), box.get(amp.ERROR_DESCRIPTION, b"")))
        self._counted()

    def send_error(self, tag: bytes | None, error: NswarmError) -> None:
        self.parts.append(error_frame(error.code, str(error).encode("utf-8", "replace")))
        self._counted()

    def send_cancel(self, tag: bytes) -> None:
        """Never asked to run anything itself."""

    def _counted(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and self.relay.gathers.pop((self.caller, self.tag), None) is self:
            answer = amp.AmpBox({ANSWER: self.tag})
            put_payload(answer, b"results", b"".join(self.parts))
            self.caller.send(answer)


class RelayProtocol(FastBoxes, amp.AMP):
    """
    One AMP connection of a relay. L{Call} and L{Publish} boxes, and answers
    to requests the relay forwarded, go to the L{Relay} as boxes; every other
    command is dispatched to ordinary responders. On a server connection
    (C{auth_key} given) nothing but L{Authenticate} is accepted until it
    succeeds, and the connection is closed if that takes longer than
    C{auth_timeout} seconds.
    """

    log = Logger()
    kind = "peer"
    #: True while the transport's buffer is full (see L{Downstream}).
    paused = False
    #: Bytes of events written since the transport's buffer filled.
    backlog = 0
    #: Events dropped because this peer was not reading them.
    events_dropped = 0
    _drops_unlogged = 0
    _next_drop_log = 0.0

    def __init__(
        self,
        relay: Relay,
        clock: IReactorTime,
        auth_key: bytes | None = None,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        heartbeat: float = DEFAULT_HEARTBEAT,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        subscriber_buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
    ) -> None:
        super().__init__()
        self.relay = relay
        self.heartbeat = heartbeat
        self.max_payload = max_payload
        self.subscriber_buffer = subscriber_buffer
        self._limit_boxes(UNAUTHENTICATED_MAX_BOX if auth_key is not None else max_payload)
        self.clock = clock
        self._auth_key = auth_key
        self._auth_timeout = auth_timeout
        self._auth_timer: IDelayedCall | None = None
        self.authenticated = auth_key is None
        self.name = ""

    @property
    def description(self) -> str:
        """How logs and error messages name this connection."""
        return f"{self.kind} {self.name!r}" if self.name else self.kind

    def connectionMade(self) -> None:
        super().connectionMade()
        if isinstance(self.factory, RelayFactory):
            self.factory.connections.add(self)
        if not self.authenticated:
            self._auth_timer = self.clock.callLater(self._auth_timeout, self._authentication_timed_out)

    @property
    def address(self) -> Any:
        """The peer's address, for logs."""
        return self.transport.getPeer() if self.transport is not None else None

    def _authentication_timed_out(self) -> None:
        self._auth_timer = None
        self.log.info("closing {peer}: no authentication within {timeout}s", peer=self.address, timeout=self._auth_timeout)
        self.close_connection(abort=True)

    @Authenticate.responder
    def authenticate(self, key: bytes, name: str | None = None) -> dict[str, Any]:
        if self.authenticated or self._auth_key is None:
            raise AuthenticationFailed("this connection is already authenticated: send Authenticate once")
        if not hmac.compare_digest(key, self._auth_key):
            self.log.warn("{kind} at {peer} failed to authenticate", kind=self.kind, peer=self.address)
            raise AuthenticationFailed(f"wrong {self.kind} auth key: check the key file this client uses")
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.authenticated = True
        self._limit_boxes(self.max_payload)
        self.name = name or ""
        self.log.info("{peer} connected from {address}", peer=self.description, address=self.address)
        self.start_heartbeats(self.clock, self.heartbeat)
        self.relay.peer_authenticated(self)
        return {}

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        command = box.get(COMMAND)
        if not self.authenticated and command != AUTHENTICATE:
            self._refuse(box)
        elif command in ROUTED:
            self.relay.box_received(self, command, box)
        elif command == HEARTBEAT:
            pass  # counted by FastBoxes; nothing to answer
        elif command is not None:
            super().ampBoxReceived(box)
        else:
            tag = box.get(ANSWER)
            if tag is None:
                tag = box.get(ERROR)
            if tag is not None and self.relay.answer_received(self, tag, box):
                return
            if tag in self._outstandingRequests:
                super().ampBoxReceived(box)
            # Anything else is a late answer to a call that timed out or was
            # cancelled: dropped quietly, the connection carries on.

    def _limit_boxes(self, payload: int) -> None:
        self.max_box_size = payload + 64 * 1024
        self.max_keys = payload // amp.MAX_VALUE_LENGTH + 64

    def box_too_large(self, box: amp.AmpBox) -> None:
        """
        An oversized box: before authentication the connection is closed;
        after it, a request is answered L{PayloadTooLarge} and an oversized
        answer becomes that error for its caller. Other calls carry on.
        """
        if not self.authenticated:
            super().box_too_large(box)
            return
        limit = f"{self.max_payload:,} bytes"
        tag = box.get(ASK)
        if COMMAND in box:
            if tag is not None:
                self.send_error(tag, PayloadTooLarge(f"the request is over this relay's limit of {limit}: send less"))
            return
        tag = box.get(ANSWER, box.get(ERROR))
        if tag is not None:
            error = PayloadTooLarge(f"the answer from {self.description} is over the limit of {limit}")
            self.relay.answer_received(self, tag, error_box(tag, error))

    def send_cancel(self, tag: bytes) -> None:
        """Cancel the request this relay sent here as C{tag}."""
        self.send(amp.AmpBox({COMMAND: CANCEL, b"id": tag}))

    def _refuse(self, box: amp.AmpBox) -> None:
        self.log.info("closing {peer}: it sent a command before authenticating", peer=self.address)
        tag = box.get(ASK)
        if tag is not None:
            self.sendBox(error_box(tag, NotAuthenticated("authenticate first: send Authenticate with the auth key")))
        self.close_connection()

    def write(self, data: bytes) -> None:
        """Write an already serialised box unless the connection is gone."""
        if self.transport is not None:
            self.transport.write(data)

    def send_error(self, tag: bytes | None, error: NswarmError) -> None:
        """Answer request C{tag} with C{error}; a request sent without a tag gets nothing."""
        if tag is not None:
            self.send(error_box(tag, error))

    def may_buffer(self, size: int) -> bool:
        """
        The transport's buffer is full: may an event of C{size} bytes wait
        in it too? Up to L{subscriber_buffer} bytes may; past that the event
        is dropped, counted, and logged at most every L{DROP_LOG_INTERVAL}
        seconds.
        """
        if self.backlog + size <= self.subscriber_buffer:
            self.backlog += size
            return True
        self.events_dropped += 1
        self._drops_unlogged += 1
        now = self.clock.seconds()
        if now >= self._next_drop_log:
            self._next_drop_log = now + DROP_LOG_INTERVAL
            self._log_drops()
        return False

    def _log_drops(self) -> None:
        self.log.warn(
            "{peer} is not reading its events as fast as they come and {limit:,} bytes already wait for it: "
            "dropped {count} since the last warning, {total} in all; make it faster or raise subscriber-buffer",
            count=self._drops_unlogged,
            peer=self.description,
            total=self.events_dropped,
            limit=self.subscriber_buffer,
        )
        self._drops_unlogged = 0

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.stop_heartbeats()
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        if isinstance(self.factory, RelayFactory):
            self.factory.connections.discard(self)
        if self._drops_unlogged:
            self._log_drops()
        super().connectionLost(reason)
        if self.authenticated:
            self.relay.peer_lost(self)


@implementer(IPushProducer)
class Downstream(RelayProtocol):
    """
    A relay connection whose peer registers here what it implements and
    subscribes to: a node at the master, a service at the node.

    It is a streaming producer on its socket's transport (under TLS, if
    any), which pauses it when its buffer fills (the peer is not reading)
    and resumes it once that buffer has drained; while paused, events for
    the peer are bounded by L{subscriber_buffer}.
    """

    _socket: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # Registered below TLS: a TLS transport with a producer registered
        # does not close until it is unregistered, which Twisted's own
        # loseConnection calls (AMP's, on a fatal error) would not do.
        socket: Any = self.transport
        while isinstance(socket, ProtocolWrapper):
            socket = socket.transport
        self._socket = socket
        socket.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0
        if self._socket.disconnecting:
            # A closing transport resumes a paused producer, instead of
            # closing, once its buffer has drained: let it close.
            self._socket.unregisterProducer()

    def stopProducing(self) -> None:
        pass  # the connection is lost: connectionLost follows.

    @Implement.responder
    def _implement(
        self, methods: list[str], idempotent: list[str] | None = None, limits: list[int] | None = None
    ) -> dict[str, Any]:
        if limits is not None and (len(limits) != len(methods) or min(limits, default=0) < 0):
            raise InvalidRequest("limits must give one number, 0 or more, for each method")
        self.relay.implement(self, methods, idempotent or [], limits or [])
        return {}

    @Unimplement.responder
    def _unimplement(self, methods: list[str]) -> dict[str, Any]:
        self.relay.unimplement(self, methods)
        return {}

    @Subscribe.responder
    def _subscribe(self, events: list[str]) -> dict[str, Any]:
        self.relay.subscribe(self, events)
        return {}

    @Unsubscribe.responder
    def _unsubscribe(self, events: list[str]) -> dict[str, Any]:
        self.relay.unsubscribe(self, events)
        return {}


class RelayFactory(Factory):
    """Builds the connections of one relay listener (or the node's upstream)."""

    def __init__(
        self,
        protocol: type[RelayProtocol],
        relay: Relay,
        clock: IReactorTime,
        auth_key: bytes | None = None,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        heartbeat: float = DEFAULT_HEARTBEAT,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        subscriber_buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
    ) -> None:
        self.relay_protocol = protocol
        self.heartbeat = heartbeat
        self.max_payload = max_payload
        self.subscriber_buffer = subscriber_buffer
        self.relay = relay
        self.clock = clock
        self.auth_key = auth_key
        self.auth_timeout = auth_timeout
        #: The connections this factory built that are open now.
        self.connections: set[RelayProtocol] = set()

    def buildProtocol(self, addr: Any) -> RelayProtocol:
        proto = self.relay_protocol(
            self.relay,
            self.clock,
            self.auth_key,
            self.auth_timeout,
            self.heartbeat,
            self.max_payload,
            self.subscriber_buffer,
        )
        proto.factory = self
        return proto


class RelayService(Service):
    """Stops a relay's timers when the daemon stops."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def stopService(self) -> None:
        super().stopService()
        self.relay.stop()
