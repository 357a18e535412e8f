"""
Why an API client's connection attempt failed, in the words the user gets
(L{nswarm.failures} for the causes; a master that did not answer the
authentication in time, as the nodes say it).
"""

from __future__ import annotations

from twisted.python.failure import Failure

from nswarm.amp_commands import NswarmError, UpstreamUnavailable
from nswarm.failures import Diagnosis, Target, cancelled, diagnose
from nswarm.reconnect import AuthenticationTimedOut


def unavailable(failure: Failure, target: Target) -> Failure:
    """
    C{failure}, the way C{connect} to C{target} fails with it: the typed
    errors of a refusal (a wrong key, say) as they are; a failure to reach
    the api server as L{UpstreamUnavailable} with the sentence that says
    why (the original error as its C{__cause__}).
    """
    diagnosis = diagnose_api(failure, target)
    if cancelled(failure) or (failure.check(NswarmError) and diagnosis.cause in ("authentication", "refused")):
        return failure
    translated = UpstreamUnavailable(diagnosis.message)
    translated.__cause__ = failure.value
    return Failure(translated)


def diagnose_api(failure: Failure, target: Target) -> Diagnosis:
    """L{diagnose}, and a master that did not answer the authentication in time (as the nodes say it)."""
    if failure.check(AuthenticationTimedOut):
        return Diagnosis("auth_timeout", failure.getErrorMessage())
    return diagnose(failure, target)
