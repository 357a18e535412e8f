"""
Reading and building the boxes relays and SDK ends route without Command
objects: serialising, payloads split across keys, error boxes, and the
frames of a call_all answer. Pure functions over dicts of bytes. Those
that need no Twisted type live in L{nswarm.core.boxes} and are re-exported
here; L{serialize} stays here (it raises C{amp.TooLong}, which the relays'
hot path and L{nswarm.requests} expect).
"""

from __future__ import annotations

from twisted.protocols import amp

from nswarm.amp_commands import ERROR, ERROR_CODE, ERROR_DESCRIPTION, ERRORS, NswarmError
from nswarm.core.boxes import (  # noqa: F401 (re-exported: the pure parts live in the sans-IO core)
    error_frame,
    get_payload,
    parse_frames,
    put_payload,
    result_frame,
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
