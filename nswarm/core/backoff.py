"""
The reconnecting policy every client front end follows, as pure
functions: the wait before each attempt, and which failed requests are
sent again on the next connection. L{nswarm.reconnect} (Twisted) and
L{nswarm.aio} (asyncio) both use them.
"""

from __future__ import annotations

from nswarm import defaults
from nswarm.errors import AuthenticationFailed, Draining, PermissionDenied


def lost_delay(attempt: int, cap: float, draw: float) -> float:
    """
    The wait before attempt C{attempt} (1 for the first) to reconnect after
    losing a connection that was up: a step that starts at
    L{defaults.RECONNECT_INITIAL_DELAY} and grows 1.5 times per attempt up
    to C{cap}, of which a random part, from half to all of it, is waited
    (C{draw}, in [0, 1), picks it). Attempts so come at most C{cap} seconds
    apart however long the outage lasts, and clients that lost the same
    server spread out.
    """
    step = min(cap, defaults.RECONNECT_INITIAL_DELAY * 1.5 ** min(max(attempt - 1, 0), 100))
    return step * (0.5 + draw / 2)


def round_delay(failures: int, addresses: int, draw: float, cap: float = defaults.RECONNECT_LOST_MAX_DELAY) -> float:
    """
    An API client's wait before its next attempt after C{failures} failed
    ones in a row, going round C{addresses} masters: L{lost_delay}, its step
    growing once per round of the addresses.
    """
    return lost_delay(failures // max(addresses, 1) + 1, cap, draw)


def may_resend(error: BaseException, lost_with_connection: bool, idempotent: bool) -> bool:
    """
    Whether a request that failed with C{error} goes again on the next
    connection: one refused by a draining master (it did not run), whatever
    its method; one lost with its connection if its method is declared
    C{idempotent} (it may have run, and is safe to run twice).
    """
    return isinstance(error, Draining) or (lost_with_connection and idempotent)


def refused(error: BaseException) -> bool:
    """
    Whether a failed attempt to connect was refused by the server (a wrong
    key or certificate: nswarm's own error, not a lost connection), which
    ends reconnecting rather than retrying it.
    """
    return isinstance(error, (AuthenticationFailed, PermissionDenied))
