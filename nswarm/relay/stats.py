"""
What a relay counts, for the cluster's status and its Prometheus metrics:
calls by method and outcome with their latency, events published,
delivered and dropped, and what each connection handled. Pure, and cheap
where the hot path counts (a dict lookup, a bisect and a few additions per
answered call): everything else is computed when somebody asks.

Latencies fall into fixed buckets, ten per decade from 10 µs to 100 s: a
cumulative histogram since start (Prometheus exports every fifth bound) and
the same counts per 10-second slot, of which the last six give the p50 and
p99 "over the last minute" (interpolated within a bucket: within 26% of
the true value).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from twisted.protocols import amp

from nswarm import defaults
from nswarm.amp_commands import NswarmError
from nswarm.sockets import socket_counters

#: The upper bounds of the latency buckets, in seconds: 10 per decade, 1e-5 to 1e2 (the last bucket is above).
BOUNDS: tuple[float, ...] = tuple(10 ** (exponent / 10) for exponent in range(-50, 21))
#: The bounds Prometheus gets (every fifth: 10 µs, 31.6 µs, 100 µs, ...).
EXPORTED: tuple[int, ...] = tuple(range(0, len(BOUNDS), 5))
#: Seconds per slot of the latency window, and the slots that make "the last minute".
SLOT = 10.0
SLOTS = 6
#: The outcome of a call that was answered (others are error codes, such as "NO_SUCH_METHOD").
OK = "ok"
#: The label methods fold into past L{Stats.max_methods}.
OTHER = "_other"


def _codes(error: type[NswarmError]) -> Iterator[type[NswarmError]]:
    yield error
    for subclass in error.__subclasses__():
        yield from _codes(subclass)


#: The error codes counted as themselves: nswarm's and AMP's own. Any other a peer sends counts as L{OTHER}.
KNOWN_CODES: dict[bytes, str] = {
    code: code.decode()
    for code in {error.code for error in _codes(NswarmError)} | {amp.UNKNOWN_ERROR_CODE, amp.UNHANDLED_ERROR_CODE}
}


def outcome_of(code: bytes) -> str:
    """The outcome a call that failed with error C{code} is counted under (unknown codes fold into L{OTHER})."""
    return KNOWN_CODES.get(code, OTHER)


def percentile(counts: list[int], fraction: float) -> float | None:
    """The C{fraction} quantile of the latencies counted in C{counts} (by bucket), or None if there are none."""
    total = sum(counts)
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            low = BOUNDS[index - 1] if index else 0.0
            high = BOUNDS[index] if index < len(BOUNDS) else BOUNDS[-1] * 10
            return low + (high - low) * (rank - seen) / count
        seen += count
    return BOUNDS[-1]


class MethodStats:
    """One method's calls: outcomes, a latency histogram since start, and its last minute by slot."""

    __slots__ = ("ok", "errors", "histogram", "total_seconds", "slots", "slot_end", "current")

    def __init__(self) -> None:
        #: Calls answered with a result, and calls that failed by error code.
        self.ok = 0
        self.errors: dict[str, int] = {}
        #: Calls answered, by latency bucket, since start.
        self.histogram = [0] * (len(BOUNDS) + 1)
        self.total_seconds = 0.0
        #: The latency counts of the current slot and the ones before it (newest last).
        self.slots: list[tuple[float, list[int]]] = []
        self.slot_end = 0.0
        self.current: list[int] = []

    @property
    def outcomes(self) -> dict[str, int]:
        """Calls finished, by outcome (L{OK} or an error code)."""
        counts = {OK: self.ok} if self.ok else {}
        counts.update(self.errors)
        return counts

    def count(self, outcome: str) -> None:
        """One more call finished with C{outcome} (its latency not known: it was never sent on)."""
        if outcome == OK:
            self.ok += 1
        else:
            self.errors[outcome] = self.errors.get(outcome, 0) + 1

    def next_slot(self, now: float) -> None:
        """The slot of time C{now} begins: older slots than the last minute are forgotten."""
        start = now - now % SLOT
        self.slot_end = start + SLOT
        self.current = [0] * (len(BOUNDS) + 1)
        self.slots.append((start, self.current))
        del self.slots[:-SLOTS]

    def last_minute(self, now: float) -> list[int]:
        """The latency counts of the calls answered in the last minute (its six slots), by bucket."""
        merged = [0] * (len(BOUNDS) + 1)
        for start, counts in self.slots:
            if start > now - SLOT * SLOTS:
                for index, count in enumerate(counts):
                    merged[index] += count
        return merged

    def calls(self) -> int:
        """Calls finished, whatever their outcome."""
        return self.ok + sum(self.errors.values())


class Stats:
    """
    A relay's counters (latencies too, given a C{clock}: the master's are
    the ones the status shows). Methods are counted under their names up to
    C{max_methods} of them; the rest fold into L{OTHER}, so that the metrics'
    label cardinality is bounded whatever names callers send.
    """

    def __init__(self, clock: Any = None, max_methods: int = defaults.METRICS_METHODS) -> None:
        #: Where the time comes from, to measure latencies (None: they are not measured).
        self.clock = clock
        self.max_methods = max_methods
        self.methods: dict[str, MethodStats] = {}
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        #: Bytes received and sent by TCP connections that have closed (as last sampled), by role.
        self.closed_bytes: dict[str, list[int]] = {}

    def method(self, name: str) -> MethodStats:
        """The counters of method C{name} (or of L{OTHER}, past the cap)."""
        stats = self.methods.get(name)
        if stats is None:
            if len(self.methods) >= self.max_methods:
                name = OTHER
                stats = self.methods.get(name)
            if stats is None:
                stats = self.methods[name] = MethodStats()
        return stats

    def answered(self, method: str, callee: Any, code: bytes | None, sent: float) -> None:
        """
        A call to C{method}, sent at C{sent}, that C{callee} answered
        (C{code}: its error code, None if it succeeded). The callee keeps its
        own counts (C{calls_handled}, C{call_errors}). With a L{clock}, the
        latency is measured too (inline: this runs for every call).
        """
        stats = self.methods.get(method) or self.method(method)
        callee.calls_handled += 1
        if code is None:
            stats.ok += 1
        else:
            outcome = outcome_of(code)
            stats.errors[outcome] = stats.errors.get(outcome, 0) + 1
            errors = callee.call_errors
            if errors is None:
                errors = callee.call_errors = {}
            errors[outcome] = errors.get(outcome, 0) + 1
        if self.clock is not None:
            now = self.clock.seconds()
            seconds = now - sent
            index = bisect_left(BOUNDS, seconds)  # a bound is the inclusive top of its bucket ("le")
            stats.histogram[index] += 1
            stats.total_seconds += seconds
            if now >= stats.slot_end:
                stats.next_slot(now)
            stats.current[index] += 1

    def failed(self, method: str, code: bytes) -> None:
        """A call to C{method} failed here, with error code C{code}, before or instead of an answer."""
        self.method(method).count(outcome_of(code))

    def fanned_out(self, delivered: int, dropped: int) -> None:
        """An event was published: written to C{delivered} subscribers, dropped for C{dropped} not reading."""
        self.published += 1
        self.delivered += delivered
        self.dropped += dropped

    def lost(self, role: str, traffic: tuple[int, int] | None, dropped: int) -> None:
        """
        A connection of C{role} closed: keep its bytes (C{traffic}, received
        and sent, as last sampled; None if not known), and count as dropped
        the C{dropped} events it was sent that it never read.
        """
        if traffic is not None:
            totals = self.closed_bytes.setdefault(role, [0, 0])
            totals[0] += traffic[0]
            totals[1] += traffic[1]
        self.dropped += dropped

    def bytes_by_role(self, peers: Iterable[Any]) -> dict[str, list[int]]:
        """
        Bytes received and sent, by role, of the closed connections and the
        open C{peers} (TCP ones: the kernel counts, TLS included; a UNIX
        socket's are not known). A connection's counts are sampled as it
        authenticates, at each heartbeat and here; once it is closed, its
        last sample stays in the totals, which never go down.
        """
        totals = {role: list(pair) for role, pair in self.closed_bytes.items()}
        for peer in peers:
            traffic = socket_counters(peer.transport) if peer.transport is not None else None
            if traffic is not None:
                peer.traffic = traffic  # what a closed connection keeps: so that the totals never go down
            if peer.traffic is not None:
                pair = totals.setdefault(peer.role, [0, 0])
                pair[0] += peer.traffic[0]
                pair[1] += peer.traffic[1]
        return totals
