"""Writes handed to the kernel at once (L{nswarm.sockets.write_through}), on a real socket pair."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from nswarm.sockets import write_through


@pytest.fixture
def pair() -> Iterator[tuple[tcp.Connection, socket.socket, MemoryReactor]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    reactor = MemoryReactor()
    connection = tcp.Connection(ours, Protocol(), reactor)
    connection.connected = True  # as Twisted's Client and Server set it once connected
    yield write_through(connection), theirs, reactor
    ours.close()
    theirs.close()


def received(theirs: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = theirs.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def test_a_write_with_nothing_waiting_goes_to_the_kernel_at_once(
    pair: tuple[tcp.Connection, socket.socket, MemoryReactor],
) -> None:
    connection, theirs, reactor = pair
    connection.write(b"hello")
    assert received(theirs) == b"hello"
    assert reactor.getWriters() == []  # nothing left for the reactor's next turn


def test_what_the_kernel_does_not_take_is_buffered_and_later_writes_wait_behind_it(
    pair: tuple[tcp.Connection, socket.socket, MemoryReactor],
) -> None:
    connection, theirs, reactor = pair
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the socket takes at once
    connection.write(big)
    connection.write(b"after")
    assert reactor.getWriters() == [connection]
    data = received(theirs)
    for _ in range(100_000):  # the reactor's turns, as the peer reads (each moves some data)
        if len(data) >= len(big) + len(b"after"):
            break
        connection.doWrite()
        data += received(theirs)
    assert data == big + b"after"


def test_a_transport_that_is_not_a_socket_is_left_as_it_is() -> None:
    transport = StringTransport()
    assert write_through(transport) is transport and "write" not in vars(transport)
