"""
The SDKs' payload codec: arguments, results and events as JSON. Only the
two SDK ends encode and decode; relays carry the bytes untouched.
"""

from __future__ import annotations

import json
from typing import Any

from nswarm.errors import InvalidRequest

# One encoder and decoder for every payload: json.dumps with options builds a
# new encoder per call, and json.loads of bytes sniffs their encoding first.
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_decoder = json.JSONDecoder()


def encode(value: Any) -> bytes:
    """JSON bytes of C{value}, or L{InvalidRequest} if it is not JSON-compatible."""
    try:
        return _encoder.encode(value).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise InvalidRequest(f"cannot encode {type(value).__name__} as JSON ({error}): send JSON-compatible values")


def decode(data: bytes) -> Any:
    """The value in JSON bytes C{data}, or L{InvalidRequest}."""
    try:
        return _decoder.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidRequest(f"payload is not JSON ({error}): send it with an nswarm SDK")


def encode_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A call's arguments as JSON: C{{"args": [...], "kwargs": {...}}}."""
    try:
        return _encoder.encode({"args": args, "kwargs": kwargs}).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise InvalidRequest(f"cannot encode the call's arguments as JSON ({error}): pass JSON-compatible values")


def decode_arguments(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments of a call, or L{InvalidRequest}."""
    value = decode(data)
    if not (isinstance(value, dict) and isinstance(value.get("args"), list) and isinstance(value.get("kwargs"), dict)):
        raise InvalidRequest('call arguments must be {"args": [...], "kwargs": {...}}: send them with an nswarm SDK')
    return value["args"], value["kwargs"]
