"""
H3's subscriber (bench/hostile.py): a service subscribed to many distinct
wildcard patterns, C{h3.0.*} to C{h3.N-1.*}, all on one handler, which
counts the events it gets. It implements C{bench.h3.count} to report them,
with how many patterns it holds and what refused the others.

One Subscribe box cannot carry 10,000 patterns (an AMP value holds at most
65,535 bytes, and the SDK sends the whole list as one), so the class
declares the first L{CHUNK} with C{@subscribe(*patterns)} and, once
registered, the service sends the rest in Subscribe requests of L{CHUNK}.

    python bench/pattern_service.py --config DIR/client.conf --patterns 10000
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twisted.internet.defer import Deferred

from nswarm.amp_commands import Subscribe
from nswarm.service import Service, implement, subscribe

#: Patterns per Subscribe box: about 24 KB of names, well within one AMP value.
CHUNK = 2000
PREFIX = "h3."


def pattern(index: int) -> str:
    return f"{PREFIX}{index}.*"


def pattern_class(patterns: int) -> type[Service]:
    """A Service subclass subscribed to C{h3.I.*} for I below C{patterns}."""
    first = [pattern(index) for index in range(min(patterns, CHUNK))]

    class Patterns(Service):
        name = "bench-h3"
        count = 0
        last = 0.0
        subscribed = len(first)
        refused = ""
        done = False

        @subscribe(*first)
        def got(self, event: str, payload: Any) -> None:
            self.count += 1
            self.last = time.monotonic()

        def handlers_for(self, event: str) -> list[str]:
            # Every h3.I.* subscribed is this one handler's, also those sent after registering.
            return ["got"] if event.startswith(PREFIX) else []

        @implement("bench.h3.count")
        def report(self) -> dict[str, Any]:
            return {
                "count": self.count,
                "last": self.last,
                "patterns": self.subscribed,
                "refused": self.refused,
                "done": self.done,
            }

        def start(self, *args: Any, **kwargs: Any) -> Any:
            started = super().start(*args, **kwargs)
            self.ready().addCallback(lambda _: self.subscribe_rest())
            return started

        def subscribe_rest(self) -> Deferred[None] | None:
            if self.subscribed >= patterns:
                self.done = True
                return None
            connection = self.connection
            assert connection is not None
            chunk = [pattern(index) for index in range(self.subscribed, min(patterns, self.subscribed + CHUNK))]

            def subscribed(_: object) -> Deferred[None] | None:
                self.subscribed += len(chunk)
                return self.subscribe_rest()

            def failed(failure: Any) -> None:
                self.refused = f"{type(failure.value).__name__}: {failure.value}"
                self.done = True

            return connection.request(Subscribe, events=chunk).addCallbacks(subscribed, failed)

    return Patterns


def main(argv: list[str]) -> None:
    if "--patterns" not in argv:
        raise SystemExit("usage: pattern_service.py --config DIR/client.conf --patterns N")
    at = argv.index("--patterns")
    patterns = int(argv[at + 1])
    pattern_class(patterns).main(argv[:at] + argv[at + 2 :])


if __name__ == "__main__":
    main(sys.argv[1:])
