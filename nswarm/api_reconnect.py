"""
Keeping an API client connected (L{nswarm.api.connect}'s C{reconnect}): the
one L{nswarm.api.APIClient} the user holds takes connection after
connection, to the masters of C{connect}'s list in turn. Each new connection
authenticates, subscribes again to the client's patterns and starts its
heartbeats before any request the user made goes out on it.

A L{Reconnector}'s states, and what moves it on::

    connecting  the attempt is prepared               -> up: waiting requests go out
    connecting  it failed, in connect()'s first round -> connecting (the next address, at once);
                                                         closed once every address failed (connect() fails)
    connecting  it failed, later                      -> waiting (a delay, then the next address)
    connecting  the master refused the key            -> closed (gave up)
    up          the connection is lost                -> waiting (closed if reconnect is off)
    up          a request is answered Draining        -> up, draining: new requests wait; with more than
                                                         one address it closes once none is in flight,
                                                         else the master closes it when its calls are done
    waiting     the delay is over                     -> connecting
    any         close()                               -> closed

While there is no ready connection (C{client.holding}) calls, events and
requests wait (L{nswarm.api_waiting}), each until its deadline. A request lost with its
connection fails L{UpstreamUnavailable} (it may or may not have been carried
out), unless it is a call to a method the user declared idempotent: that one
waits for the next connection and is sent again, within its deadline. A
request a draining master refused (L{Draining}: it did not run) waits and is
sent again whatever it is (L{nswarm.client.ClientProtocol}'s C{_refused}).

Not Twisted's C{ClientService}: the same protocol object takes each new
connection, C{connect}'s first round must fail when no address answers,
attempts go round a list of addresses, and a refusal ends it; ClientService
has no transition for a preparation that fails, and would need its first
round and its stop on refusal grafted on (see L{nswarm.reconnect}'s notes).
The loop here is one timer and one attempt at a time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from nswarm import defaults
from nswarm.amp_commands import (
    Authenticate,
    AuthenticationFailed,
    Draining,
    UpstreamUnavailable,
)
from nswarm.api_failures import diagnose_api as _diagnose
from nswarm.api_failures import unavailable
from nswarm.api_waiting import WaitingRoom, what
from nswarm.core.answers import Parse
from nswarm.failures import Target, host_port
from nswarm.reconnect import AuthenticationTimedOut, lost_delay

if TYPE_CHECKING:
    from nswarm.api import APIClient

__all__ = ["MAX_DELAY", "Address", "Reconnector", "unavailable"]

#: A master's api server: (host, port).
Address = tuple[str, int]

#: The longest wait, in seconds, between two attempts to reach a master once a connection was up (jitter included):
#: a client is back within about this long of a master listening again, however long it was away. The same bound
#: as the nodes' and services' (L{nswarm.reconnect.lost_delay}).
MAX_DELAY = defaults.RECONNECT_LOST_MAX_DELAY

#: The counts of failed attempts in a row at which one is logged again (the first one always is).
_LOGGED = frozenset({1} | {10**power for power in range(1, 12)})


class _OneConnection(Factory):
    """The factory of every connection of one client: each builds that same client (see L{Reconnector})."""

    noisy = False

    def __init__(self, client: APIClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> APIClient:
        assert self.client.transport is None, "a new connection before the last one was lost"
        self.client.forget_connection()
        return self.client


class Reconnector:
    """
    The connections of one L{nswarm.api.APIClient} (its C{keeper}): the
    first one (L{start}, C{connect}'s Deferred), and, if C{reconnect}, the
    next ones after each loss, to C{addresses} in turn, through
    C{endpoint(address)}; C{target(address)} names an address in failures.
    Each connection authenticates with C{key} (and C{name}) within
    C{timeout} seconds, then heartbeats every C{heartbeat} seconds. Calls to
    C{idempotent} methods lost with a connection are sent again.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        client: APIClient,
        addresses: Sequence[Address],
        endpoint: Callable[[Address], IStreamClientEndpoint],
        target: Callable[[Address], Target],
        key: bytes,
        name: str | None = None,
        heartbeat: float = defaults.HEARTBEAT,
        timeout: float = defaults.CONNECT_TIMEOUT,
        reconnect: bool = True,
        idempotent: Iterable[str] = (),
    ) -> None:
        if not addresses:
            raise ValueError("give at least one master address to connect to")
        self.clock = clock
        self.client = client
        self.addresses = list(addresses)
        self.endpoint = endpoint
        self.target = target
        self.key = key
        self.name = name
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.reconnect = reconnect
        #: One of connecting, up, waiting, closed (see the module's table).
        self.state = "new"
        #: Where the connection is (or was last), while it is up.
        self.address: Address | None = None
        #: Whether the master of the current connection is draining.
        self.draining = False
        #: Attempts failed since the last connection was up.
        self.failures = 0
        self._next = 0
        self._first: Deferred[APIClient] | None = None
        self._first_errors: list[Failure] = []
        self._attempt_d: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        self._quiet: LoopingCall | None = None
        #: The requests that wait for a ready connection.
        self.waiting = WaitingRoom(clock, client, self.may_resend)
        self._gone: list[Deferred[None]] = []
        self._down_since: float | None = None
        self._resume = False
        self._losing = False
        client.keeper = self
        if reconnect:
            client.idempotent = frozenset(idempotent)

    # -- the user's side -------------------------------------------------------

    def start(self) -> Deferred[APIClient]:
        """
        Connect: try each address once, in order; fires with the client once
        one connection is ready, or fails as L{nswarm.api.connect} documents.
        """
        first: Deferred[APIClient] = Deferred(lambda _: self._cancel_first())
        self._first = first
        self._attempt()
        return first

    def _cancel_first(self) -> None:
        """C{connect}'s Deferred was cancelled: stop."""
        self.close()

    def send(self, box: dict[bytes, bytes], parse: Parse, timeout: float, method: str | None) -> Deferred[Any]:
        """See L{nswarm.client.Keeper.send}."""
        return self.waiting.send(box, parse, timeout, method is not None and method in self.client.idempotent)

    def close(self) -> Deferred[None]:
        """Stop reconnecting, fail what waits, and close the connection; fires once it is closed."""
        if self.state != "closed":
            self._stop("the client was closed")
            if self._attempt_d is not None:
                self._attempt_d.cancel()
        if self.client.transport is not None:
            self.client.close_connection()
        else:
            self._fire_gone()
        return self.gone()

    def gone(self) -> Deferred[None]:
        """Fires once the client is closed for good and its connection is gone (at once if it is)."""
        if self.state == "closed" and self.client.transport is None:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._gone.append(waiting)
        return waiting

    def may_resend(self, failure: Failure) -> bool:
        """Whether a request that may be sent again and failed with C{failure} is to be."""
        if not self.reconnect or self.state == "closed":
            return False
        return self._losing or failure.check(Draining) is not None

    # -- the connection's side -------------------------------------------------

    def refused(self, error: Exception) -> bool:
        """
        See L{nswarm.client.Keeper.refused}: a L{Draining} master is left for
        the next connection, and what it refused (it never ran) waits for it.
        """
        if not isinstance(error, Draining) or not self.reconnect or self.state == "closed":
            return False
        if self.state != "up" or self.draining:
            return True
        self.draining = True
        self.client.holding = True
        self.log.info(
            "the master at {address} is draining: requests wait for the next connection",
            address=self._text(self.address),
            nswarm_event="api_master_draining",
        )
        if len(self.addresses) > 1:
            self._quiet = LoopingCall(self._close_if_quiet)
            self._quiet.clock = self.clock
            self._quiet.start(defaults.SWEEP_INTERVAL, now=True)
        return True

    def _close_if_quiet(self) -> None:
        if not self.client.requests_in_flight():
            self._stop_quiet()
            self.client.close_connection()

    def losing(self) -> None:
        """The connection is being lost: from now on requests wait (when reconnecting)."""
        self._losing = True
        self._stop_quiet()
        if self.reconnect and self.state != "closed":
            self.client.holding = True

    def lost(self, reason: Failure) -> None:
        """The connection is lost (the requests on it have failed): reconnect, or be gone."""
        self._losing = False
        if self._resume:
            self._resume = False
            self._after_failure()
        elif self.state == "up":
            if not self.reconnect:
                self.state = "closed"
            else:
                self.state = "waiting"
                self.failures = 0
                self._down_since = self.clock.seconds()
                self.log.warn(
                    "lost the connection to the master at {address}: reconnecting; requests wait within their "
                    "deadlines",
                    address=self._text(self.address),
                    nswarm_event="api_reconnecting",
                )
                self._timer = self.clock.callLater(self._delay(), self._attempt)
        if self.state == "closed":
            self._fire_gone()

    def _fire_gone(self) -> None:
        gone, self._gone = self._gone, []
        for waiting in gone:
            waiting.callback(None)

    # -- attempts ----------------------------------------------------------------

    def _attempt(self) -> None:
        self._timer = None
        address = self.addresses[self._next % len(self.addresses)]
        self._next += 1
        self.state = "connecting"
        self.client.holding = self.reconnect
        attempt = self.endpoint(address).connect(_OneConnection(self.client))
        self._attempt_d = attempt
        attempt.addCallback(self._prepare, address)
        attempt.addCallbacks(self._up, self._failed, callbackArgs=(address,), errbackArgs=(address,))

    def _prepare(self, client: Any, address: Address) -> Deferred[Any]:
        """Authenticate the new connection, start its heartbeats and subscribe again, within C{timeout}."""
        arguments: dict[str, Any] = {"key": self.key}
        if self.name:
            arguments["name"] = self.name
        prepared = client.request_now(Authenticate, **arguments)
        prepared.addCallback(lambda _: client.start_heartbeats(self.clock, self.heartbeat))
        prepared.addCallback(lambda _: client.subscribe_again(self._text(address)))

        def late(failure: Failure) -> Failure:
            if failure.check(DeferredTimeoutError):
                return Failure(AuthenticationTimedOut(self.target(address), self.timeout, "connect's timeout"))
            return failure

        return prepared.addTimeout(self.timeout, self.clock).addErrback(late)

    def _up(self, _: object, address: Address) -> None:
        self._attempt_d = None
        if self.state == "closed":
            self.client.close_connection()
            return
        self.state, self.address, self.failures, self.draining = "up", address, 0, False
        if self._down_since is not None:
            self.log.info(
                "reconnected to the master at {address}, {seconds:.3f} s after the connection was lost",
                address=self._text(address),
                seconds=self.clock.seconds() - self._down_since,
                nswarm_event="api_reconnected",
            )
            self._down_since = None
        self.client.holding = False
        self.waiting.release()
        first, self._first = self._first, None
        if first is not None:
            first.callback(self.client)

    def _failed(self, failure: Failure, address: Address) -> None:
        self._attempt_d = None
        if self.state == "closed":
            if self._first is not None:
                first, self._first = self._first, None
                first.errback(failure)
            return
        error = unavailable(failure, self.target(address))
        if failure.check(AuthenticationFailed):
            self._give_up(error)
            return
        self.failures += 1
        if self._first is not None:
            self._first_errors.append(error)
        elif self.failures in _LOGGED:
            diagnosis = _diagnose(failure, self.target(address))
            self.log.warn(
                "could not reconnect to the master: {reason} (attempt {attempt})",
                reason=diagnosis.message,
                cause=diagnosis.cause,
                attempt=self.failures,
                address=self._text(address),
                nswarm_event="api_connect_failed",
            )
        if self.client.transport is not None:
            # It failed with its connection open (no answer in time): go on once that one is gone.
            self._resume = True
            self.client.close_connection(abort=True)
            return
        self._after_failure()

    def _after_failure(self) -> None:
        """An attempt failed and its connection is gone: the next one, or give up on connect()'s first round."""
        if self.state == "closed":
            return
        if self._first is not None:
            if len(self._first_errors) < len(self.addresses):
                self._attempt()
                return
            self._give_up(self._none_reached())
            return
        self.state = "waiting"
        self._timer = self.clock.callLater(self._delay(), self._attempt)

    def _none_reached(self) -> Failure:
        """Why connect()'s first round failed: its one failure, or every address's."""
        errors = self._first_errors
        if len(errors) == 1:
            return errors[0]
        error = UpstreamUnavailable(
            f"none of the {len(errors)} masters could be reached: " + "; ".join(e.getErrorMessage() for e in errors)
        )
        error.__cause__ = errors[-1].value
        return Failure(error)

    def _give_up(self, failure: Failure) -> None:
        """A refusal, or connect()'s first round failed: stop, failing what waits with C{failure}'s reason."""
        first, self._first = self._first, None
        if first is None:
            self.log.error(
                "gave up reconnecting to the master: {reason}",
                reason=failure.getErrorMessage(),
                nswarm_event="api_gave_up",
            )
        self._stop(f"the client gave up reconnecting: {failure.getErrorMessage()}")
        if self.client.transport is not None:
            self.client.close_connection()
        else:
            self._fire_gone()
        if first is not None:
            first.errback(failure)

    def _stop(self, why: str) -> None:
        """Closed: no more attempts; what waits fails with L{UpstreamUnavailable} saying C{why}."""
        self.state = "closed"
        self.client.holding = False
        self._stop_quiet()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.waiting.fail_all(lambda box: UpstreamUnavailable(f"{what(box)} was not sent: {why}"))

    def _stop_quiet(self) -> None:
        if self._quiet is not None and self._quiet.running:
            self._quiet.stop()
        self._quiet = None

    def _delay(self) -> float:
        """
        Seconds before the next attempt: the nodes' policy after a loss
        (L{lost_delay}: from 0.125-0.25 s, backing off, with jitter, to
        L{MAX_DELAY}), its step growing once per round of the addresses.
        """
        return lost_delay(self.failures // len(self.addresses) + 1, MAX_DELAY, random.random())

    @staticmethod
    def _text(address: Address | None) -> str:
        return "(none)" if address is None else host_port(*address)
