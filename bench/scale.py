"""
Simulated nodes for benchmark S1 (issue 3): one process holding many node
connections to a master, started by bench/run.py (a few of these make 1000).

    python bench/scale.py --port NODE_PORT --ca ca.pem --ca-key ca.key \\
        --auth-key-file node-auth.key --count 250 --first 0

Each simulated node gets a certificate of its own for C{sim-I}, issued with
the cluster CA before any connection is made (the master names a node by its
certificate), and keeps its own TLS connection to the master's node server up
with it through L{nswarm.reconnect.Reconnecting}, the ClientService a real
node's upstream uses (same retry policy, jitter and authentication
deadline). On each connection it authenticates with the node auth key as
C{sim-I} and implements 10 methods of its own (C{sim.I.m0} .. C{sim.I.m9})
plus C{sim.shared}, which every simulated node implements: the master's
routing table then holds 10 distinct methods per node.

Each simulated node connects from a loopback address of its own
(C{127.1.0.1} and up, see L{source_address}), as each real node comes from
its own host: the master counts failed authentications, and connections
waiting to authenticate, by source address.

Registering: the nodes are started at most C{--in-flight} at a time (TCP
connect, TLS handshake, Authenticate, Implement), so the process does not
overrun the master's listen backlog. A node counts as registered when the
answer to its Implement arrives: the master has then added its methods. Once
all are, the process prints one JSON line on stdout (C{nodes},
C{first_attempt} and C{last_registered} on the C{time.monotonic} clock, which
all processes share on Linux, and C{seconds}); if an attempt fails, a JSON
line with C{error}, and it exits with status 1.

Reconnecting: on SIGUSR1 every node's connection is aborted at once, as when
the master goes away, and each node reconnects on its own, as a real node
whose upstream was up does (after a random wait of at most
C{--lost-max-delay} seconds, then again as often until it is back), with no
limit on how many at once. Once all have registered again it prints a second
JSON line (C{phase} C{"reconnect"}, C{lost_at}, C{first_attempt},
C{last_registered}, C{seconds}, C{attempts}, C{failed_attempts}).

It stays connected, sending and taking heartbeats as a real node does,
until SIGTERM, when it closes every connection and exits.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, ensureDeferred
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from nswarm import defaults
from nswarm.amp_commands import Authenticate, Heartbeat, Implement
from nswarm.config import read_secret_file
from nswarm.failures import node_server
from nswarm.heartbeat_wheel import wheel
from nswarm.pki import issue_client_certificate, load_certified_key
from nswarm.reconnect import AuthenticationDeadline, Reconnecting

METHODS = 10
#: A heartbeat as a node sends it (no answer asked for).
HEARTBEAT_BYTES = amp.AmpBox({b"_command": Heartbeat.commandName}).serialize()
SHARED = "sim.shared"


class SimulatedNode(amp.AMP):
    """
    A node connection that does nothing after registering but what keeps it
    up: it takes the master's heartbeats (an AMP peer without a responder
    for them drops the connection) and sends its own, as a real node does
    (the master closes a connection it has heard nothing from for three
    intervals).
    """

    clock: Any = None

    @Heartbeat.responder
    def heartbeat(self) -> dict[str, Any]:
        """The master's heartbeat: nothing to answer."""
        return {}

    def start_heartbeats(self) -> None:
        """
        Registered: send a heartbeat every interval, as long as the
        connection is up, on the heartbeat wheel a real node's connections
        use (one timer for all of this process's nodes), as the bytes
        C{callRemote(Heartbeat)} would write.
        """
        self.beats = wheel(self.clock, defaults.HEARTBEAT)
        self.beats.join(self, lambda: self.transport.write(HEARTBEAT_BYTES))

    def connectionLost(self, reason: Any) -> None:  # type: ignore[override]
        beats = getattr(self, "beats", None)
        if beats is not None:
            beats.leave(self)
        super().connectionLost(reason)


class Phase:
    """One phase (registering, or reconnecting): when it began, its connection attempts, and who is registered."""

    def __init__(self, name: str, count: int) -> None:
        self.name = name
        self.count = count
        self.began = time.monotonic()
        self.attempts: list[float] = []
        self.registered: dict[int, float] = {}
        self.failures: list[Failure] = []
        self.done: Deferred[None] = Deferred()

    def report(self, first: int) -> dict[str, Any]:
        """The JSON line of this phase."""
        last = max(self.registered.values(), default=self.began)
        report: dict[str, Any] = {"first": first, "phase": self.name, "nodes": len(self.registered)}
        if self.name == "register":
            report["first_attempt"] = min(self.attempts, default=self.began)
            report["seconds"] = round(last - report["first_attempt"], 3)
        else:
            report["lost_at"] = self.began
            report["first_attempt"] = min(self.attempts, default=self.began)
            report["seconds"] = round(last - self.began, 3)
            report["attempts"] = len(self.attempts)
            report["failed_attempts"] = len(self.attempts) - len(self.registered)
        report["last_registered"] = last
        return report


@implementer(IStreamClientEndpoint)
class Counted:
    """C{endpoint}, whose connection attempts are counted in the simulator's current phase."""

    def __init__(self, endpoint: IStreamClientEndpoint, simulator: Simulator, index: int) -> None:
        self.endpoint = endpoint
        self.simulator = simulator
        self.index = index

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        """Connect, noting the attempt, and a failure (which ends the registering phase)."""
        self.simulator.phase.attempts.append(time.monotonic())
        return self.endpoint.connect(protocolFactory).addErrback(self.simulator.failed, self.index)


class Simulator:
    """The simulated nodes of one process: their reconnecting services, their connections, and the phase."""

    def __init__(self, reactor: Any, options: argparse.Namespace, key: bytes) -> None:
        self.reactor = reactor
        self.options = options
        self.key = key
        self.phase = Phase("register", options.count)
        self.services: dict[int, Reconnecting] = {}
        self.connections: dict[int, SimulatedNode] = {}
        self.factory = Factory.forProtocol(SimulatedNode)
        SimulatedNode.clock = reactor
        self.waiting: dict[int, Deferred[None]] = {}
        self.target = node_server("localhost", options.port, options.ca)

    def add(self, index: int, endpoint: IStreamClientEndpoint) -> None:
        """Simulated node C{index}, connecting through C{endpoint} once started."""
        deadline = AuthenticationDeadline(
            self.reactor, defaults.CLIENT_AUTH_TIMEOUT, self.target, "upstream-auth-timeout"
        )
        self.services[index] = Reconnecting(
            self.reactor,
            Counted(endpoint, self, index),
            self.factory,
            lambda proto: self.prepare(index, proto, deadline),
            f"node 'sim-{index}'",
            self.target,
            defaults.NODE_RECONNECT_MAX_DELAY,
            self.options.lost_max_delay,
        )

    def start(self, index: int) -> Deferred[None]:
        """Start node C{index}; fires once it has registered (or failed: see L{failed})."""
        self.waiting[index] = Deferred()
        self.services[index].startService()
        return self.waiting[index]

    def prepare(self, index: int, proto: Any, deadline: AuthenticationDeadline) -> Deferred[None]:
        """What a node does on each connection: authenticate (within the deadline), then implement."""
        methods = [f"sim.{index}.m{number}" for number in range(METHODS)] + [SHARED]
        d = deadline.bound(proto, proto.callRemote(Authenticate, key=self.key, name=f"sim-{index}"))
        d.addCallback(lambda _: proto.callRemote(Implement, methods=methods))
        d.addCallback(lambda _: self.registered(index, proto))
        d.addErrback(self.failed, index)
        return d

    def registered(self, index: int, proto: Any) -> None:
        """Node C{index} is registered on connection C{proto}."""
        self.connections[index] = proto._protocol  # the protocol itself, not ClientService's proxy
        self.connections[index].start_heartbeats()
        phase = self.phase
        phase.registered.setdefault(index, time.monotonic())
        waiting = self.waiting.pop(index, None)
        if waiting is not None:
            waiting.callback(None)
        if len(phase.registered) == phase.count and not phase.done.called:
            phase.done.callback(None)

    def failed(self, failure: Failure, index: int) -> Failure:
        """An attempt failed: while registering, that ends it; while reconnecting, the node retries."""
        if self.phase.name == "register":
            self.phase.failures.append(failure)
            waiting = self.waiting.pop(index, None)
            if waiting is not None:
                self.reactor.callLater(0, self.services[index].stopService)
                waiting.errback(failure)
        return failure

    def reconnect(self) -> None:
        """Abort every node's connection at once (as a master that goes away); they reconnect by themselves."""
        connections, self.connections = self.connections, {}
        self.phase = Phase("reconnect", len(connections))
        self.phase.done.addCallback(lambda _: print(json.dumps(self.phase.report(self.options.first)), flush=True))
        for proto in connections.values():
            if proto.transport is not None:
                proto.transport.abortConnection()

    def close(self) -> Deferred[Any]:
        """Stop every node (closing its connection); fires once all have (after 5 s, what is left is aborted)."""
        stopped = DeferredList([service.stopService() for service in self.services.values()])

        def abort() -> None:
            for proto in self.connections.values():
                if proto.transport is not None:
                    proto.transport.abortConnection()

        timer = self.reactor.callLater(5, abort)
        stopped.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return stopped


@implementer(IOpenSSLClientConnectionCreator)
class NodeTLS:
    """
    The TLS of one simulated node: the process's one client context (which
    checks the master's certificate and name, as a node's does), with this
    node's certificate and key set on each connection. A real node builds
    its context once, not once a connection: one per simulated node would
    cost the simulators about a millisecond a node that no node pays.
    """

    def __init__(self, shared: Any, certificate: ssl.PrivateCertificate) -> None:
        self.shared = shared
        self.certificate = certificate

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        """A connection of the shared context, presenting this node's certificate."""
        connection = self.shared.clientConnectionForTLS(tlsProtocol)
        connection.use_certificate(self.certificate.original)
        connection.use_privatekey(self.certificate.privateKey.original)
        return connection


def source_address(index: int) -> str:
    """The loopback address node C{index} connects from: 127.1.0.1 for node 0, and on (Linux routes 127/8 to lo)."""
    return str(ipaddress.IPv4Address("127.1.0.1") + index)


def raise_fd_limit() -> None:
    """Each connection is a file descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def simulate(reactor: Any, options: argparse.Namespace) -> None:
    simulator = Simulator(reactor, options, read_secret_file(options.auth_key_file))
    ca_pem = Path(options.ca).read_bytes()
    ca = load_certified_key(ca_pem, Path(options.ca_key).read_bytes())
    trust = ssl.Certificate.loadPEM(ca_pem)
    shared = ssl.optionsForClientTLS("localhost", trustRoot=trust)
    indexes = range(options.first, options.first + options.count)
    for index in indexes:
        node = issue_client_certificate(ca, f"sim-{index}")
        mine = ssl.PrivateCertificate.loadPEM(node.certificate_pem() + node.key_pem())
        tls = NodeTLS(shared, mine)
        endpoint = SSL4ClientEndpoint(
            reactor, "127.0.0.1", options.port, tls, timeout=60, bindAddress=(source_address(index), 0)
        )
        simulator.add(index, endpoint)
    gate = DeferredSemaphore(options.in_flight)
    phase = simulator.phase = Phase("register", options.count)  # from here: certificates are not timed
    await DeferredList([gate.run(simulator.start, index) for index in indexes], consumeErrors=True)
    report = phase.report(options.first)
    if phase.failures:
        report["error"] = (
            f"{len(phase.failures)} of {options.count} failed, first: {phase.failures[0].getErrorMessage()}"
        )
    print(json.dumps(report), flush=True)

    # Stay connected (reconnecting on SIGUSR1) until SIGTERM (react's reactor stops on it); then close them all.
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(simulator.reconnect))
    stopping: Deferred[None] = Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", simulator.close)
    if phase.failures:
        raise SystemExit(1)
    await stopping


def main() -> None:
    parser = argparse.ArgumentParser(description="simulated nswarm nodes for benchmark S1")
    parser.add_argument("--port", type=int, required=True, help="the master's node server port on 127.0.0.1")
    parser.add_argument("--ca", required=True, help="the cluster CA (ca.pem)")
    parser.add_argument("--ca-key", required=True, help="the cluster CA's key (ca.key): each node gets a certificate")
    parser.add_argument("--auth-key-file", required=True, help="the node auth key (node-auth.key)")
    parser.add_argument("--count", type=int, default=250, help="nodes to simulate")
    parser.add_argument("--first", type=int, default=0, help="number of the first node (names sim-FIRST ...)")
    parser.add_argument("--in-flight", type=int, default=50, help="registrations under way at once")
    parser.add_argument(
        "--lost-max-delay",
        type=float,
        default=defaults.RECONNECT_LOST_MAX_DELAY,
        help="longest wait between attempts to reconnect after a loss (the node's reconnect-lost-max-delay)",
    )
    options = parser.parse_args()
    raise_fd_limit()
    # Warnings (a failed attempt, with its cause) go to standard error, which run.py keeps in sim-N.log.
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    react(lambda reactor: ensureDeferred(simulate(reactor, options)))


if __name__ == "__main__":
    main()
