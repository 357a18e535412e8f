"""
A relay's listeners: where a connection is accepted, and refused. A source
address that has failed to authenticate too often (see
L{nswarm.relay.throttle.Throttle}) is refused as it is accepted, before
anything is built for it: its socket is closed at once, with no TLS
handshake, so an attacker retrying as fast as it can costs the daemon an
C{accept} and a C{close}, not a handshake.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from nswarm.relay.gate import log_refused, source_of
from nswarm.relay.handshakes import Handshakes
from nswarm.relay.protocol import RelayFactory

log = Logger()


@implementer(IProtocolFactory)
class Admission:
    """
    The outermost factory of a listener: builds nothing for a source the
    relay factory's throttle holds back (the listening port then closes the
    socket), and hands every other connection to C{wrapped} (the TLS
    factory around C{relay}, or C{relay} itself).
    """

    def __init__(self, wrapped: IProtocolFactory, relay: RelayFactory) -> None:
        self.wrappedFactory = wrapped
        self.relay = relay

    def doStart(self) -> None:
        """The listener starts: so does the factory it wraps."""
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        """The listener stops: so does the factory it wraps."""
        self.wrappedFactory.doStop()

    def logPrefix(self) -> str:
        """What the listening port's log lines are prefixed with: the relay protocol's name."""
        return self.relay.relay_protocol.__name__

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        """The wrapped factory's protocol for C{addr}, or None (the port closes the socket) if it is held back."""
        source, now = source_of(addr), self.relay.clock.seconds()
        guards = self.relay.guards
        if not guards.throttle.may_open(source, now):
            guards.refused += 1
            role = self.relay.relay_protocol.role
            log_refused(log, guards, role, source, now, "has failed to authenticate too often: refused at once")
            return None
        protocol = self.wrappedFactory.buildProtocol(addr)
        if guards.handshakes is not None and protocol is not None:
            guards.handshakes.pace(protocol)  # its reads wait their turn until it authenticates
        return protocol


@implementer(IStreamServerEndpoint)
class GuardedEndpoint:
    """
    Listens on C{endpoint} (TCP or UNIX, without TLS) for a L{RelayFactory}:
    under L{Admission}, and under TLS with C{tls} if given.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, tls: CertificateOptions | None = None) -> None:
        self.endpoint = endpoint
        self.tls = tls

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen with C{protocolFactory}, a L{RelayFactory}, wrapped in TLS (if given) and L{Admission}."""
        if not isinstance(protocolFactory, RelayFactory):
            raise TypeError(f"a guarded listener serves a RelayFactory, not {protocolFactory!r}")
        wrapped: IProtocolFactory = protocolFactory
        guards = protocolFactory.guards
        if self.tls is not None:
            wrapped = TLSMemoryBIOFactory(self.tls, False, protocolFactory)
            guards.handshakes = Handshakes(protocolFactory.clock)

        def listening(port: IListeningPort) -> IListeningPort:
            guards.ports.append(port)  # paused and resumed by the guards (see Guards.opened)
            if not guards.accepting:
                port.stopReading()  # type: ignore[attr-defined]
            return port

        return self.endpoint.listen(Admission(wrapped, protocolFactory)).addCallback(listening)


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
