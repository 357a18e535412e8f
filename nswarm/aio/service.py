"""
Services for asyncio programs: a L{Service} subclass declares its handlers
with the same C{@implement} and C{@subscribe} as L{nswarm.service}, as
coroutines or plain functions, and runs inside any C{asyncio.run()}
program, no reactor needed::

    class Greeter(aio.Service):
        @aio.implement
        async def greet(self, name):
            return f"hello {name}"

    async def main():
        greeter = Greeter()
        await greeter.start(socket, key)      # connected and registered
        ...
        await greeter.stop()

A C{Cancel} from the node (the caller gave up, or the deadline passed)
cancels the handler's task; L{nswarm.caller.current_caller} names the
caller inside the handler. A handler that is a generator or an async
generator streams its result: each value it yields is a part, sent as the
caller takes them (L{nswarm.aio.streaming}); a plain call gets the list. The service reconnects whenever its node
restarts, and registers again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import sys
from typing import Any

from nswarm import defaults
from nswarm.aio.protocol import CoreProtocol
from nswarm.aio.stream import Stream
from nswarm.aio.streaming import ENDED, gathered, is_stream, streamed
from nswarm.caller import current
from nswarm.config import ConfigError, read_client_config, read_secret_file, require
from nswarm.core import backoff, wire
from nswarm.core.connection import Connection
from nswarm.core.events import CallReceived, CancelReceived, EventReceived, MoreReceived
from nswarm.core.handlers import Handlers
from nswarm.core.names import matches
from nswarm.errors import NoSuchMethod, NswarmError, UpstreamUnavailable
from nswarm.peercred import check_node_peer

log = logging.getLogger("nswarm.aio.service")


class _Socket:
    """What L{check_node_peer} reads of a transport, for an asyncio UNIX transport."""

    def __init__(self, transport: asyncio.BaseTransport, path: str) -> None:
        self.handle = transport.get_extra_info("socket")
        self.name = path

    def getHandle(self) -> Any:
        return self.handle

    def getPeer(self) -> Any:
        return self


class Service(Handlers):
    """Base class of asyncio service applications: subclass it, mark handlers, then L{start} it."""

    nswarm_sdk = True

    def __init__(self) -> None:
        self.connection: CoreProtocol | None = None
        #: Handlers running, by the tag of the call they answer.
        self.running: dict[bytes, asyncio.Task[Any]] = {}
        #: Streamed calls running, by tag: set when the caller grants more parts.
        self.credit: dict[bytes, asyncio.Event] = {}
        self._registered = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def service_name(self) -> str:
        """The name this service registers with its node."""
        return self.name or type(self).__name__

    # -- running -----------------------------------------------------------------

    async def start(
        self, socket: str, key: bytes, *, heartbeat: float = defaults.HEARTBEAT, timeout: float = 10.0
    ) -> None:
        """
        Connect to the node's service server at UNIX socket C{socket} with the
        service auth C{key}, register, and return once registered (within
        C{timeout} seconds). From then on it reconnects whenever the
        connection is lost, until L{stop}.
        """
        if not isinstance(key, bytes) or not key:
            raise TypeError("the service auth key must be non-empty bytes: read it with nswarm.config.read_secret_file")
        self.socket, self.key, self.heartbeat = socket, key, heartbeat
        self._task = asyncio.get_running_loop().create_task(self._keep())
        waiting = asyncio.ensure_future(self._registered.wait())
        done, _ = await asyncio.wait({waiting, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            waiting.cancel()
            if self._task in done:
                self._task.result()  # a refusal: raise it
            self._task.cancel()
            raise UpstreamUnavailable(
                f"service {self.service_name!r} could not register with its node at {socket} within {timeout:g} s: "
                "check that the node runs and that this is its service socket"
            )

    @classmethod
    def main(cls, argv: list[str] | None = None) -> None:
        """
        Run this service as a program until SIGTERM or Ctrl-C, then drain:
        C{python my_service.py --config DIR/client.conf} (or C{--socket} and
        C{--auth-key-file}). See L{nswarm.aio.running}.
        """
        from nswarm.aio.running import serve

        asyncio.run(serve(cls(), sys.argv[1:] if argv is None else argv))

    async def start_from_config(self, source: str, **options: Any) -> None:
        """L{start} with the C{[service]} section (C{socket}, C{auth-key-file}) of a client.conf."""
        settings = read_client_config(source, "service")
        key = read_secret_file(require(settings, "auth-key-file", source, "service"))
        await self.start(require(settings, "socket", source, "service"), key, **options)

    async def _keep(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                protocol = await self._open()
            except ConfigError:
                raise
            except (NswarmError, OSError) as error:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("service %r could not connect to its node: %s", self.service_name, error)
                await asyncio.sleep(backoff.lost_delay(failures, defaults.RECONNECT_LOST_MAX_DELAY, random.random()))
                continue
            failures = 0
            self.connection = protocol
            self._registered.set()
            await asyncio.shield(protocol.lost)  # cancelling the loop must not cancel the connection's future
            self.connection = None
            self._registered.clear()
            for credit in self.credit.values():  # the streams waiting for credit end: none will come
                credit.set()

    async def _open(self) -> CoreProtocol:
        loop = asyncio.get_running_loop()
        core = Connection(now=loop.time(), peer="node")
        transport, protocol = await loop.create_unix_connection(
            lambda: CoreProtocol(
                core, on_call=self._call, on_event=self._event, on_cancel=self._cancel, on_more=self._more
            ),
            self.socket,
        )
        self.connection = protocol  # calls may come as soon as the node has the methods, before this returns
        try:
            check_node_peer(_Socket(transport, self.socket))
            await protocol.request(lambda c: c.authenticate(self.key, self.service_name))
            cls = type(self)
            tags = []
            if cls.nswarm_methods:
                methods = list(cls.nswarm_methods)
                limits = [cls.nswarm_limits.get(m, 0) for m in methods]
                tags += core.register(wire.IMPLEMENT, methods, idempotent=list(cls.nswarm_idempotent), limits=limits)
            if cls.nswarm_events:
                tags += core.register(wire.SUBSCRIBE, list(cls.nswarm_events))
            await asyncio.gather(*[protocol.answer_to(tag) for tag in tags])
            core.start_heartbeats(self.heartbeat)
            protocol.flush()
        except BaseException:
            self.connection = None
            protocol.close(abort=True)
            raise
        return protocol

    async def stop(self, drain_timeout: float = defaults.DRAIN_TIMEOUT) -> None:
        """
        Withdraw this service's methods and events from its node, let the
        handlers running finish (for at most C{drain_timeout} seconds), then
        disconnect and stop reconnecting.
        """
        self._stopping = True
        protocol = self.connection
        if protocol is not None and protocol.transport is not None:
            cls = type(self)
            tags = []
            if cls.nswarm_methods:
                tags += protocol.send(lambda c: c.register(wire.UNIMPLEMENT, list(cls.nswarm_methods)))
            if cls.nswarm_events:
                tags += protocol.send(lambda c: c.register(wire.UNSUBSCRIBE, list(cls.nswarm_events)))
            if self.running:
                await asyncio.wait(list(self.running.values()), timeout=drain_timeout)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self.running.values()):
            task.cancel()
        if protocol is not None:
            protocol.close()
            await protocol.lost

    # -- calls and events from the node ---------------------------------------------

    def _call(self, call: CallReceived) -> None:
        protocol = self.connection
        attribute = type(self).nswarm_methods.get(call.method)
        if attribute is None:
            error = NoSuchMethod(f"service {self.service_name!r} does not implement {call.method!r}: retry the call")
            self._reply_error(call.tag, error)
            return
        token = current.set(call.caller)
        try:
            result = getattr(self, attribute)(*call.args, **call.kwargs)
            if is_stream(result):
                if call.stream is not None and call.tag is not None and protocol is not None:
                    self.credit[call.tag] = asyncio.Event()
                    task = asyncio.ensure_future(streamed(protocol, call.tag, result, self.credit[call.tag]))
                else:
                    task = asyncio.ensure_future(gathered(result))
            elif inspect.isawaitable(result):
                task = asyncio.ensure_future(result)  # runs in a copy of this context, caller included
            else:
                self._core_send(lambda c: c.answer(call.tag, result))
                return
        except Exception as error:
            log.exception("handler of %r raised", call.method)
            self._reply_error(call.tag, error)
            return
        finally:
            current.reset(token)
        if call.tag is not None:
            self.running[call.tag] = task
        task.add_done_callback(lambda done: self._done(done, call, protocol))

    def _done(self, task: asyncio.Task[Any], call: CallReceived, protocol: CoreProtocol | None) -> None:
        if call.tag is not None and self.running.get(call.tag) is task:
            del self.running[call.tag]
            self.credit.pop(call.tag, None)
        if task.cancelled() or protocol is None:
            return  # cancelled by its caller or its deadline: the relay has answered
        error = task.exception()
        if error is not None:
            log.error("handler of %r raised", call.method, exc_info=error)
            protocol.send(lambda c: c.fail(call.tag, error))
        elif task.result() is not ENDED:  # a streamed one has sent its end already
            protocol.send(lambda c: c.answer(call.tag, task.result()))

    def _more(self, more: MoreReceived) -> None:
        credit = self.credit.get(more.tag)
        if credit is not None:
            credit.set()

    def _cancel(self, cancel: CancelReceived) -> None:
        self.credit.pop(cancel.tag, None)
        task = self.running.pop(cancel.tag, None)
        if task is not None:
            task.cancel()

    def _event(self, event: EventReceived) -> None:
        for pattern, attributes in type(self).nswarm_events.items():
            if not matches(pattern, event.event):
                continue
            for attribute in attributes:
                try:
                    result = getattr(self, attribute)(event.event, event.payload)
                    if inspect.isawaitable(result):
                        task = asyncio.ensure_future(result)
                        self._background.add(task)
                        task.add_done_callback(self._event_done)
                except Exception:
                    log.exception("handler %s of event %r raised", attribute, event.event)

    def _event_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("an event handler raised", exc_info=task.exception())

    def _reply_error(self, tag: bytes | None, error: BaseException) -> None:
        if self.connection is not None:
            self.connection.send(lambda c: c.fail(tag, error))

    def _core_send(self, act: Any) -> None:
        if self.connection is not None:
            self.connection.send(act)

    # -- calls and events from this service ------------------------------------------

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call C{method} on some service in the cluster, through this service's node."""
        return await self.call_with_timeout(defaults.CALL_TIMEOUT, method, *args, **kwargs)

    async def call_with_timeout(self, timeout: float, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """L{call} with a deadline C{timeout} seconds away."""
        return await self._connected().request(lambda c: c.call(method, args, kwargs, timeout=timeout))

    async def publish(self, event: str, payload: Any = None, *, exclude_self: bool = False) -> int | None:
        """Publish C{event} with a JSON-compatible C{payload}, through this service's node."""
        return await self._connected().request(lambda c: c.publish(event, payload, exclude_self=exclude_self))

    def stream(
        self, method: str, /, *args: Any, window: int | None = None, timeout: float | None = None, **kwargs: Any
    ) -> Stream:
        """Call C{method} for a streamed result, through this service's node (see L{nswarm.aio.Client.stream})."""

        async def connection(deadline: float) -> CoreProtocol:
            return self._connected()

        seconds = defaults.CALL_TIMEOUT if timeout is None else timeout
        return Stream(connection, method, args, kwargs, window=window, timeout=seconds)

    def _connected(self) -> CoreProtocol:
        protocol = self.connection
        if protocol is None or protocol.transport is None:
            raise UpstreamUnavailable(
                f"service {self.service_name!r} is not connected to its node: "
                "check that the node runs; the service keeps reconnecting"
            )
        return protocol
