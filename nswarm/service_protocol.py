"""
A service's connection to its node: it runs the handlers of a L{Service}
for the calls and events the node sends, answers the calls, and tracks the
handlers still running so that a stopping service can drain.
"""

from __future__ import annotations

import contextvars
from inspect import iscoroutine
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from nswarm.amp_commands import (
    ANSWER,
    ARGS,
    ASK,
    CALL,
    CALLER,
    CANCEL,
    COMMAND,
    COUNT,
    EVENT,
    ID,
    METHOD,
    MORE,
    PAYLOAD,
    PUBLISH,
    RESULT,
    STREAM,
    HandlerFailed,
    InvalidRequest,
    NoSuchMethod,
    NswarmError,
    PayloadTooLarge,
)
from nswarm.boxes import error_box, get_payload, put_payload
from nswarm.caller import Caller, current
from nswarm.client import ClientProtocol
from nswarm.codec import decode, decode_arguments, encode
from nswarm.service_streams import STREAM_TYPES, Streamer, window_of

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
        self._callers: dict[bytes | None, Caller | None] = {}
        #: The L{nswarm.service_runner.ServiceRunner} that built this connection.
        self.factory: Any = None

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        command = box.get(COMMAND)
        if command == CALL:
            self._call_received(box)
        elif command == PUBLISH:
            self._event_received(box)
        elif command == CANCEL:
            tag = box.get(ID, b"")
            self.streams.pop(tag, None)
            running = self.running.pop(tag, None)
            if running is not None:
                running.cancel()
                self._handler_done(tag)
        elif command == MORE:
            streamer = self.streams.get(box.get(ID, b""))
            if streamer is not None:
                try:
                    streamer.more(int(box.get(COUNT, b"")))
                except ValueError:
                    pass  # not from an nswarm SDK: nothing granted
        else:
            super().ampBoxReceived(box)

    def registered(self) -> None:
        """Registration on this connection succeeded: tell the runner (called on the protocol, not a proxy)."""
        self.factory.registered(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
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
            idle, self._idle = self._idle, []
            for waiting in idle:
                if not waiting.called:
                    waiting.callback(None)

    def _caller(self, stamp: bytes) -> Caller | None:
        """The caller a stamp names, parsed once per stamp (up to a thousand are remembered)."""
        if len(self._callers) > 1000:
            self._callers.clear()
        known = self._callers[stamp] = Caller.from_stamp(stamp)
        return known

    def _call_received(self, box: amp.AmpBox) -> None:
        """Run the handler a Call box asks for and send its answer (if the box asks for one)."""
        tag = box.get(ASK)
        service = self.service
        try:
            method = box[METHOD].decode("utf-8")
            attribute = service.nswarm_methods.get(method)
            if attribute is None:
                raise NoSuchMethod(f"service {service.service_name!r} does not implement {method!r}: retry the call")
            positional, keywords = decode_arguments(get_payload(box, ARGS))
            window = window_of(box) if STREAM in box else None
        except (NswarmError, KeyError, UnicodeDecodeError) as error:
            if tag is not None:
                if not isinstance(error, NswarmError):
                    error = InvalidRequest("the call has no UTF-8 method name: send it with an nswarm SDK")
                self.send(error_box(tag, error))
            return
        stamp = box.get(CALLER)
        caller = self._callers.get(stamp)
        if caller is None and stamp:
            caller = self._caller(stamp)
        token = current.set(caller)
        try:
            result = getattr(service, attribute)(*positional, **keywords)
            if iscoroutine(result):
                result = Deferred.fromCoroutine(result)  # runs in (a copy of) this context
            if (window is not None or type(result) in STREAM_TYPES) and tag is not None:  # inline: every call
                self._stream(Streamer(self, tag, method, result, window, contextvars.copy_context()))
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
        """Stream C{tag} is over: answer C{value} (the number of parts, or the gathered list)."""
        self.streams.pop(tag, None)
        self._answer(value, tag, method)

    def stream_failed(self, tag: bytes, error: NswarmError) -> None:
        """A part of stream C{tag} could not be sent: end the call with C{error}."""
        self.streams.pop(tag, None)
        self.send(error_box(tag, error))
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
        try:
            reply = amp.AmpBox({ANSWER: tag})
            put_payload(reply, RESULT, self.checked(encode(value), "result"))
        except PayloadTooLarge as error:
            self.log.warn("the result of {method!r} was not sent: {error}", method=method, error=error)
            reply = error_box(tag, error)
        except InvalidRequest as error:
            self.log.warn("the result of {method!r} was not sent: {error}", method=method, error=error)
            reply = error_box(
                tag,
                HandlerFailed(
                    f"InvalidResult: {method} returned a {type(value).__name__}, "
                    "which is not JSON-compatible: return JSON-compatible values"
                ),
            )
        self.send(reply)
        if self.running:
            self._handler_done(tag)

    def _failed(self, failure: Failure, tag: bytes | None, method: str) -> None:
        """Send a handler's exception as the L{HandlerFailed} answer to call C{tag}, then mark the handler done."""
        if tag is not None and tag not in self.running and failure.check(CancelledError):
            return  # cancelled by its caller or its deadline: the relay has answered
        self.log.failure("handler of {method!r} raised", failure, method=method)
        if tag is not None:
            self.send(error_box(tag, HandlerFailed.from_exception(cast(BaseException, failure.value))))
            self._handler_done(tag)

    def _event_received(self, box: amp.AmpBox) -> None:
        """Run every handler of the event in a Publish box."""
        tag = box.get(ASK)
        if tag is not None:
            self.send(amp.AmpBox({ANSWER: tag}))
        try:
            event = box[EVENT].decode("utf-8")
            value = decode(get_payload(box, PAYLOAD))
        except (NswarmError, KeyError, UnicodeDecodeError):
            self.log.warn("dropped an event that is not valid: it was not sent by an nswarm SDK")
            return

        def failed(failure: Failure, handler: str) -> None:
            self.log.failure("handler {handler} of event {event!r} raised", failure, handler=handler, event=event)

        service = self.service
        for attribute in service.handlers_for(event):  # the handlers whose subscription matches
            maybeDeferred(getattr(service, attribute), event, value).addErrback(failed, attribute)
