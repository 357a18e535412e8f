"""
An nswarm service written for asyncio: coroutine handlers, run by
C{asyncio.run}, no Twisted reactor. Run it beside a node::

    python examples/aio_service.py --config DIR/client.conf

(or C{--socket PATH --auth-key-file FILE}). It says when it has
registered; with C{--json-log}, as the JSON event C{service_registered}
that Twisted services log, so that a program that starts it (such as
L{nswarm.testing.local.LocalCluster.start_service}) can wait for it.

C{count} and C{ticks} are streaming handlers: async generators whose every
C{yield} is a part the caller receives as it comes
(C{async for part in client.stream("count", 10)}). The service produces a
part only when the caller has room for it, and a caller that closes the
stream (or whose deadline passes) closes the generator: its C{finally}
runs, and C{counts()["streams_closed"]} says how many did. C{wait_count}
waits on a count itself (a test asks it instead of polling C{counts}).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from nswarm import aio


class Counter(aio.Service):
    """Greets, echoes, sleeps (cancellably), streams, and counts the events it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.events = 0
        self.cancelled = 0
        self.streams_closed = 0
        #: Calls to sleep and slow_echo running now.
        self.busy = 0
        #: Set whenever a count moves (see L{wait_count}).
        self._counted = asyncio.Event()

    @aio.implement
    async def greet(self, name: str) -> str:
        return f"hello, {name}!"

    @aio.implement
    def echo(self, value: object) -> object:
        return value

    @aio.implement
    def whoami(self) -> str:
        """The caller of this call, as the master stamped it."""
        return str(aio.current_caller())

    @aio.implement
    async def fail(self, message: str) -> None:
        raise ValueError(message)

    @aio.implement
    async def sleep(self, seconds: float) -> str:
        """Sleep, unless the call is cancelled (by its caller or its deadline): that is counted."""
        self._count("busy")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self._count("cancelled")
            raise
        finally:
            self.busy -= 1
        return "slept"

    @aio.implement
    async def slow_echo(self, value: object, seconds: float) -> object:
        self._count("busy")
        try:
            await asyncio.sleep(seconds)
        finally:
            self.busy -= 1
        return value

    @aio.implement
    async def count(self, n: int) -> AsyncIterator[int]:
        """Stream 0, 1, ..., n - 1, one part each (a plain call gets the list)."""
        for value in range(n):
            yield value

    @aio.implement
    async def ticks(self, interval: float = 0.01) -> AsyncIterator[int]:
        """Stream 0, 1, 2, ... every C{interval} seconds, until the caller closes the stream or its deadline passes."""
        tick = 0
        try:
            while True:
                yield tick
                tick += 1
                await asyncio.sleep(interval)
        finally:
            self._count("streams_closed")

    @aio.implement
    async def sizes(self, *sizes: int) -> AsyncIterator[str]:
        """Stream one string of each size in C{sizes}: a part over the payload limit ends the stream there."""
        try:
            for size in sizes:
                yield "x" * size
        finally:
            self._count("streams_closed")

    @aio.implement
    def counts(self) -> dict[str, int]:
        return {
            "events": self.events,
            "cancelled": self.cancelled,
            "streams_closed": self.streams_closed,
            "busy": self.busy,
        }

    @aio.implement
    async def wait_count(self, name: str, above: int) -> int:
        """C{counts()[name]} once it is above C{above}: the caller's deadline bounds the wait."""
        while self.counts()[name] <= above:
            self._counted.clear()
            await self._counted.wait()
        return self.counts()[name]

    def _count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)
        self._counted.set()

    @aio.subscribe("orders.>")
    async def order(self, event: str, payload: object) -> None:
        self._count("events")


if __name__ == "__main__":
    Counter.main()
