"""
Tier 2: one real reactor, real loopback TLS and a real UNIX socket: the
master and node services from their taps, a service and an API user.
Every test closes what it opened and checks the reactor is clean.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL.SSL import Error as TLSError
from twisted.internet import reactor as global_reactor
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionClosed
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import amp

from nswarm import api
from nswarm.amp_commands import (
    Authenticate,
    AuthenticationFailed,
    Call,
    HandlerFailed,
    NotAuthenticated,
    UpstreamUnavailable,
)
from nswarm.cluster_files import init_cluster
from nswarm.config import read_secret_file
from nswarm.master import tap as master_tap
from nswarm.node import tap as node_tap
from nswarm.service import Service, implement, subscribe
from nswarm.service_runner import check_node_peer
from nswarm.tls import client_options

reactor: Any = global_reactor
BOUND = 10.0


async def wait_until(predicate: Callable[[], Any], what: str, bound: float = BOUND) -> None:
    """Wait for C{predicate} to hold, checking every 10 ms, for at most C{bound} seconds."""
    deadline = reactor.seconds() + bound
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


class Echo(Service):
    def __init__(self) -> None:
        super().__init__()
        self.events: Deferred[Any] = Deferred()

    @implement
    def echo(self, value: Any) -> Any:
        return value

    @implement
    def boom(self) -> None:
        raise KeyError("nope")

    @subscribe("ticks")
    def tick(self, event: str, payload: Any) -> None:
        self.events.callback((event, payload))


class Cluster:
    """A master and a node started from their taps on the real reactor."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports_file = directory / "ports"
        options = master_tap.Options()
        options.parseOptions(
            [
                "--config",
                str(directory / "master.conf"),
                "--interface",
                "127.0.0.1",
                "--node-port",
                "0",
                "--api-port",
                "0",
                "--ports-file",
                str(self.ports_file),
            ]
        )
        self.master_service = master_tap.makeService(options, reactor)
        self.master_service.privilegedStartService()
        self.master_service.startService()
        self.ports = dict(line.split() for line in self.ports_file.read_text().splitlines())
        self.master = self.master_service.getServiceNamed("node server").factory.router
        self.socket = directory / "sock" / "node.sock"
        options = node_tap.Options()
        options.parseOptions(
            [
                "--config",
                str(directory / "node.conf"),
                "--upstream-port",
                self.ports["node"],
                "--service-socket",
                str(self.socket),
                "--name",
                "loopback",
            ]
        )
        self.node_service = node_tap.makeService(options, reactor)
        self.node_service.privilegedStartService()
        self.node_service.startService()
        self.factories = [
            self.master_service.getServiceNamed("node server").factory,
            self.master_service.getServiceNamed("api server").factory,
            self.node_service.getServiceNamed("service server").factory,
        ]

    def key(self, name: str) -> bytes:
        return read_secret_file(str(self.directory / name))

    async def api(self, **kwargs: Any) -> api.APIClient:
        # nswarm init's master.conf requires the API user's certificate (api-client-ca).
        kwargs.setdefault("cert", str(self.directory / "api.pem"))
        kwargs.setdefault("cert_key", str(self.directory / "api.key"))
        kwargs.setdefault("key", self.key("api-auth.key"))
        return await api.connect(
            reactor,
            "localhost",
            int(self.ports["api"]),
            ca=str(self.directory / "ca.pem"),
            **kwargs,
        )

    async def stop(self) -> None:
        await self.node_service.stopService()
        await self.master_service.stopService()
        for factory in self.factories:
            for connection in list(factory.connections):
                connection.close_connection()
        await wait_until(lambda: not any(f.connections for f in self.factories), "connections to close")


@pytest.fixture
def cluster_dir() -> Any:
    # A short path: UNIX socket paths are limited to about 100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="nswarm-t2-"))
    init_cluster(directory, node_name="loopback")
    yield directory
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(directory)


@pytest.fixture
def clean_reactor() -> Any:
    """Fail the test if it leaves sockets or timers behind (the reactor's own wakers aside)."""

    def selectables() -> set[Any]:
        return {s for s in reactor.getReaders() + reactor.getWriters() if "Waker" not in type(s).__name__}

    before = selectables()
    yield
    assert selectables() <= before, f"left open: {selectables() - before}"
    assert not [call for call in reactor.getDelayedCalls() if call.active()], reactor.getDelayedCalls()


@pytest_twisted.async_yield_fixture
async def cluster(cluster_dir: Path, clean_reactor: None) -> AsyncIterator[Cluster]:
    running = Cluster(cluster_dir)
    try:
        yield running
    finally:
        await running.stop()


async def start_echo(cluster: Cluster) -> Echo:
    service = Echo()
    service.start(reactor, str(cluster.socket), cluster.key("service-auth.key"))
    await service.ready()
    await wait_until(lambda: cluster.master.registry.choose("echo"), "the master to learn of echo")
    return service


@pytest_twisted.ensureDeferred
async def test_call_and_event_over_tls_and_a_unix_socket(cluster: Cluster) -> None:
    service = await start_echo(cluster)
    client = await cluster.api()
    try:
        assert await client.call("echo", {"nested": [1, "two", None]}) == {"nested": [1, "two", None]}
        big = "x" * 300_000
        assert await client.call("echo", big) == big
        with pytest.raises(HandlerFailed) as raised:
            await client.call("boom")
        assert raised.value.remote_type == "KeyError"
        await client.publish("ticks", 42)
        assert await service.events == ("ticks", 42)
    finally:
        await client.close()
        await service.stop()


@pytest_twisted.ensureDeferred
async def test_service_socket_is_owner_only(cluster: Cluster) -> None:
    mode = cluster.socket.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(cluster.socket.parent.stat().st_mode) == 0o700


async def raw_node_connection(cluster: Cluster, directory: Path) -> amp.AMP:
    """A bare AMP connection to the node server presenting C{directory}'s node certificate."""
    tls = client_options(
        "localhost", str(cluster.directory / "ca.pem"), str(directory / "node.pem"), str(directory / "node.key")
    )
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", int(cluster.ports["node"]), tls)
    return await connectProtocol(endpoint, amp.AMP())


async def closed(connection: amp.AMP) -> None:
    await wait_until(lambda: connection.transport is None, "the connection to close")


@pytest_twisted.ensureDeferred
async def test_wrong_node_key_is_refused(cluster: Cluster) -> None:
    cluster.factories[0].auth_timeout = 3600.0  # the refusal itself must close the connection
    connection = await raw_node_connection(cluster, cluster.directory)
    with pytest.raises(AuthenticationFailed):
        await connection.callRemote(Authenticate, key=b"not-the-node-key", name="intruder")
    await closed(connection)


@pytest_twisted.ensureDeferred
async def test_an_api_users_certificate_is_refused_on_the_node_port(cluster: Cluster) -> None:
    """The API user's api.pem is signed by the cluster CA, but names an API user, not a node."""
    cluster.factories[0].auth_timeout = 3600.0  # the refusal itself must close the connection
    tls = client_options(
        "localhost",
        str(cluster.directory / "ca.pem"),
        str(cluster.directory / "api.pem"),
        str(cluster.directory / "api.key"),
    )
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", int(cluster.ports["node"]), tls)
    connection = await connectProtocol(endpoint, amp.AMP())
    with pytest.raises(AuthenticationFailed, match="names no node"):
        await connection.callRemote(Authenticate, key=cluster.key("node-auth.key"), name="loopback")
    await closed(connection)
    assert all(c.name == "loopback" for c in cluster.factories[0].connections)


@pytest_twisted.ensureDeferred
async def test_node_certificate_from_another_ca_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_cluster(other)
    connection = await raw_node_connection(cluster, other)
    with pytest.raises((TLSError, ConnectionClosed)):
        await connection.callRemote(Authenticate, key=cluster.key("node-auth.key"), name="stranger")
    await closed(connection)
    assert all(c.name == "loopback" for c in cluster.factories[0].connections)


@pytest_twisted.ensureDeferred
async def test_command_before_authentication_is_refused_over_tls(cluster: Cluster) -> None:
    directory = cluster.directory
    tls = client_options("localhost", str(directory / "ca.pem"), str(directory / "api.pem"), str(directory / "api.key"))
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", int(cluster.ports["api"]), tls)
    connection = await connectProtocol(endpoint, amp.AMP())
    with pytest.raises(NotAuthenticated):
        await connection.callRemote(Call, method="echo", args=b'{"args":[],"kwargs":{}}')
    await closed(connection)


@pytest_twisted.ensureDeferred
async def test_api_client_must_trust_the_master(cluster: Cluster, tmp_path: Path) -> None:
    """An API user whose CA did not sign the master's certificate does not connect."""
    other = tmp_path / "other"
    init_cluster(other)
    with pytest.raises(UpstreamUnavailable, match=r"the master's certificate at localhost:\d+ is not signed by the CA"):
        client = await api.connect(
            reactor,
            "localhost",
            int(cluster.ports["api"]),
            key=cluster.key("api-auth.key"),
            ca=str(other / "ca.pem"),
        )
        await client.close()


@pytest_twisted.ensureDeferred
async def test_service_reconnects_when_its_node_restarts(cluster: Cluster) -> None:
    service = await start_echo(cluster)
    try:
        await cluster.node_service.stopService()
        for connection in list(cluster.factories[2].connections):
            connection.close_connection()
        await wait_until(lambda: service.connection is None, "the service to notice")
        assert cluster.master.registry.methods() == []
        # A new node process would make a new service tree on the same socket.
        options = node_tap.Options()
        options.parseOptions(
            [
                "--config",
                str(cluster.directory / "node.conf"),
                "--upstream-port",
                cluster.ports["node"],
                "--service-socket",
                str(cluster.socket),
                "--name",
                "loopback",
            ]
        )
        cluster.node_service = node_tap.makeService(options, reactor)
        cluster.node_service.privilegedStartService()
        cluster.node_service.startService()
        cluster.factories[2] = cluster.node_service.getServiceNamed("service server").factory
        await service.ready()
        await wait_until(lambda: cluster.master.registry.choose("echo"), "the master to learn of echo again")
        client = await cluster.api()
        try:
            assert await client.call("echo", "back") == "back"
        finally:
            await client.close()
    finally:
        await service.stop()


@pytest_twisted.ensureDeferred
async def test_service_with_a_wrong_key_is_refused_and_the_node_stays_up(cluster: Cluster) -> None:
    refusals: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("nswarm_event") == "connect_failed":
            refusals.append(event)

    globalLogPublisher.addObserver(observe)
    intruder = Echo()
    try:
        intruder.start(reactor, str(cluster.socket), b"not-the-service-key")
        await wait_until(lambda: refusals, "the refusal")
        assert "no service 'Echo' with this key in the access file" in refusals[0]["error"]
        assert refusals[0]["cause"] == "authentication"
        assert refusals[0]["reason"].startswith(f"the node's service server at {cluster.socket} refused this service")
        assert intruder.connection is None
        assert "echo" not in cluster.master.registry.methods()
    finally:
        globalLogPublisher.removeObserver(observe)
        await intruder.stop()
    service = await start_echo(cluster)
    await service.stop()


class Listener(Service):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    @subscribe("blobs")
    def blob(self, event: str, payload: Any) -> None:
        self.seen.append(payload[0])


class Stalled:
    """Two subscribers on the node, the first of which has stopped reading its socket."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.factory = cluster.factories[2]
        self.factory.subscriber_buffer = 128 * 1024
        self.slow, self.fast = Listener(), Listener()

    async def start(self) -> None:
        key = self.cluster.key("service-auth.key")
        self.slow.start(reactor, str(self.cluster.socket), key)
        await self.slow.ready()
        (self.slow_server,) = self.factory.connections
        self.fast.start(reactor, str(self.cluster.socket), key)
        await self.fast.ready()
        await wait_until(lambda: self.cluster.master.registry.subscribers("blobs"), "the master to learn of them")
        self.client = await self.cluster.api()
        self.slow_reading(False)

    def slow_reading(self, reading: bool) -> None:
        transport: Any = self.slow.connection.transport  # type: ignore[union-attr]
        transport.resumeProducing() if reading else transport.pauseProducing()

    async def publish(self, count: int) -> None:
        """Publish C{count} events of 64 KiB, one at a time, each once the fast subscriber has it."""
        for _ in range(count):
            n = len(self.fast.seen)
            await self.client.publish("blobs", [n, "x" * 65536])
            await wait_until(lambda n=n: len(self.fast.seen) > n, "the fast subscriber to get its event")

    async def stop(self) -> None:
        await self.client.close()
        await self.slow.stop()
        await self.fast.stop()


@pytest_twisted.ensureDeferred
async def test_a_subscriber_that_stops_reading_costs_only_its_own_events(cluster: Cluster) -> None:
    stalled = Stalled(cluster)
    await stalled.start()
    slow, fast, slow_server = stalled.slow, stalled.fast, stalled.slow_server
    try:
        await stalled.publish(32)
        assert fast.seen == list(range(32))
        assert slow.seen == []
        dropped = slow_server.events_dropped
        assert 0 < dropped < 32
        # What waits for it at the node is bounded (FileDescriptor's buffer, read for this check only).
        transport = slow_server.transport
        waiting = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        assert waiting <= 2**16 + 2 * 65600 + stalled.factory.subscriber_buffer
        stalled.slow_reading(True)
        await wait_until(lambda: len(slow.seen) == 32 - dropped, "the slow subscriber to catch up")
        assert slow.seen == list(range(32 - dropped))  # what was kept, in order
        await stalled.client.publish("blobs", [99, None])
        await wait_until(lambda: slow.seen[-1] == 99 and fast.seen[-1] == 99, "both to get a new event")
    finally:
        await stalled.stop()


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_while_its_subscriber_is_stalled_closes_once_drained(cluster: Cluster) -> None:
    stalled = Stalled(cluster)
    stalled.factory.heartbeat = 3600.0  # so that no heartbeat written later lets the connection close
    await stalled.start()
    try:
        await stalled.publish(8)
        assert stalled.slow_server.paused
        # As AMP itself does on a fatal error: the transport's own loseConnection.
        stalled.slow_server.transport.loseConnection()
        stalled.slow_reading(True)
        await wait_until(lambda: stalled.slow.connection is None, "the node to close the connection")
        assert len(stalled.slow.seen) > 0
    finally:
        await stalled.stop()


# -- safe files and defaults ---------------------------------------------------


def legacy_options(cluster: Cluster, cipher: str, cert: str) -> ssl.CertificateOptions:
    """A TLS 1.2 client offering only C{cipher}, trusting the cluster CA, presenting C{cert}.pem."""
    mine = ssl.PrivateCertificate.loadPEM(
        (cluster.directory / f"{cert}.pem").read_bytes() + (cluster.directory / f"{cert}.key").read_bytes()
    )
    return ssl.CertificateOptions(
        privateKey=mine.privateKey.original,
        certificate=mine.original,
        trustRoot=ssl.Certificate.loadPEM((cluster.directory / "ca.pem").read_bytes()),
        lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(cipher),
    )


@pytest.mark.parametrize("server, cert", [("api", "api"), ("node", "node")])
@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"])
@pytest_twisted.ensureDeferred
async def test_the_master_refuses_tls_1_2_without_an_aead_suite(
    cluster: Cluster, server: str, cert: str, cipher: str
) -> None:
    endpoint = SSL4ClientEndpoint(
        reactor, "127.0.0.1", int(cluster.ports[server]), legacy_options(cluster, cipher, cert)
    )
    connection = await connectProtocol(endpoint, amp.AMP())
    with pytest.raises((TLSError, ConnectionClosed)):
        await connection.callRemote(Call, method="echo", args=b'{"args":[],"kwargs":{}}')
    await closed(connection)


@pytest.mark.parametrize("server, cert", [("api", "api"), ("node", "node")])
@pytest_twisted.ensureDeferred
async def test_the_master_accepts_tls_1_2_with_an_aead_suite(cluster: Cluster, server: str, cert: str) -> None:
    """The control for the test above: the same client, offering ECDHE-ECDSA-AES128-GCM-SHA256, gets through TLS."""
    options = legacy_options(cluster, "ECDHE-ECDSA-AES128-GCM-SHA256", cert)
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", int(cluster.ports[server]), options)
    connection = await connectProtocol(endpoint, amp.AMP())
    with pytest.raises(NotAuthenticated):
        await connection.callRemote(Call, method="echo", args=b'{"args":[],"kwargs":{}}')
    await closed(connection)


class Recorded(amp.AMP):
    """A bare AMP server end that records itself in its factory's C{closed} once its connection is gone."""

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.factory.closed.append(self)


@pytest.mark.parametrize(
    "cipher, handshakes", [("ECDHE-ECDSA-AES128-SHA", False), ("ECDHE-ECDSA-AES128-GCM-SHA256", True)]
)
@pytest_twisted.ensureDeferred
async def test_nswarm_clients_refuse_a_listener_without_an_aead_suite(
    cluster_dir: Path, clean_reactor: None, cipher: str, handshakes: bool
) -> None:
    """client_options (every node, API user and SDK) against a TLS 1.2 server offering only C{cipher}."""
    served = ssl.PrivateCertificate.loadPEM(
        (cluster_dir / "master.pem").read_bytes() + (cluster_dir / "master.key").read_bytes()
    )
    options = ssl.CertificateOptions(
        privateKey=served.privateKey.original,
        certificate=served.original,
        lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(cipher),
    )
    factory: Any = Factory.forProtocol(Recorded)
    factory.closed = []
    port = await SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(factory)
    try:
        tls = client_options("localhost", str(cluster_dir / "ca.pem"))
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, tls)
        connection = await connectProtocol(endpoint, amp.AMP())
        try:
            with pytest.raises(amp.UnhandledCommand if handshakes else (TLSError, ConnectionClosed)):
                await connection.callRemote(Call, method="echo", args=b'{"args":[],"kwargs":{}}')
        finally:
            if connection.transport is not None:
                connection.transport.loseConnection()
            await closed(connection)
            await wait_until(lambda: factory.closed, "the server end to close")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_master_from_nswarm_init_requires_an_api_users_certificate(cluster: Cluster) -> None:
    with pytest.raises(UpstreamUnavailable, match="requires a certificate signed by the cluster's CA from this client"):
        client = await cluster.api(cert=None, cert_key=None)
        await client.close()
    await wait_until(lambda: not cluster.factories[1].connections, "the master to drop the connection")


@pytest_twisted.ensureDeferred
async def test_an_address_past_its_failed_authentications_is_refused_before_its_tls_handshake(
    cluster: Cluster,
) -> None:
    for _ in range(10):
        with pytest.raises(AuthenticationFailed):
            await cluster.api(key=b"a wrong key")
    await wait_until(lambda: not cluster.factories[1].connections, "the master to drop the connections")
    before = cluster.factories[1].guards.refused
    with pytest.raises(UpstreamUnavailable, match="closed the connection before this client authenticated"):
        await cluster.api()  # the right key: the socket closes as it is accepted, all the same
    assert cluster.factories[1].guards.refused == before + 1
    assert not cluster.factories[1].connections  # nothing was built for it, so no TLS handshake either


@pytest_twisted.ensureDeferred
async def test_a_real_node_socket_passes_the_services_peer_check(cluster: Cluster) -> None:
    """The node (this very process) runs as the service's user: SO_PEERCRED says so, and the check passes."""
    service = await start_echo(cluster)
    try:
        transport: Any = service.connection.transport  # type: ignore[union-attr]
        handle = transport.getHandle()
        assert handle.family == socket.AF_UNIX
        pid, uid, _ = struct.unpack("3i", handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        assert (pid, uid) == (os.getpid(), os.geteuid())
        check_node_peer(transport)
    finally:
        await service.stop()


@pytest_twisted.ensureDeferred
async def test_the_node_records_which_process_and_user_run_each_service(cluster: Cluster) -> None:
    """SO_PEERCRED: the node knows the pid and uid of a service at its socket, and logs them."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        service = await start_echo(cluster)
        try:
            (connection,) = [c for c in cluster.factories[2].connections if c.authenticated]
            assert connection.credentials is not None
            assert (connection.credentials.pid, connection.credentials.uid) == (os.getpid(), os.geteuid())
            process = f"pid {os.getpid()} uid {os.geteuid()}"
            assert connection.description == f"service 'Echo' ({process})"
        finally:
            await service.stop()
        await wait_until(lambda: [e for e in events if e.get("nswarm_event") == "disconnected"], "the disconnection")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = {e["nswarm_event"]: formatEvent(e) for e in events if e.get("role") == "service" and "nswarm_event" in e}
    assert lines["connected"] == f"service 'Echo' ({process}) connected from the service socket"
    assert lines["disconnected"] == f"service 'Echo' ({process}) disconnected"
