"""The credentials of the process at the other end of a UNIX socket (Linux's C{SO_PEERCRED})."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, NamedTuple

from nswarm.config import ConfigError


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


def check_node_peer(transport: Any) -> None:
    """
    Refuse a node socket that another user serves: read the credentials of
    the process at the other end of C{transport}'s UNIX socket
    (C{SO_PEERCRED}) and raise L{ConfigError} unless it runs as this
    process's effective user. Someone else may have taken the socket's path
    to collect service keys. Transports without a socket (in memory, as
    in tests) and systems without C{SO_PEERCRED} (other than Linux) are not
    checked.
    """
    try:
        credentials = peer_credentials(transport)
    except OSError as error:
        raise ConfigError(
            f"cannot tell which user serves the node socket {_where(transport)} ({error}): not sending the key"
        )
    if credentials is None:
        return
    where = _where(transport)
    pid, uid, _ = credentials
    me = os.geteuid()
    if uid != me:
        raise ConfigError(
            f"the node socket {where} is served by uid {uid} (pid {pid}), not by this service's user {me}: "
            "another user may have taken the socket; refusing to send the service key. "
            "Check the socket path, and run the service as the node's user"
        )


def _where(transport: Any) -> str:
    name = getattr(transport.getPeer(), "name", None)
    return os.fsdecode(name) if name else "(unnamed)"
