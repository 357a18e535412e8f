"""
The services of the chaos suite (bench/chaos.py), run on the nodes by
LocalCluster as child processes:

    python bench/chaos_services.py --config DIR/client.conf --socket NODE.sock --chaos echo NAME LOG
    python bench/chaos_services.py --config DIR/client.conf --socket NODE.sock --chaos subscriber NAME LOG

(LocalCluster.start_service puts its own options first, then C{--chaos ...}.)

- C{echo}: C{chaos.idempotent(id)} (declared idempotent) and C{chaos.plain(id)}
  (not), each a short piece of work (L{WORK} seconds on the reactor's clock)
  answering C{[id, NAME]}. Every run of a handler appends C{"i ID"} or
  C{"p ID"} to LOG as it starts, with one C{os.write} on an C{O_APPEND}
  descriptor: once written it is the kernel's, so a SIGKILL loses none, and
  a restarted service appends to the same file. The harness finds in these
  logs any call that ran twice.
- C{subscriber}: subscribed to C{chaos.event}; appends the sequence number
  of every event it gets to LOG, the same way, in the order they came.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from nswarm.service import Service, implement, subscribe

IDEMPOTENT, PLAIN = "chaos.idempotent", "chaos.plain"
EVENT = "chaos.event"
#: Seconds each call spends in its handler, so that calls are in flight in the services.
WORK = 0.005


def _opened(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def echo_class(name: str, log: str) -> type[Service]:
    """A Service subclass named C{name} implementing the two echo methods, logging each run to C{log}."""
    descriptor = _opened(log)

    def run(kind: bytes, call_id: int) -> Deferred[list[Any]]:
        os.write(descriptor, b"%s %d\n" % (kind, call_id))
        from twisted.internet import reactor

        return deferLater(reactor, WORK, lambda: [call_id, name])

    class Echo(Service):
        @implement(IDEMPOTENT, idempotent=True)
        def idempotent(self, call_id: int) -> Deferred[list[Any]]:
            return run(b"i", call_id)

        @implement(PLAIN)
        def plain(self, call_id: int) -> Deferred[list[Any]]:
            return run(b"p", call_id)

    Echo.name = name
    return Echo


def subscriber_class(name: str, log: str) -> type[Service]:
    """A Service subclass named C{name} subscribed to L{EVENT}, logging each event's sequence number to C{log}."""
    descriptor = _opened(log)

    class Subscriber(Service):
        @subscribe(EVENT)
        def got(self, event: str, payload: Any) -> None:
            os.write(descriptor, b"%d\n" % payload["seq"])

    Subscriber.name = name
    return Subscriber


def main(argv: list[str]) -> None:
    """Run the service that C{--chaos ROLE NAME LOG} in C{argv} names; the other arguments are Service.main's."""
    roles = {"echo": echo_class, "subscriber": subscriber_class}
    at = argv.index("--chaos") if "--chaos" in argv else len(argv)
    if len(argv) < at + 4 or argv[at + 1] not in roles:
        raise SystemExit(
            "usage: chaos_services.py --config DIR/client.conf --socket S --chaos echo|subscriber NAME LOG"
        )
    role, name, log = argv[at + 1 : at + 4]
    roles[role](name, log).main(argv[:at] + argv[at + 4 :])


if __name__ == "__main__":
    main(sys.argv[1:])
