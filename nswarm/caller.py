"""
Who made a call, as the relays stamped it, for the handler running it.

The master stamps every call with its caller (C{api:NAME} for an API user)
and a node stamps the calls its services make (C{service:NAME}, to which the
master appends C{@NODE}), overwriting anything a client sent. A handler reads
it with L{current_caller} (also exported as C{nswarm.service.current_caller})
while it runs: in an C{async def} handler anywhere, in a plain one before it
returns (a Deferred's later callbacks run outside the call).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["Caller", "current_caller"]


@dataclass(frozen=True)
class Caller:
    """The identity that made a call: an API user, or a service on a node."""

    #: C{"api"} or C{"service"}.
    role: str
    #: The API user's or the service's name.
    name: str
    #: For a service, the node it runs on.
    node: str | None = None

    @classmethod
    def from_stamp(cls, stamp: bytes | None) -> Caller | None:
        """The caller a call's C{caller} stamp names, or None if it has none (a call within one node's relay)."""
        if not stamp:
            return None
        text = stamp.decode("utf-8", "replace")
        role, _, rest = text.partition(":")
        name, at, node = rest.partition("@")
        return cls(role, name, node if at else None)

    def __str__(self) -> str:
        where = f" on node {self.node!r}" if self.node else ""
        return f"{'API user' if self.role == 'api' else self.role} {self.name!r}{where}"


#: The caller of the handler running now; set by L{nswarm.service_protocol.ServiceProtocol} around each call.
current: ContextVar[Caller | None] = ContextVar("nswarm_caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the call whose handler is running now (None outside a handler, or if unknown)."""
    return current.get()
