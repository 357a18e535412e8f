"""
Streamed results on the service side of the Twisted SDK: a handler that
returns a generator or an async generator (or any handler, called with a
stream window) sends its values as L{nswarm.amp_commands.Part} boxes, never
more than the caller granted (its window, then each
L{nswarm.amp_commands.More}): the generator is not advanced while none is
left, so a slow reader holds its producer back. The answer that ends the
call is the number of parts. Called without a window, a generator
handler's parts are gathered and answered as one list. A Cancel (the
caller's, or a relay's at the deadline) closes the generator.

Each step of the generator runs in the context the handler was called in,
so that L{nswarm.caller.current_caller} still says who called.
"""

from __future__ import annotations

import contextvars
from inspect import isasyncgen, isgenerator
from types import AsyncGeneratorType, GeneratorType
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.protocols import amp
from twisted.python.failure import Failure

from nswarm import defaults
from nswarm.amp_commands import (
    COMMAND,
    ID,
    PART,
    RESULT,
    STREAM,
    HandlerFailed,
    InvalidRequest,
    NswarmError,
    PayloadTooLarge,
)
from nswarm.boxes import put_payload
from nswarm.codec import encode

if TYPE_CHECKING:
    from nswarm.service_protocol import ServiceProtocol


#: The types of a handler's result that is a stream of parts (generator types cannot be subclassed).
STREAM_TYPES = frozenset({GeneratorType, AsyncGeneratorType})


def is_stream(result: Any) -> bool:
    """Whether a handler's C{result} is a stream of parts (a generator or an async generator)."""
    return type(result) in STREAM_TYPES


def window_of(box: amp.AmpBox) -> int | None:
    """The stream window a Call box asks for (None: a plain call), or L{InvalidRequest} if it is not valid."""
    raw = box.get(STREAM)
    if raw is None:
        return None
    try:
        window = int(raw)
    except ValueError:
        window = 0
    if not 0 < window <= defaults.MAX_STREAM_WINDOW:
        raise InvalidRequest(
            f"the stream window must be 1 to {defaults.MAX_STREAM_WINDOW} parts: send it with an nswarm SDK"
        )
    return window


async def _next_of(source: Any) -> Any:
    return await source.__anext__()


async def _close(source: Any) -> None:
    await source.aclose()


class Streamer:
    """
    The parts of one call's result, on their way to its caller through
    C{protocol}: from C{source} (a generator, an async generator, or one
    value, maybe a Deferred), run in C{context}; within C{window} (None:
    gathered into one list answer). L{done} is what the protocol's
    C{running} holds for the call: cancelling it closes the source.
    """

    def __init__(
        self,
        protocol: ServiceProtocol,
        tag: bytes,
        method: str,
        source: Any,
        window: int | None,
        context: contextvars.Context,
    ) -> None:
        self.protocol = protocol
        self.tag = tag
        self.method = method
        self.source = source if is_stream(source) else iter([source])
        self.context = context
        self.window = window
        self.granted = window or 0
        self.sent = 0
        self.gathered: list[Any] = []
        self.finished = False
        self._stepping = False
        self.done: Deferred[None] = Deferred(lambda _: self.close())
        self.done.addErrback(lambda _: None)  # it only ever fails, with CancelledError, once cancelled

    def start(self) -> None:
        """Send the first parts."""
        self._pump()

    def more(self, count: int) -> None:
        """The caller takes C{count} more parts (at most a full window ahead of those sent)."""
        self.granted = min(self.granted + max(count, 0), self.sent + defaults.MAX_STREAM_WINDOW)
        self._pump()

    def close(self) -> None:
        """Cancelled (by its caller, or a relay at its deadline): close the source; nothing more is sent."""
        if self.finished:
            return
        self.finished = True
        source = self.source
        try:
            if isasyncgen(source):
                ensureDeferred(_close(source)).addErrback(self._close_failed)
            elif isgenerator(source):
                source.close()
        except Exception:
            self._close_failed(Failure())

    def _close_failed(self, failure: Failure) -> None:
        self.protocol.log.failure("closing the stream of {method!r} raised", failure, method=self.method)

    def _pump(self) -> None:
        """Advance the source while parts may be sent and no step is in progress."""
        while not self.finished and not self._stepping and (self.window is None or self.sent < self.granted):
            source = self.source
            try:
                if isasyncgen(source):
                    step = self.context.run(Deferred.fromCoroutine, _next_of(source))
                else:
                    step = self.context.run(next, source)
            except StopIteration:
                self._end()
                return
            except Exception:
                self._fail(Failure())
                return
            if isinstance(step, Deferred):
                self._stepping = True
                step.addCallbacks(self._stepped, self._step_failed)
                return
            self._send(step)

    def _stepped(self, value: Any) -> None:
        self._stepping = False
        if not self.finished:
            self._send(value)
            self._pump()

    def _step_failed(self, failure: Failure) -> None:
        self._stepping = False
        if self.finished:
            return
        if failure.check(StopAsyncIteration):
            self._end()
        else:
            self._fail(failure)

    def _send(self, value: Any) -> None:
        """Send part C{value} (or keep it, for a gathered answer)."""
        if self.window is None:
            self.gathered.append(value)
            return
        protocol = self.protocol
        try:
            box = amp.AmpBox({COMMAND: PART, ID: self.tag})
            put_payload(box, RESULT, protocol.checked(encode(value), "part"))
        except PayloadTooLarge as error:
            self._refuse(error)
            return
        except InvalidRequest:
            self._refuse(
                HandlerFailed(
                    f"InvalidResult: {self.method} yielded a {type(value).__name__}, which is not "
                    "JSON-compatible: yield JSON-compatible values"
                )
            )
            return
        self.sent += 1
        protocol.send(box)

    def _refuse(self, error: NswarmError) -> None:
        """A part could not be sent: close the source and end the call with C{error}."""
        self.close()
        self.protocol.log.warn("the stream of {method!r} ended: {error}", method=self.method, error=error)
        self.protocol.stream_failed(self.tag, error)

    def _end(self) -> None:
        self.finished = True
        self.protocol.stream_ended(self.tag, self.method, self.gathered if self.window is None else self.sent)

    def _fail(self, failure: Failure) -> None:
        self.finished = True
        self.protocol.stream_raised(self.tag, self.method, failure)
