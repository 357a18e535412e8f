"""Tier 1: the cluster's status document, API users' subscriptions, and what the relays count."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from nswarm.access import Rights
from nswarm.amp_commands import NoSuchMethod, PermissionDenied
from nswarm.relay.stats import BOUNDS, Stats, percentile
from nswarm.service import Service, implement, subscribe

from .support import Cluster, disconnect, failure_of, result_of


class Greeter(Service):
    name = "greeter"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    @implement
    def greet(self, name: str) -> str:
        return f"hello, {name}!"

    @implement
    def fail(self) -> None:
        raise ValueError("no")

    @subscribe("orders.*")
    def order(self, event: str, payload: Any) -> None:
        self.seen.append((event, payload))


def test_the_status_shows_nodes_services_methods_and_events() -> None:
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    client, _ = cluster.add_api()
    for name in ("a", "b", "c"):
        assert result_of(cluster.run(client.call("greet", name))) == f"hello, {name}!"
    failure_of(cluster.run(client.call("fail")))
    failure_of(cluster.run(client.call("nobody.implements.this"))).trap(NoSuchMethod)
    result_of(cluster.run(client.publish("orders.created", {"id": 1})))
    status = result_of(cluster.run(client.status()))
    assert status["master"]["connections"] == {"node": 1, "api user": 1}
    [node_status] = status["nodes"]
    assert node_status["name"] == "node-1" and node_status["services"] == ["greeter"]
    [service] = status["services"]
    assert service["node"] == "node-1" and service["methods"] == ["fail", "greet"]
    assert service["subscriptions"] == ["orders.*"]
    assert service["calls_handled"] == 4 and service["errors"] == {"HANDLER_FAILED": 1}
    methods = {method["name"]: method for method in status["methods"]}
    assert methods["greet"]["calls"] == 3 and methods["greet"]["errors"] == {}
    assert methods["greet"]["implementers"] == ["node-1"] and methods["greet"]["p50_ms"] is not None
    assert methods["fail"]["errors"] == {"HANDLER_FAILED": 1}
    assert methods["_other"]["errors"] == {"NO_SUCH_METHOD": 1}  # names nobody implements fold into one
    assert status["events"]["published"] == 1 and status["events"]["nodes"]["delivered"] == 1
    assert status["events"]["patterns"] == [{"pattern": "orders.*", "subscribers": 1}]


def test_the_status_needs_the_admin_right() -> None:
    cluster = Cluster()
    client, server = cluster.add_api()
    server.rights = Rights(call=(">",))
    error = failure_of(cluster.run(client.status())).trap(PermissionDenied)
    assert error is PermissionDenied
    assert "admin = yes" in str(failure_of(cluster.run(client.status())).value)


def test_an_api_user_subscribes_and_gets_the_events_that_match() -> None:
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    watcher, _ = cluster.add_api()
    publisher, _ = cluster.add_api()
    seen: list[tuple[str, Any]] = []
    subscription = result_of(
        cluster.run(watcher.subscribe("orders.*", lambda event, payload: seen.append((event, payload))))
    )
    result_of(cluster.run(publisher.publish("orders.created", {"id": 7})))
    result_of(cluster.run(publisher.publish("users.created", {"id": 8})))
    assert seen == [("orders.created", {"id": 7})]
    result_of(cluster.run(subscription.cancel()))
    result_of(cluster.run(publisher.publish("orders.created", {"id": 9})))
    assert seen == [("orders.created", {"id": 7})]
    assert cluster.master.registry.subscriber_counts() == {"orders.*": 1}  # the service's only


def test_an_api_user_may_subscribe_only_where_its_rights_allow_and_never_implement() -> None:
    cluster = Cluster()
    client, server = cluster.add_api()
    server.rights = Rights(subscribe=("orders.>",))
    failure_of(cluster.run(client.subscribe("users.*", lambda *_: None))).trap(PermissionDenied)
    assert cluster.master.registry.subscriber_counts() == {}
    result_of(cluster.run(client.subscribe("orders.new", lambda *_: None)))
    from nswarm.amp_commands import Implement

    failure_of(cluster.run(client.request(Implement, methods=["steal"]))).trap(PermissionDenied)
    assert not cluster.master.registry.implemented("steal")


def test_a_subscribed_api_user_that_leaves_is_forgotten() -> None:
    cluster = Cluster()
    client, _ = cluster.add_api()
    result_of(cluster.run(client.subscribe("orders.*", lambda *_: None)))
    disconnect(client, cluster)
    assert cluster.master.registry.subscriber_counts() == {}


class Callee:
    calls_handled = 0
    call_errors = None


def test_latency_percentiles_over_the_last_minute() -> None:
    clock = Clock()
    stats, callee = Stats(clock), Callee()
    clock.advance(100.0)
    for index in range(100):
        stats.answered("m", callee, None, clock.seconds() - (0.001 if index < 98 else 0.5))
    stats.answered("m", callee, b"HANDLER_FAILED", clock.seconds())
    method = stats.methods["m"]
    window = method.last_minute(clock.seconds())
    p50, p99 = percentile(window, 0.5), percentile(window, 0.99)
    assert p50 is not None and 0.00079 < p50 <= 0.00126  # within the bucket of 1 ms (a float: just above, or not)
    assert p99 is not None and 0.39 < p99 <= 0.51
    assert percentile(method.last_minute(161.0), 0.5) is None  # a minute later, the window is empty
    assert sum(method.histogram) == 101 and method.outcomes == {"ok": 100, "HANDLER_FAILED": 1}
    assert (callee.calls_handled, callee.call_errors) == (101, {"HANDLER_FAILED": 1})
    assert len(BOUNDS) == 71
    untimed = Stats()  # a node's: outcomes, no latencies
    untimed.answered("m", callee, None, 0.0)
    assert untimed.methods["m"].ok == 1 and sum(untimed.methods["m"].histogram) == 0


def test_methods_past_the_cap_fold_into_other() -> None:
    stats = Stats(max_methods=2)
    for name in ("a", "b", "c", "d"):
        stats.failed(name, b"NO_SUCH_METHOD")
    assert sorted(stats.methods) == ["_other", "a", "b"]
    assert stats.methods["_other"].outcomes == {"NO_SUCH_METHOD": 2}
