"""Tier 1: a listener accepts at most a few connections a reactor turn (nswarm.relay.listener.accept_few)."""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from nswarm.relay.listener import accept_few


class Accepted(Factory):
    """Builds a protocol for each connection the port accepts, and keeps them."""

    def __init__(self) -> None:
        self.built: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = Protocol()
        self.built.append(protocol)
        return protocol


async def accepted_per_read(most: int | None, waiting: int) -> list[int]:
    """How many of C{waiting} connections in the listen backlog each read of the port accepts, until none are left."""
    factory = Accepted()
    port: Any = reactor.listenTCP(0, factory, backlog=64, interface="127.0.0.1")  # type: ignore[attr-defined]
    clients = []
    try:
        if most is not None:
            accept_few(port, most)
        port.stopReading()  # the test reads it, not the reactor
        for _ in range(waiting):
            client = socket.create_connection(("127.0.0.1", port.getHost().port))
            clients.append(client)
        counts = []
        while len(factory.built) < waiting:
            before = len(factory.built)
            port.doRead()
            counts.append(len(factory.built) - before)
            assert counts[-1] > 0, f"a read of the port accepted none of the {waiting - before} waiting"
        return counts
    finally:
        for protocol in factory.built:
            protocol.transport.abortConnection()  # type: ignore[union-attr]
        for client in clients:
            client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_port_accepts_at_most_a_few_connections_a_read() -> None:
    assert await accepted_per_read(3, 8) == [3, 3, 2]


@pytest_twisted.ensureDeferred
async def test_without_it_a_port_accepts_every_connection_waiting_in_one_read() -> None:
    assert await accepted_per_read(None, 8) == [8]


def test_a_port_that_is_not_a_socket_port_is_left_as_it_is() -> None:
    class Other:
        def doRead(self) -> None:
            pass

    other = Other()
    read = other.doRead
    accept_few(other, 3)
    assert other.doRead == read
