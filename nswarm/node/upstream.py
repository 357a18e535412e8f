"""
The node's upstream, all of it: the connection to the master's node server
(kept up by a ClientService), its authentication, and the master's view of
this node, advertised in full on every (re)connection and kept in sync as
the local services come and go.

What the node advertises is the aggregate of its services: a method is
idempotent here only if every local implementer says so, and its limit is
the sum of theirs (none if one has none).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from nswarm import defaults
from nswarm.amp_commands import Authenticate, Implement, Subscribe, Unimplement, Unsubscribe, UpstreamUnavailable
from nswarm.failures import Target
from nswarm.node.status import node_report
from nswarm.reconnect import AuthenticationDeadline, Reconnecting
from nswarm.relay.protocol import RelayFactory, RelayProtocol
from nswarm.relay.state import IPeer, Registry
from nswarm.requests import events_part, first_error, methods_part
from nswarm.status_commands import NodeStatus

log = Logger()


class UpstreamProtocol(RelayProtocol):
    """The node's connection to the master's node server."""

    role = "master"

    @NodeStatus.responder
    def node_status(self) -> dict[str, bytes]:
        """The master asks for this node's part of the cluster's status."""
        return {"document": json.dumps(node_report(self.router)).encode()}

    def became_upstream(self, upstream: Upstream) -> Deferred[Any]:
        """
        This connection has authenticated: make it C{upstream}'s connection.
        Called on the protocol itself, not on the proxy ClientService hands
        C{prepareConnection}, so that the node knows the real connection.
        """
        self.start_heartbeats(self.clock, self.heartbeat)
        return upstream.connected(self)


class Upstream:
    """The node's link to the master, and what the master has been told of this node's C{registry}."""

    def __init__(self, name: str, registry: Registry[IPeer]) -> None:
        self.name = name
        self.registry = registry
        #: The authenticated connection to the master, if there is one now.
        self.connection: UpstreamProtocol | None = None
        #: What the master has been told of each method here: (idempotent, limit).
        self.advertised: dict[str, tuple[bool, int]] = {}
        #: How long the master may take to answer the authentication (set by L{service}).
        self.deadline: AuthenticationDeadline | None = None

    def service(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        target: Target,
        factory: RelayFactory,
        key: bytes,
        max_delay: float,
        lost_max_delay: float = defaults.RECONNECT_LOST_MAX_DELAY,
        auth_timeout: float = defaults.CLIENT_AUTH_TIMEOUT,
    ) -> ClientService:
        """
        A ClientService that keeps this upstream connected and authenticated
        through C{endpoint}, to the master's node server at C{target} (which
        its log lines name, with the cause of each failed attempt): retrying
        at most C{max_delay} seconds apart until it has been connected, at
        most C{lost_max_delay} apart once it was and is lost; a master that
        does not answer the authentication within C{auth_timeout} seconds
        costs an attempt.
        """
        self.deadline = AuthenticationDeadline(reactor, auth_timeout, target, "upstream-auth-timeout")
        prepare = self.authenticate(key, self.deadline)
        who = f"node {self.name!r}"
        return Reconnecting(reactor, endpoint, factory, prepare, who, target, max_delay, lost_max_delay)

    def authenticate(self, key: bytes, deadline: AuthenticationDeadline | None = None) -> Any:
        """
        The ClientService's prepareConnection: authenticate with the master
        (within C{deadline}, if given), then register everything the local
        services provide.
        """

        def prepare(upstream: UpstreamProtocol) -> Deferred[Any]:
            d = upstream.request(Authenticate, key=key, name=self.name)
            if deadline is not None:
                d = deadline.bound(upstream, d)
            return d.addCallback(lambda _: upstream.became_upstream(self))

        return prepare

    def required(self) -> UpstreamProtocol:
        """The connection to route through, or L{UpstreamUnavailable}."""
        if self.connection is None:
            raise UpstreamUnavailable(
                f"node {self.name!r} is not connected to the master: "
                "check that the master is running; the node keeps reconnecting"
            )
        return self.connection

    def connected(self, connection: UpstreamProtocol) -> Deferred[Any]:
        """
        C{connection} has authenticated: route through it and register a full
        snapshot of what the local services provide, so that a reconnect
        restores the master's view.
        """
        self.connection = connection
        methods = self.registry.methods()
        self.advertised = {method: self._aggregate(method) for method in methods}
        return gatherResults(
            [
                connection.register(Implement, methods, self._implement_arguments),
                connection.register(Subscribe, self.registry.events(), events_part),
            ],
            consumeErrors=True,
        ).addCallback(self._registered)

    def _registered(self, result: Any) -> Any:
        log.info(
            "node {name!r} connected to the master and registered",
            name=self.name,
            nswarm_event="upstream_connected",
        )
        return result

    def lost(self) -> None:
        """The connection to the master is gone; the ClientService reconnects."""
        self.connection = None
        log.warn("node {name!r} lost its connection to the master", name=self.name, nswarm_event="upstream_lost")

    def methods_changed(self, methods: list[str]) -> Deferred[Any] | None:
        """
        Tell the master what changed of C{methods} here: withdraw those no
        local service implements any more, advertise those that are new or
        whose idempotence or limit changed. The Deferred fires once the
        master has it (None: nothing to tell, or no master to tell now).
        """
        if self.connection is None:
            return None
        present = set(self.registry.methods())
        gone = [method for method in methods if method not in present and method in self.advertised]
        changed = [
            method for method in methods if method in present and self._aggregate(method) != self.advertised.get(method)
        ]
        sent = []
        if gone:
            for method in gone:
                del self.advertised[method]
            sent.append(self._send(Unimplement, gone, methods_part))
        if changed:
            for method in changed:
                self.advertised[method] = self._aggregate(method)
            sent.append(self._send(Implement, changed, self._implement_arguments))
        return gatherResults(sent, consumeErrors=True).addErrback(first_error) if sent else None

    def subscribed(self, patterns: list[str]) -> Deferred[Any] | None:
        """The first local subscriptions to C{patterns}: tell the master."""
        return self._send(Subscribe, patterns, events_part) if patterns and self.connection is not None else None

    def unsubscribed(self, patterns: list[str]) -> Deferred[Any] | None:
        """No local service subscribes to C{patterns} any more: tell the master."""
        return self._send(Unsubscribe, patterns, events_part) if patterns and self.connection is not None else None

    def withdraw(self) -> None:
        """Before stopping: withdraw everything this node provides, so that the master sends nothing new."""
        if self.connection is None:
            return
        log.info("node {name!r} draining: withdrawing its methods and events", name=self.name)
        methods, events = self.registry.methods(), self.registry.events()
        if methods:
            self._send(Unimplement, methods, methods_part).addErrback(_ignored)
        if events:
            self._send(Unsubscribe, events, events_part).addErrback(_ignored)

    def _aggregate(self, method: str) -> tuple[bool, int]:
        """How C{method} stands here: idempotent if all its services say so; their summed limit."""
        return self.registry.idempotent_everywhere(method), self.registry.total_limit(method)

    def _implement_arguments(self, methods: list[str]) -> dict[str, Any]:
        return {
            "methods": methods,
            "idempotent": [method for method in methods if self.advertised[method][0]],
            "limits": [self.advertised[method][1] for method in methods],
        }

    def _send(self, command: type[amp.Command], names: list[str], arguments: Any) -> Deferred[Any]:
        """
        Send registration C{command} for C{names} to the master. A failure is
        logged and passed on: the service whose registration it was is
        answered with the master's error (a refusal reaches whoever asked).
        """
        assert self.connection is not None
        return self.connection.register(command, names, arguments).addErrback(self._failed, command)

    def _failed(self, failure: Failure, command: type[amp.Command]) -> Failure:
        log.warn(
            "the master refused or did not answer {command}: {error}",
            command=command.__name__,
            error=failure.getErrorMessage(),
        )
        return failure


def _ignored(failure: Failure) -> None:
    """Nobody waits for this one: it has been logged."""
