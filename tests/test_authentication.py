"""Tier 1: nothing but Authenticate is accepted before authentication, on every server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from nswarm.amp_commands import (
    Authenticate,
    AuthenticationFailed,
    Call,
    Heartbeat,
    Implement,
    NotAuthenticated,
    PermissionDenied,
    Publish,
)
from nswarm.failures import service_socket
from nswarm.master.master import ApiServerProtocol, Master, NodeServerProtocol
from nswarm.node.node import Node, ServiceServerProtocol
from nswarm.reconnect import Reconnecting
from nswarm.relay.protocol import RelayProtocol

from .support import certified, connect, detach, failure_of, result_of

KEY = b"the-right-key-0123456789"

SERVERS: dict[str, Callable[[Clock], RelayProtocol]] = {
    "api server": lambda clock: ApiServerProtocol(Master(clock), clock, KEY, 5.0),
    "node server": lambda clock: certified(NodeServerProtocol(Master(clock), clock, KEY, 5.0), "me"),
    "service server": lambda clock: ServiceServerProtocol(Node("n", clock), clock, KEY, 5.0),
}


class RawClient(amp.AMP):
    """A bare AMP peer that tolerates the server's heartbeats but sends none of its own."""

    @Heartbeat.responder
    def heartbeat(self) -> dict[str, Any]:
        return {}


@pytest.fixture(params=sorted(SERVERS))
def pair(request: Any) -> tuple[amp.AMP, RelayProtocol, Any, Clock]:
    clock = Clock()
    server = SERVERS[request.param](clock)
    client = RawClient()
    pump = connect(server, client)
    return client, server, pump, clock


@pytest.mark.parametrize(
    "command, arguments",
    [
        (Call, {"method": "echo", "args": b"{}"}),
        (Publish, {"event": "e", "payload": b"null"}),
        (Implement, {"methods": ["echo"]}),
    ],
)
def test_command_before_authentication_is_refused_and_closed(pair: Any, command: Any, arguments: Any) -> None:
    client, server, pump, _ = pair
    d = detach(client.callRemote(command, **arguments))
    pump.flush()
    assert failure_of(d).check(NotAuthenticated)
    assert client.transport is None and server.transport is None


def test_wrong_key_is_refused_and_closed(pair: Any) -> None:
    client, server, pump, _ = pair
    d = detach(client.callRemote(Authenticate, key=b"the-wrong-key-0123456789"))
    pump.flush()
    assert failure_of(d).check(AuthenticationFailed)
    assert server.transport is None and not server.authenticated


def test_right_key_authenticates_once(pair: Any) -> None:
    client, server, pump, _ = pair
    d = detach(client.callRemote(Authenticate, key=KEY, name="me"))
    pump.flush()
    assert result_of(d) == {}
    assert server.authenticated and server.name == "me"
    again = detach(client.callRemote(Authenticate, key=KEY))
    pump.flush()
    assert failure_of(again).check(AuthenticationFailed)


def test_unauthenticated_connection_is_closed_after_the_timeout(pair: Any) -> None:
    client, server, pump, clock = pair
    clock.advance(4.9)
    pump.flush()
    assert server.transport is not None
    clock.advance(0.2)
    pump.flush()
    assert server.transport is None


def test_authenticated_connection_outlives_the_timeout(pair: Any) -> None:
    client, server, pump, clock = pair
    client.callRemote(Authenticate, key=KEY)
    pump.flush()
    clock.advance(6)
    pump.flush()
    assert server.transport is not None and server._auth_timer is None


def test_a_silent_peer_is_closed_after_three_heartbeats(pair: Any) -> None:
    """The raw AMP client here never sends heartbeats: after three silent intervals it is gone."""
    client, server, pump, clock = pair
    client.callRemote(Authenticate, key=KEY)
    pump.flush()
    for _ in range(2):
        clock.advance(10)
        pump.flush()
    assert server.transport is not None
    clock.advance(10)
    pump.flush()
    assert server.transport is None and not clock.getDelayedCalls()


def test_a_peer_that_keeps_talking_stays(pair: Any) -> None:
    client, server, pump, clock = pair
    client.callRemote(Authenticate, key=KEY)
    pump.flush()
    for _ in range(10):
        client.sendBox(amp.AmpBox({b"_command": b"Heartbeat"}))
        clock.advance(10)
        pump.flush()
    assert server.transport is not None


def test_api_users_cannot_register_methods() -> None:
    clock = Clock()
    master = Master(clock)
    server = ApiServerProtocol(master, clock, KEY)
    client = amp.AMP()
    pump = connect(server, client)
    client.callRemote(Authenticate, key=KEY)
    d = detach(client.callRemote(Implement, methods=["steal"]))
    pump.flush()
    error = failure_of(d).value
    assert isinstance(error, PermissionDenied) and "run a service beside a node" in str(error)
    assert master.registry.methods() == []


def test_a_second_authenticate_is_told_so(pair: Any) -> None:
    client, server, pump, _ = pair
    client.callRemote(Authenticate, key=KEY)
    again = detach(client.callRemote(Authenticate, key=KEY))
    pump.flush()
    assert "already authenticated" in str(failure_of(again).value)


def test_an_answer_nobody_waits_for_is_dropped_quietly(pair: Any) -> None:
    """A late answer (its call timed out or was cancelled) leaves the connection up."""
    client, server, pump, _ = pair
    client.callRemote(Authenticate, key=KEY)
    pump.flush()
    client.sendBox(amp.AmpBox({b"_answer": b"77", b"result": b"late"}))
    client.sendBox(amp.AmpBox({b"_error": b"78", b"_error_code": b"X", b"_error_description": b"late"}))
    pump.flush()
    assert server.transport is not None


def test_a_half_sent_frame_before_authentication_is_closed_on_the_timeout(pair: Any) -> None:
    client, server, pump, clock = pair
    client.transport.write(b"\x00\x08_comm")  # half a key, then silence
    pump.flush()
    assert server.transport is not None
    clock.advance(5.1)
    pump.flush()
    assert server.transport is None


@pytest.mark.parametrize("outcome", ["stopped", "refused"])
def test_a_client_stopped_while_authenticating_stops_once_its_connection_closes(outcome: str) -> None:
    connections: list[tuple[Protocol, StringTransport]] = []

    @implementer(IStreamClientEndpoint)
    class Endpoint:
        def connect(self, factory: Factory) -> Deferred[Protocol]:
            protocol, transport = factory.buildProtocol(None), StringTransport()
            protocol.makeConnection(transport)
            connections.append((protocol, transport))
            return succeed(protocol)

    answer: Deferred[None] = Deferred()  # the authentication under way
    clock = Clock()
    target = service_socket("node.sock")
    factory = Factory.forProtocol(Protocol)
    service = Reconnecting(clock, Endpoint(), factory, lambda _: answer, "test client", target, 30)
    with capturedLogs() as logged:
        service.startService()
        if outcome == "refused":  # refused, then stopped while waiting to retry
            answer.errback(AuthenticationFailed("wrong key"))
            connections[0][0].connectionLost(Failure(ConnectionDone()))
            assert [event["error"] for event in logged if "error" in event] == ["wrong key"]
        stopped = service.stopService()
        protocol, transport = connections[-1]
        assert transport.disconnecting
        if outcome == "stopped":
            assert not stopped.called  # until the connection has closed
            protocol.connectionLost(Failure(ConnectionDone()))
        assert result_of(stopped) is None
    assert not [event for event in logged if "log_failure" in event]
    assert not clock.getDelayedCalls()
