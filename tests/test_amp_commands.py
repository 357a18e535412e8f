"""Tier 1: the wire types: large payloads split across keys, typed errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.protocols import amp

from nswarm.amp_commands import ERRORS, Call, HandlerFailed, Payload


def round_trip(value: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    strings: dict[bytes, bytes] = {}
    Payload().toBox(b"args", strings, {"args": value}, None)
    objects: dict[str, Any] = {}
    Payload().fromBox(b"args", dict(strings), objects, None)
    return objects["args"], strings


@pytest.mark.parametrize("size", [0, 1, 65534, 65535, 65536, 65535 * 2, 65535 * 2 + 1, 1 << 20])
def test_payload_round_trips_at_every_boundary(size: int) -> None:
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    decoded, strings = round_trip(value)
    assert decoded == value
    assert all(len(chunk) <= amp.MAX_VALUE_LENGTH for chunk in strings.values())
    assert len(strings) == max(1, -(-size // amp.MAX_VALUE_LENGTH))


@settings(max_examples=30)
@given(st.binary(max_size=200_000))
def test_payload_round_trips_any_bytes(value: bytes) -> None:
    assert round_trip(value)[0] == value


def test_large_payload_survives_a_real_box_serialisation() -> None:
    """A 200 kB argument goes through AmpBox.serialize/parse unchanged."""
    value = b"\xff\x00" * 100_000
    box = amp.AmpBox(Call.makeArguments({"method": "m", "args": value}, None))
    [parsed] = amp.parseString(box.serialize())
    expected = {"method": "m", "args": value, "timeout": None, "caller": None, "stream": None}
    assert Call.parseArguments(parsed, None) == expected


def test_payload_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        Payload().toBox(b"args", {}, {"args": "text"}, None)


def test_error_codes_are_unique_and_handler_failure_splits_type_and_message() -> None:
    assert len({error.code for error in ERRORS.values()}) == len(ERRORS)
    failure = HandlerFailed.from_exception(KeyError("missing: key"))
    assert failure.remote_type == "KeyError"
    assert failure.remote_message == "'missing: key'"
    assert HandlerFailed(str(failure)).remote_type == "KeyError"
