"""Tier 1: every call is stamped with who made it, over anything the client sent, and the handler can read it."""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

from nswarm.amp_commands import ARGS, ASK, CALL, CALLER, COMMAND, METHOD, RESULT
from nswarm.boxes import get_payload
from nswarm.codec import decode
from nswarm.service import Caller, Service, current_caller, implement

from .support import Cluster, raw_boxes, result_of, send_raw


class Whoami(Service):
    @implement
    def whoami(self) -> list[Any]:
        caller = current_caller()
        assert caller is not None
        return [caller.role, caller.name, caller.node]

    @implement
    async def whoami_async(self) -> list[Any]:
        caller = current_caller()
        assert caller is not None
        return [caller.role, caller.name, caller.node]


class Asker(Service):
    name = "asker"

    @implement
    def ask(self) -> Any:
        return self.call("whoami")


def test_an_api_users_call_reaches_the_handler_stamped_with_its_name() -> None:
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Whoami())
    api, server = cluster.add_api()
    server._stamp = b"api:alice"  # as authentication sets it for API user alice
    assert result_of(cluster.run(api.call("whoami"))) == ["api", "alice", None]
    assert result_of(cluster.run(api.call("whoami_async"))) == ["api", "alice", None]
    assert current_caller() is None  # only while a handler runs


def test_a_services_call_is_stamped_by_its_node_and_the_master() -> None:
    cluster = Cluster()
    node_a, _, _ = cluster.add_node("node-a")
    node_b, _, _ = cluster.add_node("node-b")
    cluster.add_service(node_a, Asker())
    cluster.add_service(node_b, Whoami())
    api, _ = cluster.add_api()
    assert result_of(cluster.run(api.call("ask"))) == ["service", "asker", "node-a"]


def test_a_stamp_sent_by_the_client_is_overwritten() -> None:
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Whoami())
    api, server = cluster.add_api()
    server._stamp = b"api:mallory"
    answers = raw_boxes(api)
    forged = amp.AmpBox({COMMAND: CALL, ASK: b"x1", METHOD: b"whoami", CALLER: b"api:admin"})
    forged[ARGS] = b'{"args":[],"kwargs":{}}'
    send_raw(api, forged)
    cluster.flush()
    assert decode(get_payload(answers[0], RESULT)) == ["api", "mallory", None]


def test_stamps_parse_into_callers() -> None:
    assert Caller.from_stamp(b"api:alice") == Caller("api", "alice")
    assert Caller.from_stamp(b"service:greeter@node-1") == Caller("service", "greeter", "node-1")
    assert Caller.from_stamp(None) is None
    assert str(Caller("service", "greeter", "node-1")) == "service 'greeter' on node 'node-1'"
