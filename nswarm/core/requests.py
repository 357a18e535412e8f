"""
The requests a L{nswarm.core.connection.Connection} makes, mixed into it:
each builds its box (with its timeout, checked names and payload limits)
and sends it through the connection's C{request}, which tags it and keeps
its deadline. C{call_box} and C{publish_box} build without sending, for a
front end that holds requests while it reconnects.
"""

from __future__ import annotations

from typing import Any

from nswarm import defaults
from nswarm.codec import encode, encode_arguments
from nswarm.core import wire
from nswarm.core.answers import Parse, document, gathered, handed_to, result
from nswarm.core.boxes import Box, put_payload
from nswarm.core.names import check_event, check_method, check_pattern
from nswarm.errors import PayloadTooLarge


class MakesRequests:
    """Mix in before the connection's own class: authenticate, call, publish, status and registrations."""

    timeout: float
    max_payload: int
    _timeout_text: tuple[float, bytes]
    request: Any

    def authenticate(self, key: bytes, name: str | None = None) -> bytes:
        """Send C{Authenticate} with the auth C{key} (and the name the server logs this end by)."""
        box = {wire.COMMAND: wire.AUTHENTICATE, wire.KEY: key}
        if name:
            box[wire.NAME] = name.encode("utf-8")
        return self.request(box)

    def call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        all: bool = False,
        stream: int | None = None,
    ) -> bytes:
        """
        Call C{method} with JSON-compatible C{args} and C{kwargs}, within
        C{timeout} seconds (by default L{timeout}); C{all} calls every
        implementer; C{stream} (a window of parts, 1 to MAX_STREAM_WINDOW)
        asks for a streamed result (see L{nswarm.core.streaming}). Raises
        L{PayloadTooLarge} or L{InvalidRequest} at once if it cannot be sent.
        """
        return self.request(*self.call_box(method, args, kwargs, timeout=timeout, all=all, stream=stream))

    def call_box(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        all: bool = False,
        stream: int | None = None,
    ) -> tuple[Box, Parse, float]:
        """
        The request L{call} sends, not sent: its box, how to read its answer,
        and its timeout in seconds (to give L{request}).
        """
        if stream is not None and (
            not isinstance(stream, int) or isinstance(stream, bool) or not 1 <= stream <= defaults.MAX_STREAM_WINDOW
        ):
            raise ValueError(f"window must be a whole number from 1 to {defaults.MAX_STREAM_WINDOW}, not {stream!r}")
        seconds = self.timeout if timeout is None else timeout
        if seconds != self._timeout_text[0]:
            self._timeout_text = (seconds, repr(float(seconds)).encode("ascii"))
        data = encode_arguments(tuple(args), kwargs or {})
        if len(data) > self.max_payload:
            self.checked(data, "call arguments")
        box = {
            wire.COMMAND: wire.CALL_ALL if all else wire.CALL,
            wire.METHOD: check_method(method).encode("utf-8"),
            wire.TIMEOUT: self._timeout_text[1],
        }
        put_payload(box, wire.ARGS, data)
        if stream is not None and not all:
            box[wire.STREAM] = b"%d" % stream
        return box, gathered if all else result, seconds

    def publish(
        self, event: str, payload: Any = None, *, exclude_self: bool = False, timeout: float | None = None
    ) -> bytes:
        """Publish C{event} with a JSON-compatible C{payload}; the answer's value is C{handed_to}."""
        return self.request(self.publish_box(event, payload, exclude_self=exclude_self), handed_to, timeout)

    def publish_box(self, event: str, payload: Any = None, *, exclude_self: bool = False) -> Box:
        """The box L{publish} sends, not sent (its answer is read with C{handed_to})."""
        data = self.checked(encode(payload), "event payload")
        box = {wire.COMMAND: wire.PUBLISH, wire.EVENT: check_event(event).encode("utf-8")}
        if exclude_self:
            box[wire.EXCLUDE] = b"1"
        put_payload(box, wire.PAYLOAD, data)
        return box

    def status(self, timeout: float | None = None) -> bytes:
        """Ask the master for the cluster's status document (the answer's value: a dict); needs the admin right."""
        return self.request({wire.COMMAND: wire.STATUS}, document, timeout)

    def register(self, command: bytes, names: list[str], **lists: list[Any]) -> list[bytes]:
        """
        Send C{Implement}, C{Unimplement}, C{Subscribe} or C{Unsubscribe}
        (C{command}) for C{names}, in as many requests as their size needs;
        return their tags. For C{Implement}, C{idempotent} (names) and
        C{limits} (one per name) may be given.
        """
        key = wire.EVENTS if command in (wire.SUBSCRIBE, wire.UNSUBSCRIBE) else wire.METHODS
        check = check_pattern if key == wire.EVENTS else check_method
        for name in names:
            check(name)
        limits = dict(zip(names, lists.get("limits") or [], strict=False))
        idempotent = set(lists.get("idempotent") or ())
        tags = []
        for part in wire.in_parts(list(names)):
            box = {wire.COMMAND: command, key: wire.list_of_strings(part)}
            if command == wire.IMPLEMENT:
                box[wire.IDEMPOTENT] = wire.list_of_strings([name for name in part if name in idempotent])
                box[wire.LIMITS] = wire.list_of_integers([limits.get(name, 0) for name in part])
            tags.append(self.request(box))
        return tags

    def checked(self, data: bytes, what: str) -> bytes:
        """C{data}, or L{PayloadTooLarge} if it is over L{max_payload}."""
        if len(data) > self.max_payload:
            raise PayloadTooLarge(
                f"{len(data):,} bytes of {what}, over the limit of {self.max_payload:,} bytes: send less"
            )
        return data
