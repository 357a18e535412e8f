"""
The calls the master holds back: to a method nobody implements yet (for the
grace period), or whose implementers are all at their concurrency limit
(until a slot frees). Pure: no clock, no connections; the master says when.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from twisted.protocols import amp

from nswarm.amp_commands import ASK


class Held:
    """One held call: who asked, its box, and until when it may wait."""

    __slots__ = ("caller", "box", "deadline", "give_up")

    def __init__(self, caller: Any, box: amp.AmpBox, deadline: float, give_up: float) -> None:
        self.caller = caller
        self.box = box
        #: When the call's own deadline passes.
        self.deadline = deadline
        #: When the master stops waiting: the deadline, or the end of the grace period if sooner.
        self.give_up = give_up


class HeldCalls:
    """Held calls by method, in arrival order, at most C{size} in all."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0
        self._by_method: dict[str, deque[Held]] = {}

    @property
    def full(self) -> bool:
        """Whether another call would be one too many."""
        return self.count >= self.size

    def __contains__(self, method: str) -> bool:
        return method in self._by_method

    def queued(self) -> dict[str, int]:
        """How many calls are held, by method."""
        return {method: len(queue) for method, queue in self._by_method.items() if queue}

    def hold(self, method: str, held: Held) -> None:
        """Hold C{held}, a call to C{method}, behind those held before it."""
        self._by_method.setdefault(method, deque()).append(held)
        self.count += 1

    def implemented(self, method: str) -> None:
        """C{method} has an implementer now: its calls wait for a free slot until their own deadlines."""
        for held in self._by_method.get(method, ()):
            held.give_up = held.deadline

    def next(self, method: str) -> Held | None:
        """Take the longest-held call to C{method}, if any."""
        queue = self._by_method.get(method)
        if not queue:
            return None
        return self._taken(method, queue.popleft())

    def cancel(self, caller: Any, caller_tag: bytes) -> Held | None:
        """Take the call C{caller} sent as C{caller_tag}, if it is held."""
        for method, queue in self._by_method.items():
            for held in queue:
                if held.caller is caller and held.box[ASK] == caller_tag:
                    queue.remove(held)
                    return self._taken(method, held)
        return None

    def take_all(self) -> list[tuple[str, Held]]:
        """Take every held call (the master is draining)."""
        return self._take(lambda held: True)

    def drop_caller(self, caller: Any) -> list[Held]:
        """Take every call C{caller} made (it is gone)."""
        return [held for _, held in self._take(lambda held: held.caller is caller)]

    def expired(self, now: float) -> list[tuple[str, Held]]:
        """Take every call whose wait is over at C{now}, with its method."""
        return self._take(lambda held: held.give_up <= now)

    def next_give_up(self) -> float | None:
        """When the soonest wait ends, if anything is held."""
        return min((held.give_up for held in self._all()), default=None)

    def _all(self) -> Iterator[Held]:
        for queue in self._by_method.values():
            yield from queue

    def _take(self, which: Any) -> list[tuple[str, Held]]:
        taken = []
        for method, queue in list(self._by_method.items()):
            for held in [held for held in queue if which(held)]:
                queue.remove(held)
                taken.append((method, self._taken(method, held)))
        return taken

    def _taken(self, method: str, held: Held) -> Held:
        self.count -= 1
        if not self._by_method.get(method):
            self._by_method.pop(method, None)
        return held
