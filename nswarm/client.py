"""
What the two Twisted SDKs share: L{ClientProtocol}, the client end of a
connection (to the master for the API SDK, to a node for the service SDK),
whose calls, streams, events and commands return Deferreds. It is thin:
the requests are built, tagged, timed and answered by the sans-IO core
(L{nswarm.core.connection}), the same as for the asyncio and blocking
SDKs, through the Twisted adapter L{nswarm.core_protocol}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail

from nswarm import defaults
from nswarm.amp_commands import Authenticate, NswarmError
from nswarm.core.answers import Parse, handed_to
from nswarm.core_protocol import CoreProtocol, Keeper
from nswarm.requests import SendsCommands
from nswarm.streams import Stream

__all__ = ["ClientProtocol", "Keeper", "check_key"]


def check_key(key: Any) -> bytes:
    """C{key} if it is an auth key (bytes), else a TypeError saying how to pass one."""
    if not isinstance(key, bytes) or not key:
        raise TypeError(
            f"the auth key must be non-empty bytes, not {type(key).__name__}: "
            "read it with nswarm.config.read_secret_file(PATH), or pass key.encode()"
        )
    return key


class ClientProtocol(SendsCommands, CoreProtocol):
    """
    The SDK end of a connection to the master (API SDK) or a node (service
    SDK): its requests (calls, streams, events, commands), on the adapter
    of the sans-IO core (L{CoreProtocol}); AMP commands go through
    L{SendsCommands}.
    """

    # -- requests ----------------------------------------------------------------

    def authenticate(self, key: bytes, name: str | None = None) -> Deferred[Any]:
        """Send L{Authenticate} with C{key} (and the name the server logs this end by)."""
        arguments: dict[str, Any] = {"key": check_key(key)}
        if name:
            arguments["name"] = name
        return self.request(Authenticate, **arguments)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Call C{method} on some service in the cluster; the Deferred fires with
        its result or fails with a typed L{nswarm.amp_commands.NswarmError}.
        """
        return self.call_with_timeout(self.timeout, method, *args, **kwargs)

    def call_with_timeout(self, timeout: float, method: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        L{call} with a deadline C{timeout} seconds away: past it the call
        fails with L{nswarm.amp_commands.DeadlineExceeded} and is cancelled
        all the way to its handler. Cancelling the returned Deferred cancels
        the call the same way.
        """
        if self.holding or method in self.idempotent:
            return self._built(lambda core: core.call_box(method, args, kwargs, timeout=timeout), timeout, method)
        if self.transport is None:
            return fail(self.core.connection_gone())
        try:
            tag = self.core.call(method, args, kwargs, timeout=timeout)
        except NswarmError:
            return fail()
        return self._deferred(tag)

    def call_all(self, method: str, /, *args: Any, **kwargs: Any) -> Deferred[list[Any]]:
        """
        Call C{method} on every service that implements it now; the Deferred
        fires with one entry per service, in no particular order: its result,
        or the L{nswarm.amp_commands.NswarmError} it failed with (a handler's
        exception arrives as L{nswarm.amp_commands.HandlerFailed}, a service
        that did not answer in time as L{nswarm.amp_commands.DeadlineExceeded}).
        The call has the default deadline (C{timeout}); it fails as a whole only
        if nobody implements C{method} or the connection is lost.
        """
        timeout = self.timeout
        return self._built(lambda core: core.call_box(method, args, kwargs, timeout=timeout, all=True), timeout, method)

    def stream(
        self, method: str, /, *args: Any, window: int | None = None, timeout: float | None = None, **kwargs: Any
    ) -> Stream:
        """
        Call C{method}, whose handler streams its result (a generator), and
        return the L{Stream} of its parts: C{async for part in
        client.stream(...)}, or L{Stream.next}. At most C{window} parts (16
        by default, at most 1024) are on their way at once: a reader that
        does not take them holds the service back. C{timeout} (by default
        C{timeout}) is the deadline of the whole stream. A stream is not sent
        again after a lost connection (it may have sent parts).
        """
        window = defaults.STREAM_WINDOW if window is None else window
        if not isinstance(window, int) or not 0 < window <= defaults.MAX_STREAM_WINDOW:
            raise ValueError(f"window must be 1 to {defaults.MAX_STREAM_WINDOW} parts, not {window!r}")
        seconds = self.timeout if timeout is None else timeout
        stream = Stream(window)
        try:
            box, _, _ = self.core.call_box(method, args, kwargs, timeout=seconds, stream=window)
        except NswarmError:
            stream.started(fail())
            return stream
        stream.started(self._kept(box, stream.answered, seconds, None))
        return stream

    def publish(self, event: str, payload: Any = None, *, exclude_self: bool = False) -> Deferred[Any]:
        """
        Publish C{event} with a JSON-compatible C{payload} to every subscriber
        (but this connection, with C{exclude_self}); the Deferred fires once
        the master has handed it on, with the number of connections (nodes
        and API users) it was handed to, or None if the answer does not say.
        """
        try:
            box = self.core.publish_box(event, payload, exclude_self=exclude_self)
        except NswarmError:
            return fail()
        if self.holding:
            return self._kept(box, handed_to, self.timeout, None)
        return self.request_box(box, handed_to)

    def _built(self, build: Any, timeout: float, method: str | None) -> Deferred[Any]:
        """
        Send the request C{build(core)} makes (its box, parse and seconds):
        through the keeper while C{holding} or for an C{idempotent} C{method}, else at once.
        """
        try:
            box, parse, _ = build(self.core)
        except NswarmError:
            return fail()
        if self.holding or (method is not None and method in self.idempotent):
            return self._kept(box, parse, timeout, method)
        return self.request_box(box, parse, timeout)

    def _kept(self, box: dict[bytes, bytes], parse: Parse, timeout: float, method: str | None) -> Deferred[Any]:
        """Request C{box} through the keeper (see L{Keeper.send}), or as usual if there is none."""
        keeper = self.keeper
        if keeper is None:
            return self.request_box(box, parse, timeout)
        return keeper.send(box, parse, timeout, method)
