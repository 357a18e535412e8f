"""
One subscription of the asyncio client: an async iterator of the events
that match its pattern, queued as they arrive, and an async context
manager that ends the subscription on the way out.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from nswarm.core import wire
from nswarm.core.events import EventReceived

if TYPE_CHECKING:
    from nswarm.aio.client import Client

_END = object()


class Subscription:
    """
    The events matching C{pattern} on C{client}. The master is asked for
    them on first use (C{await}, C{async with} or iterating); L{aclose} (or
    leaving the C{async with}) ends it, and the master stops sending once
    no subscription of the pattern is left.
    """

    def __init__(self, client: Client, pattern: str, max_queued: int) -> None:
        self.client = client
        self.pattern = pattern
        #: Events dropped because more than C{max_queued} were unread.
        self.dropped = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue(max_queued)
        self._started: asyncio.Future[None] | None = None
        self._closed = False

    async def start(self) -> Subscription:
        """Subscribe (once): return once the master has the subscription, or raise its refusal."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            subscriptions = self.client.subscriptions.setdefault(self.pattern, [])
            subscriptions.append(self)
            try:
                if len(subscriptions) == 1:
                    await self.client._register(wire.SUBSCRIBE, self.pattern)
            except BaseException as error:
                self._forget()
                self._started.set_exception(error)
                raise
            self._started.set_result(None)
        await asyncio.shield(self._started)
        return self

    def __await__(self) -> Any:
        return self.start().__await__()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> EventReceived:
        """The next event (its C{.event} name and C{.payload}); the iteration ends once the subscription does."""
        if self._closed:
            raise StopAsyncIteration
        await self.start()
        item = await self._queue.get()
        if item is _END:
            self._closed = True
            raise StopAsyncIteration
        return item

    def deliver(self, event: EventReceived) -> None:
        """An event for this subscription (from the client)."""
        if self._closed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    def end(self) -> None:
        """The client is closed: the iteration ends after the events already queued."""
        if not self._closed:
            while True:
                try:
                    self._queue.put_nowait(_END)
                    return
                except asyncio.QueueFull:
                    self._queue.get_nowait()

    async def aclose(self) -> None:
        """End this subscription (unsubscribing if it was the pattern's last one)."""
        if self._closed:
            return
        self.end()  # wakes a reader waiting for the next event
        self._closed = True
        if self._forget() and self.client._closed is None:
            try:
                await self.client._register(wire.UNSUBSCRIBE, self.pattern)
            except Exception:  # the connection is gone: nothing to unsubscribe from
                pass

    def _forget(self) -> bool:
        """Take this subscription out of the client's; True if it was its pattern's last."""
        subscriptions = self.client.subscriptions.get(self.pattern, [])
        if self in subscriptions:
            subscriptions.remove(self)
        if subscriptions:
            return False
        self.client.subscriptions.pop(self.pattern, None)
        return True

    async def __aenter__(self) -> Subscription:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
