"""
Tier 1: mistakes in a service fail where they are made, with a sentence
saying what to write instead; size errors read well; a result that cannot
be sent is logged by the service that produced it; and nswarm.testing's
in-memory cluster runs a service in a unit test.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from nswarm.amp_commands import HandlerFailed, PayloadTooLarge
from nswarm.api import connect
from nswarm.service import Service, implement, subscribe
from nswarm.service_runner import ServiceRunner
from nswarm.testing import MemoryCluster


def test_a_bare_subscribe_fails_at_class_definition() -> None:
    with pytest.raises(TypeError, match=r"@subscribe\('orders.created'\)"):

        class Forgetful(Service):
            @subscribe  # type: ignore[arg-type]
            def order_created(self, event: str, payload: Any) -> None:
                pass


@pytest.mark.parametrize("pattern", ["orders..x", "orders.>.x", " orders", ""])
def test_an_invalid_pattern_fails_at_class_definition(pattern: str) -> None:
    with pytest.raises(ValueError, match="subscri"):

        class Mistaken(Service):
            @subscribe(pattern)
            def handler(self, event: str, payload: Any) -> None:
                pass


def test_subscribe_needs_strings() -> None:
    with pytest.raises(TypeError, match="strings"):
        subscribe(7)  # type: ignore[arg-type]


def test_implement_with_a_name_that_is_not_a_string_fails() -> None:
    with pytest.raises(TypeError, match=r"@implement\('orders.create'\)"):

        class Numbered(Service):
            @implement(123)  # type: ignore[call-overload]
            def handler(self) -> None:
                pass


def test_implement_with_an_invalid_name_fails() -> None:
    with pytest.raises(ValueError, match="invalid method name"):
        implement(" padded ")(lambda self: None)


def test_a_str_auth_key_fails_at_the_call() -> None:
    with pytest.raises(TypeError, match="must be non-empty bytes, not str"):
        ServiceRunner(Service(), Clock(), "secret")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key.encode"):
        connect(Clock(), key="secret", ca="ca.pem")  # type: ignore[arg-type]


class Results(Service):
    @implement
    def huge(self) -> str:
        return "x" * 2000

    @implement
    def unencodable(self) -> object:
        return object()


def test_size_errors_read_as_sentences_and_an_unsendable_result_is_logged() -> None:
    cluster = MemoryCluster()
    node = cluster.add_node("node-1")
    proto = cluster.add_service(node, Results())
    proto.max_payload = 1000
    api = cluster.add_api()
    api.max_payload = 100
    with pytest.raises(PayloadTooLarge, match=r"^2,0\d\d bytes of call arguments, over the limit of 100 bytes"):
        cluster.result(api.call("huge", "y" * 2000))
    api.max_payload = 10_000
    with capturedLogs() as events:
        with pytest.raises(PayloadTooLarge, match="bytes of result, over the limit of 1,000 bytes"):
            cluster.result(api.call("huge"))
        with pytest.raises(HandlerFailed, match="InvalidResult"):
            cluster.result(api.call("unencodable"))
    logged = [event for event in events if "was not sent" in event.get("log_format", "")]
    assert [event["method"] for event in logged] == ["huge", "unencodable"]


class Greeter(Service):
    @implement
    def greet(self, name: str) -> str:
        return f"hello, {name}!"

    @subscribe("orders.*")
    def order(self, event: str, payload: Any) -> None:
        self.seen.append((event, payload))

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []


def test_the_in_memory_cluster_runs_a_service_for_a_unit_test() -> None:
    cluster = MemoryCluster()
    node = cluster.add_node("node-1")
    greeter = Greeter()
    cluster.add_service(node, greeter)
    api = cluster.add_api()
    assert cluster.result(api.call("greet", "world")) == "hello, world!"
    cluster.result(api.publish("orders.created", {"id": 7}))
    assert greeter.seen == [("orders.created", {"id": 7})]


class Handlers(Service):
    """Event handlers of every kind: plain, raising, a coroutine, one returning a Deferred that fails."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    @subscribe("orders.*")
    def plain(self, event: str, payload: Any) -> None:
        self.seen.append("plain")

    @subscribe("orders.*")
    def raising(self, event: str, payload: Any) -> None:
        raise ValueError("a broken handler")

    @subscribe("orders.*")
    async def coroutine(self, event: str, payload: Any) -> None:
        self.seen.append("coroutine")

    @subscribe("orders.*")
    def deferred(self, event: str, payload: Any) -> Any:
        from twisted.internet.defer import fail

        return fail(RuntimeError("a failed Deferred"))


def test_every_kind_of_event_handler_runs_and_the_failures_are_logged() -> None:
    cluster = MemoryCluster()
    node = cluster.add_node("node-1")
    service = Handlers()
    cluster.add_service(node, service)
    api = cluster.add_api()
    with capturedLogs() as events:
        cluster.result(api.publish("orders.created", {"id": 7}))
    assert sorted(service.seen) == ["coroutine", "plain"]
    failed = sorted(event["handler"] for event in events if event.get("log_failure") and "handler" in event)
    assert failed == ["deferred", "raising"]


def test_an_api_users_raising_handler_is_logged_and_the_others_still_run() -> None:
    cluster = MemoryCluster()
    cluster.add_node("node-1")
    publisher, subscriber = cluster.add_api(), cluster.add_api()
    seen: list[Any] = []

    def broken(event: str, payload: Any) -> None:
        raise ValueError("a broken handler")

    async def later(event: str, payload: Any) -> None:
        seen.append(payload)

    cluster.result(subscriber.subscribe("orders.*", broken))
    cluster.result(subscriber.subscribe("orders.*", later))
    with capturedLogs() as events:
        cluster.result(publisher.publish("orders.created", 1))
    assert seen == [1]
    assert [event["event"] for event in events if event.get("log_failure")] == ["orders.created"]
