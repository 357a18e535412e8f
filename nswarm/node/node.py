"""
The node's routing: calls and events from the master go to the local services
that implement or subscribe to them; calls and events from services go up to
the master. What the services provide is aggregated and kept in sync upstream.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.protocols import amp
from twisted.python.failure import Failure

from nswarm.amp_commands import Implement, NoSuchMethod, Subscribe, Unsubscribe, UpstreamUnavailable
from nswarm.forwarding import EXCLUDE, Downstream, Relay, RelayProtocol, routed_name


class Node(Relay):
    """The node relay. Its registry holds what each local service provides."""

    def __init__(self, name: str, clock: IReactorTime, local_first: bool = True) -> None:
        super().__init__(clock)
        self.name = name
        self.local_first = local_first
        self.upstream: RelayProtocol | None = None

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
                local = self.registry.choose(method, self.pending.in_flight)
                if local is not None:
                    self.forward(caller, box, local)
                    return
            self.forward(caller, box, self._upstream())
            return
        method = routed_name(box, b"method", "method")
        service = self.registry.choose(method, self.pending.in_flight)
        if service is None:
            raise NoSuchMethod(f"node {self.name!r} has no service implementing {method!r} any more: retry the call")
        self.forward(caller, box, service)

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
        if names and self.upstream is not None:
            argument = "events" if command in (Subscribe, Unsubscribe) else "methods"
            self.upstream.callRemote(command, **{argument: names}).addErrback(self._upstream_failed, command)

    def upstream_connected(self, upstream: RelayProtocol) -> Deferred[Any]:
        """
        C{upstream} has authenticated with the master: route through it and
        register everything the local services provide (a full snapshot, so a
        reconnect restores the master's view).
        """
        self.upstream = upstream
        self.log.info("node {name!r} connected to the master", name=self.name)
        return gatherResults(
            [
                upstream.callRemote(Implement, methods=self.registry.methods()),
                upstream.callRemote(Subscribe, events=self.registry.events()),
            ],
            consumeErrors=True,
        )

    def peer_lost(self, peer: RelayProtocol) -> None:
        if peer is self.upstream:
            self.upstream = None
            self.log.warn("node {name!r} lost its connection to the master", name=self.name)
        super().peer_lost(peer)

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
