"""
One blocking interface over each SDK front end (asyncio, asyncio on
uvloop, blocking), so that the conformance suite (tests/test_frontends.py)
runs the same cases against each: the adapters only translate calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from nswarm import aio, sync

#: Seconds any one wait of the suite may take.
BOUND = 20.0


class Front:
    """What every adapter offers; each method blocks until its outcome."""

    name = ""

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def call_with_timeout(self, timeout: float, method: str, *args: Any) -> Any:
        raise NotImplementedError

    def call_all(self, method: str, *args: Any) -> list[Any]:
        raise NotImplementedError

    def publish(self, event: str, payload: Any) -> int | None:
        raise NotImplementedError

    def subscribe(self, pattern: str) -> Any:
        """A subscription made (the master has it): its C{next(timeout)} is (event, payload), C{close()} ends it."""
        raise NotImplementedError

    def call_then_cancel(self, method: str, *args: Any, after: float) -> str:
        """Call, cancel the call C{after} seconds later; 'cancelled' once the cancellation is through."""
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

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.run(self.client.call(method, *args, **kwargs))

    def call_with_timeout(self, timeout: float, method: str, *args: Any) -> Any:
        return self.run(self.client.call_with_timeout(timeout, method, *args))

    def call_all(self, method: str, *args: Any) -> list[Any]:
        return self.run(self.client.call_all(method, *args))

    def publish(self, event: str, payload: Any) -> int | None:
        return self.run(self.client.publish(event, payload))

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

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.close()


class SyncFront(Front):
    """The blocking client: it is this interface already."""

    name = "sync"

    def __init__(self, config: Path, **options: Any) -> None:
        self.client = sync.connect_from_config(str(config), **options)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.client.call(method, *args, **kwargs)

    def call_with_timeout(self, timeout: float, method: str, *args: Any) -> Any:
        return self.client.call_with_timeout(timeout, method, *args)

    def call_all(self, method: str, *args: Any) -> list[Any]:
        return self.client.call_all(method, *args)

    def publish(self, event: str, payload: Any) -> int | None:
        return self.client.publish(event, payload)

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

    def close(self) -> None:
        self.client.close()


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None if uvloop is not installed (it is optional)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


#: The front ends the suite runs against. The Twisted client is not among them: pytest-twisted runs every test
#: inside the reactor's greenlet, where no adapter can block on a Deferred; tests/test_loopback.py and
#: tests/test_api_reconnect_processes.py hold the same cases for it.
FRONTS = ["aio", "aio-uvloop", "sync"]


def make_front(name: str, config: Path, **options: Any) -> Front:
    """The adapter called C{name} (one of L{FRONTS}), connected with client.conf C{config}."""
    if name == "aio":
        return AioFront(config, asyncio.new_event_loop(), **options)
    if name == "aio-uvloop":
        factory = uvloop_factory()
        assert factory is not None
        return AioFront(config, factory(), **options)
    return SyncFront(config, **options)
