"""
One timer for the heartbeats of all of a daemon's connections. A master
with 10,000 nodes beats 1000 connections a second; with a timer (a
C{LoopingCall}) each, the reactor's heap holds 10,000 of them, and every
C{callLater} made on the hot path (TLS flushes each turn, deadlines) pays
for the heap's depth in comparisons of Python objects.

A L{Wheel} has L{SLOTS} slots, one tick apart (the interval / L{SLOTS}); a
connection joins the slot of the next tick and beats each time the wheel
comes round to it, once an interval. The first connection to join an idle
wheel starts it, so it beats exactly one interval later; a later one beats
at most one tick (0.1 s for the default 10 s) later than an interval after
it joined. The timer skips empty slots, and stops when the wheel is empty.
When the reactor is held up for longer than an interval, each connection
beats once when it runs again, not once for every interval missed (as a
C{LoopingCall}): a connection is never judged silent for the reactor's own
delay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any
from weakref import WeakKeyDictionary

from twisted.logger import Logger

log = Logger()

#: Slots of a wheel: a tick is this part of the interval.
SLOTS = 100

_wheels: WeakKeyDictionary[Any, dict[float, Wheel]] = WeakKeyDictionary()


def wheel(clock: Any, interval: float) -> Wheel:
    """The wheel of C{interval} on C{clock} (an C{IReactorTime}), made the first time it is asked for."""
    mine = _wheels.setdefault(clock, {})
    if interval not in mine:
        mine[interval] = Wheel(clock, interval)
    return mine[interval]


class Wheel:
    """The beats of every connection on one clock with one interval (see the module's docstring)."""

    def __init__(self, clock: Any, interval: float) -> None:
        self.clock = clock
        self.interval = interval
        self.tick = interval / SLOTS
        #: Who beats at each slot: a key -> its beat and the number of the tick of its first beat.
        self.slots: list[dict[Hashable, tuple[Callable[[], None], int]]] = [{} for _ in range(SLOTS)]
        self.where: dict[Hashable, int] = {}
        self.start = 0.0
        self.last = 0  # the number of the last tick done (tick n is at start + n ticks)
        self.timer: Any = None
        self._ticking = False

    def _time_of(self, tick: int) -> float:
        # Whole intervals added as such: tick SLOTS is exactly one interval after start.
        rounds, slot = divmod(tick, SLOTS)
        return self.start + rounds * self.interval + slot * self.tick

    def join(self, key: Hashable, beat: Callable[[], None]) -> None:
        """Call C{beat} once an interval from now on, until L{leave}."""
        self.leave(key)
        now = self.clock.seconds()
        if not self.where and not self._ticking:
            # Idle: tick 0 is now (and done), so that this one beats exactly an interval from now.
            self.start, self.last, after = now, 0, 0
        else:
            # The first tick from now (the last one done, if that is now); it beats one round (an interval) after it.
            after = max(self.last, math.floor((now - self.start) / self.tick))
            while self._time_of(after) < now:
                after += 1
        slot = after % SLOTS
        self.slots[slot][key] = (beat, after + SLOTS)
        self.where[key] = slot
        if self.timer is None and not self._ticking:
            self._schedule()

    def leave(self, key: Hashable) -> None:
        """C{key} beats no more."""
        slot = self.where.pop(key, None)
        if slot is not None:
            del self.slots[slot][key]
            if not self.where and self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _schedule(self) -> None:
        """Set the timer for the next tick that has anyone in its slot (skipping the empty ones)."""
        self.timer = None
        if not self.where:
            return
        following = self.last + 1
        while not self.slots[following % SLOTS]:
            following += 1
        delay = max(0.0, self._time_of(following) - self.clock.seconds())
        self.timer = self.clock.callLater(delay, self._tick, following)

    def _tick(self, number: int) -> None:
        late = self.clock.seconds() - self._time_of(number)
        if late >= self.interval:
            # The reactor was held up for an interval or more (as a LoopingCall, skip what was missed): this is
            # the round of now, and the slots of the interval before it beat once each, not once a round missed.
            number += SLOTS * int(late // self.interval)
        self.timer, self.last, self._ticking = None, number, True
        beats = self.slots[number % SLOTS]
        try:
            for key, (beat, first) in list(beats.items()):
                # Not one that joined for a later round, nor one that left (or closed) during this tick.
                if first <= number and beats.get(key, (None,))[0] is beat:
                    try:
                        beat()
                    except Exception:  # one connection's bug must not cost the others their beats
                        log.failure("a heartbeat failed")
        finally:
            self._ticking = False
            self._schedule()
