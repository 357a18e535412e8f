"""
What an API user does besides calling and publishing: subscribing to
events, which the master delivers with the same slow-subscriber protection
as to nodes (and only for patterns its access file lets it subscribe to),
and querying the cluster's status (with the admin right). Mixed into
L{nswarm.api.APIClient}::

    async def show(event, payload):
        print(event, payload)

    subscription = await client.subscribe("orders.*", show)
    ...
    await subscription.cancel()
    print(await client.status())
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from nswarm.amp_commands import NswarmError, Subscribe, Unsubscribe, UpstreamUnavailable
from nswarm.core.events import EventReceived
from nswarm.core.names import check_pattern, matches
from nswarm.core_protocol import call_handler
from nswarm.requests import first_error
from nswarm.status_commands import Status

#: A handler of events: called with the event's name and its payload; may return a Deferred or be async.
Handler = Callable[[str, Any], Any]


class Subscription:
    """One handler subscribed to one pattern; L{cancel} ends it."""

    def __init__(self, user: APIUser, pattern: str, handler: Handler) -> None:
        self.user = user
        self.pattern = pattern
        self.handler = handler

    def cancel(self) -> Deferred[None]:
        """Stop calling this handler (the master stops sending once no handler of the pattern is left)."""
        return self.user.unsubscribe(self.pattern, self.handler)


class APIUser:
    """Mix in before L{nswarm.client.ClientProtocol}: subscriptions and the status query."""

    log = Logger()
    request: Any
    request_now: Any
    send: Any

    _handlers: dict[str, list[Handler]]

    def subscribe(self, pattern: str, handler: Handler) -> Deferred[Subscription]:
        """
        Call C{handler(event, payload)} for every event matching C{pattern}
        (C{orders.created}, C{orders.*}, C{orders.>}) published from now on.
        Fires once the master has the subscription, with a L{Subscription};
        fails with L{nswarm.amp_commands.PermissionDenied} if this user may
        not subscribe to C{pattern}. A client that reconnects subscribes
        again on each new connection (events published in between are not
        delivered).
        """
        try:
            check_pattern(pattern)
        except NswarmError:
            return fail()
        handlers = self.subscriptions().setdefault(pattern, [])
        handlers.append(handler)
        subscription = Subscription(self, pattern, handler)
        if len(handlers) > 1:
            return succeed(subscription)

        def refused(failure: Failure) -> Failure:
            self._forget(pattern, handler)
            return failure

        asked: Deferred[Any] = self.request(Subscribe, events=[pattern])
        return asked.addCallbacks(lambda _: subscription, refused)

    def unsubscribe(self, pattern: str, handler: Handler | None = None) -> Deferred[None]:
        """Stop calling C{handler} (or every handler) for C{pattern}; fires once the master knows."""
        if handler is None:
            self.subscriptions().pop(pattern, None)
        else:
            self._forget(pattern, handler)
        if pattern in self.subscriptions():
            return succeed(None)
        asked: Deferred[Any] = self.request(Unsubscribe, events=[pattern])
        return asked.addCallback(lambda _: None)

    def subscribe_again(self, master: str) -> Deferred[Any] | None:
        """
        On a new connection (to C{master}, for the log), before anything else
        goes out on it: subscribe again to every pattern with a handler. A
        pattern refused now loses its handlers, with a warning.
        """
        patterns = list(self.subscriptions())
        if not patterns:
            return None

        def refused(failure: Failure, pattern: str) -> Failure | None:
            if not failure.check(NswarmError) or failure.check(UpstreamUnavailable):
                return failure
            self.subscriptions().pop(pattern, None)
            self.log.warn(
                "the master at {address} refused the subscription to {pattern!r} again, so its handlers get no "
                "more events: {reason}",
                address=master,
                pattern=pattern,
                reason=failure.getErrorMessage(),
                nswarm_event="api_subscription_refused",
            )
            return None

        asked = [self.request_now(Subscribe, events=[pattern]).addErrback(refused, pattern) for pattern in patterns]
        return gatherResults(asked, consumeErrors=True).addErrback(first_error)

    def status(self) -> Deferred[dict[str, Any]]:
        """
        The cluster's status document (docs/operations.md): the master, its
        nodes, services, methods and events. Needs the admin right (else
        L{nswarm.amp_commands.PermissionDenied}).
        """
        asked: Deferred[Any] = self.request(Status)
        return asked.addCallback(lambda answer: json.loads(answer["document"]))

    def subscriptions(self) -> dict[str, list[Handler]]:
        """The patterns this user subscribes to, with their handlers (a client that reconnects subscribes again)."""
        if "_handlers" not in self.__dict__:
            self._handlers = {}
        return self._handlers

    def _forget(self, pattern: str, handler: Handler) -> None:
        handlers = self.subscriptions().get(pattern, [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            self.subscriptions().pop(pattern, None)

    def event_received(self, event: EventReceived) -> None:
        """An event the master delivers to this user's subscriptions: call every handler whose pattern matches."""
        name, value = event.event, event.payload
        for pattern, handlers in list(self.subscriptions().items()):
            if matches(pattern, name):
                for handler in list(handlers):
                    call_handler(handler, name, value, self._handler_failed, name)

    def _handler_failed(self, failure: Failure, event: str) -> None:
        self.log.failure("an event handler raised, for event {event!r}", failure, event=event)
