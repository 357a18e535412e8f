"""
Tier 3 chaos (issue 4): a real cluster in processes (master, two nodes, the
chaos service tests/chaos_service.py on each) through
L{nswarm.testing.local.LocalCluster}, with the test as the API user.

- Under a load of concurrent calls, SIGKILL one node, or one service: every
  call ends with a result or a typed L{NswarmError} before its deadline,
  calls to the idempotent method all succeed (retried on the other node),
  calls to its non-idempotent twin succeed or fail with L{ImplementerLost}.
  Two "parked" probe calls, known to be running in the victim when it is
  killed (the service logs an event as it parks one), make the retry and the
  loss deterministic rather than likely.
- SIGKILL the master and start it again on the same ports: the nodes are
  registered again within 2 s of it listening (by the master's own log
  events), and calls succeed.

Every wait is for the thing itself (a log event of a process, a call's
answer), with a bound; every process is stopped, and checked gone, even on
failure.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, race

from nswarm.amp_commands import ImplementerLost, NswarmError
from nswarm.api import APIClient
from nswarm.testing.local import LocalCluster, Process, alive_pids, event_matching, nswarm_event

T = TypeVar("T")

CHAOS_SERVICE = Path(__file__).resolve().parent / "chaos_service.py"

#: Bound, in seconds, on each process start and each log wait.
START_TIMEOUT = 20.0
#: The deadline every call of the load is made with (call_with_timeout).
DEADLINE = 5.0
#: How far past its deadline a call may end: local scheduling, not nswarm's
#: sweep (the relays check deadlines every few tens of milliseconds).
MARGIN = 0.5
#: Calls in the load (at least: the load goes on until AFTER_KILL more calls
#: have been made after the kill), and how many are outstanding at a time.
LOAD_CALLS = 200
LOAD_WIDTH = 20
AFTER_KILL = 40
#: Calls completed before the probes are placed and the victim killed.
BEFORE_KILL = 20
#: Tries at landing the non-idempotent probe on the victim.
PROBE_TRIES = 10
#: The issue's bound on re-registration after a master restart.
REREGISTER_BOUND = 2.0

IDEMPOTENT, PLAIN = "chaos.idempotent", "chaos.plain"


@pytest.fixture
def cluster(directory: Path) -> Iterator[LocalCluster]:
    """
    A master, nodes 'node-1' and 'node-2', the chaos service on each
    ('chaos-1', 'chaos-2'); all stopped afterwards.
    """
    local = LocalCluster(directory, timeout=START_TIMEOUT)
    try:
        with local:
            local.init()
            local.start_master()
            for number in (1, 2):
                local.start_node(f"node-{number}")
                local.start_service(CHAOS_SERVICE, node=f"node-{number}", name=f"chaos-{number}")
            yield local
    finally:
        for process in local.processes:  # pytest shows this output when a test fails
            print(f"{process}, exit status {process.returncode}:\n{process.tail()}\n")
        left = alive_pids(local.pids())
        assert not left, f"processes still running after stop(): {left}"


def services(cluster: LocalCluster) -> dict[str, Process]:
    """The chaos services by the name of their node."""
    return {f"node-{number}": process_named(cluster, f"chaos-{number}") for number in (1, 2)}


def process_named(cluster: LocalCluster, name: str) -> Process:
    (process,) = [process for process in cluster.processes if process.name == name]
    return process


def bounded(d: Deferred[T], timeout: float = DEADLINE + MARGIN) -> Deferred[T]:
    """C{d}, failing with TimeoutError (and cancelled) if it has not fired within C{timeout} seconds."""
    from twisted.internet import reactor

    return d.addTimeout(timeout, reactor)


async def api_client(cluster: LocalCluster) -> APIClient:
    from twisted.internet import reactor

    client: APIClient = await bounded(cluster.connect_api(reactor), START_TIMEOUT)
    return client


async def close(client: APIClient) -> None:
    await bounded(client.close(), 5.0)


@dataclass
class Outcome:
    """How one call ended: C{value} or C{error}, after C{elapsed} seconds."""

    method: str
    argument: Any
    started: float
    elapsed: float
    value: Any = None
    error: NswarmError | None = None


async def timed_call(client: APIClient, method: str, argument: Any) -> Outcome:
    """
    Call C{method} with the load's deadline; record the outcome. Anything but
    a result or a typed nswarm error (a hang past the deadline shows up as
    TimeoutError) propagates and fails the test.
    """
    started = time.monotonic()
    try:
        value = await bounded(client.call_with_timeout(DEADLINE, method, argument))
    except NswarmError as error:
        return Outcome(method, argument, started, time.monotonic() - started, error=error)
    return Outcome(method, argument, started, time.monotonic() - started, value=value)


class Load:
    """
    LOAD_WIDTH workers calling IDEMPOTENT and PLAIN in turn until at least
    LOAD_CALLS calls were made and, once L{killed} is set, AFTER_KILL more.
    L{going} fires once BEFORE_KILL calls have ended.
    """

    def __init__(self, client: APIClient) -> None:
        self.client = client
        self.going: Deferred[None] = Deferred()
        self.outcomes: list[Outcome] = []
        self.issued = 0
        self.killed_at: float | None = None
        self.issued_at_kill = 0

    def killed(self) -> None:
        self.killed_at = time.monotonic()
        self.issued_at_kill = self.issued

    def _more(self) -> bool:
        if self.killed_at is None:
            return True
        return self.issued < max(LOAD_CALLS, self.issued_at_kill + AFTER_KILL)

    async def _worker(self) -> None:
        while self._more():
            index = self.issued
            self.issued += 1
            method = IDEMPOTENT if index % 2 == 0 else PLAIN
            self.outcomes.append(await timed_call(self.client, method, index))
            if len(self.outcomes) >= BEFORE_KILL and not self.going.called:
                self.going.callback(None)

    def run(self) -> Deferred[Any]:
        return gatherResults([ensureDeferred(self._worker()) for _ in range(LOAD_WIDTH)], consumeErrors=True)


async def parked_in(cluster: LocalCluster, tag: str, timeout: float = 5.0) -> Process:
    """The chaos service that logs, within C{timeout} seconds, that call C{tag} is parked in it."""
    from twisted.internet import reactor

    candidates = list(services(cluster).values())
    parked = event_matching(chaos="parked", tag=tag)
    index, _ = await race([process.when(reactor, parked, timeout, f"that {tag} is parked") for process in candidates])
    return candidates[index]


async def chaos_under_load(cluster: LocalCluster, victim_of: Callable[[Process], Process]) -> None:
    """
    The chaos scenario: load; once it runs, park an idempotent and a
    non-idempotent probe in the same service; SIGKILL C{victim_of(service)}
    (the service itself, or its node); check every outcome.
    """
    client = await api_client(cluster)
    try:
        load = Load(client)
        running = load.run()
        await bounded(load.going, 10.0)

        probe_idempotent = ensureDeferred(timed_call(client, "chaos.park_idempotent", "probe-i"))
        home = await parked_in(cluster, "probe-i")
        probe_plain = None
        others = []
        for attempt in range(PROBE_TRIES):
            tag = f"probe-p{attempt}"
            probe = ensureDeferred(timed_call(client, "chaos.park_plain", tag))
            where = await parked_in(cluster, tag)
            if where is home:
                probe_plain = probe
                break
            others.append(probe)
        assert probe_plain is not None, f"no non-idempotent probe landed in {home} in {PROBE_TRIES} tries"

        (survivor,) = [process for process in services(cluster).values() if process is not home]
        victim = victim_of(home)
        in_flight = load.issued - len(load.outcomes)
        load.killed()
        assert cluster.kill(victim) == -signal.SIGKILL
        print(f"\nkilled {victim} with {in_flight} load calls in flight, {len(load.outcomes)} done")

        await running
        probe_i = await probe_idempotent
        probe_p = await probe_plain
        other_probes = [await probe for probe in others]
    finally:
        await close(client)

    outcomes = load.outcomes + [probe_i, probe_p, *other_probes]
    slowest = max(outcome.elapsed for outcome in outcomes)
    errors = [outcome for outcome in load.outcomes if outcome.error is not None]
    print(
        f"{len(load.outcomes)} load calls ({load.issued_at_kill} issued before the kill), "
        f"slowest call {slowest:.3f}s, errors (method, error, started how long after the kill): "
        f"{[(o.method, type(o.error).__name__, round(o.started - (load.killed_at or 0), 3)) for o in errors]}"
    )

    # Every call ended before its deadline (timed_call let no hang or untyped error through).
    late = [outcome for outcome in outcomes if outcome.elapsed >= DEADLINE + MARGIN]
    assert not late, f"calls ended past their deadline: {late}"
    assert load.issued >= LOAD_CALLS and load.issued >= load.issued_at_kill + AFTER_KILL
    assert 0 < load.issued_at_kill < load.issued, "the kill did not happen mid-load"

    # Before the kill the load ran on both services.
    before = {
        outcome.value[1] for outcome in load.outcomes if outcome.error is None and outcome.started < load.killed_at
    }
    assert before == {home.pid, survivor.pid}

    # Idempotent calls all succeeded; the non-idempotent ones succeeded or lost their implementer.
    for outcome in load.outcomes:
        if outcome.method == IDEMPOTENT:
            assert outcome.error is None, f"idempotent call {outcome.argument} failed: {outcome.error!r}"
            assert outcome.value[0] == outcome.argument
        else:
            assert outcome.error is None or isinstance(outcome.error, ImplementerLost), (
                f"non-idempotent call {outcome.argument} failed with {outcome.error!r}"
            )
    # Calls started once the victim was gone ran in the survivor.
    after = {
        outcome.value[1] for outcome in load.outcomes if outcome.error is None and outcome.started > load.killed_at
    }
    assert after == {survivor.pid}

    # The probes parked in the killed service: the idempotent one was retried
    # in the survivor, the other failed with ImplementerLost.
    assert probe_i.error is None, f"the idempotent probe failed: {probe_i.error!r}"
    assert probe_i.value == ["probe-i", survivor.pid]
    assert isinstance(probe_p.error, ImplementerLost), f"the non-idempotent probe ended with {probe_p!r}"
    for outcome in other_probes:
        assert outcome.error is None and outcome.value == [outcome.argument, survivor.pid]


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_sigkill_of_a_node_under_load(cluster: LocalCluster) -> None:
    """SIGKILL the node of the service running the probes, mid-load."""
    nodes = {service.pid: name for name, service in services(cluster).items()}
    await chaos_under_load(cluster, lambda service: cluster.nodes[nodes[service.pid]])


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_sigkill_of_a_service_under_load(cluster: LocalCluster) -> None:
    """SIGKILL the service running the probes, mid-load."""
    await chaos_under_load(cluster, lambda service: service)


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_master_restart_nodes_register_again_within_2s(cluster: LocalCluster) -> None:
    """
    SIGKILL the master, start it again on its ports: within REREGISTER_BOUND
    seconds of it listening (by the times in its own log events), both nodes
    have registered their methods with it again; then a new API connection
    reaches both nodes' services, and calls succeed.
    """
    from twisted.internet import reactor

    chaos = {service.pid for service in services(cluster).values()}
    client = await api_client(cluster)
    try:
        assert (await bounded(client.call_with_timeout(DEADLINE, IDEMPOTENT, 0)))[0] == 0
    finally:
        await close(client)

    node_port, api_port = cluster.node_port, cluster.api_port
    assert cluster.master is not None
    killed = time.monotonic()
    assert cluster.kill(cluster.master) == -signal.SIGKILL
    master = cluster.start_master(node_port=node_port, api_port=api_port)
    up = time.monotonic()
    assert (cluster.node_port, cluster.api_port) == (node_port, api_port)

    registered = [
        master.when(reactor, nswarm_event("registration", role="node", name=name, action="implements"), 10.0)
        for name in cluster.nodes
    ]
    registrations = await gatherResults(registered)
    (listening,) = master.events(nswarm_event("listening", server="node server"))
    again = max(event["log_time"] for event in registrations) - listening["log_time"]
    print(
        f"\nmaster down for {up - killed:.3f}s (kill to listening); both nodes registered again "
        f"{again:.3f}s after it listened (by the times in its log)"
    )

    client = await api_client(cluster)
    try:
        outcomes = await gatherResults([ensureDeferred(timed_call(client, IDEMPOTENT, i)) for i in range(LOAD_WIDTH)])
        assert [outcome.error for outcome in outcomes] == [None] * LOAD_WIDTH
        assert {outcome.value[1] for outcome in outcomes} == chaos
        assert again < REREGISTER_BOUND, f"nodes registered again {again:.3f}s after the master came back"
    finally:
        await close(client)
