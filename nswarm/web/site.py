"""
The HTTP listener of a master or a node (C{--http}): a C{twisted.web} site
whose resources are

  - C{/}: the dashboard, a static page (with C{dashboard.js} and
    C{dashboard.css}) that polls C{status.json} every second; it holds no
    data, so it is served without the token;
  - C{/status.json}: the cluster's status document (the master,
    L{nswarm.master.status.cluster_report}) or the node's own
    (L{nswarm.node.status.node_report});
  - C{/metrics}: Prometheus metrics (L{nswarm.web.metrics}).

With a token (C{--http-token-file}), C{/status.json} and C{/metrics} answer
401 unless the request carries C{Authorization: Bearer TOKEN}.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.pages import notFound
from twisted.web.resource import EncodingResourceWrapper, IResource, Resource
from twisted.web.server import NOT_DONE_YET, GzipEncoderFactory, Request, Site
from zope.interface import implementer

from nswarm.master.status import cluster_report
from nswarm.node.status import node_report
from nswarm.relay.listener import listening_service
from nswarm.web.metrics import MasterCollector, MetricsResource, NodeCollector, registry_of

log = Logger()

#: Seconds an idle HTTP connection stays open.
IDLE_TIMEOUT = 60
#: What the dashboard page may load: only its own script, style and status document.
PAGE_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: The error a request without the right bearer token gets (with a 401).
UNAUTHORIZED = (
    "this listener needs its bearer token: send the header 'Authorization: Bearer TOKEN' with the token in its "
    "http-token-file (to open the dashboard, add #token=TOKEN to its address)"
)


def authorized(request: Request, token: bytes | None) -> bool:
    """Whether C{request} may read data: there is no C{token}, or it sends C{Authorization: Bearer TOKEN}."""
    if token is None:
        return True
    header = request.getHeader(b"authorization") or b""
    scheme, _, credentials = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)


def no_store(request: Request, content_type: bytes) -> None:
    """Headers of a data answer: its type, never cached, never sniffed as something else."""
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")


class Protected(Resource):
    """C{wrapped} (a leaf), answered only to requests that carry the bearer C{token} (if there is one)."""

    isLeaf = True

    def __init__(self, wrapped: IResource, token: bytes | None) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.token = token

    def render(self, request: Request) -> Any:
        """401 with a JSON error saying how to pass the token, or C{wrapped}'s answer."""
        if not authorized(request, self.token):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Bearer realm="nswarm"')
            no_store(request, b"application/json")
            return json.dumps({"error": UNAUTHORIZED}).encode()
        return self.wrapped.render(request)


class StaticFile(Resource):
    """A file of the dashboard (package data), served as C{content_type} with the page's security headers."""

    isLeaf = True

    def __init__(self, name: str, content_type: bytes) -> None:
        super().__init__()
        self.content = files("nswarm.web").joinpath(name).read_bytes()
        self.content_type = content_type

    def render_GET(self, request: Request) -> bytes:
        """The file, with a policy that lets the page load nothing but its own files and data."""
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"content-security-policy", PAGE_POLICY)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-cache")
        return self.content


class StatusResource(Resource):
    """
    C{/status.json}: the document C{report} gives, as JSON. C{report} may
    return it or a Deferred of it (the master asks its nodes); requests that
    come while one is being made share it, so that any number of open
    dashboards cost one report at a time.
    """

    isLeaf = True

    def __init__(self, report: Callable[[], Any]) -> None:
        super().__init__()
        self.report = report
        self._waiting: list[Deferred[Any]] = []

    def _document(self) -> Deferred[Any]:
        waiter: Deferred[Any] = Deferred()
        self._waiting.append(waiter)
        if len(self._waiting) == 1:
            try:
                made = self.report()
            except Exception:
                self._answer(Failure())
            else:
                if isinstance(made, Deferred):
                    made.addBoth(self._answer)
                else:
                    self._answer(made)
        return waiter

    def _answer(self, result: Any) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def render_GET(self, request: Request) -> Any:
        """The status document, once it is made (a 500 with a JSON error if making it failed)."""
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))

        def write(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> bytes:
            log.failure("cannot make the status document", failure)
            request.setResponseCode(500)
            return json.dumps({"error": f"cannot make the status document: {failure.getErrorMessage()}"}).encode()

        no_store(request, b"application/json")
        document = self._document()
        document.addCallback(lambda made: json.dumps(made).encode()).addErrback(failed).addCallback(write)
        return NOT_DONE_YET


class Root(Resource):
    """The site's root: its children, and a plain 404 for any other path."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        """Not found: the root has only the children put on it."""
        return notFound()


class HTTPSite(Site):
    """The listener's site: quiet (no line logged per request, which the dashboard makes every second)."""

    noisy = False

    def log(self, request: http.Request) -> None:
        """Log nothing per request."""


def site(data: dict[str, IResource], token: bytes | None) -> HTTPSite:
    """The dashboard at C{/} and the C{data} resources (by path segment), those behind the bearer C{token}."""
    root = Root()
    root.putChild(b"", StaticFile("dashboard.html", b"text/html; charset=utf-8"))
    root.putChild(b"dashboard.js", StaticFile("dashboard.js", b"text/javascript; charset=utf-8"))
    root.putChild(b"dashboard.css", StaticFile("dashboard.css", b"text/css; charset=utf-8"))
    for name, resource in data.items():
        root.putChild(name.encode(), Protected(EncodingResourceWrapper(resource, [GzipEncoderFactory()]), token))
    made = HTTPSite(root, timeout=IDLE_TIMEOUT)
    made.displayTracebacks = False
    return made


def master_site(master: Any, token: bytes | None = None) -> HTTPSite:
    """The HTTP site of a L{nswarm.master.master.Master}: the cluster's status and the master's metrics."""
    metrics = MetricsResource(registry_of(MasterCollector(master)))
    return site({"status.json": StatusResource(lambda: cluster_report(master)), "metrics": metrics}, token)


def node_site(node: Any, token: bytes | None = None) -> HTTPSite:
    """The HTTP site of a L{nswarm.node.node.Node}: its own status and metrics."""
    metrics = MetricsResource(registry_of(NodeCollector(node)))
    return site({"status.json": StatusResource(lambda: node_report(node)), "metrics": metrics}, token)


@implementer(IStreamServerEndpoint)
class Announced:
    """
    An endpoint that logs where it listens (C{nswarm_event="listening"},
    C{server}, C{host}, C{port}; a UNIX socket's C{path} instead) and tells
    C{bound} the address.
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, server: str, bound: Callable[[Any], None] | None = None
    ) -> None:
        self.endpoint = endpoint
        self.server = server
        self.bound = bound

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the endpoint; once bound, log and report the address."""

        def bound(listening: IListeningPort) -> IListeningPort:
            address: Any = listening.getHost()
            host, port = getattr(address, "host", None), getattr(address, "port", None)
            if self.bound is not None:
                self.bound(address)  # first: once the event is logged, the ports file is written
            if port is not None:
                log.info(
                    "{server} listening on {host}:{port}",
                    server=self.server,
                    host=host,
                    port=port,
                    nswarm_event="listening",
                )
            else:
                where = getattr(address, "name", address)
                path = where.decode("utf-8", "replace") if isinstance(where, bytes) else str(where)
                log.info("{server} listening on {path}", server=self.server, path=path, nswarm_event="listening")
            return listening

        return self.endpoint.listen(protocolFactory).addCallback(bound)


def has_port(description: str | None) -> bool:
    """Whether endpoint C{description} listens on a TCP port (C{tcp}, C{tcp6} or C{ssl}), which a ports file lists."""
    return description is not None and description.split(":", 1)[0].lower() in ("tcp", "tcp6", "ssl")


def http_service(
    reactor: Any, description: str, made: Site, bound: Callable[[Any], None] | None = None
) -> StreamServerEndpointService:
    """The twistd service listening for C{made} on endpoint C{description} (its start fails if it cannot bind)."""
    endpoint = Announced(serverFromString(reactor, description), "http server", bound)
    service = listening_service(endpoint, made)
    service.setName("http server")
    return service
