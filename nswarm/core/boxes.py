"""
Building and reading boxes without Twisted: serialising, payloads split
across keys (as L{nswarm.amp_commands.Payload} does), error boxes and the
frames of a call_all answer. Pure functions over dicts of bytes;
L{nswarm.boxes} re-exports the ones the relays share.
"""

from __future__ import annotations

from nswarm.core.wire import (
    CHUNK,
    ERROR,
    ERROR_CODE,
    ERROR_DESCRIPTION,
    MAX_KEY_LENGTH,
    MAX_VALUE_LENGTH,
    UNHANDLED_ERROR_CODE,
)
from nswarm.errors import ERRORS, InternalError, InvalidRequest, NswarmError

Box = dict[bytes, bytes]
_END = b"\x00\x00"


class BoxTooLong(InvalidRequest):
    """A key or value is longer than AMP allows (255 and 65,535 bytes): use names of at most 255 characters."""


class RemoteError(NswarmError):
    """
    An error box whose code is not one of nswarm's (C{remote_code} has it):
    AMP's own (C{UNHANDLED}: the peer does not handle that command) or a
    program's. The message is the peer's description.
    """

    code = b"UNKNOWN"

    def __init__(self, code: bytes, description: str) -> None:
        super().__init__(description)
        self.remote_code = code

    @property
    def unhandled(self) -> bool:
        """Whether the peer said it does not handle the command (AMP's C{UNHANDLED})."""
        return self.remote_code == UNHANDLED_ERROR_CODE


def serialize(box: Box) -> bytes:
    """The wire bytes of C{box}, or L{BoxTooLong} if a key or value is too long for AMP."""
    parts: list[bytes] = []
    for key, value in box.items():
        if len(key) > MAX_KEY_LENGTH or len(value) > MAX_VALUE_LENGTH:
            raise BoxTooLong(f"the key {key[:40]!r} or its value is too long for AMP: use names of at most 255 bytes")
        parts += (len(key).to_bytes(2, "big"), key, len(value).to_bytes(2, "big"), value)
    parts.append(_END)
    return b"".join(parts)


def put_payload(box: Box, name: bytes, value: bytes) -> None:
    """Store C{value} in C{box} under C{name}, split into C{name}, C{name.1}, ... past 65,535 bytes."""
    if len(value) <= CHUNK:
        box[name] = value
        return
    box[name] = value[:CHUNK]
    for index, start in enumerate(range(CHUNK, len(value), CHUNK), 1):
        box[b"%s.%d" % (name, index)] = value[start : start + CHUNK]


def get_payload(box: Box, name: bytes) -> bytes:
    """The payload C{name} of C{box} (joined again if split), or L{InvalidRequest} if it is missing."""
    first = box.get(name)
    if first is None:
        raise InvalidRequest(f"the box has no {name.decode('ascii')!r}: send it with an nswarm SDK")
    if len(first) < CHUNK:
        return first
    chunks = [first]
    index = 1
    while (chunk := box.get(b"%s.%d" % (name, index))) is not None:
        chunks.append(chunk)
        index += 1
    return b"".join(chunks)


def result_frame(payload: bytes) -> bytes:
    """One implementer's result in a call_all answer: C{R}, a 4-byte length, the payload."""
    return b"R" + len(payload).to_bytes(4, "big") + payload


def error_frame(code: bytes, description: bytes) -> bytes:
    """One implementer's error in a call_all answer: C{E}, a 4-byte length, the error code, a newline, the text."""
    body = code + b"\n" + description
    return b"E" + len(body).to_bytes(4, "big") + body


def parse_frames(data: bytes) -> list[bytes | NswarmError]:
    """The results (payload bytes) and errors (exceptions) in a call_all answer, in order."""
    outcomes: list[bytes | NswarmError] = []
    offset = 0
    while offset < len(data):
        kind, length = data[offset : offset + 1], int.from_bytes(data[offset + 1 : offset + 5], "big")
        body = data[offset + 5 : offset + 5 + length]
        if kind not in (b"R", b"E") or len(body) != length:
            raise InvalidRequest("a call_all answer is malformed: it was not made by nswarm")
        offset += 5 + length
        if kind == b"R":
            outcomes.append(body)
        else:
            code, _, description = body.partition(b"\n")
            outcomes.append(ERRORS.get(code, InternalError)(description.decode("utf-8", "replace")))
    return outcomes


def error_box(tag: bytes, error: NswarmError) -> Box:
    """The error box that answers request C{tag} with C{error}."""
    return {ERROR: tag, ERROR_CODE: error.code, ERROR_DESCRIPTION: str(error).encode("utf-8", "replace")}


def remote_error(box: Box) -> NswarmError:
    """The exception an error box carries: nswarm's own for its codes, else a L{RemoteError}."""
    code = box.get(ERROR_CODE, b"UNKNOWN")
    description = box.get(ERROR_DESCRIPTION, b"").decode("utf-8", "replace")
    known = ERRORS.get(code)
    return known(description) if known is not None else RemoteError(code, description)
