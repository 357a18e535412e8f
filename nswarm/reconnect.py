"""
Keeping a client connection up: the node's upstream to the master and a
service's connection to its node both reconnect through L{reconnecting}.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from nswarm import defaults


def reconnecting(
    reactor: Any,
    endpoint: IStreamClientEndpoint,
    factory: IProtocolFactory,
    prepare: Callable[[Any], Deferred[Any]],
    what: str,
    max_delay: float,
) -> ClientService:
    """
    A ClientService that keeps a connection up, running C{prepare} (which
    authenticates and registers) on each new connection, with exponential
    backoff and jitter between attempts.

    A failed C{prepare} is logged, closes the connection and counts as a
    failed attempt. It does not fail ClientService's prepareConnection:
    ClientService has no state transition for a connection that closes after
    its preparation failed, and would log a spurious traceback.
    """
    log = Logger(namespace="nswarm.reconnecting")
    # A quick first retry, with jitter so that many nodes reconnecting to a
    # restarted master spread out, then backing off.
    backoff = backoffPolicy(
        initialDelay=defaults.RECONNECT_INITIAL_DELAY,
        maxDelay=max_delay,
        jitter=lambda: random.random() * defaults.RECONNECT_JITTER,
    )
    failures = 0

    def prepared(protocol: Any) -> Deferred[None]:
        def succeeded(_: object) -> None:
            nonlocal failures
            failures = 0

        def failed(failure: Failure) -> Deferred[None] | None:
            nonlocal failures
            protocol.transport.loseConnection()
            if failure.check(CancelledError):
                # The service is stopping and ClientService cancelled this
                # attempt. The connection's loss completes the stop; after
                # that ClientService has no transition for this attempt's
                # outcome, whatever it is, so it never gets one.
                return Deferred()
            failures += 1
            log.error("{what} could not connect: {error}; retrying", what=what, error=failure.getErrorMessage())
            return None

        return maybeDeferred(prepare, protocol).addCallbacks(succeeded, failed)

    return ClientService(
        endpoint,
        factory,
        retryPolicy=lambda attempt: backoff(max(attempt, failures)),
        clock=reactor,
        prepareConnection=prepared,
    )
