"""
Tier 3: an API client outlives a master restart. A real cluster in processes
(L{nswarm.testing.local.LocalCluster}: master, node 'node-1', the example
greeter); the test is the API user. SIGKILL the master, make calls while it
is gone, start it again on its ports: the client reconnects by itself within
about a second of the api server listening again (by the master's log event
and the client's own), the calls that waited succeed, a call to a method
declared idempotent that was lost with the connection is sent again (one
that is not fails), and the subscription delivers again. Every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, globalLogPublisher

from nswarm.amp_commands import UpstreamUnavailable
from nswarm.api import APIClient, connect
from nswarm.config import read_client_config, read_secret_file
from nswarm.testing.local import LocalCluster, nswarm_event

from .conftest import GREETER, running_cluster

#: Bound, in seconds, on each process start and each wait.
START_TIMEOUT = 20.0
#: The deadline of the calls made while the master is down: the restart, the nodes' return, the startup window.
DEADLINE = 30.0
#: How long after the api server listens again the client must be back: its longest wait between attempts
#: (about 1 s), a connection and its authentication, on a busy machine.
BACK_WITHIN = 2.0


@pytest.fixture
def cluster(directory: Path) -> Iterator[LocalCluster]:
    """A master, node 'node-1' and the greeter service, all stopped afterwards."""
    with running_cluster(directory, START_TIMEOUT, (GREETER,)) as local:
        yield local


def bounded(d: Deferred[Any], timeout: float = START_TIMEOUT) -> Deferred[Any]:
    from twisted.internet import reactor

    return d.addTimeout(timeout, reactor)


def connect_api(cluster: LocalCluster, **kwargs: Any) -> Deferred[APIClient]:
    """A client of the cluster's master, from its client.conf but on the port the master listens on."""
    from twisted.internet import reactor

    config = read_client_config(str(cluster.client_config), "api")
    return connect(
        reactor,
        "localhost",
        cluster.api_port,
        key=read_secret_file(config["auth-key-file"]),
        ca=config["ca"],
        cert=config.get("cert"),
        cert_key=config.get("cert-key"),
        **kwargs,
    )


async def until(predicate: Any, what: str, bound: float = START_TIMEOUT) -> None:
    """Wait for C{predicate()} to hold, looking every 10 ms, at most C{bound} seconds."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + bound
    while not predicate():
        assert reactor.seconds() < deadline, f"timed out waiting for {what}"
        await deferLater(reactor, 0.01, lambda: None)


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_an_api_client_outlives_a_master_restart(cluster: LocalCluster) -> None:
    reconnected: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if event.get("nswarm_event") == "api_reconnected":
            reconnected.append(event)

    globalLogPublisher.addObserver(observe)
    client: APIClient = await bounded(connect_api(cluster, idempotent=["add"]))
    try:
        events: list[Any] = []
        arrived: Deferred[None] = Deferred()

        def order(event: str, payload: Any) -> None:
            events.append(payload)
            if not arrived.called:
                arrived.callback(None)

        await bounded(client.subscribe("orders.*", order))
        assert await bounded(client.call("greet", "before")) == "hello, before!"

        node_port, api_port = cluster.node_port, cluster.api_port
        assert cluster.master is not None
        assert cluster.kill(cluster.master) == -signal.SIGKILL
        # Sent before this process has read that the connection is gone: lost with it.
        lost_add = client.call_with_timeout(DEADLINE, "add", 2, 3)
        lost_greet = client.call_with_timeout(DEADLINE, "greet", "lost")
        await until(lambda: client.holding, "the client to notice the lost connection")
        waiting = [client.call_with_timeout(DEADLINE, "greet", f"during {n}") for n in range(5)]
        # The restarted master's startup window holds calls until the node is back (it may come after the client).
        master = cluster.start_master(node_port=node_port, api_port=api_port)

        answers = await bounded(gatherResults(waiting, consumeErrors=True), DEADLINE + 5)
        assert answers == [f"hello, during {n}!" for n in range(5)]
        assert await bounded(lost_add) == 5
        with pytest.raises(UpstreamUnavailable, match="may or may not have been carried out"):
            await bounded(lost_greet)
        (listening,) = master.events(nswarm_event("listening", server="api server"))
        assert reconnected, "the client did not log that it reconnected"
        back = reconnected[-1]["log_time"] - listening["log_time"]
        print(f"\nthe client was back {back:.3f} s after the restarted master's api server listened")
        assert back < BACK_WITHIN, f"the client came back {back:.3f} s after the master listened"

        handed_to = await bounded(client.publish("orders.created", {"id": 7}))
        await bounded(arrived)
        assert events == [{"id": 7}] and handed_to is not None and handed_to >= 1
    finally:
        globalLogPublisher.removeObserver(observe)
        await bounded(client.close(), 5.0)
