"""
The SDK for service applications. A service is a subclass of L{Service}
that marks the methods it implements and the events it subscribes to; it
connects to its node's UNIX socket, reconnecting whenever the node restarts::

    class Greeter(Service):
        @implement
        def greet(self, name):
            return f"hello {name}"

        @subscribe("orders.created")
        def order_created(self, event, order):
            print("new order", order["id"])

    if __name__ == "__main__":
        Greeter.main()      # python greeter.py --config DIR/client.conf

Handlers may return a value, a Deferred, or be C{async def}; arguments and
results are JSON values. A handler's exception reaches the caller as
L{nswarm.amp_commands.HandlerFailed}. A service may itself L{Service.call}
and L{Service.publish} through its node.

This module holds what a user writes against: the decorators and the base
class, a plain holder of handlers. L{nswarm.service_protocol} dispatches
calls and events to them; L{nswarm.service_runner} connects, registers,
reconnects, drains and runs C{main}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from nswarm import defaults
from nswarm.amp_commands import UpstreamUnavailable
from nswarm.caller import Caller, current_caller
from nswarm.core.handlers import Handlers, implement, subscribe
from nswarm.relay.names import Matches
from nswarm.streams import Stream

if TYPE_CHECKING:
    from twisted.application.internet import ClientService

    from nswarm.service_protocol import ServiceProtocol
    from nswarm.service_runner import ServiceRunner

__all__ = ["Caller", "Service", "current_caller", "implement", "subscribe"]


class Service(Handlers):
    """
    Base class of service applications. Subclass it, mark handlers with
    L{implement} and L{subscribe}, then L{start} it (or run it with L{main}).
    """

    log = Logger()
    nswarm_sdk = True

    def __init__(self) -> None:
        #: What connects this service to its node, once started.
        self.runner: ServiceRunner | None = None
        self._handlers: Matches[str] = Matches(self.nswarm_events)
        #: What the service protocol looks an event's handlers up with, once per event: the matcher itself, or
        #: L{handlers_for} where a subclass overrides it.
        self._handlers_of: Callable[[str], list[str]] = (
            self._handlers if type(self).handlers_for is Service.handlers_for else self.handlers_for
        )

    @property
    def service_name(self) -> str:
        """The name this service registers with its node."""
        return self.name or type(self).__name__

    @property
    def connection(self) -> ServiceProtocol | None:
        """The registered connection to the node, if there is one now."""
        return self.runner.connection if self.runner is not None else None

    def handlers_for(self, event: str) -> list[str]:
        """
        The names of the handler attributes whose subscription matches
        C{event}. A subclass may override it, for instance to give one
        handler the events of patterns it subscribes to after registering.
        """
        return self._handlers(event)

    # -- running -------------------------------------------------------------

    def start(
        self,
        reactor: Any,
        socket: str,
        key: bytes,
        max_delay: float = defaults.SERVICE_RECONNECT_MAX_DELAY,
        heartbeat: float = defaults.HEARTBEAT,
        lost_max_delay: float = defaults.RECONNECT_LOST_MAX_DELAY,
        auth_timeout: float = defaults.CLIENT_AUTH_TIMEOUT,
    ) -> ClientService:
        """
        Connect to the node's service server at UNIX socket C{socket} with the
        service auth C{key}, register, and keep reconnecting whenever the
        connection is lost or cannot be made: with backoff, at most
        C{max_delay} seconds apart until it has been connected, at most
        C{lost_max_delay} seconds apart once it was connected and is lost. A
        node that does not answer the authentication within C{auth_timeout}
        seconds costs an attempt. L{ready} fires once registered.
        """
        from nswarm.service_runner import ServiceRunner

        self.runner = ServiceRunner(self, reactor, key, heartbeat)
        return self.runner.start(socket, max_delay, lost_max_delay, auth_timeout)

    def ready(self) -> Deferred[None]:
        """Fires once this service is connected to its node and registered."""
        if self.runner is None:
            return fail(RuntimeError(f"service {self.service_name!r} is not started: call start() first"))
        return self.runner.ready()

    def stop(self, drain_timeout: float = defaults.DRAIN_TIMEOUT) -> Deferred[None]:
        """
        Withdraw this service's methods and events from its node, let the
        calls it is running finish (for at most C{drain_timeout} seconds),
        then disconnect and stop reconnecting.
        """
        if self.runner is None:
            return succeed(None)
        return self.runner.stop(drain_timeout)

    @classmethod
    def main(cls, argv: list[str] | None = None) -> None:
        """
        Run this service until interrupted, logging to standard output:
        C{python my_service.py --config DIR/client.conf}, or C{--socket} and
        C{--auth-key-file} instead of C{--config}. On SIGTERM or Ctrl-C it
        drains (see L{stop}) before it exits.
        """
        from nswarm.service_runner import run

        run(cls, argv)

    # -- calls and events ----------------------------------------------------

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Call C{method} on some service in the cluster, through this service's node."""
        connection = self.connection
        if connection is None:
            return fail(self._not_connected())
        return connection.call(method, *args, **kwargs)

    def stream(self, method: str, /, *args: Any, **kwargs: Any) -> Stream:
        """Call C{method}, which streams its result, through the node (see L{nswarm.client.ClientProtocol.stream})."""
        connection = self.connection
        if connection is None:
            stream = Stream(1)
            stream.started(fail(self._not_connected()))
            return stream
        return connection.stream(method, *args, **kwargs)

    def call_all(self, method: str, /, *args: Any, **kwargs: Any) -> Deferred[list[Any]]:
        """Call C{method} on every implementer (see L{nswarm.client.ClientProtocol.call_all}), through the node."""
        connection = self.connection
        if connection is None:
            return fail(self._not_connected())
        return connection.call_all(method, *args, **kwargs)

    def call_with_timeout(self, timeout: float, method: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """L{call} with a deadline C{timeout} seconds away (see L{nswarm.client.ClientProtocol.call_with_timeout})."""
        connection = self.connection
        if connection is None:
            return fail(self._not_connected())
        return connection.call_with_timeout(timeout, method, *args, **kwargs)

    def publish(self, event: str, payload: Any = None, *, exclude_self: bool = False) -> Deferred[None]:
        """
        Publish C{event} with a JSON-compatible C{payload}, through this
        service's node; with C{exclude_self}, this service's own
        subscriptions do not receive it.
        """
        connection = self.connection
        if connection is None:
            return fail(self._not_connected())
        return connection.publish(event, payload, exclude_self=exclude_self)

    def _not_connected(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"service {self.service_name!r} is not connected to its node: "
            "check that the node runs; the service keeps reconnecting"
        )
