"""
The master's routing: each call goes to one node that implements its method
(the one with the fewest calls in flight), each event once to every node with
a matching subscription.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.protocols import amp

from nswarm.amp_commands import Implement, NoSuchMethod
from nswarm.forwarding import (
    ANSWER,
    ASK,
    CALL,
    EXCLUDE,
    Downstream,
    Relay,
    RelayProtocol,
    routed_name,
    time_left,
)


class Master(Relay):
    """
    The master relay. Its registry holds what each connected node provides.
    A call to a method nobody implements waits up to C{grace} seconds (within
    its deadline) for an implementer to appear, as during a rolling restart.
    """

    def __init__(self, clock: IReactorTime, grace: float = 0.0) -> None:
        super().__init__(clock)
        self.grace = grace
        self.nodes: dict[str, RelayProtocol] = {}
        #: Calls waiting out the grace period: method -> (caller, box, give up at).
        self.waiting: dict[str, list[tuple[RelayProtocol, amp.AmpBox, float]]] = {}
        self._grace_timer: IDelayedCall | None = None

    def peer_authenticated(self, peer: RelayProtocol) -> None:
        """A node of the same name as a connected one replaces it: the old connection is stale."""
        if peer.kind != "node" or not peer.name:
            return
        stale = self.nodes.get(peer.name)
        self.nodes[peer.name] = peer
        if stale is not None and stale is not peer:
            self.log.warn("node {name!r} connected again: closing its stale connection", name=peer.name)
            stale.close(abort=True)

    def peer_lost(self, peer: RelayProtocol) -> None:
        if self.nodes.get(peer.name) is peer:
            del self.nodes[peer.name]
        super().peer_lost(peer)

    def route_call(self, caller: RelayProtocol, box: amp.AmpBox) -> None:
        method = routed_name(box, b"method", "method")
        node = self.registry.choose(method, self.pending.in_flight)
        if node is not None:
            self.forward(caller, box, node, method)
        elif self.grace > 0 and ASK in box:
            wait = min(self.grace, time_left(box))
            self.waiting.setdefault(method, []).append((caller, box, self.clock.seconds() + wait))
            if self._grace_timer is None:
                self._grace_timer = self.clock.callLater(wait, self._give_up)
        else:
            raise self._no_such_method(method)

    @staticmethod
    def _no_such_method(method: str) -> NoSuchMethod:
        return NoSuchMethod(
            f"no service implements {method!r}: check the method name, or start a service that implements it"
        )

    def changed(self, command: type[amp.Command], names: list[str]) -> None:
        """A method that gained its first implementer takes the calls waiting for it."""
        if command is Implement:
            for method in names:
                for caller, box, _ in self.waiting.pop(method, ()):
                    if caller.transport is not None:
                        self.box_received(caller, CALL, box)

    def _give_up(self) -> None:
        self._grace_timer = None
        now = self.clock.seconds()
        for method in list(self.waiting):
            calls = self.waiting[method]
            for caller, box, give_up in [call for call in calls if call[2] <= now]:
                caller.send_error(box[ASK], self._no_such_method(method))
            calls[:] = [call for call in calls if call[2] > now]
            if not calls:
                del self.waiting[method]
        if self.waiting:
            soonest = min(give_up for calls in self.waiting.values() for _, _, give_up in calls)
            self._grace_timer = self.clock.callLater(max(0.0, soonest - now), self._give_up)

    def stop(self) -> None:
        super().stop()
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None

    def route_publish(self, publisher: RelayProtocol, box: amp.AmpBox) -> None:
        event = routed_name(box, b"event", "event")
        tag = box.get(ASK)
        self.fan_out(box, self.registry.subscribers(event), publisher if EXCLUDE in box else None)
        if tag is not None:
            publisher.send(amp.AmpBox({ANSWER: tag}))


class NodeServerProtocol(Downstream):
    """A node's connection to the master's node server (mutual TLS)."""

    kind = "node"


class ApiServerProtocol(RelayProtocol):
    """An API user's connection to the master's api server: it may call and publish."""

    kind = "api user"
