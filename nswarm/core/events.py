"""
What a L{nswarm.core.connection.Connection} tells its front end, as plain
data: the answers and errors of its requests, the calls and events the peer
sends, cancellations, the parts of streamed results and the
grants of more, the time it next wants to be ticked, and a connection
it has decided to close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nswarm.caller import Caller
from nswarm.errors import NswarmError


@dataclass(slots=True)
class Answered:
    """Request C{tag} succeeded: C{value} is its decoded result (None for a request with an empty answer)."""

    tag: bytes
    value: Any


@dataclass(slots=True)
class Failed:
    """Request C{tag} failed with C{error}, a typed L{nswarm.errors.NswarmError} (or the TLS error that closed it)."""

    tag: bytes
    error: BaseException


@dataclass(slots=True)
class Refused:
    """
    Request C{tag} was refused before it ran, by a draining peer (C{error},
    a L{nswarm.errors.Draining}); it comes so only to a connection whose
    C{takes_refused} is set. C{box} (its tag taken off) and C{parse} send it
    again elsewhere, within its C{seconds} left; or fail it with C{error}.
    """

    tag: bytes
    error: NswarmError
    box: dict[bytes, bytes]
    parse: Any
    seconds: float


@dataclass(slots=True)
class CallReceived:
    """
    The node asks this service to run C{method}: answer with
    L{nswarm.core.running.RunsCalls.answer} (or C{fail}) using C{tag}
    (None: the caller wants no answer). C{caller} is who made the call.
    """

    tag: bytes | None
    method: str
    args: list[Any]
    kwargs: dict[str, Any]
    caller: Caller | None
    #: The caller's window if it asked for a streamed result (send parts while
    #: L{nswarm.core.running.RunsCalls.credit} allows, then C{end}), else None.
    stream: int | None = None


@dataclass(slots=True)
class EventReceived:
    """An event for this connection's subscriptions: its name and decoded payload."""

    event: str
    payload: Any


@dataclass(slots=True)
class CancelReceived:
    """The caller of the call with tag C{tag} gave up (or its deadline passed): stop its handler; send no answer."""

    tag: bytes


@dataclass(slots=True)
class PartReceived:
    """
    One part of the streamed result of request C{tag}, decoded, in order;
    once the consumer has taken it, tell the core
    (L{nswarm.core.streaming.CallsStreams.consumed}) so that it grants more.
    The request's L{Answered} (its value: the number of parts) ends the stream.
    """

    tag: bytes
    value: Any


@dataclass(slots=True)
class MoreReceived:
    """The caller of streamed call C{tag} took more parts: its handler may go on while C{credit(tag)} allows."""

    tag: bytes


@dataclass(slots=True)
class TimerWanted:
    """Call L{nswarm.core.connection.Connection.tick} at time C{at} (on the clock given as C{now}), or earlier."""

    at: float


@dataclass(slots=True)
class ConnectionClosed:
    """The core gave up on the connection (the peer fell silent, or is not AMP): close the transport, for C{error}."""

    error: NswarmError


Event = (
    Answered
    | Failed
    | Refused
    | CallReceived
    | EventReceived
    | CancelReceived
    | PartReceived
    | MoreReceived
    | TimerWanted
    | ConnectionClosed
)
