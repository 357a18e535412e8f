"""
The load of the chaos suite (bench/chaos.py): one API client keeping
L{WIDTH} calls in flight, each with a L{DEADLINE}-second deadline, to the
echo services' idempotent and non-idempotent methods in turn (call ids
0, 1, 2, ...: even ones idempotent), and publishing L{RATE} events a
second, each carrying its sequence number.

What happens to each call is counted in the fault window (L{Timeline}) in
which it ends; every event's outcome (how many nodes the master handed it
to, or the error its publish failed with) is kept, with the time it was
answered, for the report to set against what the subscribers got.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaos_services import EVENT, IDEMPOTENT, PLAIN
from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred, gatherResults
from twisted.internet.task import LoopingCall, deferLater

from nswarm.amp_commands import NswarmError
from nswarm.api import APIClient

#: Calls kept in flight, their deadline (s), and events published a second.
WIDTH, DEADLINE, RATE = 50, 5.0, 200
#: A call not answered within its deadline and this many seconds more is "hung"; it is still waited for, up
#: to HANG_LIMIT seconds in all (then cancelled), to see what it gets in the end.
HANG_MARGIN = 5.0
HANG_LIMIT = 60.0
#: A call answered (with a result or an error) more than this past its deadline is "late".
LATE = 0.1
#: After a failed call a worker waits this long before its next one, as a client backing off would: calls
#: failing at once (NoSuchMethod, say) would otherwise spin the harness.
ERROR_PAUSE = 0.1
#: Seconds between two rounds of publishing (the publisher's ticks also measure the harness's own stalls).
PUBLISH_TICK = 0.01
#: Seconds before a fault's injection from which events count in its window: an event handed on just
#: before a node is killed is lost by that fault.
EVENT_LEAD = 0.5


class Timeline:
    """The fault windows: window 0 is the steady state before the first fault, each fault opens the next."""

    def __init__(self) -> None:
        self.names = ["steady"]
        #: Wall-clock time (time.time(), as the daemons' log_time) each window opened.
        self.starts = [time.time()]

    @property
    def current(self) -> int:
        """The index of the window open now."""
        return len(self.names) - 1

    def open(self, name: str) -> int:
        """Open the window of fault C{name}, now; return its index."""
        self.names.append(name)
        self.starts.append(time.time())
        return self.current

    def window_of(self, when: float, lead: float = 0.0) -> int:
        """The window wall-clock time C{when} falls in, each window taken to open C{lead} seconds early."""
        index = 0
        for number, start in enumerate(self.starts):
            if when >= start - lead:
                index = number
        return index


@dataclass
class CallStats:
    """What the calls that ended in one window did."""

    calls: int = 0
    ok: int = 0
    #: Not answered within the deadline + HANG_MARGIN.
    hung: int = 0
    #: What the hung calls got in the end: "result", an error type, or "nothing" (in HANG_LIMIT seconds).
    hung_outcomes: Counter[str] = field(default_factory=Counter)
    #: Answered more than LATE past the deadline.
    late: int = 0
    slowest: float = 0.0
    #: Failed calls (not hung) by error type (an untyped failure shows as "Name (untyped)").
    errors: Counter[str] = field(default_factory=Counter)
    #: Of the failed calls, those to the idempotent method.
    idempotent_failed: int = 0
    #: Answers that were not [call id, service name].
    wrong: int = 0
    #: Successful answers by the service that gave them.
    answered_by: Counter[str] = field(default_factory=Counter)
    #: Per error type (and "hung", "late"): when the first and the last such call ended (wall clock).
    spans: dict[str, list[float]] = field(default_factory=dict)
    #: The first few late calls: what they were, how long they took, what they got.
    late_examples: list[str] = field(default_factory=list)
    #: The longest the harness's own reactor was busy (a tick of its publisher that came late, in seconds).
    stall: float = 0.0

    def note(self, what: str, when: float) -> None:
        """Call C{what} (an error type, "hung" or "late") ended at wall-clock time C{when}."""
        span = self.spans.setdefault(what, [when, when])
        span[1] = when

    def record(
        self,
        call_id: int,
        idempotent: bool,
        elapsed: float,
        value: Any,
        error: str | None,
        now: float,
        message: str = "",
    ) -> None:
        """Count call C{call_id}: it ended at C{now} (wall clock) after C{elapsed} s, with C{value} or C{error}."""
        self.calls += 1
        self.slowest = max(self.slowest, elapsed)
        if elapsed > DEADLINE + HANG_MARGIN:
            self.hung += 1
            self.hung_outcomes[error or "result"] += 1
            self.note("hung", now)
            return
        if elapsed > DEADLINE + LATE:
            self.late += 1
            self.note("late", now)
            if len(self.late_examples) < 3:
                kind = "idempotent" if idempotent else "plain"
                self.late_examples.append(f"{kind} {elapsed:.3f} s: {error} {message}")
        if error is None:
            self.ok += 1
            if isinstance(value, list) and len(value) == 2 and value[0] == call_id:
                self.answered_by[str(value[1])] += 1
            else:
                self.wrong += 1
        else:
            self.note(error, now)
            self.errors[error] += 1
            self.idempotent_failed += idempotent

    def as_json(self, start: float) -> dict[str, Any]:
        """The figures, for the JSON record; C{start}: when the window opened (wall clock)."""
        return {
            "calls": self.calls,
            "ok": self.ok,
            "hung": self.hung,
            "hung_outcomes": dict(self.hung_outcomes),
            "late": self.late,
            "late_examples": self.late_examples,
            "harness_stall_s": round(self.stall, 3),
            "slowest_s": round(self.slowest, 3),
            "errors": dict(self.errors),
            "idempotent_failed": self.idempotent_failed,
            "wrong_answers": self.wrong,
            "answered_by": dict(self.answered_by),
            "when_s": {
                what: [round(first - start, 3), round(last - start, 3)] for what, (first, last) in self.spans.items()
            },
        }


class Load:
    """The calls and the events; L{start} it, L{stop} it, then read L{stats} and L{events}."""

    def __init__(
        self, reactor: Any, client: APIClient, timeline: Timeline, width: int = WIDTH, rate: int = RATE
    ) -> None:
        self.reactor = reactor
        self.client = client
        self.timeline = timeline
        self.width = width
        self.rate = rate
        self.running = False
        #: Calls made so far (the next call's id).
        self.issued = 0
        #: Per window, what its calls did.
        self.stats: list[CallStats] = []
        #: Per event (by sequence number): [answered at (wall clock), handed to (int) or error (str), or None].
        self.events: list[list[Any]] = []
        self._workers: list[Deferred[None]] = []
        self._publishes: list[Deferred[None]] = []
        self._waiting_ok: list[tuple[float, float, Deferred[float]]] = []
        self._publisher = LoopingCall(self._publish_due)
        self._publisher.clock = reactor
        self._started = 0.0
        self._last_tick = 0.0

    def window(self) -> CallStats:
        """The statistics of the window open now."""
        while len(self.stats) <= self.timeline.current:
            self.stats.append(CallStats())
        return self.stats[self.timeline.current]

    def start(self) -> None:
        """Start the workers and the publisher."""
        self.running = True
        self._started = time.monotonic()
        self._workers = [ensureDeferred(self._worker()) for _ in range(self.width)]
        self._publisher.start(PUBLISH_TICK)

    async def stop(self) -> None:
        """Stop making calls and publishing; return once every call and publish made has ended."""
        self.running = False
        if self._publisher.running:
            self._publisher.stop()
        await gatherResults(self._workers + self._publishes, consumeErrors=True)

    def first_ok(self, after: float, made_after: float = 0.0) -> Deferred[float]:
        """
        Fires with the wall-clock time of the first call answered with a
        result after time C{after}, of those made after time C{made_after}.
        """
        waiting: Deferred[float] = Deferred()
        self._waiting_ok.append((after, made_after, waiting))
        return waiting

    def _answered_ok(self, made: float, now: float) -> None:
        if not self._waiting_ok:
            return
        waiting, self._waiting_ok = self._waiting_ok, []
        for after, made_after, d in waiting:
            if d.called:
                continue  # timed out
            if now > after and made > made_after:
                d.callback(now)
            else:
                self._waiting_ok.append((after, made_after, d))

    async def _worker(self) -> None:
        while self.running:
            call_id = self.issued
            self.issued += 1
            idempotent = call_id % 2 == 0
            started, made = time.monotonic(), time.time()
            d = self.client.call_with_timeout(DEADLINE, IDEMPOTENT if idempotent else PLAIN, call_id)
            d.addTimeout(HANG_LIMIT, self.reactor)
            value: Any = None
            error: str | None = None
            message = ""
            try:
                value = await d
            except TimeoutError:
                error = "nothing"
            except NswarmError as failure:
                error = type(failure).__name__
                message = str(failure)
            except Exception as failure:  # anything but a typed nswarm error is a finding
                error = f"{type(failure).__name__} (untyped)"
            now = time.time()
            self.window().record(call_id, idempotent, time.monotonic() - started, value, error, now, message)
            if error is None:
                self._answered_ok(made, now)
            else:
                await deferLater(self.reactor, ERROR_PAUSE, lambda: None)

    def _publish_due(self) -> None:
        now = time.monotonic()
        if self._last_tick:
            # How late this 10 ms tick came: the harness's own reactor was that long busy (GC, logs, TLS).
            window = self.window()
            window.stall = max(window.stall, now - self._last_tick - PUBLISH_TICK)
        self._last_tick = now
        due = int((now - self._started) * self.rate)
        while len(self.events) < due:
            self._publish(len(self.events))

    def _publish(self, seq: int) -> None:
        outcome: list[Any] = [None, None]
        self.events.append(outcome)
        d = self.client.publish(EVENT, {"seq": seq})
        d.addTimeout(self.client.timeout + HANG_MARGIN, self.reactor)
        self._publishes.append(d.addCallbacks(_handed(outcome), _refused(outcome)))


def _handed(outcome: list[Any]) -> Callable[[Any], None]:
    def handed(count: Any) -> None:
        outcome[:] = [time.time(), count if isinstance(count, int) else -1]

    return handed


def _refused(outcome: list[Any]) -> Callable[[Any], None]:
    def refused(failure: Any) -> None:
        error = failure.value
        name = "hung" if isinstance(error, TimeoutError) else type(error).__name__
        outcome[:] = [time.time(), name if isinstance(error, (NswarmError, TimeoutError)) else f"{name} (untyped)"]

    return refused
