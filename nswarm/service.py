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
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from nswarm import defaults
from nswarm.amp_commands import InvalidRequest, UpstreamUnavailable
from nswarm.caller import Caller, current_caller
from nswarm.relay.names import Matches, check_method, check_pattern

if TYPE_CHECKING:
    from twisted.application.internet import ClientService

    from nswarm.service_protocol import ServiceProtocol
    from nswarm.service_runner import ServiceRunner

__all__ = ["Caller", "Service", "current_caller", "implement", "subscribe"]

F = TypeVar("F", bound=Callable[..., Any])


@overload
def implement(name: F) -> F: ...
@overload
def implement(name: str | None = None, *, idempotent: bool = False, concurrency: int = 0) -> Callable[[F], F]: ...
def implement(name: Any = None, *, idempotent: bool = False, concurrency: int = 0) -> Any:
    """
    Mark a method of a L{Service} subclass as the handler of the cluster
    method C{name} (by default the function's own name). Use as C{@implement}
    or C{@implement("orders.create")}. With C{idempotent=True} (the handler
    is safe to run twice), a call lost with its service or node is retried
    once on another implementer, within its deadline. With C{concurrency=N},
    the service runs at most N calls of it at once: the master queues the
    others (or answers Overloaded when its queue is full).
    """
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 0:
        raise ValueError(f"concurrency must be a whole number, 0 (no limit) or more, not {concurrency!r}")
    if callable(name):
        return implement()(name)
    if name is not None and not isinstance(name, str):
        raise TypeError(
            f"@implement takes the cluster method's name as a string, not {type(name).__name__}: "
            "write @implement, or @implement('orders.create')"
        )

    def mark(function: F) -> F:
        method = name or function.__name__
        try:
            check_method(method)
        except InvalidRequest as error:
            raise ValueError(f"@implement on {function.__name__}: {error}") from None
        function.__nswarm_implements__ = method  # type: ignore[attr-defined]
        function.__nswarm_idempotent__ = idempotent  # type: ignore[attr-defined]
        function.__nswarm_concurrency__ = concurrency  # type: ignore[attr-defined]
        return function

    return mark


def subscribe(*events: str) -> Callable[[F], F]:
    """
    Mark a method of a L{Service} subclass as the handler of the events
    matching C{events}: C{handler(event, payload)}. A pattern's dot-separated
    tokens may be C{*} (any one token) or, last, C{>} (one or more).
    """
    if len(events) == 1 and callable(events[0]):
        raise TypeError(
            f"@subscribe needs the events to subscribe to: write @subscribe('orders.created') "
            f"above {getattr(events[0], '__name__', 'the handler')}, not a bare @subscribe"
        )
    if not events:
        raise TypeError("@subscribe needs at least one event: write @subscribe('orders.created')")
    for event in events:
        if not isinstance(event, str):
            raise TypeError(f"@subscribe takes event names as strings, not {type(event).__name__}: {event!r}")
        try:
            check_pattern(event)
        except InvalidRequest as error:
            raise ValueError(f"@subscribe({event!r}): {error}") from None

    def mark(function: F) -> F:
        function.__nswarm_subscribes__ = events  # type: ignore[attr-defined]
        return function

    return mark


class Service:
    """
    Base class of service applications. Subclass it, mark handlers with
    L{implement} and L{subscribe}, then L{start} it (or run it with L{main}).
    """

    log = Logger()
    #: The name the node logs this service by; the class name by default.
    name: ClassVar[str | None] = None
    #: Cluster method name -> name of the handler attribute (filled in from
    #: the decorators; prefixed so that a subclass's own attributes never clash).
    nswarm_methods: ClassVar[dict[str, str]] = {}
    #: Event pattern -> names of the handler attributes.
    nswarm_events: ClassVar[dict[str, list[str]]] = {}
    #: The cluster methods declared idempotent.
    nswarm_idempotent: ClassVar[frozenset[str]] = frozenset()
    #: Cluster method -> the most calls it runs at once (absent: no limit).
    nswarm_limits: ClassVar[dict[str, int]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.nswarm_methods = dict(cls.nswarm_methods)
        cls.nswarm_limits = dict(cls.nswarm_limits)
        idempotent = set(cls.nswarm_idempotent)
        cls.nswarm_events = {event: list(handlers) for event, handlers in cls.nswarm_events.items()}
        for attribute, value in vars(cls).items():
            method = getattr(value, "__nswarm_implements__", None)
            events = getattr(value, "__nswarm_subscribes__", ())
            if (method is not None or events) and hasattr(Service, attribute):
                raise TypeError(
                    f"{cls.__name__}.{attribute} would replace Service.{attribute}: "
                    f"give the handler another name (use @implement({attribute!r}) to keep the method name)"
                )
            if method is not None:
                cls.nswarm_methods[method] = attribute
                if getattr(value, "__nswarm_idempotent__", False):
                    idempotent.add(method)
                else:
                    idempotent.discard(method)
                cls.nswarm_limits[method] = getattr(value, "__nswarm_concurrency__", 0)
            for event in events:
                cls.nswarm_events.setdefault(event, []).append(attribute)
        cls.nswarm_idempotent = frozenset(idempotent)

    def __init__(self) -> None:
        #: What connects this service to its node, once started.
        self.runner: ServiceRunner | None = None
        self._handlers: Matches[str] = Matches(self.nswarm_events)

    @property
    def service_name(self) -> str:
        """The name this service registers with its node."""
        return self.name or type(self).__name__

    @property
    def connection(self) -> ServiceProtocol | None:
        """The registered connection to the node, if there is one now."""
        return self.runner.connection if self.runner is not None else None

    def handlers_for(self, event: str) -> list[str]:
        """The names of the handler attributes whose subscription matches C{event}."""
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
