"""
Tier 3: a real cluster in processes. C{twistd -n nswarm-master}, C{twistd -n
nswarm-node} and the example greeter service (examples/greeter.py) run as
child processes through L{nswarm.testing.local.LocalCluster}; the test itself
is the API user, and learns what the greeter did from its JSON log events.
Every wait is bounded, and every process is stopped (and checked gone) even
when a test fails.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from nswarm.amp_commands import HandlerFailed, ImplementerLost, NoSuchMethod
from nswarm.api import APIClient
from nswarm.testing.local import LocalCluster, Process, event_matching

from .conftest import GREETER, running_cluster

#: Bound, in seconds, on each process start and each log wait.
START_TIMEOUT = 20.0
#: Bound, in seconds, on each API call and publish.
CALL_TIMEOUT = 10.0


@pytest.fixture
def cluster(directory: Path) -> Iterator[LocalCluster]:
    """A master, node 'node-1' and the greeter service, all stopped afterwards."""
    with running_cluster(directory, START_TIMEOUT, (GREETER,)) as local:
        yield local


def greeter(cluster: LocalCluster) -> Process:
    (process,) = [process for process in cluster.processes if process.kind == "service"]
    return process


def bounded(d: Deferred[Any]) -> Deferred[Any]:
    """C{d}, failing with TimeoutError (the call cancelled) if it has not fired within CALL_TIMEOUT."""
    from twisted.internet import reactor

    return d.addTimeout(CALL_TIMEOUT, reactor)


async def api_client(cluster: LocalCluster) -> APIClient:
    from twisted.internet import reactor

    client: APIClient = await bounded(cluster.connect_api(reactor))
    return client


@pytest_twisted.ensureDeferred
async def test_calls_reach_the_service_and_answer_with_results_or_typed_errors(cluster: LocalCluster) -> None:
    """API user -> master -> node -> greeter and back: results, NoSuchMethod, HandlerFailed."""
    client = await api_client(cluster)
    try:
        assert await bounded(client.call("greet", "world")) == "hello, world!"
        assert await bounded(client.call("add", 2, b=3)) == 5
        with pytest.raises(NoSuchMethod):
            await bounded(client.call("no.such.method"))
        with pytest.raises(HandlerFailed) as raised:
            await bounded(client.call("fail", "out of coffee"))
        assert (raised.value.remote_type, raised.value.remote_message) == ("ValueError", "out of coffee")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_published_event_reaches_the_subscribed_service(cluster: LocalCluster) -> None:
    """An event published by the API user is delivered to the greeter, which subscribes to it."""
    from twisted.internet import reactor

    service = greeter(cluster)
    client = await api_client(cluster)
    try:
        await bounded(client.publish("orders.created", {"id": 7, "item": "tea"}))
        got = await service.when(reactor, event_matching(greeter="event"), timeout=CALL_TIMEOUT)
        assert (got["event"], got["order"]) == ("orders.created", {"id": 7, "item": "tea"})
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_killing_the_service_fails_its_pending_call_with_implementer_lost(cluster: LocalCluster) -> None:
    """
    A call waiting in a service that is SIGKILLed ends at once with the typed
    ImplementerLost, not a hang; the next call finds no implementer.
    """
    from twisted.internet import reactor

    service = greeter(cluster)
    client = await api_client(cluster)
    try:
        pending = bounded(client.call("hang"))
        await service.when(reactor, event_matching(greeter="hanging"), timeout=CALL_TIMEOUT)
        assert cluster.kill(service) == -signal.SIGKILL
        with pytest.raises(ImplementerLost):
            await pending
        with pytest.raises(NoSuchMethod):
            await bounded(client.call("greet", "anybody"))
    finally:
        await client.close()
