"""
The SDK for service applications. A service is a subclass of L{Service} (an
AMP client factory) that marks the methods it implements and the events it
subscribes to; it connects to its node's UNIX socket, reconnecting whenever
the node restarts:

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
"""

from __future__ import annotations

import sys
from inspect import iscoroutine
from typing import Any, Callable, ClassVar, TypeVar, cast, overload

from twisted.application.internet import ClientService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.protocols import amp
from twisted.python import usage
from twisted.python.failure import Failure

from nswarm._boxes import DEFAULT_HEARTBEAT
from nswarm._client import (
    ANSWER,
    ASK,
    CALL,
    CANCEL,
    COMMAND,
    PUBLISH,
    ClientProtocol,
    decode,
    decode_arguments,
    encode,
    reconnecting,
)
from nswarm.amp_commands import (
    HandlerFailed,
    Implement,
    InvalidRequest,
    NoSuchMethod,
    NswarmError,
    PayloadTooLarge,
    Subscribe,
    Unimplement,
    Unsubscribe,
    UpstreamUnavailable,
    error_box,
    get_payload,
    put_payload,
)
from nswarm.config import path, read_client_config, read_secret_file
from nswarm.routing import Matches

__all__ = ["Service", "implement", "subscribe"]

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
    if concurrency < 0:
        raise ValueError("concurrency must be 0 (no limit) or more")

    def mark(function: F) -> F:
        function.__nswarm_concurrency__ = concurrency  # type: ignore[attr-defined]
        function.__nswarm_implements__ = name or function.__name__  # type: ignore[attr-defined]
        function.__nswarm_idempotent__ = idempotent  # type: ignore[attr-defined]
        return function

    if callable(name):
        function, name = name, None
        return mark(function)
    return mark


def subscribe(*events: str) -> Callable[[F], F]:
    """Mark a method of a L{Service} subclass as the handler of C{events}: C{handler(event, payload)}."""

    def mark(function: F) -> F:
        function.__nswarm_subscribes__ = events  # type: ignore[attr-defined]
        return function

    return mark


class ServiceProtocol(ClientProtocol):
    """A service's connection to its node: dispatches calls and events to the L{Service}."""

    peer = "node"

    def __init__(self, service: Service) -> None:
        super().__init__()
        self.service = service
        #: Handlers still running, by the tag of the call they answer.
        self.running: dict[bytes, Deferred[Any]] = {}
        self._idle: list[Deferred[None]] = []
        #: The reactor, once the service is started (for drain timeouts).
        self.clock: Any = None

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        # Calls and events are dispatched straight from their boxes (the
        # handler is looked up by name; no Command object, and no Deferred
        # when the handler answers at once).
        command = box.get(COMMAND)
        if command == CALL:
            self.service._call_received(self, box)
        elif command == PUBLISH:
            self.service._event_received(self, box)
        elif command == CANCEL:
            tag = box.get(b"id", b"")
            running = self.running.pop(tag, None)
            if running is not None:
                running.cancel()
                self.handler_done(tag)
        else:
            super().ampBoxReceived(box)

    def when_idle(self, timeout: float) -> Deferred[None]:
        """Fires once no handler is running here, or after C{timeout} seconds."""
        if not self.running or self.clock is None:
            return succeed(None)
        idle: Deferred[None] = Deferred()
        idle.addTimeout(timeout, self.clock, onTimeoutCancel=lambda result, timeout: None)
        self._idle.append(idle)
        return idle

    def handler_done(self, tag: bytes) -> None:
        """The handler answering C{tag} has finished (or was cancelled)."""
        self.running.pop(tag, None)
        if self._idle and not self.running:
            idle, self._idle = self._idle, []
            for waiting in idle:
                if not waiting.called:
                    waiting.callback(None)

    def registered(self) -> None:
        """This connection is registered with the node: calls may go through it."""
        self.service.connection = self
        waiting, self.service._waiting = self.service._waiting, []
        for ready in waiting:
            ready.callback(None)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.service._connection_lost(self)


class Service(ClientFactory):
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
    #: Event name -> names of the handler attributes.
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
        self.connection: ServiceProtocol | None = None
        self.client_service: ClientService | None = None
        self._waiting: list[Deferred[None]] = []
        self._handlers: Matches[str] = Matches(self.nswarm_events)

    def ready(self) -> Deferred[None]:
        """Fires once this service is connected to its node and registered."""
        if self.connection is not None:
            return succeed(None)
        ready: Deferred[None] = Deferred()
        self._waiting.append(ready)
        return ready

    @property
    def service_name(self) -> str:
        return self.name or type(self).__name__

    def buildProtocol(self, addr: Any) -> ServiceProtocol:
        proto = ServiceProtocol(self)
        proto.factory = self
        return proto

    # -- running -------------------------------------------------------------

    def start(
        self, reactor: Any, socket: str, key: bytes, max_delay: float = 5.0, heartbeat: float = DEFAULT_HEARTBEAT
    ) -> ClientService:
        """
        Connect to the node's service server at UNIX socket C{socket} with the
        service auth C{key}, register, and keep reconnecting (with backoff, at
        most C{max_delay} seconds apart) whenever the connection is lost.
        L{ready} fires once registered.
        """
        self.client_service = reconnecting(
            reactor,
            UNIXClientEndpoint(reactor, socket),
            self,
            lambda proto: self._register(proto, key, reactor, heartbeat),
            f"service {self.service_name!r} (check the socket path and the service auth key)",
            max_delay,
        )
        self.client_service.startService()
        return self.client_service

    def stop(self, drain_timeout: float = 10.0) -> Deferred[None]:
        """
        Withdraw this service's methods and events from its node, let the
        calls it is running finish (for at most C{drain_timeout} seconds),
        then disconnect and stop reconnecting.
        """
        if self.client_service is None:
            return succeed(None)
        client_service = self.client_service
        proto = self.connection
        if proto is None:
            return client_service.stopService()
        self.log.info("service {name!r} draining", name=self.service_name)
        for command, names in ((Unimplement, list(self.nswarm_methods)), (Unsubscribe, list(self.nswarm_events))):
            if names:
                argument = "methods" if command is Unimplement else "events"
                proto.callRemote(command, **{argument: names}).addErrback(lambda _: None)
        drained = proto.when_idle(drain_timeout)
        return drained.addBoth(lambda _: client_service.stopService())

    def _register(
        self, proto: ServiceProtocol, key: bytes, clock: Any = None, heartbeat: float = DEFAULT_HEARTBEAT
    ) -> Deferred[None]:
        def registered(_: object) -> None:
            # ClientService hands us a proxy: the protocol records itself.
            proto.registered()
            if clock is not None:
                proto.clock = clock
                proto.start_heartbeats(clock, heartbeat)
            self.log.info(
                "service {name!r} registered {methods} and {events}",
                name=self.service_name,
                methods=sorted(self.nswarm_methods),
                events=sorted(self.nswarm_events),
            )

        d: Deferred[Any] = proto.authenticate(key, self.service_name)
        if self.nswarm_methods:
            d.addCallback(
                lambda _: proto.callRemote(
                    Implement,
                    methods=list(self.nswarm_methods),
                    idempotent=sorted(self.nswarm_idempotent),
                    limits=[self.nswarm_limits.get(method, 0) for method in self.nswarm_methods],
                )
            )
        if self.nswarm_events:
            d.addCallback(lambda _: proto.callRemote(Subscribe, events=list(self.nswarm_events)))
        return d.addCallback(registered)

    def _connection_lost(self, proto: ServiceProtocol) -> None:
        if self.connection is proto:
            self.connection = None

    @classmethod
    def main(cls, argv: list[str] | None = None) -> None:
        """
        Run this service until interrupted, logging to standard output:
        C{python my_service.py --config DIR/client.conf}, or C{--socket} and
        C{--auth-key-file} instead of C{--config}.
        """
        options = RunOptions()
        try:
            options.parseOptions(sys.argv[1:] if argv is None else argv)
        except (usage.UsageError, OSError, ValueError) as error:
            raise SystemExit(f"{sys.argv[0]}: {error}\n{options}")
        from twisted.internet import reactor

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
        service = cls()
        reactor.callWhenRunning(service.start, reactor, options.socket, options.key)
        reactor.addSystemEventTrigger("before", "shutdown", service.stop)
        reactor.run()

    # -- calls and events ----------------------------------------------------

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Call C{method} on some service in the cluster, through this service's node."""
        if self.connection is None:
            return fail(self._not_connected())
        return self.connection.call(method, *args, **kwargs)

    def call_all(self, method: str, /, *args: Any, **kwargs: Any) -> Deferred[list[Any]]:
        """Call C{method} on every implementer (see L{ClientProtocol.call_all}), through this service's node."""
        if self.connection is None:
            return fail(self._not_connected())
        return self.connection.call_all(method, *args, **kwargs)

    def call_with_timeout(self, timeout: float, method: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """L{call} with a deadline C{timeout} seconds away (see L{ClientProtocol.call_with_timeout})."""
        if self.connection is None:
            return fail(self._not_connected())
        return self.connection.call_with_timeout(timeout, method, *args, **kwargs)

    def publish(self, event: str, payload: Any = None, *, exclude_self: bool = False) -> Deferred[None]:
        """
        Publish C{event} with a JSON-compatible C{payload}, through this
        service's node; with C{exclude_self}, this service's own
        subscriptions do not receive it.
        """
        if self.connection is None:
            return fail(self._not_connected())
        return self.connection.publish(event, payload, exclude_self=exclude_self)

    def _not_connected(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"service {self.service_name!r} is not connected to its node: "
            "check that the node runs; the service keeps reconnecting"
        )

    def _call_received(self, proto: ServiceProtocol, box: amp.AmpBox) -> None:
        """Run the handler a Call box asks for and send its answer (if the box asks for one)."""
        tag = box.get(ASK)
        try:
            method = box[b"method"].decode("utf-8")
            attribute = self.nswarm_methods.get(method)
            if attribute is None:
                raise NoSuchMethod(f"service {self.service_name!r} does not implement {method!r}: retry the call")
            positional, keywords = decode_arguments(get_payload(box, b"args"))
        except (NswarmError, KeyError, UnicodeDecodeError) as error:
            if tag is not None:
                proto.send(error_box(tag, error if isinstance(error, NswarmError) else InvalidRequest(
                    "the call has no UTF-8 method name: send it with an nswarm SDK"
                )))
            return
        try:
            result = getattr(self, attribute)(*positional, **keywords)
        except Exception:
            self._failed(Failure(), proto, tag, method)
            return
        if iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            if tag is not None:
                proto.running[tag] = result
            result.addCallbacks(
                self._answer, self._failed, callbackArgs=(proto, tag, method), errbackArgs=(proto, tag, method)
            )
        else:
            self._answer(result, proto, tag, method)

    def _answer(self, value: Any, proto: ServiceProtocol, tag: bytes | None, method: str) -> None:
        """Send a handler's result as the answer to call C{tag}."""
        if tag is None:
            return
        if proto.running:
            proto.handler_done(tag)
        try:
            data = proto._checked(encode(value), "result")
        except PayloadTooLarge as error:
            proto.send(error_box(tag, error))
            return
        except InvalidRequest:
            proto.send(error_box(tag, HandlerFailed(
                f"InvalidResult: {method} returned a {type(value).__name__}, "
                "which is not JSON-compatible: return JSON-compatible values"
            )))
            return
        reply = amp.AmpBox({ANSWER: tag})
        put_payload(reply, b"result", data)
        proto.send(reply)

    def _failed(self, failure: Failure, proto: ServiceProtocol, tag: bytes | None, method: str) -> None:
        """Send a handler's exception as the L{HandlerFailed} answer to call C{tag}."""
        if tag is not None and tag not in proto.running and failure.check(CancelledError):
            return  # cancelled by its caller or its deadline: the relay has answered
        if tag is not None:
            proto.handler_done(tag)
        self.log.failure("handler of {method!r} raised", failure, method=method)
        if tag is not None:
            proto.send(error_box(tag, HandlerFailed.from_exception(cast(BaseException, failure.value))))

    def _event_received(self, proto: ServiceProtocol, box: amp.AmpBox) -> None:
        """Run every handler of the event in a Publish box."""
        tag = box.get(ASK)
        if tag is not None:
            proto.send(amp.AmpBox({ANSWER: tag}))
        try:
            event = box[b"event"].decode("utf-8")
            value = decode(get_payload(box, b"payload"))
        except (NswarmError, KeyError, UnicodeDecodeError):
            self.log.warn("dropped an event that is not valid: it was not sent by an nswarm SDK")
            return

        def failed(failure: Failure, handler: str) -> None:
            self.log.failure("handler {handler} of event {event!r} raised", failure, handler=handler, event=event)

        for attribute in self._handlers(event):  # the handlers whose subscription matches
            maybeDeferred(getattr(self, attribute), event, value).addErrback(failed, attribute)


class RunOptions(usage.Options):
    """Options of L{Service.main}."""

    optParameters = [
        ["config", "c", None, "client.conf whose [service] section gives the socket and key file", path],
        ["socket", None, None, "UNIX socket of the node's service server", path],
        ["auth-key-file", None, None, "File holding the service auth key", path],
    ]

    def postOptions(self) -> None:
        settings = read_client_config(self["config"], "service") if self["config"] else {}
        socket = self["socket"] or settings.get("socket")
        key_file = self["auth-key-file"] or settings.get("auth-key-file")
        if not socket or not key_file:
            raise usage.UsageError("give --config DIR/client.conf, or --socket and --auth-key-file")
        self.socket: str = socket
        self.key = read_secret_file(key_file)
