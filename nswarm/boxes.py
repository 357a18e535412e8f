"""
Reading and building the boxes relays and SDK ends route without Command
objects: serialising, payloads split across keys, error boxes, and the
frames of a call_all answer. Pure functions over dicts of bytes.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

from nswarm.amp_commands import (
    CHUNK,
    ERROR,
    ERROR_CODE,
    ERROR_DESCRIPTION,
    ERRORS,
    InternalError,
    InvalidRequest,
    NswarmError,
    Payload,
)

MAX_KEY_LENGTH = amp.MAX_KEY_LENGTH
MAX_VALUE_LENGTH = amp.MAX_VALUE_LENGTH
_END = b"\x00\x00"


def serialize(box: dict[bytes, bytes]) -> bytes:
    """The wire bytes of C{box}, or C{amp.TooLong} if a key or value is too long for AMP."""
    parts: list[bytes] = []
    for key, value in box.items():
        if len(key) > MAX_KEY_LENGTH:
            raise amp.TooLong(True, True, key, None)
        if len(value) > MAX_VALUE_LENGTH:
            raise amp.TooLong(False, True, value, key)
        parts += (len(key).to_bytes(2, "big"), key, len(value).to_bytes(2, "big"), value)
    parts.append(_END)
    return b"".join(parts)


def put_payload(box: dict[bytes, bytes], name: bytes, value: bytes) -> None:
    """Store C{value} in C{box} under C{name} as L{nswarm.amp_commands.Payload} does."""
    if len(value) <= CHUNK:
        box[name] = value
    else:
        Payload().toBox(name, box, {name.decode("ascii"): value}, None)


def get_payload(box: dict[bytes, bytes], name: bytes) -> bytes:
    """The payload C{name} of C{box}, or L{InvalidRequest} if it is missing."""
    if len(box.get(name, b"")) < CHUNK:
        try:
            return box[name]
        except KeyError:
            raise InvalidRequest(f"the box has no {name.decode('ascii')!r}: send it with an nswarm SDK")
    objects: dict[str, Any] = {}
    Payload().fromBox(name, box, objects, None)
    return objects[name.decode("ascii")]


def result_frame(payload: bytes) -> bytes:
    """One implementer's result in a L{nswarm.amp_commands.CallAll} answer: C{R}, a 4-byte length, the payload."""
    return b"R" + len(payload).to_bytes(4, "big") + payload


def error_frame(code: bytes, description: bytes) -> bytes:
    """
    One implementer's error in a L{nswarm.amp_commands.CallAll} answer: C{E},
    a 4-byte length, the error code, a newline, the description.
    """
    body = code + b"\n" + description
    return b"E" + len(body).to_bytes(4, "big") + body


def parse_frames(data: bytes) -> list[bytes | NswarmError]:
    """The results (payload bytes) and errors (exceptions) in a L{nswarm.amp_commands.CallAll} answer, in order."""
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


def error_box(tag: bytes, error: NswarmError) -> amp.AmpBox:
    """The AMP error box that answers request C{tag} with C{error}."""
    return amp.AmpBox(
        {
            ERROR: tag,
            ERROR_CODE: error.code,
            ERROR_DESCRIPTION: str(error).encode("utf-8", "replace"),
        }
    )


def remote_error(box: dict[bytes, bytes]) -> Exception:
    """The exception an error box carries: an L{nswarm.amp_commands.NswarmError} for nswarm's own codes."""
    code = box.get(ERROR_CODE, amp.UNKNOWN_ERROR_CODE)
    description = box.get(ERROR_DESCRIPTION, b"").decode("utf-8", "replace")
    if code in ERRORS:
        return ERRORS[code](description)
    if code in amp.PROTOCOL_ERRORS:
        return amp.PROTOCOL_ERRORS[code](code, description)
    return amp.RemoteAmpError(code, description)
