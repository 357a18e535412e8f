"""
The SDKs' payload codec: arguments, results and events as JSON. Only the
two SDK ends encode and decode; relays carry the bytes untouched.
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
from collections.abc import Iterable
from typing import Any

import orjson

from nswarm.errors import InvalidRequest

# Encoding goes through orjson first: it writes a 32 KiB string in a few
# microseconds where the json module takes about 150 (it looks at each
# character from Python's string loop), and a small value in a fifth of the
# json module's time. Where orjson's answer could differ from the json
# module's, the json module encodes the value again, so that the values
# accepted and the errors are its own: orjson refuses integers past 64 bits,
# keys that are not strings, subclasses of the built-in types (passed through
# to no default) and lone surrogates, and it writes NaN and the infinities as
# null, so a text with a null in it is encoded again, unless what it encodes
# holds no float (see _json). Strings are written alike, every code point.
# Floats come out as the same shortest round-trip digits, with the exponent
# sometimes written differently (1e-7 for 1e-07, 0.00001 for 1e-05); UUIDs and
# enums, which the json module refuses, go as their string and their value.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_orjson_dumps = orjson.dumps
_OrjsonError = orjson.JSONEncodeError

#: Types that hold no float: orjson's text of one has no NaN written as null.
_FLOATLESS = frozenset({str, int, bool, type(None)})

#: Bytes of text past which a value's members are looked at for floats before the text is searched for a null (19 µs
#: for 32 KiB: five times orjson's own time).
_SEARCH_FROM = 4096

# The json module's C encoder and scanner, made once and called directly:
# JSONEncoder.encode builds a new C encoder per value, and JSONDecoder.decode
# adds two regular-expression matches (for surrounding whitespace) per value,
# together most of the cost of a small payload. The encoder keeps no table of
# the containers it is inside (that table would be shared by every thread
# encoding at once): a value that contains itself ends in RecursionError,
# reported as such. The scanner is the decoder's own, and anything it does not
# take whole (whitespace around the value, or not JSON) goes through
# JSONDecoder.decode, for the same value or the same error. orjson's decoder
# is not used: it reads integers past 64 bits as floats, losing digits.
_decoder = json.JSONDecoder()
_make_scanner: Any = json.scanner.make_scanner
_scan = _make_scanner(_decoder)
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # None on a Python without the C accelerator
_encode = (
    None
    if _make_encoder is None
    else _make_encoder(
        None, json.JSONEncoder().default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
)
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False)

#: What a value JSON cannot carry raises while encoding (RecursionError: it contains itself, or is nested too deeply).
_UNENCODABLE = (TypeError, ValueError, RecursionError)


def _json(value: Any, *members: Iterable[Any]) -> bytes:
    """
    The JSON of C{value}, from orjson where its text is the json module's.
    C{members}, what C{value} is made of, are looked at one by one before a
    long text is searched for a null.
    """
    try:
        text = _orjson_dumps(value, None, _ORJSON_OPTIONS)
    except _OrjsonError:
        return _json_module(value)
    if (
        type(value) in _FLOATLESS
        or (len(text) > _SEARCH_FROM and members and all(type(one) in _FLOATLESS for part in members for one in part))
        or text.find(b"null") < 0  # find, not "in": bytes.__contains__ tries its argument as an integer first
    ):
        return text
    return _json_module(value)


def _json_module(value: Any) -> bytes:
    if _encode is None:  # a Python without the C accelerator
        return _encoder.encode(value).encode("utf-8")
    return "".join(_encode(value, 0)).encode("utf-8")


def encode(value: Any) -> bytes:
    """JSON bytes of C{value}, or L{InvalidRequest} if it is not JSON-compatible."""
    try:
        return _json(value)
    except _UNENCODABLE as error:
        raise InvalidRequest(f"cannot encode {type(value).__name__} as JSON ({error}): send JSON-compatible values")


def decode(data: bytes) -> Any:
    """The value in JSON bytes C{data}, or L{InvalidRequest}."""
    try:
        text = data.decode("utf-8")
        try:
            value, end = _scan(text, 0)
            if end == len(text):
                return value
        except (StopIteration, ValueError):
            pass
        return _decoder.decode(text)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidRequest(f"payload is not JSON ({error}): send it with an nswarm SDK")


def encode_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A call's arguments as JSON: C{{"args": [...], "kwargs": {...}}}."""
    try:
        return _json({"args": args, "kwargs": kwargs}, args, kwargs.values())
    except _UNENCODABLE as error:
        raise InvalidRequest(f"cannot encode the call's arguments as JSON ({error}): pass JSON-compatible values")


def decode_arguments(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments of a call, or L{InvalidRequest}."""
    value = decode(data)
    if not (isinstance(value, dict) and isinstance(value.get("args"), list) and isinstance(value.get("kwargs"), dict)):
        raise InvalidRequest('call arguments must be {"args": [...], "kwargs": {...}}: send them with an nswarm SDK')
    return value["args"], value["kwargs"]
