"""
The AMP adapter of a relay's peer: one connection of the master or a node.

It parses boxes (L{FastBoxes}), keeps everything but L{Authenticate} out
until the peer has authenticated (within a time limit), holds boxes to the
payload limit, hands routed boxes and registrations to its L{IRouter}, and
answers to the L{Relay}; and, for a subscriber connection, keeps the events
waiting for a peer that is not reading bounded. It decides nothing itself.
"""

from __future__ import annotations

import hmac
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IPushProducer, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from nswarm import defaults
from nswarm.amp_commands import (
    ANSWER,
    ASK,
    AUTHENTICATE,
    CALL,
    CALL_ALL,
    CANCEL,
    COMMAND,
    ERROR,
    HEARTBEAT,
    ID,
    ROUTED,
    Authenticate,
    AuthenticationFailed,
    Implement,
    InvalidRequest,
    NotAuthenticated,
    NswarmError,
    Overloaded,
    PayloadTooLarge,
    Subscribe,
    Unimplement,
    Unsubscribe,
    UpstreamUnavailable,
)
from nswarm.boxes import error_box, serialize
from nswarm.framing import FastBoxes
from nswarm.relay.relay import IRouter, dispatch
from nswarm.relay.state import IClock, IPeer
from nswarm.requests import Requests

#: The routed commands that are calls (and count against calls-in-flight).
CALLS = frozenset({CALL, CALL_ALL})


@implementer(IPeer, IPushProducer)
class RelayProtocol(Requests, FastBoxes, amp.AMP):
    """
    One AMP connection of a relay. Routed boxes go to the C{router}, answers
    to requests the relay forwarded go to its L{Relay} (and answers to this
    connection's own requests to L{Requests}); other commands go to ordinary
    responders. On a server connection (C{auth_key} given) nothing but
    L{Authenticate} is accepted until it succeeds, and the connection is
    closed if that takes longer than C{auth_timeout} seconds.
    """

    log = Logger()
    role = "peer"
    #: True while the transport's buffer is full: the peer is not reading what is sent to it.
    paused = False
    #: Bytes written since the transport's buffer filled.
    backlog = 0
    _socket: Any = None
    _overflowed = False
    #: Events dropped because this peer was not reading them.
    events_dropped = 0
    _drops_unlogged = 0
    _next_drop_log = 0.0

    def __init__(
        self,
        router: IRouter,
        clock: IClock,
        auth_key: bytes | None = None,
        auth_timeout: float = defaults.AUTH_TIMEOUT,
        heartbeat: float = defaults.HEARTBEAT,
        max_payload: int = defaults.MAX_PAYLOAD,
        subscriber_buffer: int = defaults.SUBSCRIBER_BUFFER,
        send_buffer: int = defaults.SEND_BUFFER,
        calls_in_flight: int = defaults.CALLS_IN_FLIGHT,
    ) -> None:
        super().__init__()
        self.router = router
        self.relay = router.relay
        self.clock = clock
        self.heartbeat = heartbeat
        self.max_payload = max_payload
        self.subscriber_buffer = subscriber_buffer
        #: Bytes that may wait for this peer while it is not reading; past it the connection is closed.
        self.send_buffer = send_buffer
        #: Calls this peer may have in flight at once (0: no limit).
        self.calls_in_flight = calls_in_flight
        self._limit_boxes(defaults.UNAUTHENTICATED_MAX_BOX if auth_key is not None else max_payload)
        self._auth_key = auth_key
        self._auth_timeout = auth_timeout
        self._auth_timer: Any = None
        self.authenticated = auth_key is None
        self.name = ""
        self.factory: Any = None

    @property
    def description(self) -> str:
        """How logs and error messages name this connection."""
        return f"{self.role} {self.name!r}" if self.name else self.role

    @property
    def alive(self) -> bool:
        """Whether the connection is still open."""
        return self.transport is not None

    @property
    def address(self) -> Any:
        """The peer's address, for logs."""
        return self.transport.getPeer() if self.transport is not None else None

    def connectionMade(self) -> None:
        super().connectionMade()
        if isinstance(self.factory, RelayFactory):
            self.factory.connections.add(self)
        if not self.authenticated:
            self._auth_timer = self.clock.callLater(self._auth_timeout, self._authentication_timed_out)
        # Registered below TLS: a TLS transport with a producer registered
        # does not close until it is unregistered, which Twisted's own
        # loseConnection calls (AMP's, on a fatal error) would not do.
        socket: Any = self.transport
        while isinstance(socket, ProtocolWrapper):
            socket = socket.transport
        self._socket = socket
        socket.registerProducer(self, True)

    # -- back-pressure: this connection is a push producer on its socket ------

    def pauseProducing(self) -> None:
        """
        The socket's send buffer is full, the peer is not reading: stop
        reading what it sends (so that it cannot make us queue more for it)
        until the buffer drains; events for it now count against
        C{subscriber_buffer}, everything against C{send_buffer}.
        """
        self.paused = True
        self._socket.pauseProducing()

    def resumeProducing(self) -> None:
        """The socket's send buffer has drained: read from the peer again."""
        self.paused = False
        self.backlog = 0
        if self._socket.disconnecting:
            # A closing transport resumes a paused producer, instead of
            # closing, once its buffer has drained: let it close.
            self._socket.unregisterProducer()
        else:
            self._socket.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is lost: connectionLost follows."""

    def send(self, box: amp.AmpBox) -> None:
        """Send C{box} unless the connection is gone; while the peer is not reading, within C{send_buffer}."""
        if self.transport is not None:
            data = serialize(box)
            if self.paused:
                self._buffered(len(data))
            self.transport.write(data)

    def _buffered(self, size: int) -> None:
        """C{size} more bytes wait for a peer that is not reading: past C{send_buffer}, close the connection."""
        self.backlog += size
        if self.backlog > self.send_buffer and not self._overflowed:
            self._overflowed = True
            self.log.warn(
                "closing the connection to {peer}: it has not read {backlog:,} bytes sent to it, over the "
                "limit of {limit:,} (send-buffer); it must read its answers and events",
                peer=self.description,
                backlog=self.backlog,
                limit=self.send_buffer,
                nswarm_event="send_buffer_full",
                role=self.role,
                name=self.name,
            )
            self.close_connection(abort=True)

    def _authentication_timed_out(self) -> None:
        self._auth_timer = None
        self.log.info(
            "closing {peer}: no authentication within {timeout}s", peer=self.address, timeout=self._auth_timeout
        )
        self.close_connection(abort=True)

    @Authenticate.responder
    def authenticate(self, key: bytes, name: str | None = None) -> dict[str, Any]:
        """Check the peer's key (in constant time); once it matches, the connection is open for everything."""
        if self.authenticated or self._auth_key is None:
            raise AuthenticationFailed("this connection is already authenticated: send Authenticate once")
        if not hmac.compare_digest(key, self._auth_key):
            self.log.warn("{role} at {peer} failed to authenticate", role=self.role, peer=self.address)
            raise AuthenticationFailed(f"wrong {self.role} auth key: check the key file this client uses")
        try:
            identified = self.identify(name)
        except AuthenticationFailed as error:
            self.log.warn("{role} at {peer} refused: {error}", role=self.role, peer=self.address, error=error)
            raise
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.authenticated = True
        self._limit_boxes(self.max_payload)
        self.name = identified
        self.log.info(
            "{peer} connected from {address}",
            peer=self.description,
            address=str(self.address),
            nswarm_event="connected",
            role=self.role,
            name=self.name,
        )
        self.start_heartbeats(self.clock, self.heartbeat)
        self.router.authenticated(self)
        return {}

    def identify(self, claimed: str | None) -> str:
        """
        The name this peer is known by, once its key matched: by default the
        one it claimed. A role whose identity is bound to a credential checks
        it here and raises L{AuthenticationFailed}.
        """
        return claimed or ""

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        command = box.get(COMMAND)
        if not self.authenticated and command != AUTHENTICATE:
            self._refuse(box)
        elif command in ROUTED:
            if (
                self.calls_in_flight
                and command in CALLS
                and self.relay.pending.asked_by(self) >= self.calls_in_flight
                and ASK in box
            ):
                self.send_error(box[ASK], self._too_many_calls())
                return
            dispatch(self.router, self, command, box)
        elif command == HEARTBEAT:
            pass  # counted by FastBoxes; nothing to answer
        elif command is not None:
            super().ampBoxReceived(box)
        else:
            tag = box.get(ANSWER)
            if tag is None:
                tag = box.get(ERROR)
            if tag is not None and not self.relay.answer(self, tag, box):
                # This connection's own request, or a late answer to a call
                # that timed out or was cancelled: dropped quietly.
                self.answered(tag, box)

    def _too_many_calls(self) -> Overloaded:
        return Overloaded(
            f"{self.description} has {self.calls_in_flight:,} calls in flight, the most one connection may: "
            "wait for answers before sending more (calls-in-flight)"
        )

    def _limit_boxes(self, payload: int) -> None:
        self.max_box_size = payload + defaults.BOX_OVERHEAD
        self.max_keys = payload // amp.MAX_VALUE_LENGTH + defaults.EXTRA_KEYS

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
            if not self.relay.answer(self, tag, error_box(tag, error)):
                self.fail_request(tag, error)

    def _refuse(self, box: amp.AmpBox) -> None:
        self.log.info("closing {peer}: it sent a command before authenticating", peer=self.address)
        tag = box.get(ASK)
        if tag is not None:
            self.send(error_box(tag, NotAuthenticated("authenticate first: send Authenticate with the auth key")))
        self.close_connection()

    def send_cancel(self, tag: bytes) -> None:
        """Cancel the request this relay sent here as C{tag}."""
        self.send(amp.AmpBox({COMMAND: CANCEL, ID: tag}))

    def write(self, data: bytes) -> None:
        """Write an already serialised box (an event) unless the connection is gone."""
        if self.transport is not None:
            if self.paused:
                self._buffered(len(data))
            self.transport.write(data)

    def send_error(self, tag: bytes | None, error: NswarmError) -> None:
        """Answer request C{tag} with C{error}; a request sent without a tag gets nothing."""
        if tag is not None:
            self.send(error_box(tag, error))

    def connection_gone(self) -> NswarmError:
        """What this connection's own requests fail with once it is lost."""
        return UpstreamUnavailable(f"the connection to {self.description} closed before it answered")

    def may_buffer(self, size: int) -> bool:
        """
        The transport's buffer is full: may an event of C{size} bytes wait
        in it too? Up to C{subscriber_buffer} bytes may; past that the event
        is dropped, counted, and logged at most every
        L{nswarm.defaults.DROP_LOG_INTERVAL} seconds.
        """
        if self.backlog + size <= self.subscriber_buffer:
            return True
        self.events_dropped += 1
        self._drops_unlogged += 1
        now = self.clock.seconds()
        if now >= self._next_drop_log:
            self._next_drop_log = now + defaults.DROP_LOG_INTERVAL
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
            nswarm_event="events_dropped",
            role=self.role,
            name=self.name,
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
        self.fail_requests(reason)
        if self.authenticated:
            self.router.lost(self)


class Downstream(RelayProtocol):
    """
    A relay connection whose peer registers here what it implements and
    subscribes to: a node at the master, a service at the node.

    """

    @Implement.responder
    def _implement(
        self, methods: list[str], idempotent: list[str] | None = None, limits: list[int] | None = None
    ) -> Any:
        if limits is not None and (len(limits) != len(methods) or min(limits, default=0) < 0):
            raise InvalidRequest("limits must give one number, 0 or more, for each method")
        return _answered(self.router.implement(self, methods, idempotent or [], limits or []))

    @Unimplement.responder
    def _unimplement(self, methods: list[str]) -> Any:
        return _answered(self.router.unimplement(self, methods))

    @Subscribe.responder
    def _subscribe(self, events: list[str]) -> Any:
        return _answered(self.router.subscribe(self, events))

    @Unsubscribe.responder
    def _unsubscribe(self, events: list[str]) -> Any:
        return _answered(self.router.unsubscribe(self, events))


def _answered(outcome: Any) -> Any:
    """The empty answer of a registration command, once C{outcome} (None, or a Deferred) has come."""
    if isinstance(outcome, Deferred):
        return outcome.addCallback(lambda _: {})
    return {}


class RelayFactory(Factory):
    """Builds the connections of one relay listener (or the node's upstream)."""

    def __init__(
        self,
        protocol: type[RelayProtocol],
        router: IRouter,
        clock: IClock,
        auth_key: bytes | None = None,
        auth_timeout: float = defaults.AUTH_TIMEOUT,
        heartbeat: float = defaults.HEARTBEAT,
        max_payload: int = defaults.MAX_PAYLOAD,
        subscriber_buffer: int = defaults.SUBSCRIBER_BUFFER,
        send_buffer: int = defaults.SEND_BUFFER,
        calls_in_flight: int = defaults.CALLS_IN_FLIGHT,
    ) -> None:
        self.relay_protocol = protocol
        self.router = router
        self.clock = clock
        self.auth_key = auth_key
        self.auth_timeout = auth_timeout
        self.heartbeat = heartbeat
        self.max_payload = max_payload
        self.subscriber_buffer = subscriber_buffer
        self.send_buffer = send_buffer
        self.calls_in_flight = calls_in_flight
        #: The connections this factory built that are open now.
        self.connections: set[RelayProtocol] = set()

    def buildProtocol(self, addr: Any) -> RelayProtocol:
        proto = self.relay_protocol(
            self.router,
            self.clock,
            self.auth_key,
            self.auth_timeout,
            self.heartbeat,
            self.max_payload,
            self.subscriber_buffer,
            self.send_buffer,
            self.calls_in_flight,
        )
        proto.factory = self
        return proto


class RelayService(Service):
    """Stops a relay's timers (C{router.stop()}) when the daemon stops."""

    def __init__(self, router: Any) -> None:
        self.router = router

    def stopService(self) -> Any:
        super().stopService()
        self.router.stop()


def listening_service(endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> StreamServerEndpointService:
    """
    A service listening on C{endpoint} whose start fails if the port cannot
    be bound, as C{strports.service} makes it. Twisted offers that only for
    endpoint strings, which cannot require client certificates, through the
    private C{_raiseSynchronously}: this is the one place nswarm sets it.
    """
    service = StreamServerEndpointService(endpoint, factory)
    service._raiseSynchronously = True
    return service
