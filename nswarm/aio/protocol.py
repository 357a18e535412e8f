"""
The asyncio adapter of the sans-IO core: an C{asyncio.Protocol} that feeds
a L{nswarm.core.connection.Connection} the bytes it reads and the loop's
time, writes what it has to send, keeps one timer at the time the core
asks for, and turns the core's events into futures resolved and callbacks
called. Nothing here decides anything the core decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nswarm.core.connection import Connection
from nswarm.core.events import (
    Answered,
    CallReceived,
    CancelReceived,
    ConnectionClosed,
    EventReceived,
    Failed,
    MoreReceived,
    PartReceived,
    TimerWanted,
)
from nswarm.errors import Draining, UpstreamUnavailable


class CoreProtocol(asyncio.Protocol):
    """
    One connection. C{on_call}, C{on_event}, C{on_cancel} and C{on_more}
    receive the core's L{CallReceived}, L{EventReceived}, L{CancelReceived}
    and L{MoreReceived}; C{lost} (a future) is resolved once the connection
    is gone.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        on_call: Callable[[CallReceived], None] | None = None,
        on_event: Callable[[EventReceived], None] | None = None,
        on_cancel: Callable[[CancelReceived], None] | None = None,
        on_more: Callable[[MoreReceived], None] | None = None,
    ) -> None:
        self.core = connection
        self.loop = asyncio.get_running_loop()
        self.on_call = on_call
        self.on_event = on_event
        self.on_cancel = on_cancel
        self.on_more = on_more
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = self.loop.create_future()
        #: Set once the peer answered a request L{Draining}: new requests go elsewhere.
        self.draining = False
        self._futures: dict[bytes, asyncio.Future[Any]] = {}
        #: Streamed calls made: tag -> what takes their parts and their end (PartReceived, Answered, Failed).
        self._streams: dict[bytes, Callable[[Any], None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The transport is up: keep it."""
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Bytes from the peer: to the core, then act on what it says."""
        self.core.receive_data(data, self.loop.time())
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone: every request waiting fails (L{UpstreamUnavailable})."""
        self.transport = None
        self.core.connection_lost()
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.lost.done():
            self.lost.set_result(None)

    # -- requests ----------------------------------------------------------------

    async def request(self, send: Callable[[Connection], bytes]) -> Any:
        """
        Send the request C{send(core)} builds (it returns its tag) and wait
        for its answer; cancelling the wait cancels the request upstream.
        """
        return await self.answer_to(send(self.core))

    async def answer_to(self, tag: bytes) -> Any:
        """Wait for the answer to request C{tag}, just sent; cancelling the wait cancels the request upstream."""
        future: asyncio.Future[Any] = self.loop.create_future()
        self._futures[tag] = future
        self.flush()
        try:
            return await future
        except asyncio.CancelledError:
            self._futures.pop(tag, None)
            if self.core.cancel(tag):
                self.flush()
            raise

    def open_stream(self, send: Callable[[Connection], bytes], on_event: Callable[[Any], None]) -> bytes:
        """
        Send the streamed call C{send(core)} builds (it returns its tag);
        C{on_event} gets its L{PartReceived}, then its L{Answered} or L{Failed}.
        """
        tag = send(self.core)
        self._streams[tag] = on_event
        self.flush()
        return tag

    def close_stream(self, tag: bytes) -> None:
        """Give up on streamed call C{tag}: forget it and, if it has not ended, cancel it upstream."""
        self._streams.pop(tag, None)
        if self.core.cancel(tag):
            self.flush()

    def consumed(self, tag: bytes) -> None:
        """The consumer of streamed call C{tag} took a part: the core grants more once due."""
        self.core.consumed(tag)
        self.flush()

    def send(self, act: Callable[[Connection], Any]) -> Any:
        """Run C{act(core)} (an answer, a fail) and write what it produces."""
        result = act(self.core)
        self.flush()
        return result

    def close(self, abort: bool = False) -> None:
        """Close the connection (at once, dropping what is buffered, if C{abort})."""
        if self.transport is not None:
            self.transport.abort() if abort else self.transport.close()

    # -- what the core says --------------------------------------------------------

    def flush(self) -> None:
        """Write what the core has to send, and act on its events."""
        data = self.core.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)
        for event in self.core.events():
            if isinstance(event, Answered):
                stream = self._streams.pop(event.tag, None)
                if stream is not None:
                    stream(event)
                else:
                    self._resolve(event.tag, event.value, None)
            elif isinstance(event, Failed):
                if isinstance(event.error, Draining):
                    self.draining = True
                stream = self._streams.pop(event.tag, None)
                if stream is not None:
                    stream(event)
                else:
                    self._resolve(event.tag, None, event.error)
            elif isinstance(event, PartReceived):
                stream = self._streams.get(event.tag)
                if stream is not None:
                    stream(event)
            elif isinstance(event, MoreReceived):
                if self.on_more is not None:
                    self.on_more(event)
            elif isinstance(event, TimerWanted):
                self._want(event.at)
            elif isinstance(event, EventReceived):
                if self.on_event is not None:
                    self.on_event(event)
            elif isinstance(event, CallReceived):
                if self.on_call is not None:
                    self.on_call(event)
                else:
                    self.core.fail(event.tag, UpstreamUnavailable("this client runs no calls: call a service"))
            elif isinstance(event, CancelReceived):
                if self.on_cancel is not None:
                    self.on_cancel(event)
            elif isinstance(event, ConnectionClosed):
                self.close(abort=True)
        data = self.core.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _resolve(self, tag: bytes, value: Any, error: BaseException | None) -> None:
        future = self._futures.pop(tag, None)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)

    def _want(self, at: float) -> None:
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        self.core.tick(self.loop.time())
        self.flush()
        wanted = self.core.next_tick()
        if wanted is not None and self.transport is not None:
            self._want(wanted)
