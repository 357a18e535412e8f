"""
In-memory clusters for tier-1 tests: real nswarm protocols connected
through nswarm.testing.memory (which keeps Twisted's iosim behind it), with
a Clock for time. Nothing here opens a socket. This Cluster hands the tests
the server ends of the connections too, which MemoryCluster keeps to itself.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.protocols import amp

from nswarm.api import APIClient
from nswarm.boxes import serialize
from nswarm.master.master import ApiServerProtocol, Master, NodeServerProtocol
from nswarm.node.node import Node, ServiceServerProtocol
from nswarm.node.upstream import UpstreamProtocol
from nswarm.relay.protocol import RelayProtocol
from nswarm.service import Service
from nswarm.service_runner import ServiceRunner
from nswarm.testing.memory import API_KEY, NODE_KEY, SERVICE_KEY, IOPump, connect, settle
from nswarm.testing.memory import ProtocolProxy as Proxy

__all__ = ["API_KEY", "NODE_KEY", "SERVICE_KEY", "connect"]


def detach(d: Deferred[Any]) -> Deferred[Any]:
    """
    Handle a raw callRemote Deferred at once (AMP drops the connection when
    one ends in an unhandled failure) and return a new one with its outcome.
    """
    detached: Deferred[Any] = Deferred()
    d.chainDeferred(detached)
    return detached


def result_of(d: Deferred[Any]) -> Any:
    """The result a Deferred has already fired with (raising its failure)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    outcome = results[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome


def failure_of(d: Deferred[Any]) -> Any:
    """The failure a Deferred has already fired with."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert hasattr(results[0], "raiseException"), f"the Deferred succeeded with {results[0]!r}"
    return results[0]


def certified(server: NodeServerProtocol, name: str) -> NodeServerProtocol:
    """C{server}, taking its peer to have presented a certificate for node C{name} (there is no TLS in memory)."""
    server.certificate_identity = lambda transport, role: name  # type: ignore[method-assign]
    return server


class Cluster:
    """A master with nodes, services and API users, all in memory."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = Clock() if clock is None else clock
        self.master = Master(self.clock)
        self.pumps: list[IOPump] = []

    def flush(self) -> None:
        """Move bytes on every connection, and run what is due at the end of the reactor's turn, until none moves."""
        settle(lambda: self.pumps, self.clock)

    def _connect(self, server: Any, client: Any) -> IOPump:
        pump = connect(server, client)
        self.pumps.append(pump)
        self.flush()
        return pump

    def add_node(self, name: str) -> tuple[Node, UpstreamProtocol, NodeServerProtocol]:
        """A node connected to the master and authenticated."""
        node = Node(name, self.clock)
        server = certified(NodeServerProtocol(self.master, self.clock, NODE_KEY), name)
        upstream = UpstreamProtocol(node, self.clock)
        self._connect(server, upstream)
        d = node.upstream.authenticate(NODE_KEY)(Proxy(upstream))
        self.flush()
        result_of(d)
        return node, upstream, server

    def add_service(self, node: Node, service: Service) -> tuple[Any, ServiceServerProtocol]:
        """C{service} connected to C{node} and registered."""
        server = ServiceServerProtocol(node, self.clock, SERVICE_KEY)
        runner = ServiceRunner(service, self.clock, SERVICE_KEY)
        proto = runner.buildProtocol(None)
        self._connect(server, proto)
        d = runner.register(Proxy(proto))
        self.flush()
        result_of(d)
        return proto, server

    def add_api(self) -> tuple[APIClient, ApiServerProtocol]:
        """An API user connected to the master and authenticated."""
        server = ApiServerProtocol(self.master, self.clock, API_KEY)
        client = APIClient()
        self._connect(server, client)
        d = client.authenticate(API_KEY)
        self.flush()
        result_of(d)
        return client, server

    def run(self, d: Deferred[Any]) -> Deferred[Any]:
        """Flush the cluster and return C{d}, which should have fired by then."""
        self.flush()
        return d


def raw_boxes(client: Any, keep: Any = None) -> list[dict[bytes, bytes]]:
    """
    The boxes SDK C{client} receives from now on (those C{keep(box)}
    accepts, if given), taken before its core sees them: for tests of what a
    server answers to boxes no SDK would send (see L{send_raw}).
    """
    taken: list[dict[bytes, bytes]] = []
    core = client.core
    original = core._box_received

    def received(box: dict[bytes, bytes]) -> None:
        if keep is None or keep(box):
            taken.append(box)
        else:
            original(box)

    core._box_received = received
    return taken


def send_raw(client: Any, box: dict[bytes, bytes]) -> None:
    """Write C{box} as it is on SDK C{client}'s connection (its tag and keys are not checked)."""
    client.transport.write(serialize(box))


def disconnect(proto: RelayProtocol | amp.AMP, cluster: Cluster) -> None:
    """Drop C{proto}'s connection and deliver the loss to both ends."""
    assert proto.transport is not None
    proto.transport.loseConnection()
    cluster.flush()
