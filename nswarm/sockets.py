"""
The socket under a connection (under TLS, if any): Nagle's algorithm off,
writes handed to the kernel at once (L{write_through}), and what the kernel
counts for it (bytes each way, the time since data last came), so that
nothing is counted in Python per write.
"""

from __future__ import annotations

import socket as _socket_module
import struct as _struct
from typing import Any

from twisted.protocols.policies import ProtocolWrapper


def _socket_under(transport: Any) -> Any:
    """The socket transport under C{transport} (under TLS, if any)."""
    socket = transport
    while isinstance(socket, ProtocolWrapper):
        socket = socket.transport
    return socket


def no_delay(transport: Any) -> Any:
    """
    Turn Nagle's algorithm off on the TCP socket under C{transport} (under
    TLS, if any), and return that socket transport. Boxes are written whole:
    with Nagle on, a small answer written behind a burst waits for the
    peer's delayed ACK, about 40 ms.
    """
    socket = _socket_under(transport)
    set_no_delay = getattr(socket, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)
    return socket


class WriteThrough:
    """
    The write of one socket transport that hands the data to the kernel at
    once when nothing written before waits in Twisted's buffer (see
    L{write_through}).
    """

    __slots__ = ("_buffered", "_send", "_socket")

    def __init__(self, socket: Any, buffered: Any) -> None:
        self._socket = socket
        self._buffered = buffered
        self._send = socket.writeSomeData

    def write(self, data: bytes) -> None:
        """Write C{data}: what the kernel takes now, the rest into Twisted's buffer."""
        socket = self._socket
        if (
            socket.connected
            and not socket.disconnecting
            and not socket._tempDataBuffer
            and socket.offset >= len(socket.dataBuffer)
            and data
        ):
            sent = self._send(data)
            if type(sent) is int and sent > 0:  # else an error, or nothing taken: Twisted's write finds out
                if sent >= len(data):
                    return
                data = data[sent:]
        self._buffered(socket, data)


def write_through(transport: Any) -> Any:
    """
    Let writes to the socket under C{transport} (under TLS, if any) go to
    the kernel at once when nothing written before waits in Twisted's
    buffer, as asyncio's transports do; only what the kernel does not take
    is buffered, as before. Twisted's own write waits for the reactor's next
    turn to send, which costs every hop a wakeup: a box forwarded by a relay
    now reaches the next process while the relay reads on, so that the hops
    of a chain work at once instead of in turns (a relay's events wait for
    the turn's end above it: L{nswarm.relay.turn}). Returns the socket
    transport. A transport that is not one of Twisted's socket connections
    (one in memory, say) is left as it is.
    """
    socket = _socket_under(transport)
    buffered = getattr(type(socket), "write", None)
    if (
        getattr(socket, "writeSomeData", None) is None
        or buffered is None
        or "write" in vars(socket)
        or not hasattr(socket, "_tempDataBuffer")
    ):
        return socket
    through = WriteThrough(socket, buffered)
    socket.write = through.write
    return socket


#: Where struct tcp_info (linux/tcp.h) holds tcpi_last_data_recv (u32, ms), tcpi_bytes_acked and
#: tcpi_bytes_received (u64 each); and the size read.
_LAST_DATA_RECV, _BYTES_ACKED, _BYTES_RECEIVED, _TCP_INFO_SIZE = 52, 120, 128, 136


def _tcp_info(transport: Any) -> bytes | None:
    """The kernel's struct tcp_info of the TCP socket under C{transport}, or None (not TCP, closed, not Linux)."""
    socket = _socket_under(transport)
    handle = getattr(socket, "getHandle", None)
    option = getattr(_socket_module, "TCP_INFO", None)
    if handle is None or option is None:
        return None
    try:
        sock = handle()
        if sock.family not in (_socket_module.AF_INET, _socket_module.AF_INET6):
            return None
        info = sock.getsockopt(_socket_module.IPPROTO_TCP, option, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return None
    return info if len(info) >= _TCP_INFO_SIZE else None


def socket_counters(transport: Any) -> tuple[int, int] | None:
    """
    The bytes received and sent (and acknowledged) on the TCP socket under
    C{transport}, TLS included, as the kernel counts them: nothing is counted
    per write. None where the kernel does not say (a UNIX socket, a closed one).
    """
    info = _tcp_info(transport)
    if info is None:
        return None
    (received,) = _struct.unpack_from("Q", info, _BYTES_RECEIVED)
    (sent,) = _struct.unpack_from("Q", info, _BYTES_ACKED)
    return received, sent


def silent_for(transport: Any) -> float | None:
    """Seconds since data last arrived on the TCP socket under C{transport} (None where the kernel does not say)."""
    info = _tcp_info(transport)
    if info is None:
        return None
    (milliseconds,) = _struct.unpack_from("I", info, _LAST_DATA_RECV)
    return milliseconds / 1000
