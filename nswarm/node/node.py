"""
The node's routing: calls and events from the master go to the local services
that implement or subscribe to them; calls and events from services go up to
the master (or, cut off from it, to the node's own services: local-first).
What the services provide is kept in sync upstream (L{Upstream}); on stop
the node drains.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from nswarm.access import ALL
from nswarm.amp_commands import CALL, EVENT, EXCLUDE, METHOD, NoSuchMethod, Overloaded
from nswarm.node.upstream import Upstream
from nswarm.peercred import PeerCredentials, peer_credentials
from nswarm.relay.checks import check_rights, log_registration, routed_name
from nswarm.relay.downstream import Downstream
from nswarm.relay.relay import Relay
from nswarm.relay.router import IRouter
from nswarm.relay.state import IPeer, Registry, Request


@implementer(IRouter)
class Node:
    """The node's router. Its registry holds what each local service provides; its L{Relay} forwards."""

    log = Logger()

    def __init__(self, name: str, clock: IReactorTime, local_first: bool = True) -> None:
        self.name = name
        self.clock = clock
        self.local_first = local_first
        self.registry: Registry[IPeer] = Registry()
        self.relay = Relay(clock, self.registry, done=self._request_done)
        self.upstream = Upstream(name, self.registry)
        self._drained: list[Deferred[None]] = []
        #: The services connected now (authenticated).
        self.services: set[IPeer] = set()
        #: The factory of its service server, as "service" (for the metrics: its failed authentications).
        self.listeners: dict[str, Any] = {}

    @property
    def pending(self) -> Any:
        """The requests forwarded and not answered yet."""
        return self.relay.pending

    def stop(self) -> None:
        """Stop the timers (the daemon is stopping)."""
        self.relay.stop()

    # -- connections ---------------------------------------------------------

    def authenticated(self, peer: IPeer) -> None:
        """A service has connected (the upstream's own authentication is its own)."""
        self.services.add(peer)

    def lost(self, peer: IPeer) -> None:
        """The upstream, or a service, is gone: forget it and fail what is pending on it."""
        if peer is self.upstream.connection:
            self.upstream.lost()
            self.relay.lost(peer)
            return
        self.services.discard(peer)
        methods = self.registry.methods_of(peer)
        _, events = self.registry.remove(peer)
        self.log.info(
            "{peer} disconnected", peer=peer.description, nswarm_event="disconnected", role=peer.role, name=peer.name
        )
        for outcome in (self.upstream.methods_changed(methods), self.upstream.unsubscribed(events)):
            if outcome is not None:
                outcome.addErrback(lambda _: None)  # logged; the service is gone
        self.relay.lost(peer)

    # -- registrations -------------------------------------------------------

    def implement(self, peer: IPeer, methods: list[str], idempotent: list[str], limits: list[int]) -> Any:
        """A service implements C{methods}; answered once the master has what changed."""
        check_rights(peer, "implement", methods)
        self.registry.implement(peer, methods, idempotent, dict(zip(methods, limits, strict=False)))
        log_registration(peer, "implements", methods)
        return self.upstream.methods_changed(methods)

    def unimplement(self, peer: IPeer, methods: list[str]) -> Any:
        """A service withdraws C{methods}."""
        self.registry.unimplement(peer, methods)
        log_registration(peer, "withdraws", methods)
        return self.upstream.methods_changed(methods)

    def subscribe(self, peer: IPeer, patterns: list[str]) -> Any:
        """A service subscribes to C{patterns}; answered once the master has the new ones."""
        check_rights(peer, "subscribe", patterns)
        new = self.registry.subscribe(peer, patterns)
        log_registration(peer, "subscribes to", patterns)
        return self.upstream.subscribed(new)

    def unsubscribe(self, peer: IPeer, patterns: list[str]) -> Any:
        """A service unsubscribes from C{patterns}."""
        gone = self.registry.unsubscribe(peer, patterns)
        log_registration(peer, "unsubscribes from", patterns)
        return self.upstream.unsubscribed(gone)

    # -- routing -------------------------------------------------------------

    def call(self, caller: IPeer, box: amp.AmpBox) -> None:
        """A call from the master goes to a local service; one from a service goes up."""
        if caller is not self.upstream.connection:
            method = self._service_may("call", caller, box, METHOD, "method")
            if self.upstream.connection is None and self.local_first:
                # Cut off from the master: serve what this node implements itself.
                local = self.relay.choose(method)
                if local is not None:
                    self.relay.forward(caller, box, local, method)
                    return
            self.relay.forward(caller, box, self.upstream.required())
            return
        method = routed_name(box, METHOD, "method", self.registry.method_names)
        service = self.relay.choose(method, answering=True)
        if service is None:
            if self.relay.silent(method):
                # Refused before it ran: the master sends it to another node (or answers this, if none).
                raise Overloaded(
                    f"every service on node {self.name!r} implementing {method!r} has stopped answering (ejected "
                    "from balancing): retry later; the master sends it elsewhere when it can"
                )
            if self.registry.implemented(method):
                raise Overloaded(f"every service on node {self.name!r} implementing {method!r} is busy: retry later")
            raise NoSuchMethod(f"node {self.name!r} has no service implementing {method!r} any more: retry the call")
        self.relay.forward(caller, box, service, method)

    def call_all(self, caller: IPeer, box: amp.AmpBox) -> None:
        """A call_all from the master goes to every local implementer; one from a service goes up."""
        if caller is not self.upstream.connection:
            self._service_may("call", caller, box, METHOD, "method")
            self.relay.forward(caller, box, self.upstream.required())
            return
        method = routed_name(box, METHOD, "method")
        services = self.registry.implementers(method)
        if not services:
            raise NoSuchMethod(f"node {self.name!r} has no service implementing {method!r} any more")
        self.relay.gather(caller, box, services, CALL)

    def publish(self, publisher: IPeer, box: amp.AmpBox) -> None:
        """An event from the master goes to every matching local service; one from a service goes up."""
        if publisher is not self.upstream.connection:
            event = self._service_may("publish", publisher, box, EVENT, "event")
            upstream = self.upstream.required()
            if EXCLUDE in box:
                # The master will leave this node out: deliver to the other
                # local subscribers here.
                self.relay.fan_out(amp.AmpBox(box), self.registry.subscribers(event), publisher)
            self.relay.forward(publisher, box, upstream)
            return
        event = routed_name(box, EVENT, "event")
        self.relay.fan_out(box, self.registry.subscribers(event))

    @staticmethod
    def _service_may(action: str, service: IPeer, box: amp.AmpBox, key: bytes, kind: str) -> str:
        """The name a service's request routes on, or the error if its rights do not allow C{action} on it."""
        name = routed_name(box, key, kind)
        if service.rights is not ALL and not service.may(action, name):
            raise service.refuse(action, name)
        return name

    def cancel(self, caller: IPeer, caller_tag: bytes) -> None:
        """Cancel a forwarded request downstream."""
        self.relay.cancel(caller, caller_tag)

    # -- draining ------------------------------------------------------------

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Before stopping: withdraw everything this node provides from the
        master, so that no new calls come, then wait (at most C{timeout}
        seconds) for the calls the master sent to finish.
        """
        self.upstream.withdraw()
        connection = self.upstream.connection
        if connection is None or not self.pending.asked_by(connection):
            return succeed(None)
        drained: Deferred[None] = Deferred()
        drained.addTimeout(timeout, self.clock, onTimeoutCancel=lambda result, timeout: None)
        self._drained.append(drained)
        return drained

    def _request_done(self, request: Request[IPeer]) -> None:
        if self._drained:
            connection = self.upstream.connection
            if connection is None or not self.pending.asked_by(connection):
                drained, self._drained = self._drained, []
                for waiting in drained:
                    if not waiting.called:
                        waiting.callback(None)


class ServiceServerProtocol(Downstream):
    """A local service's connection to the node's service server (UNIX socket)."""

    role = "service"
    caller_role = "service"
    access_role = "service"
    #: Who runs the service (pid, uid, gid), from the UNIX socket; None where it cannot tell.
    credentials: PeerCredentials | None = None

    @property
    def description(self) -> str:
        """How logs and error messages name this service: with its process ("service 'Echo' (pid 7 uid 1000)")."""
        if self.credentials is None:
            return super().description
        return f"{super().description} (pid {self.credentials.pid} uid {self.credentials.uid})"

    @property
    def address(self) -> Any:
        """Where the service is, for logs: the service socket (its description gives its process)."""
        if self.credentials is None:
            return super().address
        return "the service socket"

    def connectionMade(self) -> None:
        try:
            self.credentials = peer_credentials(self.transport)
        except OSError as error:
            self.log.warn("cannot tell which process connected to the service socket: {error}", error=str(error))
        super().connectionMade()
