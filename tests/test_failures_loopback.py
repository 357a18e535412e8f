"""
Tier 2: what real connection failures say, on the real reactor with
loopback TLS and UNIX sockets (tests/test_loopback.py's cluster: ports 0,
a clean reactor afterwards): a node at a closed port or at the api port, an
API user at the node port, a service at a missing socket; and no line a
running cluster logs shows an object's repr.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from nswarm import api
from nswarm.amp_commands import UpstreamUnavailable
from nswarm.node import tap as node_tap

from .test_loopback import BOUND, Cluster, Echo, clean_reactor, cluster, cluster_dir, reactor, start_echo

__all__ = ["clean_reactor", "cluster", "cluster_dir"]  # the fixtures this module uses


class Log:
    """The events logged while a test runs, and a way to wait for one of them."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self._waiting: list[tuple[Callable[[LogEvent], bool], Deferred[LogEvent]]] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)
        for predicate, d in list(self._waiting):
            if predicate(event) and not d.called:
                self._waiting.remove((predicate, d))
                # Not from inside the code that logs (a ClientService mid-transition, say): from the reactor.
                reactor.callLater(0, _deliver, d, event)

    def when(self, predicate: Callable[[LogEvent], bool]) -> Deferred[LogEvent]:
        """The first event (logged from now on) that satisfies C{predicate}, within the tests' bound."""
        d: Deferred[LogEvent] = Deferred()
        self._waiting.append((predicate, d))
        return d.addTimeout(BOUND, reactor)

    def attempt(self, cause: str) -> Deferred[LogEvent]:
        """The next failed connection attempt logged, which must have C{cause}."""
        return self.when(lambda event: event.get("nswarm_event") == "connect_failed").addCallback(_cause, cause)


def _deliver(d: Deferred[LogEvent], event: LogEvent) -> None:
    if not d.called:  # it may have timed out meanwhile
        d.callback(event)


def _cause(event: LogEvent, cause: str) -> LogEvent:
    assert event["cause"] == cause, event["reason"]
    return event


@pytest.fixture
def log() -> Iterator[Log]:
    """Every event logged during the test (set up before the cluster, so its start is seen too)."""
    observed = Log()
    globalLogPublisher.addObserver(observed)
    yield observed
    globalLogPublisher.removeObserver(observed)


async def run_node(cluster: Cluster, port: int) -> Any:
    """Another node daemon (from its tap), pointed at C{port} on localhost."""
    options = node_tap.Options()
    options.parseOptions(
        [
            "--config",
            str(cluster.directory / "node.conf"),
            "--upstream-port",
            str(port),
            "--service-socket",
            str(cluster.directory / "other" / "node.sock"),
            "--name",
            "loopback",
        ]
    )
    node = node_tap.makeService(options, reactor)
    node.privilegedStartService()
    node.startService()
    return node


def closed_port() -> int:
    """A loopback port nothing listens on (it was bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_a_node_at_a_closed_port_says_connection_refused(log: Log, cluster: Cluster) -> None:
    port = closed_port()
    attempt = log.attempt("refused")
    node = await run_node(cluster, port)
    try:
        event = await attempt
    finally:
        await node.stopService()
    assert event["reason"] == (
        f"connection refused by localhost:{port}: is the master running, and is this its node port? "
        "Check upstream-host and upstream-port"
    )


@pytest_twisted.ensureDeferred
async def test_a_node_at_the_api_port_says_it_is_the_api_server(log: Log, cluster: Cluster) -> None:
    port = int(cluster.ports["api"])
    attempt = log.attempt("wrong_server")
    node = await run_node(cluster, port)
    try:
        event = await attempt
    finally:
        await node.stopService()
    assert event["reason"] == (f"localhost:{port} is the master's api server, not its node server: check upstream-port")
    assert formatEvent(event).startswith(f"node 'loopback' could not connect: {event['reason']} (attempt 1; ")


@pytest_twisted.ensureDeferred
async def test_an_api_user_at_the_node_port_is_told_so(cluster: Cluster) -> None:
    port = int(cluster.ports["node"])
    with pytest.raises(UpstreamUnavailable) as raised:
        await api.connect(
            reactor,
            "localhost",
            port,
            key=cluster.key("api-auth.key"),
            ca=str(cluster.directory / "ca.pem"),
            cert=str(cluster.directory / "api.pem"),
            cert_key=str(cluster.directory / "api.key"),
        )
    assert str(raised.value) == f"localhost:{port} is the master's node server, not its api server: check port"


@pytest_twisted.ensureDeferred
async def test_an_api_user_at_a_closed_port_is_told_connection_refused(cluster_dir: Path, clean_reactor: None) -> None:
    port = closed_port()
    with pytest.raises(UpstreamUnavailable, match=rf"^connection refused by localhost:{port}: is the master running"):
        await api.connect(reactor, "localhost", port, key=b"some-key", ca=str(cluster_dir / "ca.pem"))


@pytest_twisted.ensureDeferred
async def test_a_service_at_a_missing_socket_says_so(log: Log, cluster_dir: Path, clean_reactor: None) -> None:
    missing = cluster_dir / "nowhere" / "node.sock"
    attempt = log.attempt("no_socket")
    service = Echo()
    service.start(reactor, str(missing), b"some-key")
    try:
        event = await attempt
    finally:
        await service.stop()
    assert formatEvent(event).startswith(
        f"service 'Echo' could not connect: {missing} does not exist: is the node running, and is this its "
        "service-socket? (attempt 1; retrying in "
    )


@pytest_twisted.ensureDeferred
async def test_no_line_a_running_cluster_logs_shows_an_object_repr(log: Log, cluster: Cluster) -> None:
    """From the daemons' start to a call through a service and the service's stop."""
    service = await start_echo(cluster)
    client = await cluster.api()
    try:
        assert await client.call("echo", "hi") == "hi"
    finally:
        await client.close()
        await service.stop()
    assert [event for event in log.events if event.get("nswarm_event") == "connected"]
    for event in log.events:
        line = formatEvent(event)
        assert " object at 0x" not in line and "Address(" not in line, line
