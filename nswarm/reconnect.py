"""
Keeping a client connection up: the node's upstream to the master and a
service's connection to its node both reconnect through L{Reconnecting},
Twisted's C{ClientService} with nswarm's retry policy, and with one log line
per failed attempt that says what went wrong and what to do (see
L{nswarm.failures}) in place of C{ClientService}'s own "Scheduling retry N
to connect <... object at 0x...>".

The retry policy has two regimes. Until the connection has been up
(authenticated and registered), the waits grow 1.5 times per failed attempt
up to C{max_delay} (a node started before its master does not knock every
second for hours). Once a connection that was up is lost, the server is
known to exist and is only down or restarting: the waits grow from the same
start but only up to C{lost_max_delay} (0.8 s by default), each a random
part of its step (L{lost_delay}), for as long as it stays down, so that the
client is back within about a second of the server listening again,
whatever the outage's length, and many clients that lost the same server
do not come back in step. A refusal (the server answered, and said no to
this client's key, certificate or registration) is not an outage: it goes
back to the longer backoff.

L{AuthenticationDeadline} bounds the authentication (TLS handshake
included) on each new connection: a server that accepts the connection and
then says nothing (stopped with SIGSTOP, or hung) costs an attempt, not a
wait without end.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from nswarm import defaults
from nswarm.core.backoff import lost_delay  # noqa: F401 (re-exported: the policy is the core's)
from nswarm.failures import SERVERS, Diagnosis, Target, cancelled, diagnose

T = TypeVar("T")

#: The causes (see L{nswarm.failures.diagnose}) of a failed attempt that say the server is not there, or not
#: answering: an outage, retried fast by a client whose connection was up. The others are refusals.
OUTAGES = frozenset({"refused", "timeout", "auth_timeout", "closed", "unreachable", "dns", "no_socket", "other"})


def outage(failure: Failure, diagnosis: Diagnosis) -> bool:
    """
    Whether the attempt that failed with C{failure} found the server down,
    stopped or unreachable (an outage), rather than refused by it (a wrong
    key, certificate or registration: not worth retrying every second).
    """
    if diagnosis.cause == "refused":  # the connection refused (nobody listens), or a registration refused
        return failure.check(error.ConnectionRefusedError) is not None
    return diagnosis.cause in OUTAGES


class AuthenticationTimedOut(Exception):
    """
    The server accepted the connection, then did not answer the client's
    authentication (nor, over TCP, complete the TLS handshake) in time: it
    is stopped, hung or overloaded. The client closes the connection and
    tries again.
    """

    def __init__(self, target: Target, seconds: float, setting: str) -> None:
        whose = SERVERS[target.server][0]
        handshake = "the TLS handshake and " if target.host is not None else ""
        super().__init__(
            f"{target.address} accepted the connection but did not answer {handshake}the authentication within "
            f"{seconds:g} s: is the {whose} stopped (SIGSTOP), hung or overloaded? Check that it runs; if it is only "
            f"slow, raise {setting}"
        )
        self.target = target
        self.seconds = seconds


class AuthenticationDeadline:
    """
    How long a client waits for the answer to its authentication on a new
    connection to C{target}: C{seconds} on C{clock}. C{setting} is the
    option that sets it, which the timeout's sentence names.
    """

    def __init__(self, clock: Any, seconds: float, target: Target, setting: str) -> None:
        self.clock = clock
        self.seconds = seconds
        self.target = target
        self.setting = setting

    def bound(self, protocol: Any, answer: Deferred[T]) -> Deferred[T]:
        """
        C{answer} (the authentication under way on C{protocol}'s connection),
        or, if it has not come within the deadline, the connection aborted and
        L{AuthenticationTimedOut}.
        """
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            transport = protocol.transport
            if transport is not None:
                abort = getattr(transport, "abortConnection", None)
                (abort or transport.loseConnection)()

        timer = self.clock.callLater(self.seconds, expire)

        def settled(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if expired:  # whatever came after the abort: the attempt is over
                return Failure(AuthenticationTimedOut(self.target, self.seconds, self.setting))
            return result

        return answer.addBoth(settled)


@provider(ILogObserver)
def _without_retry_lines(event: LogEvent) -> None:
    """
    ClientService's own log, less its "Scheduling retry" line (whose
    fields are C{attempt}, C{endpoint} and C{delay}): L{Reconnecting} logs
    that attempt itself, with its cause.
    """
    if not {"attempt", "endpoint", "delay"} <= event.keys():
        globalLogPublisher(event)


@implementer(IStreamClientEndpoint)
class _Attempts:
    """
    The endpoint a L{Reconnecting} connects through: C{endpoint}, named as
    its target (in any log line that shows it), and whose failures go to
    C{failed} before ClientService sees them.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, target: Target, failed: Callable[[Failure], None]) -> None:
        self.endpoint = endpoint
        self.target = target
        self.failed = failed

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        """Connect through the endpoint; a failure is reported, then passed on."""

        def failed(failure: Failure) -> Failure:
            self.failed(failure)
            return failure

        return self.endpoint.connect(protocolFactory).addErrback(failed)

    def __str__(self) -> str:
        return str(self.target)

    __repr__ = __str__


class Reconnecting(ClientService):
    """
    A ClientService that keeps a connection to C{target} up through
    C{endpoint}, running C{prepare} (which authenticates and registers) on
    each new connection, with exponential backoff and jitter between
    attempts: at most C{max_delay} seconds apart until the connection has
    been up, at most C{lost_max_delay} apart once it has been up and is lost
    (see the module's docstring). C{who} (C{"node 'n1'"}) is how its log
    lines name the client.

    Each failed attempt (the endpoint's, the TLS handshake's or
    C{prepare}'s) is logged as it is rescheduled: a warning whose C{reason}
    field says what went wrong and what to do, its C{cause} a short name for
    programs (see L{nswarm.failures.diagnose}). While reconnecting fast after
    a loss, attempts that fail as the last one logged did are logged once
    every L{defaults.RECONNECT_LOG_INTERVAL} seconds, not every second.

    A failed C{prepare} closes the connection and counts as a failed
    attempt. It does not fail ClientService's prepareConnection:
    ClientService has no state transition for a connection that closes after
    its preparation failed, and would log a spurious traceback.
    """

    log = Logger()
    # ClientService's own Logger, which logs every retry with the endpoint's repr: see _without_retry_lines.
    _log = Logger(observer=_without_retry_lines)

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        factory: IProtocolFactory,
        prepare: Callable[[Any], Deferred[Any]],
        who: str,
        target: Target,
        max_delay: float,
        lost_max_delay: float = defaults.RECONNECT_LOST_MAX_DELAY,
    ) -> None:
        self.who = who
        self.target = target
        self.clock = reactor
        self.lost_max_delay = lost_max_delay
        #: Failed attempts in a row (ClientService counts those that failed to connect, not to prepare).
        self.failures = 0
        #: Whether a connection was up (prepared) and no attempt since was refused: then retries are fast.
        self.was_up = False
        #: The cause and time of the last failed attempt logged while reconnecting fast.
        self._logged: tuple[str, float] | None = None
        #: Why the last attempt failed, until its retry is scheduled and logged.
        self._failed: tuple[Diagnosis, str] | None = None
        self._prepare = prepare
        # A quick first retry, with jitter so that many nodes reconnecting to a
        # restarted master spread out, then backing off.
        self._backoff = backoffPolicy(
            initialDelay=defaults.RECONNECT_INITIAL_DELAY,
            maxDelay=max_delay,
            jitter=lambda: random.random() * defaults.RECONNECT_JITTER,
        )
        super().__init__(
            _Attempts(endpoint, target, self._attempt_failed),
            factory,
            retryPolicy=self._retry,
            clock=reactor,
            prepareConnection=self._prepared,
        )

    def __repr__(self) -> str:
        return f"<reconnecting {self.who} to {self.target}>"

    def _attempt_failed(self, failure: Failure) -> None:
        """Connecting failed: remember why, for the line that reschedules it."""
        if cancelled(failure):
            return
        self.failures += 1
        if failure.check(AuthenticationTimedOut):
            diagnosis = Diagnosis("auth_timeout", failure.getErrorMessage())
        else:
            diagnosis = diagnose(failure, self.target)
        if self.was_up and not outage(failure, diagnosis):
            self.was_up = False  # refused, not down: back to the longer backoff
        self._failed = (diagnosis, failure.getErrorMessage())

    def _prepared(self, protocol: Any) -> Deferred[None]:
        def succeeded(_: object) -> None:
            self.failures = 0
            self.was_up = True
            self._logged = None

        def failed(failure: Failure) -> Deferred[None] | None:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.loseConnection()
            if failure.check(CancelledError) or not self.running:
                # The service is stopping (and ClientService cancelled this
                # attempt). The connection's loss completes the stop; after
                # that ClientService has no transition for this attempt's
                # outcome, whatever it is, so it never gets one.
                return Deferred()
            self._attempt_failed(failure)
            return None

        return maybeDeferred(self._prepare, protocol).addCallbacks(succeeded, failed)

    def _retry(self, attempt: int) -> float:
        """
        ClientService's retry policy: the wait before the next attempt. It is
        asked as the attempt is rescheduled, which is when it is logged.
        """
        attempt = max(attempt, self.failures)
        if self.was_up:
            delay = lost_delay(attempt, self.lost_max_delay, random.random())
        else:
            delay = self._backoff(attempt)
        failed, self._failed = self._failed, None
        if failed is None:
            self.log.info(
                "{who} reconnecting to {target} in {delay:.1f} s",
                who=self.who,
                target=str(self.target),
                delay=round(delay, 3),
                nswarm_event="reconnecting",
            )
            return delay
        diagnosis, text = failed
        if self.was_up and not self._worth_logging(diagnosis.cause):
            return delay
        self.log.warn(
            "{who} could not connect: {reason} (attempt {attempt}; retrying in {delay:.1f} s)",
            who=self.who,
            target=str(self.target),
            reason=diagnosis.message,
            cause=diagnosis.cause,
            error=text,
            attempt=attempt,
            delay=round(delay, 3),
            nswarm_event="connect_failed",
        )
        return delay

    def _worth_logging(self, cause: str) -> bool:
        """
        While reconnecting fast: whether to log a failed attempt with
        C{cause}. Yes if the cause changed, or if the last line is
        L{defaults.RECONNECT_LOG_INTERVAL} seconds old.
        """
        now = self.clock.seconds()
        last = self._logged
        if last is not None and last[0] == cause and now - last[1] < defaults.RECONNECT_LOG_INTERVAL:
            return False
        self._logged = (cause, now)
        return True
