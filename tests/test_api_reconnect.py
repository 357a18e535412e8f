"""
Tier 1: API clients that reconnect (nswarm.api_reconnect), against masters
in memory on one Clock. Each master listens at an address of a small fake
network: an attempt to connect there reaches a new api server end of that
master, or is refused while it is down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from nswarm import api
from nswarm.amp_commands import (
    AuthenticationFailed,
    DeadlineExceeded,
    Draining,
    PermissionDenied,
    UpstreamUnavailable,
)
from nswarm.api import APIClient
from nswarm.api_reconnect import MAX_DELAY, Address, Reconnector
from nswarm.config import ConfigError, addresses, names
from nswarm.failures import api_server
from nswarm.master.master import ApiServerProtocol
from nswarm.service import Service, implement, subscribe
from nswarm.testing.memory import settle

from .support import API_KEY, Cluster, failure_of, result_of

M1, M2 = ("m1", 6667), ("m2", 6667)


class Greeter(Service):
    """Says which master's cluster it is in; parks the first call of each 'park.*' method."""

    name = "greeter"

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.calls: dict[str, int] = {}
        self.greeted: list[str] = []
        self.events: list[tuple[str, Any]] = []

    @implement
    def greet(self, name: str) -> str:
        self.greeted.append(name)
        return f"hello, {name}, from {self.where}"

    @implement("greet.again", idempotent=True)
    def greet_again(self, name: str) -> str:
        return f"hello again, {name}, from {self.where}"

    def _park_first(self, method: str) -> Any:
        self.calls[method] = self.calls.get(method, 0) + 1
        return Deferred() if self.calls[method] == 1 else f"{method} done in {self.where}"

    @implement("park.again", idempotent=True)
    def park_again(self) -> Any:
        return self._park_first("park.again")

    @implement("park.once")
    def park_once(self) -> Any:
        return self._park_first("park.once")

    @subscribe("orders.*")
    def order(self, event: str, payload: Any) -> None:
        self.events.append((event, payload))


@implementer(IStreamClientEndpoint)
class Endpoint:
    """The fake network's endpoint for one address."""

    def __init__(self, network: Network, address: Address) -> None:
        self.network = network
        self.address = address

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return self.network.connect(self.address, protocolFactory)


class Network:
    """Masters in memory at addresses, on one Clock, each with a node and a Greeter; some may be down or silent."""

    def __init__(self, *addresses: Address) -> None:
        self.clock = Clock()
        self.clusters: dict[Address, Cluster] = {}
        self.services: dict[Address, Greeter] = {}
        self.servers: dict[Address, list[Any]] = {}
        self.down: set[Address] = set()
        #: Addresses that take connections and never answer (a stopped master).
        self.silent: set[Address] = set()
        self.key = API_KEY
        self.attempts: list[Address] = []
        for address in addresses:
            cluster = Cluster(self.clock)
            node, _, _ = cluster.add_node(f"node-{address[0]}")
            self.services[address] = Greeter(address[0])
            cluster.add_service(node, self.services[address])
            self.clusters[address] = cluster
            self.servers[address] = []

    def connect(self, address: Address, factory: IProtocolFactory) -> Deferred[Any]:
        self.attempts.append(address)
        if address in self.down:
            return fail(error.ConnectionRefusedError(111, "Connection refused"))
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", address[1]))
        cluster = self.clusters[address]
        server: Any = Protocol() if address in self.silent else ApiServerProtocol(cluster.master, self.clock, self.key)
        self.servers[address].append(server)
        cluster._connect(server, client)
        return succeed(client)

    def flush(self) -> None:
        settle(lambda: [pump for cluster in self.clusters.values() for pump in cluster.pumps], self.clock)

    def advance(self, seconds: float, steps: int = 1) -> None:
        """Let C{seconds} pass, in C{steps} equal steps, delivering what moves after each."""
        for _ in range(steps):
            self.flush()
            self.clock.advance(seconds / steps)
            self.flush()

    def drop(self, address: Address) -> None:
        """Close every api connection of the master at C{address}."""
        for server in self.servers[address]:
            if server.transport is not None:
                server.transport.loseConnection()
        self.flush()

    def stop(self, address: Address) -> None:
        """The master at C{address} goes away: its connections close, new ones are refused."""
        self.down.add(address)
        self.drop(address)

    def publisher(self, address: Address) -> APIClient:
        """A plain API user (it does not reconnect) of the master at C{address}."""
        client, _ = self.clusters[address].add_api()
        return client

    def run(self, d: Deferred[Any]) -> Deferred[Any]:
        self.flush()
        return d


def connected(network: Network, *addresses: Address, **kwargs: Any) -> tuple[APIClient, Reconnector]:
    """A client of C{network}'s masters at C{addresses} (M1 if none), connected."""
    client = APIClient()
    reconnector = Reconnector(
        network.clock,
        client,
        list(addresses or [M1]),
        lambda address: Endpoint(network, address),
        lambda address: api_server(*address, "ca.pem", 30.0),
        API_KEY,
        **kwargs,
    )
    d = reconnector.start()
    network.flush()
    assert result_of(d) is client
    return client, reconnector


def events(logged: list[LogEvent], name: str) -> list[LogEvent]:
    return [event for event in logged if event.get("nswarm_event") == name]


@pytest.fixture
def logged() -> Any:
    from twisted.logger import globalLogPublisher

    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_a_lost_connection_is_made_again_and_calls_go_on(logged: list[LogEvent]) -> None:
    network = Network(M1)
    client, reconnector = connected(network)
    assert result_of(network.run(client.call("greet", "a"))) == "hello, a, from m1"
    network.drop(M1)
    assert reconnector.state == "waiting" and client.holding
    network.advance(MAX_DELAY)
    assert reconnector.state == "up" and not client.holding
    assert result_of(network.run(client.call("greet", "b"))) == "hello, b, from m1"
    assert len(network.attempts) == 2
    assert [e["address"] for e in events(logged, "api_reconnecting")] == ["m1:6667"]
    assert len(events(logged, "api_reconnected")) == 1


def test_calls_made_while_reconnecting_wait_and_go_out_once_it_is_back_within_a_second() -> None:
    network = Network(M1)
    client, reconnector = connected(network)
    client.timeout = 60.0  # the deadline of publishes too
    network.stop(M1)
    call = client.call_with_timeout(60, "greet", "waiting")
    published = client.publish("orders.created", {"id": 1})
    network.advance(30, steps=300)  # a 30 s outage: the attempts back off, at most MAX_DELAY apart
    assert not call.called and not published.called
    assert 29 <= len(network.attempts) <= 80  # at least one a second, never a tight loop
    network.down.discard(M1)
    network.advance(MAX_DELAY + 0.001, steps=10)
    assert result_of(call) == "hello, waiting, from m1"
    assert result_of(published) == 1  # handed to the one node subscribed to orders.*
    assert network.services[M1].events == [("orders.created", {"id": 1})]
    assert reconnector.failures == 0


def test_requests_that_wait_past_their_deadline_fail_deadline_exceeded() -> None:
    network = Network(M1)
    client, _ = connected(network)
    client.timeout = 3.0
    network.stop(M1)
    call = client.call_with_timeout(2, "greet", "late")
    default = client.call("greet", "default")
    published = client.publish("orders.created", 1)
    status = client.status()
    network.advance(2.0, steps=4)
    late = failure_of(call)
    assert late.check(DeadlineExceeded) and "waited 2 s, its whole deadline, for a connection" in str(late.value)
    assert not default.called and not published.called
    network.advance(1.0, steps=2)
    for waited in (default, published, status):
        assert failure_of(waited).check(DeadlineExceeded)
    assert failure_of(client.call_with_timeout(0, "greet", "now")).check(DeadlineExceeded)


def test_a_waiting_call_can_be_cancelled() -> None:
    network = Network(M1)
    client, reconnector = connected(network)
    network.stop(M1)
    call = client.call("greet", "never mind")
    call.cancel()
    assert failure_of(call).check(CancelledError)
    network.down.discard(M1)
    network.advance(MAX_DELAY, steps=4)
    assert reconnector.state == "up" and network.services[M1].greeted == []


def test_subscriptions_come_back_after_reconnecting() -> None:
    network = Network(M1)
    client, _ = connected(network)
    seen: list[tuple[str, Any]] = []
    result_of(network.run(client.subscribe("orders.*", lambda event, payload: seen.append((event, payload)))))
    network.stop(M1)
    later: list[str] = []
    subscribed = client.subscribe("users.*", lambda event, payload: later.append(event))
    network.down.discard(M1)
    network.advance(MAX_DELAY, steps=4)
    result_of(subscribed)
    publisher = network.publisher(M1)
    result_of(network.run(publisher.publish("orders.created", {"id": 2})))
    result_of(network.run(publisher.publish("users.created", {"id": 3})))
    assert seen == [("orders.created", {"id": 2})] and later == ["users.created"]
    assert network.clusters[M1].master.registry.subscriber_counts() == {"orders.*": 2, "users.*": 1}


def test_a_subscription_refused_on_the_new_connection_loses_its_handlers(logged: list[LogEvent]) -> None:
    network = Network(M1)
    client, reconnector = connected(network)
    result_of(network.run(client.subscribe("orders.*", lambda *_: None)))
    result_of(network.run(client.subscribe("users.*", lambda *_: None)))
    master = network.clusters[M1].master
    allowed = master.subscribe

    def subscribe(peer: Any, patterns: list[str]) -> None:  # the access file changed meanwhile
        if "orders.*" in patterns:
            raise PermissionDenied("no more orders for you")
        allowed(peer, patterns)

    master.subscribe = subscribe  # type: ignore[method-assign]
    network.drop(M1)
    network.advance(MAX_DELAY, steps=4)
    assert reconnector.state == "up" and list(client.subscriptions()) == ["users.*"]
    [refused] = events(logged, "api_subscription_refused")
    assert refused["pattern"] == "orders.*"


def test_idempotent_calls_lost_with_the_connection_are_sent_again_and_others_fail() -> None:
    network = Network(M1)
    client, _ = connected(network, idempotent=("park.again",))
    again = client.call_with_timeout(10, "park.again")
    once = client.call_with_timeout(10, "park.once")
    network.flush()
    assert network.services[M1].calls == {"park.again": 1, "park.once": 1}
    network.drop(M1)
    error_once = failure_of(once)
    assert error_once.check(UpstreamUnavailable) and "may or may not have been carried out" in str(error_once.value)
    assert not again.called
    network.advance(MAX_DELAY, steps=4)
    assert result_of(again) == "park.again done in m1"
    assert network.services[M1].calls == {"park.again": 2, "park.once": 1}


def test_an_idempotent_call_is_not_sent_again_past_its_deadline() -> None:
    network = Network(M1)
    client, _ = connected(network, idempotent=["park.again"])
    again = client.call_with_timeout(2, "park.again")
    network.flush()
    network.stop(M1)
    network.advance(2.0, steps=4)
    assert failure_of(again).check(DeadlineExceeded)
    network.down.discard(M1)
    network.advance(MAX_DELAY, steps=4)
    assert network.services[M1].calls == {"park.again": 1}


def test_several_addresses_are_tried_in_turn() -> None:
    network = Network(M1, M2)
    network.down.add(M1)
    client, reconnector = connected(network, M1, M2)
    assert network.attempts == [M1, M2] and reconnector.address == M2
    assert result_of(network.run(client.call("greet", "x"))) == "hello, x, from m2"
    network.down.discard(M1)
    network.stop(M2)
    network.advance(MAX_DELAY, steps=4)
    assert reconnector.address == M1 and network.attempts == [M1, M2, M1]
    assert result_of(network.run(client.call("greet", "y"))) == "hello, y, from m1"


def test_connect_fails_once_every_address_failed() -> None:
    network = Network(M1, M2)
    network.down.update({M1, M2})
    reconnector = Reconnector(
        network.clock,
        APIClient(),
        [M1, M2],
        lambda address: Endpoint(network, address),
        lambda address: api_server(*address, "ca.pem"),
        API_KEY,
    )
    failure = failure_of(reconnector.start())
    assert failure.check(UpstreamUnavailable)
    message = str(failure.value)
    assert message.startswith("none of the 2 masters could be reached: connection refused by m1:6667")
    assert "connection refused by m2:6667" in message
    network.advance(10 * MAX_DELAY)
    assert reconnector.state == "closed" and network.attempts == [M1, M2]  # no retry is left behind
    one = Reconnector(
        network.clock,
        APIClient(),
        [M1],
        lambda address: Endpoint(network, address),
        lambda address: api_server(*address, "ca.pem"),
        API_KEY,
    ).start()
    assert str(failure_of(one).value).startswith("connection refused by m1:6667: is the master running")


def test_an_attempt_that_gets_no_answer_in_time_is_given_up_for_the_next_address(logged: list[LogEvent]) -> None:
    network = Network(M1, M2)
    network.silent.add(M1)
    client = APIClient()
    d = Reconnector(
        network.clock,
        client,
        [M1, M2],
        lambda address: Endpoint(network, address),
        lambda address: api_server(*address, "ca.pem", 5.0),
        API_KEY,
        timeout=5.0,
    ).start()
    network.advance(4.9)
    assert not d.called
    network.advance(0.2)
    assert result_of(d) is client and network.attempts == [M1, M2]
    assert result_of(network.run(client.call("greet", "z"))) == "hello, z, from m2"
    network.down.add(M2)
    network.drop(M2)
    network.advance(6.0, steps=24)  # M1 takes the connection and says nothing
    [late] = [event for event in logged if event.get("cause") == "auth_timeout"]
    assert late["reason"].startswith("m1:6667 accepted the connection but did not answer the TLS handshake")
    network.silent.discard(M1)
    network.advance(5.0 + 3 * MAX_DELAY, steps=40)  # its attempt times out; M2 refuses; M1 answers
    assert result_of(network.run(client.call("greet", "again"))) == "hello, again, from m1"


def test_a_draining_master_is_left_for_the_next_address_and_what_it_refused_is_sent_there() -> None:
    network = Network(M1, M2)
    client, reconnector = connected(network, M1, M2)
    network.clusters[M1].master.start_draining(10.0)
    plain = client.call("greet", "p")  # not idempotent: refused before it ran, so it may be sent again
    again = client.call("greet.again", "i")
    declared_client, declared = connected(network, M1, M2, idempotent=["greet.again"])
    declared_again = declared_client.call("greet.again", "d")
    network.flush()
    assert not plain.called and not again.called and reconnector.draining and client.holding
    assert not declared_again.called and declared.draining and declared_client.holding
    network.advance(MAX_DELAY, steps=10)
    assert result_of(plain) == "hello, p, from m2" and result_of(again) == "hello again, i, from m2"
    assert result_of(declared_again) == "hello again, d, from m2"
    assert declared.address == M2 and reconnector.address == M2
    assert result_of(network.run(client.call("greet", "q"))) == "hello, q, from m2"


def test_with_one_address_a_draining_master_is_waited_for() -> None:
    network = Network(M1)
    client, reconnector = connected(network, idempotent=["greet.again"])
    network.clusters[M1].master.start_draining(10.0)
    again = client.call("greet.again", "i")
    network.advance(5.0, steps=10)
    assert not again.called and reconnector.state == "up" and reconnector.draining  # it waits for the master
    network.clusters[M1].master.drain.active = False  # the master restarted
    network.drop(M1)
    network.advance(MAX_DELAY, steps=4)
    assert result_of(again) == "hello again, i, from m1"


def test_a_call_a_draining_master_refused_waits_within_its_deadline_and_can_be_cancelled() -> None:
    network = Network(M1)
    client, reconnector = connected(network)
    network.clusters[M1].master.start_draining(10.0)
    late = client.call_with_timeout(2.0, "greet", "late")
    dropped = client.call_with_timeout(2.0, "greet", "dropped")
    network.flush()
    assert not late.called and not dropped.called and reconnector.draining
    dropped.cancel()
    failure_of(dropped).trap(CancelledError)
    network.advance(2.1, steps=21)
    failure = failure_of(late)
    assert failure.check(DeadlineExceeded) and "waited" in str(failure.value)


def test_a_refused_key_ends_reconnecting(logged: list[LogEvent]) -> None:
    network = Network(M1)
    client, reconnector = connected(network)
    gone = client.lost()
    network.stop(M1)
    call = client.call("greet", "x")
    network.key = b"another-key-0123456789abcdef"
    network.down.discard(M1)
    network.advance(MAX_DELAY, steps=4)
    assert reconnector.state == "closed" and gone.called
    failure = failure_of(call)
    assert failure.check(UpstreamUnavailable) and "gave up reconnecting" in str(failure.value)
    assert len(events(logged, "api_gave_up")) == 1
    attempts = len(network.attempts)
    network.advance(10 * MAX_DELAY)
    assert len(network.attempts) == attempts


def test_close_stops_reconnecting_and_fails_what_waits() -> None:
    network = Network(M1)
    client, reconnector = connected(network)
    gone = client.lost()
    network.stop(M1)
    call = client.call("greet", "x")
    closing = client.close()
    assert closing.called and gone.called
    closed = failure_of(call)
    assert closed.check(UpstreamUnavailable) and "was not sent: the client was closed" in str(closed.value)
    network.down.discard(M1)
    network.advance(10 * MAX_DELAY, steps=10)
    assert reconnector.state == "closed" and len(network.attempts) == 1
    assert failure_of(client.call("greet", "y")).check(UpstreamUnavailable)


def test_close_while_an_attempt_waits_for_its_answer_ends_it() -> None:
    network = Network(M1)
    client, reconnector = connected(network)
    waiting = client.call("greet", "x")
    network.silent.add(M1)
    network.drop(M1)
    network.advance(MAX_DELAY)
    assert reconnector.state == "connecting" and client.transport is not None
    closing = client.close()
    network.flush()
    assert closing.called and client.transport is None and reconnector.state == "closed"
    assert failure_of(waiting).check(UpstreamUnavailable)
    network.advance(10 * MAX_DELAY)
    assert len(network.attempts) == 2


def test_cancelling_connect_stops_it() -> None:
    network = Network(M1)
    network.silent.add(M1)
    client = APIClient()
    reconnector = Reconnector(
        network.clock,
        client,
        [M1],
        lambda address: Endpoint(network, address),
        lambda address: api_server(*address, "ca.pem"),
        API_KEY,
    )
    d = reconnector.start()
    network.flush()
    d.cancel()
    network.flush()
    assert failure_of(d).check(CancelledError) and client.transport is None and reconnector.state == "closed"


def test_close_while_connected_closes_and_stops() -> None:
    network = Network(M1)
    client, reconnector = connected(network)
    closing = client.close()
    assert not closing.called
    network.flush()
    assert closing.called and client.transport is None and reconnector.state == "closed"
    network.advance(10 * MAX_DELAY)
    assert len(network.attempts) == 1


def test_with_reconnect_off_a_lost_connection_fails_its_calls_as_before() -> None:
    network = Network(M1)
    client, reconnector = connected(network, reconnect=False, idempotent=["park.again"])
    assert client.idempotent == frozenset()
    gone = client.lost()
    parked = client.call("park.again")
    network.flush()
    network.drop(M1)
    assert failure_of(parked).check(UpstreamUnavailable) and gone.called
    assert failure_of(client.call("greet", "x")).check(UpstreamUnavailable)
    network.advance(10 * MAX_DELAY)
    assert reconnector.state == "closed" and len(network.attempts) == 1


def test_a_refused_key_fails_connect_as_before() -> None:
    network = Network(M1)
    network.key = b"another-key-0123456789abcdef"
    client = APIClient()
    d = Reconnector(
        network.clock,
        client,
        [M1],
        lambda address: Endpoint(network, address),
        lambda address: api_server(*address, "ca.pem"),
        API_KEY,
    ).start()
    network.flush()
    assert failure_of(d).check(AuthenticationFailed)
    network.advance(10 * MAX_DELAY)
    assert client.transport is None and network.attempts == [M1]


def test_publish_says_how_many_it_was_handed_to() -> None:
    network = Network(M1)
    client, _ = connected(network, reconnect=False)
    assert result_of(network.run(client.publish("orders.created", 1))) == 1
    assert result_of(network.run(client.publish("nobody.listens", 1))) == 0


def test_the_delays_back_off_to_at_most_max_delay() -> None:
    network = Network(M1, M2)
    _, reconnector = connected(network, M1, M2)
    delays = []
    for failures in range(12):
        reconnector.failures = failures
        delays.append(reconnector._delay())
    assert all(0.1 <= delay <= 0.25 for delay in delays[:2])  # each address once, soon
    assert all(0 < delay <= MAX_DELAY for delay in delays)
    assert all(delay >= MAX_DELAY / 2 for delay in delays[8:])  # at most MAX_DELAY apart, and not much less


def test_a_failure_not_of_the_connection_is_not_a_reason_to_send_again() -> None:
    network = Network(M1)
    _, reconnector = connected(network, idempotent=["greet"])
    assert not reconnector.may_resend(Failure(PermissionDenied("no")))
    assert reconnector.may_resend(Failure(Draining("stopping")))


# -- client.conf and connect's arguments ----------------------------------------


def test_a_client_conf_host_may_list_several_masters() -> None:
    assert addresses("m1.example.org:6667, m2.example.org:7000", 6667) == [
        ("m1.example.org", 6667),
        ("m2.example.org", 7000),
    ]
    assert addresses("m1 m2", 6000) == [("m1", 6000), ("m2", 6000)]
    assert addresses("[::1]:6667, ::1, localhost", 1) == [("::1", 6667), ("::1", 1), ("localhost", 1)]
    for wrong, why in [("", "no host"), ("m1:", "port number"), ("m1:x", "port number"), ("m1:0", "no port")]:
        with pytest.raises(ValueError, match=why):
            addresses(wrong, 6667)
    assert names("greet, orders.get  users.lookup") == ["greet", "orders.get", "users.lookup"]


def test_connect_from_config_reads_the_reconnect_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "api-auth.key"
    key.write_bytes(API_KEY)
    key.chmod(0o600)
    config = tmp_path / "client.conf"
    given: dict[str, Any] = {}

    def connect(reactor: Any, **kwargs: Any) -> Deferred[Any]:
        given.update(kwargs)
        return succeed(None)

    monkeypatch.setattr(api, "connect", connect)
    config.write_text(
        f"[api]\nhost = m1:7001, m2\nport = 7000\nca = ca.pem\nauth-key-file = {key}\n"
        "reconnect = no\nidempotent = greet, orders.get\n"
    )
    result_of(api.connect_from_config(None, str(config)))
    assert given["hosts"] == [("m1", 7001), ("m2", 7000)]
    assert given["reconnect"] is False and given["idempotent"] == ["greet", "orders.get"]
    result_of(api.connect_from_config(None, str(config), reconnect=True, idempotent=()))
    assert given["reconnect"] is True and given["idempotent"] == ()
    config.write_text(f"[api]\nca = ca.pem\nauth-key-file = {key}\nreconnect = perhaps\n")
    failure = failure_of(api.connect_from_config(None, str(config)))
    assert failure.check(ConfigError) and "reconnect = perhaps" in str(failure.value)
    config.write_text(f"[api]\nhost = m1:x\nca = ca.pem\nauth-key-file = {key}\n")
    assert failure_of(api.connect_from_config(None, str(config))).check(ConfigError)


def test_connect_checks_its_hosts_and_idempotent_methods() -> None:
    with pytest.raises(ValueError, match="hosts is empty"):
        api.connect(None, key=API_KEY, ca="ca.pem", hosts=[])
    with pytest.raises(TypeError, match="host, port"):
        api.connect(None, key=API_KEY, ca="ca.pem", hosts=["m1:6667"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="method names"):
        api.connect(None, key=API_KEY, ca="ca.pem", idempotent=[1])  # type: ignore[list-item]
