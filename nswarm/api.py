"""
The SDK for API users: connect to a master's api server, then call methods
and publish events::

    client = await connect(reactor, "master.example", key=b"...", ca="ca.pem")
    print(await client.call("greet", "world"))
    await client.publish("orders.created", {"id": 7})
    await client.close()

or C{await connect_from_config(reactor, "DIR/client.conf")} with the file
C{nswarm init DIR} writes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from nswarm import defaults
from nswarm.amp_commands import NswarmError, UpstreamUnavailable
from nswarm.api_user import APIUser
from nswarm.client import ClientProtocol, check_key
from nswarm.config import ConfigError, read_client_config, read_secret_file, require
from nswarm.failures import Target, api_server, cancelled, closed_before_authenticating, diagnose
from nswarm.tls import client_options

__all__ = ["APIClient", "connect", "connect_from_config", "refused_before_authenticating"]


class APIClient(APIUser, ClientProtocol):
    """
    An authenticated connection to the api server. C{call} and C{publish}
    (from L{ClientProtocol}), C{subscribe} and C{status} (from
    L{nswarm.api_user.APIUser}) return Deferreds; L{close} ends the connection.
    """

    def __init__(self) -> None:
        super().__init__()
        self._closing: list[Deferred[None]] = []

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        for closing in self._closing:
            closing.callback(None)
        self._closing = []

    def lost(self) -> Deferred[None]:
        """A Deferred that fires once the connection is gone (at once if it is already)."""
        if self.transport is None:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._closing.append(waiting)
        return waiting

    def close(self) -> Deferred[None]:
        """Close the connection; the Deferred fires once it is closed."""
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
) -> Deferred[APIClient]:
    """
    Connect to the api server at C{host}:C{port} over TLS (its certificate
    must be signed by the cluster CA in PEM file C{ca} and name C{host}) and
    authenticate as the API user C{name} with its C{key}. C{cert}/C{cert_key}
    give a client certificate if the master requires one; the user's name
    is then the one in it, and C{name} may be left out. Fires with an
    L{APIClient}.
    Both ends send a heartbeat every C{heartbeat} seconds; a master silent
    for three of them is taken as gone (the connection closes).

    A wrong key or name fails with
    L{nswarm.amp_commands.AuthenticationFailed}; a connection that cannot
    be made, a TLS handshake that fails, a connection closed before
    authenticating, or a port that is not the api server's, with
    L{UpstreamUnavailable}, whose message says why and what to do (see
    L{nswarm.failures}).
    """
    check_key(key)
    try:
        tls = client_options(host, ca, cert, cert_key)
    except ConfigError:
        return fail()
    target = api_server(host, port, ca, timeout)
    endpoint = SSL4ClientEndpoint(reactor, host, port, tls, timeout=timeout)
    d = endpoint.connect(_OneConnection(APIClient()))

    def authenticate(client: APIClient) -> Deferred[APIClient]:
        def failed(failure: Failure) -> Failure:
            if client.transport is not None:
                client.transport.loseConnection()
            return _unavailable(failure, target)

        def authenticated(_: object) -> APIClient:
            client.start_heartbeats(reactor, heartbeat)
            return client

        return client.authenticate(key, name).addCallbacks(authenticated, failed)

    return d.addCallbacks(authenticate, _unavailable, errbackArgs=(target,))


class _OneConnection(Factory):
    """C{connectProtocol}'s factory, less its "Starting factory <... object at 0x...>" log line."""

    noisy = False

    def __init__(self, client: APIClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> APIClient:
        return self.client


def _unavailable(failure: Failure, target: Target) -> Failure:
    """
    C{failure}, the way C{connect} to C{target} fails with it: the typed
    errors of a refusal (a wrong key, say) as they are; a failure to reach
    the api server as L{UpstreamUnavailable} with the sentence that says
    why (the original error as its C{__cause__}).
    """
    diagnosis = diagnose(failure, target)
    if cancelled(failure) or (failure.check(NswarmError) and diagnosis.cause in ("authentication", "refused")):
        return failure
    translated = UpstreamUnavailable(diagnosis.message)
    translated.__cause__ = failure.value
    return Failure(translated)


def refused_before_authenticating(host: str, port: int) -> UpstreamUnavailable:
    """What a client learns when the master closed its connection before it could authenticate."""
    return UpstreamUnavailable(closed_before_authenticating(api_server(host, port, "ca")))


def connect_from_config(reactor: Any, source: str) -> Deferred[APIClient]:
    """L{connect} with the C{[api]} section of a client.conf (C{nswarm init} writes one)."""
    try:
        config = read_client_config(source, "api")
        key = read_secret_file(require(config, "auth-key-file", source, "api"))
        ca = require(config, "ca", source, "api")
        port = int(config.get("port", defaults.API_PORT))
    except ValueError:
        return fail()
    return connect(
        reactor,
        config.get("host", "localhost"),
        port,
        key=key,
        ca=ca,
        cert=config.get("cert"),
        cert_key=config.get("cert-key"),
        name=config.get("name"),
    )
