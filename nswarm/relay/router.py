"""
A relay's router: the interface of the decisions each relay (the master's,
a node's) makes, and L{dispatch}, which hands a routed box from a
connection to its router and answers what goes wrong with a typed error.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import Attribute, Interface

from nswarm.amp_commands import ASK, CALL, CALL_ALL, ID, PUBLISH, InternalError, NswarmError
from nswarm.relay.state import IPeer

log = Logger()


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
        if command == CALL or command == CALL_ALL:
            router.relay.count_refused(box, error.code)
        peer.send_error(box.get(ASK), error)
    except Exception:
        log.failure("routing a {command} from {peer} failed", command=command.decode("ascii"), peer=peer.description)
        peer.send_error(box.get(ASK), InternalError("the relay failed to route this request: see its log"))
