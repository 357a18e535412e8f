"""
The forwarding machinery both relays (the master and the node) compose.

A relay reads only the keys it routes on (the command name, the method or
event name, the deadline), gives a forwarded request a new C{_ask} tag on
the next hop, remembers in L{PendingCalls} which caller and tag it came
from, and maps the answer or error box back. It never parses a L{Call} or
L{Publish} into a Command nor builds a Deferred for it: that keeps a relay
hop a few microseconds of CPU (DESIGN.md, principle 2).

What goes where is the router's decision (L{IRouter}: the master's or the
node's); L{Relay} carries it out. Nothing here touches a transport or the
reactor: peers are L{IPeer}s and time comes from an L{IClock}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.logger import Logger
from twisted.protocols import amp

from nswarm.amp_commands import (
    ANSWER,
    ASK,
    COMMAND,
    ERROR,
    ERROR_CODE,
    HEARTBEAT,
    ID,
    METHOD,
    STREAM,
    TIMEOUT,
    Cancelled,
    DeadlineExceeded,
    ImplementerLost,
    InvalidRequest,
    NoSuchMethod,
    NswarmError,
    Overloaded,
)
from nswarm.boxes import remote_error, serialize
from nswarm.defaults import MAX_CALL_TIMEOUT, SWEEP_INTERVAL
from nswarm.relay.checks import time_left
from nswarm.relay.ejection import Ejection
from nswarm.relay.gather import Gather
from nswarm.relay.state import IClock, IPeer, PendingCalls, Registry, Request
from nswarm.relay.stats import OTHER, Stats

log = Logger()

#: Errors with which an implementer turns a call down without running it.
_NOT_RUN = {NoSuchMethod.code, Overloaded.code}


def _nothing(request: Request[IPeer]) -> None:
    pass


class Relay:
    """
    Forwarding requests to the peer a router chose and mapping the answers
    back, within their deadlines; retrying a call an implementer turned
    down (or, if idempotent, lost); scatter-gather; fanning events out; and
    failing at once the requests pending on a lost peer. C{done} is told of
    every request that leaves L{pending} (answered, lost, cancelled or
    expired): a slot it held is free. With C{latencies}, L{stats} measures
    how long each call took to be answered.
    """

    def __init__(
        self,
        clock: IClock,
        registry: Registry[IPeer],
        done: Callable[[Request[IPeer]], None] = _nothing,
        latencies: bool = False,
    ) -> None:
        self.clock = clock
        self.registry = registry
        self.done = done
        self.pending: PendingCalls[IPeer] = PendingCalls()
        #: The call_all requests being gathered, by caller and caller tag.
        self.gathers: dict[tuple[IPeer, bytes], Gather] = {}
        self._sweeper: Any = None
        #: What it counted: calls by method and outcome, latencies, events (see L{nswarm.relay.stats}).
        self.stats = Stats(clock if latencies else None)
        #: The peers taken out of balancing for their silence (see L{nswarm.relay.ejection}).
        self.ejection = Ejection()

    def count_refused(self, box: amp.AmpBox, code: bytes) -> None:
        """
        A call in C{box} was refused before it was sent on (with error
        C{code}): counted under its method if that is implemented here, else
        under L{OTHER} (so that names nobody implements cannot crowd the metrics).
        """
        try:
            method = box[METHOD].decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            method = OTHER
        self.stats.failed(method if self.registry.implemented(method) else OTHER, code)

    def choose(self, method: str, exclude: IPeer | None = None, answering: bool = False) -> IPeer | None:
        """
        The implementer of C{method} with the fewest calls in flight that is
        below its limit, and not ejected: unless all of them are and not
        C{answering} (only one that answers will do: a node has the master
        send the call to another node).
        """
        busy = None
        if self.registry.limits:
            busy = lambda peer, limit: self.pending.in_flight_for(peer, method) >= limit  # noqa: E731
        ejected = self.ejection.ejected
        if ejected:
            chosen = self.registry.choose(method, self.pending.in_flight, exclude, busy, ejected)
            if chosen is not None or answering:
                return chosen
        return self.registry.choose(method, self.pending.in_flight, exclude, busy)

    def silent(self, method: str) -> bool:
        """Whether every implementer of C{method} is ejected for its silence."""
        ejected = self.ejection.ejected
        return bool(ejected) and all(peer in ejected for peer in self.registry.implementers(method))

    def forward(self, caller: IPeer, box: amp.AmpBox, callee: IPeer, method: str | None = None) -> None:
        """
        Send C{caller}'s request C{box} on to C{callee} and remember where its
        answer goes, and until when it may take. A call to C{method} is kept
        until answered, to be sent once more elsewhere if C{callee} turns it
        down without running it (it has no implementer any more, or all are
        busy) or, for an idempotent call, if C{callee} is lost.
        """
        if ASK in box:
            try:  # the usual case, inline: a valid timeout given
                left = float(box[TIMEOUT])
                if not 0 < left <= MAX_CALL_TIMEOUT:
                    raise ValueError
            except (KeyError, ValueError):
                left = time_left(box)
            caller_tag = box[ASK]
            refusal = self.pending.refusal(caller, caller_tag, caller.calls_in_flight)
            if refusal:
                if refusal == 1:
                    raise InvalidRequest("this _ask tag is in use by a request still pending: use a new tag for each")
                caller.cap()
                raise Overloaded(
                    f"{caller.description} has {caller.calls_in_flight:,} calls in flight, the most one connection "
                    "may: wait for answers before sending more (calls-in-flight)"
                )
            tag = callee.next_tag()
            registry = self.registry
            idempotent = bool(registry.idempotent) and method is not None and registry.is_idempotent(callee, method)
            now = self.clock.seconds()
            retry = box if method else None
            self.pending.add(Request(callee, tag, caller, caller_tag, now + left, method, retry, idempotent, now))
            box[ASK] = tag
            if self._sweeper is None:
                self._sweeper = self.clock.callLater(SWEEP_INTERVAL, self._sweep)
        callee.send_request(box)

    def answer(self, callee: IPeer, tag: bytes, box: amp.AmpBox) -> bool:
        """
        Map C{callee}'s answer or error C{box} back to its caller. Return False
        if C{tag} is not one this relay forwarded (the box is the connection's own).
        """
        request = self.pending.pop(callee, tag)
        if request is None:
            return False
        if ERROR in box and request.retry is not None:
            code = box.get(ERROR_CODE)
            if code in _NOT_RUN or (code == ImplementerLost.code and request.idempotent):
                self._retry(request, cast(NswarmError, remote_error(box)))
                return True
        if ANSWER in box:
            box[ANSWER] = request.caller_tag
            code = None
        else:
            box[ERROR] = request.caller_tag
            code = box.get(ERROR_CODE, b"UNKNOWN")
        request.caller.send(box)
        if request.method is not None:
            self.stats.answered(request.method, callee, code, request.sent)
        self._finished(request)
        return True

    def part(self, callee: IPeer, box: amp.AmpBox) -> None:
        """
        A part of a streamed result from C{callee}: on to its caller, under the
        caller's tag, the part itself untouched. A call that has sent a part
        is never sent again. A part for no pending call (it ended) is dropped.
        """
        request = self.pending.answering(callee, box.get(ID, b""))
        if request is not None and not isinstance(request.caller, Gather):  # a call_all's results are never parts
            request.retry = None
            box[ID] = request.caller_tag
            request.caller.send(box)

    def more(self, caller: IPeer, box: amp.AmpBox) -> None:
        """C{caller} takes more parts of its streamed call: on to the callee, under this hop's tag."""
        request = self.pending.asked(caller, box.get(ID, b""))
        if request is not None:
            box[ID] = request.tag
            request.callee.send(box)

    def cancel(self, caller: IPeer, caller_tag: bytes) -> None:
        """C{caller} cancelled its request C{caller_tag}: cancel it downstream and answer L{Cancelled}."""
        gather = self.gathers.pop((caller, caller_tag), None)
        if gather is not None:
            self._drop_gather(gather)
            caller.send_error(caller_tag, Cancelled("the caller cancelled the call"))
            return
        request = self.pending.cancel(caller, caller_tag)
        if request is not None:
            request.callee.send_cancel(request.tag)
            caller.send_error(caller_tag, Cancelled("the caller cancelled the call"))
            self._count(request, Cancelled.code)
            self._finished(request)

    def gather(self, caller: IPeer, box: amp.AmpBox, callees: list[IPeer], command: bytes) -> None:
        """
        Send C{caller}'s call_all C{box} to every one of C{callees} as
        C{command} (CallAll to nodes, Call to services) and answer C{caller}
        once each has answered, failed, or run out of time.
        """
        if ASK not in box:
            raise InvalidRequest("call_all needs an answer: send it with an _ask tag")
        time_left(box)
        key = (caller, box[ASK])
        gather = Gather(box[ASK], caller, len(callees), lambda: self.gathers.pop(key, None))
        self.gathers[key] = gather
        box.pop(STREAM, None)  # a call_all's results are gathered, never streamed
        for index, callee in enumerate(callees):
            request = amp.AmpBox(box)
            request[COMMAND] = command
            request[ASK] = b"%d" % index
            self.forward(gather, request, callee)

    def fan_out(self, box: amp.AmpBox, peers: Iterable[IPeer], exclude: IPeer | None = None) -> int:
        """
        Send event C{box} to every peer but C{exclude}, without asking for an
        answer. The box is serialised once and the same bytes written to every
        connection. A peer whose connection is not keeping up may drop it
        (see L{IPeer.may_buffer}); nobody else waits for that. Returns to
        how many peers it was written.
        """
        box.pop(ASK, None)
        data = serialize(box)
        delivered = dropped = 0
        for peer in peers:
            if peer is not exclude:
                if not peer.paused or peer.may_buffer(len(data)):
                    peer.write(data)
                    delivered += 1
                else:
                    dropped += 1
        self.stats.fanned_out(delivered, dropped)
        return delivered

    def lost(self, peer: IPeer) -> None:
        """
        C{peer} disconnected: fail every request still pending on it (an
        idempotent call is retried elsewhere), cancel downstream what it had
        asked for, and drop its call_all gatherings.
        """
        answered_by, asked_by = self.pending.lost(peer)
        for request in answered_by:
            error = ImplementerLost(
                f"{peer.description} disconnected before answering: the call may or may not have run"
            )
            if request.idempotent:
                self._retry(request, error)
            else:
                request.caller.send_error(request.caller_tag, error)
                self._count(request, error.code)
                self._finished(request)
        for request in asked_by:
            request.callee.send_cancel(request.tag)
            self._finished(request)
        for key in [key for key in self.gathers if key[0] is peer]:
            self._drop_gather(self.gathers.pop(key))
        self.ejection.forget(peer)

    def _count(self, request: Request[IPeer], code: bytes) -> None:
        """C{request} ended here with error C{code}: count it under its method (if a call)."""
        if request.method is not None:
            self.stats.failed(request.method, code)

    def _finished(self, request: Request[IPeer]) -> None:
        """C{request} left L{pending}: its caller has a slot free again (see L{IPeer.cap})."""
        if request.caller.capped:
            request.caller.uncap()
        self.done(request)

    def stop(self) -> None:
        """Stop the relay's timers (the daemon is stopping)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        """
        Answer L{DeadlineExceeded} to every request past its deadline, and
        cancel it downstream. Runs while anything is in flight (it is not
        cancelled when the last answer comes: re-arming a timer per call
        would cost more than one idle tick).
        """
        self._sweeper = None
        now = self.clock.seconds()
        for request in self.pending.expired(now):
            request.caller.send_error(
                request.caller_tag,
                DeadlineExceeded(f"{request.callee.description} did not answer before the deadline: it was cancelled"),
            )
            request.callee.send_cancel(request.tag)
            self._count(request, DeadlineExceeded.code)
            self._finished(request)
        self._watch_silence(now)
        if len(self.pending) or self.ejection.ejected:
            self._sweeper = self.clock.callLater(SWEEP_INTERVAL, self._sweep)

    def _watch_silence(self, now: float) -> None:
        """Probe, eject or bring back the peers by what has been heard from them (see L{Ejection})."""
        probe, eject, back = self.ejection.check(self.pending.callees(), now)
        for peer in probe:
            peer.send(amp.AmpBox({COMMAND: HEARTBEAT, ASK: peer.next_tag()}))
        for peer in eject:
            log.warn(
                "{peer} has sent nothing for {seconds:g}s with calls pending: ejected from balancing until it "
                "answers; its idempotent calls are sent elsewhere",
                peer=peer.description,
                seconds=self.ejection.eject_after,
                nswarm_event="ejected",
                role=peer.role,
                name=peer.name,
            )
            peer.hold()
            for request in self.pending.waiting_on(peer):
                if request.idempotent and request.retry is not None:
                    self.pending.pop(peer, request.tag)
                    peer.send_cancel(request.tag)
                    self._retry(request, ImplementerLost(f"{peer.description} went silent: the call may have run"))
        for peer in back:
            peer.release()
            log.info(
                "{peer} answers again: back in balancing",
                peer=peer.description,
                nswarm_event="reinstated",
                role=peer.role,
                name=peer.name,
            )

    def _retry(self, request: Request[IPeer], error: NswarmError) -> None:
        """
        Send C{request} once more, to another implementer, within its
        deadline; answer C{error} if there is none (or no time).
        """
        self._finished(request)
        now = self.clock.seconds()
        if request.retry is not None and request.method is not None and request.expires > now:
            other = self.choose(request.method, exclude=request.callee)
            if other is not None and other.alive:
                log.info("retrying a call to {method!r} on {peer}", method=request.method, peer=other.description)
                box = request.retry
                box[ASK] = request.caller_tag
                box[TIMEOUT] = repr(request.expires - now).encode("ascii")
                self.forward(request.caller, box, other)
                return
        request.caller.send_error(request.caller_tag, error)
        self._count(request, error.code)

    def _drop_gather(self, gather: Gather) -> None:
        """Cancel what is left of C{gather} downstream."""
        _, asked_by = self.pending.lost(gather)
        for request in asked_by:
            request.callee.send_cancel(request.tag)
            self._finished(request)
