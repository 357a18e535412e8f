"""
nswarm for blocking code (scripts, notebooks, Django or Flask views,
Celery tasks): a thread-safe API client whose methods return the value or
raise the typed error, with no reactor and no event loop to know about::

    from nswarm import sync

    with sync.connect_from_config("DIR/client.conf") as client:
        print(client.call("greet", "world"))

It runs the asyncio client (L{nswarm.aio.Client}) on an event loop in one
private daemon thread; every method hands its work to that loop and waits
for it, so any number of threads may call at once. Deadlines hold as they
do for the asyncio client: a call raises
L{nswarm.errors.DeadlineExceeded} once its timeout has passed.
C{client.stream(method, ...)} is an iterator of a streamed result's parts
(L{Stream}).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from nswarm import aio
from nswarm.core.events import EventReceived
from nswarm.errors import DeadlineExceeded

__all__ = ["Client", "Stream", "Subscription", "connect", "connect_from_config"]

T = TypeVar("T")
#: Seconds past a request's own deadline that a blocking caller waits for the loop's answer, at most.
GRACE = 5.0


class _Loop:
    """An asyncio loop running in a daemon thread of its own, for one client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nswarm-sync", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run C{coroutine} on the loop and wait for its outcome (at most C{timeout} seconds, if given)."""
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError(
                "a blocking nswarm.sync call was made from inside its own event loop, where it would wait "
                "for itself forever: use the nswarm.aio client there (await client.call(...))"
            )
        if self.loop.is_closed():
            coroutine.close()
            raise RuntimeError("this nswarm.sync client is closed: connect again")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # the coroutine's own TimeoutError (the same class since Python 3.11)
                raise
            future.cancel()
            raise DeadlineExceeded("the request's deadline passed with no answer from the client's loop") from None

    def stop(self) -> None:
        """Stop the loop and join its thread."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join()
            self.loop.close()


class Subscription:
    """The events matching a pattern, as a blocking iterator; L{close} ends the subscription."""

    def __init__(self, loop: _Loop, inner: aio.Subscription) -> None:
        self._loop = loop
        self._inner = inner

    @property
    def pattern(self) -> str:
        """The pattern subscribed to."""
        return self._inner.pattern

    def __iter__(self) -> Iterator[EventReceived]:
        return self

    def __next__(self) -> EventReceived:
        event = self.next()
        if event is None:
            raise StopIteration
        return event

    def next(self, timeout: float | None = None) -> EventReceived | None:
        """The next event, waiting at most C{timeout} seconds (then TimeoutError); None once closed."""

        async def one() -> EventReceived | None:
            try:
                return await asyncio.wait_for(self._inner.__anext__(), timeout)
            except StopAsyncIteration:
                return None

        try:
            return self._loop.run(one())
        except asyncio.TimeoutError:
            raise TimeoutError(f"no event matching {self.pattern!r} came within {timeout:g} s") from None

    def close(self) -> None:
        """End the subscription (unsubscribing if it was the pattern's last)."""
        if not self._loop.loop.is_closed():
            self._loop.run(self._inner.aclose())

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Stream:
    """
    The parts of one streamed call, as a blocking iterator, in order; the
    call's typed error is raised after the parts before it. L{close} (or
    leaving its C{with} block) before the end cancels the call, and the
    service closes its generator. Safe to share between threads: each part
    goes to one of them.
    """

    def __init__(self, loop: _Loop, inner: aio.Stream) -> None:
        self._loop = loop
        self._inner = inner
        self._lock = threading.Lock()

    @property
    def count(self) -> int | None:
        """The number of parts the service sent, once the stream has ended."""
        return self._inner.count

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        """The next part (waiting within the call's deadline), StopIteration at the end, or the typed error."""

        async def one() -> tuple[bool, Any]:
            try:
                return True, await self._inner.__anext__()
            except StopAsyncIteration:
                return False, None

        with self._lock:
            more, value = self._loop.run(one(), self._inner.timeout + GRACE)
        if not more:
            raise StopIteration
        return value

    def close(self) -> None:
        """Stop reading: if the call has not ended, cancel it."""
        if not self._loop.loop.is_closed():
            self._loop.run(self._inner.aclose(), GRACE)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Client:
    """
    A blocking client of the master: L{call}, L{call_with_timeout},
    L{call_all}, L{stream}, L{publish}, L{subscribe}; L{close} (or the C{with} block)
    ends it and its thread.
    """

    def __init__(self, loop: _Loop, client: aio.Client) -> None:
        self._loop = loop
        self.client = client

    @property
    def timeout(self) -> float:
        """Seconds a call may take when the caller gives none."""
        return self.client.timeout

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call C{method} on some service in the cluster: its result, or its typed error raised."""
        return self.call_with_timeout(self.client.timeout, method, *args, **kwargs)

    def call_with_timeout(self, timeout: float, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """L{call} with a deadline C{timeout} seconds away (then L{DeadlineExceeded})."""
        return self._loop.run(self.client.call_with_timeout(timeout, method, *args, **kwargs), timeout + GRACE)

    def call_all(self, method: str, /, *args: Any, **kwargs: Any) -> list[Any]:
        """Call C{method} on every implementer: one result or error per service."""
        return self._loop.run(self.client.call_all(method, *args, **kwargs), self.client.timeout + GRACE)

    def stream(
        self, method: str, /, *args: Any, window: int | None = None, timeout: float | None = None, **kwargs: Any
    ) -> Stream:
        """
        Call C{method} for a streamed result: an iterator of its parts
        (C{for part in client.stream(...)}), as L{nswarm.aio.Client.stream}:
        at most C{window} parts on their way, C{timeout} covering the whole
        stream. Use it as C{with client.stream(...) as parts:} so that
        leaving early cancels the call.
        """
        return Stream(self._loop, self.client.stream(method, *args, window=window, timeout=timeout, **kwargs))

    def publish(self, event: str, payload: Any = None, *, exclude_self: bool = False) -> int | None:
        """Publish C{event} with C{payload}; return how many connections the master handed it to."""
        coroutine = self.client.publish(event, payload, exclude_self=exclude_self)
        return self._loop.run(coroutine, self.client.timeout + GRACE)

    def status(self) -> dict[str, Any]:
        """The cluster's status document (see L{nswarm.aio.Client.status}); needs the admin right."""
        return self._loop.run(self.client.status(), self.client.timeout + GRACE)

    def subscribe(self, pattern: str) -> Subscription:
        """The events matching C{pattern} from now on, as an iterator (the master has the subscription on return)."""
        inner = self.client.subscribe(pattern)
        self._loop.run(inner.start(), self.client.timeout + GRACE)
        return Subscription(self._loop, inner)

    def close(self) -> None:
        """Close the connection, stop reconnecting, and stop the client's thread."""
        if not self._loop.loop.is_closed():
            try:
                self._loop.run(self.client.close(), GRACE)
            finally:
                self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _start(make: Any) -> Client:
    loop = _Loop()
    try:
        return Client(loop, loop.run(make()))
    except BaseException:
        loop.stop()
        raise


def connect(*args: Any, **kwargs: Any) -> Client:
    """L{nswarm.aio.connect} with the same arguments, as a blocking L{Client}."""
    return _start(lambda: aio.connect(*args, **kwargs))


def connect_from_config(source: str, **kwargs: Any) -> Client:
    """L{nswarm.aio.connect_from_config} with the same arguments, as a blocking L{Client}."""
    return _start(lambda: aio.connect_from_config(source, **kwargs))
