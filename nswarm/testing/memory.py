"""
A whole nswarm cluster in memory, for unit tests: a master, nodes, services
and API users, the real nswarm protocols connected through Twisted's iosim
(the one place nswarm uses it: it lives in C{twisted.test}, which Twisted
does not promise to keep stable) and driven by a C{twisted.internet.task.Clock}. Nothing opens a
socket, nothing waits on wall-clock time::

    cluster = MemoryCluster()
    node = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    api = cluster.add_api()
    assert cluster.result(api.call("greet", "world")) == "hello, world!"

Time moves only when the test says so: C{cluster.advance(seconds)}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.test.iosim import IOPump, connectedServerAndClient

from nswarm import defaults
from nswarm.api import APIClient
from nswarm.master.master import ApiServerProtocol, Master, NodeServerProtocol
from nswarm.node.node import Node, ServiceServerProtocol
from nswarm.node.upstream import UpstreamProtocol
from nswarm.service import Service
from nswarm.service_protocol import ServiceProtocol
from nswarm.service_runner import ServiceRunner

__all__ = ["MemoryCluster", "IOPump", "ProtocolProxy", "connect", "settle"]

#: The auth keys of the in-memory cluster's three kinds of connection.
NODE_KEY = b"node-key-0123456789abcdef"
API_KEY = b"api-key-0123456789abcdef"
SERVICE_KEY = b"service-key-0123456789abcdef"


def connect(server: Any, client: Any) -> IOPump:
    """Connect two protocol instances in memory; return their pump."""
    _, _, pump = connectedServerAndClient(lambda: server, lambda: client, greet=False)
    return pump


class ProtocolProxy:
    """Stands in for ClientService's protocol proxy, which prepareConnection receives."""

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol, name)


def settle(pumps: Callable[[], Iterable[IOPump]], clock: Clock) -> None:
    """
    Move bytes on every pump (C{pumps()}, asked again each round: moving
    bytes may connect more), and end the reactor's turn (run C{clock}'s
    calls due now: a relay writes the events of a turn at its end), until
    nothing moves.
    """
    while True:
        moved = any([pump.pump() for pump in pumps()])
        if any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()):
            clock.advance(0)
        elif not moved:
            return


class MemoryCluster:
    """A master with nodes, services and API users, all in memory, on one C{twisted.internet.task.Clock}."""

    def __init__(self, grace: float = defaults.GRACE, queue_size: int = defaults.QUEUE_SIZE) -> None:
        self.clock = Clock()
        self.master = Master(self.clock, grace=grace, queue_size=queue_size)
        self.pumps: list[IOPump] = []

    def flush(self) -> None:
        """Move bytes on every connection, and run what is due at the end of the reactor's turn, until none moves."""
        settle(lambda: self.pumps, self.clock)

    def advance(self, seconds: float) -> None:
        """Deliver what is in flight, let C{seconds} pass on the cluster's clock, then deliver what that sent."""
        self.flush()
        self.clock.advance(seconds)
        self.flush()

    def connect(self, server: Any, client: Any) -> IOPump:
        """Connect a server and a client protocol of this cluster in memory and deliver what they send."""
        pump = connect(server, client)
        self.pumps.append(pump)
        self.flush()
        return pump

    def add_node(self, name: str) -> Node:
        """A node connected to the master and authenticated."""
        node = Node(name, self.clock)
        self.connect_upstream(node)
        return node

    def connect_upstream(self, node: Node) -> UpstreamProtocol:
        """Connect C{node} to the master (again) and authenticate; return its upstream connection."""
        server = NodeServerProtocol(self.master, self.clock, NODE_KEY)
        server.certificate_identity = lambda transport, role: node.name
        upstream = UpstreamProtocol(node, self.clock)
        self.connect(server, upstream)
        self.result(node.upstream.authenticate(NODE_KEY)(ProtocolProxy(upstream)))
        return upstream

    def add_service(self, node: Node, service: Service) -> ServiceProtocol:
        """C{service} connected to C{node} and registered; return its connection."""
        server = ServiceServerProtocol(node, self.clock, SERVICE_KEY)
        runner = ServiceRunner(service, self.clock, SERVICE_KEY)
        proto = runner.buildProtocol(None)
        self.connect(server, proto)
        self.result(runner.register(ProtocolProxy(proto)))
        return proto

    def add_api(self) -> APIClient:
        """An API user connected to the master and authenticated."""
        server = ApiServerProtocol(self.master, self.clock, API_KEY)
        client = APIClient()
        self.connect(server, client)
        self.result(client.authenticate(API_KEY))
        return client

    def result(self, d: Deferred[Any]) -> Any:
        """Deliver what is in flight, then return what C{d} fired with (raising its failure)."""
        self.flush()
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        if not outcome:
            raise AssertionError("the Deferred has not fired: is something waiting on the clock? advance() it")
        if hasattr(outcome[0], "raiseException"):
            outcome[0].raiseException()
        return outcome[0]
