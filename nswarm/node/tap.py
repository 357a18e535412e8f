"""twistd nswarm-node: options and the service tree of the node daemon."""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, UNIXServerEndpoint
from twisted.python import usage

from nswarm import defaults
from nswarm.config import (
    DaemonOptions,
    boolean,
    connection_settings,
    file_mode,
    http_parameters,
    http_token,
    limit_parameters,
    load_access,
    non_negative,
    path,
    port,
    positive,
    secret_parameters,
)
from nswarm.failures import node_server
from nswarm.identity import certificate_identities
from nswarm.node.node import Node, ServiceServerProtocol
from nswarm.node.upstream import UpstreamProtocol
from nswarm.relay.listener import GuardedEndpoint, listening_service
from nswarm.relay.protocol import RelayFactory, RelayService
from nswarm.relay.reloading import AccessReloader
from nswarm.tls import client_options
from nswarm.web.site import http_service, node_site


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
        [
            "name",
            None,
            None,
            "Name of this node: the one its certificate (node-cert) gives; if given, it must match",
            str,
        ],
        ["upstream-host", None, "localhost", "Host name of the master (must match its certificate)", str],
        ["upstream-port", None, str(defaults.NODE_PORT), "Port of the master's node server", port],
        ["ca", None, None, "Cluster CA certificate (PEM): the master's certificate must be signed by it", path],
        ["node-cert", None, None, "Certificate (PEM) this node presents to the master", path],
        ["node-cert-key", None, None, "Private key (PEM) of --node-cert", path],
        *secret_parameters("upstream-auth-key", "key this node authenticates to the master with"),
        ["service-socket", None, defaults.SERVICE_SOCKET, "UNIX socket path of the service server", path],
        [
            "service-socket-mode",
            None,
            f"{defaults.SERVICE_SOCKET_MODE:o}",
            "Permissions of the service socket, in octal",
            file_mode,
        ],
        *secret_parameters("service-auth-key", "key services authenticate with, if there is no access file"),
        ["access", None, None, "Access file: the services that may connect, with their keys and rights", path],
        ["auth-timeout", None, str(defaults.AUTH_TIMEOUT), "Seconds a service may take to authenticate", positive],
        [
            "reconnect-max-delay",
            None,
            str(defaults.NODE_RECONNECT_MAX_DELAY),
            "Longest wait, in seconds, between attempts to reach the master until it has been reached",
            positive,
        ],
        [
            "reconnect-lost-max-delay",
            None,
            str(defaults.RECONNECT_LOST_MAX_DELAY),
            "Longest wait, in seconds (jitter included), between attempts to reconnect once the connection is lost",
            positive,
        ],
        [
            "upstream-auth-timeout",
            None,
            str(defaults.CLIENT_AUTH_TIMEOUT),
            "Seconds the master may take to answer the TLS handshake and authentication before the node retries",
            positive,
        ],
        [
            "heartbeat",
            None,
            str(defaults.HEARTBEAT),
            "Seconds between heartbeats; 3 silent ones close a connection",
            positive,
        ],
        *limit_parameters("a service"),
        [
            "drain-timeout",
            None,
            str(defaults.DRAIN_TIMEOUT),
            "On stop, seconds to let calls in flight finish after withdrawing",
            non_negative,
        ],
        [
            "local-first",
            None,
            "yes",
            "While the master is unreachable, serve calls this node implements itself",
            boolean,
        ],
        *http_parameters(),
    ]

    def postOptions(self) -> None:
        for name in ("ca", "node-cert", "node-cert-key"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required (nswarm init writes a node.conf with it)")
        self.upstream_auth_key = self.secret("upstream-auth-key")
        self.access = load_access(self["access"])
        given = self["service-auth-key"] or self["service-auth-key-file"]
        self.service_auth_key = self.secret("service-auth-key") if given or self.access is None else None
        self["name"] = certified_name(self["node-cert"], self["name"])
        self.upstream_tls = client_options(self["upstream-host"], self["ca"], self["node-cert"], self["node-cert-key"])
        socket_directory(self["service-socket"])
        self.http_token = http_token(self)


def socket_directory(socket_path: str) -> str:
    """
    The directory of the service socket C{socket_path}, created with mode
    0700 if missing. A directory that other users may write to (they could
    replace the socket with their own), or that another user owns, is a
    usage error.
    """
    directory = os.path.dirname(os.path.abspath(socket_path))
    quoted = shlex.quote(directory)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        status = os.stat(directory)
    except OSError as error:
        raise usage.UsageError(
            f"cannot create the service socket's directory {directory}: {error.strerror}; "
            "create it (mode 700) or choose another service-socket"
        )
    me = os.geteuid()
    if status.st_uid != me:
        raise usage.UsageError(
            f"the service socket's directory {directory} is owned by uid {status.st_uid}, not by this daemon's "
            f"user {me}: run the node as that user, or choose a service-socket in a directory of your own"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        raise usage.UsageError(
            f"the service socket's directory {directory} is writable by other users (mode {mode:04o}): "
            f"make it owner-only with chmod 700 {quoted}, or choose another service-socket"
        )
    return directory


def certified_name(cert: str, name: str | None) -> str:
    """The node name PEM certificate C{cert} gives; a different C{name}, or none in it, is a usage error."""
    try:
        certificate = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except (OSError, ValueError) as error:
        raise usage.UsageError(f"cannot read the node certificate {cert}: {error}")
    names = [found for role, found in certificate_identities(certificate) if role == "node"]
    if len(names) != 1:
        raise usage.UsageError(
            f"the certificate {cert} names no node (nswarm://node/NAME): the master would refuse it; "
            "issue one with 'nswarm issue node NAME' and give it as node-cert"
        )
    if name is not None and name != names[0]:
        raise usage.UsageError(
            f"--name is {name!r} but the certificate {cert} names node {names[0]!r}: the master names a node "
            "by its certificate; drop --name, or issue a certificate for it with 'nswarm issue node NAME'"
        )
    return names[0]


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

    host, port = options["upstream-host"], options["upstream-port"]
    upstream = node.upstream.service(
        reactor,
        SSL4ClientEndpoint(reactor, host, port, options.upstream_tls, timeout=defaults.CONNECT_TIMEOUT),
        node_server(host, port, options["ca"]),
        RelayFactory(
            UpstreamProtocol,
            node,
            reactor,
            heartbeat=options["heartbeat"],
            max_payload=options["max-payload"],
            send_buffer=options["send-buffer"],
            calls_in_flight=0,  # the master's own limits hold for what it sends here
        ),
        options.upstream_auth_key,
        options["reconnect-max-delay"],
        options["reconnect-lost-max-delay"],
        options["upstream-auth-timeout"],
    )
    upstream.setName("upstream")
    upstream.setServiceParent(top)

    socket_path = options["service-socket"]  # its directory was made and checked by Options.postOptions
    factory = RelayFactory(
        ServiceServerProtocol, node, reactor, options.service_auth_key, **connection_settings(options)
    )
    endpoint = UNIXServerEndpoint(reactor, socket_path, mode=options["service-socket-mode"], wantPID=True)
    services = listening_service(GuardedEndpoint(endpoint), factory)
    services.setName("service server")
    services.setServiceParent(top)
    node.listeners["service"] = factory
    if options["http"]:
        http_service(reactor, options["http"], node_site(node, options.http_token)).setServiceParent(top)
    if options["access"]:
        AccessReloader(options["access"], [factory], reactor).setServiceParent(top)
    return top
