"""
Deadlines kept by the SDK itself, for when no relay can answer for them: a
master or node that is stopped (SIGSTOP) or whose host hangs sends neither
the answer nor the L{DeadlineExceeded} its own sweep would. A client end
that runs heartbeats also sweeps, every L{SWEEP}, the requests it sent: one
still unanswered L{MARGIN} seconds past its deadline (so at most 0.1 s
past it) fails with
L{DeadlineExceeded} (and is cancelled upstream, for when the peer comes
back). The relays' own answer comes first whenever they can give it.

One dictionary entry per request and nothing per answer: the sweep drops
the entries of requests already answered.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import LoopingCall
from twisted.protocols import amp

from nswarm.amp_commands import CANCEL, COMMAND, ID, DeadlineExceeded
from nswarm.core.connection import MARGIN

#: Seconds between two sweeps; how long past its deadline a request waits for the relay's own answer is the
#: sans-IO core's L{MARGIN}, the same for every front end.
SWEEP = 0.05


class LocalDeadlines:
    """Mix in before L{nswarm.requests.Requests}: the sweep of the requests' deadlines."""

    _waiting: dict[bytes, Any]
    send: Any
    fail_request: Any
    peer: str
    _deadline_clock: Any = None
    _deadline_sweep: LoopingCall | None = None

    def watch_deadlines(self, clock: Any) -> None:
        """Keep the deadlines of the requests sent from now on, on C{clock} (an C{IReactorTime})."""
        self.stop_watching_deadlines()
        self._deadline_clock = clock
        self._deadlines: dict[bytes, float] = {}
        sweep = self._deadline_sweep = LoopingCall(self._sweep_deadlines)
        sweep.clock = clock
        sweep.start(SWEEP, now=False)

    def stop_watching_deadlines(self) -> None:
        """Stop the sweep (the connection is closing)."""
        if self._deadline_sweep is not None and self._deadline_sweep.running:
            self._deadline_sweep.stop()
        self._deadline_sweep = None
        self._deadline_clock = None

    def keep_deadline(self, box: amp.AmpBox, timeout: float) -> None:
        """Request C{box}, just sent (with its C{_ask}), must be answered within C{timeout} seconds."""
        clock = self._deadline_clock
        tag = box.get(b"_ask")
        if clock is not None and tag is not None:
            self._deadlines[tag] = clock.seconds() + timeout + MARGIN

    def _sweep_deadlines(self) -> None:
        now = self._deadline_clock.seconds()
        waiting = self._waiting
        for tag, deadline in list(self._deadlines.items()):
            if tag not in waiting:
                del self._deadlines[tag]
            elif deadline <= now:
                del self._deadlines[tag]
                self.send(amp.AmpBox({COMMAND: CANCEL, ID: tag}))
                self.fail_request(
                    tag,
                    DeadlineExceeded(
                        f"the deadline passed with no answer from the {self.peer} (this client's own check): it "
                        "may be stopped or overloaded; the call may or may not have run"
                    ),
                )
