"""
A service's connection to its node: it runs the handlers of a L{Service}
for the calls and events the node sends, answers the calls, and tracks the
handlers still running so that a stopping service can drain.
"""

from __future__ import annotations

import contextvars
from inspect import iscoroutine
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from nswarm.amp_commands import HandlerFailed, NoSuchMethod
from nswarm.caller import current
from nswarm.client import ClientProtocol
from nswarm.core.events import CallReceived, CancelReceived, EventReceived, MoreReceived
from nswarm.core_protocol import call_handler
from nswarm.service_streams import STREAM_TYPES, Streamer

if TYPE_CHECKING:
    from nswarm.service import Service


class ServiceProtocol(ClientProtocol):
    """
    Dispatches the node's calls and events to C{service}'s handlers: each
    handler is looked up by name, and answered without a Deferred when it
    returns a plain value. C{clock} times drains.
    """

    log = Logger()
    peer = "node"

    def __init__(self, service: Service, clock: Any) -> None:
        super().__init__()
        self.service = service
        self.clock = clock
        #: Handlers still running, by the tag of the call they answer.
        self.running: dict[bytes, Deferred[Any]] = {}
        #: Streamed results being sent, by the tag of their call (see L{nswarm.service_streams}).
        self.streams: dict[bytes, Streamer] = {}
        self._idle: list[Deferred[None]] = []
        #: The L{nswarm.service_runner.ServiceRunner} that built this connection.
        self.factory: Any = None

    def cancel_received(self, cancel: CancelReceived) -> None:
        """The caller gave up on a call (or its deadline passed): cancel its handler."""
        tag = cancel.tag
        streamer = self.streams.pop(tag, None)
        if streamer is not None:
            streamer.close()
        running = self.running.pop(tag, None)
        if running is not None:
            running.cancel()
            self._handler_done(tag)

    def more_received(self, more: MoreReceived) -> None:
        """The caller of a streamed call took more parts: its generator may go on."""
        streamer = self.streams.get(more.tag)
        if streamer is not None:
            streamer.pump()

    def registered(self) -> None:
        """Registration on this connection succeeded: tell the runner (called on the protocol, not a proxy)."""
        self.factory.registered(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        streams, self.streams = self.streams, {}
        for streamer in streams.values():  # nobody reads them any more: close their generators
            streamer.close()
        if self.factory is not None:
            self.factory.lost(self)

    def when_idle(self, timeout: float) -> Deferred[None]:
        """Fires once no handler is running here, or after C{timeout} seconds."""
        if not self.running:
            return succeed(None)
        idle: Deferred[None] = Deferred()
        idle.addTimeout(timeout, self.clock, onTimeoutCancel=lambda result, timeout: None)
        self._idle.append(idle)
        return idle

    def _handler_done(self, tag: bytes) -> None:
        """The handler answering C{tag} has finished (or was cancelled)."""
        self.running.pop(tag, None)
        if self._idle and not self.running:
            self.write_pending()  # the answers go out before the drain goes on (it may close the connection)
            idle, self._idle = self._idle, []
            for waiting in idle:
                if not waiting.called:
                    waiting.callback(None)

    def call_received(self, call: CallReceived) -> None:
        """Run the handler a call asks for and send its answer (if the caller wants one)."""
        tag, method = call.tag, call.method
        service = self.service
        attribute = service.nswarm_methods.get(method)
        if attribute is None:
            error = NoSuchMethod(f"service {service.service_name!r} does not implement {method!r}: retry the call")
            self.core.fail(tag, error)
            self.flush()
            return
        token = current.set(call.caller)
        try:
            result = getattr(service, attribute)(*call.args, **call.kwargs)
            if iscoroutine(result):
                result = Deferred.fromCoroutine(result)  # runs in (a copy of) this context
            if (call.stream is not None or type(result) in STREAM_TYPES) and tag is not None:  # inline: every call
                self._stream(Streamer(self, tag, method, result, call.stream, contextvars.copy_context()))
                return
        except Exception:
            self._failed(Failure(), tag, method)
            return
        finally:
            current.reset(token)
        if isinstance(result, Deferred):
            if tag is not None:
                self.running[tag] = result
            result.addCallbacks(self._answer, self._failed, callbackArgs=(tag, method), errbackArgs=(tag, method))
        else:
            self._answer(result, tag, method)

    def _stream(self, streamer: Streamer) -> None:
        """Send a streamed (or gathered) result: the call counts as running until it ends."""
        self.streams[streamer.tag] = streamer
        self.running[streamer.tag] = streamer.done
        streamer.start()

    def stream_ended(self, tag: bytes, method: str, value: Any) -> None:
        """Stream C{tag} is over: answer C{value} (the gathered list), or end it (the parts were sent)."""
        self.streams.pop(tag, None)
        if self.core.streaming(tag):
            self.core.end(tag)
            self.flush()
            self._handler_done(tag)
        else:
            self._answer(value, tag, method)

    def stream_failed(self, tag: bytes) -> None:
        """A part of stream C{tag} could not be sent: the core has failed the call."""
        self.streams.pop(tag, None)
        self.flush()
        self._handler_done(tag)

    def stream_raised(self, tag: bytes, method: str, failure: Failure) -> None:
        """The generator of stream C{tag} raised: end the call as a failed handler."""
        self.streams.pop(tag, None)
        self._failed(failure, tag, method)

    def _answer(self, value: Any, tag: bytes | None, method: str) -> None:
        """
        Send a handler's result as the answer to call C{tag}, then mark the
        handler done (which, in a drain, may close the connection: the
        answer is written first).
        """
        if tag is None:
            return
        refused = self.core.answer(tag, value)
        if refused is not None:
            self.log.warn("the result of {method!r} was not sent: {error}", method=method, error=refused)
        self.flush()
        if self.running:
            self._handler_done(tag)

    def _failed(self, failure: Failure, tag: bytes | None, method: str) -> None:
        """Send a handler's exception as the L{HandlerFailed} answer to call C{tag}, then mark the handler done."""
        if tag is not None and tag not in self.running and failure.check(CancelledError):
            return  # cancelled by its caller or its deadline: the relay has answered
        self.log.failure("handler of {method!r} raised", failure, method=method)
        if tag is not None:
            self.core.fail(tag, HandlerFailed.from_exception(cast(BaseException, failure.value)))
            self.flush()
            self._handler_done(tag)

    def event_received(self, event: EventReceived) -> None:
        """Run every handler of an event."""
        name, value = event.event, event.payload
        service = self.service
        for attribute in service._handlers_of(name):  # handlers_for, without its call unless a subclass overrides it
            call_handler(getattr(service, attribute), name, value, self._event_failed, attribute, name)

    def _event_failed(self, failure: Failure, handler: str, event: str) -> None:
        self.log.failure("handler {handler} of event {event!r} raised", failure, handler=handler, event=event)
