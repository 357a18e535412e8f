"""
The asyncio API client: L{connect} to a master over TLS, then call,
publish and subscribe with C{await}; no Twisted reactor anywhere::

    client = await aio.connect("master.example", key=key, ca="ca.pem")
    print(await client.call("greet", "world"))
    async with client.subscribe("orders.*") as events:
        async for event in events:
            print(event.event, event.payload)

Reconnecting as L{nswarm.api_reconnect} does for Twisted (the policy is
L{nswarm.core.backoff}'s): a lost connection is made again, to the next
address in turn, with backoff and jitter; calls made meanwhile wait within
their deadlines; subscriptions are made again; a call to an C{idempotent}
method lost with the connection is sent again, as is any request a
draining master refused (it did not run); a refused key ends it.
C{reconnect=False} turns it off. C{client.stream(method, ...)} streams a
result part by part (L{nswarm.aio.stream}).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Sequence
from typing import Any

from nswarm import defaults
from nswarm.aio.protocol import CoreProtocol
from nswarm.aio.stream import Stream
from nswarm.aio.subscription import Subscription
from nswarm.aio.tls import client_context, explain
from nswarm.client_config import api_settings
from nswarm.core import backoff, wire
from nswarm.core.connection import Connection
from nswarm.core.events import EventReceived
from nswarm.core.names import check_pattern, matches
from nswarm.errors import AuthenticationFailed, DeadlineExceeded, NswarmError, UpstreamUnavailable

__all__ = ["Client", "connect", "connect_from_config"]

log = logging.getLogger("nswarm.aio")
Address = tuple[str, int]


class Client:
    """
    A client of the master's api server, kept connected. Make one with
    L{connect}; use it as C{async with} or L{close} it.
    """

    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        key: bytes,
        ca: str,
        cert: str | None = None,
        cert_key: str | None = None,
        name: str | None = None,
        timeout: float = defaults.CONNECT_TIMEOUT,
        heartbeat: float = defaults.HEARTBEAT,
        reconnect: bool = True,
        idempotent: Iterable[str] = (),
    ) -> None:
        if not isinstance(key, bytes) or not key:
            raise TypeError(
                f"the auth key must be non-empty bytes, not {type(key).__name__}: "
                "read it with nswarm.config.read_secret_file(PATH), or pass key.encode()"
            )
        self.addresses = list(addresses)
        if not self.addresses:
            raise ValueError("hosts is empty: give at least one (host, port) of a master")
        self.key, self.ca, self.name = key, ca, name
        self.connect_timeout, self.heartbeat, self.reconnect = timeout, heartbeat, reconnect
        self.idempotent = frozenset([idempotent] if isinstance(idempotent, str) else idempotent)
        #: Seconds a call may take when the caller gives none.
        self.timeout = defaults.CALL_TIMEOUT
        self._ssl = client_context(ca, cert, cert_key)
        self._protocol: CoreProtocol | None = None
        self._changed = asyncio.Event()
        self._closed: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._next = 0
        #: Pattern -> the subscriptions (iterators) reading it.
        self.subscriptions: dict[str, list[Subscription]] = {}

    # -- connecting ----------------------------------------------------------

    async def _open(self, address: Address) -> CoreProtocol:
        """One connection to C{address}: TLS, authenticated, heartbeats on, subscribed again."""
        loop = asyncio.get_running_loop()
        host, port = address
        core = Connection(now=loop.time(), timeout=self.connect_timeout)
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: CoreProtocol(core, on_event=self._event), host, port, ssl=self._ssl, server_hostname=host
                ),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as error:
            raise UpstreamUnavailable(explain(error, host, port, self.ca)) from error
        try:
            await protocol.request(lambda c: c.authenticate(self.key, self.name))
            core.timeout = self.timeout
            core.start_heartbeats(self.heartbeat)
            protocol.flush()  # the heartbeats' timer
            if self.subscriptions:
                patterns = list(self.subscriptions)
                await asyncio.gather(*[protocol.answer_to(tag) for tag in core.register(wire.SUBSCRIBE, patterns)])
        except BaseException:
            protocol.close(abort=True)
            raise
        return protocol

    async def _first(self) -> None:
        """C{connect}'s first round: each address once, in turn, until one takes the connection."""
        errors: list[BaseException] = []
        for _ in self.addresses:
            address = self._address()
            try:
                self._up(await self._open(address))
                return
            except AuthenticationFailed:
                raise
            except (NswarmError, OSError) as error:
                errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        raise UpstreamUnavailable(
            f"none of the {len(errors)} masters could be reached: " + "; ".join(map(str, errors))
        ) from errors[-1]

    def _address(self) -> Address:
        address = self.addresses[self._next % len(self.addresses)]
        self._next += 1
        return address

    def _up(self, protocol: CoreProtocol) -> None:
        self._protocol = protocol
        self._signal()
        if self.reconnect:
            self._task = asyncio.get_running_loop().create_task(self._keep(protocol))

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _keep(self, protocol: CoreProtocol) -> None:
        """Once C{protocol}'s connection is lost, make another, with backoff, until one is up or refused."""
        await asyncio.shield(protocol.lost)  # cancelling the loop must not cancel the connection's future
        if self._protocol is protocol:
            self._protocol = None
        log.warning("lost the connection to the master: reconnecting; requests wait within their deadlines")
        failures = 0
        while self._closed is None:
            await asyncio.sleep(backoff.round_delay(failures, len(self.addresses), random.random()))
            if self._closed is not None:
                return
            try:
                self._up(await self._open(self._address()))
                log.info("reconnected to the master")
                return
            except AuthenticationFailed as error:
                self._close_for(f"the client gave up reconnecting: {error}")
                return
            except (NswarmError, OSError) as error:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("could not reconnect to the master (attempt %d): %s", failures, error)

    async def _ready(self, deadline: float) -> CoreProtocol:
        """The connection to send on, once there is one, or the reason there will be none before C{deadline}."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed is not None:
                raise UpstreamUnavailable(f"the request was not sent: {self._closed}")
            protocol = self._protocol
            if protocol is not None and protocol.transport is not None and not protocol.draining:
                return protocol
            if protocol is not None and protocol.draining and len(self.addresses) > 1 and not protocol.core.in_flight:
                protocol.close()
            if not self.reconnect:
                raise UpstreamUnavailable(
                    "the connection to the master is closed, and this client does not reconnect "
                    "(reconnect=False): connect again"
                )
            left = deadline - loop.time()
            if left <= 0:
                raise DeadlineExceeded("no connection to the master came back before the request's deadline: retry")
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, defaults.SWEEP_INTERVAL * 4))
            except asyncio.TimeoutError:
                pass

    async def _send(self, build: Any, timeout: float, method: str | None = None) -> Any:
        """Send the request C{build(core, seconds_left)} makes, waiting for a connection, resending if allowed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            protocol = await self._ready(deadline)
            left = max(deadline - loop.time(), 0.001)

            def send(core: Connection, left: float = left) -> bytes:
                return build(core, left)

            try:
                return await protocol.request(send)
            except UpstreamUnavailable as error:
                lost = protocol.transport is None or protocol.lost.done()
                if not (self.reconnect and backoff.may_resend(error, lost, method in self.idempotent)):
                    raise
                if self._protocol is protocol and lost:
                    self._protocol = None

    # -- the API -------------------------------------------------------------

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call C{method} on some service in the cluster; return its result or raise its typed error."""
        return await self.call_with_timeout(self.timeout, method, *args, **kwargs)

    async def call_with_timeout(self, timeout: float, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """
        L{call} with a deadline C{timeout} seconds away: past it the call
        raises L{DeadlineExceeded} and is cancelled all the way to its
        handler. Cancelling the awaiting task cancels the call the same way.
        """
        return await self._send(lambda core, left: core.call(method, args, kwargs, timeout=left), timeout, method)

    async def call_all(self, method: str, /, *args: Any, **kwargs: Any) -> list[Any]:
        """
        Call C{method} on every service that implements it: one entry per
        service, its result or the L{NswarmError} it failed with.
        """
        timeout = self.timeout
        return await self._send(lambda core, left: core.call(method, args, kwargs, timeout=left, all=True), timeout)

    async def publish(self, event: str, payload: Any = None, *, exclude_self: bool = False) -> int | None:
        """
        Publish C{event} with a JSON-compatible C{payload}; return how many
        connections (nodes and API users) the master handed it to.
        """
        return await self._send(
            lambda core, left: core.publish(event, payload, exclude_self=exclude_self), self.timeout
        )

    async def status(self) -> dict[str, Any]:
        """
        The cluster's status document (docs/operations.md): the master, its
        nodes, services, methods and events. Needs the admin right (else
        L{nswarm.errors.PermissionDenied}).
        """
        document: dict[str, Any] = await self._send(lambda core, left: core.status(timeout=left), self.timeout)
        return document

    def stream(
        self, method: str, /, *args: Any, window: int | None = None, timeout: float | None = None, **kwargs: Any
    ) -> Stream:
        """
        Call C{method} for a streamed result: an async iterator of its parts
        (C{async for part in client.stream(...)}), sent on the first part
        asked for. At most C{window} parts (default 16, at most 1024) are on
        their way at once: the service waits for this end to take them.
        C{timeout} (default L{timeout}) covers the whole stream. Closing it
        early (C{aclose}, or leaving C{async with}) cancels the call. A
        stream is not sent again after a lost connection.
        """
        seconds = self.timeout if timeout is None else timeout
        return Stream(self._ready, method, args, kwargs, window=window, timeout=seconds)

    def subscribe(self, pattern: str, *, max_queued: int = 10_000) -> Subscription:
        """
        The events matching C{pattern}, as an async iterator: C{async with
        client.subscribe("orders.*") as events: async for event in events}.
        C{await} it to be sure the master has the subscription before going
        on. Closing it (C{aclose}, or leaving the C{async with}) ends the
        subscription. Past C{max_queued} unread events, new ones are dropped
        (counted in its C{dropped}).
        """
        check_pattern(pattern)
        return Subscription(self, pattern, max_queued)

    async def _register(self, command: bytes, pattern: str) -> None:
        """Send C{Subscribe} or C{Unsubscribe} for C{pattern} (called by L{Subscription})."""
        await self._send(lambda core, left: core.register(command, [pattern])[0], self.timeout)

    def _event(self, event: EventReceived) -> None:
        for pattern, subscriptions in list(self.subscriptions.items()):
            if matches(pattern, event.event):
                for subscription in list(subscriptions):
                    subscription.deliver(event)

    async def close(self) -> None:
        """Stop reconnecting and close the connection; return once it is closed."""
        self._close_for("the client is closed")
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()
            await protocol.lost

    def _close_for(self, why: str) -> None:
        if self._closed is None:
            self._closed = why
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        for subscriptions in list(self.subscriptions.values()):
            for subscription in subscriptions:
                subscription.end()
        self._signal()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def connect(
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
) -> Client:
    """
    Connect to the api server at C{host}:C{port} (or the first of C{hosts},
    C{(host, port)} pairs, that answers) over TLS, its certificate signed by
    the cluster CA C{ca} and naming the host, and authenticate with C{key}
    (and C{cert}/C{cert_key} if the master requires a client certificate).
    The arguments mean what they mean for L{nswarm.api.connect}. Raises
    L{AuthenticationFailed} for a wrong key, L{UpstreamUnavailable} (saying
    why and what to do) when no master can be reached.
    """
    masters = [(str(h), int(p)) for h, p in hosts] if hosts is not None else [(host, port)]
    client = Client(
        masters,
        key=key,
        ca=ca,
        cert=cert,
        cert_key=cert_key,
        name=name,
        timeout=timeout,
        heartbeat=heartbeat,
        reconnect=reconnect,
        idempotent=idempotent,
    )
    await client._first()
    return client


async def connect_from_config(
    source: str, *, reconnect: bool | None = None, idempotent: Iterable[str] | None = None, **options: Any
) -> Client:
    """
    L{connect} with the C{[api]} section of a client.conf, as
    L{nswarm.api.connect_from_config} reads it; C{options} (C{timeout},
    C{heartbeat}) are passed on.
    """
    return await connect(**api_settings(source, reconnect=reconnect, idempotent=idempotent), **options)
