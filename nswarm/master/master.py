"""
The master's routing: each call goes to one node that implements its method
(round robin), each event once to every node with a subscriber.
"""

from __future__ import annotations

from twisted.protocols import amp

from nswarm.amp_commands import NoSuchMethod
from nswarm.forwarding import ANSWER, ASK, EXCLUDE, Downstream, Relay, RelayProtocol, routed_name


class Master(Relay):
    """The master relay. Its registry holds what each connected node provides."""

    def route_call(self, caller: RelayProtocol, box: amp.AmpBox) -> None:
        method = routed_name(box, b"method", "method")
        node = self.registry.choose(method, self.pending.in_flight)
        if node is None:
            raise NoSuchMethod(
                f"no service implements {method!r}: check the method name, "
                "or start a service that implements it"
            )
        self.forward(caller, box, node)

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
