"""twistd nswarm-master: options and the service tree of the master daemon."""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from nswarm import defaults
from nswarm.config import (
    DaemonOptions,
    connection_settings,
    count,
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
from nswarm.master.master import ApiServerProtocol, Master, NodeServerProtocol
from nswarm.relay.listener import GuardedEndpoint, listening_service
from nswarm.relay.protocol import RelayFactory, RelayService
from nswarm.relay.reloading import AccessReloader
from nswarm.tls import server_options
from nswarm.web.site import has_port, http_service, master_site

log = Logger()


class Options(DaemonOptions):
    """Options of twistd nswarm-master."""

    section = "master"
    synopsis = "[options]"
    longdesc = (
        "Run an nswarm master: the node server (mutual TLS) that nodes connect "
        "to and the api server (TLS) that API users connect to. Defaults come "
        "from /etc/nswarm-master.conf, ~/.nswarm-master.conf and --config, in "
        "that order; the command line overrides them. 'nswarm init DIR' writes "
        "a ready master.conf."
    )
    optParameters = [
        ["config", "c", None, "INI file whose [master] section gives defaults for these options", path],
        ["interface", None, defaults.INTERFACE, "Address both servers listen on", str],
        ["node-port", None, str(defaults.NODE_PORT), "TCP port of the node server", port],
        ["api-port", None, str(defaults.API_PORT), "TCP port of the api server", port],
        ["ca", None, None, "Cluster CA certificate (PEM): node certificates must be signed by it", path],
        ["node-cert", None, None, "Certificate (PEM) the node server presents", path],
        ["node-cert-key", None, None, "Private key (PEM) of --node-cert", path],
        ["api-cert", None, None, "Certificate (PEM) the api server presents", path],
        ["api-cert-key", None, None, "Private key (PEM) of --api-cert", path],
        ["api-client-ca", None, None, "If given, API users must present a certificate signed by this CA", path],
        *secret_parameters("node-auth-key", "key nodes authenticate with"),
        *secret_parameters("api-auth-key", "key API users authenticate with, if there is no access file"),
        ["access", None, None, "Access file: the API users and nodes that may connect, and their rights", path],
        ["auth-timeout", None, str(defaults.AUTH_TIMEOUT), "Seconds a connection may take to authenticate", positive],
        [
            "ports-file",
            None,
            None,
            "Write the bound ports here once listening ('node PORT', 'api PORT', 'http PORT')",
            path,
        ],
        [
            "heartbeat",
            None,
            str(defaults.HEARTBEAT),
            "Seconds between heartbeats; 3 silent ones close a connection",
            positive,
        ],
        *limit_parameters("a node", defaults.METHODS_PER_NODE),
        [
            "queue-size",
            None,
            str(defaults.QUEUE_SIZE),
            "Most calls held back at once (waiting for a busy implementer or the grace period); more get Overloaded",
            count,
        ],
        [
            "grace",
            None,
            str(defaults.GRACE),
            "Seconds a call to a method nobody implements waits for an implementer (within its deadline)",
            non_negative,
        ],
        [
            "startup-window",
            None,
            str(defaults.STARTUP_WINDOW),
            "Seconds after starting during which calls to methods not registered yet wait (within their deadlines) "
            "and events are held, while the nodes reconnect",
            non_negative,
        ],
        [
            "drain-timeout",
            None,
            str(defaults.DRAIN_TIMEOUT),
            "Seconds the master waits, on SIGTERM, for the calls in flight to finish (it takes no new ones)",
            non_negative,
        ],
        *http_parameters(),
    ]

    def postOptions(self) -> None:
        for name in ("ca", "node-cert", "node-cert-key", "api-cert", "api-cert-key"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required (nswarm init writes a master.conf with it)")
        self.node_auth_key = self.secret("node-auth-key")
        self.access = load_access(self["access"])
        given = self["api-auth-key"] or self["api-auth-key-file"]
        self.api_auth_key = self.secret("api-auth-key") if given or self.access is None else None
        self.node_tls = server_options(self["node-cert"], self["node-cert-key"], client_ca=self["ca"])
        self.api_tls = server_options(self["api-cert"], self["api-cert-key"], client_ca=self["api-client-ca"])
        self.http_token = http_token(self)


class PortsFile:
    """Writes the bound port of every server to a file once all are listening."""

    def __init__(self, target: str | None, names: list[str]) -> None:
        self.target = target
        self.ports: dict[str, int | None] = dict.fromkeys(names)

    def bound(self, name: str, number: int) -> None:
        """Server C{name} listens on port C{number}: once all do, write the file (atomically)."""
        self.ports[name] = number
        if self.target and None not in self.ports.values():
            partial = self.target + ".tmp"
            with open(partial, "w") as out:
                out.writelines(f"{name} {number}\n" for name, number in self.ports.items())
            os.replace(partial, self.target)


@implementer(IStreamServerEndpoint)
class _Announced:
    """An endpoint that logs, and records in the ports file, where it listens."""

    def __init__(self, endpoint: IStreamServerEndpoint, name: str, ports: PortsFile, master: Master) -> None:
        self.endpoint = endpoint
        self.name = name
        self.ports = ports
        self.master = master

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def bound(listening: IListeningPort) -> IListeningPort:
            address: Any = listening.getHost()
            log.info(
                "{server} listening on {host}:{port}",
                server=self.name,
                host=address.host,
                port=address.port,
                nswarm_event="listening",
            )
            self.ports.bound(self.name.split()[0], address.port)
            self.master.addresses[self.name.split()[0]] = f"{address.host}:{address.port}"
            return listening

        return self.endpoint.listen(factory).addCallback(bound)


def http_server(options: Options, master: Master, ports: PortsFile, reactor: Any) -> Service:
    """The HTTP listener (C{--http}): metrics, status and dashboard; its port goes in the ports file as C{http}."""

    def bound(address: Any) -> None:
        port = getattr(address, "port", None)
        if port is not None:
            master.addresses["http"] = f"{address.host}:{port}"
            if "http" in ports.ports:
                ports.bound("http", port)

    return http_service(reactor, options["http"], master_site(master, options.http_token), bound)


class MasterService(MultiService):
    """The master daemon: on stop (SIGTERM), it drains (see L{Master.start_draining}) before its connections close."""

    def __init__(self, master: Master, drain_timeout: float) -> None:
        super().__init__()
        self.master = master
        self.drain_timeout = drain_timeout

    def stopService(self) -> Deferred[None]:
        d = self.master.start_draining(self.drain_timeout)
        d.addBoth(lambda _: MultiService.stopService(self))
        return d


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """The master: a node server and an api server sharing one L{Master}."""
    if reactor is None:
        from twisted.internet import reactor
    master = Master(
        reactor, grace=options["grace"], queue_size=options["queue-size"], startup_window=options["startup-window"]
    )
    ports = PortsFile(options["ports-file"], ["node", "api"] + (["http"] if has_port(options["http"]) else []))
    top = MasterService(master, options["drain-timeout"])
    RelayService(master).setServiceParent(top)
    servers = [
        ("node server", options["node-port"], options.node_tls, NodeServerProtocol, options.node_auth_key),
        ("api server", options["api-port"], options.api_tls, ApiServerProtocol, options.api_auth_key),
    ]
    factories: list[RelayFactory] = []
    for name, number, tls, protocol, key in servers:
        endpoint = GuardedEndpoint(
            TCP4ServerEndpoint(reactor, number, backlog=defaults.LISTEN_BACKLOG, interface=options["interface"]), tls
        )
        factory = RelayFactory(protocol, master, reactor, key, **connection_settings(options))
        factories.append(factory)
        master.listeners[name.split()[0]] = factory
        server = listening_service(_Announced(endpoint, name, ports, master), factory)
        server.setName(name)
        server.setServiceParent(top)
    if options["access"]:
        AccessReloader(options["access"], factories, reactor).setServiceParent(top)
    if options["http"]:
        http_server(options, master, ports, reactor).setServiceParent(top)
    return top
