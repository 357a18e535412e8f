"""
Simulated nodes for benchmark S1 (issue 3): one process holding many node
connections to a master, started by bench/run.py (a few of these make 1000).

    python bench/scale.py --port NODE_PORT --ca ca.pem --ca-key ca.key \\
        --auth-key-file node-auth.key --count 250 --first 0

Each simulated node gets a certificate of its own for C{sim-I}, issued with
the cluster CA before any connection is made (the master names a node by its
certificate), opens its own TLS connection to the master's node server with
it, authenticates with the node auth key as C{sim-I}, and implements 10
methods of its own (C{sim.I.m0} .. C{sim.I.m9}) plus C{sim.shared}, which
every simulated node implements: the master's routing table then holds 10
distinct methods per node. At most C{--in-flight} registrations (TCP
connect, TLS handshake, Authenticate, Implement) run at once, so the process
does not overrun the master's listen backlog.

A node counts as registered when the answer to its Implement arrives: the
master has then added its methods. Once all are, the process prints one JSON
line on stdout (C{nodes}, C{first_attempt} and C{last_registered} on the
C{time.monotonic} clock, which all processes share on Linux, and C{seconds});
if one fails, a JSON line with C{error}, and it exits with status 1. It then
stays connected until SIGTERM, when it closes every connection and exits.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    ensureDeferred,
)
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import react
from twisted.protocols import amp

from nswarm.amp_commands import Authenticate, Implement
from nswarm.config import read_secret_file
from nswarm.pki import issue_client_certificate, load_certified_key

METHODS = 10
SHARED = "sim.shared"


class SimulatedNode(amp.AMP):
    """A node connection that does nothing after registering; tells its owner when it is gone."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)


def raise_fd_limit() -> None:
    """Each connection is a file descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def simulate(reactor: Any, options: argparse.Namespace) -> None:
    key = read_secret_file(options.auth_key_file)
    ca_pem = Path(options.ca).read_bytes()
    ca = load_certified_key(ca_pem, Path(options.ca_key).read_bytes())
    trust = ssl.Certificate.loadPEM(ca_pem)
    endpoints = {}
    for index in range(options.first, options.first + options.count):
        node = issue_client_certificate(ca, f"sim-{index}")
        mine = ssl.PrivateCertificate.loadPEM(node.certificate_pem() + node.key_pem())
        tls = ssl.optionsForClientTLS("localhost", trustRoot=trust, clientCertificate=mine)
        endpoints[index] = SSL4ClientEndpoint(reactor, "127.0.0.1", options.port, tls, timeout=60)
    factory = Factory.forProtocol(SimulatedNode)
    nodes: list[SimulatedNode] = []
    gate = DeferredSemaphore(options.in_flight)
    first_attempt = time.monotonic()
    registered_at: list[float] = []

    async def register(index: int) -> None:
        node: SimulatedNode = await endpoints[index].connect(factory)
        nodes.append(node)
        await node.callRemote(Authenticate, key=key, name=f"sim-{index}")
        methods = [f"sim.{index}.m{number}" for number in range(METHODS)] + [SHARED]
        await node.callRemote(Implement, methods=methods)
        registered_at.append(time.monotonic())

    indexes = range(options.first, options.first + options.count)
    results = await DeferredList([gate.run(register, index) for index in indexes], consumeErrors=True)
    failures: list[Any] = [result for ok, result in results if not ok]
    report: dict[str, Any] = {
        "first": options.first,
        "nodes": len(registered_at),
        "first_attempt": first_attempt,
        "last_registered": max(registered_at, default=first_attempt),
    }
    report["seconds"] = round(report["last_registered"] - first_attempt, 3)
    if failures:
        report["error"] = f"{len(failures)} of {options.count} failed, first: {failures[0].getErrorMessage()}"
    print(json.dumps(report), flush=True)

    # Stay connected until SIGTERM (react's reactor stops on it); then close every connection.
    stopping: Deferred[None] = Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", lambda: close(reactor, nodes))
    if failures:
        raise SystemExit(1)
    await stopping


def close(reactor: Any, nodes: list[SimulatedNode]) -> Deferred[Any]:
    """Close every connection; fires once all are gone (after 5 s, whatever is left is aborted)."""
    for node in nodes:
        if node.transport is not None:
            node.transport.loseConnection()
    lost = DeferredList([node.lost for node in nodes])
    abort = reactor.callLater(
        5,
        lambda: [
            node.transport.abortConnection()  # type: ignore[attr-defined]
            for node in nodes
            if not node.lost.called and node.transport is not None
        ],
    )
    lost.addBoth(lambda result: abort.cancel() if abort.active() else None)
    return lost


def main() -> None:
    parser = argparse.ArgumentParser(description="simulated nswarm nodes for benchmark S1")
    parser.add_argument("--port", type=int, required=True, help="the master's node server port on 127.0.0.1")
    parser.add_argument("--ca", required=True, help="the cluster CA (ca.pem)")
    parser.add_argument("--ca-key", required=True, help="the cluster CA's key (ca.key): each node gets a certificate")
    parser.add_argument("--auth-key-file", required=True, help="the node auth key (node-auth.key)")
    parser.add_argument("--count", type=int, default=250, help="nodes to simulate")
    parser.add_argument("--first", type=int, default=0, help="number of the first node (names sim-FIRST ...)")
    parser.add_argument("--in-flight", type=int, default=50, help="registrations under way at once")
    options = parser.parse_args()
    raise_fd_limit()
    react(lambda reactor: ensureDeferred(simulate(reactor, options)))


if __name__ == "__main__":
    main()
