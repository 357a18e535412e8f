"""
Tier 1: identities and permissions from an access file, checked where a
request enters: at the master for API users and nodes, at a node for its
services. A denied request gets PermissionDenied naming the identity, the
action and the name; the connection stays up.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.protocols import amp

from nswarm.access import ALL, Access, Identity, Rights, key_digest
from nswarm.amp_commands import Authenticate, AuthenticationFailed, Implement, PermissionDenied
from nswarm.api import APIClient
from nswarm.master.master import ApiServerProtocol
from nswarm.node.node import ServiceServerProtocol
from nswarm.relay.protocol import RelayFactory
from nswarm.service import Service, implement, subscribe
from nswarm.service_runner import ServiceRunner

from .support import Cluster, Proxy, certified, connect, detach, failure_of, result_of

ALICE_KEY = b"alice-key-0123456789abcdef"
GREETER_KEY = b"greeter-key-0123456789abcdef"


class Greeter(Service):
    @implement
    def greet(self, name: str) -> str:
        return f"hello, {name}!"

    @implement
    def shutdown(self) -> str:
        return "down"


class Greedy(Service):
    @implement
    def greet(self) -> str:
        return "mine"

    @subscribe(">")
    def everything(self, event: str, payload: Any) -> None:
        pass


def api_user(cluster: Cluster, access: Access, key: bytes, name: str | None = "alice") -> tuple[Any, Any]:
    factory = RelayFactory(ApiServerProtocol, cluster.master, cluster.clock, None, access=access)
    server = factory.buildProtocol(None)
    client = APIClient()
    cluster._connect(server, client)
    arguments: dict[str, Any] = {"key": key}
    if name is not None:
        arguments["name"] = name
    return client, server, client.request(Authenticate, **arguments)


def test_an_api_user_may_call_only_what_its_rights_allow_and_the_connection_stays() -> None:
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    access = Access({("api", "alice"): Identity("api", "alice", Rights(call=("greet",)), key_digest(ALICE_KEY))})
    client, server, authenticated = api_user(cluster, access, ALICE_KEY)
    result_of(cluster.run(authenticated))
    assert result_of(cluster.run(client.call("greet", "you"))) == "hello, you!"
    failure = failure_of(cluster.run(client.call("shutdown")))
    assert failure.check(PermissionDenied)
    assert "api user 'alice' may not call 'shutdown'" in str(failure.value) and "[api alice]" in str(failure.value)
    failure = failure_of(cluster.run(client.publish("orders.created", {})))
    assert failure.check(PermissionDenied) and "may not publish 'orders.created'" in str(failure.value)
    assert server.transport is not None and result_of(cluster.run(client.call("greet", "again")))


@pytest.mark.parametrize("key, name", [(b"not-alices-key-000000000", "alice"), (ALICE_KEY, "bob"), (ALICE_KEY, None)])
def test_an_api_user_needs_its_own_name_and_key(key: bytes, name: str | None) -> None:
    cluster = Cluster()
    access = Access({("api", "alice"): Identity("api", "alice", ALL, key_digest(ALICE_KEY))})
    client, server, authenticated = api_user(cluster, access, key, name)
    failure = failure_of(cluster.run(authenticated))
    assert failure.check(AuthenticationFailed) and "with this key in the access file" in str(failure.value)
    assert server.transport is None


def test_an_api_users_name_comes_from_its_certificate_when_it_presents_one() -> None:
    cluster = Cluster()
    access = Access({("api", "alice"): Identity("api", "alice", ALL, key_digest(ALICE_KEY))})
    factory = RelayFactory(ApiServerProtocol, cluster.master, cluster.clock, None, access=access)
    server = factory.buildProtocol(None)
    server.certificate_identity = lambda transport, role: "alice"  # type: ignore[method-assign]
    client = amp.AMP()
    cluster._connect(server, client)
    result_of(cluster.run(detach(client.callRemote(Authenticate, key=ALICE_KEY))))
    assert server.name == "alice"
    other = factory.buildProtocol(None)
    other.certificate_identity = lambda transport, role: "alice"  # type: ignore[method-assign]
    client = amp.AMP()
    cluster._connect(other, client)
    failure = failure_of(cluster.run(detach(client.callRemote(Authenticate, key=ALICE_KEY, name="bob"))))
    assert "certificate names 'alice', not 'bob'" in str(failure.value)


def service_on(cluster: Cluster, node: Any, service: Service, access: Access, key: bytes) -> Any:
    factory = RelayFactory(ServiceServerProtocol, node, cluster.clock, None, access=access)
    server = factory.buildProtocol(None)
    runner = ServiceRunner(service, cluster.clock, key)
    proto = runner.buildProtocol(None)
    cluster._connect(server, proto)
    return runner.register(Proxy(proto))


def test_a_service_may_implement_and_subscribe_only_what_its_node_allows() -> None:
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    narrow = Rights(implement=("greet", "shutdown"), subscribe=("orders.*",))
    access = Access(
        {
            ("service", "Greeter"): Identity("service", "Greeter", narrow, key_digest(GREETER_KEY)),
            ("service", "Greedy"): Identity("service", "Greedy", narrow, key_digest(GREETER_KEY)),
        }
    )
    result_of(cluster.run(service_on(cluster, node, Greeter(), access, GREETER_KEY)))
    refused = failure_of(cluster.run(service_on(cluster, node, Greedy(), access, GREETER_KEY)))
    assert refused.check(PermissionDenied) and "service 'Greedy' may not subscribe '>'" in str(refused.value)
    assert cluster.master.registry.events() == []  # nothing of it reached the master


def test_a_node_may_register_only_what_the_master_allows() -> None:
    from nswarm.master.master import NodeServerProtocol
    from nswarm.node.node import Node
    from nswarm.node.upstream import UpstreamProtocol

    from .support import NODE_KEY

    cluster = Cluster()
    access = Access({("node", "node-1"): Identity("node", "node-1", Rights(implement=("billing.*",)), None)})
    factory = RelayFactory(NodeServerProtocol, cluster.master, cluster.clock, NODE_KEY, access=access)
    server = certified(factory.buildProtocol(None), "node-1")
    node = Node("node-1", cluster.clock)
    upstream = UpstreamProtocol(node, cluster.clock)
    cluster._connect(server, upstream)
    result_of(cluster.run(node.upstream.authenticate(NODE_KEY)(Proxy(upstream))))
    allowed = cluster.run(upstream.request(Implement, methods=["billing.charge"]))
    result_of(allowed)
    denied = failure_of(cluster.run(upstream.request(Implement, methods=["greet"])))
    assert denied.check(PermissionDenied) and "node 'node-1' may not implement 'greet'" in str(denied.value)
    assert cluster.master.registry.methods() == ["billing.charge"]
    stranger = amp.AMP()
    pump = connect(certified(factory.buildProtocol(None), "node-9"), stranger)
    d = detach(stranger.callRemote(Authenticate, key=NODE_KEY))
    pump.flush()
    assert "node 'node-9' is not in the access file" in str(failure_of(d).value)


def test_reloading_the_access_file_narrows_rights_and_closes_removed_identities() -> None:
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    access = Access(
        {
            ("api", "alice"): Identity("api", "alice", ALL, key_digest(ALICE_KEY)),
            ("api", "bob"): Identity("api", "bob", ALL, key_digest(b"bob-key-0123456789abcdef")),
        }
    )
    factory = RelayFactory(ApiServerProtocol, cluster.master, cluster.clock, None, access=access)
    alice, bob = factory.buildProtocol(None), factory.buildProtocol(None)
    alice_client, bob_client = APIClient(), APIClient()
    cluster._connect(alice, alice_client)
    cluster._connect(bob, bob_client)
    result_of(cluster.run(alice_client.request(Authenticate, key=ALICE_KEY, name="alice")))
    result_of(cluster.run(bob_client.request(Authenticate, key=b"bob-key-0123456789abcdef", name="bob")))
    assert result_of(cluster.run(alice_client.call("shutdown"))) == "down"
    factory.reload(Access({("api", "alice"): Identity("api", "alice", Rights(call=("greet",)), key_digest(ALICE_KEY))}))
    cluster.flush()
    assert failure_of(cluster.run(alice_client.call("shutdown"))).check(PermissionDenied)
    assert bob.transport is None and alice.transport is not None
