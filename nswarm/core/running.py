"""
The service side of a L{nswarm.core.connection.Connection}: the calls the
node sends this end to run, and their answers. Every call that wants an
answer gets exactly one: its result, its error, or none once it is
cancelled (the relay has answered it then).
"""

from __future__ import annotations

from typing import Any

from nswarm.caller import Caller
from nswarm.codec import decode_arguments, encode
from nswarm.core import wire
from nswarm.core.boxes import Box, error_box, get_payload, put_payload
from nswarm.core.events import CallReceived, Event
from nswarm.errors import HandlerFailed, InvalidRequest, NswarmError, PayloadTooLarge


class RunsCalls:
    """Mix in before the connection's own class: L{answer}, L{fail}, and the calls received."""

    _running: set[bytes]
    _callers: dict[bytes, Caller | None]
    _events: list[Event]
    _send: Any
    checked: Any

    def answer(self, tag: bytes | None, value: Any) -> None:
        """Answer the call C{tag} with its handler's C{value} (nothing if it was cancelled or wants no answer)."""
        if tag is None or tag not in self._running:
            return
        self._running.discard(tag)
        try:
            reply = {wire.ANSWER: tag}
            put_payload(reply, wire.RESULT, self.checked(encode(value), "result"))
        except PayloadTooLarge as error:
            reply = error_box(tag, error)
        except InvalidRequest:
            reply = error_box(
                tag,
                HandlerFailed(
                    f"InvalidResult: the handler returned a {type(value).__name__}, "
                    "which is not JSON-compatible: return JSON-compatible values"
                ),
            )
        self._send(reply)

    def fail(self, tag: bytes | None, error: BaseException) -> None:
        """Answer the call C{tag} with C{error}: nswarm's own errors as they are, others as L{HandlerFailed}."""
        if tag is None or tag not in self._running:
            return
        self._running.discard(tag)
        typed = error if isinstance(error, NswarmError) else HandlerFailed.from_exception(error)
        self._send(error_box(tag, typed))

    def _call_received(self, box: Box, tag: bytes | None) -> None:
        try:
            method = box[wire.METHOD].decode("utf-8")
            args, kwargs = decode_arguments(get_payload(box, wire.ARGS))
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
        self._events.append(CallReceived(tag, method, args, kwargs, caller))
