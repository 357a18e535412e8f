"""Tier 1: failed authentications are throttled per source address, and logged quietly."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.protocols import amp

from nswarm.amp_commands import Authenticate
from nswarm.master.master import ApiServerProtocol, Master
from nswarm.relay.protocol import RelayFactory
from nswarm.relay.throttle import Quieter, Throttle

from .support import API_KEY, connect, detach, failure_of, result_of


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


def test_the_quieter_logs_the_first_then_one_an_interval_with_the_count_between() -> None:
    quieter = Quieter(interval=10.0)
    assert quieter.should_log("a", 0.0) == 0
    assert [quieter.should_log("a", t) for t in (1.0, 2.0, 3.0)] == [None, None, None]
    assert quieter.should_log("a", 10.0) == 3
    assert quieter.should_log("b", 10.0) == 0


def test_an_address_past_its_failed_authentications_is_closed_at_once_for_a_while() -> None:
    clock = Clock()
    master = Master(clock)
    factory = RelayFactory(ApiServerProtocol, master, clock, API_KEY)
    attempts = []
    with capturedLogs() as logged:
        for _ in range(12):
            server = factory.buildProtocol(None)
            client = amp.AMP()
            pump = connect(server, client)
            attempts.append(detach(client.callRemote(Authenticate, key=b"guess")))
            pump.flush()
        server = factory.buildProtocol(None)
        client = amp.AMP()
        pump = connect(server, client)
        right = detach(client.callRemote(Authenticate, key=API_KEY))
        pump.flush()
    failures = [failure_of(d) for d in attempts]
    assert all("wrong api user auth key" in str(f.value) for f in failures[:10])
    # Over the burst, a connection from the address is closed as it is made, before any TLS work.
    assert all(f.check(ConnectionDone, ConnectionLost) for f in failures[10:])
    assert failure_of(right).check(ConnectionDone, ConnectionLost)  # even the right key waits
    assert server.transport is None
    warnings = [e for e in logged if e.get("nswarm_event") == "authentication_failed"]
    assert len(warnings) == 1 and "guess" not in str(warnings)  # rate-limited, and keys never logged
    clock.advance(1.0)
    server = factory.buildProtocol(None)
    client = amp.AMP()
    pump = connect(server, client)
    again = detach(client.callRemote(Authenticate, key=API_KEY))
    pump.flush()
    result_of(again)


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
