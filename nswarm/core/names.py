"""
Valid method and event names, and which subscription patterns match an
event, without Twisted: the rules every end shares (L{nswarm.relay.names}
re-exports them beside the relays' indexed matcher); the SDK front ends must not import
C{twisted.protocols}.
"""

from __future__ import annotations

from nswarm.defaults import MAX_NAME_LENGTH
from nswarm.errors import InvalidRequest


def check_name(kind: str, name: str) -> str:
    """Return C{name} if it is a valid method or event name, else raise L{InvalidRequest} saying why."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        valid = False
    else:
        valid = name == name.strip()
    if not valid:
        shown = name[:40] if isinstance(name, str) else name
        raise InvalidRequest(
            f"invalid {kind} name {shown!r}: use 1 to {MAX_NAME_LENGTH} printable "
            "characters without leading or trailing spaces"
        )
    return name


def check_method(name: str) -> str:
    """Return C{name} if it is a valid method name, else raise L{InvalidRequest}."""
    return check_name("method", name)


def check_pattern(pattern: str) -> str:
    """
    Return C{pattern} if it is a valid subscription: an event name whose
    dot-separated tokens may be C{*} (any one token) or, last, C{>} (one or
    more tokens); else raise L{InvalidRequest}.
    """
    check_name("subscription", pattern)
    tokens = pattern.split(".")
    if ">" in tokens[:-1] or "" in tokens:
        raise InvalidRequest(
            f"invalid subscription {pattern[:40]!r}: tokens are separated by single dots, "
            "and '>' may only be the last token"
        )
    return pattern


def check_event(event: str) -> str:
    """Return C{event} if it is a valid name to publish (no wildcards), else raise L{InvalidRequest}."""
    check_name("event", event)
    tokens = event.split(".")
    if "" in tokens:
        raise InvalidRequest(f"invalid event name {event[:40]!r}: tokens are separated by single dots")
    if "*" in tokens or ">" in tokens:
        raise InvalidRequest(f"cannot publish {event[:40]!r}: wildcards are for subscriptions, not events")
    return event


def matches(pattern: str, event: str) -> bool:
    """Whether subscription C{pattern} matches C{event} (C{orders.*}, C{orders.>}, or exact)."""
    if pattern == event:
        return True
    wanted, tokens = pattern.split("."), event.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)
