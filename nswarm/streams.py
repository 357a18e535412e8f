"""
Streamed results on the calling side of the Twisted SDKs: what
L{nswarm.client.ClientProtocol.stream} returns. Parts come in order, before
the call's answer; the caller takes them with L{Stream.next} (or C{async
for}, or L{Stream.each}) and, as it does, the sans-IO core grants the
service more (L{nswarm.core.streaming}), half a window at a time: the
service never has more than a window of parts on their way, so a slow
reader holds its producer back and what waits here is at most one window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from nswarm.core.answers import result


class Stream:
    """
    The parts of one streamed call. L{next} fires with the next part, or
    fails with C{StopAsyncIteration} once all have come (or with the call's
    typed error, after the parts that came before it); C{async for part in
    stream} does the same. L{done} fires with the number of parts.
    L{cancel} ends the call (the service's generator is closed).
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._call: Deferred[int] | None = None
        #: The number of parts, or the call's failure, once it has ended.
        self._outcome: int | Failure | None = None
        self._waiting: list[Deferred[int]] = []
        self._parts: deque[Any] = deque()
        self._takers: deque[Deferred[Any]] = deque()
        self._end: Failure | None = None
        #: Called each time a part is taken (the connection grants the service more once due).
        self.consume: Callable[[], None] | None = None

    # -- the client's side ---------------------------------------------------------

    def answered(self, box: dict[bytes, bytes]) -> int:
        """Parse the call's answer: the number of parts (the C{parse} of its request)."""
        count = result(box)
        return count if isinstance(count, int) else 0

    def started(self, call: Deferred[int]) -> None:
        """The call went out: C{call} fires at its answer or fails with its error."""
        self._call = call
        call.addCallbacks(self._ended, self._failed)

    def part(self, value: Any) -> None:
        """The next part came."""
        if self._takers:
            self._took()
            self._takers.popleft().callback(value)
        else:
            self._parts.append(value)

    def _took(self) -> None:
        """One more part was taken: tell the connection (it grants more once half a window is taken)."""
        if self.consume is not None and self._end is None:
            self.consume()

    def _ended(self, count: int) -> None:
        self._finish(Failure(StopAsyncIteration()), count)

    def _failed(self, failure: Failure) -> None:
        self._finish(failure, failure)

    def _finish(self, end: Failure, outcome: int | Failure) -> None:
        self._end, self._outcome = end, outcome
        takers, self._takers = self._takers, deque()
        for taker in takers:
            taker.errback(end)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(outcome)  # a Failure errbacks it

    # -- the user's side -----------------------------------------------------------

    def next(self) -> Deferred[Any]:
        """The next part; C{StopAsyncIteration} at the end; the call's error if it failed."""
        if self._parts:
            self._took()
            return succeed(self._parts.popleft())
        if self._end is not None:
            return fail(self._end)
        taker: Deferred[Any] = Deferred(lambda _: self.cancel())
        self._takers.append(taker)
        return taker

    def __aiter__(self) -> Stream:
        return self

    def __anext__(self) -> Deferred[Any]:
        return self.next()

    def done(self) -> Deferred[int]:
        """Fires with the number of parts once the call has ended, or fails with its error."""
        if self._outcome is not None:
            return fail(self._outcome) if isinstance(self._outcome, Failure) else succeed(self._outcome)
        d: Deferred[int] = Deferred()
        self._waiting.append(d)
        return d

    def each(self, handler: Callable[[Any], object]) -> Deferred[int]:
        """Call C{handler(part)} for every part as it comes; fires with the number of parts."""
        done: Deferred[int] = Deferred()

        def one(value: Any) -> None:
            handler(value)
            step()

        def over(failure: Failure) -> None:
            if failure.check(StopAsyncIteration):
                self.done().addCallbacks(done.callback, done.errback)
            else:
                done.errback(failure)

        def step() -> None:
            self.next().addCallbacks(one, over)

        step()
        return done

    def cancel(self) -> None:
        """End the call now: it fails L{Cancelled} here, and the service closes its generator."""
        if self._end is None and self._call is not None:
            self._call.cancel()
