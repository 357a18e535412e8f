"""
The AMP adapter of a relay's peer: one connection of the master or a node.

It parses boxes (L{FastBoxes}), keeps everything but L{Authenticate} out
until the peer has authenticated (within a time limit), holds boxes to the
payload limit, hands routed boxes and registrations to its L{IRouter}, and
answers to the L{Relay}; and, for a subscriber connection, keeps the events
waiting for a peer that is not reading bounded. It decides nothing itself.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from nswarm import defaults
from nswarm.access import Access
from nswarm.amp_commands import (
    ANSWER,
    ASK,
    AUTHENTICATE,
    CALL,
    CALL_ALL,
    CALLER,
    CANCEL,
    COMMAND,
    ERROR,
    HEARTBEAT,
    ID,
    MORE,
    PART,
    ROUTED,
    Authenticate,
    AuthenticationFailed,
    NotAuthenticated,
    NswarmError,
    PayloadTooLarge,
    UpstreamUnavailable,
)
from nswarm.boxes import error_box
from nswarm.failures import address_text, this_is
from nswarm.framing import FastBoxes
from nswarm.relay.backpressure import Backpressure
from nswarm.relay.gate import Gate, Guards
from nswarm.relay.router import IRouter, dispatch
from nswarm.relay.state import IClock, IPeer
from nswarm.requests import Requests
from nswarm.sockets import socket_counters

#: The routed commands that are calls (and count against calls-in-flight).
CALLS = frozenset({CALL, CALL_ALL})


@implementer(IPeer)
class RelayProtocol(Gate, Backpressure, Requests, FastBoxes, amp.AMP):
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
    #: The role its calls are stamped with (C{caller}: "api", "service"); None to leave them as they come.
    caller_role: str | None = None
    _stamp: bytes | None = None
    #: The most methods a peer that registers may implement, and patterns it may subscribe to.
    max_methods = defaults.METHODS_PER_CONNECTION
    max_patterns = defaults.PATTERNS_PER_CONNECTION
    #: When it authenticated.
    connected_at = 0.0
    #: Calls it answered (as an implementer), and of those the failed ones by error code (None: none yet).
    calls_handled = 0
    call_errors: dict[str, int] | None = None

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
        access: Access | None = None,
    ) -> None:
        super().__init__()
        #: Who may connect and what each may do; None: anyone with the auth key, with every right.
        self.access = access
        self._allowed: dict[tuple[str, str], bool] = {}
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
        self._auth_key = auth_key
        self._auth_timeout = auth_timeout
        self._auth_timer: Any = None
        self._own_guards: Guards | None = None
        #: The source this peer is counted under as waiting to authenticate (until it sends Authenticate).
        self._unauthenticated_from: str | None = None
        #: A server connection (a shared key, or an access file, given) admits nothing before Authenticate.
        self.authenticated = auth_key is None and access is None
        self._limit_boxes(max_payload if self.authenticated else defaults.UNAUTHENTICATED_MAX_BOX)
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

    def _peer(self) -> str:
        """The peer, for logs: who it is and where ("api user 'bob' at 10.0.0.5:51234"), never an object's repr."""
        return f"{self.description} at {address_text(self.address)}"

    def connectionMade(self) -> None:
        super().connectionMade()
        if isinstance(self.factory, RelayFactory):
            self.factory.connections.add(self)
        self.produce_into_socket()
        if not self.authenticated:
            # A source the throttle holds back was refused before this was built (see listener.py).
            self._unauthenticated_from = self._source()
            self._guards().opened(self._unauthenticated_from)
            self._auth_timer = self.clock.callLater(self._auth_timeout, self._authentication_timed_out)

    def _authentication_timed_out(self) -> None:
        self._auth_timer = None
        self.log.info(
            "closing {peer}: no authentication within {timeout}s", peer=self._peer(), timeout=self._auth_timeout
        )
        self.close_connection(abort=True)

    @Authenticate.responder
    def authenticate(self, key: bytes, name: str | None = None) -> dict[str, Any]:
        """Check the peer's key (in constant time); once it matches, the connection is open for everything."""
        if self.authenticated:
            raise AuthenticationFailed("this connection is already authenticated: send Authenticate once")
        source, now = self._source(), self.clock.seconds()
        guards = self._guards()
        throttle = guards.throttle
        if self._unauthenticated_from is not None:
            self._unauthenticated_from = None
            guards.settled(source)
        if not throttle.allowed(source, now):
            self._refused(source, now, "has failed to authenticate too often")
            raise AuthenticationFailed(
                f"too many failed authentications from {source}: wait {throttle.retry_after(source, now):.0f} s, "
                f"and check the key file this client uses {this_is(self.role)}"
            )
        try:
            identified = self.identify(name)
            rights = self.admit(key, identified)
        except AuthenticationFailed as error:
            throttle.failed(source, now)
            self._refused(source, now, f"failed to authenticate: {error}")
            raise
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.authenticated = True
        if guards.handshakes is not None:
            guards.handshakes.release(self.transport)  # its TLS protocol: reads go straight to it from now on
        self.connected_at = self.heard_at = now
        self.traffic = socket_counters(self.transport)
        self._limit_boxes(self.max_payload)
        self.name = identified
        self.rights = rights
        if self.caller_role is not None:
            self._stamp = f"{self.caller_role}:{identified}".encode()
        self.log.info(
            "{peer} connected from {address}",
            peer=self.description,
            address=address_text(self.address),
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
            if self._stamp is not None and command in CALLS:
                self.stamp(box)
            dispatch(self.router, self, command, box)
        elif command == HEARTBEAT:
            if ASK in box:  # a relay's probe: is this end alive? (counted by FastBoxes either way)
                self.send(amp.AmpBox({ANSWER: box[ASK]}))
        elif command is not None:  # answers (no command), the most frequent boxes after calls, skip these
            if command == PART:
                self.relay.part(self, box)
            elif command == MORE:
                self.relay.more(self, box)
            else:
                super().ampBoxReceived(box)
        else:
            tag = box.get(ANSWER)
            if tag is None:
                tag = box.get(ERROR)
            if tag is not None and not self.relay.answer(self, tag, box):
                # This connection's own request, or a late answer to a call
                # that timed out or was cancelled: dropped quietly.
                self.answered(tag, box)

    def stamp(self, box: amp.AmpBox) -> None:
        """Stamp a call from this peer with who made it, over anything the peer sent."""
        if self._stamp is not None:
            box[CALLER] = self._stamp

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
        self.log.info("closing {peer}: it sent a command before authenticating", peer=self._peer())
        tag = box.get(ASK)
        if tag is not None:
            self.send(error_box(tag, NotAuthenticated("authenticate first: send Authenticate with the auth key")))
        self.close_connection()

    def send_cancel(self, tag: bytes) -> None:
        """Cancel the request this relay sent here as C{tag}."""
        self.send(amp.AmpBox({COMMAND: CANCEL, ID: tag}))

    def send_error(self, tag: bytes | None, error: NswarmError) -> None:
        """Answer request C{tag} with C{error}; a request sent without a tag gets nothing."""
        if tag is not None:
            self.send(error_box(tag, error))

    def connection_gone(self) -> NswarmError:
        """What this connection's own requests fail with once it is lost."""
        return UpstreamUnavailable(f"the connection to {self.description} closed before it answered")

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.stop_heartbeats()
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        if isinstance(self.factory, RelayFactory):
            self.factory.connections.discard(self)
        if self._drops_unlogged:
            self._log_drops()
        if self._unauthenticated_from is not None:
            # A TLS handshake, or a connection, without an Authenticate costs the daemon as much as a wrong key.
            source, now, guards = self._unauthenticated_from, self.clock.seconds(), self._guards()
            self._unauthenticated_from = None
            guards.settled(source)
            guards.throttle.failed(source, now)
            self._refused(source, now, "closed the connection without authenticating (counted as a failure)")
        super().connectionLost(reason)
        self.fail_requests(reason)
        self.relay.stats.lost(self.role, self.traffic, self.drop_waiting())
        if self.authenticated:
            self.router.lost(self)


class RelayFactory(Factory):
    """Builds the connections of one relay listener (or the node's upstream)."""

    #: No "Starting factory <... object at 0x...>" as a listener starts or the upstream connects: nswarm logs those.
    noisy = False

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
        access: Access | None = None,
        max_methods: int = defaults.METHODS_PER_CONNECTION,
        max_patterns: int = defaults.PATTERNS_PER_CONNECTION,
    ) -> None:
        self.relay_protocol = protocol
        self.access = access
        self.max_methods = max_methods
        self.max_patterns = max_patterns
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
        self.guards = Guards()

    def reload(self, access: Access | None) -> None:
        """Use C{access} from now on, for new connections and for the open ones (see L{RelayProtocol.reload})."""
        self.access = access
        for connection in list(self.connections):
            connection.reload(access)

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
            self.access,
        )
        proto.max_methods, proto.max_patterns = self.max_methods, self.max_patterns
        proto.factory = self
        return proto


class RelayService(Service):
    """Stops a relay's timers (C{router.stop()}) when the daemon stops."""

    def __init__(self, router: Any) -> None:
        self.router = router

    def stopService(self) -> Any:
        super().stopService()
        self.router.stop()
