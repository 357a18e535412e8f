"""
H2's service (bench/hostile.py): it implements C{bench.hang}, whose answer
never comes (a Deferred never fired, until its caller or deadline cancels
it), and C{bench.hang.count}, answering how many C{bench.hang} calls it
holds now and has received in all.

    python bench/hang_service.py --config DIR/client.conf
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nswarm.service import Service, implement


class Hang(Service):
    name = "bench-hang"
    held = 0
    received = 0

    @implement("bench.hang")
    def hang(self) -> Deferred[None]:
        self.held += 1
        self.received += 1
        return Deferred(self._cancelled)

    def _cancelled(self, _: Deferred[None]) -> None:
        self.held -= 1

    @implement("bench.hang.count")
    def count(self) -> dict[str, Any]:
        return {"held": self.held, "received": self.received}


if __name__ == "__main__":
    Hang.main()
