"""
The requests one end of a connection sent and waits for answers to.

The relays (the node's upstream above all) send their own requests as boxes
built here (or by a C{Command}'s public C{makeArguments}) and match the
answers by tag, with one tag counter for everything sent on the connection:
calls forwarded by a relay and the connection's own commands never share a
tag. (The SDK ends keep theirs in the sans-IO core, L{nswarm.core.connection}.)
AMP's own C{callRemote} is not used, so its private tag counter and table
of outstanding requests are never needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.protocols import amp
from twisted.python.failure import Failure

from nswarm.amp_commands import ANSWER, ASK, CANCEL, COMMAND, ID, InvalidRequest, NswarmError
from nswarm.boxes import error_box, remote_error
from nswarm.core.wire import NAMES_PER_REQUEST, in_parts  # noqa: F401 (re-exported)
from nswarm.failures import TLS_FAILURES

Parse = Callable[[amp.AmpBox], Any]


def methods_part(part: list[str]) -> dict[str, Any]:
    """The arguments of an C{Unimplement} for one part of a list of methods (see L{Requests.register})."""
    return {"methods": part}


def events_part(part: list[str]) -> dict[str, Any]:
    """The arguments of a C{Subscribe} or C{Unsubscribe} for one part of a list of patterns."""
    return {"events": part}


def command_request(
    command: type[amp.Command], arguments: dict[str, Any], proto: Any
) -> tuple[amp.AmpBox, Callable[[Any], Any]]:
    """The box of C{command} with C{arguments}, and how to parse its answer, for the connection C{proto}."""
    box = command.makeArguments(arguments, proto)
    box[COMMAND] = command.commandName
    return box, lambda answer: command.parseResponse(answer, proto)


def register_in_parts(
    request: Callable[..., Deferred[Any]],
    command: type[amp.Command],
    names: list[str],
    arguments: Callable[[list[str]], dict[str, Any]],
) -> Deferred[Any]:
    """
    Send registration C{command} for C{names} with C{request}, in as many
    requests as their size needs (L{in_parts}), each with
    C{arguments(part)}; the Deferred fires once all are answered, or fails
    with the first error.
    """
    gathered: Deferred[Any] = gatherResults(
        [request(command, **arguments(part)) for part in in_parts(names)], consumeErrors=True
    )
    return gathered.addErrback(first_error)


class SendsCommands:
    """
    C{request} and C{register} of AMP commands, on top of the connection's
    C{request_box(box, parse)}: one copy for the relays' L{Requests} and
    the Twisted SDKs' L{nswarm.client.ClientProtocol}.
    """

    request_box: Callable[..., Deferred[Any]]

    def request(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        """Send C{command} with C{arguments}; the Deferred fires with its parsed response or typed error."""
        return self.request_box(*command_request(command, arguments, self))

    def register(
        self, command: type[amp.Command], names: list[str], arguments: Callable[[list[str]], dict[str, Any]]
    ) -> Deferred[Any]:
        """Send registration C{command} for C{names} (see L{register_in_parts})."""
        return register_in_parts(self.request, command, names, arguments)


class Requests(SendsCommands):
    """
    Mix in before L{nswarm.framing.FastBoxes}: C{next_tag} and C{request_box}
    send, C{answered} matches an answer or error box to its request, and
    C{fail_requests} fails what is left when the connection is lost.
    """

    transport: Any
    # Provided by FastBoxes (annotations only, so that they do not shadow it).
    sendBox: Callable[[amp.AmpBox], None]
    send: Callable[[amp.AmpBox], None]
    _tags = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: dict[bytes, tuple[Deferred[Any], Parse]] = {}

    def next_tag(self) -> bytes:
        """A new C{_ask} tag, unique on this connection."""
        self._tags += 1
        return b"%x" % self._tags

    def request_box(self, box: amp.AmpBox, parse: Parse) -> Deferred[Any]:
        """
        Send request C{box} with a new tag; the Deferred fires with
        C{parse(answer)}, or fails with the typed error answered. Cancelling
        it sends L{nswarm.amp_commands.Cancel} for the request.
        """
        if self.transport is None:
            return fail(self.connection_gone())
        tag = self.next_tag()
        box[ASK] = tag
        try:
            self.sendBox(box)
        except amp.TooLong as error:
            return fail(InvalidRequest(f"a name is too long for AMP ({error}): use names of at most 255 characters"))
        d: Deferred[Any] = Deferred(lambda _: self.send(amp.AmpBox({COMMAND: CANCEL, ID: tag})))
        self._waiting[tag] = (d, parse)
        return d

    def answered(self, tag: bytes, box: amp.AmpBox) -> bool:
        """Fire the request C{tag} that answer or error C{box} is for; False if there is none."""
        request = self._waiting.pop(tag, None)
        if request is None:
            return False
        d, parse = request
        if d.called:  # the caller gave up (cancelled): the answer is moot
            return True
        if ANSWER in box:
            try:
                result = parse(box)
            except Exception:
                d.errback()
            else:
                d.callback(result)
        else:
            d.errback(remote_error(box))
        return True

    def fail_request(self, tag: bytes, error: NswarmError) -> bool:
        """Fail the request C{tag} with C{error} (its answer was refused); False if there is none."""
        return self.answered(tag, error_box(tag, error))

    def fail_requests(self, reason: Failure) -> None:
        """
        The connection is gone (for C{reason}): fail every request still
        waiting with L{connection_gone}, or with the TLS error that closed it
        (a certificate that did not verify, or did not name the host, say),
        which says more.
        """
        waiting, self._waiting = self._waiting, {}
        for d, _ in waiting.values():
            if not d.called:
                d.errback(reason if reason.check(*TLS_FAILURES) else self.connection_gone())

    def connection_gone(self) -> NswarmError:
        """The error a request fails with when the connection is gone."""
        raise NotImplementedError


def first_error(failure: Failure) -> Failure:
    """The first failure of a gathering (its own, not gatherResults' wrapper)."""
    sub = getattr(failure.value, "subFailure", None)
    return sub if isinstance(sub, Failure) else failure
