"""
Method, event and subscription names: what makes one valid, and which
subscription patterns match an event. Pure functions and one cache; the
relays and the service SDK share them.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from nswarm.amp_commands import InvalidRequest
from nswarm.defaults import MATCH_CACHE_SIZE, MAX_NAME_LENGTH

T = TypeVar("T")


def check_name(kind: str, name: str) -> str:
    """
    Return C{name} if it is a valid method or event name, else raise
    L{InvalidRequest} saying why.
    """
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable() or name != name.strip():
        raise InvalidRequest(
            f"invalid {kind} name {name[:40]!r}: use 1 to {MAX_NAME_LENGTH} printable "
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


class Matches(Generic[T]):
    """
    For each event name, the values registered under the subscription
    patterns that match it (each value once), computed on first use and
    cached until L{clear}. C{patterns} is read live: clear after changing it.
    """

    def __init__(self, patterns: dict[str, list[T]]) -> None:
        self.patterns = patterns
        self._cache: dict[str, list[T]] = {}

    def __call__(self, event: str) -> list[T]:
        """The values of every pattern matching C{event}, in registration order, each once."""
        found = self._cache.get(event)
        if found is None:
            if len(self._cache) > MATCH_CACHE_SIZE:
                self._cache.clear()
            found = list(
                dict.fromkeys(
                    value for pattern, values in self.patterns.items() if matches(pattern, event) for value in values
                )
            )
            self._cache[event] = found
        return found

    def clear(self) -> None:
        """Forget every cached match (the patterns changed)."""
        self._cache.clear()
