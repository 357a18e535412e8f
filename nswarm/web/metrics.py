"""
Prometheus metrics of a master or a node (docs/operations.md, "Metrics"). A
collector builds every metric family from the relay's counters
(L{nswarm.relay.stats.Stats}) and state when it is scraped, so the hot path
pays nothing for them. Labels are bounded: methods are capped by L{Stats}
(past its cap they fold into C{_other}, and so do the methods of the
in-flight and queued gauges), outcomes are C{ok} or one of nswarm's and
AMP's error codes (any other code a peer sends counts as C{_other}).

L{MetricsResource} serves a registry in the reactor thread (Prometheus'
own Twisted resource runs the collection in a thread pool, which would
read the relay's dicts while the reactor changes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.protocols import amp
from twisted.web.resource import Resource
from twisted.web.server import Request

from nswarm.amp_commands import ERRORS
from nswarm.master.status import nswarm_version
from nswarm.relay.stats import BOUNDS, EXPORTED, OK, OTHER, Stats

#: The outcomes counted under their own label; any other error code a peer answers with is counted as L{OTHER}.
OUTCOMES = frozenset([OK, *(code.decode() for code in ERRORS), *(code.decode() for code in amp.PROTOCOL_ERRORS)])
#: The "le" labels of the exported latency buckets (L{nswarm.relay.stats.EXPORTED} of L{BOUNDS}).
BUCKETS = tuple(floatToGoString(BOUNDS[index]) for index in EXPORTED)


def outcome_label(outcome: str) -> str:
    """The label of a call's C{outcome}: itself if it is C{ok} or a known error code, else L{OTHER}."""
    return outcome if outcome in OUTCOMES else OTHER


def method_labels(stats: Stats, counts: dict[str, int]) -> dict[str, int]:
    """
    C{counts} by method, with as many labels as L{Stats} allows: a method
    it does not count folds into L{OTHER} once there are that many.
    """
    folded: dict[str, int] = {}
    for name, number in sorted(counts.items()):
        label = name if name in stats.methods or len(folded) < stats.max_methods else OTHER
        folded[label] = folded.get(label, 0) + number
    return folded


def buckets(histogram: list[int]) -> list[tuple[str, float]]:
    """A L{MethodStats.histogram} as Prometheus buckets: cumulative counts at the exported bounds, then +Inf."""
    cumulative: list[tuple[str, float]] = []
    running, exported = 0, iter(EXPORTED)
    wanted = next(exported, None)
    for index, count in enumerate(histogram):
        running += count
        if index == wanted:
            cumulative.append((BUCKETS[len(cumulative)], float(running)))
            wanted = next(exported, None)
    cumulative.append(("+Inf", float(running)))
    return cumulative


def call_families(stats: Stats, in_flight: dict[str, int]) -> Iterator[Metric]:
    """Calls by method and outcome, their latency by method, and the calls in flight by method."""
    calls = CounterMetricFamily(
        "nswarm_calls",
        "Calls finished here, by method and outcome (ok or the error code)",
        labels=["method", "outcome"],
    )
    latency = HistogramMetricFamily(
        "nswarm_call_duration_seconds",
        "Seconds from sending a call on to its answer, by method",
        labels=["method"],
    )
    for name, method in sorted(stats.methods.items()):
        outcomes: dict[str, int] = {}
        for outcome, count in method.outcomes.items():
            label = outcome_label(outcome)
            outcomes[label] = outcomes.get(label, 0) + count
        for outcome, count in sorted(outcomes.items()):
            calls.add_metric([name, outcome], count)
        latency.add_metric([name], buckets(method.histogram), method.total_seconds)
    yield calls
    yield latency
    yield gauge_by_method(
        "nswarm_calls_in_flight", "Calls sent on from here and not answered yet, by method", stats, in_flight
    )


def gauge_by_method(name: str, documentation: str, stats: Stats, counts: dict[str, int]) -> GaugeMetricFamily:
    """A gauge of C{counts} by method (labels bounded by L{method_labels})."""
    gauge = GaugeMetricFamily(name, documentation, labels=["method"])
    for method, count in sorted(method_labels(stats, counts).items()):
        gauge.add_metric([method], count)
    return gauge


def event_families(stats: Stats) -> Iterator[Metric]:
    """Events published through here, written to subscribers, and dropped for subscribers not reading."""
    yield CounterMetricFamily("nswarm_events_published", "Events published through here", value=stats.published)
    yield CounterMetricFamily(
        "nswarm_events_delivered", "Event deliveries written to subscribers from here", value=stats.delivered
    )
    yield CounterMetricFamily(
        "nswarm_events_dropped",
        "Event deliveries dropped here for subscribers that did not read them",
        value=stats.dropped,
    )


def connection_families(
    stats: Stats, peers: Iterable[Any], roles: Iterable[str], listeners: dict[str, Any]
) -> Iterator[Metric]:
    """
    The authenticated connections C{peers} by role (every one of C{roles}
    shown, if only as 0), the bytes of all connections by role, and the
    authentications failed and connections refused by each of C{listeners}
    (a L{nswarm.relay.protocol.RelayFactory} by server name).
    """
    peers = list(peers)
    counts = dict.fromkeys(roles, 0)
    for peer in peers:
        counts[peer.role] = counts.get(peer.role, 0) + 1
    connections = GaugeMetricFamily(
        "nswarm_connections", "Authenticated connections open now, by role", labels=["role"]
    )
    for role, count in sorted(counts.items()):
        connections.add_metric([role], count)
    yield connections
    received = CounterMetricFamily("nswarm_received_bytes", "Bytes received, by the peer's role", labels=["role"])
    sent = CounterMetricFamily("nswarm_sent_bytes", "Bytes sent, by the peer's role", labels=["role"])
    for role, (received_bytes, sent_bytes) in sorted(stats.bytes_by_role(peers).items()):
        received.add_metric([role], received_bytes)
        sent.add_metric([role], sent_bytes)
    yield received
    yield sent
    failures = CounterMetricFamily(
        "nswarm_authentication_failures", "Failed authentications, by server", labels=["server"]
    )
    refused = CounterMetricFamily(
        "nswarm_connections_refused",
        "Connections refused as they were accepted (from addresses that failed to authenticate too often), by server",
        labels=["server"],
    )
    waiting = GaugeMetricFamily(
        "nswarm_connections_authenticating",
        "Connections accepted that have not authenticated yet (TLS handshakes under way), by server",
        labels=["server"],
    )
    pauses = CounterMetricFamily(
        "nswarm_accept_pauses",
        "Times a server stopped accepting because as many connections as it handles at once waited to authenticate",
        labels=["server"],
    )
    for server, factory in sorted(listeners.items()):
        guards = factory.guards
        failures.add_metric([server], guards.throttle.failures)
        refused.add_metric([server], guards.refused)
        waiting.add_metric([server], guards.waiting)
        pauses.add_metric([server], guards.pauses)
    yield failures
    yield refused
    yield waiting
    yield pauses


def build_info(daemon: str) -> GaugeMetricFamily:
    """Always 1, labelled with the daemon (master or node) and the nswarm version it runs."""
    info = GaugeMetricFamily("nswarm_build_info", "The nswarm daemon and its version", labels=["daemon", "version"])
    info.add_metric([daemon, nswarm_version()], 1)
    return info


class MasterCollector(Collector):
    """The metrics of a L{nswarm.master.master.Master}, built from its counters at each scrape."""

    def __init__(self, master: Any) -> None:
        self.master = master

    def collect(self) -> Iterator[Metric]:
        """Every metric family of the master, as it is now."""
        master = self.master
        stats = master.relay.stats
        yield build_info("master")
        yield from call_families(stats, master.pending.by_method())
        yield gauge_by_method(
            "nswarm_calls_queued",
            "Calls held back at the master (waiting for a free implementer or the grace period), by method",
            stats,
            master.held.queued(),
        )
        yield from event_families(stats)
        yield from connection_families(stats, master.peers, ("node", "api user"), master.listeners)


class NodeCollector(Collector):
    """The metrics of a L{nswarm.node.node.Node}, built from its counters at each scrape."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        """Every metric family of the node, as it is now."""
        node = self.node
        stats = node.relay.stats
        upstream = node.upstream.connection
        peers = [*node.services, *([upstream] if upstream is not None else [])]
        yield build_info("node")
        yield from call_families(stats, node.pending.by_method())
        yield from event_families(stats)
        yield from connection_families(stats, peers, ("service", "master"), node.listeners)
        yield GaugeMetricFamily("nswarm_node_services", "Services connected to this node", value=len(node.services))
        yield GaugeMetricFamily(
            "nswarm_node_upstream_connected",
            "1 while this node is connected to the master (authenticated), else 0",
            value=0 if upstream is None else 1,
        )


def registry_of(collector: Collector, process: bool = True) -> CollectorRegistry:
    """A registry of its own (not the global one) with C{collector} and, if C{process}, the process' metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """C{/metrics}: C{registry} in the text format the scraper asks for (Prometheus' or OpenMetrics')."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        """Collect now and answer in the format the C{Accept} header asks for."""
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return encoder(self.registry)
