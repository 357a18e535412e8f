"""
Keeping a client connection up: the node's upstream to the master and a
service's connection to its node both reconnect through L{Reconnecting},
Twisted's C{ClientService} with nswarm's backoff, and with one log line per
failed attempt that says what went wrong and what to do (see
L{nswarm.failures}) in place of C{ClientService}'s own "Scheduling retry N
to connect <... object at 0x...>".
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from nswarm import defaults
from nswarm.failures import Diagnosis, Target, cancelled, diagnose


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
    attempts, at most C{max_delay} seconds apart. C{who} (C{"node 'n1'"})
    is how its log lines name the client.

    Each failed attempt (the endpoint's, the TLS handshake's or
    C{prepare}'s) is logged once, as it is rescheduled: a warning whose
    C{reason} field says what went wrong and what to do, its C{cause} a
    short name for programs (see L{nswarm.failures.diagnose}).

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
    ) -> None:
        self.who = who
        self.target = target
        #: Failed attempts in a row (ClientService counts those that failed to connect, not to prepare).
        self.failures = 0
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
        self._failed = (diagnose(failure, self.target), failure.getErrorMessage())

    def _prepared(self, protocol: Any) -> Deferred[None]:
        def succeeded(_: object) -> None:
            self.failures = 0

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
        delay = self._backoff(max(attempt, self.failures))
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
        diagnosis, error = failed
        self.log.warn(
            "{who} could not connect: {reason} (attempt {attempt}; retrying in {delay:.1f} s)",
            who=self.who,
            target=str(self.target),
            reason=diagnosis.message,
            cause=diagnosis.cause,
            error=error,
            attempt=max(attempt, self.failures),
            delay=round(delay, 3),
            nswarm_event="connect_failed",
        )
        return delay
