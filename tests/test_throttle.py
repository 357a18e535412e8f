"""Tier 1: failed authentications are throttled per source address, and logged quietly."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.test import iosim
from twisted.test.iosim import FakeTransport

from nswarm import defaults
from nswarm.amp_commands import Authenticate
from nswarm.master.master import ApiServerProtocol, Master
from nswarm.relay.listener import Admission
from nswarm.relay.protocol import RelayFactory
from nswarm.relay.throttle import Quieter, Throttle

from .support import API_KEY, detach, failure_of, result_of


def test_a_source_may_fail_a_burst_then_once_a_period() -> None:
    throttle = Throttle(burst=3, every=2.0)
    for _ in range(3):
        assert throttle.allowed("10.0.0.1", 0.0)
        throttle.failed("10.0.0.1", 0.0)
    assert not throttle.allowed("10.0.0.1", 0.0) and throttle.retry_after("10.0.0.1", 0.0) == 2.0
    assert throttle.allowed("10.0.0.2", 0.0)  # others are not held back
    assert throttle.allowed("10.0.0.1", 2.0)


def test_the_throttle_remembers_a_bounded_number_of_sources() -> None:
    throttle = Throttle(burst=1, every=60.0, sources=100)
    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(throttle._buckets) == 100
    assert not throttle.allowed("10.0.3.231", 0.0) and throttle.allowed("10.0.0.0", 0.0)


def test_a_source_that_failed_may_have_no_more_connections_waiting_than_failures_left() -> None:
    throttle = Throttle(burst=3, every=2.0)
    for _ in range(10):  # a source that never failed: any number at once
        assert throttle.may_open("10.0.0.1", 0.0)
        throttle.opened("10.0.0.1")
    throttle.failed("10.0.0.2", 0.0)  # two failures left
    assert throttle.may_open("10.0.0.2", 0.0)
    throttle.opened("10.0.0.2")
    assert throttle.may_open("10.0.0.2", 0.0)
    throttle.opened("10.0.0.2")
    assert not throttle.may_open("10.0.0.2", 0.0)
    throttle.settled("10.0.0.2")  # one authenticated
    assert throttle.may_open("10.0.0.2", 0.0)
    throttle.settled("10.0.0.2")
    assert throttle._pending == {"10.0.0.1": 10}


def test_the_quieter_logs_the_first_then_one_an_interval_with_the_count_between() -> None:
    quieter = Quieter(interval=10.0)
    assert quieter.should_log("a", 0.0) == 0
    assert [quieter.should_log("a", t) for t in (1.0, 2.0, 3.0)] == [None, None, None]
    assert quieter.should_log("a", 10.0) == 3
    assert quieter.should_log("b", 10.0) == 0


def attempt(admission: Admission, host: str, key: bytes | None) -> tuple[Any, Deferred[Any] | None]:
    """
    One connection from C{host} through C{admission}: its server end (None
    if refused), and its Authenticate with C{key} (None if C{key} is).
    The server end's C{pump} delivers what the two ends send.
    """
    address = IPv4Address("TCP", host, 40000)
    server = admission.buildProtocol(address)
    if server is None:
        return None, None
    client = amp.AMP()
    transports = FakeTransport(server, isServer=True, peerAddress=address), FakeTransport(client, isServer=False)
    pump = iosim.connect(server, transports[0], client, transports[1], greet=False)
    answer = detach(client.callRemote(Authenticate, key=key)) if key is not None else None
    pump.flush()
    server.pump = pump
    return server, answer


def test_an_address_past_its_failed_authentications_is_refused_as_it_is_accepted_for_a_while() -> None:
    clock = Clock()
    factory = RelayFactory(ApiServerProtocol, Master(clock), clock, API_KEY)
    admission = Admission(factory, factory)
    with capturedLogs() as logged:
        attempts = [attempt(admission, "10.0.0.1", b"guess") for _ in range(10)]
        # Over the burst, nothing is built for the address (the port closes the socket: no TLS work), even
        # for the right key; another address is not held back.
        assert attempt(admission, "10.0.0.1", b"guess") == (None, None)
        assert attempt(admission, "10.0.0.1", API_KEY) == (None, None)
        _, other = attempt(admission, "10.0.0.2", API_KEY)
    assert all("wrong api user auth key" in str(failure_of(answer).value) for _, answer in attempts)
    result_of(other)
    assert factory.guards.refused == 2
    warnings = [e for e in logged if e.get("nswarm_event") == "authentication_failed"]
    assert len(warnings) == 1 and "guess" not in str(warnings)  # rate-limited, and keys never logged
    clock.advance(1.0)
    _, again = attempt(admission, "10.0.0.1", API_KEY)
    result_of(again)


def test_connections_opened_at_once_cannot_all_spend_a_last_failure() -> None:
    """With one failure left, the first connection waiting to authenticate holds it: the others are refused."""
    clock = Clock()
    factory = RelayFactory(ApiServerProtocol, Master(clock), clock, API_KEY)
    admission = Admission(factory, factory)
    for _ in range(9):
        attempt(admission, "10.0.0.1", b"guess")
    opened = [attempt(admission, "10.0.0.1", None)[0] for _ in range(5)]
    assert opened[0] is not None and opened[1:] == [None] * 4 and factory.guards.refused == 4
    answer = detach(opened[0].pump.client.callRemote(Authenticate, key=API_KEY))
    opened[0].pump.flush()
    result_of(answer)  # it had the right key after all: its place is free again
    assert attempt(admission, "10.0.0.1", None)[0] is not None


def test_leaving_without_authenticating_counts_as_a_failed_authentication() -> None:
    """A TLS handshake (or a bare connection) with no Authenticate costs as much as a wrong key: it is throttled too."""
    clock = Clock()
    factory = RelayFactory(ApiServerProtocol, Master(clock), clock, API_KEY)
    admission = Admission(factory, factory)
    factory.guards.throttle = Throttle(burst=10, every=3600.0)  # no token comes back while the timeout runs
    for _ in range(5):
        server, _ = attempt(admission, "10.0.0.1", None)
        server.transport.loseConnection()
        server.pump.flush()
    waiting = [attempt(admission, "10.0.0.1", None)[0] for _ in range(5)]
    clock.advance(defaults.AUTH_TIMEOUT)  # the authentication timeout closes these
    for server in waiting:
        server.pump.flush()
    assert factory.connections == set()
    assert attempt(admission, "10.0.0.1", API_KEY) == (None, None)
    # An authenticated connection that closes is no failure.
    _, answer = attempt(admission, "10.0.0.2", API_KEY)
    result_of(answer)
    assert factory.guards.throttle.allowed("10.0.0.2", clock.seconds())
    assert len(factory.guards.throttle._buckets) == 1


class Port:
    """A listening port as the guards see it: whether the reactor reads (accepts) from it."""

    def __init__(self) -> None:
        self.connected = True
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def test_a_listener_stops_accepting_while_its_bound_of_connections_waits_to_authenticate() -> None:
    """Past C{at_once} connections waiting to authenticate the ports pause; one done or gone resumes them."""
    clock = Clock()
    factory = RelayFactory(ApiServerProtocol, Master(clock), clock, API_KEY)
    admission = Admission(factory, factory)
    guards = factory.guards
    guards.at_once = 3
    port, stopped = Port(), Port()
    stopped.connected = False  # it stopped listening: never read from again
    guards.ports += [port, stopped]
    waiting = [attempt(admission, f"10.0.0.{number}", None)[0] for number in (1, 2)]
    assert port.reading and guards.waiting == 2
    third, _ = attempt(admission, "10.0.0.3", None)
    assert not port.reading and not stopped.reading and guards.waiting == 3 and guards.pauses == 1
    # One authenticates: below the bound again, the port accepts (the stopped one stays stopped).
    answer = detach(waiting[0].pump.client.callRemote(Authenticate, key=API_KEY))
    waiting[0].pump.flush()
    result_of(answer)
    assert port.reading and not stopped.reading and guards.waiting == 2
    fourth, _ = attempt(admission, "10.0.0.4", None)
    assert not port.reading and guards.pauses == 2
    # One fails its key, one leaves, and the last times out: each frees its place.
    answer = detach(waiting[1].pump.client.callRemote(Authenticate, key=b"guess"))
    waiting[1].pump.flush()
    failure_of(answer)
    assert port.reading and guards.waiting == 2
    third.transport.loseConnection()
    third.pump.flush()
    clock.advance(defaults.AUTH_TIMEOUT)
    fourth.pump.flush()
    assert port.reading and guards.waiting == 0 and factory.connections == {waiting[0]}


def test_a_flood_of_malformed_boxes_logs_one_traceback_then_decades() -> None:
    from twisted.internet.testing import StringTransport

    from nswarm.boxes import serialize

    clock = Clock()
    server = ApiServerProtocol(Master(clock), clock, API_KEY)
    server.makeConnection(StringTransport())
    server.authenticated = True
    with capturedLogs() as logged:
        server.dataReceived(b"".join(serialize({b"_command": b"\xff", b"_ask": b"%d" % n}) for n in range(150)))
    failures = [e for e in logged if "log_failure" in e]
    decades = [e["count"] for e in logged if e.get("nswarm_event") == "malformed_boxes"]
    assert len(failures) == 1 and decades == [10, 100] and server.malformed == 150
