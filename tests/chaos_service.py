"""
The service the chaos tests (tests/test_chaos.py) run on every node, as a
child process: C{python tests/chaos_service.py --config DIR/client.conf
--socket NODE.sock}. Every answer carries this process's pid, so the test
knows which service (hence which node) ran the call.

- C{chaos.idempotent(i)} / C{chaos.plain(i)}: the same short piece of work
  (L{WORK} seconds, on the reactor's clock), declared idempotent or not;
  they answer C{[i, pid]}.
- C{chaos.park_idempotent(tag)} / C{chaos.park_plain(tag)}: log an event
  with C{chaos="parked"}, C{tag} and C{pid} on arrival, then answer
  C{[tag, pid]} after L{PARK} seconds: a call the test knows (from that
  event) is in flight here when it kills this process or its node.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from nswarm.service import Service, implement

#: Seconds each load call spends in the handler, so that calls are in flight.
WORK = 0.04
#: Seconds a parked call waits before answering (well under the tests' 5 s deadline).
PARK = 1.0


def _later(delay: float, value: Any) -> Deferred[Any]:
    from twisted.internet import reactor

    return deferLater(reactor, delay, lambda: value)


class ChaosService(Service):
    @implement("chaos.idempotent", idempotent=True)
    def idempotent(self, i: int) -> Deferred[list[int]]:
        return _later(WORK, [i, os.getpid()])

    @implement("chaos.plain")
    def plain(self, i: int) -> Deferred[list[int]]:
        return _later(WORK, [i, os.getpid()])

    @implement("chaos.park_idempotent", idempotent=True)
    def park_idempotent(self, tag: str) -> Deferred[list[Any]]:
        return self._park(tag)

    @implement("chaos.park_plain")
    def park_plain(self, tag: str) -> Deferred[list[Any]]:
        return self._park(tag)

    def _park(self, tag: str) -> Deferred[list[Any]]:
        self.log.info("chaos parked {tag} in {pid}", tag=tag, pid=os.getpid(), chaos="parked")
        return _later(PARK, [tag, os.getpid()])


if __name__ == "__main__":
    ChaosService.main()
