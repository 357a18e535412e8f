"""
The bytes of the wire: AMP's control keys, every nswarm command name and
box key. Pure constants, so that code with no Twisted (the sans-IO core)
and L{nswarm.amp_commands} (which re-exports them beside the Commands)
share one definition. The values are AMP's own (C{_ask}, C{_answer}, ...).
"""

from __future__ import annotations

#: AMP's own control keys: the tag of a request, of its answer, of its error; the command; the error's code and text.
ASK, ANSWER, ERROR = b"_ask", b"_answer", b"_error"
COMMAND, ERROR_CODE, ERROR_DESCRIPTION = b"_command", b"_error_code", b"_error_description"
#: AMP's error codes for an error it does not know, and for a command the receiver does not handle.
UNKNOWN_ERROR_CODE, UNHANDLED_ERROR_CODE = b"UNKNOWN", b"UNHANDLED"
#: AMP's longest key and value, in bytes.
MAX_KEY_LENGTH, MAX_VALUE_LENGTH = 255, 65535
#: The size of each piece of a payload split across keys (see L{nswarm.core.boxes.put_payload}).
CHUNK = MAX_VALUE_LENGTH

AUTHENTICATE = b"Authenticate"
KEY, NAME = b"key", b"name"

IMPLEMENT, UNIMPLEMENT = b"Implement", b"Unimplement"
METHODS, IDEMPOTENT, LIMITS = b"methods", b"idempotent", b"limits"

SUBSCRIBE, UNSUBSCRIBE = b"Subscribe", b"Unsubscribe"
EVENTS = b"events"

CALL = b"Call"
METHOD, ARGS, TIMEOUT, RESULT, CALLER = b"method", b"args", b"timeout", b"result", b"caller"

CALL_ALL = b"CallAll"
RESULTS = b"results"

CANCEL = b"Cancel"
ID = b"id"

HEARTBEAT = b"Heartbeat"

PUBLISH = b"Publish"
EVENT, PAYLOAD, EXCLUDE, HANDED_TO = b"event", b"payload", b"exclude", b"handed_to"

#: Streamed results: a Call carrying STREAM (the caller's window: how many parts may come before it asks for more)
#: is answered with Part boxes (ID: the call's tag on that hop; RESULT: one part) before its answer, whose
#: RESULT is the number of parts; the caller grants COUNT more parts with More (ID: its own tag for the call).
STREAM, PART, MORE, COUNT = b"stream", b"Part", b"More", b"count"

#: The status query (issue 11): API user -> master, and master -> node; answered with one JSON DOCUMENT.
STATUS, NODE_STATUS, DOCUMENT = b"Status", b"NodeStatus", b"document"

#: The commands relays route as boxes rather than dispatch to responders.
ROUTED = frozenset({CALL, CALL_ALL, PUBLISH, CANCEL})


def list_of_strings(values: list[str]) -> bytes:
    """C{values} as AMP's C{ListOf(Unicode())} carries them: each UTF-8 string after its 2-byte length."""
    parts: list[bytes] = []
    for value in values:
        data = value.encode("utf-8")
        parts += (len(data).to_bytes(2, "big"), data)
    return b"".join(parts)


def list_of_integers(values: list[int]) -> bytes:
    """C{values} as AMP's C{ListOf(Integer())} carries them."""
    return list_of_strings([str(int(value)) for value in values])


#: Bytes of names one Implement, Unimplement, Subscribe or Unsubscribe carries: a list must fit one AMP value.
NAMES_PER_REQUEST = 60_000


def in_parts(names: list[str]) -> list[list[str]]:
    """C{names} in lists small enough for one registration command each (at least one list, maybe empty)."""
    parts: list[list[str]] = [[]]
    size = 0
    for name in names:
        length = len(name.encode("utf-8")) + 2
        if size + length > NAMES_PER_REQUEST and parts[-1]:
            parts.append([])
            size = 0
        parts[-1].append(name)
        size += length
    return parts
