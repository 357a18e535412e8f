"""
The service side of a L{nswarm.core.connection.Connection}: the calls the
node sends this end to run, and their answers. Every call that wants an
answer gets exactly one: its result, its error, or none once it is
cancelled (the relay has answered it then).

A call that carries C{stream} (the caller's window) is answered with parts
first: the front end sends each with L{RunsCalls.part} while
L{RunsCalls.credit} allows (the window, grown by each C{More} the caller
sends: a L{MoreReceived} event says so), then L{RunsCalls.end}. Holding the
generator back while the credit is spent is the back-pressure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nswarm import defaults
from nswarm.caller import Caller
from nswarm.codec import decode_arguments, encode
from nswarm.core import wire
from nswarm.core.boxes import Box, error_box, get_payload, put_payload
from nswarm.core.events import CallReceived, CancelReceived, Event, MoreReceived
from nswarm.errors import HandlerFailed, InvalidRequest, NswarmError


@dataclass
class Outgoing:
    """A streamed call this end runs: the parts it may still send, and those it sent."""

    credit: int
    sent: int = 0


def stream_window(value: bytes) -> int:
    """The window a Call's C{stream} carries, or L{InvalidRequest} if it is not 1 to MAX_STREAM_WINDOW."""
    try:
        window = int(value)
    except ValueError:
        window = 0
    if not 1 <= window <= defaults.MAX_STREAM_WINDOW:
        raise InvalidRequest(
            f"the stream window {value[:20]!r} is not a whole number from 1 to {defaults.MAX_STREAM_WINDOW}: "
            "ask for a smaller window"
        )
    return window


class RunsCalls:
    """Mix in before the connection's own class: L{answer}, L{fail}, streamed parts, and the calls received."""

    _running: set[bytes]
    _callers: dict[bytes, Caller | None]
    _outgoing: dict[bytes, Outgoing]
    _events: list[Event]
    _send: Any
    checked: Any
    max_payload: int

    def answer(self, tag: bytes | None, value: Any) -> NswarmError | None:
        """
        Answer the call C{tag} with its handler's C{value} (nothing if it
        was cancelled or wants no answer). A streamed call gets C{value} as
        its one part, then its end. If C{value} cannot be sent (over the
        payload limit, not JSON), the caller gets that error, which is
        returned (for the service's log).
        """
        if tag is None or tag not in self._running:
            return None
        if tag in self._outgoing:
            if self.part(tag, value):
                self.end(tag)
            return None
        self._running.discard(tag)
        try:
            reply = {wire.ANSWER: tag}
            put_payload(reply, wire.RESULT, self._encoded(value, "result"))
        except NswarmError as error:
            self._send(error_box(tag, error))
            return error
        self._send(reply)
        return None

    def fail(self, tag: bytes | None, error: BaseException) -> None:
        """Answer the call C{tag} with C{error}: nswarm's own errors as they are, others as L{HandlerFailed}."""
        if tag is None or tag not in self._running:
            return
        self._running.discard(tag)
        self._outgoing.pop(tag, None)
        typed = error if isinstance(error, NswarmError) else HandlerFailed.from_exception(error)
        self._send(error_box(tag, typed))

    # -- streamed results ------------------------------------------------------

    def credit(self, tag: bytes | None) -> int:
        """How many parts the streamed call C{tag} may send now (0: wait for L{MoreReceived}, or it is over)."""
        outgoing = self._outgoing.get(tag) if tag is not None else None
        return 0 if outgoing is None else outgoing.credit

    def streaming(self, tag: bytes | None) -> bool:
        """Whether C{tag} is a streamed call still running here (not ended, failed, cancelled or lost)."""
        return tag is not None and tag in self._outgoing

    def part(self, tag: bytes | None, value: Any) -> bool:
        """
        Send C{value} as the next part of streamed call C{tag}. False if the
        call is over: cancelled, or failed now because C{value} is over the
        payload limit or not JSON (the caller gets that error): close the
        generator. Sending with no L{credit} left is the front end's bug.
        """
        outgoing = self._outgoing.get(tag) if tag is not None else None
        if tag is None or outgoing is None:
            return False
        if outgoing.credit <= 0:
            raise RuntimeError("a part was sent with no credit left: wait for MoreReceived before the next one")
        try:
            box = {wire.COMMAND: wire.PART, wire.ID: tag}
            put_payload(box, wire.RESULT, self._encoded(value, f"part {outgoing.sent + 1} of the result"))
        except NswarmError as error:
            self.fail(tag, error)
            return False
        outgoing.credit -= 1
        outgoing.sent += 1
        self._send(box)
        return True

    def end(self, tag: bytes | None) -> None:
        """The streamed call C{tag} has sent its last part: answer it with the number of parts."""
        outgoing = self._outgoing.pop(tag, None) if tag is not None else None
        if tag is None or outgoing is None or tag not in self._running:
            return
        self._running.discard(tag)
        self._send({wire.ANSWER: tag, wire.RESULT: b"%d" % outgoing.sent})

    # -- inside ------------------------------------------------------------------

    def _encoded(self, value: Any, what: str) -> bytes:
        try:
            data: bytes = encode(value)
        except InvalidRequest:
            raise HandlerFailed(
                f"InvalidResult: the handler returned a {type(value).__name__}, "
                "which is not JSON-compatible: return JSON-compatible values"
            ) from None
        if len(data) > self.max_payload:
            self.checked(data, what)  # raises PayloadTooLarge
        return data

    def _call_received(self, box: Box, tag: bytes | None) -> None:
        try:
            method = box[wire.METHOD].decode("utf-8")
            args, kwargs = decode_arguments(get_payload(box, wire.ARGS))
            stream = box.get(wire.STREAM)
            window = stream_window(stream) if stream is not None and tag is not None else None
        except (NswarmError, KeyError, UnicodeDecodeError) as error:
            if tag is not None:
                if not isinstance(error, NswarmError):
                    error = InvalidRequest("the call has no UTF-8 method name: send it with an nswarm SDK")
                self._send(error_box(tag, error))
            return
        stamp = box.get(wire.CALLER)
        caller = None
        if stamp:
            if stamp not in self._callers:
                if len(self._callers) > 1000:
                    self._callers.clear()
                self._callers[stamp] = Caller.from_stamp(stamp)
            caller = self._callers[stamp]
        if tag is not None:
            self._running.add(tag)
            if window is not None:
                self._outgoing[tag] = Outgoing(window)
        self._events.append(CallReceived(tag, method, args, kwargs, caller, window))

    def _cancel_received(self, box: Box) -> None:
        cancelled = box.get(wire.ID, b"")
        if cancelled in self._running:
            self._running.discard(cancelled)
            self._outgoing.pop(cancelled, None)
            self._events.append(CancelReceived(cancelled))

    def _more_received(self, box: Box) -> None:
        outgoing = self._outgoing.get(box.get(wire.ID, b""))
        try:
            count = int(box.get(wire.COUNT, b""))
        except ValueError:
            return
        if outgoing is not None and 0 < count <= defaults.MAX_STREAM_WINDOW:
            outgoing.credit = min(outgoing.credit + count, defaults.MAX_STREAM_WINDOW * 2)
            self._events.append(MoreReceived(box[wire.ID]))
