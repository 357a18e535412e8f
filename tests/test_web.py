"""
Tier 1: the daemons' HTTP listener with no socket. The metrics collectors
read a master and a node built in memory (tests/support.py's Cluster), and
their output is parsed back with Prometheus' own parser; the resources are
rendered with twisted.web's DummyRequest. (The options and the taps:
test_http_options.py.)
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from nswarm.master.master import ApiServerProtocol, NodeServerProtocol
from nswarm.node.node import ServiceServerProtocol
from nswarm.relay.protocol import RelayFactory
from nswarm.relay.stats import BOUNDS, EXPORTED, OTHER, Stats
from nswarm.service import Service, implement
from nswarm.web.metrics import MasterCollector, NodeCollector, buckets, method_labels, registry_of
from nswarm.web.site import HTTPSite, Protected, StatusResource, master_site, node_site

from .support import Cluster, disconnect, failure_of, result_of
from .test_status import Greeter

TOKEN = b"s3cret-token-0123456789"


def scrape(collector: Any) -> dict[str, Any]:
    """The metric families C{collector} gives now, parsed back from the text format, by name."""
    text = generate_latest(registry_of(collector, process=False)).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of C{family} (those named C{name}, if given), by their sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for sample in family.samples
        if name is None or sample.name == name
    }


class Slow(Service):
    """A service whose one method answers after the given seconds have passed on C{clock}."""

    name = "slow"

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    @implement
    def slow(self, seconds: float) -> Deferred[str]:
        return deferLater(self.clock, seconds, lambda: "done")


@pytest.fixture
def cluster() -> Cluster:
    """A master with node-1, the greeter on it, an API user; three greets, one failure, one event published."""
    made = Cluster()
    node, _, _ = made.add_node("node-1")
    made.add_service(node, Greeter())
    client, _ = made.add_api()
    for name in ("a", "b", "c"):
        assert result_of(made.run(client.call("greet", name))) == f"hello, {name}!"
    failure_of(made.run(client.call("fail")))
    result_of(made.run(client.publish("orders.created", {"id": 1})))
    made.client = client  # type: ignore[attr-defined]
    made.node = node  # type: ignore[attr-defined]
    return made


# -- the collectors ----------------------------------------------------------


def test_master_metrics_count_calls_events_connections_and_bytes(cluster: Cluster) -> None:
    families = scrape(MasterCollector(cluster.master))
    assert samples(families["nswarm_calls"], "nswarm_calls_total") == {
        (("method", "greet"), ("outcome", "ok")): 3,
        (("method", "fail"), ("outcome", "HANDLER_FAILED")): 1,
    }
    assert families["nswarm_calls"].type == "counter"
    assert samples(families["nswarm_events_published"]) == {(): 1}
    assert samples(families["nswarm_events_delivered"]) == {(): 1}
    assert samples(families["nswarm_events_dropped"]) == {(): 0}
    assert samples(families["nswarm_connections"]) == {(("role", "node"),): 1, (("role", "api user"),): 1}
    # Bytes are the kernel's counts of TCP sockets (tests/test_dashboard.py checks them): none in memory.
    assert samples(families["nswarm_received_bytes"], "nswarm_received_bytes_total") == {}
    assert samples(families["nswarm_sent_bytes"], "nswarm_sent_bytes_total") == {}
    assert samples(families["nswarm_calls_in_flight"]) == {} and samples(families["nswarm_calls_queued"]) == {}
    [info] = families["nswarm_build_info"].samples
    assert info.labels["daemon"] == "master" and info.value == 1


def test_the_latency_histogram_has_the_exported_bounds_cumulative_with_inf_and_sum(cluster: Cluster) -> None:
    client = cluster.client  # type: ignore[attr-defined]
    cluster.add_service(cluster.node, Slow(cluster.clock))  # type: ignore[attr-defined]
    for seconds in (0.002, 0.002, 0.5, 500.0):  # the last is above every bound
        answer = client.call_with_timeout(1000, "slow", seconds)
        cluster.flush()
        cluster.clock.advance(seconds)
        cluster.flush()
        assert result_of(answer) == "done"
    family = scrape(MasterCollector(cluster.master))["nswarm_call_duration_seconds"]
    assert family.type == "histogram"
    bucket = {
        float(sample.labels["le"]): sample.value
        for sample in family.samples
        if sample.name.endswith("_bucket") and sample.labels["method"] == "slow"
    }
    assert sorted(bucket) == sorted([BOUNDS[index] for index in EXPORTED] + [float("inf")])
    assert bucket[0.001] == 0 and bucket[0.0031622776601683794] == 2 and bucket[1.0] == 3 and bucket[100.0] == 3
    assert bucket[float("inf")] == 4
    values = [bucket[le] for le in sorted(bucket)]
    assert values == sorted(values)  # cumulative
    by_name = {sample.name: sample.value for sample in family.samples if sample.labels.get("method") == "slow"}
    assert by_name["nswarm_call_duration_seconds_count"] == 4
    assert by_name["nswarm_call_duration_seconds_sum"] == pytest.approx(500.504)


def test_buckets_are_cumulative_at_every_fifth_bound() -> None:
    histogram = [1] * (len(BOUNDS) + 1)
    exported = buckets(histogram)
    assert len(exported) == len(EXPORTED) + 1
    assert exported[0] == ("1e-05", 1.0) and exported[1][1] == 6.0 and exported[-1] == ("+Inf", len(histogram))


def test_unknown_error_codes_and_methods_past_the_cap_fold_into_other(cluster: Cluster) -> None:
    stats = cluster.master.relay.stats
    for code in (b"MADE_UP_1", b"MADE_UP_2", b"OVERLOADED"):
        stats.failed("greet", code)
    calls = samples(scrape(MasterCollector(cluster.master))["nswarm_calls"], "nswarm_calls_total")
    assert calls[(("method", "greet"), ("outcome", OTHER))] == 2
    assert calls[(("method", "greet"), ("outcome", "OVERLOADED"))] == 1
    small = Stats(max_methods=2)
    small.method("a")
    assert method_labels(small, {"a": 1, "b": 2, "c": 3, "d": 4}) == {"a": 1, "b": 2, OTHER: 7}


def test_calls_in_flight_and_queued_by_method(cluster: Cluster) -> None:
    client = cluster.client  # type: ignore[attr-defined]
    cluster.master.grace = 30.0
    waiting = client.call_with_timeout(60, "nobody.yet")  # held for the grace period: nobody implements it
    cluster.flush()
    families = scrape(MasterCollector(cluster.master))
    assert samples(families["nswarm_calls_queued"]) == {(("method", "nobody.yet"),): 1}
    cluster.clock.advance(31)
    cluster.flush()
    failure_of(waiting)
    assert samples(scrape(MasterCollector(cluster.master))["nswarm_calls_queued"]) == {}


def test_authentication_failures_and_refusals_by_server(cluster: Cluster) -> None:
    master, clock = cluster.master, cluster.clock
    master.listeners = {
        "node": RelayFactory(NodeServerProtocol, master, clock),
        "api": RelayFactory(ApiServerProtocol, master, clock),
    }
    master.listeners["api"].guards.throttle.failed("192.0.2.1", clock.seconds())
    master.listeners["api"].guards.throttle.failed("192.0.2.1", clock.seconds())
    master.listeners["node"].guards.refused += 3
    families = scrape(MasterCollector(master))
    failures = samples(families["nswarm_authentication_failures"], "nswarm_authentication_failures_total")
    assert failures == {(("server", "api"),): 2, (("server", "node"),): 0}
    refused = samples(families["nswarm_connections_refused"], "nswarm_connections_refused_total")
    assert refused == {(("server", "api"),): 0, (("server", "node"),): 3}


def test_node_metrics_show_its_services_and_its_upstream(cluster: Cluster) -> None:
    node = cluster.node  # type: ignore[attr-defined]
    node.listeners["service"] = RelayFactory(ServiceServerProtocol, node, cluster.clock)
    families = scrape(NodeCollector(node))
    assert samples(families["nswarm_calls"], "nswarm_calls_total") == {
        (("method", "greet"), ("outcome", "ok")): 3,
        (("method", "fail"), ("outcome", "HANDLER_FAILED")): 1,
    }
    assert samples(families["nswarm_node_services"]) == {(): 1}
    assert samples(families["nswarm_node_upstream_connected"]) == {(): 1}
    assert samples(families["nswarm_connections"]) == {(("role", "service"),): 1, (("role", "master"),): 1}
    assert samples(families["nswarm_events_delivered"]) == {(): 1}
    assert samples(families["nswarm_authentication_failures"], "nswarm_authentication_failures_total") == {
        (("server", "service"),): 0
    }
    [info] = families["nswarm_build_info"].samples
    assert info.labels["daemon"] == "node"
    disconnect(node.upstream.connection, cluster)
    families = scrape(NodeCollector(node))
    assert samples(families["nswarm_node_upstream_connected"]) == {(): 0}
    assert samples(families["nswarm_connections"]) == {(("role", "service"),): 1, (("role", "master"),): 0}


def test_the_registry_is_its_own_with_the_process_metrics(cluster: Cluster) -> None:
    from prometheus_client import REGISTRY

    registry = registry_of(MasterCollector(cluster.master))
    assert registry is not REGISTRY
    names = {family.name for family in registry.collect()}
    assert "nswarm_calls" in names
    assert "process_cpu_seconds" in names or not os.path.exists("/proc/self/stat")


# -- the resources -----------------------------------------------------------


def get(site: HTTPSite, path: bytes, token: bytes | None = None, flush: Any = None) -> DummyRequest:
    """GET C{path} from C{site} (with a bearer C{token}), calling C{flush} if the answer is not ready at once."""
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    if token is not None:
        request.requestHeaders.addRawHeader(b"authorization", b"Bearer " + token)
    resource = site.getResourceFor(request)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    elif flush is not None:
        flush()
    return request


def body(request: DummyRequest) -> bytes:
    """What was written in answer to C{request} (which must have finished)."""
    assert request.finished, "the request has not finished"
    return b"".join(request.written)


def header(request: DummyRequest, name: bytes) -> bytes | None:
    """The response header C{name} set for C{request}."""
    values = request.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


def test_status_and_metrics_need_the_token_when_there_is_one(cluster: Cluster) -> None:
    site = master_site(cluster.master, TOKEN)
    for path in (b"/status.json", b"/metrics"):
        for token in (None, b"wrong", TOKEN + b"x"):
            refused = get(site, path, token)
            assert refused.responseCode == 401, (path, token)
            assert header(refused, b"www-authenticate") == b'Bearer realm="nswarm"'
            assert "Authorization: Bearer TOKEN" in json.loads(body(refused))["error"]
    allowed = get(site, b"/metrics", TOKEN)
    assert allowed.responseCode in (None, 200) and b"nswarm_calls_total" in body(allowed)
    assert header(
        allowed,
        b"content-type",
    ).startswith(b"text/plain")  # type: ignore[union-attr]
    status = get(site, b"/status.json", TOKEN, cluster.flush)
    assert json.loads(body(status))["nodes"][0]["name"] == "node-1"


def test_a_bearer_scheme_is_case_insensitive_and_other_schemes_are_refused() -> None:
    inner = Resource()
    inner.render_GET = lambda request: b"data"  # type: ignore[attr-defined]
    guarded = Protected(inner, TOKEN)
    for value, code in ((b"bearer " + TOKEN, None), (b"Basic " + TOKEN, 401), (TOKEN, 401), (b"Bearer", 401)):
        request = DummyRequest([b""])
        request.requestHeaders.addRawHeader(b"authorization", value)
        request.render(guarded)
        assert request.responseCode == code, value
    open_request = DummyRequest([b""])
    open_request.render(Protected(inner, None))
    assert body(open_request) == b"data"


def test_without_a_token_everything_is_open(cluster: Cluster) -> None:
    site = master_site(cluster.master)
    assert b"nswarm_calls_total" in body(get(site, b"/metrics"))
    document = json.loads(body(get(site, b"/status.json", flush=cluster.flush)))
    assert [service["name"] for service in document["services"]] == ["greeter"]
    assert {method["name"]: method["calls"] for method in document["methods"]}["greet"] == 3


def test_a_node_serves_its_own_report(cluster: Cluster) -> None:
    site = node_site(cluster.node, TOKEN)  # type: ignore[attr-defined]
    document = json.loads(body(get(site, b"/status.json", TOKEN)))
    assert document["name"] == "node-1" and [service["name"] for service in document["services"]] == ["greeter"]
    families = {family.name for family in text_string_to_metric_families(body(get(site, b"/metrics", TOKEN)).decode())}
    assert {"nswarm_node_services", "nswarm_node_upstream_connected"} <= families


def test_the_dashboard_is_served_without_the_token_with_a_strict_policy(cluster: Cluster) -> None:
    site = master_site(cluster.master, TOKEN)
    page = get(site, b"/")
    assert header(page, b"content-type") == b"text/html; charset=utf-8"
    policy = header(page, b"content-security-policy")
    assert policy is not None and b"default-src 'none'" in policy and b"connect-src 'self'" in policy
    html = body(page).decode()
    assert 'src="dashboard.js"' in html and 'href="dashboard.css"' in html and "http" not in html.split("<body>")[0]
    script = body(get(site, b"/dashboard.js")).decode()
    assert "status.json" in script and "Bearer" in script and "innerHTML" not in script
    assert header(get(site, b"/dashboard.css"), b"content-type") == b"text/css; charset=utf-8"
    assert get(site, b"/nothing-here").responseCode == 404


def test_requests_during_a_report_share_it() -> None:
    made: list[Deferred[Any]] = []

    def report() -> Deferred[Any]:
        made.append(Deferred())
        return made[-1]

    resource = StatusResource(report)
    first, second = DummyRequest([b""]), DummyRequest([b""])
    first.render(resource)
    second.render(resource)
    assert len(made) == 1 and not first.finished and not second.finished
    made[0].callback({"nodes": []})
    assert body(first) == body(second) == b'{"nodes": []}'
    third = DummyRequest([b""])
    third.render(resource)
    assert len(made) == 2


def test_a_report_that_fails_is_a_500_with_a_json_error() -> None:
    def broken() -> Deferred[Any]:
        raise RuntimeError("no state")

    request = DummyRequest([b""])
    request.render(StatusResource(broken))
    assert request.responseCode == 500
    assert json.loads(body(request))["error"] == "cannot make the status document: no state"


def test_a_request_gone_before_its_report_is_not_written() -> None:
    pending: Deferred[Any] = Deferred()
    request = DummyRequest([b""])
    request.render(StatusResource(lambda: pending))
    request.processingFailed(Failure(ConnectionDone()))
    pending.callback({"late": True})
    assert request.written == [] and not request.finished
    ready = DummyRequest([b""])
    ready.render(StatusResource(lambda: succeed({"now": 1})))
    assert json.loads(body(ready)) == {"now": 1}
