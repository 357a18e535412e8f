"""
Staying quiet under attack: failed authentications are throttled per
source address, and what gets logged about them is rate-limited. Pure: the
caller passes the time in.
"""

from __future__ import annotations

from collections import OrderedDict

from nswarm import defaults


class Throttle:
    """
    A token bucket of failed attempts per source (an address): each source
    may fail C{burst} times at once, then once every C{every} seconds. At
    most C{sources} sources are remembered (the least recently seen are
    forgotten first), so an attacker with many addresses cannot grow it.
    """

    def __init__(
        self,
        burst: int = defaults.AUTH_FAILURE_BURST,
        every: float = defaults.AUTH_FAILURE_EVERY,
        sources: int = defaults.AUTH_FAILURE_SOURCES,
    ) -> None:
        self.burst = burst
        self.every = every
        self.sources = sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        #: Connections per source that are open and have not yet authenticated (nor failed).
        self._pending: dict[str, int] = {}
        #: Failed authentications counted, in all.
        self.failures = 0

    def _tokens(self, source: str, now: float) -> float:
        tokens, when = self._buckets.get(source, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - when) / self.every)

    def allowed(self, source: str, now: float) -> bool:
        """Whether C{source} may try to authenticate now (it has failed less than its share)."""
        return source not in self._buckets or self._tokens(source, now) >= 1.0

    def may_open(self, source: str, now: float) -> bool:
        """
        Whether a new connection from C{source} may be accepted: a source that
        has failed before may have no more connections waiting to
        authenticate than the failures it has left (so its connections opened
        at once cannot all cost a TLS handshake); any other source may.
        """
        return source not in self._buckets or self._tokens(source, now) - self._pending.get(source, 0) >= 1.0

    def opened(self, source: str) -> None:
        """A connection from C{source} was accepted: it waits to authenticate."""
        self._pending[source] = self._pending.get(source, 0) + 1

    def settled(self, source: str) -> None:
        """A connection from C{source} that L{opened} authenticated, failed, or closed."""
        left = self._pending.get(source, 0) - 1
        if left > 0:
            self._pending[source] = left
        else:
            self._pending.pop(source, None)

    def failed(self, source: str, now: float) -> None:
        """C{source} failed to authenticate: it spends one token."""
        self.failures += 1
        tokens = max(0.0, self._tokens(source, now) - 1.0)
        self._buckets[source] = (tokens, now)
        self._buckets.move_to_end(source)
        while len(self._buckets) > self.sources:
            self._buckets.popitem(last=False)

    def retry_after(self, source: str, now: float) -> float:
        """Seconds until C{source} may try again."""
        return max(0.0, (1.0 - self._tokens(source, now)) * self.every)


class Quieter:
    """
    Says whether to log one more of a kind of event about a source: the
    first, then at most one every C{interval} seconds, with the number left
    unlogged in between. Remembers at most C{sources} sources.
    """

    def __init__(self, interval: float = defaults.DROP_LOG_INTERVAL, sources: int = defaults.AUTH_FAILURE_SOURCES):
        self.interval = interval
        self.sources = sources
        self._next: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def should_log(self, source: str, now: float) -> int | None:
        """
        None to stay quiet about this one; else the number of earlier ones
        not logged (0 for the first), which the log line should give.
        """
        due, unlogged = self._next.get(source, (now, 0))
        if now < due:
            self._next[source] = (due, unlogged + 1)
            return None
        self._next[source] = (now + self.interval, 0)
        self._next.move_to_end(source)
        while len(self._next) > self.sources:
            self._next.popitem(last=False)
        return unlogged
