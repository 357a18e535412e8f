"""
Running a L{nswarm.service.Service}: connecting to its node, registering
what it implements and subscribes to, reconnecting whenever the node
restarts, draining on stop, and C{Service.main}'s command line.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger, globalLogBeginner, jsonFileLogObserver, textFileLogObserver
from twisted.python import usage

from nswarm import defaults
from nswarm.amp_commands import Implement, Subscribe, Unimplement, Unsubscribe
from nswarm.client import check_key
from nswarm.config import ConfigError, path, read_client_config, read_secret_file
from nswarm.failures import service_socket
from nswarm.peercred import check_node_peer  # noqa: F401 (re-exported: tests and callers import it here)
from nswarm.reconnect import AuthenticationDeadline, Reconnecting
from nswarm.requests import events_part, methods_part
from nswarm.service_protocol import ServiceProtocol

if TYPE_CHECKING:
    from nswarm.service import Service


class ServiceRunner(ClientFactory):
    """
    Connects C{service} to its node with the service auth C{key} and keeps
    it registered: a client factory of L{ServiceProtocol}s, the
    ClientService that reconnects them, and the drain on stop.
    """

    log = Logger()
    #: No "Starting factory <... object at 0x...>" on every connection: the runner logs what it does itself.
    noisy = False

    def __init__(self, service: Service, reactor: Any, key: bytes, heartbeat: float = defaults.HEARTBEAT) -> None:
        self.service = service
        self.reactor = reactor
        self.key = check_key(key)
        self.heartbeat = heartbeat
        #: The registered connection to the node, if there is one now.
        self.connection: ServiceProtocol | None = None
        self.client_service: ClientService | None = None
        #: How long the node may take to answer the authentication (set by L{start}).
        self.deadline: AuthenticationDeadline | None = None
        self._waiting: list[Deferred[None]] = []
        #: Whether the ClientService has taken the registered connection (it has, or there is none).
        self._settled = True
        service.runner = self

    def buildProtocol(self, addr: Any) -> ServiceProtocol:
        proto = ServiceProtocol(self.service, self.reactor)
        proto.factory = self
        return proto

    def start(
        self,
        socket: str,
        max_delay: float = defaults.SERVICE_RECONNECT_MAX_DELAY,
        lost_max_delay: float = defaults.RECONNECT_LOST_MAX_DELAY,
        auth_timeout: float = defaults.CLIENT_AUTH_TIMEOUT,
    ) -> ClientService:
        """
        Connect to the node's service server at UNIX socket C{socket}, and
        reconnect whenever it is lost: at most C{max_delay} seconds apart
        until connected, at most C{lost_max_delay} apart once connected and
        lost (see L{nswarm.reconnect}). A node that does not answer the
        authentication within C{auth_timeout} seconds costs an attempt.
        """
        target = service_socket(socket)
        self.deadline = AuthenticationDeadline(self.reactor, auth_timeout, target, "Service.start's auth_timeout")
        self.client_service = Reconnecting(
            self.reactor,
            UNIXClientEndpoint(self.reactor, socket),
            self,
            self.register,
            f"service {self.service.service_name!r}",
            target,
            max_delay,
            lost_max_delay,
        )
        self.client_service.startService()
        return self.client_service

    def ready(self) -> Deferred[None]:
        """Fires once the service is connected to its node and registered."""
        if self.connection is not None:
            return succeed(None)
        ready: Deferred[None] = Deferred()
        self._waiting.append(ready)
        return ready

    def register(self, proto: Any) -> Deferred[None]:
        """
        Authenticate on the new connection C{proto}, then register the
        service's methods and events; the node answers once the master
        routes them. (C{proto} may be ClientService's proxy of the protocol.)
        Before the key is sent, the node must be this service's user (see
        L{check_node_peer}); otherwise the Deferred fails with L{ConfigError}.
        """
        service = self.service
        try:
            check_node_peer(proto.transport)
        except ConfigError as error:
            return fail(error)
        d: Deferred[Any] = proto.authenticate(self.key, service.service_name)
        if self.deadline is not None:
            d = self.deadline.bound(proto, d)
        if service.nswarm_methods:
            d.addCallback(lambda _: proto.register(Implement, list(service.nswarm_methods), self._implement_arguments))
        if service.nswarm_events:
            d.addCallback(lambda _: proto.register(Subscribe, list(service.nswarm_events), events_part))
        d.addCallback(lambda _: proto.start_heartbeats(self.reactor, self.heartbeat))
        return d.addCallback(lambda _: proto.registered())

    def _implement_arguments(self, methods: list[str]) -> dict[str, Any]:
        service = self.service
        return {
            "methods": methods,
            "idempotent": [method for method in methods if method in service.nswarm_idempotent],
            "limits": [service.nswarm_limits.get(method, 0) for method in methods],
        }

    def registered(self, proto: ServiceProtocol) -> None:
        """C{proto} (the protocol itself) is registered: calls may go through it."""
        self.connection = proto
        service = self.service
        self.log.info(
            "service {name!r} registered {methods} methods and {events} subscriptions",
            name=service.service_name,
            methods=len(service.nswarm_methods),
            events=len(service.nswarm_events),
            nswarm_event="service_registered",
            implements=sorted(service.nswarm_methods),
            subscribes=sorted(service.nswarm_events),
        )
        if self.client_service is not None:
            # The ClientService takes the connection as this registration returns; until then it cannot stop.
            self._settled = False
            self.client_service.whenConnected().addBoth(self._settle)
        waiting, self._waiting = self._waiting, []
        for ready in waiting:
            ready.callback(None)

    def _settle(self, _: object) -> None:
        self._settled = True

    def lost(self, proto: ServiceProtocol) -> None:
        """C{proto}'s connection is gone; the ClientService reconnects."""
        if self.connection is proto:
            self.connection = None

    def stop(self, drain_timeout: float = defaults.DRAIN_TIMEOUT) -> Deferred[None]:
        """
        Withdraw the service's methods and events from its node, let the
        calls it is running finish (for at most C{drain_timeout} seconds),
        then disconnect and stop reconnecting.
        """
        client_service = self.client_service
        if client_service is None:
            return succeed(None)
        proto = self.connection
        if proto is None:
            return client_service.stopService()
        service = self.service
        self.log.info("service {name!r} draining", name=service.service_name, nswarm_event="service_draining")
        if service.nswarm_methods:
            proto.register(Unimplement, list(service.nswarm_methods), methods_part).addErrback(lambda _: None)
        if service.nswarm_events:
            proto.register(Unsubscribe, list(service.nswarm_events), events_part).addErrback(lambda _: None)
        drained = proto.when_idle(drain_timeout)
        return drained.addBoth(lambda _: self._stop_reconnecting(client_service))

    def _stop_reconnecting(self, client_service: ClientService) -> Deferred[None]:
        """
        Stop C{client_service}; if it has not yet taken the connection just
        registered (L{stop} was called from a L{ready} callback, say), once
        the reactor has let it.
        """
        if self._settled:
            return client_service.stopService()
        stopped: Deferred[None] = Deferred()
        self.reactor.callLater(0, lambda: client_service.stopService().chainDeferred(stopped))
        return stopped


class ServiceOptions(usage.Options):
    """
    The options every way of running a service takes (L{RunOptions},
    C{twistd nswarm-service}): its node's socket, its key and its drain.
    """

    optParameters = [
        ["config", "c", None, "client.conf whose [service] section gives the socket and key file", path],
        ["socket", None, None, "UNIX socket of the node's service server", path],
        ["auth-key-file", None, None, "File holding the service auth key", path],
        [
            "drain-timeout",
            None,
            defaults.DRAIN_TIMEOUT,
            "On stop, seconds to let calls in flight finish after withdrawing",
            float,
        ],
    ]

    def postOptions(self) -> None:
        settings = read_client_config(self["config"], "service") if self["config"] else {}
        socket = self["socket"] or settings.get("socket")
        key_file = self["auth-key-file"] or settings.get("auth-key-file")
        if not socket or not key_file:
            raise usage.UsageError("give --config DIR/client.conf, or --socket and --auth-key-file")
        self.socket: str = socket
        self.key = read_secret_file(key_file)


class RunOptions(ServiceOptions):
    """Options of L{nswarm.service.Service.main}."""

    optFlags = [
        ["json-log", None, "Log JSON events (one per line) to standard output instead of text, for log shippers"],
    ]


def run(cls: type[Service], argv: list[str] | None = None) -> None:
    """Run service class C{cls} until interrupted (see L{nswarm.service.Service.main})."""
    options = RunOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except (usage.UsageError, OSError, ValueError) as error:
        raise SystemExit(f"{sys.argv[0]}: {error}\n{options}")
    from twisted.internet import reactor

    observer = jsonFileLogObserver(sys.stdout) if options["json-log"] else textFileLogObserver(sys.stdout)
    globalLogBeginner.beginLoggingTo([observer])
    service = cls()
    reactor.callWhenRunning(service.start, reactor, options.socket, options.key)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: service.stop(options["drain-timeout"]))
    reactor.run()
