"""
The nswarm wire protocol: every AMP command, argument type and error.

Four ideas from the original design travel as typed AMP commands:

  - authenticate: L{Authenticate}, the first command on every connection;
  - implement: L{Implement} / L{Unimplement};
  - subscribe: L{Subscribe} / L{Unsubscribe};
  - task: L{Call} (a method call, answered), L{Cancel} (of a call) and
    L{Publish} (an event).

Connections (client side first)::

    API user        -> master api server    TLS, api auth key
    node upstream   -> master node server   mutual TLS (cluster CA), node auth key
    service         -> node service server  UNIX socket (owner only), service auth key

L{Call} and L{Publish} mean the same thing on every hop, so every hop uses the
same class. The master and the node are relays: they forward the box they
received (with a new C{_ask} tag) and never decode its payload, which is opaque
bytes encoded and decoded only by the two SDKs (JSON by default).
"""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

from nswarm.core.wire import (  # noqa: F401 (re-exported: every command name and box key)
    ANSWER,
    ARGS,
    ASK,
    AUTHENTICATE,
    CALL,
    CALL_ALL,
    CALLER,
    CANCEL,
    CHUNK,
    COMMAND,
    COUNT,
    ERROR,
    ERROR_CODE,
    ERROR_DESCRIPTION,
    EVENT,
    EVENTS,
    EXCLUDE,
    HANDED_TO,
    HEARTBEAT,
    ID,
    IDEMPOTENT,
    IMPLEMENT,
    KEY,
    LIMITS,
    METHOD,
    METHODS,
    MORE,
    NAME,
    PART,
    PAYLOAD,
    PUBLISH,
    RESULT,
    RESULTS,
    ROUTED,
    STREAM,
    SUBSCRIBE,
    TIMEOUT,
    UNIMPLEMENT,
    UNSUBSCRIBE,
)
from nswarm.errors import (  # noqa: F401 (re-exported: the wire protocol's errors)
    ERRORS,
    AuthenticationFailed,
    Cancelled,
    DeadlineExceeded,
    Draining,
    HandlerFailed,
    ImplementerLost,
    InternalError,
    InvalidRequest,
    LimitExceeded,
    NoSuchMethod,
    NotAuthenticated,
    NswarmError,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    UpstreamUnavailable,
)


def _codes(*errors: type[NswarmError]) -> dict[type[Exception], bytes]:
    return {error: error.code for error in errors}


# -- argument types ----------------------------------------------------------


class Payload(amp.Argument):
    """
    Opaque bytes of any length: AMP values hold at most 65,535 bytes, so a
    longer payload is split across the keys C{name}, C{name.1}, C{name.2}, ...
    Relays forward all of them untouched.
    """

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        value = objects[name.decode("ascii")]
        if not isinstance(value, bytes):
            raise TypeError(f"payload must be bytes, not {type(value).__name__}")
        strings[name] = value[:CHUNK]
        for index, start in enumerate(range(CHUNK, len(value), CHUNK), 1):
            strings[b"%s.%d" % (name, index)] = value[start : start + CHUNK]

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        first = strings.get(name)
        if first is None:
            raise KeyError(name)
        if len(first) < CHUNK:
            objects[name.decode("ascii")] = first
            return
        chunks = [first]
        index = 1
        while (chunk := strings.get(b"%s.%d" % (name, index))) is not None:
            chunks.append(chunk)
            index += 1
        objects[name.decode("ascii")] = b"".join(chunks)


# -- commands, with their names and box keys ---------------------------------
#
# Relays and SDK ends read and build boxes directly (DESIGN.md, principle 2):
# every command name and key they use is in nswarm.core.wire (imported above).


class Authenticate(amp.Command):
    """
    First command on every connection, from the connecting side: API user ->
    api server, node upstream -> node server, service -> service server.
    C{name} names the node or service in the server's logs. Anything sent
    before it succeeds is answered L{NotAuthenticated} and the connection is
    closed; a wrong key is answered L{AuthenticationFailed} and closed.
    """

    commandName = AUTHENTICATE
    arguments = [(KEY, amp.String()), (NAME, amp.Unicode(optional=True))]
    response = []
    fatalErrors = _codes(AuthenticationFailed, NotAuthenticated)


class Implement(amp.Command):
    """
    Service -> node, and node -> master: the sender now implements these
    methods, of which those also listed in C{idempotent} are safe to run
    twice (a call lost with its implementer is then retried once
    elsewhere); C{limits}, if given, holds for each method the most calls it
    may run at once (0: no limit). The node aggregates its services: it
    tells the master of a method's first implementer, and again when the
    method's idempotence (only if every local implementer says so) or limit
    (the sum of its services' limits, none if one has none) changes. It
    answers a service once the master has the change, so that a registered
    service can be called at once. Re-announcing a method is harmless and
    updates both.
    """

    commandName = IMPLEMENT
    arguments = [
        (METHODS, amp.ListOf(amp.Unicode())),
        (IDEMPOTENT, amp.ListOf(amp.Unicode(), optional=True)),
        (LIMITS, amp.ListOf(amp.Integer(), optional=True)),
    ]
    response = []
    errors = _codes(InvalidRequest, PermissionDenied, LimitExceeded)
    fatalErrors = _codes(NotAuthenticated)


class Unimplement(amp.Command):
    """Service -> node, node -> master: the sender no longer implements these methods."""

    commandName = UNIMPLEMENT
    arguments = [(METHODS, amp.ListOf(amp.Unicode()))]
    response = []
    errors = _codes(InvalidRequest, PermissionDenied, LimitExceeded)
    fatalErrors = _codes(NotAuthenticated)


class Subscribe(amp.Command):
    """Service -> node, node -> master: deliver the events matching these patterns to the sender."""

    commandName = SUBSCRIBE
    arguments = [(EVENTS, amp.ListOf(amp.Unicode()))]
    response = []
    errors = _codes(InvalidRequest, PermissionDenied, LimitExceeded)
    fatalErrors = _codes(NotAuthenticated)


class Unsubscribe(amp.Command):
    """Service -> node, node -> master: stop delivering the events of these patterns to the sender."""

    commandName = UNSUBSCRIBE
    arguments = [(EVENTS, amp.ListOf(amp.Unicode()))]
    response = []
    errors = _codes(InvalidRequest, PermissionDenied, LimitExceeded)
    fatalErrors = _codes(NotAuthenticated)


class Call(amp.Command):
    """
    A method call. API user or service -> master (a service's call goes via
    its node) -> a node that implements C{method} -> one of its services that
    implements it. C{args} and C{result} are opaque to the relays; the SDKs
    encode them as JSON (C{{"args": [...], "kwargs": {...}}} and the return
    value). C{timeout} is the time left, in seconds, before the call's
    deadline (default 30): each relay answers L{DeadlineExceeded} when it
    passes and sends L{Cancel} on, and forwards the call with the time left.
    C{caller} says who made the call, stamped by the relays over anything a
    client sent: the node writes C{service:NAME} on a call from one of its
    services, and the master writes C{api:NAME} on an API user's call and
    appends C{@NODE} to a node's stamp (C{service:NAME@NODE}). With
    C{stream} (a window of parts, at most 1024), the result is streamed:
    L{Part} boxes come first, then the answer (see L{Part}, L{More}).
    """

    commandName = CALL
    arguments = [
        (METHOD, amp.Unicode()),
        (ARGS, Payload()),
        (TIMEOUT, amp.Float(optional=True)),
        (CALLER, amp.Unicode(optional=True)),
        (STREAM, amp.Integer(optional=True)),
    ]
    response = [(RESULT, Payload())]
    errors = _codes(
        NoSuchMethod,
        HandlerFailed,
        ImplementerLost,
        UpstreamUnavailable,
        Draining,
        InvalidRequest,
        PermissionDenied,
        PayloadTooLarge,
        Overloaded,
        DeadlineExceeded,
        Cancelled,
        InternalError,
    )
    fatalErrors = _codes(NotAuthenticated)


class CallAll(amp.Command):
    """
    Scatter-gather: call C{method} on every current implementer. API user or
    service -> master -> every node implementing it (as CallAll) -> every
    local service implementing it (as a plain L{Call}). Each relay gathers
    the answers of its implementers, without decoding them, into
    C{results}: one frame per service (see L{nswarm.boxes.result_frame} and
    L{nswarm.boxes.error_frame}), each a result or an error, in no
    particular order.
    """

    commandName = CALL_ALL
    arguments = Call.arguments
    response = [(RESULTS, Payload())]
    errors = Call.errors
    fatalErrors = Call.fatalErrors


class Cancel(amp.Command):
    """
    Cancel the L{Call} sent on this connection with C{_ask} tag C{id}: from
    the caller towards the handler, hop by hop (API user or service ->
    master -> node -> service), sent without an answer. A relay answers the
    cancelled call L{Cancelled}; the service cancels the handler's Deferred.
    """

    commandName = CANCEL
    arguments = [(ID, amp.String())]
    requiresAnswer = False


class Part(amp.Command):
    """
    One part of a streamed result: from the service towards the caller, hop
    by hop (service -> node -> master -> API user or service), sent without
    an answer, for the L{Call} that carried C{stream} (the caller's window:
    how many parts may be on their way before it asks for more) and was sent
    on this connection with C{_ask} tag C{id}. C{result} is opaque to the
    relays (JSON, as a call's result), each part at most the payload limit.
    The call's answer follows the last part; its C{result} is the number of
    parts. A relay maps C{id} to the tag of the hop before it and forwards
    the box, never decoding the part; a call that sent a part is not
    retried.
    """

    commandName = PART
    arguments = [(ID, amp.String()), (RESULT, Payload())]
    requiresAnswer = False


class More(amp.Command):
    """
    The caller of a streamed L{Call} (sent on this connection with C{_ask}
    tag C{id}) takes C{count} more parts: from the caller towards the
    service, hop by hop, sent without an answer. A service sends a part only
    while it has sent fewer than it was granted (the window, then each
    C{More}): a slow reader holds its producer back.
    """

    commandName = MORE
    arguments = [(ID, amp.String()), (COUNT, amp.Integer())]
    requiresAnswer = False


class Heartbeat(amp.Command):
    """
    Both ways on every authenticated connection, every heartbeat interval
    (default 10 s), without an answer. A peer from which no box at all has
    arrived for three intervals is disconnected and treated as lost.
    """

    commandName = HEARTBEAT
    arguments = []
    requiresAnswer = False


class Publish(amp.Command):
    """
    An event. API user or service -> master (a service's event goes via its
    node), answered once the master has handed it on; then master -> each
    node with a matching subscription and node -> each matching service,
    sent without an C{_ask} (no answer) so that fan-out never waits. With
    C{exclude} present (the SDKs send 1), the publishing connection's own
    subscriptions do not get the event: the node leaves out the publishing
    service and the master the node it came through (which has delivered it
    to its other local subscribers itself). The master's answer says, in
    C{handed_to}, to how many connections (nodes and API users with a
    matching subscription) it wrote the event.
    """

    commandName = PUBLISH
    arguments = [(EVENT, amp.Unicode()), (PAYLOAD, Payload()), (EXCLUDE, amp.Integer(optional=True))]
    response = [(HANDED_TO, amp.Integer(optional=True))]
    errors = _codes(UpstreamUnavailable, Draining, InvalidRequest, PermissionDenied, PayloadTooLarge, InternalError)
    fatalErrors = _codes(NotAuthenticated)
