"""
The node's routing: calls and events from the master go to the local services
that implement or subscribe to them; calls and events from services go up to
the master. What the services provide is aggregated and kept in sync upstream.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.protocols import amp
from twisted.python.failure import Failure

from nswarm.amp_commands import (
    Implement,
    NoSuchMethod,
    Overloaded,
    Subscribe,
    Unimplement,
    Unsubscribe,
    UpstreamUnavailable,
)
from nswarm.forwarding import (
    CALL,
    EXCLUDE,
    Downstream,
    Relay,
    RelayProtocol,
    routed_name,
)
from nswarm.routing import Request


class Node(Relay):
    """The node relay. Its registry holds what each local service provides."""

    def __init__(self, name: str, clock: IReactorTime, local_first: bool = True) -> None:
        super().__init__(clock)
        self.name = name
        self.local_first = local_first
        self.upstream: RelayProtocol | None = None
        #: What the master has been told of each method here: (idempotent, limit).
        self.advertised: dict[str, tuple[bool, int]] = {}
        self._drained: list[Deferred[None]] = []

    def _upstream(self) -> RelayProtocol:
        if self.upstream is None:
            raise UpstreamUnavailable(
                f"node {self.name!r} is not connected to the master: "
                "check that the master is running; the node keeps reconnecting"
            )
        return self.upstream

    def route_call(self, caller: RelayProtocol, box: amp.AmpBox) -> None:
        if caller is not self.upstream:
            if self.upstream is None and self.local_first:
                # Cut off from the master: serve what this node implements itself.
                method = routed_name(box, b"method", "method")
                local = self.choose(method)
                if local is not None:
                    self.forward(caller, box, local, method)
                    return
            self.forward(caller, box, self._upstream())
            return
        method = routed_name(box, b"method", "method", self.registry.method_names)
        service = self.choose(method)
        if service is None:
            if self.registry.implemented(method):
                raise Overloaded(f"every service on node {self.name!r} implementing {method!r} is busy: retry later")
            raise NoSuchMethod(f"node {self.name!r} has no service implementing {method!r} any more: retry the call")
        self.forward(caller, box, service, method)

    def route_call_all(self, caller: RelayProtocol, box: amp.AmpBox) -> None:
        if caller is not self.upstream:
            self.forward(caller, box, self._upstream())
            return
        method = routed_name(box, b"method", "method")
        services = self.registry.implementers(method)
        if not services:
            raise NoSuchMethod(f"node {self.name!r} has no service implementing {method!r} any more")
        self.gather(caller, box, services, CALL)

    def route_publish(self, publisher: RelayProtocol, box: amp.AmpBox) -> None:
        if publisher is not self.upstream:
            upstream = self._upstream()
            if EXCLUDE in box:
                # The master will leave this node out: deliver to the other
                # local subscribers here.
                event = routed_name(box, b"event", "event")
                self.fan_out(amp.AmpBox(box), self.registry.subscribers(event), publisher)
            self.forward(publisher, box, upstream)
            return
        event = routed_name(box, b"event", "event")
        self.fan_out(box, self.registry.subscribers(event))

    def changed(self, command: type[amp.Command], names: list[str]) -> None:
        """Tell the master when the first service adds, or the last one drops, a name."""
        if command is Implement:
            self._advertise(names)
        elif names and self.upstream is not None:
            if command is Unimplement:
                for name in names:
                    self.advertised.pop(name, None)
            argument = "events" if command in (Subscribe, Unsubscribe) else "methods"
            self.upstream.callRemote(command, **{argument: names}).addErrback(self._upstream_failed, command)

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Before stopping: withdraw everything this node provides from the
        master, so that no new calls come, then wait (at most C{timeout}
        seconds) for the calls the master sent to finish.
        """
        upstream = self.upstream
        if upstream is not None:
            self.log.info("node {name!r} draining: withdrawing its methods and events", name=self.name)
            for command, names in ((Unimplement, self.registry.methods()), (Unsubscribe, self.registry.events())):
                if names:
                    argument = "methods" if command is Unimplement else "events"
                    upstream.callRemote(command, **{argument: names}).addErrback(self._upstream_failed, command)
        if upstream is None or not self.pending.asked_by(upstream):
            return succeed(None)
        drained: Deferred[None] = Deferred()
        drained.addTimeout(timeout, self.clock, onTimeoutCancel=lambda result, timeout: None)
        self._drained.append(drained)
        return drained

    def request_done(self, request: Request[RelayProtocol]) -> None:
        if self._drained and (self.upstream is None or not self.pending.asked_by(self.upstream)):
            drained, self._drained = self._drained, []
            for waiting in drained:
                if not waiting.called:
                    waiting.callback(None)

    def _aggregate(self, method: str) -> tuple[bool, int]:
        """How C{method} stands here: idempotent if all its services say so; their summed limit."""
        return self.registry.idempotent_everywhere(method), self.registry.total_limit(method)

    def _advertise(self, methods: list[str]) -> None:
        """Tell the master this node implements C{methods}, how idempotent and limited they are here."""
        if not methods or self.upstream is None:
            return
        for method in methods:
            self.advertised[method] = self._aggregate(method)
        self.upstream.callRemote(
            Implement,
            methods=methods,
            idempotent=[method for method in methods if self.advertised[method][0]],
            limits=[self.advertised[method][1] for method in methods],
        ).addErrback(self._upstream_failed, Implement)

    def _sync_idempotence(self, methods: list[str]) -> None:
        """Re-advertise the C{methods} whose idempotence or limit here changed (a service came or went)."""
        present = set(self.registry.methods())
        self._advertise(
            [
                method
                for method in methods
                if method in present and self._aggregate(method) != self.advertised.get(method)
            ]
        )

    def implement(
        self, peer: RelayProtocol, methods: list[str], idempotent: list[str] = [], limits: list[int] = []
    ) -> None:
        super().implement(peer, methods, idempotent, limits)
        self._sync_idempotence(methods)

    def unimplement(self, peer: RelayProtocol, methods: list[str]) -> None:
        super().unimplement(peer, methods)
        self._sync_idempotence(methods)

    def upstream_connected(self, upstream: RelayProtocol) -> Deferred[Any]:
        """
        C{upstream} has authenticated with the master: route through it and
        register everything the local services provide (a full snapshot, so a
        reconnect restores the master's view).
        """
        self.upstream = upstream
        self.log.info("node {name!r} connected to the master", name=self.name)
        methods = self.registry.methods()
        self.advertised = {method: self._aggregate(method) for method in methods}
        return gatherResults(
            [
                upstream.callRemote(
                    Implement,
                    methods=methods,
                    idempotent=[method for method in methods if self.advertised[method][0]],
                    limits=[self.advertised[method][1] for method in methods],
                ),
                upstream.callRemote(Subscribe, events=self.registry.events()),
            ],
            consumeErrors=True,
        )

    def peer_lost(self, peer: RelayProtocol) -> None:
        if peer is self.upstream:
            self.upstream = None
            self.log.warn("node {name!r} lost its connection to the master", name=self.name)
        methods = self.registry.methods_of(peer)
        super().peer_lost(peer)
        self._sync_idempotence(methods)

    def _upstream_failed(self, failure: Failure, command: type[amp.Command]) -> None:
        self.log.warn(
            "could not send {command} to the master: {error}; it is sent again on reconnect",
            command=command.__name__,
            error=failure.getErrorMessage(),
        )


class ServiceServerProtocol(Downstream):
    """A local service's connection to the node's service server (UNIX socket)."""

    kind = "service"


class UpstreamProtocol(RelayProtocol):
    """The node's connection to the master's node server."""

    kind = "master"
    relay: Node

    def became_upstream(self) -> Deferred[Any]:
        """This connection has authenticated: make it the node's upstream."""
        self.start_heartbeats(self.clock, self.heartbeat)
        return self.relay.upstream_connected(self)
