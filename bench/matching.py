"""
Micro-benchmarks of the routing core's two indexes (issue 10, item 4), run
by hand: C{python bench/matching.py}.

- matching: 50,000 wildcard subscriptions registered, each publish of an
  event name not seen before (a miss of the match cache) walks the token
  index; the old way (try every pattern) is timed on a few names for scale.
- sweeping: 300,000 requests pending, a few of them due; one sweep
  (C{expired(now)}) pops what is due from the deadline heap; the old way
  (look at every pending request) is timed for scale.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nswarm.relay.names import matches  # noqa: E402
from nswarm.relay.state import PendingCalls, Registry, Request  # noqa: E402


def each(count: int, run: Callable[[int], object]) -> float:
    """Microseconds per call of C{run(i)} for i in range(count)."""
    start = time.perf_counter()
    for number in range(count):
        run(number)
    return (time.perf_counter() - start) / count * 1e6


def matching(patterns: int = 50_000, events: int = 20_000) -> None:
    registry: Registry[str] = Registry()
    names = [f"orders.{number}.*" if number % 2 else f"*.{number}.>" for number in range(patterns)]
    for start in range(0, patterns, 1000):
        registry.subscribe(f"service-{start // 1000}", names[start : start + 1000])
    table = registry._events.peers
    print(f"matching, {patterns} wildcard patterns registered:")
    fresh = [f"orders.{number % patterns}.e{number}" for number in range(events)]
    new = each(events, lambda n: registry.subscribers(fresh[n]))
    print(f"  new event name (index): {new:8.2f} us each")
    cached = each(events, lambda n: registry.subscribers(fresh[n % 1000]))
    print(f"  repeated name (cache):  {cached:8.2f} us each")

    def naive(n: int) -> list[str]:
        event = f"orders.{n}.x{n}"
        return list(dict.fromkeys(v for p, values in table.items() if matches(p, event) for v in values))

    print(f"  new event name (old scan of every pattern): {each(20, naive):8.0f} us each")


def sweeping(pending_count: int = 300_000, due: int = 10, sweeps: int = 1000) -> None:
    pending: PendingCalls[str] = PendingCalls()
    for number in range(pending_count):
        expires = 1.0 + number if number < due * sweeps else 1e9
        pending.add(Request(f"node-{number % 100}", b"%d" % number, "api", b"%d" % number, expires))
    print(f"sweeping, {pending_count} requests pending, {due} due per sweep:")
    clock = [0.0]

    def sweep(n: int) -> None:
        clock[0] += due
        assert len(pending.expired(clock[0])) == due

    print(f"  expired(now) (heap):    {each(sweeps, sweep):8.2f} us each")

    def naive(n: int) -> list[Request[str]]:
        return [r for callee in pending._by_callee.values() for r in callee.values() if r.expires <= 0]

    print(f"  expired(now) (old scan of every request): {each(5, naive):8.0f} us each")

    def call(n: int) -> None:
        pending.add(Request("n", b"x%d" % n, "a", b"x%d" % n, 5.0))
        pending.pop("n", b"x%d" % n)

    calls = each(100_000, call)
    print(f"  add + pop of a call:    {calls:8.2f} us each (heap holds {len(pending._deadlines)} for {len(pending)})")


if __name__ == "__main__":
    matching()
    sweeping()
