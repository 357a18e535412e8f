"""
Checking what a peer sends a relay before it is routed: the name it routes
on, the deadline left, the peer's rights; and logging registrations (as
counts and the first few names, so that a peer registering thousands does
not flood the log).
"""

from __future__ import annotations

from collections.abc import Container

from twisted.logger import Logger
from twisted.protocols import amp

from nswarm.amp_commands import TIMEOUT, DeadlineExceeded, InvalidRequest
from nswarm.defaults import CALL_TIMEOUT, LOGGED_NAMES, MAX_CALL_TIMEOUT
from nswarm.relay.names import check_event, check_name
from nswarm.relay.state import IPeer

log = Logger()


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
