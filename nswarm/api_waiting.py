"""
The requests of an API client that reconnects (L{nswarm.api_reconnect}),
kept until they are answered: those made while no connection is ready wait
for one, each at most until its deadline; a call to a method the user
declared idempotent is kept too, so that it can be sent again if its
connection is lost (or a draining master refuses it). Everything else goes
out at once and is not kept: the client's hot path does not come here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from nswarm.amp_commands import CALL, CALL_ALL, COMMAND, EVENT, METHOD, PUBLISH, TIMEOUT, DeadlineExceeded
from nswarm.core.answers import Parse

if TYPE_CHECKING:
    from nswarm.api import APIClient

__all__ = ["Waiting", "WaitingRoom", "what"]


def what(box: dict[bytes, bytes]) -> str:
    """The request C{box} is, for a sentence: C{the call to 'greet'}, C{the event 'orders.created'}."""
    command = box.get(COMMAND, b"")
    if command in (CALL, CALL_ALL):
        return f"the call to {box.get(METHOD, b'').decode('utf-8', 'replace')!r}"
    if command == PUBLISH:
        return f"the event {box.get(EVENT, b'').decode('utf-8', 'replace')!r}"
    return f"the {command.decode('ascii', 'replace')} request"


class Waiting:
    """
    One request kept by a L{WaitingRoom}: sent at once or once a connection
    is ready (L{go}), waiting meanwhile at most until its deadline (then
    L{DeadlineExceeded}); kept for the next connection if C{resend} and its
    room says so (L{WaitingRoom.may_resend}). L{d} is the Deferred its caller
    holds; cancelling it cancels the request.
    """

    def __init__(self, room: WaitingRoom, box: dict[bytes, bytes], parse: Parse, timeout: float, resend: bool) -> None:
        self.room = room
        self.box = box
        self.parse = parse
        self.made = room.clock.seconds()
        self.deadline = self.made + timeout
        self.resend = resend
        self.d: Deferred[Any] = Deferred(self._cancel)
        #: The request on the current connection, once sent.
        self.sent: Deferred[Any] | None = None
        #: The timer of its deadline, while it waits.
        self.timer: IDelayedCall | None = None

    def go(self) -> None:
        """Send it on the client's connection, with the time it has left."""
        self._stop_timer()
        left = self.deadline - self.room.clock.seconds()
        if left <= 0:
            self.expire()
            return
        if TIMEOUT in self.box:
            self.box[TIMEOUT] = repr(float(left)).encode("ascii")
        self.sent = self.room.client.request_box(self.box, self.parse, left)  # its deadline kept by the client
        self.sent.addCallbacks(self._answered, self._failed)

    def expire(self) -> None:
        """Its deadline passed before a connection was ready."""
        self._stop_timer()
        self.room.forget(self)
        if not self.d.called:
            waited = self.room.clock.seconds() - self.made
            self.d.errback(
                DeadlineExceeded(
                    f"{what(self.box)} waited {waited:.3g} s, its whole deadline, for a connection to the master: "
                    "the client is reconnecting; give it more time, or check that a master is running"
                )
            )

    def fail(self, error: Exception) -> None:
        """The client closed, or gave up reconnecting, while it waited."""
        self._stop_timer()
        if not self.d.called:
            self.d.errback(error)

    def _answered(self, result: Any) -> None:
        self.sent = None
        if not self.d.called:
            self.d.callback(result)

    def _failed(self, failure: Failure) -> None:
        self.sent = None
        if self.d.called:
            return
        if self.resend and self.room.may_resend(failure) and self.room.clock.seconds() < self.deadline:
            self.room.hold(self)
            return
        self.d.errback(failure)

    def _cancel(self, _: Deferred[Any]) -> None:
        self.resend = False
        if self.sent is not None:
            self.sent.cancel()  # sends Cancel; its CancelledError fails self.d
            return
        self._stop_timer()
        self.room.forget(self)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None


class WaitingRoom:
    """
    The requests of C{client} that wait for a ready connection, in the order
    they came, on C{clock}; C{may_resend(failure)} says whether a request
    that may be sent again and failed so is to be.
    """

    def __init__(self, clock: Any, client: APIClient, may_resend: Callable[[Failure], bool]) -> None:
        self.clock = clock
        self.client = client
        self.may_resend = may_resend
        self._waiting: dict[Waiting, None] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def send(self, box: dict[bytes, bytes], parse: Parse, timeout: float, resend: bool) -> Deferred[Any]:
        """Request C{box} now, or once the client is not L{holding<nswarm.client.ClientProtocol.holding>}."""
        waiting = Waiting(self, box, parse, timeout, resend)
        if self.client.holding:
            self.hold(waiting)
        else:
            waiting.go()
        return waiting.d

    def hold(self, waiting: Waiting) -> None:
        """Keep C{waiting} until a connection is ready (or its deadline)."""
        left = waiting.deadline - self.clock.seconds()
        if left <= 0:
            waiting.expire()
            return
        if waiting.timer is None:
            waiting.timer = self.clock.callLater(left, waiting.expire)
        self._waiting[waiting] = None

    def forget(self, waiting: Waiting) -> None:
        """C{waiting} no longer waits (it expired, or was cancelled)."""
        self._waiting.pop(waiting, None)

    def release(self) -> None:
        """A connection is ready: send what waits, in the order it came (while it stays ready)."""
        while self._waiting and not self.client.holding:
            waiting = next(iter(self._waiting))
            del self._waiting[waiting]
            waiting.go()

    def fail_all(self, why: Callable[[dict[bytes, bytes]], Exception]) -> None:
        """Fail every request that waits, each with C{why(its box)}."""
        waiting, self._waiting = self._waiting, {}
        for request in waiting:
            request.fail(why(request.box))
