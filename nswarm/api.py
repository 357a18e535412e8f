"""
The SDK for API users: connect to a master's api server, then call methods
and publish events::

    client = await connect(reactor, "master.example", key=b"...", ca="ca.pem")
    print(await client.call("greet", "world"))
    await client.publish("orders.created", {"id": 7})
    await client.close()

or C{await connect_from_config(reactor, "DIR/client.conf")} with the file
C{nswarm init DIR} writes. The client reconnects by itself when its
connection is lost (see L{nswarm.api_reconnect}), unless told not to.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.protocols import amp
from twisted.python.failure import Failure

from nswarm import defaults
from nswarm.api_reconnect import Address, Reconnector
from nswarm.api_user import APIUser
from nswarm.client import ClientProtocol, check_key
from nswarm.client_config import api_settings
from nswarm.config import ConfigError
from nswarm.failures import api_server
from nswarm.requests import command_request
from nswarm.tls import client_options

__all__ = ["APIClient", "connect", "connect_from_config"]


class APIClient(APIUser, ClientProtocol):
    """
    A client of the api server. C{call} and C{publish} (from
    L{ClientProtocol}), C{subscribe} and C{status} (from
    L{nswarm.api_user.APIUser}) return Deferreds; L{close} ends it. The one
    object stays the user's across reconnections (its C{keeper}, a
    L{Reconnector}, gives it each new connection).
    """

    keeper: Reconnector | None = None

    def __init__(self) -> None:
        super().__init__()
        self._closing: list[Deferred[None]] = []

    def request(self, command: type[amp.Command], **arguments: Any) -> Deferred[dict[str, Any]]:
        """
        Send C{command}; the Deferred fires with its parsed response or typed
        error. While the client reconnects, it waits for the new connection
        (at most C{client.timeout} seconds).
        """
        keeper = self.keeper
        if not self.holding or keeper is None:
            return super().request(command, **arguments)
        return keeper.send(*command_request(command, arguments, self), self.timeout, None)

    def request_now(self, command: type[amp.Command], **arguments: Any) -> Deferred[dict[str, Any]]:
        """Send C{command} on this connection at once, even while other requests wait: it prepares a connection."""
        return super().request(command, **arguments)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        keeper = self.keeper
        if keeper is not None:
            keeper.losing()
            try:
                super().connectionLost(reason)
            finally:
                keeper.lost(reason)
            return
        super().connectionLost(reason)
        for closing in self._closing:
            closing.callback(None)
        self._closing = []

    def lost(self) -> Deferred[None]:
        """
        A Deferred that fires once the client is gone for good (at once if
        it is): closed, its connection lost while reconnecting is off, or
        reconnecting given up.
        """
        if self.keeper is not None:
            return self.keeper.gone()
        if self.transport is None:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._closing.append(waiting)
        return waiting

    def close(self) -> Deferred[None]:
        """Stop reconnecting and close the connection; the Deferred fires once it is closed."""
        if self.keeper is not None:
            return self.keeper.close()
        if self.transport is None:
            return succeed(None)
        closing: Deferred[None] = Deferred()
        self._closing.append(closing)
        self.transport.loseConnection()
        return closing


def connect(
    reactor: Any,
    host: str = "localhost",
    port: int = defaults.API_PORT,
    *,
    key: bytes,
    ca: str,
    cert: str | None = None,
    cert_key: str | None = None,
    timeout: float = defaults.CONNECT_TIMEOUT,
    heartbeat: float = defaults.HEARTBEAT,
    name: str | None = None,
    hosts: Sequence[Address] | None = None,
    reconnect: bool = True,
    idempotent: Iterable[str] = (),
) -> Deferred[APIClient]:
    """
    Connect to the api server at C{host}:C{port} over TLS (its certificate
    must be signed by the cluster CA in PEM file C{ca} and name C{host}) and
    authenticate as the API user C{name} with its C{key}. C{cert}/C{cert_key}
    give a client certificate if the master requires one; the user's name
    is then the one in it, and C{name} may be left out. Fires with an
    L{APIClient}.
    C{hosts}, a list of C{(host, port)}, names several masters instead:
    each is tried in turn until one takes the connection.
    Both ends send a heartbeat every C{heartbeat} seconds; a master silent
    for three of them is taken as gone (the connection closes).

    With C{reconnect} (the default), a lost connection is made again (to
    the next address, with backoff: at most about a second apart), and
    requests made meanwhile wait for it within their deadlines; calls to the
    C{idempotent} methods that were lost with it are sent again (they must
    be C{@implement(idempotent=True)} in their services). See
    L{nswarm.api_reconnect}.

    A wrong key or name fails with
    L{nswarm.amp_commands.AuthenticationFailed}; a connection that cannot
    be made, a TLS handshake that fails or gets no answer in C{timeout}
    seconds, a connection closed before authenticating, or a port that is
    not the api server's, with L{UpstreamUnavailable}, whose message says
    why and what to do (see L{nswarm.failures}).
    """
    check_key(key)
    masters = _addresses(hosts) if hosts is not None else [(host, port)]
    methods = _names(idempotent)
    try:
        tls = {address: client_options(address[0], ca, cert, cert_key) for address in masters}
    except ConfigError:
        return fail()
    reconnector = Reconnector(
        reactor,
        APIClient(),
        masters,
        endpoint=lambda address: SSL4ClientEndpoint(reactor, *address, tls[address], timeout=timeout),
        target=lambda address: api_server(*address, ca, timeout),
        key=key,
        name=name,
        heartbeat=heartbeat,
        timeout=timeout,
        reconnect=reconnect,
        idempotent=methods,
    )
    return reconnector.start()


def _addresses(hosts: Sequence[Address]) -> list[Address]:
    """C{connect}'s C{hosts}, checked: (host, port) pairs, at least one."""
    masters = [tuple(address) for address in hosts]
    if not masters:
        raise ValueError("hosts is empty: give at least one (host, port) of a master")
    for address in masters:
        if len(address) != 2 or not isinstance(address[0], str) or not isinstance(address[1], int):
            raise TypeError(f"hosts takes (host, port) pairs such as ('m1', 6667), not {address!r}")
    return masters  # type: ignore[return-value]


def _names(idempotent: Iterable[str]) -> list[str]:
    """C{connect}'s C{idempotent}, checked: method names (one name alone is taken as one name)."""
    listed = [idempotent] if isinstance(idempotent, str) else list(idempotent)
    for method in listed:
        if not isinstance(method, str):
            raise TypeError(f"idempotent takes method names, not {method!r}")
    return listed


def connect_from_config(
    reactor: Any, source: str, *, reconnect: bool | None = None, idempotent: Iterable[str] | None = None
) -> Deferred[APIClient]:
    """
    L{connect} with the C{[api]} section of a client.conf (C{nswarm init}
    writes one). C{reconnect} and C{idempotent}, if given, take the place
    of the file's keys of those names.
    """
    try:
        settings = api_settings(source, reconnect=reconnect, idempotent=idempotent)
    except ValueError:
        return fail()
    return connect(reactor, **settings)
