"""
The cluster's status, as the master sees it (docs/operations.md, "The
status document"): the master, its nodes, their services (each node
reports its own, L{nswarm.status_commands.NodeStatus}), the methods with
their counts and latencies measured here, and the events. Plain data, for
JSON: the L{nswarm.status_commands.Status} command, C{nswarm status} and
the dashboard all show this one document.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from nswarm import defaults
from nswarm.failures import address_text
from nswarm.relay.stats import percentile
from nswarm.sockets import silent_for
from nswarm.status_commands import NodeStatus


def nswarm_version() -> str:
    """The installed nswarm's version."""
    try:
        return version("nswarm")
    except PackageNotFoundError:
        return "unknown"


def _ask(master: Any, node: Any, timeout: float) -> Deferred[dict[str, Any]]:
    """Node C{node}'s own report, or one saying why there is none (within C{timeout} seconds)."""
    asked: Deferred[Any] = node.request(NodeStatus)
    asked.addTimeout(timeout, master.clock)

    def failed(failure: Failure) -> dict[str, Any]:
        return {"name": node.name, "services": [], "error": f"no status from this node: {failure.getErrorMessage()}"}

    return asked.addCallback(lambda answer: json.loads(answer["document"])).addErrback(failed)


def method_report(master: Any, name: str, in_flight: dict[str, int], queued: dict[str, int], now: float) -> Any:
    """One method: who implements it, what waits for it, what it did, and its latency over the last minute."""
    stats = master.relay.stats.methods.get(name)
    calls = stats.calls() if stats is not None else 0
    errors = dict(sorted(stats.errors.items())) if stats is not None else {}
    window = stats.last_minute(now) if stats is not None else []
    p50, p99 = percentile(window, 0.5), percentile(window, 0.99)
    return {
        "name": name,
        "implementers": sorted(peer.name for peer in master.registry.implementers(name)),
        "calls_in_flight": in_flight.get(name, 0),
        "calls_queued": queued.get(name, 0),
        "calls": calls,
        "errors": errors,
        "p50_ms": round(p50 * 1000, 3) if p50 is not None else None,
        "p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
    }


def _connection(master: Any, peer: Any, now: float) -> dict[str, Any]:
    silent = silent_for(peer.transport) if peer.transport is not None else None  # the kernel's, for TCP
    return {
        "name": peer.name,
        "address": address_text(peer.address),
        "connected_s": round(now - peer.connected_at, 3),
        "last_heard_s": round(silent if silent is not None else now - peer.heard_at, 3),
        "calls_in_flight": master.pending.in_flight(peer) + master.pending.asked_by(peer),
    }


def assemble(master: Any, reports: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """The status document, from the master's state and the nodes' C{reports}."""
    connections: dict[str, int] = {}
    for peer in master.peers:
        connections[peer.role] = connections.get(peer.role, 0) + 1
    nodes, services = [], []
    at_nodes = {"delivered": 0, "dropped": 0}
    for report in reports:
        peer = master.nodes.get(report.get("name"))
        node = _connection(master, peer, now) if peer is not None else {"name": report.get("name")}
        node["services"] = [service["name"] for service in report.get("services", [])]
        if "error" in report:
            node["error"] = report["error"]
        nodes.append(node)
        for key in ("delivered", "dropped"):
            at_nodes[key] += report.get("events", {}).get(key, 0)
        services.extend(report.get("services", []))
    in_flight, queued = master.pending.by_method(), master.held.queued()
    names = set(master.registry.methods()) | set(master.relay.stats.methods)
    stats = master.relay.stats
    return {
        "master": {
            "version": nswarm_version(),
            "pid": os.getpid(),
            "uptime_s": round(now - master.started, 3),
            "listeners": dict(master.addresses),
            "connections": connections,
        },
        "nodes": nodes,
        "services": services,
        "api_users": [
            _connection(master, peer, now)
            for peer in sorted(master.peers, key=lambda peer: (peer.name, id(peer)))
            if peer.role == "api user"
        ],
        "methods": [method_report(master, name, in_flight, queued, now) for name in sorted(names)],
        "events": {
            "published": stats.published,
            "dropped": stats.dropped + at_nodes["dropped"],
            "master": {"delivered": stats.delivered, "dropped": stats.dropped},
            "nodes": at_nodes,
            "patterns": [
                {"pattern": pattern, "subscribers": count}
                for pattern, count in sorted(master.registry.subscriber_counts().items())
            ],
        },
    }


def cluster_report(master: Any, timeout: float = defaults.STATUS_TIMEOUT) -> Deferred[dict[str, Any]]:
    """The status document of C{master}'s cluster; each node has C{timeout} seconds to give its part."""
    nodes = sorted(master.nodes.values(), key=lambda peer: peer.name)
    asked = gatherResults([_ask(master, node, timeout) for node in nodes])
    return asked.addCallback(lambda reports: assemble(master, reports, master.clock.seconds()))
