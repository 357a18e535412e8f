"""
Tier 1 (issue 12): outlier ejection of a silent peer, the master's startup
window and its drain on stop, and the Publish answer's count; a cluster in
memory on a Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from nswarm import defaults
from nswarm.amp_commands import DeadlineExceeded, Draining, NoSuchMethod
from nswarm.master.master import Master
from nswarm.service import Service, implement, subscribe

from .support import Cluster, disconnect, failure_of, result_of


class Echo(Service):
    name = "echo"

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[str] = []
        self.held: list[Deferred[Any]] = []
        self.events: list[Any] = []

    @implement(idempotent=True)
    def echo(self, text: str) -> str:
        self.ran.append(text)
        return text

    @implement
    def once(self, text: str) -> str:
        self.ran.append(text)
        return text

    @implement
    def hold(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append(d)
        return d

    @subscribe("orders.*")
    def order(self, event: str, payload: Any) -> None:
        self.events.append(payload)


def advance(cluster: Cluster, seconds: float, step: float = defaults.SWEEP_INTERVAL) -> None:
    """Let C{seconds} pass on the cluster's clock, in steps, moving bytes after each."""
    for _ in range(round(seconds / step)):
        cluster.clock.advance(step)
        cluster.flush()


def two_nodes(cluster: Cluster) -> tuple[Echo, Echo]:
    first, second = Echo(), Echo()
    node1, _, _ = cluster.add_node("node-1")
    cluster.add_service(node1, first)
    node2, _, _ = cluster.add_node("node-2")
    cluster.add_service(node2, second)
    return first, second


def test_a_silent_node_is_ejected_within_two_seconds_and_its_idempotent_calls_go_elsewhere() -> None:
    cluster = Cluster()
    first, second = two_nodes(cluster)
    client, _ = cluster.add_api()
    silenced = cluster.pumps.pop(0)  # node-1's connection to the master: SIGSTOPped, as it were
    calls = [client.call_with_timeout(5.0, "echo", f"c{n}") for n in range(6)]
    once = client.call_with_timeout(5.0, "once", "x")
    cluster.flush()
    with capturedLogs() as logged:
        advance(cluster, 1.2)
    [ejected] = [event for event in logged if event.get("nswarm_event") == "ejected"]
    assert ejected["name"] == "node-1"
    # The idempotent calls that were waiting on node-1 ran on node-2; new ones go there too.
    results = [result_of(d) for d in calls]
    assert results == [f"c{n}" for n in range(6)]
    assert result_of(cluster.run(client.call("echo", "after"))) == "after"
    assert "after" in second.ran and first.ran == []
    # The non-idempotent one waits on node-1 (it may run there): it ends at its deadline, not twice.
    assert not once.called
    cluster.pumps.insert(0, silenced)  # node-1 resumes: it answers, and is back in balancing
    with capturedLogs() as logged:
        advance(cluster, 0.2)
    assert [event["name"] for event in logged if event.get("nswarm_event") == "reinstated"] == ["node-1"]
    assert result_of(once) == "x" and (first.ran + second.ran).count("x") == 1


def ejected_node_1(cluster: Cluster) -> tuple[Echo, Echo, Any, Any]:
    """Two nodes, node-1 silenced with a call pending on it and ejected; its service, the other, its pump, server."""
    first, second = Echo(), Echo()
    node1, _, server1 = cluster.add_node("node-1")
    cluster.add_service(node1, first)
    node2, _, _ = cluster.add_node("node-2")
    cluster.add_service(node2, second)
    client, _ = cluster.add_api()
    silenced = cluster.pumps.pop(0)  # node-1's connection to the master
    client.call_with_timeout(10.0, "hold")
    cluster.flush()
    advance(cluster, 1.2)
    assert list(cluster.master.relay.ejection.ejected) == [server1]
    for number in range(3):
        client.publish("orders.created", number)
    cluster.flush()
    assert second.events == [0, 1, 2] and first.events == []
    return first, second, silenced, server1


def test_events_for_an_ejected_node_are_held_and_written_in_order_when_it_answers_again() -> None:
    cluster = Cluster()
    first, _, silenced, server1 = ejected_node_1(cluster)
    assert server1.events_waiting == 3  # held: none sits in its socket (only the call and the probe do)
    assert not [data for data in server1.transport.stream if b"orders.created" in data]
    cluster.pumps.insert(0, silenced)
    advance(cluster, 0.2)
    assert first.events == [0, 1, 2]
    assert cluster.master.relay.stats.dropped == 0 and not server1.paused


def test_events_held_for_an_ejected_node_whose_connection_closes_are_counted_as_dropped() -> None:
    cluster = Cluster()
    first, _, silenced, server1 = ejected_node_1(cluster)
    cluster.pumps.insert(0, silenced)
    with capturedLogs() as logged:
        disconnect(server1, cluster)
    assert first.events == []
    assert cluster.master.relay.stats.dropped == 3 and server1.events_dropped == 3
    [dropped] = [event for event in logged if event.get("nswarm_event") == "events_dropped"]
    assert (dropped["name"], dropped["count"], dropped["total"]) == ("node-1", 3, 3)


def test_a_busy_peer_that_answers_its_probe_is_not_ejected() -> None:
    cluster = Cluster()
    services = two_nodes(cluster)
    client, _ = cluster.add_api()
    holds = [client.call_with_timeout(10.0, "hold") for _ in range(2)]
    cluster.flush()
    assert [len(service.held) for service in services] == [1, 1]
    with capturedLogs() as logged:
        advance(cluster, 3.0)  # nothing but the answers to their probes comes from either node
    assert not [event for event in logged if event.get("nswarm_event") == "ejected"]
    assert cluster.master.relay.ejection.ejected == {}
    for service in services:
        service.held.pop().callback("done")
    cluster.flush()
    assert [result_of(d) for d in holds] == ["done", "done"]


def test_in_the_startup_window_calls_wait_for_their_method_and_events_for_the_window() -> None:
    cluster = Cluster()
    cluster.master = Master(cluster.clock, startup_window=3.0)
    client, _ = cluster.add_api()
    waiting = client.call_with_timeout(10.0, "echo", "early")
    published = client.publish("orders.created", {"id": 1})
    cluster.flush()
    assert not waiting.called and not published.called
    service = Echo()
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, service)
    assert result_of(waiting) == "early"  # sent as soon as its method was registered
    assert not published.called
    advance(cluster, 3.1)
    assert result_of(published) == 1 and service.events == [{"id": 1}]  # handed to node-1, once the window ended
    late = client.call_with_timeout(10.0, "nobody")
    cluster.flush()
    failure_of(late).trap(NoSuchMethod)  # after the window, at once


def test_a_call_to_a_method_nobody_registers_fails_when_the_window_ends() -> None:
    cluster = Cluster()
    cluster.master = Master(cluster.clock, startup_window=2.0)
    client, _ = cluster.add_api()
    waiting = client.call_with_timeout(10.0, "nobody")
    short = client.call_with_timeout(0.5, "nobody")
    cluster.flush()
    advance(cluster, 1.0)
    failure_of(short).trap(DeadlineExceeded)
    advance(cluster, 1.0)
    failure_of(waiting).trap(NoSuchMethod)


def test_the_publish_answer_says_how_many_it_was_handed_to() -> None:
    cluster = Cluster()
    two_nodes(cluster)
    client, _ = cluster.add_api()
    assert result_of(cluster.run(client.publish("orders.created", 1))) == 2
    assert result_of(cluster.run(client.publish("nobody.listens", 1))) == 0


def test_a_draining_master_takes_no_new_calls_and_waits_for_those_in_flight() -> None:
    cluster = Cluster()
    first, second = two_nodes(cluster)
    client, _ = cluster.add_api()
    held = [client.call_with_timeout(20.0, "hold") for _ in range(2)]
    cluster.flush()
    drained = cluster.master.start_draining(10.0)
    refused = client.call("echo", "new")
    cluster.flush()
    error = failure_of(refused).value
    assert isinstance(error, Draining) and "reconnect" in str(error)
    assert not drained.called
    for service in (first, second):
        for d in service.held:
            d.callback("finished")
    cluster.flush()
    assert [result_of(d) for d in held] == ["finished", "finished"]
    assert not drained.called  # the calls already on their way get their Draining answer for a little longer
    late = client.call("echo", "late")
    advance(cluster, defaults.DRAIN_QUIET)
    assert isinstance(failure_of(late).value, Draining)
    assert result_of(drained) is None


def test_a_drain_with_nothing_in_flight_still_refuses_for_its_quiet_period() -> None:
    cluster = Cluster()
    two_nodes(cluster)
    drained = cluster.master.start_draining(10.0)
    assert not drained.called
    advance(cluster, defaults.DRAIN_QUIET)
    assert result_of(drained) is None


def test_a_drain_gives_up_after_its_timeout() -> None:
    cluster = Cluster()
    two_nodes(cluster)
    client, _ = cluster.add_api()
    client.call_with_timeout(60.0, "hold").addErrback(lambda _: None)
    cluster.flush()
    drained = cluster.master.start_draining(2.0)
    advance(cluster, 1.0)
    assert not drained.called
    advance(cluster, 1.1)
    assert result_of(drained) is None


def test_an_event_published_as_the_window_ends_does_not_pass_those_held() -> None:
    """The window is over, but the timer that hands the held events on has not run yet: a new event waits behind."""
    cluster = Cluster()
    cluster.master = Master(cluster.clock, startup_window=1.0)
    service = Echo()
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, service)
    client, _ = cluster.add_api()
    first = client.publish("orders.created", 1)
    cluster.flush()
    cluster.master.opens_at = cluster.clock.seconds()  # the window's end, as the reactor reads a box first
    second = client.publish("orders.created", 2)
    cluster.flush()
    assert service.events == [] and not first.called and not second.called
    advance(cluster, 1.1)
    assert service.events == [1, 2] and result_of(first) == 1 and result_of(second) == 1


def test_a_call_to_a_stopped_master_fails_at_its_deadline_by_the_clients_own_sweep() -> None:
    cluster = Cluster()
    two_nodes(cluster)
    client, _ = cluster.add_api()
    client.start_heartbeats(cluster.clock, defaults.HEARTBEAT)
    assert result_of(cluster.run(client.call_with_timeout(1.0, "echo", "up"))) == "up"
    cluster.pumps.pop()  # the API user's connection: the master is SIGSTOPped, as it were
    stuck = client.call_with_timeout(1.0, "echo", "stuck")
    advance(cluster, 1.0)
    assert not stuck.called  # the master's own DeadlineExceeded could still come
    advance(cluster, 0.1)
    error = failure_of(stuck).value
    assert isinstance(error, DeadlineExceeded) and "this client's own check" in str(error)
    client.stop_heartbeats()


def test_idempotent_calls_on_a_silent_service_with_no_other_on_its_node_run_on_another_node() -> None:
    cluster = Cluster()
    first, second = two_nodes(cluster)
    client, _ = cluster.add_api()
    # The pumps: node-1 upstream, node-1's service, node-2 upstream, node-2's service, the API user.
    silenced = cluster.pumps.pop(1)  # node-1's service, SIGSTOPped as it were
    calls = [client.call_with_timeout(5.0, "echo", f"c{n}") for n in range(4)]
    cluster.flush()
    with capturedLogs() as logged:
        advance(cluster, 1.2)
    assert [event["role"] for event in logged if event.get("nswarm_event") == "ejected"] == ["service"]
    assert [result_of(d) for d in calls] == [f"c{n}" for n in range(4)]
    assert first.ran == [] and sorted(second.ran) == [f"c{n}" for n in range(4)]
    cluster.pumps.insert(1, silenced)


def test_calls_reaching_a_node_whose_only_implementer_is_ejected_go_to_another_node() -> None:
    cluster = Cluster()
    first, second = two_nodes(cluster)
    client, _ = cluster.add_api()
    silenced = cluster.pumps.pop(1)  # node-1's service
    held = client.call_with_timeout(5.0, "once", "held")  # waits on node-1's service (it may run there)
    cluster.flush()
    advance(cluster, 1.2)
    # node-1 itself answers the master: calls still reach it, and it turns them down before they run.
    later = [client.call_with_timeout(5.0, name, f"l{n}") for n, name in enumerate(["once", "echo"] * 3)]
    cluster.flush()
    assert [result_of(d) for d in later] == [f"l{n}" for n in range(6)]
    assert first.ran == [] and sorted(second.ran) == sorted(f"l{n}" for n in range(6))
    cluster.pumps.insert(1, silenced)  # it resumes: answers the call it held, and is back in balancing
    advance(cluster, 0.2)
    assert result_of(held) == "held" and first.ran == ["held"]
    assert result_of(cluster.run(client.call("echo", "back"))) == "back"
