"""
Tier 1: the reconnecting clients' retry policy (nswarm.reconnect). A
connection that was up and is lost is retried at most a second apart, with
jitter, however long the outage; one never up keeps the longer backoff, and
so does a client the server refused. The authentication on a new connection
is bounded: a server that accepts and says nothing costs an attempt. No
sockets, a Clock.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from nswarm import defaults
from nswarm.amp_commands import AuthenticationFailed
from nswarm.cluster_files import init_cluster
from nswarm.failures import node_server, service_socket
from nswarm.master.master import Master, NodeServerProtocol
from nswarm.node import tap as node_tap
from nswarm.node.node import Node
from nswarm.node.upstream import UpstreamProtocol
from nswarm.reconnect import Reconnecting, lost_delay
from nswarm.relay.protocol import RelayFactory
from nswarm.service import Service, implement
from nswarm.service_runner import ServiceRunner

from .support import NODE_KEY, SERVICE_KEY, certified, connect, result_of

NODE = node_server("master.example", 6666, "/etc/nswarm/ca.pem")
SOCKET = "/run/nswarm/node.sock"
CAP = defaults.RECONNECT_LOST_MAX_DELAY


class SilentPeer(StringTransport):
    """A transport to a peer that accepted the connection and says nothing; closing it is seen on the next turn."""

    def __init__(self, clock: Any, protocol: Any) -> None:
        super().__init__()
        self.clock = clock
        self.protocol = protocol
        self.aborted = False

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            self.clock.callLater(0, self.protocol.connectionLost, Failure(error.ConnectionLost()))

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


@implementer(IStreamClientEndpoint)
class Server:
    """
    An endpoint to a server that is listening or not (then it refuses):
    while listening, each attempt connects to a new end from C{server}
    (in memory), or, without one, to a L{SilentPeer}. Records when each
    attempt came.
    """

    def __init__(self, clock: Any, server: Any = None) -> None:
        self.clock = clock
        self.server = server
        self.listening = True
        self.attempts: list[float] = []
        self.connections: list[Any] = []
        self.silent: list[SilentPeer] = []
        self.pumps: list[Any] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        self.attempts.append(self.clock.seconds())
        if not self.listening:
            return fail(error.ConnectionRefusedError(111, "Connection refused"))
        protocol = protocolFactory.buildProtocol(None)
        if self.server is None:
            assert protocol is not None
            self.silent.append(SilentPeer(self.clock, protocol))
            protocol.makeConnection(self.silent[-1])
        else:
            self.pumps.append(connect(self.server(), protocol))
            self.flush()
        self.connections.append(protocol)
        return succeed(protocol)

    def flush(self) -> None:
        """Deliver what every connection made so far has sent."""
        while any([pump.pump() for pump in self.pumps]):
            pass

    def drop(self) -> None:
        """The server goes away: it stops listening and the last connection closes."""
        self.listening = False
        last = self.connections[-1]
        if self.pumps:
            last.transport.loseConnection()
            self.flush()
        else:
            last.connectionLost(Failure(error.ConnectionLost()))


def run_until(clock: Clock, done: Any, limit: float, server: Server | None = None) -> None:
    """Let time pass on C{clock}, one timer at a time, until C{done()} or C{limit} seconds have passed."""
    end = clock.seconds() + limit
    while not done() and clock.getDelayedCalls() and clock.seconds() < end:
        next_call = min(call.getTime() for call in clock.getDelayedCalls())
        clock.advance(max(0.0, min(next_call, end) - clock.seconds()))
        if server is not None:
            server.flush()


def gaps(times: list[float]) -> list[float]:
    """The waits between consecutive attempts."""
    return [later - earlier for earlier, later in pairwise(times)]


def failed_attempts(events: list[LogEvent]) -> list[LogEvent]:
    """The attempts a reconnecting client logged as failed."""
    return [event for event in events if event.get("nswarm_event") == "connect_failed"]


def client(clock: Clock, server: Server, prepare: Any = None, max_delay: float = 30.0) -> Reconnecting:
    """A reconnecting client of C{server} whose connections need only C{prepare} (by default: nothing)."""
    return Reconnecting(
        clock,
        server,
        Factory.forProtocol(Protocol),
        prepare or (lambda _: succeed(None)),
        "test client",
        service_socket(SOCKET),
        max_delay,
    )


# -- the policy ------------------------------------------------------------------


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
def test_after_a_loss_each_wait_is_half_to_all_of_a_step_capped_at_a_second(draw: float) -> None:
    delays = [lost_delay(attempt, CAP, draw) for attempt in range(1, 500)]
    assert all(0.5 * defaults.RECONNECT_INITIAL_DELAY / 2 <= delay <= CAP for delay in delays)
    assert delays[0] == pytest.approx(defaults.RECONNECT_INITIAL_DELAY * (0.5 + draw / 2))
    assert delays == sorted(delays)  # the step grows, then stays at the cap
    assert all(CAP / 2 <= delay <= CAP for delay in delays[10:])


def test_a_cap_below_the_first_step_caps_every_wait() -> None:
    assert all(0.05 <= lost_delay(attempt, 0.1, draw) <= 0.1 for attempt in (1, 2, 50) for draw in (0.0, 0.99))


# -- a connection that was up -------------------------------------------------------


@pytest.mark.parametrize("outage", [1.0, 15.0, 30.0, 600.0])
def test_after_losing_an_established_connection_attempts_come_at_most_a_second_apart(outage: float) -> None:
    """However long the server is away, the client tries at least once a second, and is back within one."""
    clock = Clock()
    server = Server(clock)
    service = client(clock, server)
    service.startService()
    assert service.was_up and len(server.attempts) == 1
    lost_at = clock.seconds()
    server.drop()
    clock.callLater(outage, setattr, server, "listening", True)
    run_until(clock, lambda: len(server.connections) == 2, outage + 10)
    back = server.attempts[-1]
    waits = gaps([lost_at, *server.attempts[1:]])
    assert all(defaults.RECONNECT_INITIAL_DELAY / 2 <= wait <= CAP for wait in waits), waits
    assert lost_at + outage <= back <= lost_at + outage + CAP
    assert len(waits) >= outage / CAP  # it did try all along
    stopped = service.stopService()
    clock.advance(0)
    assert result_of(stopped) is None
    assert not clock.getDelayedCalls()


def test_attempts_after_a_loss_are_jittered() -> None:
    """Two clients that lost the same server at the same moment do not retry in step."""
    clock = Clock()
    servers = [Server(clock), Server(clock)]
    services = [client(clock, server) for server in servers]
    for service, server in zip(services, servers, strict=True):
        service.startService()
        server.drop()
    run_until(clock, lambda: False, 30)
    first, second = (server.attempts[1:] for server in servers)
    assert first != second and len(set(gaps(first))) > 1
    for service in services:
        service.stopService()


def test_a_connection_never_up_keeps_the_longer_backoff() -> None:
    clock = Clock()
    server = Server(clock)
    server.listening = False
    service = client(clock, server, max_delay=30.0)
    service.startService()
    run_until(clock, lambda: False, 300)
    waits = gaps(server.attempts)
    assert waits[0] < 1 < waits[5]  # growing, up to the cap (plus jitter)
    assert max(waits) > 29 and all(wait <= 30 + defaults.RECONNECT_JITTER for wait in waits)
    assert not service.was_up
    service.stopService()


def test_a_refusal_after_the_connection_was_up_backs_off_as_before() -> None:
    """The server is there and says no (a rotated key, say): that is not an outage, not retried every second."""
    clock = Clock()
    server = Server(clock)
    answers: list[Deferred[None]] = [succeed(None)]
    service = client(clock, server, lambda _: answers.pop(0) if answers else fail(AuthenticationFailed("wrong key")))
    service.startService()
    server.drop()
    server.listening = True
    with capturedLogs() as events:
        run_until(clock, lambda: False, 120)
    assert not service.was_up
    assert max(gaps(server.attempts)) > 10
    assert {event["cause"] for event in failed_attempts(list(events))} == {"authentication"}
    service.stopService()


def test_while_reconnecting_fast_the_same_failure_is_logged_every_ten_seconds() -> None:
    clock = Clock()
    server = Server(clock)
    service = client(clock, server)
    service.startService()
    with capturedLogs() as events:
        server.drop()
        run_until(clock, lambda: False, 60)
    logged = failed_attempts(list(events))
    assert len(server.attempts) > 60
    assert 6 <= len(logged) <= 60 / defaults.RECONNECT_LOG_INTERVAL + 1
    assert all(later["attempt"] > earlier["attempt"] for earlier, later in pairwise(logged))
    (lost,) = [event for event in events if event.get("nswarm_event") == "reconnecting"]
    assert formatEvent(lost).startswith(f"test client reconnecting to {SOCKET} in 0.")
    service.stopService()


def test_a_node_reregisters_within_a_second_of_a_master_back_after_five_minutes() -> None:
    """The real upstream and master: the master stops for 300 s, then a new one listens; the node is back in 1 s."""
    clock = Clock()
    masters = [Master(clock)]
    node = Node("node-1", clock)
    server = Server(clock, lambda: certified(NodeServerProtocol(masters[-1], clock, NODE_KEY), "node-1"))
    factory = RelayFactory(UpstreamProtocol, node, clock)
    service = node.upstream.service(clock, server, NODE, factory, NODE_KEY, 30.0)
    service.startService()
    server.flush()
    assert "node-1" in masters[0].nodes
    server.drop()
    assert node.upstream.connection is None

    def restarted() -> None:
        masters.append(Master(clock))
        server.listening = True

    listening_at = clock.seconds() + 300
    clock.callLater(300, restarted)
    run_until(clock, lambda: node.upstream.connection is not None, 310, server)
    assert len(masters) == 2 and "node-1" in masters[-1].nodes
    assert clock.seconds() - listening_at <= CAP
    service.stopService()
    server.flush()


# -- the authentication's deadline ------------------------------------------------------


def test_the_node_upstream_gives_up_on_a_silent_master_and_retries() -> None:
    clock = Clock()
    node = Node("node-1", clock)
    server = Server(clock)  # accepts, then says nothing (a master stopped with SIGSTOP)
    factory = RelayFactory(UpstreamProtocol, node, clock)
    service = node.upstream.service(clock, server, NODE, factory, NODE_KEY, 30.0, auth_timeout=5.0)
    with capturedLogs() as events:
        service.startService()
        clock.advance(4.9)
        assert len(server.attempts) == 1 and node.upstream.connection is None
        clock.advance(0.1)  # the deadline: the connection is aborted, and its loss seen at once
        assert server.silent[0].aborted
        (timed_out,) = failed_attempts(list(events))
        run_until(clock, lambda: len(server.attempts) == 2, 5)
    assert timed_out["cause"] == "auth_timeout"
    assert timed_out["reason"] == (
        "master.example:6666 accepted the connection but did not answer the TLS handshake and the authentication "
        "within 5 s: is the master stopped (SIGSTOP), hung or overloaded? Check that it runs; if it is only slow, "
        "raise upstream-auth-timeout"
    )
    assert len(server.attempts) == 2
    service.stopService()


class Echo(Service):
    """A service with one method."""

    @implement
    def echo(self, value: Any) -> Any:
        return value


def test_a_service_gives_up_on_a_silent_node_and_retries() -> None:
    """'connection established' then nothing (the node is stopped): the service retries after auth_timeout."""
    reactor = MemoryReactorClock()
    runner = ServiceRunner(Echo(), reactor, SERVICE_KEY)
    with capturedLogs() as events:
        runner.start(SOCKET, auth_timeout=3.0)
        [(_, factory, _, _)] = reactor.unixClients
        protocol = factory.buildProtocol(None)
        transport = SilentPeer(reactor, protocol)
        protocol.makeConnection(transport)
        assert transport.value()  # the Authenticate, unanswered
        reactor.advance(3.0)
        assert transport.aborted
        (timed_out,) = failed_attempts(list(events))
        for _ in range(10):
            reactor.advance(0.5)
    assert timed_out["cause"] == "auth_timeout"
    assert formatEvent(timed_out).startswith(
        f"service 'Echo' could not connect: {SOCKET} accepted the connection but did not answer the authentication "
        "within 3 s: is the node stopped (SIGSTOP), hung or overloaded? Check that it runs; if it is only slow, "
        "raise Service.start's auth_timeout (attempt 1; retrying in "
    )
    assert len(reactor.unixClients) == 2 and runner.connection is None
    assert result_of(runner.stop()) is None
    assert not reactor.getDelayedCalls()


def test_an_answered_authentication_leaves_no_timer() -> None:
    clock = Clock()
    node = Node("node-1", clock)
    server = Server(clock, lambda: certified(NodeServerProtocol(Master(clock), clock, NODE_KEY), "node-1"))
    factory = RelayFactory(UpstreamProtocol, node, clock)
    service = node.upstream.service(clock, server, NODE, factory, NODE_KEY, 30.0, auth_timeout=7.0)
    service.startService()
    clock.advance(1)
    server.flush()
    assert node.upstream.connection is not None
    assert not [call for call in clock.getDelayedCalls() if call.getTime() == 7.0]
    service.stopService()
    server.flush()


# -- the options ------------------------------------------------------------------------


def test_the_node_tap_passes_the_reconnect_and_authentication_options(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    init_cluster(tmp_path / "cluster")
    config = ["--config", str(tmp_path / "cluster" / "node.conf"), "--service-socket", str(tmp_path / "s" / "n.sock")]
    options = node_tap.Options()
    options.parseOptions(config)
    assert (options["reconnect-lost-max-delay"], options["upstream-auth-timeout"]) == (0.8, 10.0)
    options = node_tap.Options()
    options.parseOptions([*config, "--reconnect-lost-max-delay", "0.5", "--upstream-auth-timeout", "3"])
    daemon = node_tap.makeService(options, reactor=MemoryReactorClock())
    assert isinstance(daemon, node_tap.NodeService)
    upstream = daemon.getServiceNamed("upstream")
    assert isinstance(upstream, Reconnecting) and upstream.lost_max_delay == 0.5
    assert daemon.node.upstream.deadline is not None and daemon.node.upstream.deadline.seconds == 3.0
