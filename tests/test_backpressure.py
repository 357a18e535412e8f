"""
Fair shares: a connection may have only so many calls in flight, and a peer
that does not read what is sent to it is not read from, and is closed once
too much waits for it. Tier 1 in memory, and tier 2 over real TLS: an API
client that sends calls and never reads its answers.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from nswarm.amp_commands import Overloaded
from nswarm.service import Service, implement

from .support import Cluster, failure_of, raw_boxes, result_of, send_raw
from .test_loopback import Cluster as LoopbackCluster
from .test_loopback import (  # noqa: F401 (fixtures)
    clean_reactor,
    cluster,
    cluster_dir,
    start_echo,
    wait_until,
)


class Holder(Service):
    """Holds every call until released."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred[Any]] = []

    @implement
    def hold(self, n: int) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.addCallback(lambda _: n)
        self.held.append(d)
        return d


def test_a_connection_gets_overloaded_past_its_calls_in_flight_and_others_do_not() -> None:
    memory = Cluster()
    node, _, _ = memory.add_node("a")
    holder = Holder()
    memory.add_service(node, holder)
    greedy, greedy_server = memory.add_api()
    other, _ = memory.add_api()
    greedy_server.calls_in_flight = 3
    calls = [greedy.call("hold", n) for n in range(3)]
    memory.flush()
    failure = failure_of(memory.run(greedy.call("hold", 3)))
    assert failure.check(Overloaded) and "3 calls in flight" in str(failure.value)
    mine = memory.run(other.call("hold", 99))  # another connection is not held back
    assert len(holder.held) == 4 and not mine.called
    holder.held[0].callback(None)
    memory.flush()
    assert result_of(calls[0]) == 0
    again = memory.run(greedy.call("hold", 4))  # a slot came free
    assert len(holder.held) == 5 and not again.called


def test_a_peer_that_does_not_read_is_closed_once_past_its_send_buffer() -> None:
    memory = Cluster()
    node, _, _ = memory.add_node("a")
    memory.add_service(node, Holder())
    api, server = memory.add_api()
    server.send_buffer = 10_000
    server.pauseProducing()  # its socket's buffer is full: it is not reading
    with capturedLogs() as logged:
        for n in range(20):
            server.send_error(b"%d" % n, Overloaded("x" * 1000))
    full = [event for event in logged if event.get("nswarm_event") == "send_buffer_full"]
    assert len(full) == 1 and full[0]["backlog"] > 10_000
    memory.flush()
    assert server.transport is None and api.transport is None


@pytest_twisted.ensureDeferred
async def test_an_api_client_that_never_reads_is_not_read_from_then_closed(cluster: LoopbackCluster) -> None:
    service = await start_echo(cluster)
    api_factory = cluster.factories[1]
    api_factory.send_buffer = 1024 * 1024
    greedy = await cluster.api()
    healthy = await cluster.api()
    port = greedy.transport.getHost().port
    (server,) = [c for c in api_factory.connections if c.transport.getPeer().port == port]
    try:
        greedy.transport.pauseProducing()  # it stops reading its answers
        big = "x" * 60_000
        for _ in range(200):  # 12 MB of answers, far over the send buffer
            greedy.call("echo", big).addErrback(lambda _: None)
        await wait_until(
            lambda: not any(c is server for c in api_factory.connections), "the master to close the greedy client"
        )
        assert await healthy.call("echo", "still here") == "still here"
        assert server.backlog > api_factory.send_buffer
    finally:
        if greedy.transport is not None:
            greedy.transport.resumeProducing()
        await greedy.close()
        await healthy.close()
        await service.stop()
    assert reactor.running


@pytest_twisted.ensureDeferred
async def test_the_master_stops_reading_from_a_client_that_does_not_read_and_resumes_when_it_does(
    cluster: LoopbackCluster,
) -> None:
    service = await start_echo(cluster)
    slow = await cluster.api()
    port = slow.transport.getHost().port
    (server,) = [c for c in cluster.factories[1].connections if c.transport.getPeer().port == port]
    try:
        slow.transport.pauseProducing()
        big = "x" * 60_000
        answers = [slow.call("echo", big) for _ in range(200)]
        await wait_until(lambda: server.backlog > 1024 * 1024, "the master's buffer to the client to fill")
        assert server.paused and server._socket not in reactor.getReaders()  # not reading what the client sends
        slow.transport.resumeProducing()
        for answer in answers:
            assert await answer == big
        assert not server.paused and server._socket in reactor.getReaders()
    finally:
        await slow.close()
        await service.stop()


def test_a_tag_still_pending_cannot_be_reused_to_get_past_the_cap() -> None:
    from twisted.protocols import amp

    from nswarm.amp_commands import ARGS, ASK, CALL, COMMAND, ERROR_CODE, METHOD, InvalidRequest

    memory = Cluster()
    node, _, _ = memory.add_node("a")
    memory.add_service(node, Holder())
    api, server = memory.add_api()
    answers = raw_boxes(api)
    for _ in range(3):
        box = amp.AmpBox({COMMAND: CALL, ASK: b"same", METHOD: b"hold", ARGS: b'{"args":[1],"kwargs":{}}'})
        send_raw(api, box)
    memory.flush()
    assert memory.master.pending.asked_by(server) == 1
    assert [box[ERROR_CODE] for box in answers] == [InvalidRequest.code, InvalidRequest.code]


def test_a_connection_may_register_only_so_many_methods_and_patterns() -> None:
    from nswarm.amp_commands import LimitExceeded
    from nswarm.service import subscribe

    class Many(Service):
        @subscribe(*[f"p.{n}.*" for n in range(5)])
        def handler(self, event: str, payload: Any) -> None:
            pass

    memory = Cluster()
    node, _, node_server = memory.add_node("a")
    node_server.max_patterns = 3
    from nswarm.node.node import ServiceServerProtocol

    from .support import SERVICE_KEY, Proxy

    server = ServiceServerProtocol(node, memory.clock, SERVICE_KEY)
    server.max_patterns = 4
    from nswarm.service_runner import ServiceRunner

    runner = ServiceRunner(Many(), memory.clock, SERVICE_KEY)
    proto = runner.buildProtocol(None)
    memory._connect(server, proto)
    failure = failure_of(memory.run(runner.register(Proxy(proto))))
    assert failure.check(LimitExceeded) and "asks for 5 more, over the 4 one connection may have" in str(failure.value)
    assert node.registry.events() == [] and memory.master.registry.events() == []


def test_requests_forwarded_to_a_busy_implementer_do_not_get_it_closed() -> None:
    """Only what waits for a peer that asked for it (answers, events) counts against its send buffer."""
    memory = Cluster()
    node, _, _ = memory.add_node("a")
    holder = Holder()
    _, service_server = memory.add_service(node, holder)
    service_server.send_buffer = 10_000
    service_server.pauseProducing()  # busy: its socket's buffer is full
    api, _ = memory.add_api()
    calls = [api.call("hold", "x" * 1000) for _ in range(30)]
    memory.flush()
    assert service_server.transport is not None and len(holder.held) == 30
    assert not any(call.called for call in calls)


def test_thousands_of_patterns_register_in_parts_and_reach_the_master() -> None:
    from nswarm.service import subscribe

    patterns = [f"orders.region-{n:05d}.*" for n in range(6000)]  # about 150 kB: more than one AMP value

    class Wide(Service):
        @subscribe(*patterns)
        def handler(self, event: str, payload: Any) -> None:
            pass

    memory = Cluster()
    node, _, _ = memory.add_node("a")
    memory.add_service(node, Wide())
    assert sorted(memory.master.registry.events()) == sorted(patterns)


def test_a_subscription_the_master_refuses_fails_the_services_registration() -> None:
    from nswarm.amp_commands import LimitExceeded
    from nswarm.service import subscribe

    class Three(Service):
        @subscribe("a.*", "b.*", "c.*")
        def handler(self, event: str, payload: Any) -> None:
            pass

    memory = Cluster()
    node, _, node_at_master = memory.add_node("a")
    node_at_master.max_patterns = 2
    from nswarm.service_runner import ServiceRunner

    from .support import SERVICE_KEY, Proxy

    runner = ServiceRunner(Three(), memory.clock, SERVICE_KEY)
    proto = runner.buildProtocol(None)
    from nswarm.node.node import ServiceServerProtocol

    memory._connect(ServiceServerProtocol(node, memory.clock, SERVICE_KEY), proto)
    failure = failure_of(memory.run(runner.register(Proxy(proto))))
    assert failure.check(LimitExceeded) and "node 'a'" in str(failure.value)


@pytest_twisted.ensureDeferred
async def test_a_client_at_its_cap_is_not_read_from_until_an_answer_frees_a_slot(cluster: LoopbackCluster) -> None:
    """Past --calls-in-flight the client gets Overloaded once, then is not read (no retry storm) until answered."""
    service = await start_echo(cluster)
    greedy = await cluster.api()
    port = greedy.transport.getHost().port
    (server,) = [c for c in cluster.factories[1].connections if c.transport.getPeer().port == port]
    server.calls_in_flight = 1
    try:
        first = greedy.call("echo", "one")
        second = greedy.call("echo", "two")
        assert await first == "one"
        try:
            await second
        except Overloaded:
            pass  # the answer to the first came first, or the second was one too many: both are fine
        assert server._socket in reactor.getReaders()  # an answer was sent: reading again
        assert await greedy.call("echo", "three") == "three"
    finally:
        await greedy.close()
        await service.stop()
