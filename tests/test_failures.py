"""
Tier 1: what a connection failure says (nswarm.failures), and that the
reconnecting clients (a node's upstream, a service) log it once per failed
attempt, in place of ClientService's "Scheduling retry ... <... object at
0x...>"; a node pointed at the api port says so. No sockets, a Clock.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from OpenSSL.SSL import Error as TLSError
from service_identity import VerificationError
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test.iosim import FakeAddress
from zope.interface import implementer

from nswarm.amp_commands import AuthenticationFailed, LimitExceeded, UpstreamUnavailable
from nswarm.api import APIClient
from nswarm.cluster_files import init_cluster
from nswarm.config import ConfigError
from nswarm.failures import (
    Target,
    address_text,
    api_server,
    diagnose,
    explain,
    node_server,
    service_socket,
    this_is,
)
from nswarm.master.master import ApiServerProtocol, Master, NodeServerProtocol
from nswarm.node import tap as node_tap
from nswarm.node.node import Node, ServiceServerProtocol
from nswarm.node.upstream import UpstreamProtocol
from nswarm.relay.protocol import RelayFactory
from nswarm.service import Service, implement, subscribe
from nswarm.service_runner import ServiceRunner

from .support import API_KEY, NODE_KEY, SERVICE_KEY, Cluster, certified, connect, disconnect, failure_of, result_of

NODE = node_server("master.example", 6666, "/etc/nswarm/ca.pem")
API = api_server("master.example", 6667, "/etc/nswarm/ca.pem")
SOCKET = service_socket("/run/nswarm/node.sock")


def tls(reason: str) -> TLSError:
    """An OpenSSL error as pyOpenSSL raises it."""
    return TLSError([("SSL routines", "", reason)])


CASES: list[tuple[Target, BaseException, str, str]] = [
    (
        NODE,
        error.ConnectionRefusedError(111, "Connection refused"),
        "refused",
        "connection refused by master.example:6666: is the master running, and is this its node port? "
        "Check upstream-host and upstream-port",
    ),
    (API, error.ConnectionRefusedError(111, "Connection refused"), "refused", "is this its api port? Check host"),
    (NODE, error.TimeoutError(), "timeout", "master.example:6666 did not answer within 30 s: check upstream-host"),
    (NODE, error.TCPTimedOutError(110, "Connection timed out"), "timeout", "master.example:6666 did not answer"),
    (NODE, error.DNSLookupError("master.example"), "dns", "cannot resolve the host name 'master.example'"),
    (NODE, error.NoRouteError(113, "No route to host"), "unreachable", "no route to master.example:6666"),
    (
        NODE,
        tls("certificate verify failed"),
        "tls_untrusted",
        "the master's certificate at master.example:6666 is not signed by the CA in /etc/nswarm/ca.pem",
    ),
    (NODE, VerificationError(errors=[]), "tls_hostname", "does not name 'master.example': set upstream-host"),
    (NODE, tls("tlsv1 alert unknown ca"), "tls_certificate_refused", "nswarm issue node NAME"),
    (NODE, tls("tlsv13 alert certificate required"), "tls_certificate_required", "give node-cert and node-cert-key"),
    (API, tls("tlsv13 alert certificate required"), "tls_certificate_required", "connect to its api port"),
    (NODE, tls("wrong version number"), "not_tls", "master.example:6666 does not speak TLS"),
    (NODE, tls("no shared cipher"), "tls_incompatible", "TLS 1.2 or later with AEAD suites"),
    (NODE, tls("something new"), "tls", "TLS with master.example:6666 failed (something new): check ca"),
    (
        NODE,
        error.ConnectionLost(),
        "closed",
        "master.example:6666 closed the connection before this node authenticated",
    ),
    (
        API,
        UpstreamUnavailable("the connection to master closed before it answered"),
        "closed",
        "master.example:6667 closed the connection before this client authenticated",
    ),
    (
        NODE,
        AuthenticationFailed(f"wrong api user auth key: check the key file this client uses {this_is('api user')}"),
        "wrong_server",
        "master.example:6666 is the master's api server, not its node server: check upstream-port",
    ),
    (
        API,
        AuthenticationFailed(f"the certificate this node presented names no node {this_is('node')}"),
        "wrong_server",
        "master.example:6667 is the master's node server, not its api server: check port",
    ),
    (
        NODE,
        AuthenticationFailed(f"wrong node auth key: check the key file this client uses {this_is('node')}"),
        "authentication",
        "the master's node server at master.example:6666 refused this node: wrong node auth key",
    ),
    (NODE, LimitExceeded("node 'n1' has 5 methods: register fewer"), "refused", "register fewer"),
    (NODE, error.ConnectError(99, "Cannot assign requested address"), "other", "Cannot assign requested address"),
    (
        SOCKET,
        error.ConnectError(errno.ENOENT, "No such file or directory"),
        "no_socket",
        "/run/nswarm/node.sock does not exist: is the node running",
    ),
    (
        SOCKET,
        error.ConnectError(errno.EACCES, "Permission denied"),
        "permission",
        "permission denied on /run/nswarm/node.sock: the node's socket is for its own user only",
    ),
    (SOCKET, error.ConnectionRefusedError(111, "Connection refused"), "refused", "no node is listening on it"),
    (SOCKET, UpstreamUnavailable("gone"), "closed", "closed the connection before this service authenticated"),
    (SOCKET, ConfigError("the node socket is served by uid 7: refusing"), "refused", "served by uid 7"),
    (SOCKET, error.ConnectError(errno.ENAMETOOLONG, "File name too long"), "other", "File name too long: check"),
]


@pytest.mark.parametrize("target, value, cause, says", CASES)
def test_each_connection_failure_says_its_cause_and_what_to_do(
    target: Target, value: BaseException, cause: str, says: str
) -> None:
    diagnosis = diagnose(Failure(value), target)
    assert diagnosis.cause == cause
    assert says in diagnosis.message
    assert " object at 0x" not in diagnosis.message
    assert explain(value, target) == diagnosis.message


def test_addresses_are_written_as_host_port_or_a_path_never_as_reprs() -> None:
    assert address_text(IPv4Address("TCP", "10.0.0.5", 51234)) == "10.0.0.5:51234"
    assert address_text(IPv6Address("TCP", "::1", 6666)) == "[::1]:6666"
    assert address_text(UNIXAddress(b"/run/nswarm/node.sock")) == "/run/nswarm/node.sock"
    assert address_text(UNIXAddress(None)) == "an unnamed UNIX socket"
    assert address_text("pid 7 uid 1000") == "pid 7 uid 1000"
    assert address_text(None) == "(disconnected)"
    assert address_text(FakeAddress()) == "an address of type FakeAddress"


def test_the_servers_name_themselves_in_their_refusals() -> None:
    """The api server's refusal of a node's key, and the node server's of an API user's certificate."""
    clock = Clock()
    master = Master(clock)
    api = ApiServerProtocol(master, clock, API_KEY)
    with pytest.raises(AuthenticationFailed) as raised:
        api.admit(NODE_KEY, "node-1")
    assert str(raised.value).endswith("(this is the master's api server)")
    node_server_end = NodeServerProtocol(master, clock, NODE_KEY)
    node_server_end.certificate_identity = lambda transport, role: None  # type: ignore[method-assign]
    with pytest.raises(AuthenticationFailed) as raised:
        node_server_end.identify("alice")
    assert str(raised.value).endswith(this_is("node"))


# -- the reconnecting clients --------------------------------------------------


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    Connects each attempt in memory to a new server end from C{server}, or,
    while C{failures} holds exceptions, fails with the next one.
    """

    def __init__(
        self, server: Callable[[], Any], failures: list[BaseException] | None = None, pumps: list[Any] | None = None
    ) -> None:
        self.server = server
        self.failures = failures or []
        self.pumps: list[Any] = [] if pumps is None else pumps

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        if self.failures:
            failed: Deferred[Any] = Deferred()
            failed.errback(self.failures.pop(0))
            return failed
        client = protocolFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6666))
        self.pumps.append(connect(self.server(), client))
        self.flush()
        return succeed(client)

    def flush(self) -> None:
        """Deliver what every connection made so far has sent."""
        while any([pump.pump() for pump in self.pumps]):
            pass


def failed_attempts(events: list[LogEvent]) -> list[LogEvent]:
    """The attempts a reconnecting client logged as failed."""
    return [event for event in events if event.get("nswarm_event") == "connect_failed"]


def assert_no_reprs(events: list[LogEvent]) -> None:
    """No log line shows an object's repr, nor ClientService's own retry line."""
    for line in (formatEvent(event) for event in events):
        assert " object at 0x" not in line and "Scheduling retry" not in line, line


def upstream(clock: Clock, endpoint: MemoryEndpoint, target: Target = NODE) -> tuple[Node, Any]:
    """A node whose upstream reconnects through C{endpoint}."""
    node = Node("node-1", clock)
    factory = RelayFactory(UpstreamProtocol, node, clock)
    return node, node.upstream.service(clock, endpoint, target, factory, NODE_KEY, 30.0)


def test_the_node_upstream_logs_why_each_attempt_failed_then_connects() -> None:
    clock = Clock()
    master = Master(clock)
    refused = error.ConnectionRefusedError(111, "Connection refused")
    endpoint = MemoryEndpoint(
        lambda: certified(NodeServerProtocol(master, clock, NODE_KEY), "node-1"), [refused, error.TimeoutError()]
    )
    node, service = upstream(clock, endpoint)
    with capturedLogs() as events:
        service.startService()
        for _ in range(2):
            clock.advance(60)
            endpoint.flush()
        assert node.upstream.connection is not None
        service.stopService()
        endpoint.flush()
    first, second = failed_attempts(list(events))
    assert formatEvent(first).startswith(
        "node 'node-1' could not connect: connection refused by master.example:6666: is the master running, "
        "and is this its node port? Check upstream-host and upstream-port (attempt 1; retrying in "
    )
    assert (first["cause"], first["target"], first["attempt"]) == ("refused", "master.example:6666", 1)
    assert first["log_level"].name == "warn"
    assert (second["cause"], second["attempt"]) == ("timeout", 2)
    assert "master.example:6666 did not answer within 30 s" in second["reason"]
    assert_no_reprs(list(events))
    assert not clock.getDelayedCalls()


def test_a_node_pointed_at_the_api_port_says_so() -> None:
    clock = Clock()
    master = Master(clock)
    endpoint = MemoryEndpoint(lambda: ApiServerProtocol(master, clock, API_KEY))
    node, service = upstream(clock, endpoint, node_server("master.example", 6667, "ca.pem"))
    with capturedLogs() as events:
        service.startService()
        endpoint.flush()
        service.stopService()
        endpoint.flush()
    (refused,) = failed_attempts(list(events))
    assert refused["cause"] == "wrong_server"
    assert (
        refused["reason"] == "master.example:6667 is the master's api server, not its node server: check upstream-port"
    )
    assert node.upstream.connection is None
    assert_no_reprs(list(events))


def test_the_node_upstream_from_the_tap_names_its_settings(tmp_path: Path, monkeypatch: Any) -> None:
    """The wiring: a node from its tap, whose connection attempt is refused, names upstream-host and -port."""
    monkeypatch.setenv("HOME", str(tmp_path))
    init_cluster(tmp_path / "cluster")
    options = node_tap.Options()
    options.parseOptions(
        ["--config", str(tmp_path / "cluster" / "node.conf"), "--service-socket", str(tmp_path / "s" / "node.sock")]
    )
    reactor = MemoryReactorClock()
    daemon = node_tap.makeService(options, reactor=reactor)
    with capturedLogs() as events:
        daemon.privilegedStartService()
        daemon.startService()
        [(host, port, factory, _, _, _)] = reactor.sslClients
        factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError(111, "Connection refused")))
        daemon.stopService()
    (refused,) = failed_attempts(list(events))
    assert refused["reason"].startswith(f"connection refused by {host}:{port}: is the master running")
    assert refused["who"] == f"node {options['name']!r}"


class Echo(Service):
    """A service with one method and one subscription."""

    @implement
    def echo(self, value: Any) -> Any:
        return value

    @subscribe("ticks")
    def tick(self, event: str, payload: Any) -> None:
        pass


def test_the_service_runner_logs_why_each_attempt_failed() -> None:
    reactor = MemoryReactorClock()
    runner = ServiceRunner(Echo(), reactor, SERVICE_KEY)
    with capturedLogs() as events:
        runner.start("/run/nswarm/node.sock")
        for failure in (
            error.ConnectError(errno.ENOENT, "No such file or directory"),
            error.ConnectionRefusedError(111, "Connection refused"),
            error.ConnectError(errno.EACCES, "Permission denied"),
        ):
            _, factory, _, _ = reactor.unixClients[-1]
            factory.clientConnectionFailed(None, Failure(failure))
            reactor.advance(60)
        result = runner.stop()
    missing, refused, denied = failed_attempts(list(events))
    assert formatEvent(missing).startswith(
        "service 'Echo' could not connect: /run/nswarm/node.sock does not exist: is the node running, and is this "
        "its service-socket? (attempt 1; retrying in "
    )
    assert (refused["cause"], refused["attempt"]) == ("refused", 2)
    assert (denied["cause"], denied["attempt"]) == ("permission", 3)
    assert "run the service as the node's user" in denied["reason"]
    assert_no_reprs(list(events))
    assert result_of(result) is None
    assert len(reactor.unixClients) == 4  # three failed attempts, and the fourth, cancelled as it stopped
    assert not reactor.getDelayedCalls()


def test_a_service_stopped_as_soon_as_it_is_ready_stops_cleanly() -> None:
    """
    C{ready} fires as the registration ends, before ClientService has taken
    the connection: a stop from there waits for the reactor's next turn.
    """
    cluster = Cluster()
    node = Node("node-1", cluster.clock)
    reactor = MemoryReactorClock()
    runner = ServiceRunner(Echo(), reactor, SERVICE_KEY)
    stopped: list[Deferred[None]] = []
    runner.ready().addCallback(lambda _: stopped.append(runner.stop()))
    with capturedLogs() as events:
        runner.start("/run/nswarm/node.sock")
        [(_, factory, _, _)] = reactor.unixClients
        cluster._connect(ServiceServerProtocol(node, cluster.clock, SERVICE_KEY), factory.buildProtocol(None))
        (stopping,) = stopped
        reactor.advance(0)
        cluster.flush()
    assert result_of(stopping) is None
    assert runner.connection is None and not node.registry.methods()
    assert not [event for event in events if "log_failure" in event]
    assert not reactor.getDelayedCalls()


def test_no_log_line_of_a_cluster_run_shows_an_object_repr() -> None:
    """
    A master; a node that reconnects (refused once, then in, then cut off
    and back); a service; an API user that calls and publishes; one with a
    wrong key; a service that leaves: every line logged, formatted, names
    peers and addresses in words (C{HOST:PORT}), never by repr.
    """
    with capturedLogs() as logged:
        cluster = Cluster()
        endpoint = MemoryEndpoint(
            lambda: certified(NodeServerProtocol(cluster.master, cluster.clock, NODE_KEY), "node-1"),
            [error.ConnectionRefusedError(111, "Connection refused")],
            cluster.pumps,
        )
        node, reconnecting = upstream(cluster.clock, endpoint)
        reconnecting.startService()
        cluster.clock.advance(60)
        cluster.flush()
        service, _ = cluster.add_service(node, Echo())
        client, _ = cluster.add_api()
        assert result_of(cluster.run(client.call("echo", [1, "two"]))) == [1, "two"]
        result_of(cluster.run(client.publish("ticks", 3)))
        intruder = APIClient()
        cluster._connect(ApiServerProtocol(cluster.master, cluster.clock, API_KEY), intruder)
        failure_of(cluster.run(intruder.authenticate(b"not-the-api-key")))
        assert node.upstream.connection is not None
        disconnect(node.upstream.connection, cluster)
        cluster.clock.advance(60)
        cluster.flush()
        assert result_of(cluster.run(client.call("echo", "again"))) == "again"
        disconnect(service, cluster)
        result_of(cluster.run(client.close()))
        reconnecting.stopService()
        cluster.flush()
    events = list(logged)
    happened = {event.get("nswarm_event") for event in events}
    assert {"connected", "disconnected", "connect_failed", "reconnecting", "authentication_failed"} <= happened
    for event in events:
        line = formatEvent(event)
        if "log_failure" in event:
            line += event["log_failure"].getTraceback()
        assert " object at 0x" not in line and "Address(" not in line, line
