"""twistd nswarm-node: options and the service tree of the node daemon."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, UNIXServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from nswarm._boxes import DEFAULT_HEARTBEAT
from nswarm._client import reconnecting
from nswarm.amp_commands import Authenticate
from nswarm.config import (
    DaemonOptions,
    boolean,
    file_mode,
    non_negative,
    path,
    port,
    positive,
    secret_parameters,
)
from nswarm.forwarding import (
    DEFAULT_AUTH_TIMEOUT,
    RelayFactory,
    RelayService,
    limit_parameters,
)
from nswarm.node.node import Node, ServiceServerProtocol, UpstreamProtocol
from nswarm.tls import client_options

log = Logger()


class Options(DaemonOptions):
    """Options of twistd nswarm-node."""

    section = "node"
    synopsis = "[options]"
    longdesc = (
        "Run an nswarm node: keep a mutual-TLS connection upstream to the "
        "master and serve local service applications on a UNIX socket. "
        "Defaults come from /etc/nswarm-node.conf, ~/.nswarm-node.conf and "
        "--config, in that order; the command line overrides them. "
        "'nswarm init DIR' writes a ready node.conf."
    )
    optParameters = [
        ["config", "c", None, "INI file whose [node] section gives defaults for these options", path],
        ["name", None, socket.gethostname(), "Name of this node in the master's logs", str],
        ["upstream-host", None, "localhost", "Host name of the master (must match its certificate)", str],
        ["upstream-port", None, "6666", "Port of the master's node server", port],
        ["ca", None, None, "Cluster CA certificate (PEM): the master's certificate must be signed by it", path],
        ["node-cert", None, None, "Certificate (PEM) this node presents to the master", path],
        ["node-cert-key", None, None, "Private key (PEM) of --node-cert", path],
        *secret_parameters("upstream-auth-key", "key this node authenticates to the master with"),
        ["service-socket", None, "~/.nswarm/node.sock", "UNIX socket path of the service server", path],
        ["service-socket-mode", None, "600", "Permissions of the service socket, in octal", file_mode],
        *secret_parameters("service-auth-key", "key services authenticate with"),
        ["auth-timeout", None, str(DEFAULT_AUTH_TIMEOUT), "Seconds a service may take to authenticate", positive],
        ["reconnect-max-delay", None, "30", "Longest wait, in seconds, between reconnection attempts", positive],
        ["heartbeat", None, str(DEFAULT_HEARTBEAT), "Seconds between heartbeats; 3 silent ones close a connection", positive],
        *limit_parameters("a service"),
        ["drain-timeout", None, "10", "On stop, seconds to let calls in flight finish after withdrawing", non_negative],
        ["local-first", None, "yes", "While the master is unreachable, serve calls this node implements itself", boolean],
    ]

    def postOptions(self) -> None:
        for name in ("ca", "node-cert", "node-cert-key"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required (nswarm init writes a node.conf with it)")
        self.upstream_auth_key = self.secret("upstream-auth-key")
        self.service_auth_key = self.secret("service-auth-key")
        self.upstream_tls = client_options(
            self["upstream-host"], self["ca"], self["node-cert"], self["node-cert-key"]
        )


def authenticate_upstream(node: Node, key: bytes) -> Any:
    """
    The ClientService's prepareConnection: authenticate with the master, then
    register what the local services provide. A failure closes the
    connection (ClientService then reconnects after a backoff).
    """

    def prepare(upstream: UpstreamProtocol) -> Deferred[Any]:
        d = upstream.callRemote(Authenticate, key=key, name=node.name)
        # ClientService hands us a proxy of the protocol: let the protocol
        # itself tell the node it is the upstream, so identity checks hold.
        return d.addCallback(lambda _: upstream.became_upstream())

    return prepare


class NodeService(MultiService):
    """The node daemon: on stop, it drains (see L{Node.drain}) before its connections close."""

    def __init__(self, node: Node, drain_timeout: float) -> None:
        super().__init__()
        self.node = node
        self.drain_timeout = drain_timeout

    def stopService(self) -> Deferred[None]:
        d = self.node.drain(self.drain_timeout)
        d.addBoth(lambda _: MultiService.stopService(self))
        return d


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """The node: an upstream ClientService and the service server sharing one L{Node}."""
    if reactor is None:
        from twisted.internet import reactor
    node = Node(options["name"], reactor, local_first=options["local-first"])
    top = NodeService(node, options["drain-timeout"])
    RelayService(node).setServiceParent(top)

    upstream = reconnecting(
        reactor,
        SSL4ClientEndpoint(reactor, options["upstream-host"], options["upstream-port"], options.upstream_tls),
        RelayFactory(
            UpstreamProtocol, node, reactor, heartbeat=options["heartbeat"], max_payload=options["max-payload"]
        ),
        authenticate_upstream(node, options.upstream_auth_key),
        f"node {node.name!r} (check upstream-host, upstream-port, upstream-auth-key-file, node-cert and ca)",
        options["reconnect-max-delay"],
    )
    upstream.setName("upstream")
    upstream.setServiceParent(top)

    socket_path = options["service-socket"]
    directory = os.path.dirname(os.path.abspath(socket_path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.stat(directory).st_mode & 0o077:
        log.warn(
            "the service socket's directory {directory} is open to other users: "
            "make it owner-only (chmod 700) so that nobody else can reach the socket while it is created",
            directory=directory,
        )
    services = StreamServerEndpointService(
        UNIXServerEndpoint(reactor, socket_path, mode=options["service-socket-mode"], wantPID=True),
        RelayFactory(
            ServiceServerProtocol,
            node,
            reactor,
            options.service_auth_key,
            options["auth-timeout"],
            options["heartbeat"],
            options["max-payload"],
            options["subscriber-buffer"],
        ),
    )
    services._raiseSynchronously = True
    services.setName("service server")
    services.setServiceParent(top)
    return top
