"""
A node's part of the cluster's status (docs/operations.md, "The status
document"): the node and each service connected to it, as plain data for
JSON. The master asks every node for it (L{nswarm.status_commands.NodeStatus}).
"""

from __future__ import annotations

import os
from typing import Any


def service_report(node: Any, peer: Any, now: float) -> dict[str, Any]:
    """One service connected to C{node}: who runs it, what it registered, and what it handled."""
    credentials = getattr(peer, "credentials", None)
    return {
        "name": peer.name,
        "node": node.name,
        "pid": credentials.pid if credentials is not None else None,
        "uid": credentials.uid if credentials is not None else None,
        "connected_s": round(now - peer.connected_at, 3),
        "methods": sorted(node.registry.methods_of(peer)),
        "subscriptions": sorted(node.registry.patterns_of(peer)),
        "calls_in_flight": node.pending.in_flight(peer),
        "calls_handled": peer.calls_handled,
        "errors": dict(sorted((peer.call_errors or {}).items())),
        "events_dropped": peer.events_dropped,
    }


def node_report(node: Any) -> dict[str, Any]:
    """C{node} (a L{nswarm.node.node.Node}) and its services, for the status document."""
    now = node.clock.seconds()
    services = sorted(node.services, key=lambda peer: (peer.name, id(peer)))
    return {
        "name": node.name,
        "pid": os.getpid(),
        "calls_in_flight": len(node.pending),
        "events": {"delivered": node.relay.stats.delivered, "dropped": node.relay.stats.dropped},
        "services": [service_report(node, peer, now) for peer in services],
    }
