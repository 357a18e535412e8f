"""
One blocking interface over each SDK front end (Twisted, asyncio, asyncio
on uvloop, blocking), so that the conformance suite (tests/test_frontends.py)
runs the same cases against each: the adapters only translate calls.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import greenlet
from pytest_twisted import _instances
from twisted.internet.defer import CancelledError, Deferred, DeferredQueue
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from nswarm import aio, api, sync

#: Seconds any one wait of the suite may take.
BOUND = 20.0


class Front:
    """
    What every adapter offers; each method blocks until its outcome. The
    plain requests are the client's own, waited for by L{run} (a coroutine
    run on the adapter's loop, a Deferred waited for, or a value as it is).
    """

    name = ""
    client: Any

    def run(self, outcome: Any) -> Any:
        return outcome

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.run(self.client.call(method, *args, **kwargs))

    def call_with_timeout(self, timeout: float, method: str, *args: Any) -> Any:
        return self.run(self.client.call_with_timeout(timeout, method, *args))

    def call_all(self, method: str, *args: Any) -> list[Any]:
        return self.run(self.client.call_all(method, *args))

    def publish(self, event: str, payload: Any) -> int | None:
        return self.run(self.client.publish(event, payload))

    def status(self) -> dict[str, Any]:
        return self.run(self.client.status())

    def subscribe(self, pattern: str) -> Any:
        """A subscription made (the master has it): its C{next(timeout)} is (event, payload), C{close()} ends it."""
        raise NotImplementedError

    def call_then_cancel(self, method: str, *args: Any, after: float) -> str:
        """Call, cancel the call C{after} seconds later; 'cancelled' once the cancellation is through."""
        raise NotImplementedError

    def stream(
        self, method: str, *args: Any, window: int | None = None, timeout: float | None = None, into: Any = None
    ) -> list[Any]:
        """
        A streamed call read to its end: all its parts, in order. Each part
        is also appended to C{into} (a list) as it comes, so that a case can
        see the parts that came before an error.
        """
        raise NotImplementedError

    def stream_and_close(self, method: str, *args: Any, take: int) -> list[Any]:
        """A streamed call's first C{take} parts, then the stream closed (which cancels the call)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class AioFront(Front):
    """The asyncio client on a loop this (the test's) thread runs, one request at a time."""

    name = "aio"

    def __init__(self, config: Path, loop: asyncio.AbstractEventLoop, **options: Any) -> None:
        self.loop = loop
        self.client = self.run(aio.connect_from_config(str(config), **options))

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, BOUND))

    def subscribe(self, pattern: str) -> Any:
        front = self
        subscription = self.run(self.client.subscribe(pattern).start())

        class Events:
            def next(self, timeout: float) -> tuple[str, Any]:
                event = front.run(asyncio.wait_for(subscription.__anext__(), timeout))
                return event.event, event.payload

            def close(self) -> None:
                front.run(subscription.aclose())

        return Events()

    def call_then_cancel(self, method: str, *args: Any, after: float) -> str:
        async def cancel() -> str:
            task = asyncio.ensure_future(self.client.call(method, *args))
            await asyncio.sleep(after)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return "cancelled"
            return "not cancelled"

        return self.run(cancel())

    def stream(
        self, method: str, *args: Any, window: int | None = None, timeout: float | None = None, into: Any = None
    ) -> list[Any]:
        parts: list[Any] = [] if into is None else into

        async def read() -> list[Any]:
            async with self.client.stream(method, *args, window=window, timeout=timeout) as stream:
                async for part in stream:
                    parts.append(part)
            return parts

        return self.run(read())

    def stream_and_close(self, method: str, *args: Any, take: int) -> list[Any]:
        async def read() -> list[Any]:
            parts: list[Any] = []
            stream = self.client.stream(method, *args)
            async for part in stream:
                parts.append(part)
                if len(parts) == take:
                    break
            await stream.aclose()
            return parts

        return self.run(read())

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.close()


class SyncFront(Front):
    """The blocking client: it is this interface already."""

    name = "sync"

    def __init__(self, config: Path, **options: Any) -> None:
        self.client = sync.connect_from_config(str(config), **options)

    def subscribe(self, pattern: str) -> Any:
        subscription = self.client.subscribe(pattern)

        class Events:
            def next(self, timeout: float) -> tuple[str, Any]:
                event = subscription.next(timeout)
                assert event is not None
                return event.event, event.payload

            def close(self) -> None:
                subscription.close()

        return Events()

    def call_then_cancel(self, method: str, *args: Any, after: float) -> str:
        # A blocking call is cancelled by its deadline: the same Cancel goes to the handler.
        from nswarm.errors import DeadlineExceeded

        try:
            self.client.call_with_timeout(after, method, *args)
        except DeadlineExceeded:
            return "cancelled"
        return "not cancelled"

    def stream(
        self, method: str, *args: Any, window: int | None = None, timeout: float | None = None, into: Any = None
    ) -> list[Any]:
        parts: list[Any] = [] if into is None else into
        with self.client.stream(method, *args, window=window, timeout=timeout) as stream:
            for part in stream:
                parts.append(part)
        return parts

    def stream_and_close(self, method: str, *args: Any, take: int) -> list[Any]:
        parts: list[Any] = []
        with self.client.stream(method, *args) as stream:
            for part in stream:
                parts.append(part)
                if len(parts) == take:
                    break
        return parts

    def close(self) -> None:
        self.client.close()


def conformance(test: Callable[..., None]) -> Callable[..., Deferred[None]]:
    """
    Run the conformance case C{test} in a greenlet of its own under the
    reactor's (where pytest-twisted runs every test), so that the Twisted
    adapter can wait for a Deferred in it (L{wait}) while the reactor runs;
    the other adapters block as usual.
    """

    @functools.wraps(test)
    def case(*args: Any, **kwargs: Any) -> Deferred[None]:
        done: Deferred[None] = Deferred()

        def body() -> None:
            # done fires from the reactor's greenlet, once this one has ended.
            from twisted.internet import reactor

            try:
                test(*args, **kwargs)
            except BaseException:
                reactor.callLater(0, done.errback, Failure())
            else:
                reactor.callLater(0, done.callback, None)

        greenlet.greenlet(body).switch()
        return done

    return case


def wait(d: Deferred[Any]) -> Any:
    """
    C{d}'s result (or its failure, raised), in a L{conformance} case: the
    reactor's greenlet runs until C{d} fires.
    """
    current = greenlet.getcurrent()
    assert current.parent is _instances.gr_twisted is not None, "wait() only in a conformance case"
    result: list[Any] = []

    def fired(outcome: Any) -> None:
        result.append(outcome)
        if greenlet.getcurrent() is not current:
            current.switch()

    d.addBoth(fired)
    if not result:
        current.parent.switch()
    if isinstance(result[0], Failure):
        result[0].raiseException()
    return result[0]


class TwistedFront(Front):
    """
    The Twisted client (L{nswarm.api}) on the reactor pytest-twisted runs in
    its own greenlet: each method waits for its Deferred with C{blockon},
    which lets the reactor run meanwhile.
    """

    name = "twisted"

    def __init__(self, config: Path, **options: Any) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.config = config
        self.options = options
        self._client: api.APIClient | None = None

    @property
    def client(self) -> api.APIClient:
        """The client, connected on first use (in the case's greenlet, where it can wait for the reactor)."""
        if self._client is None:
            self._client = self.run(api.connect_from_config(self.reactor, str(self.config), **self.options))
        return self._client

    def run(self, d: Deferred[Any]) -> Any:
        return wait(d.addTimeout(BOUND, self.reactor))

    def subscribe(self, pattern: str) -> Any:
        front = self
        queue: DeferredQueue[tuple[str, Any]] = DeferredQueue()
        subscription = self.run(self.client.subscribe(pattern, lambda event, payload: queue.put((event, payload))))

        class Events:
            def next(self, timeout: float) -> tuple[str, Any]:
                got: tuple[str, Any] = wait(queue.get().addTimeout(timeout, front.reactor))
                return got

            def close(self) -> None:
                front.run(subscription.cancel())

        return Events()

    def call_then_cancel(self, method: str, *args: Any, after: float) -> str:
        d = self.client.call(method, *args)
        self.run(deferLater(self.reactor, after, lambda: None))
        d.cancel()
        try:
            self.run(d)
        except CancelledError:
            return "cancelled"
        return "not cancelled"

    def stream(
        self, method: str, *args: Any, window: int | None = None, timeout: float | None = None, into: Any = None
    ) -> list[Any]:
        # The Twisted API: client.stream(...) is a Stream whose next() fires with a part, or fails
        # StopAsyncIteration at the end (or with the typed error); cancel() ends it.
        parts: list[Any] = [] if into is None else into
        stream = self.client.stream(method, *args, window=window, timeout=timeout)
        while True:
            try:
                parts.append(self.run(stream.next()))
            except StopAsyncIteration:
                return parts

    def stream_and_close(self, method: str, *args: Any, take: int) -> list[Any]:
        parts: list[Any] = []
        stream = self.client.stream(method, *args)
        while len(parts) < take:
            parts.append(self.run(stream.next()))
        cancelled = stream.cancel()
        if isinstance(cancelled, Deferred):
            self.run(cancelled)
        return parts

    def close(self) -> None:
        # From the fixture's teardown, outside the reactor: the reactor closes the connection as soon as it runs.
        if self._client is not None:
            self._client.close()


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None if uvloop is not installed (it is optional)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


#: The front ends the suite runs against.
FRONTS = ["twisted", "aio", "aio-uvloop", "sync"]


def make_front(name: str, config: Path, **options: Any) -> Front:
    """The adapter called C{name} (one of L{FRONTS}), connected with client.conf C{config}."""
    if name == "twisted":
        return TwistedFront(config, **options)
    if name == "aio":
        return AioFront(config, asyncio.new_event_loop(), **options)
    if name == "aio-uvloop":
        factory = uvloop_factory()
        assert factory is not None
        return AioFront(config, factory(), **options)
    return SyncFront(config, **options)
