"""
The master's first seconds and its last ones.

B{Starting}: for a startup window after the master starts (C{--startup-window}),
its nodes are still reconnecting and registering. Calls to methods nobody
implements yet wait for the window's end (within their deadline: see
L{nswarm.master.master.Master.call}) instead of failing L{NoSuchMethod}, and
events published meanwhile are held (L{EarlyEvents}) and handed on when the
window ends, to the subscribers registered by then.

B{Draining}: on SIGTERM the master takes no new calls (answered L{Draining},
which the SDKs treat as a lost connection) and waits, at most
C{--drain-timeout} seconds, for the calls in flight to finish.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.protocols import amp

from nswarm import defaults
from nswarm.amp_commands import Draining


def draining_error() -> Draining:
    """What a call to a draining master is answered."""
    return Draining(
        "the master is stopping and takes no new calls: reconnect (to another master, or once it is back) "
        "and send the call again"
    )


def _size(box: amp.AmpBox) -> int:
    return sum(len(key) + len(value) for key, value in box.items())


class EarlyEvents:
    """
    Events published during the startup window, in order, until it ends: at
    most C{limit} bytes of them (past it, an event is handed on at once, to
    the subscribers registered so far).
    """

    def __init__(self, limit: int = defaults.EARLY_EVENTS_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self.held: list[tuple[Any, amp.AmpBox]] = []

    def hold(self, publisher: Any, box: amp.AmpBox) -> bool:
        """Hold C{publisher}'s event C{box}; False if there is no room (hand it on now)."""
        size = _size(box)
        if self.size + size > self.limit:
            return False
        self.held.append((publisher, box))
        self.size += size
        return True

    def release(self) -> list[tuple[Any, amp.AmpBox]]:
        """The events held, in the order they came; none are held any more."""
        held, self.held, self.size = self.held, [], 0
        return held


class Drain:
    """
    Waiting, at most a timeout, for the master's calls in flight to finish,
    and for at least L{nswarm.defaults.DRAIN_QUIET} seconds: calls already
    on their way when the drain began still arrive, and are answered
    L{Draining} (the SDK sends them again elsewhere, they did not run)
    instead of being lost with a connection closed under them; a client
    that got that answer sends nothing more here.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        #: Whether the master is draining: it takes no new calls.
        self.active = False
        self._waiting: list[Deferred[None]] = []
        self._quiet = False
        self._in_flight: Callable[[], int] = lambda: 0

    def start(self, timeout: float, in_flight: Callable[[], int]) -> Deferred[None]:
        """Drain: fires once C{in_flight()} is 0 past the quiet period (see L{settled}), or after C{timeout} seconds."""
        self.active = True
        self._in_flight = in_flight
        drained: Deferred[None] = Deferred()
        drained.addTimeout(timeout, self.clock, onTimeoutCancel=lambda result, timeout: None)
        self._waiting.append(drained)
        self.clock.callLater(min(defaults.DRAIN_QUIET, timeout), self._quiet_over)
        return drained

    def _quiet_over(self) -> None:
        self._quiet = True
        self.settled(self._in_flight())

    def settled(self, in_flight: int) -> None:
        """A call finished: C{in_flight} are left; at 0, once the quiet period is over, the drain is over."""
        if self._waiting and not in_flight and self._quiet:
            waiting, self._waiting = self._waiting, []
            for drained in waiting:
                if not drained.called:
                    drained.callback(None)
