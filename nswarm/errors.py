"""
Every error nswarm reports to a caller, by its AMP error code. Each message
says what happened and what to do. (Re-exported by L{nswarm.amp_commands},
where the commands that may answer each are.)
"""

from __future__ import annotations


class NswarmError(Exception):
    """
    Base of every error nswarm reports to a caller. C{code} is its AMP error
    code; the message says what happened and what to do.
    """

    code = b"NSWARM_ERROR"


class AuthenticationFailed(NswarmError):
    """The auth key was wrong: the server closes the connection."""

    code = b"AUTHENTICATION_FAILED"


class NotAuthenticated(NswarmError):
    """A command other than Authenticate arrived first: the server closes the connection."""

    code = b"NOT_AUTHENTICATED"


class NoSuchMethod(NswarmError):
    """No connected service implements the method that was called."""

    code = b"NO_SUCH_METHOD"


class HandlerFailed(NswarmError):
    """
    The service's handler raised. The message is C{"TypeName: message"} of the
    remote exception; L{remote_type} and L{remote_message} split it.
    """

    code = b"HANDLER_FAILED"

    @classmethod
    def from_exception(cls, exception: BaseException) -> HandlerFailed:
        """The error that reports C{exception}, raised by a handler, to its caller."""
        return cls(f"{type(exception).__name__}: {exception}")

    @property
    def remote_type(self) -> str:
        """The name of the exception's type in the handler, such as C{"ValueError"}."""
        return str(self).partition(": ")[0]

    @property
    def remote_message(self) -> str:
        """The exception's message in the handler."""
        return str(self).partition(": ")[2]


class ImplementerLost(NswarmError):
    """The node or service running the call disconnected before it answered."""

    code = b"IMPLEMENTER_LOST"


class UpstreamUnavailable(NswarmError):
    """The node (or the service's node) has no connection to go through."""

    code = b"UPSTREAM_UNAVAILABLE"


class Draining(UpstreamUnavailable):
    """
    The master (or node) is stopping: it takes no new calls, and lets those in
    flight finish. Reconnect (to another master, or once it is back) and send
    the call again; the SDKs treat it as a lost connection.
    """

    code = b"DRAINING"


class InvalidRequest(NswarmError):
    """The request was malformed: a bad name, or arguments that cannot be decoded."""

    code = b"INVALID_REQUEST"


class PermissionDenied(NswarmError):
    """The identity that sent the request may not do it: the message names the identity, the action and the name."""

    code = b"PERMISSION_DENIED"


class LimitExceeded(NswarmError):
    """A connection asked to register more names or patterns than one connection may: register fewer."""

    code = b"LIMIT_EXCEEDED"


class PayloadTooLarge(NswarmError):
    """A call's arguments, its result or an event is over the size limit (16 MiB by default)."""

    code = b"PAYLOAD_TOO_LARGE"


class Overloaded(NswarmError):
    """Every implementer is at its concurrency limit and the master's queue is full: retry later."""

    code = b"OVERLOADED"


class DeadlineExceeded(NswarmError):
    """The call's deadline passed before it was answered; it was cancelled downstream."""

    code = b"DEADLINE_EXCEEDED"


class Cancelled(NswarmError):
    """The caller cancelled the call; it was cancelled downstream."""

    code = b"CANCELLED"


class InternalError(NswarmError):
    """Something unexpected failed inside nswarm; the daemon logged the details."""

    code = b"INTERNAL_ERROR"


ERRORS: dict[bytes, type[NswarmError]] = {
    error.code: error
    for error in (
        AuthenticationFailed,
        NotAuthenticated,
        NoSuchMethod,
        HandlerFailed,
        ImplementerLost,
        UpstreamUnavailable,
        Draining,
        InvalidRequest,
        PermissionDenied,
        LimitExceeded,
        PayloadTooLarge,
        Overloaded,
        DeadlineExceeded,
        Cancelled,
        InternalError,
    )
}
