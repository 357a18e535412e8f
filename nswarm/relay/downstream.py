"""
A relay connection whose peer registers what it implements and subscribes
to (a node at the master, a service at its node): the registration
responders, within the connection's caps on names and patterns.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nswarm.amp_commands import Implement, InvalidRequest, LimitExceeded, Subscribe, Unimplement, Unsubscribe
from nswarm.relay.protocol import RelayProtocol


def _too_many(what: str, peer: str, have: int, adding: int, limit: int, option: str) -> LimitExceeded:
    return LimitExceeded(
        f"{peer} has {have:,} {what} and asks for {adding:,} more, over the {limit:,} one connection may have: "
        f"register fewer, or raise {option}"
    )


def _answered(outcome: Any) -> Any:
    """The empty answer of a registration command, once C{outcome} (None, or a Deferred) has come."""
    if isinstance(outcome, Deferred):
        return outcome.addCallback(lambda _: {})
    return {}


class Downstream(RelayProtocol):
    """
    A relay connection whose peer registers here what it implements and
    subscribes to: a node at the master, a service at the node; at most
    C{max_methods} methods and C{max_patterns} subscriptions.
    """

    def _within_limits(self, methods: list[str], patterns: list[str]) -> None:
        """L{LimitExceeded} if registering C{methods} and C{patterns} would pass this connection's caps."""
        registry = self.relay.registry
        have_methods, have_patterns = registry.counts(self)
        new_methods, new_patterns = registry.new_names(self, methods, patterns)
        if have_methods + new_methods > self.max_methods:
            raise _too_many(
                "methods", self.description, have_methods, new_methods, self.max_methods, "methods-per-connection"
            )
        if have_patterns + new_patterns > self.max_patterns:
            raise _too_many(
                "subscriptions",
                self.description,
                have_patterns,
                new_patterns,
                self.max_patterns,
                "patterns-per-connection",
            )

    @Implement.responder
    def _implement(
        self, methods: list[str], idempotent: list[str] | None = None, limits: list[int] | None = None
    ) -> Any:
        if limits is not None and (len(limits) != len(methods) or min(limits, default=0) < 0):
            raise InvalidRequest("limits must give one number, 0 or more, for each method")
        self._within_limits(methods, [])
        return _answered(self.router.implement(self, methods, idempotent or [], limits or []))

    @Unimplement.responder
    def _unimplement(self, methods: list[str]) -> Any:
        return _answered(self.router.unimplement(self, methods))

    @Subscribe.responder
    def _subscribe(self, events: list[str]) -> Any:
        self._within_limits([], events)
        return _answered(self.router.subscribe(self, events))

    @Unsubscribe.responder
    def _unsubscribe(self, events: list[str]) -> Any:
        return _answered(self.router.unsubscribe(self, events))
