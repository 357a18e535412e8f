"""The credentials of the process at the other end of a UNIX socket (Linux's C{SO_PEERCRED})."""

from __future__ import annotations

import socket
import struct
from typing import Any, NamedTuple


class PeerCredentials(NamedTuple):
    """Who is at the other end of a UNIX socket."""

    pid: int
    uid: int
    gid: int


def peer_credentials(transport: Any) -> PeerCredentials | None:
    """
    The pid, uid and gid of the process at the other end of C{transport}'s
    UNIX socket; None for a transport without one (in memory, as in tests,
    or TCP) or a system without C{SO_PEERCRED}. An C{OSError} if the socket
    cannot say.
    """
    option = getattr(socket, "SO_PEERCRED", None)
    get_handle = getattr(transport, "getHandle", None)
    if option is None or get_handle is None:
        return None
    handle = get_handle()
    if getattr(handle, "family", None) != socket.AF_UNIX:
        return None
    try:
        return PeerCredentials(
            *struct.unpack("3i", handle.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
        )
    except struct.error as error:
        raise OSError(f"SO_PEERCRED gave no credentials: {error}")
