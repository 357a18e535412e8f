"""
A subscriber service for W4: it counts the C{bench.event} events it gets and
remembers when the last one came (C{time.monotonic()}, the same clock in
every process on Linux). It implements C{bench.count.NAME}, answering
C{{"count": ..., "last": ...}}, so the harness can ask each subscriber on
its own what it received.

    python bench/subscriber.py --config DIR/client.conf --bench-name sub-1
"""

from __future__ import annotations

import sys
import time
from typing import Any

from nswarm.service import Service, implement, subscribe

EVENT = "bench.event"


def subscriber_class(name: str) -> type[Service]:
    """A Service subclass named C{name} that counts events and implements C{bench.count.NAME}."""

    class Subscriber(Service):
        count = 0
        last = 0.0

        @subscribe(EVENT)
        def got(self, event: str, payload: Any) -> None:
            self.count += 1
            self.last = time.monotonic()

        @implement(f"bench.count.{name}")
        def report(self) -> dict[str, Any]:
            return {"count": self.count, "last": self.last}

    Subscriber.name = name
    return Subscriber


def main(argv: list[str]) -> None:
    if "--bench-name" not in argv:
        raise SystemExit("usage: subscriber.py --config DIR/client.conf --bench-name NAME")
    at = argv.index("--bench-name")
    name = argv[at + 1]
    subscriber_class(name).main(argv[:at] + argv[at + 2 :])


if __name__ == "__main__":
    main(sys.argv[1:])
