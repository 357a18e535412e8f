"""
The cluster's status document (L{nswarm.master.status}) as the readable
tables C{nswarm status} prints, in the manner of C{kubectl get}: the
master, then one table each of nodes, services and methods, then events.
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

#: The most names a cell lists before it says how many more there are.
SHOWN = 4


def duration(seconds: float | None) -> str:
    """C{seconds} the way a person reads it: 42s, 5m03s, 2h10m, 3d4h."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


def names(items: list[str]) -> str:
    """At most L{SHOWN} of C{items}, comma-separated, and how many more."""
    if not items:
        return "-"
    shown = ", ".join(items[:SHOWN])
    return shown + (f" (+{len(items) - SHOWN})" if len(items) > SHOWN else "")


def errors(counts: dict[str, int]) -> str:
    """Error counts by code: C{HANDLER_FAILED 2, NO_SUCH_METHOD 1}, or 0."""
    return ", ".join(f"{code} {count}" for code, count in counts.items()) or "0"


def _milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return f"{title}: none\n"
    return f"{title}\n{tabulate(rows, headers=headers, tablefmt='plain', disable_numparse=True)}\n"


def render(document: dict[str, Any]) -> str:
    """The tables of status C{document}, ending with a newline."""
    master = document["master"]
    connections = ", ".join(f"{role} {count}" for role, count in sorted(master["connections"].items())) or "none"
    listeners = ", ".join(f"{name} {address}" for name, address in sorted(master["listeners"].items())) or "-"
    parts = [
        f"MASTER  nswarm {master['version']}, pid {master['pid']}, up {duration(master['uptime_s'])}; "
        f"listening: {listeners}; connected: {connections}\n"
    ]
    parts.append(
        _table(
            "NODES",
            ["NAME", "ADDRESS", "CONNECTED", "LAST HEARD", "SERVICES", "IN FLIGHT"],
            [
                [
                    node["name"],
                    node.get("address", "-"),
                    duration(node.get("connected_s")),
                    f"{duration(node.get('last_heard_s'))} ago",
                    node.get("error") or names(node["services"]),
                    node.get("calls_in_flight", "-"),
                ]
                for node in document["nodes"]
            ],
        )
    )
    parts.append(
        _table(
            "SERVICES",
            ["NAME", "NODE", "PID", "UID", "METHODS", "SUBSCRIPTIONS", "IN FLIGHT", "HANDLED", "ERRORS", "DROPPED"],
            [
                [
                    service["name"],
                    service["node"],
                    service["pid"] if service["pid"] is not None else "-",
                    service["uid"] if service["uid"] is not None else "-",
                    names(service["methods"]),
                    names(service["subscriptions"]),
                    service["calls_in_flight"],
                    service["calls_handled"],
                    errors(service["errors"]),
                    service["events_dropped"],
                ]
                for service in document["services"]
            ],
        )
    )
    parts.append(
        _table(
            "METHODS",
            ["NAME", "IMPLEMENTERS", "IN FLIGHT", "QUEUED", "CALLS", "ERRORS", "P50 MS", "P99 MS"],
            [
                [
                    method["name"],
                    names(method["implementers"]),
                    method["calls_in_flight"],
                    method["calls_queued"],
                    method["calls"],
                    errors(method["errors"]),
                    _milliseconds(method["p50_ms"]),
                    _milliseconds(method["p99_ms"]),
                ]
                for method in document["methods"]
            ],
        )
    )
    events = document["events"]
    patterns = [f"{entry['pattern']} ({entry['subscribers']})" for entry in events["patterns"]]
    parts.append(
        f"EVENTS  published {events['published']}, dropped {events['dropped']}; subscribed: {names(patterns)}\n"
    )
    return "\n".join(parts)
