"""
A unit test of the example greeter service (examples/greeter.py), run in
memory by nswarm.testing: a master, a node, the service and an API user
connected without sockets, on a frozen clock. Run it with

    pytest examples/test_greeter.py
"""

import pytest
from greeter import Greeter

from nswarm.amp_commands import HandlerFailed, NoSuchMethod
from nswarm.testing import MemoryCluster


@pytest.fixture
def cluster() -> MemoryCluster:
    cluster = MemoryCluster()
    node = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    return cluster


def test_greet_answers_through_the_whole_cluster(cluster: MemoryCluster) -> None:
    api = cluster.add_api()
    assert cluster.result(api.call("greet", "world")) == "hello, world!"
    assert cluster.result(api.call("add", 2, 3)) == 5


def test_errors_reach_the_caller_typed(cluster: MemoryCluster) -> None:
    api = cluster.add_api()
    with pytest.raises(HandlerFailed) as raised:
        cluster.result(api.call("fail", "out of coffee"))
    assert (raised.value.remote_type, raised.value.remote_message) == ("ValueError", "out of coffee")
    with pytest.raises(NoSuchMethod):
        cluster.result(api.call("no.such.method"))


def test_a_call_that_hangs_meets_its_deadline(cluster: MemoryCluster) -> None:
    from nswarm.amp_commands import DeadlineExceeded

    api = cluster.add_api()
    pending = api.call_with_timeout(2.0, "hang")
    cluster.advance(2.1)  # time moves only when the test says so
    with pytest.raises(DeadlineExceeded):
        cluster.result(pending)
