"""
The requests a relay forwarded and that wait for an answer: found by where
they went (to map an answer back), by where they came from (to cancel), and
by deadline (to expire them). Pure: time is passed in.
"""

from __future__ import annotations

from collections.abc import Hashable
from heapq import heapify, heappop, heappush
from itertools import count
from typing import Any, Generic, TypeVar

P = TypeVar("P", bound=Hashable)

#: The deadline heap is rebuilt when it holds more than twice the pending
#: requests plus this many (entries of requests answered before their deadline).
COMPACT_SLACK = 64


class Request(Generic[P]):
    """A request a relay forwarded: where it went, where it came from, and when it expires."""

    __slots__ = ("callee", "tag", "caller", "caller_tag", "expires", "method", "retry", "idempotent", "sent")

    def __init__(
        self,
        callee: P,
        tag: bytes,
        caller: P,
        caller_tag: bytes,
        expires: float,
        method: str | None = None,
        retry: Any = None,
        idempotent: bool = False,
        sent: float = 0.0,
    ) -> None:
        self.callee = callee
        self.tag = tag
        self.caller = caller
        self.caller_tag = caller_tag
        self.expires = expires
        #: The method called, for calls (None for events).
        self.method = method
        #: For a call not retried yet, what is needed to send it again.
        self.retry = retry
        #: Whether the call may run again elsewhere after its implementer was lost mid-call.
        self.idempotent = idempotent
        #: When it was sent on (for the latency of the answer).
        self.sent = sent


class PendingCalls(Generic[P]):
    """
    Requests a relay forwarded and that are not answered yet, found by the
    callee and the tag the relay gave the request there (to map an answer
    back), and by the caller and the caller's own tag (to cancel).

    Deadlines are kept in a heap, so that L{expired} costs in proportion to
    what expires, not to what is pending. A request answered, cancelled or
    lost stays in the heap until its deadline comes up (then it is skipped),
    the heap is rebuilt without it (once the heap holds more than twice the
    pending requests plus L{COMPACT_SLACK}), or the heap is emptied (once
    nothing is pending).
    """

    def __init__(self) -> None:
        self._by_callee: dict[P, dict[bytes, Request[P]]] = {}
        self._by_caller: dict[P, dict[bytes, Request[P]]] = {}
        self._count = 0
        #: (deadline, order added, request): every pending request, and some that are not any more.
        self._deadlines: list[tuple[float, int, Request[P]]] = []
        self._order = count()

    def add(self, request: Request[P]) -> None:
        """Remember C{request} until it is answered, cancelled, expired or lost."""
        self._by_callee.setdefault(request.callee, {})[request.tag] = request
        self._by_caller.setdefault(request.caller, {})[request.caller_tag] = request
        self._count += 1
        deadlines = self._deadlines
        heappush(deadlines, (request.expires, next(self._order), request))
        if len(deadlines) > 2 * self._count + COMPACT_SLACK:
            self._compact()

    def _forget(self, request: Request[P]) -> Request[P]:
        by_caller = self._by_caller.get(request.caller)
        # (not there if its caller reused the tag for a later request, which replaced it)
        if by_caller is not None and by_caller.get(request.caller_tag) is request:
            del by_caller[request.caller_tag]
            if not by_caller:
                del self._by_caller[request.caller]
        by_callee = self._by_callee.get(request.callee)
        if by_callee is not None:
            by_callee.pop(request.tag, None)
        self._count -= 1
        if not self._count:
            self._deadlines.clear()
        return request

    def _pending(self, request: Request[P]) -> bool:
        """Whether C{request} is still pending (not forgotten)."""
        by_callee = self._by_callee.get(request.callee)
        return by_callee is not None and by_callee.get(request.tag) is request

    def _compact(self) -> None:
        """Rebuild the deadline heap with only the pending requests."""
        self._deadlines = [entry for entry in self._deadlines if self._pending(entry[2])]
        heapify(self._deadlines)

    def pop(self, callee: P, tag: bytes) -> Request[P] | None:
        """The request C{callee}'s answer C{tag} is for, if it is still pending."""
        pending = self._by_callee.get(callee)
        request = pending.get(tag) if pending is not None else None
        return self._forget(request) if request is not None else None

    def answering(self, callee: P, tag: bytes) -> Request[P] | None:
        """The request C{callee} sent a part of its answer C{tag} for, if it is still pending (kept pending)."""
        pending = self._by_callee.get(callee)
        return pending.get(tag) if pending is not None else None

    def asked(self, caller: P, caller_tag: bytes) -> Request[P] | None:
        """The request C{caller} sent as C{caller_tag}, if it is still pending (kept pending)."""
        pending = self._by_caller.get(caller)
        return pending.get(caller_tag) if pending is not None else None

    def cancel(self, caller: P, caller_tag: bytes) -> Request[P] | None:
        """The request C{caller} sent as C{caller_tag}, if it is still pending."""
        pending = self._by_caller.get(caller)
        request = pending.get(caller_tag) if pending is not None else None
        return self._forget(request) if request is not None else None

    def lost(self, peer: P) -> tuple[list[Request[P]], list[Request[P]]]:
        """
        Forget C{peer}: return the requests pending on it (their callers get
        no answer now) and the requests it made (their callees need not go on).
        """
        answered_by = [self._forget(r) for r in list(self._by_callee.pop(peer, {}).values())]
        asked_by = [self._forget(r) for r in list(self._by_caller.get(peer, {}).values())]
        return answered_by, asked_by

    def expired(self, now: float) -> list[Request[P]]:
        """Forget and return the requests whose deadline is at or before C{now}, soonest first."""
        deadlines = self._deadlines
        late = []
        while deadlines and deadlines[0][0] <= now:
            request = heappop(deadlines)[2]
            if self._pending(request):
                late.append(self._forget(request))
        return late

    def in_flight(self, callee: P) -> int:
        """How many requests C{callee} has not answered yet."""
        pending = self._by_callee.get(callee)
        return len(pending) if pending is not None else 0

    def refusal(self, caller: P, caller_tag: bytes, cap: int) -> int:
        """
        Why a new request C{caller_tag} from C{caller} may not be added: 1 if
        that tag is still pending, 2 if C{caller} has C{cap} requests pending
        already (a cap of 0: no cap); 0 if it may.
        """
        pending = self._by_caller.get(caller)
        if pending is None:
            return 0
        if caller_tag in pending:
            return 1
        return 2 if cap and len(pending) >= cap else 0

    def asked_by(self, caller: P) -> int:
        """How many requests from C{caller} are still pending."""
        pending = self._by_caller.get(caller)
        return len(pending) if pending is not None else 0

    def in_flight_for(self, callee: P, method: str) -> int:
        """How many calls to C{method} C{callee} has not answered yet (counted: only limits need it)."""
        pending = self._by_callee.get(callee)
        return sum(1 for request in pending.values() if request.method == method) if pending else 0

    def callees(self) -> list[P]:
        """The peers that have requests pending."""
        return [callee for callee, pending in self._by_callee.items() if pending]

    def waiting_on(self, callee: P) -> list[Request[P]]:
        """The requests C{callee} has not answered yet."""
        return list(self._by_callee.get(callee, {}).values())

    def by_method(self) -> dict[str, int]:
        """How many calls are pending, by method (counted: for the status only)."""
        counts: dict[str, int] = {}
        for pending in self._by_callee.values():
            for request in pending.values():
                if request.method is not None:
                    counts[request.method] = counts.get(request.method, 0) + 1
        return counts

    def __len__(self) -> int:
        return self._count
