"""Tier 1: the SDKs' JSON payload codec, its short paths and its errors, against the json module's own answers."""

from __future__ import annotations

import collections
import enum
import json
import random
import struct
import threading
import uuid
from typing import Any

import pytest

from nswarm import codec
from nswarm.errors import InvalidRequest

VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    1.5,
    1e300,
    "",
    'é ☃ \u0000 "quoted" \\',
    [],
    {},
    {"args": [1, "x", None], "kwargs": {"deep": [[[{"a": 1.25}]]]}},
    {1: "int keys", None: "null key", 2.5: "float key"},
    # What orjson (the first encoder) refuses or could write otherwise, so the json module encodes it again:
    2**64,  # past 64 bits
    [1, 2**70],
    collections.OrderedDict(b=1, a=2),  # subclasses of the built-in types
    collections.Counter("abca"),
    enum.IntEnum("Level", "LOW HIGH").HIGH,
    ["null", None],  # a null anywhere in the text
    "null",
    {"deep": [[[[[[[[[[None]]]]]]]]]]},
    [[[]]] * 3,
    "x" * 100_000,  # a large string, orjson's own case
    "é" * 40_000 + "\n",
    [1.0, -0.0, 0.1, 1e16, 1e22, 5e-324, 1.7976931348623157e308],  # floats both write alike
]


@pytest.mark.parametrize("value", VALUES)
def test_encode_gives_the_json_modules_compact_text(value: Any) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert codec.encode(value) == expected
    assert codec.decode(expected) == json.loads(expected)


def test_a_value_nested_past_orjsons_depth_encodes_as_the_json_module_does() -> None:
    value: Any = "leaf"
    for _ in range(300):
        value = [value]
    assert codec.encode(value) == json.dumps(value, separators=(",", ":")).encode()


def test_every_float_decodes_to_itself_though_the_exponent_may_be_written_otherwise() -> None:
    chosen = random.Random(14)
    floats = [1e-5, 2.5e-5, 1e-7, -7.1850441006303285e-09]
    while len(floats) < 20_000:
        number = struct.unpack("<d", chosen.getrandbits(64).to_bytes(8, "little"))[0]
        if number == number and abs(number) != float("inf"):
            floats.append(number)
    encoded = codec.encode(floats)
    decoded = json.loads(encoded)
    assert [struct.pack("<d", number) for number in decoded] == [struct.pack("<d", number) for number in floats]
    assert codec.encode(1e-5) == b"0.00001"  # json.dumps writes 1e-05; both are the same double


def test_every_code_point_is_written_as_the_json_module_writes_it() -> None:
    points = [chr(point) for point in range(0x110000) if not 0xD800 <= point <= 0xDFFF]
    for start in range(0, len(points), 8192):
        text = "".join(points[start : start + 8192])
        assert codec.encode(text) == json.dumps(text, ensure_ascii=False).encode(), hex(start)


def test_uuids_and_enums_go_as_their_string_and_their_value() -> None:
    order = uuid.UUID("6ae69514-f41f-4d45-aa97-bbcc94a4e247")
    colour = enum.Enum("Colour", {"RED": "red"})
    assert codec.encode([order, colour.RED]) == b'["6ae69514-f41f-4d45-aa97-bbcc94a4e247","red"]'


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("x" * 5000, float("nan")), {}),  # long arguments are looked at one by one: a float among them is searched for
        (("x" * 5000,), {"values": [1.5, float("inf")]}),  # and so is a container
        (("x" * 5000,), {"big": 2**70, "n": float("-inf")}),
    ],
)
def test_long_arguments_holding_nan_or_infinity_are_invalid_request(args: Any, kwargs: Any) -> None:
    with pytest.raises(InvalidRequest, match="Out of range float values are not JSON compliant"):
        codec.encode_arguments(args, kwargs)


def test_long_arguments_without_floats_are_the_json_modules_text() -> None:
    args, kwargs = ("x" * 5000, None, 3, True, "null"), {"name": "é", "none": None}
    expected = json.dumps({"args": args, "kwargs": kwargs}, separators=(",", ":"), ensure_ascii=False).encode()
    assert codec.encode_arguments(args, kwargs) == expected


def test_arguments_round_trip() -> None:
    data = codec.encode_arguments((1, "two"), {"three": [3]})
    assert data == b'{"args":[1,"two"],"kwargs":{"three":[3]}}'
    assert codec.decode_arguments(data) == ([1, "two"], {"three": [3]})


@pytest.mark.parametrize(
    "data, value",
    [
        (b' {"a": 1} ', {"a": 1}),  # whitespace around a value: the decoder's whole path
        (b"\n[1, 2]\n", [1, 2]),
        (b"NaN", json.loads("NaN")),
        (b'"x"', "x"),
        (b"12", 12),
    ],
)
def test_decode_takes_what_json_loads_takes(data: bytes, value: Any) -> None:
    decoded = codec.decode(data)
    assert decoded == value or (decoded != decoded and value != value)  # NaN is not equal to itself


@pytest.mark.parametrize("data", [b"", b" ", b"{", b"1 2", b"[1,]", b'{"a":1}x', b"\xff", b"tru"])
def test_decode_of_what_is_not_json_is_invalid_request_with_the_json_modules_reason(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as raised:
        codec.decode(data)
    assert "payload is not JSON" in str(raised.value)
    if data != b"\xff":
        with pytest.raises(json.JSONDecodeError) as reason:
            json.loads(data.decode("utf-8"))
        assert str(reason.value) in str(raised.value)


@pytest.mark.parametrize(
    "value, reason",
    [
        (float("nan"), "Out of range float values are not JSON compliant"),
        (float("inf"), "Out of range float values are not JSON compliant"),
        ([None, float("-inf")], "Out of range float values are not JSON compliant"),  # orjson writes null
        ({"a": [1, {"b": float("nan")}]}, "Out of range float values are not JSON compliant"),
        ("\ud800", "surrogates not allowed"),
        (object(), "Object of type object is not JSON serializable"),
        ({1j: 2}, "keys must be str, int, float, bool or None, not complex"),
    ],
)
def test_encode_of_what_json_cannot_carry_is_invalid_request(value: Any, reason: str) -> None:
    with pytest.raises(InvalidRequest, match="send JSON-compatible values") as raised:
        codec.encode(value)
    assert reason in str(raised.value)


def test_a_value_that_contains_itself_is_invalid_request_and_the_next_encodes() -> None:
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(InvalidRequest, match="recursion") as raised:
        codec.encode_arguments((looped,), {})
    assert "pass JSON-compatible values" in str(raised.value)
    assert codec.encode([looped[:0], 1]) == b"[[],1]"


def test_threads_encoding_the_same_value_at_once_each_get_it() -> None:
    shared = {"items": [{"n": n, "tags": ["a", "b"]} for n in range(200)]}
    expected = codec.encode(shared)
    start = threading.Barrier(4)
    results: list[bytes] = []

    def encode_many() -> None:
        start.wait()
        results.extend(codec.encode(shared) for _ in range(200))

    threads = [threading.Thread(target=encode_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 800 and set(results) == {expected}
