"""
Tier 1 (issue 13): streamed results through the Twisted SDKs and both
relays, in memory on a Clock: parts in order, the window holding the
producer back, cancellation and deadlines closing the generator, the
payload cap per part, and a plain call to a streaming handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.protocols import amp

from nswarm import defaults
from nswarm.amp_commands import DeadlineExceeded, HandlerFailed, ImplementerLost, PayloadTooLarge
from nswarm.caller import current_caller
from nswarm.service import Service, implement
from nswarm.streams import Stream

from .support import Cluster, disconnect, failure_of, result_of


class Counter(Service):
    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.advanced = 0
        self.closed = 0
        self.callers: list[str] = []

    @implement
    def count(self, n: int) -> Iterator[int]:
        try:
            for value in range(n):
                self.advanced += 1
                yield value
        finally:
            self.closed += 1

    @implement(idempotent=True)
    def forever(self) -> Iterator[int]:
        return self.count(10**9)

    @implement
    async def letters(self, text: str) -> AsyncIterator[str]:
        self.callers.append(str(current_caller()))
        for letter in text:
            yield letter

    @implement
    def big(self) -> Iterator[str]:
        yield "small"
        yield "x" * (defaults.MAX_PAYLOAD + 1)
        yield "never"

    @implement
    def broken(self) -> Iterator[int]:
        yield 1
        raise ValueError("no more")

    @implement
    def plain(self, text: str) -> str:
        return text.upper()


def cluster_with(service: Service) -> tuple[Cluster, Any]:
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, service)
    client, _ = cluster.add_api()
    return cluster, client


def take_all(cluster: Cluster, stream: Stream) -> tuple[list[Any], Deferred[int]]:
    parts: list[Any] = []
    done = stream.each(parts.append)
    cluster.flush()
    return parts, done


def test_parts_come_in_order_through_both_relays_and_the_answer_counts_them() -> None:
    service = Counter()
    cluster, client = cluster_with(service)
    parts, done = take_all(cluster, client.stream("count", 50, window=4))
    assert parts == list(range(50)) and result_of(done) == 50 and service.closed == 1


def test_a_reader_that_takes_nothing_holds_the_generator_at_its_window() -> None:
    service = Counter()
    cluster, client = cluster_with(service)
    stream = client.stream("count", 1000, window=8)
    cluster.flush()
    assert service.advanced == 8  # the generator is not advanced past what was granted
    first = [result_of(stream.next()) for _ in range(4)]  # half a window taken: 4 more granted
    cluster.flush()
    assert first == [0, 1, 2, 3] and service.advanced == 12
    stream.cancel()
    cluster.flush()
    assert service.closed == 1


def test_async_for_over_a_stream_in_a_coroutine() -> None:
    service = Counter()
    cluster, client = cluster_with(service)

    async def read() -> list[str]:
        return [part async for part in client.stream("letters", "hello", window=2)]

    d = ensureDeferred(read())
    cluster.flush()
    assert result_of(d) == list("hello")
    assert service.callers == ["API user ''"]  # the async generator runs in its caller's context


def test_cancelling_a_stream_closes_the_generator_and_fails_what_waits() -> None:
    service = Counter()
    cluster, client = cluster_with(service)
    stream = client.stream("forever", window=4)
    cluster.flush()
    assert [result_of(stream.next()) for _ in range(3)] == [0, 1, 2]
    stream.cancel()
    cluster.flush()
    assert service.closed == 1
    assert result_of(stream.next()) == 3  # a part that had come already
    failure_of(stream.next()).trap(CancelledError)
    failure_of(stream.done()).trap(CancelledError)


def test_a_lost_node_connection_closes_the_generator() -> None:
    service = Counter()
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    proto, _ = cluster.add_service(node, service)
    client, _ = cluster.add_api()
    stream = client.stream("count", 1000, window=4)
    cluster.flush()
    assert service.advanced == 4 and service.closed == 0  # held at its window: nobody reads
    disconnect(proto, cluster)
    assert service.closed == 1 and proto.streams == {}
    failure_of(stream.done()).trap(ImplementerLost)  # it sent parts: not sent again


def test_the_deadline_covers_the_whole_stream() -> None:
    service = Counter()
    cluster, client = cluster_with(service)
    stream = client.stream("forever", window=2, timeout=1.0)
    cluster.flush()
    for _ in range(25):
        cluster.clock.advance(defaults.SWEEP_INTERVAL)
        cluster.flush()
    assert service.closed == 1
    error = failure_of(stream.done()).value
    assert isinstance(error, DeadlineExceeded)


def test_a_part_over_the_payload_cap_ends_the_stream_after_the_parts_before_it() -> None:
    service = Counter()
    cluster, client = cluster_with(service)
    stream = client.stream("big")
    cluster.flush()
    assert result_of(stream.next()) == "small"
    error = failure_of(stream.next()).value
    assert isinstance(error, PayloadTooLarge) and service.closed == 0  # big() has no finally: it was closed


def test_a_generator_that_raises_fails_the_call_after_its_parts() -> None:
    cluster, client = cluster_with(Counter())
    stream = client.stream("broken")
    cluster.flush()
    assert result_of(stream.next()) == 1
    error = failure_of(stream.next()).value
    assert isinstance(error, HandlerFailed) and "no more" in str(error)


def test_a_plain_call_to_a_streaming_handler_gets_the_list_and_a_stream_of_a_plain_one_one_part() -> None:
    cluster, client = cluster_with(Counter())
    assert result_of(cluster.run(client.call("count", 3))) == [0, 1, 2]
    parts, done = take_all(cluster, client.stream("plain", "hi"))
    assert parts == ["HI"] and result_of(done) == 1


def test_a_call_that_sent_a_part_is_not_sent_again_when_its_node_is_lost() -> None:
    cluster = Cluster()
    first, second = Counter(), Counter()
    node1, _, server1 = cluster.add_node("node-1")
    cluster.add_service(node1, first)
    node2, _, _ = cluster.add_node("node-2")
    cluster.add_service(node2, second)
    client, _ = cluster.add_api()
    stream = client.stream("forever", window=2)  # idempotent, but it has produced output
    cluster.flush()
    streaming = server1 if first.advanced else None
    assert streaming is not None and second.advanced == 0
    disconnect(streaming, cluster)
    assert [result_of(stream.next()) for _ in range(2)] == [0, 1]
    assert isinstance(failure_of(stream.next()).value, ImplementerLost) and second.advanced == 0


def test_a_window_out_of_range_is_refused_before_anything_is_sent() -> None:
    _, client = cluster_with(Counter())
    for window in (0, defaults.MAX_STREAM_WINDOW + 1):
        try:
            client.stream("count", 1, window=window)
        except ValueError as error:
            assert "window must be 1 to 1024" in str(error)
        else:
            raise AssertionError("accepted")


def test_a_part_sent_for_a_call_all_is_dropped_not_counted_as_an_answer() -> None:
    class Holding(Service):
        name = "holding"

        def __init__(self) -> None:
            super().__init__()
            self.held: list[Deferred[Any]] = []

        @implement
        def wait(self) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.held.append(d)
            return d

    service = Holding()
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    _, server = cluster.add_service(node, service)
    client, _ = cluster.add_api()
    gathered = client.call_all("wait")
    cluster.flush()
    [request] = node.relay.pending.waiting_on(server)
    server.ampBoxReceived(amp.AmpBox({b"_command": b"Part", b"id": request.tag, b"result": b"1"}))  # not an SDK
    cluster.flush()
    assert not gathered.called
    service.held[0].callback("done")
    cluster.flush()
    assert result_of(gathered) == ["done"]
