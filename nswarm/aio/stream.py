"""
A streamed result, for asyncio: the parts of one call as an async
iterator, in order, as they arrive::

    async with client.stream("count", 100, window=8) as parts:
        async for part in parts:
            print(part)

The call goes out on the first C{__anext__} (or on entering C{async with}).
At most C{window} parts wait here: the service produces the next ones only
once this end has taken some (the core sends C{More}). The stream ends when
the service's handler does; a typed error (L{PayloadTooLarge} for a part
over the limit, L{HandlerFailed}, L{DeadlineExceeded} once the call's
timeout has passed: it covers the whole stream) is raised after the parts
that came before it. Closing the stream early (C{aclose}, leaving the
C{async with}, cancelling the task that waits for a part, or dropping an
unfinished stream) cancels the call, and the service closes its generator.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from nswarm import defaults
from nswarm.aio.protocol import CoreProtocol
from nswarm.core.connection import Connection
from nswarm.core.events import Answered, Failed, PartReceived

__all__ = ["Stream"]


class Stream:
    """
    The parts of one streamed call (make it with
    L{nswarm.aio.Client.stream}). C{count} is the number of parts the
    service sent, once the stream has ended.
    """

    def __init__(
        self,
        connection: Callable[[float], Awaitable[CoreProtocol]],
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        window: int | None = None,
        timeout: float = defaults.CALL_TIMEOUT,
    ) -> None:
        window = defaults.STREAM_WINDOW if window is None else window
        if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= defaults.MAX_STREAM_WINDOW:
            raise ValueError(f"window must be a whole number from 1 to {defaults.MAX_STREAM_WINDOW}, not {window!r}")
        self.method, self.window, self.timeout = method, window, float(timeout)
        self.count: int | None = None
        self._connection = connection
        self._args, self._kwargs = args, kwargs
        self._parts: deque[Any] = deque()
        #: Once the stream is over: StopAsyncIteration, or the error to raise (once) after the parts.
        self._end: BaseException | None = None
        self._started = False
        self._protocol: CoreProtocol | None = None
        self._tag: bytes | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> Stream:
        """Send the call (once), waiting within its deadline for a connection if there is none yet."""
        if self._started:
            return self
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            protocol = await self._connection(deadline)
        except BaseException:
            self._end = StopAsyncIteration()
            raise
        left = max(deadline - loop.time(), 0.001)

        def send(core: Connection) -> bytes:
            return core.call(self.method, self._args, self._kwargs, timeout=left, stream=self.window)

        event = weakref.WeakMethod(self._event)  # the connection must not keep a stream dropped unfinished alive

        def on_event(happened: PartReceived | Answered | Failed) -> None:
            method = event()
            if method is not None:
                method(happened)

        try:
            self._tag = protocol.open_stream(send, on_event)
        except BaseException:
            self._end = StopAsyncIteration()
            raise
        self._protocol = protocol
        return self

    def _event(self, event: PartReceived | Answered | Failed) -> None:
        if isinstance(event, PartReceived):
            self._parts.append(event.value)
        elif isinstance(event, Answered):
            self.count = event.value
            self._end = StopAsyncIteration()
        else:
            self._end = event.error
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        """The next part; StopAsyncIteration at the end; the call's typed error after the parts before it."""
        if not self._started:
            await self.start()
        while True:
            if self._parts:
                value = self._parts.popleft()
                if self._protocol is not None and self._tag is not None and self._end is None:
                    self._protocol.consumed(self._tag)
                return value
            end = self._end
            if end is not None:
                if not isinstance(end, StopAsyncIteration):
                    self._end = StopAsyncIteration()
                raise end
            assert self._loop is not None
            self._wakeup = self._loop.create_future()
            try:
                await self._wakeup
            except asyncio.CancelledError:
                await self.aclose()
                raise

    @property
    def closed(self) -> bool:
        """Whether the stream is over: ended, failed or closed."""
        return self._end is not None and not self._parts

    async def aclose(self) -> None:
        """Stop reading: if the call has not ended, cancel it (the service closes its generator)."""
        self._parts.clear()
        if self._end is None:
            self._end = StopAsyncIteration()
            if self._protocol is not None and self._tag is not None:
                self._protocol.close_stream(self._tag)
        self._started = True

    async def __aenter__(self) -> Stream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        protocol, tag, loop = (
            getattr(self, "_protocol", None),
            getattr(self, "_tag", None),
            getattr(self, "_loop", None),
        )
        if getattr(self, "_end", None) is None and protocol is not None and tag is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(protocol.close_stream, tag)
            except RuntimeError:  # the loop is closed: so is the connection
                pass
