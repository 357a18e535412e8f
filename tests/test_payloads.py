"""Tier 1: large payloads through the whole path, and the size limit at every hop."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.protocols import amp

from nswarm.amp_commands import PayloadTooLarge
from nswarm.master.master import ApiServerProtocol, Master
from nswarm.service import Service, implement

from .support import Cluster, connect, failure_of, raw_boxes, result_of, send_raw

MIB = 1024 * 1024


class Echo(Service):
    @implement
    def echo(self, value: Any) -> Any:
        return value

    @implement
    def blob(self, size: int) -> str:
        return "x" * size


@pytest.fixture
def cluster() -> Cluster:
    cluster = Cluster()
    node, _, _ = cluster.add_node("a")
    cluster.add_service(node, Echo())
    return cluster


@pytest.mark.parametrize("size", [0, 65535, 65536, 65537, MIB, 10 * MIB])
def test_payloads_of_any_size_up_to_the_limit_round_trip(cluster: Cluster, size: int) -> None:
    api, _ = cluster.add_api()
    value = "y" * size
    assert result_of(cluster.run(api.call("echo", value))) == value


def test_the_sdk_refuses_to_send_over_its_limit_and_the_connection_stays(cluster: Cluster) -> None:
    api, _ = cluster.add_api()
    api.max_payload = MIB
    over = "z" * MIB  # JSON adds the quotes and brackets: over the limit
    assert failure_of(api.call("echo", over)).check(PayloadTooLarge)
    assert failure_of(api.publish("e", over)).check(PayloadTooLarge)
    assert result_of(cluster.run(api.call("echo", "fine"))) == "fine"


def test_a_relay_answers_an_oversized_request_and_the_connection_stays(cluster: Cluster) -> None:
    api, server = cluster.add_api()
    server._limit_boxes(MIB)
    server.max_payload = MIB
    failure = failure_of(cluster.run(api.call("echo", "z" * (MIB + 100_000))))
    assert failure.check(PayloadTooLarge) and "limit" in str(failure.value)
    assert server.transport is not None
    assert result_of(cluster.run(api.call("echo", "after"))) == "after"


def test_an_oversized_result_reaches_the_caller_as_payload_too_large(cluster: Cluster) -> None:
    api, _ = cluster.add_api()
    assert failure_of(cluster.run(api.call("blob", 16 * MIB + 10))).check(PayloadTooLarge)
    assert result_of(cluster.run(api.call("blob", 3))) == "xxx"


def test_an_oversized_answer_at_a_relay_becomes_payload_too_large(cluster: Cluster) -> None:
    api, _ = cluster.add_api()
    for connection in list(cluster.master.registry.implementers("blob")):
        connection._limit_boxes(MIB)
        connection.max_payload = MIB
    assert failure_of(cluster.run(api.call("blob", 2 * MIB))).check(PayloadTooLarge)
    assert result_of(cluster.run(api.call("blob", 3))) == "xxx"


def test_an_unauthenticated_peer_sending_a_big_box_is_closed() -> None:
    server = ApiServerProtocol(Master(Clock()), Clock(), b"key-0123456789abcdef")
    client = amp.AMP()
    pump = connect(server, client)
    client.transport.write(
        amp.AmpBox({b"_command": b"Authenticate", b"k": b"v" * 60_000, b"l": b"w" * 60_000}).serialize()
    )
    pump.flush()
    assert server.transport is None


def test_a_box_with_too_many_keys_is_too_large(cluster: Cluster) -> None:
    api, server = cluster.add_api()
    server.max_keys = 10
    box = amp.AmpBox({b"_command": b"Call", b"_ask": b"99", b"method": b"echo"})
    box.update({b"k%d" % i: b"" for i in range(20)})
    answers = raw_boxes(api, lambda b: b.get(b"_error") == b"99")
    send_raw(api, box)
    cluster.flush()
    assert [a[b"_error_code"] for a in answers] == [PayloadTooLarge.code]
    assert result_of(cluster.run(api.call("echo", "still up"))) == "still up"
