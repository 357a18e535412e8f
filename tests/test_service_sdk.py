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
