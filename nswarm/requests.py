"""
The requests one end of a connection sent and waits for answers to.

The SDK ends and the node's upstream send their requests as boxes built
here (or by a C{Command}'s public C{makeArguments}) and match the answers
by tag, with one tag counter for everything sent on the connection: calls
forwarded by a relay and the connection's own commands never share a tag.
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


class Requests:
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
        self._waiting: dict[bytes, tuple[Deferred[Any], Parse, amp.AmpBox]] = {}
        #: Requests refused without running and sent again (L{move}): their new Deferreds, by their old tags.
        self._moved: dict[bytes, Deferred[Any]] = {}

    def next_tag(self) -> bytes:
        """A new C{_ask} tag, unique on this connection."""
        self._tags += 1
        return b"%x" % self._tags

    def request(self, command: type[amp.Command], **arguments: Any) -> Deferred[dict[str, Any]]:
        """Send C{command} with C{arguments}; the Deferred fires with its parsed response or typed error."""
        box = command.makeArguments(arguments, self)
        box[COMMAND] = command.commandName
        return self.request_box(box, lambda answer: command.parseResponse(answer, self))

    def register(
        self, command: type[amp.Command], names: list[str], arguments: Callable[[list[str]], dict[str, Any]]
    ) -> Deferred[Any]:
        """
        Send registration C{command} for C{names}, in as many requests as
        their size needs (L{in_parts}), each with C{arguments(part)}; the
        Deferred fires once all are answered, or fails with the first error.
        """
        gathered: Deferred[Any] = gatherResults(
            [self.request(command, **arguments(part)) for part in in_parts(names)], consumeErrors=True
        )
        return gathered.addErrback(first_error)

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
        d: Deferred[Any] = Deferred(lambda _: self._cancel(tag))
        self._waiting[tag] = (d, parse, box)
        return d

    def _cancel(self, tag: bytes) -> None:
        """The caller cancelled its request C{tag}: cancel it upstream, or where it was moved to."""
        moved = self._moved.pop(tag, None) if self._moved else None
        if moved is not None:
            moved.cancel()
        else:
            self.send(amp.AmpBox({COMMAND: CANCEL, ID: tag}))

    def move(self, tag: bytes, send: Callable[[amp.AmpBox, Parse], Deferred[Any]]) -> bool:
        """
        Request C{tag} was refused before it ran (a draining master): send
        its box again with C{send(box, parse)} (which may wait for another
        connection), and fire its caller's Deferred with what that gives.
        False if there is no such request.
        """
        request = self._waiting.pop(tag, None)
        if request is None:
            return False
        d, parse, box = request
        if d.called:
            return True
        del box[ASK]
        again = send(box, parse)
        self._moved[tag] = again

        def fired(result: Any) -> None:
            self._moved.pop(tag, None)
            if not d.called:
                d.callback(result)  # a Failure errbacks it

        again.addBoth(fired)
        return True

    def answered(self, tag: bytes, box: amp.AmpBox) -> bool:
        """Fire the request C{tag} that answer or error C{box} is for; False if there is none."""
        request = self._waiting.pop(tag, None)
        if request is None:
            return False
        d, parse, _ = request
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
        for d, _, _ in waiting.values():
            if not d.called:
                d.errback(reason if reason.check(*TLS_FAILURES) else self.connection_gone())

    def connection_gone(self) -> NswarmError:
        """The error a request fails with when the connection is gone."""
        raise NotImplementedError


def first_error(failure: Failure) -> Failure:
    """The first failure of a gathering (its own, not gatherResults' wrapper)."""
    sub = getattr(failure.value, "subFailure", None)
    return sub if isinstance(sub, Failure) else failure
