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

from collections.abc import Callable, Container, Iterable
from typing import Any, cast

from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import Attribute, Interface

from nswarm.amp_commands import (
    ANSWER,
    ASK,
    CALL,
    CALL_ALL,
    COMMAND,
    ERROR,
    ERROR_CODE,
    ID,
    PUBLISH,
    TIMEOUT,
    Cancelled,
    DeadlineExceeded,
    ImplementerLost,
    InternalError,
    InvalidRequest,
    NoSuchMethod,
    NswarmError,
    Overloaded,
)
from nswarm.boxes import remote_error, serialize
from nswarm.defaults import CALL_TIMEOUT, LOGGED_NAMES, MAX_CALL_TIMEOUT, SWEEP_INTERVAL
from nswarm.relay.gather import Gather
from nswarm.relay.names import check_event, check_name
from nswarm.relay.state import IClock, IPeer, PendingCalls, Registry, Request

log = Logger()

#: Errors with which an implementer turns a call down without running it.
_NOT_RUN = {NoSuchMethod.code, Overloaded.code}


class IRouter(Interface):
    """
    The decisions of one relay (the master's, or a node's): where each
    request goes and what a registration changes. Its AMP connections hand
    it every routed box and every registration; it acts through its
    L{Relay}.
    """

    relay = Attribute("The L{Relay} that forwards for it.")

    def call(caller: IPeer, box: amp.AmpBox) -> None:
        """Route C{caller}'s L{nswarm.amp_commands.Call} box, or raise an L{NswarmError} to answer it."""

    def call_all(caller: IPeer, box: amp.AmpBox) -> None:
        """Route C{caller}'s L{nswarm.amp_commands.CallAll} box to every implementer."""

    def publish(publisher: IPeer, box: amp.AmpBox) -> None:
        """Fan C{publisher}'s L{nswarm.amp_commands.Publish} box out (and answer it if it asks)."""

    def cancel(caller: IPeer, caller_tag: bytes) -> None:
        """C{caller} cancelled its request C{caller_tag}."""

    def implement(peer: IPeer, methods: list[str], idempotent: list[str], limits: list[int]) -> Any:
        """C{peer} implements C{methods}; may return a Deferred that fires once the change has taken effect."""

    def unimplement(peer: IPeer, methods: list[str]) -> Any:
        """C{peer} withdraws C{methods}."""

    def subscribe(peer: IPeer, patterns: list[str]) -> Any:
        """C{peer} subscribes to C{patterns}; may return a Deferred like L{implement}."""

    def unsubscribe(peer: IPeer, patterns: list[str]) -> Any:
        """C{peer} withdraws C{patterns}."""

    def authenticated(peer: IPeer) -> None:
        """C{peer} has just authenticated."""

    def lost(peer: IPeer) -> None:
        """C{peer}'s connection is gone: forget what it registered and fail what is pending on it."""


def dispatch(router: Any, peer: IPeer, command: bytes, box: amp.AmpBox) -> None:
    """
    Hand routed C{box} (a L{CALL}, L{CALL_ALL}, L{PUBLISH} or Cancel) from
    C{peer} to C{router}. A typed error answers the request; any other
    exception is logged and answered L{InternalError}: a bug must cost one
    request, not the connection and every other request on it.
    """
    try:
        if command == CALL:
            router.call(peer, box)
        elif command == CALL_ALL:
            router.call_all(peer, box)
        elif command == PUBLISH:
            router.publish(peer, box)
        else:
            router.cancel(peer, box.get(ID, b""))
    except NswarmError as error:
        peer.send_error(box.get(ASK), error)
    except Exception:
        log.failure("routing a {command} from {peer} failed", command=command.decode("ascii"), peer=peer.description)
        peer.send_error(box.get(ASK), InternalError("the relay failed to route this request: see its log"))


def time_left(box: amp.AmpBox) -> float:
    """
    The seconds left before the deadline of the request in C{box}; a box
    without one gets the default, which is written into it for the next hops.
    """
    raw = box.get(TIMEOUT)
    if raw is None:
        box[TIMEOUT] = repr(CALL_TIMEOUT).encode("ascii")
        return CALL_TIMEOUT
    try:
        left = float(raw)
    except ValueError:
        raise InvalidRequest("the call's timeout is not a number: send seconds, such as 5.0")
    if not 0 < left <= MAX_CALL_TIMEOUT:
        if left <= 0:
            raise DeadlineExceeded("the call's deadline had passed when it reached this relay")
        raise InvalidRequest(f"the call's timeout must be at most {MAX_CALL_TIMEOUT:g} seconds")
    return left


def routed_name(box: amp.AmpBox, key: bytes, kind: str, known: Container[str] = ()) -> str:
    """
    The method or event name a relay routes C{box} on, or L{InvalidRequest}.
    A name in C{known} (registered, so checked already) is not checked again.
    """
    try:
        name = box[key].decode("utf-8")
        if name in known:
            return name
        return check_event(name) if kind == "event" else check_name(kind, name)
    except (KeyError, UnicodeDecodeError):
        raise InvalidRequest(f"the {kind} name is missing or not UTF-8: send it as AMP Unicode")


def check_rights(peer: IPeer, action: str, names: list[str]) -> None:
    """Raise the peer's L{nswarm.amp_commands.PermissionDenied} unless it may C{action} every one of C{names}."""
    for name in names:
        if not peer.may(action, name):
            raise peer.refuse(action, name)


def log_registration(peer: IPeer, action: str, names: list[str]) -> None:
    """Log that C{peer} C{action} ("implements", "withdraws", ...) C{names}: a count and the first few."""
    if names:
        shown = ", ".join(names[:LOGGED_NAMES]) + (", ..." if len(names) > LOGGED_NAMES else "")
        log.info(
            "{peer} {action} {count} name(s): {shown}",
            peer=peer.description,
            action=action,
            count=len(names),
            shown=shown,
            nswarm_event="registration",
            role=peer.role,
            name=peer.name,
        )


def _nothing(request: Request[IPeer]) -> None:
    pass


class Relay:
    """
    Forwarding requests to the peer a router chose and mapping the answers
    back, within their deadlines; retrying a call an implementer turned
    down (or, if idempotent, lost); scatter-gather; fanning events out; and
    failing at once the requests pending on a lost peer. C{done} is told of
    every request that leaves L{pending} (answered, lost, cancelled or
    expired): a slot it held is free.
    """

    def __init__(
        self,
        clock: IClock,
        registry: Registry[IPeer],
        done: Callable[[Request[IPeer]], None] = _nothing,
    ) -> None:
        self.clock = clock
        self.registry = registry
        self.done = done
        self.pending: PendingCalls[IPeer] = PendingCalls()
        #: The call_all requests being gathered, by caller and caller tag.
        self.gathers: dict[tuple[IPeer, bytes], Gather] = {}
        self._sweeper: Any = None

    def choose(self, method: str, exclude: IPeer | None = None) -> IPeer | None:
        """The implementer of C{method} with the fewest calls in flight that is below its limit."""
        busy = None
        if self.registry.limits:
            busy = lambda peer, limit: self.pending.in_flight_for(peer, method) >= limit  # noqa: E731
        return self.registry.choose(method, self.pending.in_flight, exclude, busy)

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
            expires = self.clock.seconds() + left
            retry = box if method else None
            self.pending.add(Request(callee, tag, caller, caller_tag, expires, method, retry, idempotent))
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
        box[ANSWER if ANSWER in box else ERROR] = request.caller_tag
        request.caller.send(box)
        self._finished(request)
        return True

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
        for index, callee in enumerate(callees):
            request = amp.AmpBox(box)
            request[COMMAND] = command
            request[ASK] = b"%d" % index
            self.forward(gather, request, callee)

    def fan_out(self, box: amp.AmpBox, peers: Iterable[IPeer], exclude: IPeer | None = None) -> None:
        """
        Send event C{box} to every peer but C{exclude}, without asking for an
        answer. The box is serialised once and the same bytes written to every
        connection. A peer whose connection is not keeping up may drop it
        (see L{IPeer.may_buffer}); nobody else waits for that.
        """
        box.pop(ASK, None)
        data = serialize(box)
        for peer in peers:
            if peer is not exclude and (not peer.paused or peer.may_buffer(len(data))):
                peer.write(data)

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
                self._finished(request)
        for request in asked_by:
            request.callee.send_cancel(request.tag)
            self._finished(request)
        for key in [key for key in self.gathers if key[0] is peer]:
            self._drop_gather(self.gathers.pop(key))

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
        for request in self.pending.expired(self.clock.seconds()):
            request.caller.send_error(
                request.caller_tag,
                DeadlineExceeded(f"{request.callee.description} did not answer before the deadline: it was cancelled"),
            )
            request.callee.send_cancel(request.tag)
            self._finished(request)
        if len(self.pending):
            self._sweeper = self.clock.callLater(SWEEP_INTERVAL, self._sweep)

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

    def _drop_gather(self, gather: Gather) -> None:
        """Cancel what is left of C{gather} downstream."""
        _, asked_by = self.pending.lost(gather)
        for request in asked_by:
            request.callee.send_cancel(request.tag)
            self._finished(request)
