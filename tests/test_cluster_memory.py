"""
Tier 1: the whole path of a call and of an event, API user -> master -> node
-> service and back, with real nswarm protocols connected in memory.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.logger import capturedLogs

from nswarm.amp_commands import (
    HandlerFailed,
    ImplementerLost,
    InvalidRequest,
    NoSuchMethod,
    UpstreamUnavailable,
)
from nswarm.service import Service, implement, subscribe

from .support import Cluster, disconnect, failure_of, result_of


class Greeter(Service):
    """A service with a plain, a Deferred and an async handler, and one event."""

    def __init__(self) -> None:
        super().__init__()
        self.events_seen: list[tuple[str, Any]] = []
        self.hanging: list[Deferred[Any]] = []

    @implement
    def greet(self, name: str, punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"

    @implement("math.add")
    def add(self, a: int, b: int) -> Deferred[int]:
        return succeed(a + b)

    @implement
    async def shout(self, text: str) -> str:
        return text.upper()

    @implement
    def fail(self) -> None:
        raise ValueError("bad value")

    @implement
    def unencodable(self) -> object:
        return object()

    @implement
    def hang(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.hanging.append(d)
        return d

    @subscribe("orders.created")
    def order_created(self, event: str, payload: Any) -> None:
        self.events_seen.append((event, payload))


class Counter(Service):
    """A second kind of service, implementing 'whoami' like several others."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.events_seen: list[Any] = []

    @implement
    def whoami(self) -> str:
        return self.label

    @subscribe("orders.created", "orders.cancelled")
    def order_event(self, event: str, payload: Any) -> None:
        self.events_seen.append((event, payload))


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


def test_call_travels_to_the_service_and_back(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    api, _ = cluster.add_api()
    assert result_of(cluster.run(api.call("greet", "world"))) == "hello world!"
    assert result_of(cluster.run(api.call("greet", "you", punctuation="?"))) == "hello you?"
    assert result_of(cluster.run(api.call("math.add", 2, 3))) == 5
    assert result_of(cluster.run(api.call("shout", "hi"))) == "HI"


def test_many_outstanding_calls_each_get_their_own_answer(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    api, _ = cluster.add_api()
    calls = [api.call("math.add", i, 1000) for i in range(200)]
    cluster.flush()
    assert [result_of(d) for d in calls] == [i + 1000 for i in range(200)]
    assert len(cluster.master.pending) == 0 and len(node.pending) == 0


def test_unknown_method_fails_at_once(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    api, _ = cluster.add_api()
    failure = failure_of(cluster.run(api.call("nobody.implements.this")))
    assert failure.check(NoSuchMethod)
    assert "nobody.implements.this" in str(failure.value)


def test_handler_exception_arrives_typed_with_remote_type_and_message(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    api, _ = cluster.add_api()
    failure = failure_of(cluster.run(api.call("fail")))
    assert failure.check(HandlerFailed)
    assert failure.value.remote_type == "ValueError"
    assert failure.value.remote_message == "bad value"
    # The connection survives: the next call works.
    assert result_of(cluster.run(api.call("greet", "again"))) == "hello again!"


def test_wrong_arguments_and_unencodable_results_are_handler_failures(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    api, _ = cluster.add_api()
    assert failure_of(cluster.run(api.call("greet"))).value.remote_type == "TypeError"
    assert failure_of(cluster.run(api.call("unencodable"))).value.remote_type == "InvalidResult"


def test_unencodable_arguments_fail_locally(cluster: Cluster) -> None:
    cluster.add_node("node-1")
    api, _ = cluster.add_api()
    assert failure_of(api.call("greet", object())).check(InvalidRequest)


def test_invalid_method_name_is_refused_by_the_master(cluster: Cluster) -> None:
    cluster.add_node("node-1")
    api, _ = cluster.add_api()
    assert failure_of(cluster.run(api.call(" padded "))).check(InvalidRequest)
    assert failure_of(cluster.run(api.call(""))).check(InvalidRequest)


def test_calls_round_robin_over_nodes_and_over_services(cluster: Cluster) -> None:
    node_a, _, _ = cluster.add_node("a")
    node_b, _, _ = cluster.add_node("b")
    cluster.add_service(node_a, Counter("a1"))
    cluster.add_service(node_a, Counter("a2"))
    cluster.add_service(node_b, Counter("b1"))
    api, _ = cluster.add_api()
    answers = [result_of(cluster.run(api.call("whoami"))) for _ in range(8)]
    # The master alternates nodes; node a alternates its two services.
    assert answers == ["a1", "b1", "a2", "b1", "a1", "b1", "a2", "b1"]


def test_event_reaches_every_matching_service_once(cluster: Cluster) -> None:
    node_a, upstream_a, _ = cluster.add_node("a")
    node_b, _, _ = cluster.add_node("b")
    node_c, _, _ = cluster.add_node("c")
    greeter, a1, a2, b1 = Greeter(), Counter("a1"), Counter("a2"), Counter("b1")
    cluster.add_service(node_a, greeter)
    cluster.add_service(node_a, a1)
    cluster.add_service(node_a, a2)
    cluster.add_service(node_b, b1)
    bystander = Greeter()
    cluster.add_service(node_c, bystander)
    api, _ = cluster.add_api()
    result_of(cluster.run(api.publish("orders.cancelled", {"id": 7})))
    assert a1.events_seen == a2.events_seen == b1.events_seen == [("orders.cancelled", {"id": 7})]
    assert greeter.events_seen == bystander.events_seen == []
    result_of(cluster.run(api.publish("orders.created", [1, 2])))
    assert greeter.events_seen == bystander.events_seen == [("orders.created", [1, 2])]
    assert a1.events_seen[-1] == ("orders.created", [1, 2])


class Routed(Service):
    """A service whose handlers_for gives one handler the events of another's pattern (as bench/pattern_service.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, Any]] = []

    @subscribe("orders.*")
    def orders(self, event: str, payload: Any) -> None:
        self.seen.append(("orders", event, payload))

    def special(self, event: str, payload: Any) -> None:
        self.seen.append(("special", event, payload))

    def handlers_for(self, event: str) -> list[str]:
        return ["special"] if event == "orders.special" else super().handlers_for(event)


def test_a_service_that_overrides_handlers_for_gets_its_events_where_it_says(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    routed = Routed()
    cluster.add_service(node, routed)
    api, _ = cluster.add_api()
    result_of(cluster.run(api.publish("orders.special", 1)))
    result_of(cluster.run(api.publish("orders.created", 2)))
    assert routed.seen == [("special", "orders.special", 1), ("orders", "orders.created", 2)]


def test_event_with_no_subscriber_is_accepted(cluster: Cluster) -> None:
    cluster.add_node("a")
    api, _ = cluster.add_api()
    assert result_of(cluster.run(api.publish("nobody.listens", None))) == 0  # handed to nobody


def test_a_service_calls_and_publishes_through_its_node(cluster: Cluster) -> None:
    node_a, _, _ = cluster.add_node("a")
    node_b, _, _ = cluster.add_node("b")
    caller = Counter("caller")
    cluster.add_service(node_a, caller)
    listener = Greeter()
    cluster.add_service(node_b, listener)
    assert result_of(cluster.run(caller.call("greet", "from a service"))) == "hello from a service!"
    result_of(cluster.run(caller.publish("orders.created", {"by": "service"})))
    assert listener.events_seen == [("orders.created", {"by": "service"})]
    # Its own node's subscribers hear its events too.
    result_of(cluster.run(caller.publish("orders.cancelled", 1)))
    assert caller.events_seen == [("orders.created", {"by": "service"}), ("orders.cancelled", 1)]


def test_registrations_are_aggregated_and_withdrawn(cluster: Cluster) -> None:
    node, _, node_conn = cluster.add_node("a")
    first, second = Counter("1"), Counter("2")
    first_proto, _ = cluster.add_service(node, first)
    second_proto, _ = cluster.add_service(node, second)
    assert cluster.master.registry.choose("whoami") is node_conn
    disconnect(first_proto, cluster)
    assert cluster.master.registry.methods() == ["whoami"]
    disconnect(second_proto, cluster)
    assert cluster.master.registry.methods() == []
    assert cluster.master.registry.events() == []
    api, _ = cluster.add_api()
    assert failure_of(cluster.run(api.call("whoami"))).check(NoSuchMethod)


def test_node_loss_withdraws_its_methods(cluster: Cluster) -> None:
    node, upstream, _ = cluster.add_node("a")
    cluster.add_service(node, Counter("1"))
    disconnect(upstream, cluster)
    assert cluster.master.registry.methods() == []


def test_reconnected_node_registers_a_full_snapshot(cluster: Cluster) -> None:
    node, upstream, _ = cluster.add_node("a")
    cluster.add_service(node, Counter("1"))
    disconnect(upstream, cluster)
    assert node.upstream.connection is None
    from nswarm.master.master import NodeServerProtocol
    from nswarm.node.upstream import UpstreamProtocol

    from .support import NODE_KEY, certified

    again = UpstreamProtocol(node, cluster.clock)
    cluster._connect(certified(NodeServerProtocol(cluster.master, cluster.clock, NODE_KEY), "a"), again)
    result_of(cluster.run(node.upstream.authenticate(NODE_KEY)(again)))
    assert cluster.master.registry.methods() == ["whoami"]
    assert sorted(cluster.master.registry.events()) == ["orders.cancelled", "orders.created"]


def test_call_pending_on_a_lost_service_fails_at_once(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    greeter = Greeter()
    proto, _ = cluster.add_service(node, greeter)
    api, _ = cluster.add_api()
    pending = cluster.run(api.call("hang"))
    assert greeter.hanging and not pending.called
    disconnect(proto, cluster)
    failure = failure_of(pending)
    assert failure.check(ImplementerLost)
    assert "Greeter" in str(failure.value)
    assert len(cluster.master.pending) == 0 and len(node.pending) == 0


def test_call_pending_on_a_lost_node_fails_at_once(cluster: Cluster) -> None:
    node, upstream, _ = cluster.add_node("a")
    cluster.add_service(node, Greeter())
    api, _ = cluster.add_api()
    pending = cluster.run(api.call("hang"))
    disconnect(upstream, cluster)
    failure = failure_of(pending)
    assert failure.check(ImplementerLost)
    assert "'a'" in str(failure.value)


def test_service_call_fails_at_once_while_the_node_has_no_upstream(cluster: Cluster) -> None:
    node, upstream, _ = cluster.add_node("a")
    caller = Counter("c")
    cluster.add_service(node, caller)
    disconnect(upstream, cluster)
    assert failure_of(cluster.run(caller.call("implemented.elsewhere"))).check(UpstreamUnavailable)
    assert failure_of(cluster.run(caller.publish("orders.created", 1))).check(UpstreamUnavailable)


def test_service_not_connected_fails_at_once() -> None:
    assert failure_of(Counter("x").call("whoami")).check(UpstreamUnavailable)


def test_late_answer_after_the_caller_left_is_dropped(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    greeter = Greeter()
    cluster.add_service(node, greeter)
    api, _ = cluster.add_api()
    other, _ = cluster.add_api()
    cluster.run(api.call("hang"))
    disconnect(api, cluster)
    greeter.hanging[0].callback("late")
    cluster.flush()
    assert len(cluster.master.pending) == 0
    assert result_of(cluster.run(other.call("greet", "still here"))) == "hello still here!"


def test_a_routing_bug_costs_one_request_not_the_connection(cluster: Cluster, monkeypatch: Any) -> None:
    from nswarm.amp_commands import InternalError

    node, _, _ = cluster.add_node("a")
    cluster.add_service(node, Greeter())
    api, _ = cluster.add_api()
    real = cluster.master.registry.choose
    monkeypatch.setattr(cluster.master.registry, "choose", lambda method: 1 / 0)
    assert failure_of(cluster.run(api.call("greet", "x"))).check(InternalError)
    monkeypatch.setattr(cluster.master.registry, "choose", real)
    assert result_of(cluster.run(api.call("greet", "y"))) == "hello y!"


def test_handlers_cannot_replace_the_sdk_s_own_methods() -> None:
    with pytest.raises(TypeError, match="would replace Service.start"):

        class Clumsy(Service):
            @implement
            def start(self) -> None: ...


def test_a_keyword_argument_may_be_called_method(cluster: Cluster) -> None:
    class Router(Service):
        @implement
        def route(self, method: str) -> str:
            return method

    node, _, _ = cluster.add_node("a")
    cluster.add_service(node, Router())
    api, _ = cluster.add_api()
    assert result_of(cluster.run(api.call("route", method="POST"))) == "POST"


def test_connect_from_a_missing_config_fails_the_deferred(tmp_path: Any) -> None:
    from nswarm.api import connect_from_config
    from nswarm.config import ConfigError

    d = connect_from_config(object(), str(tmp_path / "absent.conf"))
    assert failure_of(d).check(ConfigError)


def test_a_cancelled_call_ignores_its_late_answer(cluster: Cluster) -> None:
    from twisted.internet.defer import CancelledError

    node, _, _ = cluster.add_node("a")
    greeter = Greeter()
    cluster.add_service(node, greeter)
    api, _ = cluster.add_api()
    pending = cluster.run(api.call("hang"))
    pending.cancel()
    assert failure_of(pending).check(CancelledError)
    greeter.hanging[0].callback("late")
    cluster.flush()
    assert result_of(cluster.run(api.call("greet", "next"))) == "hello next!"


def test_a_service_answers_a_malformed_call_box_with_a_typed_error() -> None:
    from twisted.internet.task import Clock
    from twisted.protocols import amp

    from nswarm.boxes import remote_error
    from nswarm.service_runner import ServiceRunner

    from .support import connect

    server = amp.AMP()
    greeter = Greeter()
    proto = ServiceRunner(greeter, Clock(), b"key").buildProtocol(None)
    pump = connect(server, proto)
    answers: list[amp.AmpBox] = []
    server.ampBoxReceived = answers.append  # type: ignore[method-assign]
    server.sendBox(amp.AmpBox({b"_command": b"Call", b"_ask": b"1", b"method": b"\xff"}))
    server.sendBox(amp.AmpBox({b"_command": b"Call", b"_ask": b"2", b"method": b"greet", b"args": b"not json"}))
    server.sendBox(amp.AmpBox({b"_command": b"Call", b"_ask": b"3", b"method": b"greet"}))
    pump.flush()
    assert [type(remote_error(box)) for box in answers] == [InvalidRequest] * 3
    assert proto.transport is not None


def test_deadline_fails_the_call_and_cancels_the_handler(cluster: Cluster) -> None:
    from nswarm.amp_commands import DeadlineExceeded

    node, _, _ = cluster.add_node("a")
    greeter = Greeter()
    cluster.add_service(node, greeter)
    api, _ = cluster.add_api()
    pending = cluster.run(api.call_with_timeout(1.0, "hang"))
    cluster.clock.advance(0.9)
    cluster.flush()
    assert not pending.called and not greeter.hanging[0].called
    cluster.clock.advance(0.2)
    cluster.flush()
    assert failure_of(pending).check(DeadlineExceeded)
    assert greeter.hanging[0].called  # cancelled through the node
    assert len(cluster.master.pending) == len(node.pending) == 0
    cluster.clock.advance(0.05)  # the deadline sweeps stop once nothing is in flight
    assert cluster.master.relay._sweeper is None and node.relay._sweeper is None
    assert result_of(cluster.run(api.call("greet", "on time"))) == "hello on time!"


def test_default_deadline_is_thirty_seconds(cluster: Cluster) -> None:
    from nswarm.amp_commands import DeadlineExceeded

    node, _, _ = cluster.add_node("a")
    cluster.add_service(node, Greeter())
    api, _ = cluster.add_api()
    pending = cluster.run(api.call("hang"))
    cluster.clock.advance(29.9)
    cluster.flush()
    assert not pending.called
    cluster.clock.advance(0.2)
    cluster.flush()
    assert failure_of(pending).check(DeadlineExceeded)


def test_cancelling_a_call_cancels_its_handler(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    greeter = Greeter()
    cluster.add_service(node, greeter)
    api, _ = cluster.add_api()
    pending = cluster.run(api.call("hang"))
    pending.cancel()
    cluster.flush()
    assert greeter.hanging[0].called
    assert len(cluster.master.pending) == len(node.pending) == 0


def test_a_caller_that_leaves_cancels_its_calls(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    greeter = Greeter()
    cluster.add_service(node, greeter)
    api, _ = cluster.add_api()
    cluster.run(api.call("hang"))
    disconnect(api, cluster)
    assert greeter.hanging[0].called
    assert len(cluster.master.pending) == len(node.pending) == 0


def test_invalid_timeouts_are_refused(cluster: Cluster) -> None:
    from nswarm.amp_commands import DeadlineExceeded

    node, _, _ = cluster.add_node("a")
    cluster.add_service(node, Greeter())
    api, _ = cluster.add_api()
    assert failure_of(cluster.run(api.call_with_timeout(0, "greet", "x"))).check(DeadlineExceeded)
    assert failure_of(cluster.run(api.call_with_timeout(1e9, "greet", "x"))).check(InvalidRequest)


def test_busy_services_get_fewer_calls(cluster: Cluster) -> None:
    """Least calls in flight wins: while one service holds a call, the other gets the next ones."""

    class Worker(Counter):
        def __init__(self, label: str) -> None:
            super().__init__(label)
            self.held: list[Deferred[Any]] = []

        @implement
        def hold(self) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.held.append(d)
            return d

    node, _, _ = cluster.add_node("a")
    first, second = Worker("1"), Worker("2")
    cluster.add_service(node, first)
    cluster.add_service(node, second)
    api, _ = cluster.add_api()
    cluster.run(api.call("hold"))
    assert len(first.held) == 1
    assert [result_of(cluster.run(api.call("whoami"))) for _ in range(3)] == ["2", "2", "2"]
    first.held[0].callback(None)
    cluster.flush()
    assert sorted(result_of(cluster.run(api.call("whoami"))) for _ in range(2)) == ["1", "2"]


class Watcher(Service):
    """Subscribes with wildcards and records what it hears."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[tuple[str, Any]] = []

    @subscribe("orders.*", "audit.>")
    def hear(self, event: str, payload: Any) -> None:
        self.heard.append((event, payload))


def test_wildcard_subscriptions_match_at_master_and_node(cluster: Cluster) -> None:
    node_a, _, _ = cluster.add_node("a")
    node_b, _, _ = cluster.add_node("b")
    watcher, exact = Watcher(), Counter("exact")
    cluster.add_service(node_a, watcher)
    cluster.add_service(node_b, exact)
    api, _ = cluster.add_api()
    for event in ["orders.created", "orders.created.eu", "audit.login.failed", "audit", "users.created"]:
        result_of(cluster.run(api.publish(event, event)))
    assert watcher.heard == [("orders.created", "orders.created"), ("audit.login.failed", "audit.login.failed")]
    assert exact.events_seen == [("orders.created", "orders.created")]
    assert failure_of(cluster.run(api.publish("orders.*", 1))).check(InvalidRequest)


def test_a_publisher_can_exclude_itself(cluster: Cluster) -> None:
    node_a, _, _ = cluster.add_node("a")
    node_b, _, _ = cluster.add_node("b")
    me, neighbour, remote = Counter("me"), Counter("neighbour"), Counter("remote")
    cluster.add_service(node_a, me)
    cluster.add_service(node_a, neighbour)
    cluster.add_service(node_b, remote)
    result_of(cluster.run(me.publish("orders.created", 1, exclude_self=True)))
    assert me.events_seen == []
    assert neighbour.events_seen == remote.events_seen == [("orders.created", 1)]
    result_of(cluster.run(me.publish("orders.created", 2)))
    assert me.events_seen == [("orders.created", 2)]
    assert neighbour.events_seen == remote.events_seen == [("orders.created", 1), ("orders.created", 2)]


def test_a_node_of_the_same_name_replaces_its_stale_connection(cluster: Cluster) -> None:
    _, _, first = cluster.add_node("same")
    _, _, second = cluster.add_node("same")
    assert first.transport is None and second.transport is not None
    assert cluster.master.nodes["same"] is second


def test_calls_wait_out_the_grace_period_for_an_implementer(cluster: Cluster) -> None:
    cluster.master.grace = 2.0
    node, _, _ = cluster.add_node("a")
    api, _ = cluster.add_api()
    early = cluster.run(api.call("greet", "patient"))
    hopeless = cluster.run(api.call("nobody.ever"))
    cluster.clock.advance(1.0)
    cluster.flush()
    assert not early.called and not hopeless.called
    cluster.add_service(node, Greeter())
    assert result_of(cluster.run(early)) == "hello patient!"
    cluster.clock.advance(1.1)
    cluster.flush()
    assert failure_of(hopeless).check(NoSuchMethod)
    assert cluster.master._hold_timer is None and cluster.master.parked_count == 0


def test_without_grace_a_missing_method_fails_at_once(cluster: Cluster) -> None:
    cluster.add_node("a")
    api, _ = cluster.add_api()
    assert failure_of(cluster.run(api.call("nobody.ever"))).check(NoSuchMethod)


def test_a_node_cut_off_from_the_master_serves_its_own_methods(cluster: Cluster) -> None:
    node, upstream, _ = cluster.add_node("a")
    caller, greeter = Counter("caller"), Greeter()
    cluster.add_service(node, caller)
    cluster.add_service(node, greeter)
    disconnect(upstream, cluster)
    assert result_of(cluster.run(caller.call("greet", "locally"))) == "hello locally!"
    assert failure_of(cluster.run(caller.call("elsewhere"))).check(UpstreamUnavailable)
    node.local_first = False
    assert failure_of(cluster.run(caller.call("greet", "x"))).check(UpstreamUnavailable)


def test_overlapping_subscriptions_run_a_handler_once(cluster: Cluster) -> None:
    class Overlapping(Service):
        def __init__(self) -> None:
            super().__init__()
            self.heard: list[str] = []

        @subscribe("orders.*", "orders.>")
        def hear(self, event: str, payload: Any) -> None:
            self.heard.append(event)

    node, _, _ = cluster.add_node("a")
    listener = Overlapping()
    cluster.add_service(node, listener)
    api, _ = cluster.add_api()
    result_of(cluster.run(api.publish("orders.created", None)))
    assert listener.heard == ["orders.created"]
    assert failure_of(cluster.run(api.publish("orders..x", None))).check(InvalidRequest)


def test_a_service_can_call_with_a_timeout(cluster: Cluster) -> None:
    from nswarm.amp_commands import DeadlineExceeded

    node, _, _ = cluster.add_node("a")
    caller = Counter("caller")
    cluster.add_service(node, caller)
    cluster.add_service(node, Greeter())
    pending = cluster.run(caller.call_with_timeout(0.5, "hang"))
    cluster.clock.advance(0.6)
    cluster.flush()
    assert failure_of(pending).check(DeadlineExceeded)
    assert failure_of(Counter("offline").call_with_timeout(1, "x")).check(UpstreamUnavailable)


class Flaky(Service):
    """Holds every call it gets; 'retry.me' is idempotent, 'once.only' is not."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.held: list[Deferred[Any]] = []

    @implement("retry.me", idempotent=True)
    def retry_me(self) -> Any:
        return self._hold()

    @implement("once.only")
    def once_only(self) -> Any:
        return self._hold()

    def _hold(self) -> Any:
        d: Deferred[Any] = Deferred()
        self.held.append(d)
        return d


def test_an_idempotent_call_lost_with_its_node_is_retried_on_another(cluster: Cluster) -> None:
    node_a, upstream_a, _ = cluster.add_node("a")
    node_b, _, _ = cluster.add_node("b")
    first, second = Flaky("a"), Flaky("b")
    cluster.add_service(node_a, first)
    cluster.add_service(node_b, second)
    api, _ = cluster.add_api()
    retried = cluster.run(api.call("retry.me"))
    assert len(first.held) == 1 and not second.held
    disconnect(upstream_a, cluster)
    assert not retried.called and len(second.held) == 1
    second.held[0].callback("from b")
    cluster.flush()
    assert result_of(retried) == "from b"


def test_an_idempotent_call_lost_with_its_service_is_retried_once(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    one, two = Flaky("1"), Flaky("2")
    proto_one, _ = cluster.add_service(node, one)
    proto_two, _ = cluster.add_service(node, two)
    api, _ = cluster.add_api()
    call = cluster.run(api.call("retry.me"))
    disconnect(proto_one, cluster)
    assert len(two.held) == 1 and not call.called
    disconnect(proto_two, cluster)  # lost again: no second retry
    assert failure_of(call).check(ImplementerLost)


def test_other_calls_lost_with_their_node_fail(cluster: Cluster) -> None:
    node_a, upstream_a, _ = cluster.add_node("a")
    node_b, _, _ = cluster.add_node("b")
    cluster.add_service(node_a, Flaky("a"))
    second = Flaky("b")
    cluster.add_service(node_b, second)
    api, _ = cluster.add_api()
    once = cluster.run(api.call("once.only"))
    disconnect(upstream_a, cluster)
    assert failure_of(once).check(ImplementerLost) and not second.held


def test_a_node_advertises_idempotence_only_if_all_its_services_agree(cluster: Cluster) -> None:
    class Careless(Service):
        @implement("retry.me")
        def retry_me(self) -> None: ...

    node, _, node_conn = cluster.add_node("a")
    cluster.add_service(node, Flaky("1"))
    assert cluster.master.registry.is_idempotent(node_conn, "retry.me")
    careless_proto, _ = cluster.add_service(node, Careless())
    assert not cluster.master.registry.is_idempotent(node_conn, "retry.me")
    disconnect(careless_proto, cluster)
    assert cluster.master.registry.is_idempotent(node_conn, "retry.me")


class Limited(Service):
    """Runs at most two 'slow' calls at once; holds each until released."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred[Any]] = []

    @implement(concurrency=2)
    def slow(self, n: int) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.addCallback(lambda _: n)
        self.held.append(d)
        return d


def test_concurrency_limits_queue_calls_at_the_master(cluster: Cluster) -> None:
    from nswarm.amp_commands import Overloaded

    cluster.master.held.size = 2
    node, _, node_conn = cluster.add_node("a")
    limited = Limited()
    cluster.add_service(node, limited)
    assert cluster.master.registry.limit(node_conn, "slow") == 2
    api, _ = cluster.add_api()
    calls = [cluster.run(api.call("slow", n)) for n in range(4)]
    assert len(limited.held) == 2 and cluster.master.parked_count == 2
    assert failure_of(cluster.run(api.call("slow", 99))).check(Overloaded)
    limited.held[0].callback(None)
    cluster.flush()
    assert result_of(calls[0]) == 0 and len(limited.held) == 3
    for held in limited.held[1:]:
        held.callback(None)
    cluster.flush()
    limited.held[3].callback(None)
    cluster.flush()
    assert [result_of(call) for call in calls[1:]] == [1, 2, 3]
    assert cluster.master.parked_count == 0


def test_a_queued_call_gives_up_at_its_deadline(cluster: Cluster) -> None:
    from nswarm.amp_commands import DeadlineExceeded

    node, _, _ = cluster.add_node("a")
    limited = Limited()
    cluster.add_service(node, limited)
    api, _ = cluster.add_api()
    cluster.run(api.call("slow", 1))
    cluster.run(api.call("slow", 2))
    queued = cluster.run(api.call_with_timeout(1.0, "slow", 3))
    cluster.clock.advance(1.0)
    cluster.flush()
    assert failure_of(queued).check(DeadlineExceeded) and len(limited.held) == 2


def test_a_node_advertises_the_sum_of_its_services_limits(cluster: Cluster) -> None:
    node, _, node_conn = cluster.add_node("a")
    first, _ = cluster.add_service(node, Limited())
    cluster.add_service(node, Limited())
    assert cluster.master.registry.limit(node_conn, "slow") == 4
    disconnect(first, cluster)
    assert cluster.master.registry.limit(node_conn, "slow") == 2


def test_a_draining_node_withdraws_then_waits_for_its_calls(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    worker = Flaky("w")
    cluster.add_service(node, worker)
    api, _ = cluster.add_api()
    running = cluster.run(api.call("retry.me"))
    drained = node.drain(5.0)
    cluster.flush()
    assert cluster.master.registry.methods() == [] and not drained.called
    assert failure_of(cluster.run(api.call("retry.me"))).check(NoSuchMethod)
    worker.held[0].callback("finished")
    cluster.flush()
    assert result_of(running) == "finished" and drained.called


def test_draining_gives_up_waiting_after_its_timeout(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    cluster.add_service(node, Flaky("w"))
    api, _ = cluster.add_api()
    cluster.run(api.call("once.only"))
    drained = node.drain(2.0)
    cluster.clock.advance(1.9)
    assert not drained.called
    cluster.clock.advance(0.2)
    assert drained.called


def test_a_draining_service_withdraws_then_waits_for_its_handlers(cluster: Cluster) -> None:
    from twisted.application.internet import ClientService

    node, _, _ = cluster.add_node("a")
    worker = Flaky("w")
    cluster.add_service(node, worker)
    stopped: list[bool] = []

    class FakeClientService(ClientService):
        def __init__(self) -> None:
            pass

        def stopService(self) -> Deferred[None]:
            stopped.append(True)
            return succeed(None)

    assert worker.runner is not None
    worker.runner.client_service = FakeClientService()
    api, _ = cluster.add_api()
    running = cluster.run(api.call("once.only"))
    done = worker.stop(drain_timeout=5.0)
    cluster.flush()
    assert "once.only" not in cluster.master.registry.methods() and not stopped
    worker.held[0].callback("last")
    cluster.flush()
    assert result_of(running) == "last" and stopped and done.called


def test_a_call_a_node_turns_down_unrun_is_sent_to_another(cluster: Cluster) -> None:
    """A node that lost its last implementer a moment ago answers NoSuchMethod: the call never ran,
    so the master sends it to another node, idempotent or not."""
    node_a, _, _ = cluster.add_node("a")
    _, _, conn_b = cluster.add_node("b")
    cluster.add_service(node_a, Greeter())
    cluster.master.registry.implement(conn_b, ["greet"])  # b's withdrawal is still on its way
    api, _ = cluster.add_api()
    assert [result_of(cluster.run(api.call("greet", str(n)))) for n in range(4)] == [f"hello {n}!" for n in range(4)]


def test_call_all_gathers_one_outcome_per_service(cluster: Cluster) -> None:
    from nswarm.amp_commands import DeadlineExceeded

    class Member(Counter):
        @implement
        def boom(self) -> None:
            raise KeyError(self.label)

    node_a, _, _ = cluster.add_node("a")
    node_b, _, _ = cluster.add_node("b")
    cluster.add_service(node_a, Member("a1"))
    cluster.add_service(node_a, Member("a2"))
    cluster.add_service(node_b, Member("b1"))
    api, _ = cluster.add_api()
    assert sorted(result_of(cluster.run(api.call_all("whoami")))) == ["a1", "a2", "b1"]
    failures = result_of(cluster.run(api.call_all("boom")))
    assert sorted(f.remote_message for f in failures) == ["'a1'", "'a2'", "'b1'"]
    assert all(isinstance(f, HandlerFailed) for f in failures)
    assert failure_of(cluster.run(api.call_all("nobody"))).check(NoSuchMethod)
    assert not cluster.master.relay.gathers and not node_a.relay.gathers
    # One service that never answers becomes a DeadlineExceeded entry; the others still count.
    slow = Greeter()
    cluster.add_service(node_b, slow)
    api.timeout = 1.0
    pending = cluster.run(api.call_all("hang"))
    cluster.clock.advance(1.1)
    cluster.flush()
    [outcome] = result_of(pending)
    assert isinstance(outcome, DeadlineExceeded) and slow.hanging[0].called


def test_a_service_can_call_all_and_cancel_stops_everything(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    caller, one, two = Counter("caller"), Greeter(), Greeter()
    cluster.add_service(node, caller)
    cluster.add_service(node, one)
    cluster.add_service(node, two)
    assert sorted(result_of(cluster.run(caller.call_all("whoami")))) == ["caller"]
    pending = cluster.run(caller.call_all("hang"))
    assert one.hanging and two.hanging
    pending.cancel()
    cluster.flush()
    assert one.hanging[0].called and two.hanging[0].called
    assert not cluster.master.relay.gathers and not node.relay.gathers and len(cluster.master.pending) == 0


def test_a_queued_call_keeps_its_deadline_after_it_leaves_the_queue(cluster: Cluster) -> None:
    from nswarm.amp_commands import DeadlineExceeded

    node, _, _ = cluster.add_node("a")
    limited = Limited()
    cluster.add_service(node, limited)
    api, _ = cluster.add_api()
    cluster.run(api.call("slow", 1))
    cluster.run(api.call("slow", 2))
    queued = cluster.run(api.call_with_timeout(2.0, "slow", 3))
    cluster.clock.advance(1.5)
    limited.held[0].callback(None)
    cluster.flush()
    assert len(limited.held) == 3 and not queued.called  # sent on with 0.5 s left
    for _ in range(12):
        cluster.clock.advance(0.05)
        cluster.flush()
    assert failure_of(queued).check(DeadlineExceeded)


def test_cancelling_or_leaving_frees_a_queued_call(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    limited = Limited()
    cluster.add_service(node, limited)
    api, _ = cluster.add_api()
    other, _ = cluster.add_api()
    cluster.run(api.call("slow", 1))
    cluster.run(api.call("slow", 2))
    cancelled = cluster.run(api.call("slow", 3))
    cluster.run(other.call("slow", 4))
    assert cluster.master.parked_count == 2
    cancelled.cancel()
    cluster.flush()
    assert cluster.master.parked_count == 1
    disconnect(other, cluster)
    assert cluster.master.parked_count == 0
    limited.held[0].callback(None)
    cluster.flush()
    assert len(limited.held) == 2  # nothing left to send on


def test_a_grace_call_whose_method_appears_busy_waits_for_a_slot(cluster: Cluster) -> None:
    cluster.master.grace = 1.0
    node, _, _ = cluster.add_node("a")
    api, _ = cluster.add_api()
    calls = [cluster.run(api.call("slow", n)) for n in range(3)]
    limited = Limited()
    cluster.add_service(node, limited)
    assert len(limited.held) == 2 and cluster.master.parked_count == 1
    cluster.clock.advance(1.5)  # past the grace period, within the deadline
    cluster.flush()
    assert not calls[2].called
    limited.held[0].callback(None)
    cluster.flush()
    limited.held[2].callback(None)
    cluster.flush()
    assert result_of(calls[2]) == 2


def test_a_subscriber_that_stops_reading_loses_events_and_nobody_else_does(cluster: Cluster) -> None:
    node, _, _ = cluster.add_node("a")
    slow, fast = Counter("slow"), Counter("fast")
    _, slow_server = cluster.add_service(node, slow)
    cluster.add_service(node, fast)
    api, _ = cluster.add_api()
    # The slow service stops reading: bytes for it stay in its transport, and
    # the transport pauses its producer, as a full socket buffer makes it do.
    slow_pump = next(pump for pump in cluster.pumps if pump.server is slow_server)
    cluster.pumps.remove(slow_pump)
    slow_server.subscriber_buffer = 4096
    slow_server.pauseProducing()
    with capturedLogs() as logged:
        for n in range(20):
            result_of(cluster.run(api.publish("orders.created", [n, "x" * 1000])))
        assert [payload[0] for _, payload in fast.events_seen] == list(range(20))
        assert 0 < slow_server.backlog <= 4096
        kept = 20 - slow_server.events_dropped
        assert 0 < kept < 20
        warnings = [event for event in logged if "dropped" in event["log_format"]]
        assert [(w["count"], w["peer"]) for w in warnings] == [(1, "service 'Counter'")]  # once per interval
        cluster.clock.advance(10)
        result_of(cluster.run(api.publish("orders.created", [20, "x" * 1000])))
        warnings = [event for event in logged if "dropped" in event["log_format"]]
        assert [(w["count"], w["total"]) for w in warnings] == [(1, 1), (20 - kept, 21 - kept)]
        assert not any("xxx" in str(event) for event in logged)
    # It reads again: it gets what was kept for it, in order, and then new events.
    cluster.pumps.append(slow_pump)
    slow_server.resumeProducing()
    cluster.flush()
    assert [payload[0] for _, payload in slow.events_seen] == list(range(kept))
    result_of(cluster.run(api.publish("orders.created", [21, None])))
    assert slow.events_seen[-1] == ("orders.created", [21, None])
    assert fast.events_seen[-1] == ("orders.created", [21, None]) and len(fast.events_seen) == 22


def test_a_node_that_stops_reading_loses_events_at_the_master(cluster: Cluster) -> None:
    node_a, _, server_a = cluster.add_node("a")
    node_b, _, _ = cluster.add_node("b")
    slow, fast = Counter("slow"), Counter("fast")
    cluster.add_service(node_a, slow)
    cluster.add_service(node_b, fast)
    api, _ = cluster.add_api()
    server_a.subscriber_buffer = 0
    server_a.pauseProducing()
    result_of(cluster.run(api.publish("orders.created", 1)))
    assert server_a.events_dropped == 1 and slow.events_seen == []
    assert fast.events_seen == [("orders.created", 1)]
    server_a.resumeProducing()
    result_of(cluster.run(api.publish("orders.created", 2)))
    assert slow.events_seen == [("orders.created", 2)]
