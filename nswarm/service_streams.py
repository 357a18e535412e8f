"""
Streamed results on the service side of the Twisted SDK: a handler that
returns a generator or an async generator (or any handler, called with a
stream window) sends its values as parts through the sans-IO core
(L{nswarm.core.running}), never more than the caller granted (its window,
then each C{More}): the generator is not advanced while the core's credit
is spent, so a slow reader holds its producer back. The answer that ends the
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
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from nswarm.service_protocol import ServiceProtocol


#: The types of a handler's result that is a stream of parts (generator types cannot be subclassed).
STREAM_TYPES = frozenset({GeneratorType, AsyncGeneratorType})


def is_stream(result: Any) -> bool:
    """Whether a handler's C{result} is a stream of parts (a generator or an async generator)."""
    return type(result) in STREAM_TYPES


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
        self.sent = 0
        self.gathered: list[Any] = []
        self.finished = False
        self._stepping = False
        self.done: Deferred[None] = Deferred(lambda _: self.close())
        self.done.addErrback(lambda _: None)  # it only ever fails, with CancelledError, once cancelled

    def start(self) -> None:
        """Send the first parts."""
        self._pump()

    def pump(self) -> None:
        """The caller took more parts: go on while the connection's credit allows."""
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
        credit = self.protocol.core.credit
        while not self.finished and not self._stepping and (self.window is None or credit(self.tag) > 0):
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
        if protocol.core.part(self.tag, value):
            self.sent += 1
            protocol.flush()
            return
        # Over the payload limit or not JSON: the core has failed the call with that error.
        self.close()
        protocol.log.warn(
            "the stream of {method!r} ended: part {number} is over the payload limit or not JSON-compatible",
            method=self.method,
            number=self.sent + 1,
        )
        protocol.stream_failed(self.tag)

    def _end(self) -> None:
        self.finished = True
        self.protocol.stream_ended(self.tag, self.method, self.gathered if self.window is None else self.sent)

    def _fail(self, failure: Failure) -> None:
        self.finished = True
        self.protocol.stream_raised(self.tag, self.method, failure)
